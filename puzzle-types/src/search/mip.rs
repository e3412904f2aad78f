//! The solver-facing problem: a multiple-choice integer program over plain numbers.
//!
//! Variables `x[v]` are binary; variables are partitioned into groups and exactly one per group
//! is 1. Minimise `sum objective[v] x[v] + objective_constant` subject to rows
//! `lo <= sum coef x <= hi`. Solvers see nothing else (no tensors, no ids), which is what lets a
//! solver come from a dynamically loaded plugin.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::Registry;

/// A linear row `lo <= sum coef * x <= hi` (use infinities for one-sided rows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Human name for reports (`memory`, `runtime`, `diversity 1`).
    pub name: String,
    /// Sparse coefficients: `(variable, coefficient)`.
    pub coefs: Vec<(usize, f64)>,
    /// JSON has no infinities: an open side is written as `null` and read back as infinite.
    #[serde(with = "open_lo")]
    pub lo: f64,
    #[serde(with = "open_hi")]
    pub hi: f64,
}

/// Declares a serde module writing an infinite bound as `null` and reading `null` as `$inf`.
macro_rules! open_bound {
    ($name:ident, $inf:expr) => {
        mod $name {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
                if v.is_infinite() {
                    s.serialize_none()
                } else {
                    s.serialize_f64(*v)
                }
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
                Ok(Option::<f64>::deserialize(d)?.unwrap_or($inf))
            }
        }
    };
}
open_bound!(open_lo, f64::NEG_INFINITY);
open_bound!(open_hi, f64::INFINITY);

/// A multiple-choice problem. Variables `0..num_vars`; `groups` partition them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MipProblem {
    pub num_vars: usize,
    /// Each group's variables; exactly one of each is chosen.
    pub groups: Vec<Vec<usize>>,
    /// Cost of each variable (minimised).
    pub objective: Vec<f64>,
    /// Added to the objective (non-block terms).
    pub objective_constant: f64,
    pub rows: Vec<Row>,
}

impl MipProblem {
    /// Checks the structure (every variable in exactly one group, finite coefficients).
    pub fn validate(&self) -> Result<()> {
        if self.objective.len() != self.num_vars {
            return Err(Error::invalid(
                "objective length differs from the variable count",
            ));
        }
        let mut seen = vec![false; self.num_vars];
        for (g, vars) in self.groups.iter().enumerate() {
            if vars.is_empty() {
                return Err(Error::invalid(format!("group {g} has no choices")));
            }
            for &v in vars {
                if v >= self.num_vars || seen[v] {
                    return Err(Error::invalid(format!(
                        "variable {v} is out of range or in two groups"
                    )));
                }
                seen[v] = true;
            }
        }
        if let Some(v) = seen.iter().position(|s| !s) {
            return Err(Error::invalid(format!("variable {v} belongs to no group")));
        }
        for (v, c) in self.objective.iter().enumerate() {
            if !c.is_finite() {
                return Err(Error::invalid(format!("objective of variable {v} is {c}")));
            }
        }
        for r in &self.rows {
            if r.coefs
                .iter()
                .any(|(v, c)| *v >= self.num_vars || !c.is_finite())
            {
                return Err(Error::invalid(format!(
                    "row `{}` has a bad coefficient",
                    r.name
                )));
            }
            if r.lo.is_nan() || r.hi.is_nan() || r.lo > r.hi {
                return Err(Error::invalid(format!(
                    "row `{}` has bounds [{}, {}]",
                    r.name, r.lo, r.hi
                )));
            }
        }
        Ok(())
    }

    /// The objective of a full choice (one variable index per group).
    pub fn objective_of(&self, choice: &[usize]) -> f64 {
        self.objective_constant
            + choice
                .iter()
                .zip(&self.groups)
                .map(|(&c, g)| self.objective[g[c]])
                .sum::<f64>()
    }

    /// The value of row `r` at a full choice.
    pub fn row_value(&self, r: &Row, choice: &[usize]) -> f64 {
        let chosen: std::collections::HashSet<usize> = choice
            .iter()
            .zip(&self.groups)
            .map(|(&c, g)| g[c])
            .collect();
        r.coefs
            .iter()
            .filter(|(v, _)| chosen.contains(v))
            .map(|(_, c)| c)
            .sum()
    }

