//! The search's ablations as solvers: `greedy` (the per-layer greedy choice) and `random` (a
//! random architecture of the library meeting the same constraints). The paper compares the
//! MIP against both at matched speed; as solvers they are one config switch away
//! (`[search] solver = "greedy"`), and every later stage (realize, distil, evaluate, report)
//! runs on their choice exactly as on the MIP's. Neither proves anything: a found choice is
//! `Feasible`, none found is `Unknown`.

use std::time::Instant;

use puzzle_types::error::Result;
use puzzle_types::rng::SeededRng;
use puzzle_types::search::mip::{MipProblem, MipSolution, MipStatus, SolveOptions, Solver};

/// `greedy`: [`MipProblem::greedy`].
pub struct GreedySolver;

/// `random`: uniform draws of one choice per group (seeded: the same problem gives the same
/// architecture), the first that meets every row; when none of [`RANDOM_DRAWS`] does (a tight
/// constraint leaves few feasible choices), the first draw that greedy least-violation moves
/// ([`MipProblem::repair`]) make feasible.
pub struct RandomSolver {
    pub seed: u64,
}

/// Draws before the random solver falls back to repairing them.
pub const RANDOM_DRAWS: usize = 4096;

/// The objective's trivial lower bound: every group at its cheapest choice (finite, so a
/// heuristic's answer reads back from JSON as written).
fn trivial_bound(p: &MipProblem) -> f64 {
    p.objective_constant
        + p.groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&v| p.objective[v])
                    .fold(f64::INFINITY, f64::min)
            })
            .filter(|m| m.is_finite())
            .sum::<f64>()
}

fn answer(p: &MipProblem, choice: Option<Vec<usize>>, t0: Instant) -> MipSolution {
    let seconds = t0.elapsed().as_secs_f64();
    match choice {
        Some(c) => MipSolution {
            status: MipStatus::Feasible,
            objective: p.objective_of(&c),
            choice: c,
            bound: trivial_bound(p),
            seconds,
        },
        None => MipSolution {
            status: MipStatus::Unknown,
            choice: Vec::new(),
            objective: f64::INFINITY,
            bound: trivial_bound(p),
            seconds,
        },
    }
}

impl Solver for GreedySolver {
    fn name(&self) -> &str {
        "greedy"
    }
    fn solve(&self, problem: &MipProblem, _: &SolveOptions) -> Result<MipSolution> {
        problem.validate()?;
        let t0 = Instant::now();
        Ok(answer(problem, problem.greedy(), t0))
    }
}

impl Solver for RandomSolver {
    fn name(&self) -> &str {
        "random"
    }
    fn solve(&self, problem: &MipProblem, _: &SolveOptions) -> Result<MipSolution> {
        problem.validate()?;
        let t0 = Instant::now();
        // The same seeded sequence of draws twice: checked as drawn (most problems stop at
        // one of the first), then repaired in the same order when none was feasible.
        let draws = || {
            let mut rng = SeededRng::new(self.seed);
            (0..RANDOM_DRAWS).map(move |_| {
                problem
                    .groups
                    .iter()
                    .map(|g| rng.below(g.len()))
                    .collect::<Vec<usize>>()
            })
        };
        let found = draws()
            .find(|c| problem.violations(c).is_empty())
            .or_else(|| draws().find_map(|c| problem.repair(&c)));
        Ok(answer(problem, found, t0))
    }
}

static GREEDY: GreedySolver = GreedySolver;
static RANDOM: RandomSolver = RandomSolver { seed: 0 };

inventory::submit! {
    puzzle_types::search::SolverRegistration {
        solver: &GREEDY,
        provider: "puzzle-solver-bnb",
        description: "ablation: the per-layer greedy choice (best choices first, then the cheapest objective per unit of violation removed until feasible; no proof)",
    }
}

