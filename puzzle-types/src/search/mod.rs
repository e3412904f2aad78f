//! The search (Puzzle stage 6): pick one choice per group to optimise a summed metric under
//! linear constraints, as a mixed-integer program solved by pluggable [`mip::Solver`]s.
//!
//! - [`table`]: block tables (from a run folder, or NVIDIA's files through [`nvidia`]),
//! - [`problem`]: objective and constraints -> [`mip::MipProblem`],
//! - [`mip`]: the solver-facing problem, the `Solver` trait and registry, brute force,
//! - [`run`]: solve with re-checks, diverse alternatives, Pareto sweeps, infeasibility reports.

pub mod mip;
pub mod nvidia;
pub mod problem;
pub mod run;
pub mod synthetic;
pub mod table;

pub use mip::{MipProblem, MipSolution, MipStatus, SolveOptions, Solver, SolverRegistration};
pub use problem::{BoundValue, Constraint, Objective, Op, SearchSpec, Sense};
pub use run::{Infeasibility, SearchSolution, SweepPoint};
pub use table::{BlockTable, TableChoice, TableGroup};
