//! Both solvers on paper-scale searches, diversity, re-checks, sweeps and infeasibility.

use puzzle_solver_bnb::BnbSolver;
use puzzle_solver_highs::HighsSolver;
use puzzle_types::search::mip::{MipStatus, SolveOptions, Solver};
use puzzle_types::search::run::{diverse, explain_infeasible, solve, sweep};
use puzzle_types::search::synthetic;
use puzzle_types::search::{BoundValue, Constraint, Objective, Op, SearchSpec, Sense};

fn spec(constraints: &[&str]) -> SearchSpec {
    SearchSpec {
        objective: Objective {
            key: "kl_div".into(),
            sense: Sense::Minimize,
        },
        constraints: constraints.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn opts() -> SolveOptions {
    SolveOptions {
        time_limit_secs: 120.0,
        relative_gap: 1e-9,
        ..Default::default()
    }
}

fn both_optimal_and_equal(table: &puzzle_types::search::BlockTable, s: &SearchSpec) {
    let h = solve(table, s, &HighsSolver, &opts())
        .unwrap()
        .expect("feasible");
    let b = solve(table, s, &BnbSolver::new(), &opts())
        .unwrap()
        .expect("feasible");
    eprintln!(
        "{}: highs {:.9} in {:.3}s, bnb {:.9} in {:.3}s",
        table.source, h.objective, h.seconds, b.objective, b.seconds
    );
    assert_eq!(h.status, MipStatus::Optimal);
    assert_eq!(b.status, MipStatus::Optimal);
    assert!(
        (h.objective - b.objective).abs() <= 1e-7 * h.objective.abs().max(1.0),
        "highs {} vs bnb {}",
        h.objective,
        b.objective
    );
}

#[test]
fn paper_scale_decoupled_80_layers_6x9_three_constraints() {
    let t = synthetic::decoupled(1, 80, 6, 9);
    both_optimal_and_equal(
        &t,
        &spec(&["runtime_ms<=0.5x", "memory_mib<=0.6x", "num_params<=0.7x"]),
    );
}

#[test]
fn paper_scale_whole_block_80_layers_100_choices_three_constraints() {
    let t = synthetic::whole_block(2, 80, 100);
    both_optimal_and_equal(
        &t,
        &spec(&["runtime_ms<=0.45x", "memory_mib<=0.6x", "num_params<=0.55x"]),
    );
}

#[test]
fn diverse_solutions_differ_enough_and_never_improve() {
    let t = synthetic::decoupled(3, 40, 6, 9);
    let s = spec(&["runtime_ms<=0.5x", "memory_mib<=0.6x"]);
    for solver in [&HighsSolver as &dyn Solver, &BnbSolver::new()] {
        let sols = diverse(&t, &s, solver, &opts(), 5, 6).unwrap().unwrap();
        assert_eq!(sols.len(), 5);
        for (i, a) in sols.iter().enumerate() {
            for b in &sols[..i] {
                let differ = a
                    .choice_index
                    .iter()
                    .zip(&b.choice_index)
                    .filter(|(x, y)| x != y)
                    .count();
                assert!(
                    differ >= 6,
                    "{}: solutions differ in only {differ} groups",
                    solver.name()
                );
            }
            if i > 0 {
                assert!(
                    a.objective >= sols[i - 1].objective - 1e-12,
                    "{}: objective improved",
                    solver.name()
                );
            }
        }
    }
}

#[test]
fn infeasible_constraints_are_explained() {
    let t = synthetic::decoupled(4, 10, 6, 9);
    let s = spec(&["runtime_ms<=0.0001x", "memory_mib<=0.9x"]);
    for solver in [&HighsSolver as &dyn Solver, &BnbSolver::new()] {
        let why = solve(&t, &s, solver, &opts()).unwrap().unwrap_err();
        let text = why.to_string();
        assert!(
            text.contains("runtime_ms") && text.contains("cannot be met"),
            "{text}"
        );
        // The cheapest runtime is the constant plus every group's cheapest choice.
        let r = &why.constraints[0];
        assert!(r.best_alone > r.limit);
    }
    // Each achievable alone, not together: memory and params both tight.
    let s = spec(&["memory_mib<=0.3x", "kl_div<=0.05"]);
    let why = explain_infeasible(&t, &s, &HighsSolver, &opts()).unwrap();
    assert!(
        why.advice
            .iter()
            .any(|a| a.contains("binding") || a.contains("cannot")),
        "{why}"
    );
}

#[test]
fn sweep_traces_a_monotone_frontier() {
    let t = synthetic::decoupled(5, 20, 6, 9);
    let s = spec(&[]);
    let values: Vec<BoundValue> = [1.0, 0.8, 0.6, 0.4, 0.3]
        .iter()
        .map(|&v| BoundValue::Relative(v))
        .collect();
    let pts = sweep(&t, &s, &HighsSolver, &opts(), "runtime_ms", Op::Le, &values).unwrap();
    let objs: Vec<f64> = pts
        .iter()
        .map(|p| p.solution.as_ref().unwrap().objective)
        .collect();
    for w in objs.windows(2) {
        assert!(
            w[1] >= w[0] - 1e-12,
            "tighter runtime cannot lower the loss: {objs:?}"
        );
    }
    assert!(pts.iter().any(|p| p.pareto));
    assert_eq!(
        objs[0], 0.0,
        "at the parent's runtime the parent itself is optimal"
    );
}

/// A solver that lies: it returns the cheapest-objective choice ignoring every row.
struct Liar;
impl Solver for Liar {
    fn name(&self) -> &str {
        "liar"
    }
    fn solve(
        &self,
        p: &puzzle_types::search::MipProblem,
        _: &SolveOptions,
    ) -> puzzle_types::Result<puzzle_types::search::MipSolution> {
        let choice: Vec<usize> = p
            .groups
            .iter()
            .map(|g| {
                (0..g.len())
                    .min_by(|&a, &b| p.objective[g[a]].total_cmp(&p.objective[g[b]]))
                    .unwrap()
            })
            .collect();
        Ok(puzzle_types::search::MipSolution {
            status: MipStatus::Optimal,
            objective: p.objective_of(&choice),
            bound: 0.0,
            choice,
            seconds: 0.0,
        })
    }
}

#[test]
fn every_solution_is_rechecked() {
    let t = synthetic::decoupled(6, 10, 6, 9);
    let s = spec(&["runtime_ms<=0.5x"]);
    let e = solve(&t, &s, &Liar, &opts()).unwrap_err().to_string();
    assert!(e.contains("liar") && e.contains("violating"), "{e}");
    let c: Constraint = "runtime_ms<=0.5x".parse().unwrap();
    assert_eq!(c.op, Op::Le);
}

/// The k-th diverse solution is the optimum of the problem excluding the first k-1 (bnb takes
/// the earlier solutions, repaired to satisfy every cut, as first incumbents; a hint must never
/// change the optimum): the same objectives as HiGHS, which ignores hints, on the same cuts.
#[test]
fn diverse_series_are_optimal_at_every_step() {
    use puzzle_types::search::run::solve_excluding;
    let s = spec(&["runtime_ms<=0.5x", "memory_mib<=0.6x", "num_params<=0.7x"]);
    let mut series = 0;
    for seed in 0..12 {
        let t = synthetic::whole_block(500 + seed, 12, 8);
        let Ok(sols) = diverse(&t, &s, &BnbSolver::new(), &opts(), 6, 3).unwrap() else {
            continue;
        };
        series += usize::from(sols.len() > 1);
        let cuts: Vec<Vec<usize>> = sols.iter().map(|x| x.choice_index.clone()).collect();
        for (k, got) in sols.iter().enumerate() {
            let want = solve_excluding(&t, &s, &HighsSolver, &opts(), &cuts[..k], 3)
                .unwrap()
                .expect("bnb found one, so one exists");
            assert!(
                (got.objective - want.objective).abs() <= 1e-9 * (1.0 + want.objective.abs()),
                "seed {seed}, solution {k}: bnb {} vs HiGHS {}",
                got.objective,
                want.objective
            );
        }
    }
    assert!(series >= 8, "only {series} of 12 instances had a series");
}
