//! The Llama family (`LlamaForCausalLM`): a hub or transformers-5 `config.json` resolved by
//! [`crate::config`], children exported in DeciLM's format by [`crate::decilm`].

use std::path::Path;

use puzzle_types::error::{Error, Result};
use puzzle_types::family::Family;
use puzzle_types::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec};

use crate::config::{HfLlamaConfig, check_groups};

/// The Llama family (`LlamaForCausalLM`): homogeneous layers.
pub struct LlamaFamily;

impl Family for LlamaFamily {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["LlamaForCausalLM"]
    }

    fn claims(&self, config: &serde_json::Value) -> bool {
        let arch = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        match arch {
            Some(a) => self.architectures().contains(&a),
            None => config.get("model_type").and_then(|m| m.as_str()) == Some("llama"),
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

    fn parse_config(&self, config: &serde_json::Value, path: &Path) -> Result<ModelSpec> {
        let c = HfLlamaConfig::from_value(config, path)?;
        let mut spec = c.base_spec(self.name(), path)?;
        let kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        check_groups(c.num_attention_heads, kv, "num_key_value_heads", path)?;
        let intermediate = c
            .intermediate_size
            .ok_or_else(|| Error::config(path, "missing `intermediate_size`"))?;
        let bias = c.attention_bias.unwrap_or(false);
        spec.layers = vec![
            LayerSpec {
                attention: AttentionSpec::Gqa {
                    num_kv_heads: kv,
                    qkv_bias: bias,
                    o_bias: bias,
                    window: None,
                },
                ffn: FfnSpec::SwiGlu {
                    intermediate_size: intermediate,
                    bias: c.mlp_bias.unwrap_or(false),
                },
            };
            c.num_hidden_layers
        ];
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 176,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 512, "rope_theta": 10000.0})
    }

    fn parse(v: serde_json::Value) -> Result<ModelSpec> {
        LlamaFamily.parse_config(&v, Path::new("config.json"))
    }

    #[test]
    fn defaults_are_resolved() {
        let s = parse(base()).unwrap();
        assert_eq!(s.head_dim, 16);
        assert_eq!(s.rms_norm_eps, 1e-6);
        assert!(!s.tie_word_embeddings);
        assert_eq!(s.layers.len(), 2);
    }

    /// Found by `cargo xtask fuzz` (target `config_json`): 64096 layers in a 328-byte file
    /// made us hold 106 MB; sizes beyond any model are refused, naming the key.
    #[test]
    fn sizes_beyond_any_model_are_refused_by_name() {
        for (key, v) in [
            ("num_hidden_layers", 64096u64),
            ("hidden_size", 1 << 40),
            ("intermediate_size", 1 << 21),
            ("vocab_size", 1 << 30),
            ("max_position_embeddings", 1 << 40),
        ] {
            let mut c = base();
            c[key] = json!(v);
            let e = parse(c).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}` = {v} is larger than any model")),
                "{e}"
            );
        }
    }

    #[test]
    fn both_rope_dialects_agree() {
        let mut hub = base();
        hub["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut t5 = base();
        t5.as_object_mut().unwrap().remove("rope_theta");
        t5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        assert_eq!(parse(hub).unwrap().rope, parse(t5).unwrap().rope);
    }

    #[test]
    fn unknown_rope_type_is_refused_by_name() {
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let e = parse(c).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("rope_type `yarn`"),
            "{e}"
        );
    }

    #[test]
    fn malformed_fields_name_the_field() {
        let mut c = base();
        c["hidden_size"] = json!("big");
        let e = parse(c).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("invalid type"),
            "{e}"
        );
        let mut c = base();
        c.as_object_mut().unwrap().remove("num_hidden_layers");
        let e = parse(c).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers"), "{e}");
        let mut c = base();
        c["num_key_value_heads"] = json!(3);
        let e = parse(c).unwrap_err().to_string();
        assert!(e.contains("not a multiple of 3"), "{e}");
        let mut c = base();
        c["hidden_act"] = json!("gelu");
        let e = parse(c).unwrap_err().to_string();
        assert!(e.contains("hidden_act `gelu`"), "{e}");
    }

    #[test]
    fn eos_may_be_a_list() {
        let mut c = base();
        c["eos_token_id"] = json!([1, 7]);
        c["bos_token_id"] = json!(0);
        let s = parse(c).unwrap();
        assert_eq!(s.eos_token_ids, vec![1, 7]);
        assert_eq!(s.bos_token_id, Some(0));
    }
}
