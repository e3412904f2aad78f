//! `puzzle-types`: the plain data and the tensor-free traits of the Puzzle method (Bercovich et
//! al., "Puzzle: Distillation-Based NAS for Inference-Optimized LLMs").
//!
//! This is the bottom layer: it compiles without burn, tokenizers, safetensors or the embedded
//! model zoo, so solver and family plugins pay only for what they use.
//!
//! - [`error`]: the typed errors every crate returns.
//! - [`spec`], [`variant`]: the per-layer description of a decoder and subblock variant ids.
//! - [`family`]: the parent-family trait (config -> spec, child config).
//! - [`search`]: block tables, search problems, the solver-facing `MipProblem` and `Solver`.
//! - [`deploy`]: deployment and hardware profiles as data; [`engine`]: what each serving engine
//!   can run; [`kinds`]: enums parsed at the edge.
//! - [`registry`]: the one registry type for every kind of plugin.
//! - [`shard`]: `--shard INDEX/COUNT` or `auto` from Slurm's, torchrun's or Kubernetes' environment.
//! - [`fsutil`]: atomic writes and swapped checkpoint folders; [`artifact`]: reuse an artifact
//!   whose recorded inputs match, else rebuild it; [`progress`]: the UI contract.

pub mod artifact;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod family;
pub mod fsutil;
pub mod interrupt;
pub mod kinds;
pub mod progress;
pub mod registry;
pub mod rng;
pub mod search;
pub mod shard;
pub mod spec;
pub mod variant;

pub use error::{Error, Result};
