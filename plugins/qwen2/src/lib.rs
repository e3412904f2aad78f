//! The Qwen2 family (`Qwen2ForCausalLM`): a Llama-shaped decoder with biases on the q, k and v
//! projections (none on o), its own RoPE base and norm epsilon. Being a family description
//! (config -> spec), it runs on the core decoder unchanged, and the Llama variant catalog serves
//! it: KV pooling and width pruning keep the q/k/v biases (pooled or copied), linear attention
//! drops the v bias (BLD learns the difference), no-ops have none.
//!
//! Children export in the DeciLM / nemotron-nas format with `attention_bias: true` and an
//! explicit zero `o_proj.bias` per attention layer: DeciLM's bias switch covers q, k, v and o,
//! and a zero o bias is exactly Qwen2's function.

use std::path::Path;

use puzzle_llama::config::{HfLlamaConfig, check_groups};
use puzzle_types::error::{Error, Result};
use puzzle_types::family::Family;
use puzzle_types::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec};

/// The Qwen2 family.
pub struct Qwen2Family;

impl Family for Qwen2Family {
    fn name(&self) -> &'static str {
        "qwen2"
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["Qwen2ForCausalLM"]
    }

    fn parse_config(&self, config: &serde_json::Value, path: &Path) -> Result<ModelSpec> {
        if config.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::unsupported(
                path,
                "use_sliding_window = true (Qwen2 sliding-window layers)",
            ));
        }
        let c = HfLlamaConfig::from_value(config, path)?;
        let mut spec = c.base_spec(self.name(), path)?;
        let kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        check_groups(c.num_attention_heads, kv, "num_key_value_heads", path)?;
        let intermediate = c
            .intermediate_size
            .ok_or_else(|| Error::config(path, "missing `intermediate_size`"))?;
        spec.layers = vec![
            LayerSpec {
                attention: AttentionSpec::Gqa {
                    num_kv_heads: kv,
                    qkv_bias: true,
                    o_bias: false,
                    window: None,
                },
                ffn: FfnSpec::SwiGlu {
                    intermediate_size: intermediate,
                    bias: false,
                },
            };
            c.num_hidden_layers
        ];
        Ok(spec)
    }

    fn child_config(
        &self,
        parent_config: &serde_json::Value,
        child: &ModelSpec,
        dtype: &str,
    ) -> Result<(serde_json::Value, Vec<String>)> {
        let (mut c, mut warnings) =
            puzzle_llama::decilm::child_config(parent_config, child, dtype)?;
        let o = c.as_object_mut().expect("an object");
        o.insert("attention_bias".into(), serde_json::json!(true));
        for k in ["use_sliding_window", "sliding_window", "max_window_layers"] {
            o.remove(k);
        }
        warnings.push(
            "Qwen2 child: exported as DeciLM with attention_bias = true and zero o_proj biases (exactly Qwen2's attention)".into(),
        );
        Ok((c, warnings))
    }

    /// Qwen2 children carry q/k/v/o biases once exported (DeciLM's switch); a zero o bias
    /// makes that exact.
    fn export_extra(&self, child: &ModelSpec) -> Vec<(String, Vec<usize>)> {
        child
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.attention, AttentionSpec::Gqa { o_bias: false, .. }))
            .map(|(i, _)| {
                (
                    format!("model.layers.{i}.self_attn.o_proj.bias"),
                    vec![child.hidden_size],
                )
            })
            .collect()
    }
}

inventory::submit! {
    puzzle_types::family::FamilyRegistration { family: &Qwen2Family, provider: "puzzle-qwen2" }
}

/// Forces the linker to keep this crate's registration.
pub fn link() {
    puzzle_llama::link();
}
