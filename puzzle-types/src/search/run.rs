//! Solving searches: one solution (re-checked against every constraint), diverse alternatives,
//! Pareto sweeps, and explanations of infeasibility.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::mip::{MipStatus, Row, SolveOptions, Solver};
use super::problem::{
    BoundValue, BuiltProblem, Constraint, Objective, Op, SearchSpec, Sense, parent_total,
};
use super::table::BlockTable;
use crate::error::{Error, Result};

/// One architecture the search returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchSolution {
    /// Objective value (in the metric's own sign).
    pub objective: f64,
    /// Group name -> chosen id, in group order.
    pub choices: Vec<(String, String)>,
    /// Index of the chosen choice in each group.
    pub choice_index: Vec<usize>,
    /// Totals of every metric (constants included, ratio metrics computed).
    pub costs: BTreeMap<String, f64>,
    pub status: MipStatus,
    pub gap: f64,
    pub solver: String,
    pub seconds: f64,
    /// Which table it came from (e.g. the batch size).
    pub table: String,
}

/// Why a search has no solution, and what to relax.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Infeasibility {
    pub constraints: Vec<ConstraintReport>,
    pub advice: Vec<String>,
}

/// What one constraint could reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConstraintReport {
    pub constraint: String,
    /// The absolute limit it resolved to.
    pub limit: f64,
    /// The best value of its metric with no other constraint.
    pub best_alone: f64,
    /// The best value of its metric under all the other constraints (`None` when those alone
    /// are infeasible).
    pub best_with_others: Option<f64>,
}

impl std::fmt::Display for Infeasibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "no architecture satisfies all constraints:")?;
        for c in &self.constraints {
            writeln!(
                f,
                "  {}: limit {:.6}, best alone {:.6}, best under the other constraints {}",
                c.constraint,
                c.limit,
                c.best_alone,
                c.best_with_others
                    .map_or("(the others are infeasible)".to_string(), |v| format!(
                        "{v:.6}"
                    ))
            )?;
        }
        for a in &self.advice {
            writeln!(f, "  -> {a}")?;
        }
        Ok(())
    }
}

fn within(value: f64, op: Op, bound: f64) -> bool {
    let tol = 1e-7 * (1.0 + bound.abs());
    match op {
        Op::Le => value <= bound + tol,
        Op::Ge => value >= bound - tol,
    }
}

/// Maps a solver's choice back to a table solution and re-checks every constraint against the
/// table itself (trust, but verify): a solver bug becomes an error, never a silent violation.
fn finish(
    table: &BlockTable,
    spec: &SearchSpec,
    built: &BuiltProblem,
    mip: &super::mip::MipSolution,
    solver: &str,
) -> Result<SearchSolution> {
    let choice = &mip.choice;
    for (c, &bound) in spec.constraints.iter().zip(&built.resolved) {
        let v = table.total(choice, &c.key)?;
        if !within(v, c.op, bound) {
            return Err(Error::invalid(format!(
                "solver `{solver}` returned a solution violating `{c}`: {} = {v} against {bound}",
                c.key
            )));
        }
    }
    let mut costs = BTreeMap::new();
    for k in &built.keys {
        costs.insert(k.clone(), table.total(choice, k)?);
    }
    Ok(SearchSolution {
        objective: table.total(choice, &spec.objective.key)?,
        choices: choice
            .iter()
            .zip(&table.groups)
            .map(|(&c, g)| (g.name.clone(), g.choices[c].id.clone()))
            .collect(),
        choice_index: choice.to_vec(),
        costs,
        status: mip.status,
        gap: mip.gap(),
        solver: solver.to_string(),
        seconds: mip.seconds,
        table: table.source.clone(),
    })
}

/// Solves `spec` on `table`, adding `extra_rows` (diversity cuts). `Ok(None)` when infeasible.
fn solve_with(
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
    extra_rows: &[Vec<usize>],
    min_diversity: usize,
) -> Result<Option<SearchSolution>> {
    let built = spec.build(table)?;
    solve_built(table, spec, built, solver, opts, extra_rows, min_diversity)
}

