//! `bnb`: an exact branch-and-bound solver for Puzzle's multiple-choice programs, written in
//! Rust so that it can check HiGHS (and stand in when a C++ toolchain is not available).
//!
//! - Every row becomes `<=` rows. Bounds come from the Lagrangian relaxation
//!   `L(lambda) = sum_g min_c (f_c + lambda . a_c) - lambda . b`, a valid lower bound for any
//!   `lambda >= 0` and, because choosing one per group is integral, as strong as the LP
//!   relaxation at the best `lambda` (found by projected subgradient ascent).
//! - Incumbents come from the Lagrangian choices and a 1-swap local search.
//! - Reduced-cost fixing removes choices whose Lagrangian cost alone exceeds the incumbent.
//! - Depth-first search over groups (most ambiguous first), pruning by feasibility (the cheapest
//!   completion of every row) and by bound, with `lambda` re-optimised at shallow nodes.
//!
//! The search is exhaustive unless the time limit stops it, so `Optimal` and `Infeasible` are
//! proofs.

// Dense numeric kernels read more clearly with index loops over parallel arrays.
#![allow(clippy::needless_range_loop)]

use std::time::Instant;

mod lp;

use puzzle_types::error::Result;
use puzzle_types::search::mip::{MipProblem, MipSolution, MipStatus, SolveOptions, Solver};

/// The branch-and-bound solver.
pub struct BnbSolver;

inventory::submit! {
    puzzle_types::search::SolverRegistration {
        solver: &BnbSolver,
        provider: "puzzle-solver-bnb",
        description: "exact branch and bound with Lagrangian bounds (pure Rust)",
    }
}

/// Forces the linker to keep this crate's registration.
pub fn link() {}

struct Dense {
    /// `obj[g][c]`
    obj: Vec<Vec<f64>>,
    /// `a[g][c][r]` for `<=` rows
    a: Vec<Vec<Vec<f64>>>,
    /// `b[r]`
    b: Vec<f64>,
}

fn densify(p: &MipProblem) -> Dense {
    // Each finite side of a row is one `<=` row.
    let mut rows: Vec<(Vec<f64>, f64)> = Vec::new();
    for r in &p.rows {
        let mut coef = vec![0.0; p.num_vars];
        for &(v, c) in &r.coefs {
            coef[v] += c;
        }
        if r.hi.is_finite() {
            rows.push((coef.clone(), r.hi));
        }
        if r.lo.is_finite() {
            rows.push((coef.iter().map(|c| -c).collect(), -r.lo));
        }
    }
    let obj = p
        .groups
        .iter()
        .map(|g| g.iter().map(|&v| p.objective[v]).collect())
        .collect();
    let a = p
        .groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|&v| rows.iter().map(|(coef, _)| coef[v]).collect())
                .collect()
        })
        .collect();
    Dense {
        obj,
        a,
        b: rows.iter().map(|r| r.1).collect(),
    }
}

struct Search<'a> {
    d: &'a Dense,
    /// Choices still allowed per group (after reduced-cost fixing).
    alive: Vec<Vec<usize>>,
    order: Vec<usize>,
    best: Option<(f64, Vec<usize>)>,
    nodes: u64,
    deadline: Instant,
    timed_out: bool,
    abs_tol: f64,
    rel_gap: f64,
}

