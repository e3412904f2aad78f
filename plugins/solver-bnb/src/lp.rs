//! A dense two-phase simplex for the LP relaxation of a multiple-choice program:
//! `min f.x` s.t. `sum_{c in g} x_c = 1` per group, `A x <= b`, `x >= 0`.
//!
//! The problems are small (groups + a handful of rows) so a dense tableau is simple and fast
//! enough; Dantzig pricing, switching to Bland's rule after a run of degenerate pivots so that
//! cycling cannot happen.

/// The relaxation's answer.
#[derive(Clone, Debug)]
pub struct LpResult {
    /// `None` when infeasible.
    pub value: Option<f64>,
    /// Primal values of the choice variables.
    pub x: Vec<f64>,
    /// Lagrange multipliers (`>= 0`) of the `A x <= b` rows.
    pub lambda: Vec<f64>,
}

const EPS: f64 = 1e-9;

struct Tableau {
    m: usize,
    n: usize,
    /// `(m + 1) x (n + 1)`: rows 0..m constraints, row m the objective; column n the rhs.
    t: Vec<f64>,
    basis: Vec<usize>,
}

impl Tableau {
    fn at(&self, i: usize, j: usize) -> f64 {
        self.t[i * (self.n + 1) + j]
    }

    fn pivot(&mut self, r: usize, c: usize) {
        let w = self.n + 1;
        let p = self.t[r * w + c];
        for j in 0..w {
            self.t[r * w + j] /= p;
        }
        // The pivot row is mostly zeros (a group row touches its own choices only), so the
        // elimination visits its non-zeros alone.
        let nz: Vec<(usize, f64)> = self.t[r * w..(r + 1) * w]
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(j, &v)| (j, v))
            .collect();
        let sparse = nz.len() * 4 < w;
        let row_r: Vec<f64> = if sparse {
            Vec::new()
        } else {
            self.t[r * w..(r + 1) * w].to_vec()
        };
        for i in 0..=self.m {
            if i == r {
                continue;
            }
            let f = self.t[i * w + c];
            if f != 0.0 {
                let row = &mut self.t[i * w..(i + 1) * w];
                if sparse {
                    for &(j, y) in &nz {
                        row[j] -= f * y;
                    }
                } else {
                    for (x, y) in row.iter_mut().zip(&row_r) {
                        *x -= f * y;
                    }
                }
            }
        }
        self.basis[r] = c;
    }

    /// Minimises the objective row over columns `allowed`; false when unbounded.
    fn optimise(&mut self, allowed: &[bool]) -> bool {
        let mut degenerate_run = 0;
        for _ in 0..50_000 {
            let bland = degenerate_run > 50;
            // Entering column: most negative reduced cost (or the first, under Bland).
            let mut enter = None;
            let mut best = -EPS;
            for j in 0..self.n {
                if !allowed[j] {
                    continue;
                }
                let d = self.at(self.m, j);
                if d < best {
                    enter = Some(j);
                    if bland {
                        break;
                    }
                    best = d;
                }
            }
            let Some(c) = enter else { return true };
            // Leaving row: minimum ratio (ties: lowest basis index under Bland).
            let mut leave = None;
            let mut ratio = f64::INFINITY;
            for i in 0..self.m {
                let a = self.at(i, c);
                if a > EPS {
                    let q = self.at(i, self.n) / a;
                    let better = q < ratio - 1e-12
                        || (q <= ratio + 1e-12
                            && leave.is_some_and(|l: usize| self.basis[i] < self.basis[l]));
                    if better {
                        ratio = q;
                        leave = Some(i);
                    }
                }
            }
            let Some(r) = leave else { return false };
            degenerate_run = if ratio <= 1e-12 {
                degenerate_run + 1
            } else {
                0
            };
            self.pivot(r, c);
        }
        true
    }
}

/// Solves the relaxation from the basis of a feasible integer point `start` (one choice per
/// group): the slacks are non-negative there, so phase 1 is not needed, and from a good
/// incumbent phase 2 is a few pivots away from the optimum instead of a pivot per group.
/// `None` when `start` violates a row.
pub fn solve_from(
    obj: &[Vec<f64>],
    a: &[Vec<Vec<f64>>],
    b: &[f64],
    start: &[usize],
) -> Option<LpResult> {
    let groups = obj.len();
    let rows = b.len();
    let nx: usize = obj.iter().map(Vec::len).sum();
    let m = groups + rows;
    // Columns: choices | slacks.
    let n = nx + rows;
    let w = n + 1;
    let mut room: Vec<f64> = b.to_vec();
    for (g, &c) in start.iter().enumerate() {
        for r in 0..rows {
            room[r] -= a[g][c][r];
        }
    }
    if room
        .iter()
        .zip(b)
        .any(|(s, b)| *s < -1e-9 * (1.0 + b.abs()))
    {
        return None;
    }
    // The tableau in the basis {start's choices, slacks}: a group row is its own row; row r
    // less the start's coefficients times each group row; reduced costs relative to the start.
    let mut t = vec![0.0; (m + 1) * w];
    let mut var_of = Vec::with_capacity(nx);
    let mut basis = vec![0; m];
    let mut col = 0;
    let mut value = 0.0;
    for (g, choices) in obj.iter().enumerate() {
        let s = start[g];
        for c in 0..choices.len() {
            t[g * w + col] = 1.0;
            for r in 0..rows {
                t[(groups + r) * w + col] = a[g][c][r] - a[g][s][r];
            }
            t[m * w + col] = obj[g][c] - obj[g][s];
            if c == s {
                basis[g] = col;
            }
            var_of.push((g, c));
            col += 1;
        }
        t[g * w + n] = 1.0;
        value += obj[g][s];
    }
    for r in 0..rows {
        let i = groups + r;
        t[i * w + nx + r] = 1.0;
        t[i * w + n] = room[r].max(0.0);
        basis[i] = nx + r;
    }
    t[m * w + n] = -value;
    let mut tab = Tableau { m, n, t, basis };
    tab.optimise(&vec![true; n]);
    let mut x = vec![0.0; nx];
    for i in 0..m {
        if tab.basis[i] < nx {
            x[tab.basis[i]] = tab.at(i, n);
        }
    }
    // A slack's column is e_r with cost 0: its reduced cost is the row's multiplier.
    let lambda = (0..rows).map(|r| tab.at(m, nx + r).max(0.0)).collect();
    Some(LpResult {
        value: Some(-tab.at(m, n)),
        x,
        lambda,
    })
}

