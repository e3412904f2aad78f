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
//!   problem, started from a feasible incumbent's basis when there is one), polished by
//!   projected subgradient ascent.
//! - Incumbents: the caller's hints (a sweep's previous point), each row's cheapest choice,
//!   the Lagrangian choices at a few multipliers, the LP point rounded, then 1-swaps and an
//!   exchange search over pairs of the least-reduced-cost moves. The incumbent before the tree
//!   decides how much of the tree is pruned, so this is where the time is saved.
//! - Reduced-cost fixing removes choices whose Lagrangian cost alone exceeds the incumbent.
//! - Depth-first search over groups, widest first (the groups whose choice moves the
//!   objective and the rows the most). A node is pruned by the best of one bound per row: the
//!   Lagrangian bound with the other rows at the root's multipliers and this row's multiplier
//!   re-optimised for the room left, read off a precomputed concave piecewise-linear function
//!   of the rest of the tree by binary search (for a single row this is the LP of the rest,
//!   exactly). Its feasibility test is the cheapest completion of every row. Both are O(rows
//!   log breakpoints) per node.
//!
//! The search is exhaustive unless the time limit stops it, so `Optimal` and `Infeasible` are
//! proofs.

// Dense numeric kernels read more clearly with index loops over parallel arrays.
#![allow(clippy::needless_range_loop)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

mod ablation;
mod lp;

pub use ablation::{GreedySolver, RANDOM_DRAWS, RandomSolver};

use puzzle_types::error::Result;
use puzzle_types::search::mip::{MipProblem, MipSolution, MipStatus, SolveOptions, Solver};

/// The branch-and-bound solver. An instance remembers the last problem's dominance pruning
/// and reuses it when the next problem differs only in its bounds (the points of a sweep); a
/// new instance starts cold.
pub struct BnbSolver {
    last: Mutex<Option<Arc<Pruned>>>,
}

impl BnbSolver {
    pub const fn new() -> BnbSolver {
        BnbSolver {
            last: Mutex::new(None),
        }
    }
}

impl Default for BnbSolver {
    fn default() -> Self {
        Self::new()
    }
}

/// The registered instance (the CLI's and the pipeline's).
static REGISTERED: BnbSolver = BnbSolver::new();

inventory::submit! {
    puzzle_types::search::SolverRegistration {
        solver: &REGISTERED,
        provider: "puzzle-solver-bnb",
        description: "exact branch and bound for multiple-choice programs: dominance, Lagrangian bounds, reduced-cost fixing (pure Rust; the default)",
    }
}

/// Forces the linker to keep this crate's registration.
pub fn link() {}

#[derive(Clone, PartialEq)]
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
#[derive(Clone)]
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
        // Only a choice no worse in the objective can dominate, and dominance is transitive,
        // so in objective order each choice need only be checked against the kept ones
        // before it (and its equal-objective peers after it).
        let mut by_obj: Vec<usize> = (0..n).collect();
        by_obj.sort_by(|&x, &y| d.obj[g][x].total_cmp(&d.obj[g][y]).then(x.cmp(&y)));
        let mut kept: Vec<usize> = Vec::new();
        for (k, &y) in by_obj.iter().enumerate() {
            let ties = by_obj[k + 1..]
                .iter()
                .take_while(|&&x| d.obj[g][x] == d.obj[g][y]);
            if !kept.iter().chain(ties).any(|&x| dominates(x, y)) {
                kept.push(y);
            }
        }
        kept.sort_unstable();
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

/// One problem's dominance pruning, kept for the next solve: the points of a sweep and the
/// repeats of a search differ only in their bounds, and pruning, which ignores bounds, was 29% of
/// a 20-point sweep's time on the 80 x 100 instance. Its input is kept whole and compared exactly,
/// so a different problem is never served a stale answer.
struct Pruned {
    /// The densified problem pruned (its `b` is not used).
    input: Dense,
    reduced: Dense,
    kept: Kept,
}