inventory::submit! {
    puzzle_types::search::SolverRegistration {
        solver: &RANDOM,
        provider: "puzzle-solver-bnb",
        description: "ablation: a random architecture of the library meeting the constraints (seeded uniform draws, else a repaired draw; no proof)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_types::search::mip::{Row, brute_force};

    /// `groups` groups of `choices` choices with random objectives and one or two rows.
    fn instance(rng: &mut SeededRng, groups: usize, choices: usize, rows: usize) -> MipProblem {
        let n = groups * choices;
        let groups_v: Vec<Vec<usize>> = (0..groups)
            .map(|g| (g * choices..(g + 1) * choices).collect())
            .collect();
        let objective = (0..n).map(|_| rng.uniform_in(0.0, 10.0)).collect();
        let rows = (0..rows)
            .map(|r| {
                let coefs: Vec<(usize, f64)> =
                    (0..n).map(|v| (v, rng.uniform_in(0.0, 5.0))).collect();
                // Between the cheapest and the dearest sum, so some are tight and some loose.
                let lo: f64 = groups_v
                    .iter()
                    .map(|g| g.iter().map(|&v| coefs[v].1).fold(f64::INFINITY, f64::min))
                    .sum();
                let hi: f64 = groups_v
                    .iter()
                    .map(|g| g.iter().map(|&v| coefs[v].1).fold(0.0, f64::max))
                    .sum();
                Row {
                    name: format!("row {r}"),
                    coefs,
                    lo: f64::NEG_INFINITY,
                    hi: lo + rng.uniform_in(0.1, 0.9) * (hi - lo),
                }
            })
            .collect();
        MipProblem {
            num_vars: n,
            groups: groups_v,
            objective,
            objective_constant: 0.5,
            rows,
        }
    }

    /// On random small problems, both give feasible choices whose objective is the one
    /// reported and never beats brute force's optimum; greedy is optimal without rows, and
    /// strictly worse than the optimum on some instances (or it would be no ablation).
    #[test]
    fn ablation_solvers_are_feasible_and_never_beat_the_optimum() {
        let mut rng = SeededRng::new(3);
        let (mut greedy_worse, mut solved) = (0, 0);
        for i in 0..200 {
            let p = instance(&mut rng, 5, 4, 1 + i % 2);
            let best = brute_force(&p);
            for s in [&GREEDY as &dyn Solver, &RANDOM] {
                let a = s.solve(&p, &SolveOptions::default()).unwrap();
                if a.status == MipStatus::Unknown {
                    assert!(a.choice.is_empty());
                    continue;
                }
                assert_eq!(a.status, MipStatus::Feasible);
                assert!(p.violations(&a.choice).is_empty(), "{} on {i}", s.name());
                assert!((a.objective - p.objective_of(&a.choice)).abs() < 1e-12);
                assert_eq!(best.status, MipStatus::Optimal, "a feasible instance {i}");
                assert!(a.objective >= best.objective - 1e-9, "{} on {i}", s.name());
                assert!(a.bound <= best.objective + 1e-9);
                if s.name() == "greedy" {
                    solved += 1;
                    greedy_worse += usize::from(a.objective > best.objective + 1e-9);
                }
            }
        }
        assert!(solved >= 150, "greedy solved {solved} of 200");
        assert!(greedy_worse > 0, "greedy matched the optimum everywhere");
        // Without rows the best choice of every group is optimal, and greedy stops there.
        let mut p = instance(&mut rng, 5, 4, 1);
        p.rows.clear();
        let g = GREEDY.solve(&p, &SolveOptions::default()).unwrap();
        assert!((g.objective - brute_force(&p).objective).abs() < 1e-12);
    }

    /// The same problem gives the same random architecture; another seed, another one.
    #[test]
    fn random_architectures_are_reproducible_and_differ_by_seed() {
        let mut rng = SeededRng::new(5);
        let mut p = instance(&mut rng, 12, 5, 1);
        p.rows[0].hi = f64::INFINITY;
        let a = RANDOM.solve(&p, &SolveOptions::default()).unwrap();
        let b = RANDOM.solve(&p, &SolveOptions::default()).unwrap();
        let c = RandomSolver { seed: 1 }
            .solve(&p, &SolveOptions::default())
            .unwrap();
        assert_eq!(a.choice, b.choice);
        assert_ne!(a.choice, c.choice);
    }
}