    /// A feasible choice found from `start` by greedy single-group moves, or `None`: each step
    /// takes the move that most reduces the total violation (each row's violation in units of
    /// its largest coefficient, so rows of any scale weigh alike), the smaller objective among
    /// equal reductions. For a series of related solves (diversity: the previous solution,
    /// which the new cut excludes, is usually a few moves from the next one), it hands a solver a
    /// first incumbent where `start` itself is infeasible. A heuristic: `None` proves nothing.
    pub fn repair(&self, start: &[usize]) -> Option<Vec<usize>> {
        self.descend(start, Descent::LeastViolation, 4 * self.groups.len().max(1))
    }

    /// The per-layer greedy choice (the paper's ablation of the MIP, and the textbook heuristic
    /// for multiple-choice knapsacks), or `None` when it gets stuck: start from every group's
    /// best (lowest-objective) choice, then, while a row is violated, take the single-group
    /// move with the smallest objective increase per unit of violation removed (violation
    /// measured as in [`MipProblem::repair`]). It stops at the first feasible choice and never
    /// looks back, which is what the exact search is compared against.
    pub fn greedy(&self) -> Option<Vec<usize>> {
        let start: Vec<usize> = self
            .groups
            .iter()
            .map(|g| {
                (0..g.len())
                    .min_by(|&a, &b| self.objective[g[a]].total_cmp(&self.objective[g[b]]))
                    .unwrap_or(0)
            })
            .collect();
        self.descend(
            &start,
            Descent::CheapestPerViolation,
            4 * self.num_vars.max(1),
        )
    }

    /// Single-group moves from `start` that lower the total violation, chosen by `rule`, until
    /// the choice is feasible (or no move helps, or `steps` moves were made).
    fn descend(&self, start: &[usize], rule: Descent, steps: usize) -> Option<Vec<usize>> {
        if start.len() != self.groups.len()
            || start.iter().zip(&self.groups).any(|(&c, g)| c >= g.len())
        {
            return None;
        }
        // Per variable, its (row, coefficient) pairs.
        let mut by_var: Vec<Vec<(usize, f64)>> = vec![Vec::new(); self.num_vars];
        for (r, row) in self.rows.iter().enumerate() {
            for &(v, c) in &row.coefs {
                by_var[v].push((r, c));
            }
        }
        let scale: Vec<f64> = self
            .rows
            .iter()
            .map(|r| {
                r.coefs
                    .iter()
                    .map(|(_, c)| c.abs())
                    .fold(0.0, f64::max)
                    .max(1e-300)
            })
            .collect();
        let tol = |r: &Row, v: f64| 1e-9 * (1.0 + v.abs().max(r.lo.abs().min(r.hi.abs())));
        let violation = |r: usize, v: f64| {
            let row = &self.rows[r];
            let t = tol(row, v);
            ((row.lo - t - v).max(0.0) + (v - row.hi - t).max(0.0)) / scale[r]
        };
        let mut choice = start.to_vec();
        let mut act: Vec<f64> = self
            .rows
            .iter()
            .map(|r| self.row_value(r, &choice))
            .collect();
        let total = |act: &[f64]| (0..act.len()).map(|r| violation(r, act[r])).sum::<f64>();
        let mut now = total(&act);
        // Each step lowers the violation; a bound on the steps keeps a bad case cheap.
        for _ in 0..steps {
            if now <= 0.0 {
                return Some(choice);
            }
            let mut best: Option<(f64, f64, usize, usize)> = None;
            for (g, vars) in self.groups.iter().enumerate() {
                let old = vars[choice[g]];
                for (c, &v) in vars.iter().enumerate() {
                    if c == choice[g] {
                        continue;
                    }
                    // Only the rows either variable is in change.
                    let mut delta = 0.0;
                    let mut touched: Vec<(usize, f64)> = Vec::new();
                    for &(r, k) in by_var[old].iter() {
                        touched.push((r, -k));
                    }
                    for &(r, k) in by_var[v].iter() {
                        touched.push((r, k));
                    }
                    touched.sort_by_key(|t| t.0);
                    let mut i = 0;
                    while i < touched.len() {
                        let r = touched[i].0;
                        let mut d = 0.0;
                        while i < touched.len() && touched[i].0 == r {
                            d += touched[i].1;
                            i += 1;
                        }
                        delta += violation(r, act[r] + d) - violation(r, act[r]);
                    }
                    let dobj = self.objective[v] - self.objective[old];
                    let better = |(bd, bo, _, _): (f64, f64, usize, usize)| match rule {
                        Descent::LeastViolation => {
                            delta < bd - 1e-12 || (delta <= bd + 1e-12 && dobj < bo)
                        }
                        // Objective per unit removed; the larger removal among equal rates.
                        Descent::CheapestPerViolation => {
                            let (rate, brate) = (dobj / -delta, bo / -bd);
                            rate < brate - 1e-12 || (rate <= brate + 1e-12 && delta < bd)
                        }
                    };
                    if delta < -1e-12 && best.is_none_or(better) {
                        best = Some((delta, dobj, g, c));
                    }
                }
            }
            let (_, _, g, c) = best?;
            let (old, v) = (self.groups[g][choice[g]], self.groups[g][c]);
            for &(r, k) in &by_var[old] {
                act[r] -= k;
            }
            for &(r, k) in &by_var[v] {
                act[r] += k;
            }
            choice[g] = c;
            now = total(&act);
        }
        (now <= 0.0).then_some(choice)
    }