/// [`solve_with`] on `spec` already built.
fn solve_built(
    table: &BlockTable,
    spec: &SearchSpec,
    mut built: BuiltProblem,
    solver: &dyn Solver,
    opts: &SolveOptions,
    extra_rows: &[Vec<usize>],
    min_diversity: usize,
) -> Result<Option<SearchSolution>> {
    let groups = table.groups.len();
    for (i, prev) in extra_rows.iter().enumerate() {
        // Puzzle's diversity cut: at most L - d of a previous solution's choices again.
        built.mip.rows.push(Row {
            name: format!(
                "differs from solution {} in >= {min_diversity} groups",
                i + 1
            ),
            coefs: prev
                .iter()
                .enumerate()
                .map(|(g, &c)| (built.offsets[g] + c, 1.0))
                .collect(),
            lo: f64::NEG_INFINITY,
            hi: groups as f64 - min_diversity as f64,
        });
    }
    // Each earlier solution is excluded by its cut, and usually a few moves from the next one:
    // repaired to satisfy every cut, the latest first, it is the next solve's first incumbent.
    let mut hinted;
    let opts = if extra_rows.is_empty() {
        opts
    } else {
        hinted = opts.clone();
        for prev in extra_rows.iter().rev() {
            if let Some(h) = built.mip.repair(prev) {
                hinted.hints.push(h);
            }
        }
        &hinted
    };
    let s = solver.solve(&built.mip, opts)?;
    match s.status {
        MipStatus::Infeasible => Ok(None),
        MipStatus::Unknown => Err(Error::invalid(format!(
            "solver `{}` found no solution and did not prove the constraints infeasible (the time limit is {} s: raise it; a heuristic such as `greedy` or `random` proves nothing, so try `bnb`)",
            solver.name(),
            opts.time_limit_secs
        ))),
        MipStatus::Optimal | MipStatus::Feasible => {
            // The shape first: a plugin's answer may name a group or a choice that does not
            // exist, and every check below indexes by it.
            let c = &s.choice;
            if c.len() != table.groups.len()
                || c.iter()
                    .zip(&table.groups)
                    .any(|(&c, g)| c >= g.choices.len())
            {
                return Err(Error::invalid(format!(
                    "solver `{}` returned a malformed choice ({} entries for {} groups{})",
                    solver.name(),
                    c.len(),
                    table.groups.len(),
                    if c.len() == table.groups.len() {
                        ", one out of its group's range"
                    } else {
                        ""
                    }
                )));
            }
            let v = built.mip.violations(&s.choice);
            if !v.is_empty() {
                return Err(Error::invalid(format!(
                    "solver `{}` returned a solution violating {v:?}",
                    solver.name()
                )));
            }
            finish(table, spec, &built, &s, solver.name()).map(Some)
        }
    }
}

/// The best architecture, or why there is none.
pub fn solve(
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
) -> Result<std::result::Result<SearchSolution, Infeasibility>> {
    match solve_with(table, spec, solver, opts, &[], 0)? {
        Some(s) => Ok(Ok(s)),
        None => Ok(Err(explain_infeasible(table, spec, solver, opts)?)),
    }
}

/// The best solution differing from each of `previous` (choice indices per group) in at least
/// `min_diversity` groups; `Ok(None)` when there is none. [`diverse`] is a series of these.
pub fn solve_excluding(
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
    previous: &[Vec<usize>],
    min_diversity: usize,
) -> Result<Option<SearchSolution>> {
    solve_with(table, spec, solver, opts, previous, min_diversity)
}

/// Up to `n` solutions, each differing from every earlier one in at least `min_diversity`
/// groups (the paper's diversity constraint). Stops early when no further one exists.
pub fn diverse(
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
    n: usize,
    min_diversity: usize,
) -> Result<std::result::Result<Vec<SearchSolution>, Infeasibility>> {
    let mut out: Vec<SearchSolution> = Vec::new();
    let mut cuts: Vec<Vec<usize>> = Vec::new();
    // Built once; each solve adds its cuts to a copy.
    let built = spec.build(table)?;
    while out.len() < n {
        match solve_built(
            table,
            spec,
            built.clone(),
            solver,
            opts,
            &cuts,
            min_diversity,
        )? {
            Some(s) => {
                cuts.push(s.choice_index.clone());
                out.push(s);
            }
            None if out.is_empty() => {
                return Ok(Err(explain_infeasible(table, spec, solver, opts)?));
            }
            None => break,
        }
    }
    Ok(Ok(out))
}

