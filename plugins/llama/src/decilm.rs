//! DeciLM / nemotron-nas configs (`DeciLMForCausalLM`): a Llama config plus `block_configs`,
//! one entry per layer, the format NVIDIA's Puzzle children ship in and that vLLM, TensorRT-LLM
//! and llama.cpp serve.
//!
//! Per layer: attention is GQA with `num_attention_heads / n_heads_in_group` KV heads, a linear
//! replacement (`replace_with_linear`), or no-op; FFN is SwiGLU with intermediate size
//! `round_up_256(int(2 * ffn_mult * hidden / 3))`, linear, or no-op. NVIDIA's own Puzzle code
//! writes absolute sizes instead (`num_key_value_heads`, `intermediate_size`); both are read.

use std::path::Path;

use puzzle_core::error::{Error, Result};
use puzzle_core::family::Family;
use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec};
use serde_json::Value;

use crate::config::{HfLlamaConfig, check_groups};

/// `round_up_to_256(int(2 * ffn_mult * hidden / 3))`, DeciLM's `_ffn_mult_to_intermediate_size`.
pub fn ffn_mult_to_intermediate(ffn_mult: f64, hidden: usize) -> usize {
    let i = (2.0 * ffn_mult * hidden as f64 / 3.0) as usize;
    i.div_ceil(256) * 256
}

/// The `ffn_mult` that maps back to `intermediate` (`1.5 * I / hidden`); exact when `I` is a
/// multiple of 256, otherwise the round trip yields the next multiple of 256.
pub fn intermediate_to_ffn_mult(intermediate: usize, hidden: usize) -> f64 {
    1.5 * intermediate as f64 / hidden as f64
}

/// The DeciLM family.
pub struct DeciLmFamily;

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn parse_attention(
    a: &Value,
    layer: usize,
    heads: usize,
    bias: bool,
    path: &Path,
) -> Result<AttentionSpec> {
    let at = |msg: String| Error::config(path, format!("block_configs[{layer}].attention: {msg}"));
    for key in ["sparsify", "window_length", "num_sink_tokens"] {
        if a.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Error::unsupported(
                path,
                format!("block_configs[{layer}].attention.{key} is set; it is not implemented"),
            ));
        }
    }
    if flag(a, "no_op") {
        return Ok(AttentionSpec::NoOp);
    }
    if flag(a, "replace_with_linear") {
        return Ok(AttentionSpec::Linear);
    }
    let kv = if let Some(g) = a.get("n_heads_in_group").filter(|v| !v.is_null()) {
        let g = g
            .as_u64()
            .filter(|&g| g > 0)
            .ok_or_else(|| at(format!("n_heads_in_group {g} is not a positive integer")))?
            as usize;
        if !heads.is_multiple_of(g) {
            return Err(at(format!(
                "n_heads_in_group {g} does not divide num_attention_heads {heads}"
            )));
        }
        heads / g
    } else if let Some(kv) = a.get("num_key_value_heads").and_then(Value::as_u64) {
        kv as usize
    } else {
        return Err(at(
            "neither no_op, replace_with_linear, n_heads_in_group nor num_key_value_heads".into(),
        ));
    };
    check_groups(heads, kv, &format!("block_configs[{layer}]"), path)?;
    Ok(AttentionSpec::Gqa {
        num_kv_heads: kv,
        qkv_bias: bias,
        o_bias: bias,
    })
}

fn parse_ffn(f: &Value, layer: usize, hidden: usize, bias: bool, path: &Path) -> Result<FfnSpec> {
    if f.get("sparsify").is_some_and(|v| !v.is_null()) {
        return Err(Error::unsupported(
            path,
            format!("block_configs[{layer}].ffn.sparsify is set; it is not implemented"),
        ));
    }
    if flag(f, "no_op") {
        return Ok(FfnSpec::NoOp);
    }
    if flag(f, "replace_with_linear") {
        return Ok(FfnSpec::Linear);
    }
    let size = if let Some(m) = f.get("ffn_mult").filter(|v| !v.is_null()) {
        let m = m.as_f64().filter(|m| *m > 0.0).ok_or_else(|| {
            Error::config(
                path,
                format!("block_configs[{layer}].ffn.ffn_mult {m} is not a positive number"),
            )
        })?;
        ffn_mult_to_intermediate(m, hidden)
    } else if let Some(i) = f.get("intermediate_size").and_then(Value::as_u64) {
        i as usize
    } else {
        return Err(Error::config(
            path,
            format!(
                "block_configs[{layer}].ffn: neither no_op, replace_with_linear, ffn_mult nor intermediate_size"
            ),
        ));
    };
    Ok(FfnSpec::SwiGlu {
        intermediate_size: size,
        bias,
    })
}

impl Family for DeciLmFamily {
    fn name(&self) -> &'static str {
        "decilm"
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["DeciLMForCausalLM"]
    }

    fn claims(&self, config: &Value) -> bool {
        let arch = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        match arch {
            Some(a) => self.architectures().contains(&a),
            None => matches!(
                config.get("model_type").and_then(|m| m.as_str()),
                Some("nemotron-nas" | "deci")
            ),
        }
    }

    fn parse_config(&self, config: &Value, path: &Path) -> Result<ModelSpec> {
        let c = HfLlamaConfig::from_value(config, path)?;
        let mut spec = c.base_spec(self.name(), path)?;
        let blocks = config
            .get("block_configs")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::config(path, "missing `block_configs` list"))?;
        if blocks.len() != c.num_hidden_layers {
            return Err(Error::config(
                path,
                format!(
                    "block_configs has {} entries but num_hidden_layers is {}",
                    blocks.len(),
                    c.num_hidden_layers
                ),
            ));
        }
        let (attn_bias, mlp_bias) = (
            c.attention_bias.unwrap_or(false),
            c.mlp_bias.unwrap_or(false),
        );
        spec.layers = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let a = b.get("attention").ok_or_else(|| {
                    Error::config(path, format!("block_configs[{i}] has no `attention`"))
                })?;
                let f = b.get("ffn").ok_or_else(|| {
                    Error::config(path, format!("block_configs[{i}] has no `ffn`"))
                })?;
                Ok(LayerSpec {
                    attention: parse_attention(a, i, c.num_attention_heads, attn_bias, path)?,
                    ffn: parse_ffn(f, i, c.hidden_size, mlp_bias, path)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_mult_rounding_matches_decilm() {
        // The fixture's documented sizes for hidden 128.
        for (m, i) in [(1.0, 256), (6.0, 512), (0.5, 256), (9.0, 768), (3.0, 256)] {
            assert_eq!(ffn_mult_to_intermediate(m, 128), i, "ffn_mult {m}");
        }
        // Llama-3.1-70B: 28672 = 3.5 * 8192.
        assert_eq!(
            ffn_mult_to_intermediate(intermediate_to_ffn_mult(28672, 8192), 8192),
            28672
        );
    }
}