    /// Rows a full choice violates (beyond a relative tolerance), with their values.
    pub fn violations(&self, choice: &[usize]) -> Vec<(String, f64)> {
        self.rows
            .iter()
            .filter_map(|r| {
                let v = self.row_value(r, choice);
                let tol = 1e-9 * (1.0 + v.abs().max(r.lo.abs().min(r.hi.abs())));
                (v < r.lo - tol || v > r.hi + tol).then(|| (r.name.clone(), v))
            })
            .collect()
    }
}

/// How [`MipProblem::descend`] picks its next move.
#[derive(Clone, Copy)]
enum Descent {
    /// The largest violation removed (the smaller objective among equal removals).
    LeastViolation,
    /// The smallest objective increase per unit of violation removed.
    CheapestPerViolation,
}

/// How a solve ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MipStatus {
    /// Proven optimal (within the requested gap).
    Optimal,
    /// A feasible solution, not proven optimal (time limit).
    Feasible,
    /// Proven infeasible.
    Infeasible,
    /// Stopped (time limit) without any feasible solution.
    Unknown,
}

/// A solver's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MipSolution {
    pub status: MipStatus,
    /// Chosen index within each group (empty unless a solution was found).
    pub choice: Vec<usize>,
    /// Infinite when there is no solution; JSON has no infinity, so it is written as `null`
    /// and `null` reads back as infinity (a dynamic plugin's infeasible answer included).
    #[serde(deserialize_with = "null_is_infinity")]
    pub objective: f64,
    /// Best proven lower bound on the objective (infinite, `null` in JSON, when infeasible).
    #[serde(deserialize_with = "null_is_infinity")]
    pub bound: f64,
    /// Wall seconds.
    pub seconds: f64,
}

fn null_is_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

impl MipSolution {
    /// Relative optimality gap `(objective - bound) / max(|objective|, 1e-9)`.
    pub fn gap(&self) -> f64 {
        if self.choice.is_empty() {
            return f64::INFINITY;
        }
        ((self.objective - self.bound) / self.objective.abs().max(1e-9)).max(0.0)
    }
}

/// Solver settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolveOptions {
    /// Give up (returning the best solution so far) after this many seconds.
    pub time_limit_secs: f64,
    /// Stop when the relative gap is at most this.
    pub relative_gap: f64,
    /// Full choices (an index per group) to start from, e.g. the previous point of a sweep:
    /// a solver may offer each feasible one as its first incumbent, so a series of related
    /// solves shares work. Ignoring them is allowed; they never change the optimal value (among
    /// equally good choices the one returned may differ).
    #[serde(default)]
    pub hints: Vec<Vec<usize>>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            time_limit_secs: 60.0,
            relative_gap: 1e-9,
            hints: Vec::new(),
        }
    }
}

