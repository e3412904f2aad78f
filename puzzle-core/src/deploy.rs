//! Deployment profiles: the target hardware (peak FLOP/s per dtype, memory bandwidth and
//! capacity) and the workload (dtypes, batch sizes, prompt and generation lengths). Cost models
//! and the search read them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    /// A built-in profile by name (`h100-sxm`, `h200`, `a100-80gb`, `l40s`, `cpu-dev`) or a TOML
    /// file path.
    pub fn resolve(name_or_path: &str, base: &Path) -> Result<Self> {
        let (text, origin) = match puzzle_zoo::hardware(name_or_path) {
            Some(t) => (t.to_string(), format!("built-in profile `{name_or_path}`")),
            None => {
                let p = base.join(name_or_path);
                if !p.is_file() {
                    return Err(Error::invalid(format!(
                        "hardware `{name_or_path}` is neither a built-in profile ({}) nor a file",
                        puzzle_zoo::HARDWARE
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                (crate::fsutil::read_to_string(&p)?, p.display().to_string())
            }
        };
        toml::from_str(&text)
            .map_err(|e| Error::invalid(format!("{origin}: invalid hardware profile: {e}")))
    }

    /// Peak FLOP/s for a compute dtype (falls back to bf16 when the dtype has no entry).
    pub fn peak_flops(&self, dtype: &str) -> Result<f64> {
        self.peak_tflops
            .get(dtype)
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
    /// A built-in hardware profile name or a TOML path.
    #[serde(default = "d_hw")]
    pub hardware: String,
    /// Storage dtype of the weights (`fp8`, `bf16`, `fp16`, `fp32`).
    #[serde(default = "d_dtype")]
    pub weight_dtype: String,
    /// Compute dtype (selects the peak FLOP/s).
    #[serde(default = "d_dtype")]
    pub activation_dtype: String,
    /// KV-cache dtype.
    #[serde(default = "d_dtype")]
    pub kv_dtype: String,
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

fn d_hw() -> String {
    "cpu-dev".into()
}
fn d_dtype() -> String {
    "bf16".into()
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

/// Bytes per element of a dtype name.
pub fn dtype_bytes(dtype: &str) -> Result<f64> {
    Ok(match dtype {
        "fp8" | "int8" => 1.0,
        "bf16" | "fp16" => 2.0,
        "fp32" | "f32" | "tf32" => 4.0,
        "int4" | "fp4" => 0.5,
        other => {
            return Err(Error::invalid(format!(
                "unknown dtype `{other}` (fp32, bf16, fp16, fp8, int8, int4)"
            )));
        }
    })
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
        for d in [&self.weight_dtype, &self.activation_dtype, &self.kv_dtype] {
            dtype_bytes(d)?;
        }
        Ok(())
    }

    /// Context length halfway through generation (the mean KV length a decode step reads).
    pub fn mean_decode_context(&self) -> usize {
        self.prefill_len + self.generation_len / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_parse() {
        for (name, _) in puzzle_zoo::HARDWARE {
            let h = HardwareProfile::resolve(name, Path::new(".")).unwrap();
            assert!(
                h.memory_bandwidth_gbs > 0.0 && h.peak_flops("bf16").unwrap() > 0.0,
                "{name}"
            );
        }
        let h = HardwareProfile::resolve("h100-sxm", Path::new(".")).unwrap();
        assert_eq!(h.peak_flops("fp8").unwrap(), 1979e12);
        assert!(HardwareProfile::resolve("tpu-v9", Path::new(".")).is_err());
    }
}
