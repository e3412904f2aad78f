//! `highs`: the default MIP backend, HiGHS (via the `highs` crate). One binary column per
//! choice, one equality row per group, the problem's rows as ranged rows.

use std::ffi::CStr;
use std::num::NonZeroU32;
use std::time::Instant;

use highs::{HighsModelStatus, RowProblem, Sense};
use puzzle_types::error::{Error, Result};
use puzzle_types::search::mip::{MipProblem, MipSolution, MipStatus, SolveOptions, Solver};

/// The HiGHS solver.
pub struct HighsSolver;

inventory::submit! {
    puzzle_types::search::SolverRegistration {
        solver: &HighsSolver,
        provider: "puzzle-solver-highs",
        description: "HiGHS 1.x branch-and-cut MIP solver (default)",
    }
}

/// Forces the linker to keep this crate's registration.
pub fn link() {}

impl Solver for HighsSolver {
    fn name(&self) -> &str {
        "highs"
    }

    fn solve(&self, p: &MipProblem, opts: &SolveOptions) -> Result<MipSolution> {
        p.validate()?;
        let t0 = Instant::now();
        let mut rp = RowProblem::default();
        let cols: Vec<_> = p
            .objective
            .iter()
            .map(|&c| rp.add_integer_column(c, 0..=1))
            .collect();
        for g in &p.groups {
            let coefs: Vec<_> = g.iter().map(|&v| (cols[v], 1.0)).collect();
            rp.add_row(1.0..=1.0, &coefs);
        }
        for r in &p.rows {
            let coefs: Vec<_> = r.coefs.iter().map(|&(v, c)| (cols[v], c)).collect();
            match (r.lo.is_finite(), r.hi.is_finite()) {
                (true, true) => rp.add_row(r.lo..=r.hi, &coefs),
                (false, true) => rp.add_row(..=r.hi, &coefs),
                (true, false) => rp.add_row(r.lo.., &coefs),
                (false, false) => continue,
            };
        }
        let mut model = rp.optimise(Sense::Minimise);
        model.make_quiet();
        model.set_option("time_limit", opts.time_limit_secs.max(0.0));
        model.set_option("mip_rel_gap", opts.relative_gap.max(0.0));
        model.set_option("mip_abs_gap", 1e-12);
        // Deterministic and fair to compare: one thread.
        model.set_threads(NonZeroU32::new(1).expect("1 > 0"));
        let solved = model
            .try_solve()
            .map_err(|s| Error::invalid(format!("HiGHS failed: {s:?}")))?;
        let status = solved.status();
        let seconds = t0.elapsed().as_secs_f64();
        let info = |name: &CStr| solved.double_info_value(name).ok();
        let choice_of = |x: &[f64]| -> Vec<usize> {
            p.groups
                .iter()
                .map(|g| {
                    g.iter()
                        .enumerate()
                        .max_by(|a, b| x[*a.1].total_cmp(&x[*b.1]))
                        .map(|(i, _)| i)
                        .expect("non-empty group")
                })
                .collect()
        };
        Ok(match status {
            HighsModelStatus::Optimal => {
                let choice = choice_of(solved.get_solution().columns());
                let objective = p.objective_of(&choice);
                MipSolution {
                    status: MipStatus::Optimal,
                    bound: info(c"mip_dual_bound").unwrap_or(objective).min(objective)
                        + p.objective_constant,
                    objective,
                    choice,
                    seconds,
                }
            }
            HighsModelStatus::Infeasible => MipSolution {
                status: MipStatus::Infeasible,
                choice: vec![],
                objective: f64::INFINITY,
                bound: f64::INFINITY,
                seconds,
            },
            HighsModelStatus::ReachedTimeLimit | HighsModelStatus::ReachedIterationLimit => {
                let has = info(c"mip_primal_bound").is_some_and(|v| v.is_finite() && v < 1e300);
                if has {
                    let choice = choice_of(solved.get_solution().columns());
                    let objective = p.objective_of(&choice);
                    MipSolution {
                        status: MipStatus::Feasible,
                        bound: info(c"mip_dual_bound").unwrap_or(f64::NEG_INFINITY)
                            + p.objective_constant,
                        objective,
                        choice,
                        seconds,
                    }
                } else {
                    MipSolution {
                        status: MipStatus::Unknown,
                        choice: vec![],
                        objective: f64::INFINITY,
                        bound: info(c"mip_dual_bound").unwrap_or(f64::NEG_INFINITY),
                        seconds,
                    }
                }
            }
            other => return Err(Error::invalid(format!("HiGHS ended with status {other:?}"))),
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
        for seed in 0..400u64 {
            let groups = 3 + (seed % 4) as usize;
            let choices = 2 + (seed % 7) as usize;
            let rows = 1 + (seed % 3) as usize;
            let p = random::instance(seed, groups, choices, rows);
            let want = brute_force(&p);
            let got = HighsSolver.solve(&p, &opts).unwrap();
            assert_eq!(got.status, want.status, "seed {seed}");
            if want.status == MipStatus::Optimal {
                assert!(
                    (got.objective - want.objective).abs() < 1e-7,
                    "seed {seed}: {} vs {}",
                    got.objective,
                    want.objective
                );
                assert!(p.violations(&got.choice).is_empty());
            }
        }
    }
}
