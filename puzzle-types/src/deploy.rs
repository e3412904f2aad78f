//! Deployment profiles: the target hardware (peak FLOP/s per dtype, memory bandwidth and
//! capacity) and the workload (dtypes, batch sizes, prompt and generation lengths). Cost models
//! and the search read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kinds::{Dtype, EngineKind};

/// A hardware profile (`model-zoo/hardware/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    pub name: String,
    /// `gpu` or `cpu`.
    pub kind: String,
    pub memory_gb: f64,
    pub memory_bandwidth_gbs: f64,
    /// Dense peak TFLOP/s per dtype (`fp8`, `bf16`, `fp16`, `tf32`, `fp32`).
    pub peak_tflops: BTreeMap<String, f64>,
}

impl HardwareProfile {
    /// Parses a profile's TOML; `origin` (a file or a built-in name) is named in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::invalid(format!("{origin}: invalid hardware profile: {e}")))
    }

    /// Peak FLOP/s for a compute dtype (falls back to bf16 when the dtype has no entry).
    pub fn peak_flops(&self, dtype: Dtype) -> Result<f64> {
        self.peak_tflops
            .get(dtype.as_str())
            .or_else(|| self.peak_tflops.get("bf16"))
            .map(|t| t * 1e12)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "hardware `{}` lists no peak for `{dtype}`",
                    self.name
                ))
            })
    }
}

/// `[deployment]`: what the child will be served for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentProfile {
    /// The engine that serves the child: its capability table (`puzzle_types::engine`) narrows
    /// the search space, and speeds are measured in it.
    #[serde(default = "d_engine")]
    pub engine: EngineKind,
    /// A built-in hardware profile name or a TOML path.
    #[serde(default = "d_hw")]
    pub hardware: String,
    /// Storage dtype of the weights (`fp8`, `bf16`, `fp16`, `fp32`).
    #[serde(default = "d_dtype")]
    pub weight_dtype: Dtype,
    /// Compute dtype (selects the peak FLOP/s).
    #[serde(default = "d_dtype")]
    pub activation_dtype: Dtype,
    /// KV-cache dtype.
    #[serde(default = "d_dtype")]
    pub kv_dtype: Dtype,
    /// Batch sizes to plan for; the search solves each and keeps the best.
    #[serde(default = "d_batches")]
    pub batch_sizes: Vec<usize>,
    /// Prompt tokens per sequence.
    #[serde(default = "d_len")]
    pub prefill_len: usize,
    /// Generated tokens per sequence.
    #[serde(default = "d_len")]
    pub generation_len: usize,
}

fn d_engine() -> EngineKind {
    EngineKind::Burn
}
fn d_hw() -> String {
    "cpu-dev".into()
}
fn d_dtype() -> Dtype {
    Dtype::Bf16
}
fn d_batches() -> Vec<usize> {
    vec![1, 8]
}
fn d_len() -> usize {
    128
}

impl Default for DeploymentProfile {
    fn default() -> Self {
        DeploymentProfile {
            engine: d_engine(),
            hardware: d_hw(),
            weight_dtype: d_dtype(),
            activation_dtype: d_dtype(),
            kv_dtype: d_dtype(),
            batch_sizes: d_batches(),
            prefill_len: d_len(),
            generation_len: d_len(),
        }
    }
}

impl DeploymentProfile {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.batch_sizes.is_empty() || self.batch_sizes.contains(&0) {
            return Err(Error::invalid(
                "deployment.batch_sizes must be non-empty and positive",
            ));
        }
        if self.prefill_len == 0 || self.generation_len == 0 {
            return Err(Error::invalid(
                "deployment.prefill_len and generation_len must be positive",
            ));
        }
        Ok(())
    }

    /// Context length halfway through generation (the mean KV length a decode step reads).
    pub fn mean_decode_context(&self) -> usize {
        self.prefill_len + self.generation_len / 2
    }
}