/// The best over several tables (one per batch size): the best objective wins.
pub fn best_over(
    tables: &[BlockTable],
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
) -> Result<std::result::Result<SearchSolution, Infeasibility>> {
    let mut best: Option<SearchSolution> = None;
    let mut first_infeasible = None;
    for t in tables {
        match solve(t, spec, solver, opts)? {
            Ok(s) => {
                let better = best.as_ref().is_none_or(|b| match spec.objective.sense {
                    Sense::Minimize => s.objective < b.objective,
                    Sense::Maximize => s.objective > b.objective,
                });
                if better {
                    best = Some(s);
                }
            }
            Err(i) => {
                first_infeasible.get_or_insert(i);
            }
        }
    }
    match (best, first_infeasible) {
        (Some(b), _) => Ok(Ok(b)),
        (None, Some(i)) => Ok(Err(i)),
        (None, None) => Err(Error::invalid("no tables to search")),
    }
}

/// One point of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The swept constraint at this point.
    pub constraint: String,
    pub limit: f64,
    /// `None` when infeasible at this limit.
    pub solution: Option<SearchSolution>,
    /// Whether the point is on the Pareto frontier of (objective, swept metric).
    pub pareto: bool,
}

/// Solves once per value of the swept constraint (added to `spec`'s), then marks the Pareto
/// frontier of objective vs the swept metric's achieved value.
pub fn sweep(
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
    key: &str,
    op: Op,
    values: &[BoundValue],
) -> Result<Vec<SweepPoint>> {
    let mut limits = Vec::with_capacity(values.len());
    for &v in values {
        limits.push(match v {
            BoundValue::Absolute(a) => a,
            BoundValue::Relative(r) => r * parent_total(table, key)?,
        });
    }
    // Tightest first: every solution is then feasible at the next (looser) point, and is
    // handed to the solver as its first incumbent there.
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| match op {
        Op::Ge => limits[b].total_cmp(&limits[a]),
        Op::Le => limits[a].total_cmp(&limits[b]),
    });
    let mut solved: Vec<Option<SweepPoint>> = vec![None; values.len()];
    let mut hint: Option<Vec<usize>> = None;
    // Built once; each point only moves the swept row's bound (the last row).
    let mut built: Option<BuiltProblem> = None;
    let swept_row = spec.constraints.len();
    for i in order {
        let c = Constraint {
            key: key.to_string(),
            op,
            value: values[i],
        };
        let mut s = spec.clone();
        s.constraints.push(c.clone());
        let b = match built.as_mut() {
            Some(b) => {
                b.rebound(table, swept_row, &c)?;
                b
            }
            None => built.insert(s.build(table)?),
        };
        let mut o = opts.clone();
        o.hints.extend(hint.iter().cloned());
        let solution = solve_built(table, &s, b.clone(), solver, &o, &[], 0)?;
        if let Some(sol) = &solution {
            hint = Some(sol.choice_index.clone());
        }
        solved[i] = Some(SweepPoint {
            constraint: c.to_string(),
            limit: limits[i],
            solution,
            pareto: false,
        });
    }
    let mut points: Vec<SweepPoint> = solved.into_iter().flatten().collect();
    // Frontier: better objective and better swept metric than no other point.
    let better_obj = |a: f64, b: f64| match spec.objective.sense {
        Sense::Minimize => a <= b,
        Sense::Maximize => a >= b,
    };
    let better_cost = |a: f64, b: f64| match op {
        Op::Le => a <= b,
        Op::Ge => a >= b,
    };
    let vals: Vec<Option<(f64, f64)>> = points
        .iter()
        .map(|p| p.solution.as_ref().map(|s| (s.objective, s.costs[key])))
        .collect();
    for i in 0..points.len() {
        let Some((oi, ci)) = vals[i] else { continue };
        let dominated = vals.iter().enumerate().any(|(j, v)| {
            j != i
                && v.is_some_and(|(oj, cj)| {
                    better_obj(oj, oi) && better_cost(cj, ci) && (oj != oi || cj != ci)
                })
        });
        points[i].pareto = !dominated;
    }
    Ok(points)
}

