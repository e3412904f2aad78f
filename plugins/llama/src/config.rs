//! Hugging Face `LlamaForCausalLM` configs: a serde mirror of `config.json` and its resolution
//! into a [`ModelSpec`]. Both dialects are read: the hub one (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and transformers-5 (`rope_parameters`, `dtype`).

use std::path::Path;

use puzzle_core::error::{Error, Result};
use puzzle_core::family::Family;
use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec, RopeScaling, RopeSpec};
use serde::Deserialize;

/// `config.json` as written by transformers for Llama-like models; fields the spec does not need
/// are ignored.
#[derive(Debug, Deserialize)]
pub struct HfLlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
}

impl HfLlamaConfig {
    /// Parses the mirror, naming the file and the field on failure.
    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        serde_json::from_value(v.clone()).map_err(|e| Error::config(path, format!("{e}")))
    }

    /// The model-wide part of a spec; `layers` is left empty for the caller to fill.
    pub fn base_spec(&self, family: &str, path: &Path) -> Result<ModelSpec> {
        if self.num_attention_heads == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return Err(Error::config(
                path,
                "hidden_size, num_attention_heads and vocab_size must be positive",
            ));
        }
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(Error::unsupported(
                path,
                format!("hidden_act `{act}` (only `silu`, i.e. SwiGLU, is implemented)"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None => {
                if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
                    return Err(Error::config(
                        path,
                        format!(
                            "hidden_size {} is not divisible by num_attention_heads {} and head_dim is absent",
                            self.hidden_size, self.num_attention_heads
                        ),
                    ));
                }
                self.hidden_size / self.num_attention_heads
            }
        };
        Ok(ModelSpec {
            family: family.to_string(),
            hidden_size: self.hidden_size,
            vocab_size: self.vocab_size,
            num_attention_heads: self.num_attention_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope: self.rope(path)?,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(self.bos_token_id.as_ref(), "bos_token_id", path)?
                .first()
                .copied(),
            eos_token_ids: token_ids(self.eos_token_id.as_ref(), "eos_token_id", path)?,
            storage_dtype: self.torch_dtype.clone().or_else(|| self.dtype.clone()),
            layers: vec![],
        })
    }

    /// RoPE from either dialect. Unknown scaling types are refused by name rather than silently
    /// run as plain RoPE (which would give wrong logits past the original context).
    pub fn rope(&self, path: &Path) -> Result<RopeSpec> {
        let (theta, scaling) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => {
                let theta = p
                    .get("rope_theta")
                    .and_then(|t| t.as_f64())
                    .or(self.rope_theta)
                    .ok_or_else(|| Error::config(path, "rope_parameters has no rope_theta"))?;
                (theta, Some(p))
            }
            (None, s) => (
                self.rope_theta.unwrap_or(10000.0),
                s.as_ref().filter(|v| !v.is_null()),
            ),
        };
        if theta.is_nan() || theta <= 0.0 {
            return Err(Error::config(
                path,
                format!("rope_theta {theta} must be positive"),
            ));
        }
        let scaling = match scaling {
            None => RopeScaling::Default,
            Some(s) => parse_scaling(s, path)?,
        };
        Ok(RopeSpec { theta, scaling })
    }
}

fn parse_scaling(s: &serde_json::Value, path: &Path) -> Result<RopeScaling> {
    let ty = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        s.get(k).and_then(|v| v.as_f64()).ok_or_else(|| {
            Error::config(path, format!("rope scaling `{ty}` needs a numeric `{k}`"))
        })
    };
    match ty {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = s
                && high_freq_factor <= low_freq_factor
            {
                return Err(Error::config(
                    path,
                    "llama3 rope scaling needs high_freq_factor > low_freq_factor",
                ));
            }
            Ok(s)
        }
        other => Err(Error::unsupported(
            path,
            format!("rope_type `{other}` (default, linear and llama3 are implemented)"),
        )),
    }
}

fn token_ids(v: Option<&serde_json::Value>, key: &str, path: &Path) -> Result<Vec<u32>> {
    let bad = || {
        Error::config(
            path,
            format!("`{key}` must be a token id or a list of them"),
        )
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(vec![]),
        Some(serde_json::Value::Number(n)) => Ok(vec![n.as_u64().ok_or_else(bad)? as u32]),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|x| x as u32).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Checks that `heads` query heads can be grouped over `kv` KV heads.
pub fn check_groups(heads: usize, kv: usize, what: &str, path: &Path) -> Result<()> {
    if kv == 0 || !heads.is_multiple_of(kv) {
        return Err(Error::config(
            path,
            format!("{what}: num_attention_heads {heads} is not a multiple of {kv} KV heads"),
        ));
    }
    Ok(())
}

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
