//! `bnb`: an exact branch-and-bound solver specialised for Puzzle's multiple-choice programs
//! (one choice per group, a handful of linear rows), written in Rust; the default solver, with
//! HiGHS as the general-purpose check.
//!
//! - Every row becomes `<=` rows; within each group, choices another choice dominates (no
//!   worse in the objective and every row) are dropped before anything else.
//! - Bounds come from the Lagrangian relaxation
//!   `L(lambda) = sum_g min_c (f_c + lambda . a_c) - lambda . b`, a valid lower bound for any
//!   `lambda >= 0` and, because choosing one per group is integral, as strong as the LP
//!   relaxation at the best `lambda`: the LP's own multipliers (a dense simplex on the reduced
//!   problem), polished by projected subgradient ascent.
//! - Incumbents: the caller's hints (a sweep's previous point), the LP point rounded, the
//!   Lagrangian choices at a few multipliers, each row's cheapest choice, then 1-swap search.
//! - Reduced-cost fixing removes choices whose Lagrangian cost alone exceeds the incumbent.
//! - Depth-first search over groups (most ambiguous first) with the root's multipliers for the
//!   whole tree: a node's bound is the root bound plus its choices' reduced costs and its
//!   feasibility test is the cheapest completion of every row, both O(rows) per node, so the
//!   search visits millions of nodes a second.
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
        description: "exact branch and bound for multiple-choice programs: dominance, Lagrangian bounds, reduced-cost fixing (pure Rust; the default)",
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

/// The choices of `d` kept by [`drop_dominated`], and where every original choice went.
struct Kept {
    /// Per group, the original index of each kept choice.
    original: Vec<Vec<usize>>,
    /// Per group and original choice, a kept choice (reduced index) at least as good in the
    /// objective and every row: itself when kept.
    stand_in: Vec<Vec<usize>>,
}

/// Drops every choice another choice of its group dominates (no worse in the objective and in
/// every row, better in one, or equal and earlier): some optimal solution avoids it, so the
/// search and the LP never need it.
fn drop_dominated(d: &Dense) -> (Dense, Kept) {
    let mut original: Vec<Vec<usize>> = Vec::with_capacity(d.obj.len());
    let mut stand_in: Vec<Vec<usize>> = Vec::with_capacity(d.obj.len());
    for g in 0..d.obj.len() {
        let n = d.obj[g].len();
        let no_worse = |x: usize, y: usize| {
            d.obj[g][x] <= d.obj[g][y] && (0..d.b.len()).all(|r| d.a[g][x][r] <= d.a[g][y][r])
        };
        let dominates = |x: usize, y: usize| {
            let equal =
                d.obj[g][x] == d.obj[g][y] && (0..d.b.len()).all(|r| d.a[g][x][r] == d.a[g][y][r]);
            no_worse(x, y) && (!equal || x < y)
        };
        let kept: Vec<usize> = (0..n)
            .filter(|&y| !(0..n).any(|x| x != y && dominates(x, y)))
            .collect();
        // Dominance is transitive, so some kept choice is no worse than every dropped one.
        stand_in.push(
            (0..n)
                .map(|y| {
                    kept.iter()
                        .position(|&x| no_worse(x, y))
                        .expect("a kept choice dominates every dropped one")
                })
                .collect(),
        );
        original.push(kept);
    }
    let pick = |g: usize| original[g].iter();
    let reduced = Dense {
        obj: (0..d.obj.len())
            .map(|g| pick(g).map(|&c| d.obj[g][c]).collect())
            .collect(),
        a: (0..d.obj.len())
            .map(|g| pick(g).map(|&c| d.a[g][c].clone()).collect())
            .collect(),
        b: d.b.clone(),
    };
    (reduced, Kept { original, stand_in })
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

    /// Depth-first search with the root's multipliers for the whole tree. With one `lambda`, a
    /// node's Lagrangian bound is the root bound plus the reduced costs of the choices fixed so
    /// far, so a node costs O(rows) instead of a pass over every free group; the price is a
    /// weaker bound than re-optimising `lambda` per node, which reduced-cost fixing at the root
    /// and a good incumbent make up for on Puzzle's problems (few rows, many groups).
    fn dfs(
        &mut self,
        tree: &Tree,
        depth: usize,
        choice: &mut [usize],
        used: &mut [f64],
        rc_sum: f64,
        obj_sum: f64,
    ) {
        self.nodes += 1;
        if self.nodes.is_multiple_of(4096) && Instant::now() > self.deadline {
            self.timed_out = true;
        }
        if self.timed_out {
            return;
        }
        if depth == self.order.len() {
            // Every choice on the way was checked against the rows (with the cheapest
            // completion of the rest), so a leaf is feasible.
            if self.best.as_ref().is_none_or(|(b, _)| obj_sum < *b) {
                self.best = Some((obj_sum, choice.to_vec()));
            }
            return;
        }
        let g = self.order[depth];
        let rest = &tree.suffix_min[depth + 1];
        for &(c, rc) in &tree.kids[depth] {
            // Children are sorted by reduced cost: once one is pruned by bound, all later are.
            if let Some((inc, _)) = &self.best
                && tree.root + rc_sum + rc >= inc - self.prune_tol(*inc)
            {
                break;
            }
            let a = &self.d.a[g][c];
            let fits = (0..a.len()).all(|i| {
                used[i] + a[i] + rest[i] <= self.d.b[i] + 1e-9 * (1.0 + self.d.b[i].abs())
            });
            if !fits {
                continue;
            }
            choice[g] = c;
            for i in 0..a.len() {
                used[i] += a[i];
            }
            self.dfs(
                tree,
                depth + 1,
                choice,
                used,
                rc_sum + rc,
                obj_sum + self.d.obj[g][c],
            );
            for i in 0..a.len() {
                used[i] -= a[i];
            }
            if self.timed_out {
                return;
            }
        }
    }

    /// The search tree's fixed data for multipliers `lambda` and root bound `root`.
    fn tree(&self, lambda: &[f64], root: f64) -> Tree {
        let r = self.nrows();
        let kids: Vec<Vec<(usize, f64)>> = self
            .order
            .iter()
            .map(|&g| {
                let mut v: Vec<(usize, f64)> = self.alive[g]
                    .iter()
                    .map(|&c| (c, self.lag_cost(g, c, lambda)))
                    .collect();
                let min = v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
                for x in &mut v {
                    x.1 -= min;
                }
                v.sort_by(|a, b| a.1.total_cmp(&b.1));
                v
            })
            .collect();
        let mut suffix_min = vec![vec![0.0; r]; self.order.len() + 1];
        for depth in (0..self.order.len()).rev() {
            let g = self.order[depth];
            for i in 0..r {
                let m = self.alive[g]
                    .iter()
                    .map(|&c| self.d.a[g][c][i])
                    .fold(f64::INFINITY, f64::min);
                suffix_min[depth][i] = suffix_min[depth + 1][i] + m;
            }
        }
        Tree {
            kids,
            suffix_min,
            root,
        }
    }
}