impl Search<'_> {
    fn nrows(&self) -> usize {
        self.d.b.len()
    }

    fn lag_cost(&self, g: usize, c: usize, lambda: &[f64]) -> f64 {
        self.d.obj[g][c]
            + self.d.a[g][c]
                .iter()
                .zip(lambda)
                .map(|(a, l)| a * l)
                .sum::<f64>()
    }

    /// `L(lambda)` restricted to groups `groups` with budget `budget`, and the minimisers.
    fn lagrangian(
        &self,
        groups: &[usize],
        budget: &[f64],
        lambda: &[f64],
    ) -> (f64, Vec<(usize, usize)>) {
        let mut total = -budget.iter().zip(lambda).map(|(b, l)| b * l).sum::<f64>();
        let mut arg = Vec::with_capacity(groups.len());
        for &g in groups {
            let (c, v) = self.alive[g]
                .iter()
                .map(|&c| (c, self.lag_cost(g, c, lambda)))
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .expect("alive choices");
            total += v;
            arg.push((g, c));
        }
        (total, arg)
    }

    /// Projected subgradient ascent on `lambda`; returns the best bound and its `lambda`.
    fn optimise_lambda(
        &self,
        groups: &[usize],
        budget: &[f64],
        start: &[f64],
        iters: usize,
    ) -> (f64, Vec<f64>) {
        let r = self.nrows();
        let mut lambda = start.to_vec();
        let (mut best_val, _) = self.lagrangian(groups, budget, &lambda);
        let mut best_lambda = lambda.clone();
        if r == 0 {
            return (best_val, best_lambda);
        }
        let scale: f64 = groups
            .iter()
            .map(|&g| {
                let v: Vec<f64> = self.alive[g].iter().map(|&c| self.d.obj[g][c]).collect();
                v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                    - v.iter().cloned().fold(f64::INFINITY, f64::min)
            })
            .sum::<f64>()
            .max(1e-9);
        let mut step = 1.0;
        let mut since_improve = 0;
        for _ in 0..iters {
            let (val, arg) = self.lagrangian(groups, budget, &lambda);
            if val > best_val + 1e-12 * best_val.abs().max(1.0) {
                best_val = val;
                best_lambda = lambda.clone();
                since_improve = 0;
            } else {
                since_improve += 1;
                if since_improve > 10 {
                    step *= 0.5;
                    since_improve = 0;
                }
            }
            let mut sub = vec![0.0; r];
            for &(g, c) in &arg {
                for (s, a) in sub.iter_mut().zip(&self.d.a[g][c]) {
                    *s += a;
                }
            }
            for (s, b) in sub.iter_mut().zip(budget) {
                *s -= b;
            }
            let norm2: f64 = sub.iter().map(|s| s * s).sum();
            if norm2 < 1e-18 || step < 1e-9 {
                break;
            }
            // Polyak-like step scaled by the objective's spread.
            let t = step * scale / norm2.sqrt() / (norm2.sqrt().max(1e-12));
            for (l, s) in lambda.iter_mut().zip(&sub) {
                *l = (*l + t * s).max(0.0);
            }
        }
        (best_val, best_lambda)
    }

    fn feasible(&self, choice: &[usize]) -> bool {
        (0..self.nrows()).all(|r| {
            let s: f64 = choice
                .iter()
                .enumerate()
                .map(|(g, &c)| self.d.a[g][c][r])
                .sum();
            s <= self.d.b[r] + 1e-9 * (1.0 + self.d.b[r].abs())
        })
    }

    fn objective(&self, choice: &[usize]) -> f64 {
        choice
            .iter()
            .enumerate()
            .map(|(g, &c)| self.d.obj[g][c])
            .sum()
    }

    fn offer(&mut self, choice: Vec<usize>) {
        if self.feasible(&choice) {
            let o = self.objective(&choice);
            if self.best.as_ref().is_none_or(|(b, _)| o < *b) {
                self.best = Some((o, choice));
            }
        }
    }

    /// 1-swap local search from the incumbent.
    fn improve(&mut self) {
        let Some((_, mut cur)) = self.best.clone() else {
            return;
        };
        let groups = cur.len();
        let mut improved = true;
        let mut passes = 0;
        while improved && passes < 50 {
            improved = false;
            passes += 1;
            for g in 0..groups {
                let base = cur[g];
                for &c in &self.alive[g].clone() {
                    if self.d.obj[g][c] < self.d.obj[g][cur[g]] - 1e-15 {
                        cur[g] = c;
                        if self.feasible(&cur) {
                            improved = true;
                        } else {
                            cur[g] = base;
                        }
                    }
                }
            }
        }
        self.offer(cur);
    }

    fn prune_tol(&self, inc: f64) -> f64 {
        self.abs_tol.max(self.rel_gap * inc.abs())
    }

    fn dfs(
        &mut self,
        depth: usize,
        choice: &mut Vec<usize>,
        used: &mut Vec<f64>,
        fixed_obj: f64,
        lambda: &[f64],
    ) {
        self.nodes += 1;
        if self.nodes.is_multiple_of(4096) && Instant::now() > self.deadline {
            self.timed_out = true;
        }
        if self.timed_out {
            return;
        }
        let r = self.nrows();
        if depth == self.order.len() {
            let fits = (0..r).all(|i| used[i] <= self.d.b[i] + 1e-9 * (1.0 + self.d.b[i].abs()));
            if !fits {
                return;
            }
            let o = fixed_obj;
            if self.best.as_ref().is_none_or(|(b, _)| o < *b) {
                self.best = Some((o, choice.clone()));
            }
            return;
        }
        let rest: Vec<usize> = self.order[depth..].to_vec();
        let budget: Vec<f64> = (0..r).map(|i| self.d.b[i] - used[i]).collect();
        // Feasibility: even the cheapest completion of some row overflows.
        for i in 0..r {
            let min: f64 = rest
                .iter()
                .map(|&g| {
                    self.alive[g]
                        .iter()
                        .map(|&c| self.d.a[g][c][i])
                        .fold(f64::INFINITY, f64::min)
                })
                .sum();
            if min > budget[i] + 1e-9 * (1.0 + budget[i].abs()) {
                return;
            }
        }
        // Bound with the inherited lambda; re-optimise near the root where it pays.
        let mut lambda = lambda.to_vec();
        let (mut lb, _) = self.lagrangian(&rest, &budget, &lambda);
        if let Some((inc, _)) = &self.best
            && fixed_obj + lb >= inc - self.prune_tol(*inc)
        {
            return;
        }
        if depth < 12 || self.nodes.is_multiple_of(64) {
            let (v, l) = self.optimise_lambda(&rest, &budget, &lambda, 60);
            if v > lb {
                lb = v;
                lambda = l;
            }
            if let Some((inc, _)) = &self.best
                && fixed_obj + lb >= inc - self.prune_tol(*inc)
            {
                return;
            }
        }
        let g = self.order[depth];
        let mut kids: Vec<(usize, f64)> = self.alive[g]
            .iter()
            .map(|&c| (c, self.lag_cost(g, c, &lambda)))
            .collect();
        kids.sort_by(|a, b| a.1.total_cmp(&b.1));
        let min_kid = kids[0].1;
        for (c, lc) in kids {
            // Bound of this child: the parent bound plus its Lagrangian regret.
            if let Some((inc, _)) = &self.best
                && fixed_obj + lb + (lc - min_kid) >= inc - self.prune_tol(*inc)
            {
                break; // children are sorted by regret
            }
            choice[g] = c;
            for i in 0..r {
                used[i] += self.d.a[g][c][i];
            }
            self.dfs(
                depth + 1,
                choice,
                used,
                fixed_obj + self.d.obj[g][c],
                &lambda,
            );
            for i in 0..r {
                used[i] -= self.d.a[g][c][i];
            }
            if self.timed_out {
                return;
            }
        }
    }
}