/// [`drop_dominated`] of `d`, reused from the previous solve of `solver` when only `b` changed.
fn drop_dominated_reusing(solver: &BnbSolver, d: &Dense) -> (Dense, Kept) {
    let last = solver
        .last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(p) = last
        && p.input.obj == d.obj
        && p.input.a == d.a
    {
        let mut reduced = p.reduced.clone();
        reduced.b = d.b.clone();
        return (reduced, p.kept.clone());
    }
    let (reduced, kept) = drop_dominated(d);
    *solver.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Pruned {
        input: d.clone(),
        reduced: reduced.clone(),
        kept: kept.clone(),
    }));
    (reduced, kept)
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

    /// Offers the Lagrangian choice (each group's least `f + lambda . a`) at `lambda` times
    /// each of `scales`: larger multipliers trade objective for room in the rows.
    fn offer_lagrangian(&mut self, lambda: &[f64], scales: &[f64]) {
        let all: Vec<usize> = (0..self.d.obj.len()).collect();
        for &scale in scales {
            let l: Vec<f64> = lambda.iter().map(|x| x * scale).collect();
            let (_, arg) = self.lagrangian(&all, &self.d.b, &l);
            let mut ch = vec![0; all.len()];
            for (g, c) in arg {
                ch[g] = c;
            }
            self.offer(ch);
        }
    }

    /// 1-swap local search from the incumbent: any move to a better objective that keeps
    /// every row, with the row totals kept up to date.
    fn improve(&mut self) {
        let Some((_, mut cur)) = self.best.clone() else {
            return;
        };
        let rows = self.nrows();
        let mut used = vec![0.0; rows];
        for (g, &c) in cur.iter().enumerate() {
            for (u, a) in used.iter_mut().zip(&self.d.a[g][c]) {
                *u += a;
            }
        }
        let mut improved = true;
        let mut passes = 0;
        while improved && passes < 50 {
            improved = false;
            passes += 1;
            for g in 0..cur.len() {
                for &c in &self.alive[g] {
                    let c0 = cur[g];
                    if self.d.obj[g][c] < self.d.obj[g][c0] - 1e-15
                        && (0..rows).all(|r| {
                            used[r] - self.d.a[g][c0][r] + self.d.a[g][c][r]
                                <= self.d.b[r] + 1e-9 * (1.0 + self.d.b[r].abs())
                        })
                    {
                        for r in 0..rows {
                            used[r] += self.d.a[g][c][r] - self.d.a[g][c0][r];
                        }
                        cur[g] = c;
                        improved = true;
                    }
                }
            }
        }
        self.offer(cur);
    }

    /// Exchange search from the incumbent: among the moves (one group to another choice) of
    /// least reduced cost at `lambda`, the best improving single move or pair of moves in
    /// different groups that keeps every row, repeated until none improves. An optimum differs
    /// from a near-optimal point in a few moves of small reduced cost, and a pair can trade
    /// room between groups where a single move cannot; a better incumbent before the tree
    /// search prunes far more of it (on NVIDIA's 70B library, tens of times fewer nodes).
    fn exchange(&mut self, lambda: &[f64]) {
        const MOVES: usize = 48;
        let Some((_, mut cur)) = self.best.clone() else {
            return;
        };
        let rows = self.nrows();
        let tol = |b: f64| 1e-9 * (1.0 + b.abs());
        for _ in 0..100 {
            let mut used = vec![0.0; rows];
            for (g, &c) in cur.iter().enumerate() {
                for (u, a) in used.iter_mut().zip(&self.d.a[g][c]) {
                    *u += a;
                }
            }
            let mut moves: Vec<Move> = Vec::new();
            for (g, &c0) in cur.iter().enumerate() {
                let base = self.lag_cost(g, c0, lambda);
                for &c in &self.alive[g] {
                    if c != c0 {
                        moves.push((g, c, self.lag_cost(g, c, lambda) - base));
                    }
                }
            }
            moves.sort_by(|x, y| x.2.total_cmp(&y.2));
            moves.truncate(MOVES);
            let delta = |(g, c, _): (usize, usize, f64)| self.d.obj[g][c] - self.d.obj[g][cur[g]];
            let fits = |ms: &[Move]| {
                (0..rows).all(|r| {
                    let mut u = used[r];
                    for &(g, c, _) in ms {
                        u += self.d.a[g][c][r] - self.d.a[g][cur[g]][r];
                    }
                    u <= self.d.b[r] + tol(self.d.b[r])
                })
            };
            let mut best: Option<(f64, Vec<Move>)> = None;
            for i in 0..moves.len() {
                let di = delta(moves[i]);
                if di < -1e-15 && best.as_ref().is_none_or(|b| di < b.0) && fits(&[moves[i]]) {
                    best = Some((di, vec![moves[i]]));
                }
                for j in i + 1..moves.len() {
                    if moves[j].0 == moves[i].0 {
                        continue;
                    }
                    let dij = di + delta(moves[j]);
                    if dij < -1e-15
                        && best.as_ref().is_none_or(|b| dij < b.0)
                        && fits(&[moves[i], moves[j]])
                    {
                        best = Some((dij, vec![moves[i], moves[j]]));
                    }
                }
            }
            let Some((_, ms)) = best else { break };
            for (g, c, _) in ms {
                cur[g] = c;
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
        if let Some((inc, _)) = &self.best
            && tree.bound(depth, obj_sum, used, &self.d.b) >= inc - self.prune_tol(*inc)
        {
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
        // Per row, the rest of the tree's Lagrangian function of that row's multiplier alone.
        let per_row = (0..r)
            .filter_map(|row| {
                let mut fixed = lambda.to_vec();
                fixed[row] = 0.0;
                let envelopes: Vec<Envelope> = self
                    .order
                    .iter()
                    .map(|&g| {
                        let lines: Vec<(f64, f64)> = self.alive[g]
                            .iter()
                            .map(|&c| (self.lag_cost(g, c, &fixed), self.d.a[g][c][row]))
                            .collect();
                        Envelope::lower(&lines)
                    })
                    .collect();
                // Depth d stores every breakpoint of the groups from d on: quadratic in the
                // groups. Past a budget (hundreds of groups with long envelopes) the row keeps
                // only the root's bound, which the search applies anyway.
                let mut rest = 0usize;
                let mut entries = 0usize;
                for e in envelopes.iter().rev() {
                    rest += e.breaks.len();
                    entries += rest + 1;
                }
                (entries <= SUFFIX_BUDGET).then(|| RowBound {
                    row,
                    lambda_rest: fixed,
                    suffix: Suffix::build(&envelopes),
                })
            })
            .collect();
        Tree {
            kids,
            suffix_min,
            root,
            per_row,
        }
    }
}

/// The lower envelope `min_c (intercept_c + t * slope_c)` of a group's choices for `t >= 0`: a
/// concave piecewise-linear function, as its value and slope at 0 and the slope changes after.
struct Envelope {
    at_zero: f64,
    slope: f64,
    /// `(t, slope decrease)` at each breakpoint, `t` ascending.
    breaks: Vec<(f64, f64)>,
}

impl Envelope {
    fn lower(lines: &[(f64, f64)]) -> Envelope {
        // At t = 0 the least intercept wins (ties: the flatter line, which stays lower).
        let mut cur = (0..lines.len())
            .min_by(|&x, &y| {
                lines[x]
                    .0
                    .total_cmp(&lines[y].0)
                    .then(lines[x].1.total_cmp(&lines[y].1))
            })
            .expect("a group has a choice");
        let mut t = 0.0;
        let mut breaks = Vec::new();
        loop {
            // The next line to cross below the current one: only flatter lines can.
            let (i0, s0) = lines[cur];
            let next = (0..lines.len())
                .filter(|&j| lines[j].1 < s0)
                .map(|j| (j, ((lines[j].0 - i0) / (s0 - lines[j].1)).max(t)))
                .min_by(|x, y| {
                    x.1.total_cmp(&y.1)
                        .then(lines[x.0].1.total_cmp(&lines[y.0].1))
                });
            let Some((j, tj)) = next else { break };
            if !tj.is_finite() {
                break;
            }
            breaks.push((tj, s0 - lines[j].1));
            cur = j;
            t = tj;
        }
        let first = (0..lines.len())
            .min_by(|&x, &y| {
                lines[x]
                    .0
                    .total_cmp(&lines[y].0)
                    .then(lines[x].1.total_cmp(&lines[y].1))
            })
            .expect("a group has a choice");
        Envelope {
            at_zero: lines[first].0,
            slope: lines[first].1,
            breaks,
        }
    }
}

/// The sum of the envelopes of the groups from `depth` on, for every depth, as breakpoints
/// `t_k` (ascending, `t_0 = 0`), the function's value there and its slope after.
struct Suffix {
    t: Vec<Vec<f64>>,
    value: Vec<Vec<f64>>,
    slope: Vec<Vec<f64>>,
}

impl Suffix {
    fn build(envelopes: &[Envelope]) -> Suffix {
        let n = envelopes.len();
        let (mut t, mut value, mut slope) = (
            vec![vec![]; n + 1],
            vec![vec![]; n + 1],
            vec![vec![]; n + 1],
        );
        t[n] = vec![0.0];
        value[n] = vec![0.0];
        slope[n] = vec![0.0];
        // Breakpoints of the suffix so far, merged as each earlier group is added.
        let mut events: Vec<(f64, f64)> = Vec::new();
        let (mut v0, mut s0) = (0.0, 0.0);
        for d in (0..n).rev() {
            let e = &envelopes[d];
            v0 += e.at_zero;
            s0 += e.slope;
            let mut merged = Vec::with_capacity(events.len() + e.breaks.len());
            let (mut i, mut j) = (0, 0);
            while i < events.len() || j < e.breaks.len() {
                if j == e.breaks.len() || (i < events.len() && events[i].0 <= e.breaks[j].0) {
                    merged.push(events[i]);
                    i += 1;
                } else {
                    merged.push(e.breaks[j]);
                    j += 1;
                }
            }
            events = merged;
            let (mut tk, mut vk, mut sk) = (vec![0.0], vec![v0], vec![s0]);
            for &(at, drop) in &events {
                let last = tk.len() - 1;
                let v = vk[last] + sk[last] * (at - tk[last]);
                tk.push(at);
                vk.push(v);
                sk.push(sk[last] - drop);
            }
            t[d] = tk;
            value[d] = vk;
            slope[d] = sk;
        }
        Suffix { t, value, slope }
    }

    /// `max_{t >= 0} f_depth(t) - t * room`: the least slope at most `room` marks the maximum
    /// (infinite when every slope exceeds it: the row cannot be met).
    fn max_minus(&self, depth: usize, room: f64) -> f64 {
        let slopes = &self.slope[depth];
        let k = slopes.partition_point(|&s| s > room);
        if k == slopes.len() {
            f64::INFINITY
        } else {
            self.value[depth][k] - self.t[depth][k] * room
        }
    }
}

/// The most breakpoints one row's per-node bound may store (24 bytes each, so 48 MB).
const SUFFIX_BUDGET: usize = 2_000_000;

/// One row's multiplier free, the others at the root's values.
struct RowBound {
    row: usize,
    /// The root's multipliers with this row's set to 0.
    lambda_rest: Vec<f64>,
    suffix: Suffix,
}

/// A move of the exchange search: group, new choice, reduced cost.
type Move = (usize, usize, f64);

/// What [`Search::dfs`] reads at every node, computed once.
struct Tree {
    /// Per depth (in search order): the group's alive choices and their reduced costs
    /// (Lagrangian cost minus the group's least), ascending.
    kids: Vec<Vec<(usize, f64)>>,
    /// `suffix_min[depth][r]`: the least total of row `r` over the groups from `depth` on.
    suffix_min: Vec<Vec<f64>>,
    /// The root's Lagrangian bound.
    root: f64,
    /// Per row (those within [`SUFFIX_BUDGET`]): the bound with that row's multiplier
    /// re-optimised at each node.
    per_row: Vec<RowBound>,
}

impl Tree {
    /// A lower bound on every completion of a node at `depth` with objective `obj` and row
    /// totals `used` so far: for each row, the Lagrangian bound with the other rows at the
    /// root's multipliers and this row's multiplier the best for the room left (exact for one
    /// row, where the Lagrangian dual is the LP of the rest); the best over rows. At the
    /// root's multiplier it is the root bound plus the reduced costs, so it is never weaker.
    fn bound(&self, depth: usize, obj: f64, used: &[f64], b: &[f64]) -> f64 {
        let mut best = f64::NEG_INFINITY;
        for rb in &self.per_row {
            let row = rb.row;
            let others: f64 = rb
                .lambda_rest
                .iter()
                .zip(used.iter().zip(b))
                .map(|(l, (u, b))| l * (u - b))
                .sum();
            let v = obj + others + rb.suffix.max_minus(depth, b[row] - used[row]);
            best = best.max(v);
        }
        best
    }
}

impl Solver for BnbSolver {
    fn name(&self) -> &str {
        "bnb"
    }

    fn solve(&self, p: &MipProblem, opts: &SolveOptions) -> Result<MipSolution> {
        p.validate()?;
        let t0 = Instant::now();
        let (d, kept) = drop_dominated_reusing(self, &densify(p));
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
        let mut hinted = false;
        for h in &opts.hints {
            if h.len() == groups && h.iter().zip(&p.groups).all(|(&c, g)| c < g.len()) {
                let ch: Vec<usize> = h
                    .iter()
                    .enumerate()
                    .map(|(g, &c)| kept.stand_in[g][c])
                    .collect();
                hinted |= s.feasible(&ch);
                s.offer(ch);
            }
        }
        // A first incumbent before the LP, unless a hint gave one (a sweep's previous point is
        // a far better start): the Lagrangian choices of a short ascent from 0, improved by
        // 1-swaps. It is the LP's starting basis.
        if !hinted {
            let (_, early) = s.optimise_lambda(&all, &d.b, &vec![0.0; r], 30);
            s.offer_lagrangian(&early, &[1.0, 1.5, 2.0, 4.0]);
        }
        s.improve();
        // The LP relaxation gives the exact Lagrangian multipliers and a near-integral point
        // (at most one fractional group per row). Without a feasible start, the two-phase
        // simplex also proves infeasibility.
        let relax = s
            .best
            .as_ref()
            .and_then(|(_, start)| lp::solve_from(&d.obj, &d.a, &d.b, start))
            .unwrap_or_else(|| lp::solve(&d.obj, &d.a, &d.b));
        if relax.value.is_none() {
            return Ok(MipSolution {
                status: MipStatus::Infeasible,
                choice: vec![],
                objective: f64::INFINITY,
                bound: f64::INFINITY,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        // The LP's multipliers maximise the Lagrangian dual (its value is the LP's), so the
        // subgradient polish only runs when rounding left them short.
        let lp_value = relax.value.expect("feasible LP");
        let (at_lp, _) = s.lagrangian(&all, &d.b, &relax.lambda);
        let (root, lambda) = if at_lp >= lp_value - 1e-9 * (1.0 + lp_value.abs()) {
            (at_lp, relax.lambda.clone())
        } else {
            s.optimise_lambda(&all, &d.b, &relax.lambda, 100)
        };
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
        s.offer_lagrangian(&lambda, &[1.0, 1.5, 2.0, 4.0, 8.0]);
        s.improve();
        s.exchange(&lambda);
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
        // Widest groups first: those whose choice moves the objective and the rows the most
        // (each dimension's spread over the alive choices, relative to its total over all
        // groups). Deciding them first makes the per-row bounds of what is left tight early;
        // on NVIDIA's 70B library under one memory row this visits ~540 nodes where "most
        // ambiguous first" (least regret) visited ~380,000. Groups with one choice go last.
        let spread = |vals: &mut dyn Iterator<Item = f64>| {
            let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            (hi - lo).max(0.0)
        };
        let dims = r + 1;
        let spreads: Vec<Vec<f64>> = (0..groups)
            .map(|g| {
                let alive = &s.alive[g];
                let mut v = vec![spread(&mut alive.iter().map(|&c| d.obj[g][c]))];
                v.extend((0..r).map(|i| spread(&mut alive.iter().map(|&c| d.a[g][c][i]))));
                v
            })
            .collect();
        let totals: Vec<f64> = (0..dims)
            .map(|k| spreads.iter().map(|v| v[k]).sum::<f64>())
            .collect();
        let width: Vec<f64> = spreads
            .iter()
            .map(|v| {
                v.iter()
                    .zip(&totals)
                    .map(|(x, t)| if *t > 0.0 { x / t } else { 0.0 })
                    .sum::<f64>()
            })
            .collect();
        s.order = (0..groups).collect();
        s.order.sort_by(|&x, &y| {
            (s.alive[x].len() < 2)
                .cmp(&(s.alive[y].len() < 2))
                .then(width[y].total_cmp(&width[x]))
        });
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
            let got = BnbSolver::new().solve(&p, &opts).unwrap();
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

    fn search_over(d: &Dense) -> Search<'_> {
        Search {
            d,
            alive: d.obj.iter().map(|g| (0..g.len()).collect()).collect(),
            order: (0..d.obj.len()).collect(),
            best: None,
            nodes: 0,
            deadline: Instant::now(),
            timed_out: false,
            abs_tol: 0.0,
            rel_gap: 0.0,
        }
    }

    /// The node bound with one row is the LP of the rest (the Lagrangian dual of a
    /// multiple-choice program with one row is its LP relaxation): checked against the simplex
    /// at every depth, with the groups before it fixed to random choices. With several rows it
    /// must stay a valid bound (at most the LP of the rest) and never fall below the root
    /// bound plus the reduced costs.
    #[test]
    fn node_bound_is_the_lp_of_the_rest() {
        let mut checked = 0;
        for seed in 0..300u64 {
            let rows = 1 + (seed % 3) as usize;
            let p = random::instance(seed, 2 + (seed % 5) as usize, 6, rows);
            let d = densify(&p);
            let relax = lp::solve(&d.obj, &d.a, &d.b);
            if relax.value.is_none() {
                continue;
            }
            let s = search_over(&d);
            let all: Vec<usize> = (0..d.obj.len()).collect();
            let (root, lambda) = s.optimise_lambda(&all, &d.b, &relax.lambda, 100);
            let tree = s.tree(&lambda, root);
            let mut rng = puzzle_types::rng::SeededRng::new(seed);
            let mut used = vec![0.0; d.b.len()];
            let (mut obj, mut rc_sum) = (0.0, 0.0);
            for depth in 0..=d.obj.len() {
                let rest: Vec<usize> = (depth..d.obj.len()).collect();
                let room: Vec<f64> = d.b.iter().zip(&used).map(|(b, u)| b - u).collect();
                let sub_obj: Vec<Vec<f64>> = rest.iter().map(|&g| d.obj[g].clone()).collect();
                let sub_a: Vec<Vec<Vec<f64>>> = rest.iter().map(|&g| d.a[g].clone()).collect();
                let lp_rest = lp::solve(&sub_obj, &sub_a, &room).value.map(|v| v + obj);
                let bound = tree.bound(depth, obj, &used, &d.b);
                match lp_rest {
                    Some(v) if rows == 1 => {
                        assert!(
                            (bound - v).abs() < 1e-7 * (1.0 + v.abs()),
                            "seed {seed} depth {depth}: {bound} vs LP {v}"
                        );
                        checked += 1;
                    }
                    Some(v) => assert!(
                        bound <= v + 1e-7 * (1.0 + v.abs()),
                        "seed {seed} depth {depth}: {bound} above LP {v}"
                    ),
                    None => {}
                }
                assert!(
                    bound >= root + rc_sum - 1e-9 * (1.0 + root.abs()),
                    "seed {seed} depth {depth}"
                );
                if depth == d.obj.len() {
                    break;
                }
                let g = s.order[depth];
                let c = rng.below(d.obj[g].len());
                let min = (0..d.obj[g].len())
                    .map(|k| s.lag_cost(g, k, &lambda))
                    .fold(f64::INFINITY, f64::min);
                rc_sum += s.lag_cost(g, c, &lambda) - min;
                obj += d.obj[g][c];
                for (u, a) in used.iter_mut().zip(&d.a[g][c]) {
                    *u += a;
                }
            }
        }
        assert!(
            checked > 300,
            "{checked} one-row nodes checked: tune the generator"
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
            let got = BnbSolver::new().solve(&p, &opts).unwrap();
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

    #[test]
    fn a_sweep_reusing_its_pruning_finds_what_cold_solves_find() {
        use puzzle_types::search::run::sweep;
        use puzzle_types::search::{BoundValue, Objective, Op, SearchSpec, Sense, synthetic};
        let table = synthetic::whole_block(7, 12, 15);
        let spec = |obj: &str| SearchSpec {
            objective: Objective {
                key: obj.into(),
                sense: Sense::Minimize,
            },
            constraints: vec!["memory_mib<=0.6x".parse().unwrap()],
        };
        let values: Vec<BoundValue> = (0..8)
            .map(|i| BoundValue::Relative(0.3 + 0.08 * i as f64))
            .collect();
        let opts = SolveOptions::default();
        // One solver through the sweep and then on a problem with another objective: what it
        // remembered must not leak into the second.
        let solver = BnbSolver::new();
        let together = sweep(
            &table,
            &spec("kl_div"),
            &solver,
            &opts,
            "runtime_ms",
            Op::Le,
            &values,
        )
        .unwrap();
        for (p, v) in together.iter().zip(&values) {
            let cold = sweep(
                &table,
                &spec("kl_div"),
                &BnbSolver::new(),
                &opts,
                "runtime_ms",
                Op::Le,
                &[*v],
            )
            .unwrap();
            let (a, b) = (p.solution.as_ref(), cold[0].solution.as_ref());
            assert_eq!(a.is_some(), b.is_some(), "{v:?}");
            if let (Some(a), Some(b)) = (a, b) {
                assert!((a.objective - b.objective).abs() <= 1e-9 * b.objective.abs().max(1.0));
            }
        }
        let other = spec("num_params").build(&table).unwrap();
        let warm = solver.solve(&other.mip, &opts).unwrap();
        let cold = BnbSolver::new().solve(&other.mip, &opts).unwrap();
        assert_eq!(warm.objective, cold.objective);
        assert_eq!(warm.choice, cold.choice);
    }
}