/// What [`Search::dfs`] reads at every node, computed once.
struct Tree {
    /// Per depth (in search order): the group's alive choices and their reduced costs
    /// (Lagrangian cost minus the group's least), ascending.
    kids: Vec<Vec<(usize, f64)>>,
    /// `suffix_min[depth][r]`: the least total of row `r` over the groups from `depth` on.
    suffix_min: Vec<Vec<f64>>,
    /// The root's Lagrangian bound.
    root: f64,
}

impl Solver for BnbSolver {
    fn name(&self) -> &str {
        "bnb"
    }

    fn solve(&self, p: &MipProblem, opts: &SolveOptions) -> Result<MipSolution> {
        p.validate()?;
        let t0 = Instant::now();
        let (d, kept) = drop_dominated(&densify(p));
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
        // The caller's hints (e.g. the previous point of a sweep), each choice replaced by the
        // kept choice no worse than it: still feasible, no worse.
        for h in &opts.hints {
            if h.len() == groups && h.iter().zip(&p.groups).all(|(&c, g)| c < g.len()) {
                s.offer(
                    h.iter()
                        .enumerate()
                        .map(|(g, &c)| kept.stand_in[g][c])
                        .collect(),
                );
            }
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
        let tree = s.tree(&lambda, root);
        s.dfs(&tree, 0, &mut choice, &mut used, 0.0, 0.0);

        let seconds = t0.elapsed().as_secs_f64();
        let k = p.objective_constant;
        let best = s.best.map(|(o, c)| {
            (
                o,
                c.iter()
                    .enumerate()
                    .map(|(g, &k)| kept.original[g][k])
                    .collect(),
            )
        });
        Ok(match (best, s.timed_out) {
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

    /// Ties, duplicated choices, zero and negative coefficients, equality and two-sided rows:
    /// the dominance reduction and the bound pruning must stay exact on all of them.
    #[test]
    fn matches_brute_force_on_awkward_instances() {
        let opts = SolveOptions::default();
        let (mut optimal, mut infeasible) = (0, 0);
        for seed in 0..1200u64 {
            let groups = 1 + (seed % 5) as usize;
            let choices = 1 + (seed % 6) as usize;
            let rows = (seed % 4) as usize;
            let p = random::awkward(seed, groups, choices, rows);
            let want = brute_force(&p);
            let got = BnbSolver.solve(&p, &opts).unwrap();
            assert_eq!(got.status, want.status, "seed {seed}: {p:?}");
            if want.status == MipStatus::Optimal {
                optimal += 1;
                assert!(
                    (got.objective - want.objective).abs() < 1e-9,
                    "seed {seed}: {} vs {}",
                    got.objective,
                    want.objective
                );
                assert!(p.violations(&got.choice).is_empty(), "seed {seed}");
                assert!((p.objective_of(&got.choice) - got.objective).abs() < 1e-9);
            } else {
                infeasible += 1;
            }
        }
        assert!(
            optimal > 400 && infeasible > 100,
            "{optimal} optimal, {infeasible} infeasible: tune the generator"
        );
    }
}
