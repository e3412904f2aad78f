//! DeciLM / nemotron-nas configs (`DeciLMForCausalLM`): a Llama config plus `block_configs`,
//! one entry per layer, the format NVIDIA's Puzzle children ship in and that vLLM, TensorRT-LLM
//! and llama.cpp serve.
//!
//! Per layer: attention is GQA with `num_attention_heads / n_heads_in_group` KV heads, a linear
//! replacement (`replace_with_linear`), or no-op; FFN is SwiGLU with intermediate size
//! `round_up_256(int(2 * ffn_mult * hidden / 3))`, linear, or no-op. NVIDIA's own Puzzle code
//! writes absolute sizes instead (`num_key_value_heads`, `intermediate_size`); both are read.

use std::path::Path;

use puzzle_types::error::{Error, Result};
use puzzle_types::family::Family;
use puzzle_types::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec};
use serde_json::Value;

use crate::config::{HfLlamaConfig, MAX_POSITIONS, MAX_WIDTH, check_groups, check_size};

/// `round_up_to_256(int(2 * ffn_mult * hidden / 3))`, DeciLM's `_ffn_mult_to_intermediate_size`.
/// Saturates instead of overflowing (callers bound the width; see `parse_ffn`).
pub fn ffn_mult_to_intermediate(ffn_mult: f64, hidden: usize) -> usize {
    let i = (2.0 * ffn_mult * hidden as f64 / 3.0) as usize;
    i.div_ceil(256).saturating_mul(256)
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
    for key in ["sparsify", "num_sink_tokens"] {
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
    let window = match a.get("window_length").filter(|v| !v.is_null()) {
        None => None,
        Some(w) => Some(
            w.as_u64()
                .filter(|&w| w > 0)
                .ok_or_else(|| at(format!("window_length {w} is not a positive integer")))?
                as usize,
        ),
    };
    check_size(
        &format!("block_configs[{layer}].attention.window_length"),
        window,
        MAX_POSITIONS,
        path,
    )?;
    Ok(AttentionSpec::Gqa {
        num_kv_heads: kv,
        qkv_bias: bias,
        o_bias: bias,
        window,
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
    // An absolute width, when present, is authoritative (NVIDIA's own Puzzle code writes it;
    // our exporter adds it when ffn_mult cannot express the width exactly).
    let size = if let Some(i) = f.get("intermediate_size").and_then(Value::as_u64) {
        i as usize
    } else if let Some(m) = f.get("ffn_mult").filter(|v| !v.is_null()) {
        let m = m.as_f64().filter(|m| *m > 0.0).ok_or_else(|| {
            Error::config(
                path,
                format!("block_configs[{layer}].ffn.ffn_mult {m} is not a positive number"),
            )
        })?;
        // Bounded before rounding: a huge multiple would overflow the rounding up.
        let raw = 2.0 * m * hidden as f64 / 3.0;
        if raw > MAX_WIDTH as f64 {
            return Err(Error::config(
                path,
                format!(
                    "block_configs[{layer}].ffn.ffn_mult {m} makes an FFN {raw:.3e} wide, larger than any model (at most {MAX_WIDTH})"
                ),
            ));
        }
        ffn_mult_to_intermediate(m, hidden)
    } else {
        return Err(Error::config(
            path,
            format!(
                "block_configs[{layer}].ffn: neither no_op, replace_with_linear, ffn_mult nor intermediate_size"
            ),
        ));
    };
    check_size(
        &format!("block_configs[{layer}].ffn width"),
        Some(size),
        MAX_WIDTH,
        path,
    )?;
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

    fn child_config(
        &self,
        parent_config: &serde_json::Value,
        child: &ModelSpec,
        dtype: &str,
    ) -> Result<(serde_json::Value, Vec<String>)> {
        crate::decilm::child_config(parent_config, child, dtype)
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

/// The Hugging Face repository whose `configuration_decilm.py` / `modeling_decilm.py` a child's
/// `auto_map` names, so `trust_remote_code` loaders (transformers' Auto classes, TensorRT-LLM's
/// converter) find the DeciLM classes. Referenced in transformers' `repo--module.Class` form, not
/// copied: the folder carries no Python, and whoever loads it fetches NVIDIA's code under that
/// repository's terms (the model card says so). This repository's code reads every field
/// `child_config` writes (no-op and linear subblocks, `ffn_mult`, `n_heads_in_group`).
pub const DECILM_CODE_REPO: &str = "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5";

/// `auto_map` for a DeciLM config: the classes in [`DECILM_CODE_REPO`].
pub fn decilm_auto_map() -> Value {
    serde_json::json!({
        "AutoConfig": format!("{DECILM_CODE_REPO}--configuration_decilm.DeciLMConfig"),
        "AutoModelForCausalLM": format!("{DECILM_CODE_REPO}--modeling_decilm.DeciLMForCausalLM"),
    })
}

/// The DeciLM `config.json` of a (heterogeneous) child of a Llama-family parent, and the
/// serving caveats that apply to it. `parent_config` is the parent's `config.json`: everything
/// that is not per-layer (RoPE, vocabulary, special tokens, norms) is kept from it.
pub fn child_config(
    parent_config: &Value,
    child: &ModelSpec,
    dtype: &str,
) -> Result<(Value, Vec<String>)> {
    let mut c = parent_config.clone();
    let o = c
        .as_object_mut()
        .ok_or_else(|| Error::invalid("the parent config.json is not an object"))?;
    // A parent's own `auto_map` names classes for the parent's format (or files in the parent's
    // folder, which the child's does not have): replaced by the DeciLM classes below.
    for k in ["layer_types", "auto_map", "quantization_config"] {
        o.remove(k);
    }
    let h = child.hidden_size;
    let heads = child.num_attention_heads;
    let mut warnings = Vec::new();
    let mut blocks = Vec::new();
    let mut has_linear = false;
    for (i, l) in child.layers.iter().enumerate() {
        let attention = match &l.attention {
            AttentionSpec::Gqa {
                num_kv_heads,
                window,
                ..
            } => serde_json::json!({
                "n_heads_in_group": heads / num_kv_heads, "no_op": false, "replace_with_linear": false,
                "sparsify": null, "num_sink_tokens": null, "unshifted_sink": false,
                "use_prefill_window_in_sink_attention": false, "window_length": window}),
            AttentionSpec::Linear => {
                has_linear = true;
                serde_json::json!({"n_heads_in_group": null, "no_op": false, "replace_with_linear": true,
                    "sparsify": null, "num_sink_tokens": null, "unshifted_sink": false,
                    "use_prefill_window_in_sink_attention": false, "window_length": null})
            }
            AttentionSpec::NoOp => serde_json::json!({"n_heads_in_group": null, "no_op": true,
                "replace_with_linear": false, "sparsify": null, "num_sink_tokens": null,
                "unshifted_sink": false, "use_prefill_window_in_sink_attention": false, "window_length": null}),
        };
        let ffn = match &l.ffn {
            FfnSpec::SwiGlu {
                intermediate_size, ..
            } => {
                let mult = intermediate_to_ffn_mult(*intermediate_size, h);
                if ffn_mult_to_intermediate(mult, h) == *intermediate_size {
                    serde_json::json!({"ffn_mult": mult, "no_op": false, "replace_with_linear": false, "sparsify": null})
                } else {
                    warnings.push(format!(
                        "layer {i}: FFN width {intermediate_size} is not a multiple of 256; written as `intermediate_size` \
                         (NVIDIA's absolute form) beside ffn_mult {mult:.4}, which vLLM and llama.cpp round to {}",
                        ffn_mult_to_intermediate(mult, h)
                    ));
                    serde_json::json!({"ffn_mult": mult, "intermediate_size": intermediate_size, "no_op": false,
                        "replace_with_linear": false, "sparsify": null})
                }
            }
            FfnSpec::Linear => {
                has_linear = true;
                serde_json::json!({"ffn_mult": null, "no_op": false, "replace_with_linear": true, "sparsify": null})
            }
            FfnSpec::NoOp => {
                serde_json::json!({"ffn_mult": null, "no_op": true, "replace_with_linear": false, "sparsify": null})
            }
        };
        if matches!(l.ffn, FfnSpec::NoOp) && !matches!(l.attention, AttentionSpec::NoOp) {
            warnings.push(format!(
                "layer {i}: attention kept with a no-op FFN; llama.cpp's `deci` converter drops that attention output{}",
                if i + 1 == child.layers.len() { " and crashes on a no-op FFN in the last layer" } else { "" }
            ));
        }
        if matches!(l.ffn, FfnSpec::Linear) {
            warnings.push(format!(
                "layer {i}: linear FFN; llama.cpp refuses `mlp.linear_mlp.weight`"
            ));
        }
        blocks.push(serde_json::json!({"attention": attention, "ffn": ffn}));
    }
    if has_linear {
        warnings.push(
            "the child has linear subblocks: vLLM's DeciLMForCausalLM does not serve them (TensorRT-LLM does)".into(),
        );
    }
    if child.head_dim * heads != h {
        warnings.push("head_dim differs from hidden_size / num_attention_heads: llama.cpp's converter refuses it".into());
    }
    o.insert(
        "architectures".into(),
        serde_json::json!(["DeciLMForCausalLM"]),
    );
    o.insert("model_type".into(), serde_json::json!("nemotron-nas"));
    o.insert("auto_map".into(), decilm_auto_map());
    o.insert("intermediate_size".into(), Value::Null);
    o.insert("num_key_value_heads".into(), Value::Null);
    o.insert(
        "num_hidden_layers".into(),
        serde_json::json!(child.layers.len()),
    );
    o.insert("block_configs".into(), Value::Array(blocks));
    o.insert("torch_dtype".into(), serde_json::json!(dtype));
    o.remove("dtype");
    Ok((c, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask fuzz` (target `config_json`, in CI's 30 s run): `ffn_mult`
    /// 5.6e33 overflowed the rounding up to a multiple of 256 (a panic); now an error naming it.
    #[test]
    fn a_huge_ffn_mult_is_an_error_naming_it() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/hf/tiny-decilm/config.json"
        ));
        let mut c: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(DeciLmFamily.parse_config(&c, path).is_ok());
        let layer = c["block_configs"]
            .as_array()
            .unwrap()
            .iter()
            .position(|b| b["ffn"]["ffn_mult"].is_f64())
            .unwrap();
        c["block_configs"][layer]["ffn"]["ffn_mult"] = serde_json::json!(5.555555555555556e33);
        let e = DeciLmFamily.parse_config(&c, path).unwrap_err().to_string();
        assert!(
            e.contains(&format!("block_configs[{layer}].ffn.ffn_mult"))
                && e.contains("larger than any model"),
            "{e}"
        );
        assert_eq!(ffn_mult_to_intermediate(1e300, 128), usize::MAX);
    }

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
