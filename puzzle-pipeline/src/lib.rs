//! `puzzle-pipeline`: the Puzzle method as stages over a run folder.
//!
//! - [`config`]: the run config (TOML), pure data: parsing it runs no code.
//! - [`run`]: an opened run (config, folder, parent, corpus, plugins).
//! - [`stages`]: cost, score and the block table; [`calibrate`]: the search with speed
//!   calibration; [`finish`]: distil and export; [`baselines`]: uniform pruning and layer
//!   removal matched to the child's measured speed; [`evaluate`]: every model side by side;
//!   [`pipeline`]: the precheck, BLD and `run_all`, in order; [`coupled`]: the pairs coupled BLD
//!   trains after a decoupled search.
//! - Every stage artifact is reused or rebuilt through [`puzzle_core::artifact`].
//! - [`plan`]: `puzzle plan`, every stage's work, FLOPs, memory and device-hours from a
//!   parent's `config.json` alone.
//! - [`ablate`]: `puzzle ablate`, the paper's ablations as runs beside the main one, sharing
//!   its artifacts.
//! - [`slurm`]: `puzzle slurm`, a run as chained Slurm jobs (BLD as a job array).
//! - [`host`]: the dynamic plugin host; it pushes what it loads into a [`puzzle_core::Plugins`].

pub mod ablate;
pub mod baselines;
pub mod calibrate;
pub mod config;
pub mod coupled;
pub mod evaluate;
pub mod finish;
pub mod host;
pub mod pipeline;
pub mod plan;
pub mod run;
pub mod slurm;
pub mod speed;
pub mod stages;

pub use run::{Run, recorded_spec};