/// Solves the relaxation. `obj[g][c]`, `a[g][c][r]`, `b[r]`.
pub fn solve(obj: &[Vec<f64>], a: &[Vec<Vec<f64>>], b: &[f64]) -> LpResult {
    let groups = obj.len();
    let rows = b.len();
    let nx: usize = obj.iter().map(Vec::len).sum();
    let m = groups + rows;
    // Columns: choices | slacks (rows) | artificials (m).
    let n = nx + rows + m;
    let w = n + 1;
    let mut t = vec![0.0; (m + 1) * w];
    let mut col = 0;
    let mut var_of = Vec::with_capacity(nx);
    for (g, choices) in obj.iter().enumerate() {
        for c in 0..choices.len() {
            t[g * w + col] = 1.0;
            for r in 0..rows {
                t[(groups + r) * w + col] = a[g][c][r];
            }
            var_of.push((g, c));
            col += 1;
        }
        t[g * w + n] = 1.0;
    }
    let mut sign = vec![1.0; rows];
    for r in 0..rows {
        let i = groups + r;
        t[i * w + nx + r] = 1.0;
        t[i * w + n] = b[r];
        if b[r] < 0.0 {
            // Keep the rhs non-negative for phase 1.
            sign[r] = -1.0;
            for j in 0..=n {
                t[i * w + j] = -t[i * w + j];
            }
        }
    }
    for i in 0..m {
        t[i * w + nx + rows + i] = 1.0;
    }
    // Phase 1 objective: sum of artificials, priced out of the starting basis.
    for i in 0..m {
        for j in 0..=n {
            t[m * w + j] -= t[i * w + j];
        }
        t[m * w + nx + rows + i] = 0.0;
    }
    let mut tab = Tableau {
        m,
        n,
        t,
        basis: (0..m).map(|i| nx + rows + i).collect(),
    };
    let all = vec![true; n];
    tab.optimise(&all);
    if -tab.at(m, n) > 1e-7 {
        return LpResult {
            value: None,
            x: vec![],
            lambda: vec![],
        };
    }
    // Drive artificials out of the basis where a real column can replace them.
    for i in 0..m {
        if tab.basis[i] >= nx + rows
            && let Some(j) = (0..nx + rows).find(|&j| tab.at(i, j).abs() > 1e-9)
        {
            tab.pivot(i, j);
        }
    }
    // Phase 2: the real objective, priced out of the current basis.
    for j in 0..=n {
        tab.t[m * w + j] = 0.0;
    }
    for (j, &(g, c)) in var_of.iter().enumerate() {
        tab.t[m * w + j] = obj[g][c];
    }
    for i in 0..m {
        let bj = tab.basis[i];
        let cb = tab.at(m, bj);
        if cb != 0.0 {
            for j in 0..=n {
                let v = tab.at(i, j);
                tab.t[m * w + j] -= cb * v;
            }
        }
    }
    let allowed: Vec<bool> = (0..n).map(|j| j < nx + rows).collect();
    tab.optimise(&allowed);
    let mut x = vec![0.0; nx];
    for i in 0..m {
        if tab.basis[i] < nx {
            x[tab.basis[i]] = tab.at(i, n);
        }
    }
    // Duals: the reduced cost of an artificial column (cost 0, original column e_i) is -y_i.
    let lambda = (0..rows)
        .map(|r| {
            let y = -tab.at(m, nx + rows + groups + r) * sign[r];
            (-y).max(0.0)
        })
        .collect();
    LpResult {
        value: Some(-tab.at(m, n)),
        x,
        lambda,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knapsack_relaxation_has_the_greedy_fractional_value() {
        // Two groups of {take, skip}; one budget row. Take costs -value, weight w.
        // Values 6, 5 with weights 3, 4, budget 5: LP takes item 1 fully, 2/4 of item 2.
        let obj = vec![vec![-6.0, 0.0], vec![-5.0, 0.0]];
        let a = vec![vec![vec![3.0], vec![0.0]], vec![vec![4.0], vec![0.0]]];
        let r = solve(&obj, &a, &[5.0]);
        assert!((r.value.unwrap() - (-6.0 - 2.5)).abs() < 1e-9, "{r:?}");
        // The multiplier is item 2's value density.
        assert!((r.lambda[0] - 1.25).abs() < 1e-9, "{r:?}");
        let infeasible = solve(&obj, &a, &[-1.0]);
        assert!(infeasible.value.is_none());
        // From a feasible start (skip both) the same optimum and multiplier; an infeasible
        // start (take both) is refused.
        let warm = solve_from(&obj, &a, &[5.0], &[1, 1]).unwrap();
        assert!(
            (warm.value.unwrap() - (-6.0 - 2.5)).abs() < 1e-9,
            "{warm:?}"
        );
        assert!((warm.lambda[0] - 1.25).abs() < 1e-9, "{warm:?}");
        assert!(solve_from(&obj, &a, &[5.0], &[0, 0]).is_none());
    }
}
