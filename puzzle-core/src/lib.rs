//! `puzzle-core`: the traits, plain data and tensor code of the Puzzle method
//! (Bercovich et al., "Puzzle: Distillation-Based NAS for Inference-Optimized LLMs").
//!
//! - [`spec`]: the resolved, per-layer heterogeneous description of a decoder.
//! - [`variant`]: subblock variant ids (`attn:gqa(kv=2)`, `ffn:width(768)`, ...).
//! - [`family`]: the parent-family trait and its registry.
//! - [`nn`]: primitives, subblocks and the decoder in burn.
//! - [`weights`], [`gguf`], [`tokenizer`], [`model`]: reading checkpoints.
//! - [`generate`]: KV-cache decoding.

pub mod bld;
pub mod cost;
pub mod data;
pub mod deploy;
pub mod device;
pub mod distill;
pub mod error;
pub mod eval;
pub mod family;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod nn;
pub mod plugin;
pub mod progress;
pub mod realize;
pub mod run;
pub mod score;
pub mod search;
pub mod spec;
pub mod tokenizer;
pub mod train;
pub mod variant;
pub mod variants;
pub mod weights;

pub use burn;
pub use error::{Error, Result};