/// The contract of a MIP backend: given a valid [`MipProblem`], return a solution whose
/// `choice` satisfies every row (callers re-check), with an honest status and bound. Must not
/// panic on infeasible or degenerate input.
pub trait Solver: Send + Sync + 'static {
    /// Registry name (`highs`, `bnb`).
    fn name(&self) -> &str;
    /// Solves `problem`.
    fn solve(&self, problem: &MipProblem, options: &SolveOptions) -> Result<MipSolution>;
}

/// A solver registered by a static plugin.
pub struct SolverRegistration {
    pub solver: &'static dyn Solver,
    pub provider: &'static str,
    pub description: &'static str,
}

inventory::collect!(SolverRegistration);

impl crate::registry::Named for dyn Solver {
    fn name(&self) -> &str {
        Solver::name(self)
    }
}

/// The statically linked solvers (their `inventory` submissions), as a registry.
pub fn static_solvers() -> Registry<dyn Solver> {
    let mut r = Registry::new("solver");
    for s in inventory::iter::<SolverRegistration> {
        r.add(s.solver, s.provider, s.description)
            .expect("two static solvers share a name");
    }
    r
}

/// Brute force over every combination, for tests on small instances.
pub fn brute_force(p: &MipProblem) -> MipSolution {
    let t0 = std::time::Instant::now();
    let mut best: Option<(f64, Vec<usize>)> = None;
    let mut idx = vec![0usize; p.groups.len()];
    loop {
        if p.violations(&idx).is_empty() {
            let o = p.objective_of(&idx);
            if best.as_ref().is_none_or(|(b, _)| o < *b) {
                best = Some((o, idx.clone()));
            }
        }
        // Next combination (odometer).
        let mut g = 0;
        loop {
            if g == idx.len() {
                let seconds = t0.elapsed().as_secs_f64();
                return match best {
                    Some((o, c)) => MipSolution {
                        status: MipStatus::Optimal,
                        choice: c,
                        objective: o,
                        bound: o,
                        seconds,
                    },
                    None => MipSolution {
                        status: MipStatus::Infeasible,
                        choice: vec![],
                        objective: f64::INFINITY,
                        bound: f64::INFINITY,
                        seconds,
                    },
                };
            }
            idx[g] += 1;
            if idx[g] < p.groups[g].len() {
                break;
            }
            idx[g] = 0;
            g += 1;
        }
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn a_problem_with_open_rows_round_trips_through_json() {
        let p = random::instance(3, 4, 3, 3);
        assert!(
            p.rows.iter().any(|r| r.lo.is_infinite()) && p.rows.iter().any(|r| r.hi.is_infinite())
        );
        let text = serde_json::to_string(&p).unwrap();
        let back: MipProblem = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
    }

    /// A repaired choice is feasible whenever one is returned, and one is found for most
    /// feasible instances from a random start; a feasible start comes back unchanged.
    #[test]
    fn repair_returns_only_feasible_choices() {
        let (mut found, mut feasible) = (0, 0);
        for seed in 0..300 {
            let p = random::instance(seed, 6, 4, 3);
            let best = brute_force(&p);
            let start: Vec<usize> = (0..6)
                .map(|g| (seed as usize + g) % p.groups[g].len())
                .collect();
            if let Some(c) = p.repair(&start) {
                assert!(
                    p.violations(&c).is_empty(),
                    "seed {seed}: {:?}",
                    p.violations(&c)
                );
                found += 1;
            }
            if best.status == MipStatus::Optimal {
                feasible += 1;
                assert_eq!(p.repair(&best.choice), Some(best.choice.clone()));
            }
        }
        assert!(
            found * 10 >= feasible * 7,
            "repaired {found} of {feasible} feasible"
        );
    }

    #[test]
    fn an_infeasible_answer_round_trips_through_json() {
        let none = MipSolution {
            status: MipStatus::Infeasible,
            choice: vec![],
            objective: f64::INFINITY,
            bound: f64::INFINITY,
            seconds: 0.5,
        };
        let text = serde_json::to_string(&none).unwrap();
        assert!(text.contains("\"objective\":null"), "{text}");
        let back: MipSolution = serde_json::from_str(&text).unwrap();
        assert_eq!(back, none);
    }
}

/// Random small instances for property tests of solvers (deterministic per seed).
pub mod random {
    use super::*;
    use crate::rng::SeededRng;

    /// `groups` groups of `min..=max` consecutive variables each; the groups and the count.
    fn draw_groups(
        rng: &mut SeededRng,
        groups: usize,
        min: usize,
        max: usize,
    ) -> (Vec<Vec<usize>>, usize) {
        let mut gvars = Vec::new();
        let mut n = 0;
        for _ in 0..groups {
            let k = min + rng.below(max - min + 1);
            gvars.push((n..n + k).collect::<Vec<_>>());
            n += k;
        }
        (gvars, n)
    }

    /// `groups` groups of 2..=`max_choices` choices, `rows` `<=` rows with bounds drawn so
    /// that some instances are infeasible.
    pub fn instance(seed: u64, groups: usize, max_choices: usize, rows: usize) -> MipProblem {
        let mut rng = SeededRng::new(seed);
        let (gvars, n) = draw_groups(&mut rng, groups, 2, max_choices);
        let objective: Vec<f64> = (0..n).map(|_| rng.uniform_in(-1.0, 5.0)).collect();
        let mut rs = Vec::new();
        for r in 0..rows {
            let coefs: Vec<(usize, f64)> = (0..n).map(|v| (v, rng.uniform_in(0.0, 10.0))).collect();
            // Typical total is groups * 5; draw the limit around it, mostly `<=` rows, some `>=`.
            let (lo, hi) = if rng.uniform() < 0.75 {
                (f64::NEG_INFINITY, groups as f64 * rng.uniform_in(1.5, 6.0))
            } else {
                (groups as f64 * rng.uniform_in(3.0, 7.5), f64::INFINITY)
            };
            rs.push(Row {
                name: format!("r{r}"),
                coefs,
                lo,
                hi,
            });
        }
        MipProblem {
            num_vars: n,
            groups: gvars,
            objective,
            objective_constant: rng.uniform(),
            rows: rs,
        }
    }

    /// Instances meant to trip a solver: small integers (ties everywhere, duplicated choices),
    /// zero and negative coefficients, groups of one choice, and `<=`, `>=`, two-sided and
    /// equality rows; about a third are infeasible.
    pub fn awkward(seed: u64, groups: usize, max_choices: usize, rows: usize) -> MipProblem {
        let mut rng = SeededRng::new(seed);
        let (gvars, n) = draw_groups(&mut rng, groups, 1, max_choices);
        let int = |rng: &mut SeededRng, lo: i64, hi: i64| rng.int_in(lo, hi) as f64;
        let objective: Vec<f64> = (0..n).map(|_| int(&mut rng, -2, 4)).collect();
        let mut rs = Vec::new();
        for r in 0..rows {
            let mut coefs: Vec<(usize, f64)> = Vec::new();
            for v in 0..n {
                if rng.uniform() < 0.8 {
                    coefs.push((v, int(&mut rng, -2, 5)));
                }
            }
            let mid = groups as f64 * rng.uniform_in(0.0, 3.0);
            let (lo, hi) = match rng.below(4) {
                0 => (f64::NEG_INFINITY, mid.round()),
                1 => (mid.round(), f64::INFINITY),
                2 => (mid.round() - 2.0, mid.round() + 2.0),
                _ => (mid.round(), mid.round()),
            };
            rs.push(Row {
                name: format!("r{r}"),
                coefs,
                lo,
                hi,
            });
        }
        MipProblem {
            num_vars: n,
            groups: gvars,
            objective,
            objective_constant: 0.0,
            rows: rs,
        }
    }
}
