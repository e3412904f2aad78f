//! `puzzle-core`: the tensor layer of the Puzzle method (Bercovich et al., "Puzzle:
//! Distillation-Based NAS for Inference-Optimized LLMs"), on top of the plain data and
//! tensor-free traits of `puzzle-types` (re-exported here under the same module names).
//!
//! - [`nn`]: primitives, subblocks and the decoder in burn.
//! - [`weights`], [`gguf`], [`tokenizer`], [`model`]: reading checkpoints.
//! - [`generate`]: KV-cache decoding; [`data`], [`train`], [`eval`]: corpora, training, metrics.
//! - The traits that need tensors: [`variants::VariantCatalog`], [`cost::CostModel`],
//!   [`score::Scorer`], with the stage kernels they serve: [`bld`], [`score`], [`realize`],
//!   [`distill`].
//! - [`plugins::Plugins`]: the registries of every kind of plugin, as one value.
//!
//! The pipeline (stages, run folder, dynamic plugins) is `puzzle-pipeline`, one layer up.

pub mod bld;
pub mod cost;
pub mod data;
pub mod deploy;
pub mod device;
pub mod distill;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod hf_folder;
pub mod model;
pub mod nn;
pub mod plugins;
pub mod realize;
pub mod score;
pub mod tokenizer;
pub mod train;
pub mod variants;
pub mod weights;

pub use puzzle_types::engine as capabilities;
pub use puzzle_types::{
    artifact, error, family, fsutil, interrupt, kinds, progress, registry, rng, spec, variant,
};

/// The search: block tables, problems and solvers from `puzzle-types`, plus the block table
/// built from a run's cost and score tables.
pub mod search {
    pub use puzzle_types::search::*;
    pub mod from_run;
}

pub use burn;
pub use error::{Error, Result};
pub use plugins::Plugins;