impl Solver for BnbSolver {
    fn name(&self) -> &str {
        "bnb"
    }

    fn solve(&self, p: &MipProblem, opts: &SolveOptions) -> Result<MipSolution> {
        p.validate()?;
        let t0 = Instant::now();
        let d = densify(p);
        let groups = d.obj.len();
        let r = d.b.len();
        let mut s = Search {
            d: &d,
            alive: d.obj.iter().map(|g| (0..g.len()).collect()).collect(),
            order: (0..groups).collect(),
            best: None,
            nodes: 0,
            deadline: t0 + std::time::Duration::from_secs_f64(opts.time_limit_secs.max(0.0)),
            timed_out: false,
            abs_tol: 1e-12,
            rel_gap: opts.relative_gap.max(0.0),
        };
        let all: Vec<usize> = (0..groups).collect();
        // The LP relaxation gives the exact Lagrangian multipliers and a near-integral point
        // (at most one fractional group per row).
        let relax = lp::solve(&d.obj, &d.a, &d.b);
        if relax.value.is_none() {
            return Ok(MipSolution {
                status: MipStatus::Infeasible,
                choice: vec![],
                objective: f64::INFINITY,
                bound: f64::INFINITY,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        let (root, lambda) = s.optimise_lambda(&all, &d.b, &relax.lambda, 100);
        // Incumbents: round the LP point (every combination of the fractional groups' choices).
        let mut offset = 0;
        let mut support: Vec<Vec<usize>> = Vec::with_capacity(groups);
        for g in 0..groups {
            let k = d.obj[g].len();
            let mut sup: Vec<usize> = (0..k).filter(|&c| relax.x[offset + c] > 1e-9).collect();
            sup.sort_by(|&a, &b| relax.x[offset + b].total_cmp(&relax.x[offset + a]));
            support.push(if sup.is_empty() { vec![0] } else { sup });
            offset += k;
        }
        let fractional: Vec<usize> = (0..groups).filter(|&g| support[g].len() > 1).collect();
        let base: Vec<usize> = support.iter().map(|v| v[0]).collect();
        let combos: usize = fractional.iter().map(|&g| support[g].len()).product();
        if combos <= 4096 {
            for k in 0..combos {
                let mut ch = base.clone();
                let mut rest = k;
                for &g in &fractional {
                    ch[g] = support[g][rest % support[g].len()];
                    rest /= support[g].len();
                }
                s.offer(ch);
            }
        }
        // The Lagrangian choice at a few multipliers.
        for scale in [1.0, 1.5, 2.0, 4.0, 8.0] {
            let l: Vec<f64> = lambda.iter().map(|x| x * scale).collect();
            let (_, arg) = s.lagrangian(&all, &d.b, &l);
            let mut ch = vec![0; groups];
            for (g, c) in arg {
                ch[g] = c;
            }
            s.offer(ch);
        }
        // The choice minimising each row alone (finds feasibility when it is scarce).
        for i in 0..r {
            let ch: Vec<usize> = (0..groups)
                .map(|g| {
                    (0..d.obj[g].len())
                        .min_by(|&x, &y| d.a[g][x][i].total_cmp(&d.a[g][y][i]))
                        .expect("non-empty")
                })
                .collect();
            s.offer(ch);
        }
        s.improve();
        // Reduced-cost fixing at the root.
        if let Some((inc, _)) = s.best.clone() {
            let tol = s.prune_tol(inc);
            for g in 0..groups {
                let costs: Vec<f64> = (0..d.obj[g].len())
                    .map(|c| s.lag_cost(g, c, &lambda))
                    .collect();
                let min = costs.iter().cloned().fold(f64::INFINITY, f64::min);
                let keep: Vec<usize> = (0..costs.len())
                    .filter(|&c| {
                        root + (costs[c] - min) < inc - tol
                            || s.best.as_ref().is_some_and(|b| b.1[g] == c)
                    })
                    .collect();
                s.alive[g] = keep;
            }
        }
        // Most ambiguous groups first: small gap between the two best Lagrangian costs.
        let mut regret: Vec<(usize, f64)> = (0..groups)
            .map(|g| {
                let mut v: Vec<f64> = s.alive[g]
                    .iter()
                    .map(|&c| s.lag_cost(g, c, &lambda))
                    .collect();
                v.sort_by(f64::total_cmp);
                (
                    g,
                    if v.len() > 1 {
                        v[1] - v[0]
                    } else {
                        f64::INFINITY
                    },
                )
            })
            .collect();
        regret.sort_by(|a, b| a.1.total_cmp(&b.1));
        s.order = regret.into_iter().map(|(g, _)| g).collect();
        let mut choice = vec![0usize; groups];
        let mut used = vec![0.0; r];
        s.dfs(0, &mut choice, &mut used, 0.0, &lambda);
        let seconds = t0.elapsed().as_secs_f64();
        let k = p.objective_constant;
        Ok(match (s.best, s.timed_out) {
            (Some((o, c)), timed_out) => MipSolution {
                status: if timed_out {
                    MipStatus::Feasible
                } else {
                    MipStatus::Optimal
                },
                choice: c,
                objective: o + k,
                bound: if timed_out { root.min(o) + k } else { o + k },
                seconds,
            },
            (None, false) => MipSolution {
                status: MipStatus::Infeasible,
                choice: vec![],
                objective: f64::INFINITY,
                bound: f64::INFINITY,
                seconds,
            },
            (None, true) => MipSolution {
                status: MipStatus::Unknown,
                choice: vec![],
                objective: f64::INFINITY,
                bound: root + k,
                seconds,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_types::search::mip::{brute_force, random};

    #[test]
    fn matches_brute_force_on_random_small_instances() {
        let opts = SolveOptions::default();
        let mut infeasible = 0;
        for seed in 0..400u64 {
            let groups = 3 + (seed % 4) as usize;
            let choices = 2 + (seed % 7) as usize;
            let rows = 1 + (seed % 3) as usize;
            let p = random::instance(seed, groups, choices, rows);
            let want = brute_force(&p);
            let got = BnbSolver.solve(&p, &opts).unwrap();
            assert_eq!(got.status, want.status, "seed {seed}");
            if want.status == MipStatus::Optimal {
                assert!(
                    (got.objective - want.objective).abs() < 1e-9,
                    "seed {seed}: {} vs {}",
                    got.objective,
                    want.objective
                );
                assert!(p.violations(&got.choice).is_empty());
                assert!((p.objective_of(&got.choice) - got.objective).abs() < 1e-9);
            } else {
                infeasible += 1;
            }
        }
        assert!(
            infeasible > 10 && infeasible < 300,
            "{infeasible} infeasible instances: tune the generator"
        );
    }
}