/// For each constraint: the best its metric can reach alone and under the others; advice on
/// which to relax and by how much.
pub fn explain_infeasible(
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
) -> Result<Infeasibility> {
    let built = spec.build(table)?;
    let mut reports = Vec::new();
    let mut advice = Vec::new();
    for (i, c) in spec.constraints.iter().enumerate() {
        let limit = built.resolved[i];
        // Optimise this constraint's metric: the direction that helps it.
        let (key, sense) = match table.inverse.get(&c.key) {
            Some(inv) => (
                inv.of.clone(),
                match c.op {
                    Op::Ge => Sense::Minimize,
                    Op::Le => Sense::Maximize,
                },
            ),
            None => (
                c.key.clone(),
                match c.op {
                    Op::Le => Sense::Minimize,
                    Op::Ge => Sense::Maximize,
                },
            ),
        };
        let as_metric = |sum: f64| match table.inverse.get(&c.key) {
            Some(inv) => inv.numerator / sum,
            None => sum,
        };
        let alone = SearchSpec {
            objective: Objective {
                key: key.clone(),
                sense,
            },
            constraints: vec![],
        };
        let best_alone = match solve_with(table, &alone, solver, opts, &[], 0)? {
            Some(s) => as_metric(s.objective),
            None => f64::NAN,
        };
        let others = SearchSpec {
            objective: Objective { key, sense },
            constraints: spec
                .constraints
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c.clone())
                .collect(),
        };
        let best_with_others =
            solve_with(table, &others, solver, opts, &[], 0)?.map(|s| as_metric(s.objective));
        if !within(best_alone, c.op, limit) {
            advice.push(format!(
                "`{c}` cannot be met by any architecture: the best {} is {best_alone:.6} (limit {limit:.6}); relax it to at least that",
                c.key
            ));
        } else if let Some(b) = best_with_others
            && !within(b, c.op, limit)
        {
            advice.push(format!(
                "`{c}` is the binding constraint: under the others the best {} is {b:.6} (limit {limit:.6}); relax it to {b:.6} or relax the others",
                c.key
            ));
        }
        reports.push(ConstraintReport {
            constraint: c.to_string(),
            limit,
            best_alone,
            best_with_others,
        });
    }
    if advice.is_empty() {
        advice.push(
            "each constraint can be met given the others one at a time, but not all together; relax any of them"
                .into(),
        );
    }
    Ok(Infeasibility {
        constraints: reports,
        advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::mip::{MipProblem, MipSolution};
    use crate::search::synthetic;

    /// A dynamic plugin's answer, whatever the problem.
    struct Answer(MipSolution);

    impl Solver for Answer {
        fn name(&self) -> &str {
            "plugin"
        }
        fn solve(&self, _: &MipProblem, _: &SolveOptions) -> Result<MipSolution> {
            Ok(self.0.clone())
        }
    }

    /// Found by `cargo xtask fuzz` (target `plugin_json`): a solver's choice naming a choice
    /// past its group's end panicked while its rows were evaluated.
    #[test]
    fn a_solver_answer_out_of_range_is_an_error_not_a_panic() {
        let table = synthetic::decoupled(7, 3, 2, 3);
        let spec = SearchSpec {
            objective: Objective {
                key: "kl_div".into(),
                sense: Sense::Minimize,
            },
            constraints: vec![Constraint {
                key: "runtime_ms".into(),
                op: Op::Le,
                value: BoundValue::Relative(0.8),
            }],
        };
        for choice in [vec![0, 5, 0, 2, 1, 0], vec![0, 1], vec![]] {
            let answer = Answer(MipSolution {
                status: MipStatus::Optimal,
                choice,
                objective: 1.0,
                bound: 1.0,
                seconds: 0.0,
            });
            let e = solve(&table, &spec, &answer, &SolveOptions::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("solver `plugin` returned a malformed choice"),
                "{e}"
            );
        }
    }
}
