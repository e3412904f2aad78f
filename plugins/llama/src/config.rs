//! Hugging Face `LlamaForCausalLM` configs: a serde mirror of `config.json` and its resolution
//! into a [`ModelSpec`]. Both dialects are read: the hub one (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and transformers-5 (`rope_parameters`, `dtype`).

use std::path::Path;

use puzzle_types::error::{Error, Result};
use puzzle_types::spec::{ModelSpec, RopeScaling, RopeSpec};
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

/// Layers, widths, heads, vocabulary and context beyond these are refused: the largest
/// published LLMs have about 130 layers, widths of 53,248, 128 heads, vocabularies of 262,144
/// and contexts of 10M tokens, so each limit leaves room of 8x or more.
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_POSITIONS: usize = 1 << 27;

/// `key`'s `value` is at most `max`, else an error naming both.
pub fn check_size(key: &str, value: Option<usize>, max: usize, path: &Path) -> Result<()> {
    match value {
        Some(v) if v > max => Err(Error::config(
            path,
            format!(
                "`{key}` = {v} is larger than any model (at most {max} is read); is the file corrupt?"
            ),
        )),
        _ => Ok(()),
    }
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
        // Sizes beyond any model there is are a corrupt or hostile file: checked before
        // anything is allocated per layer, and so that parameter and FLOP counts cannot
        // overflow (a 328-byte config claiming 64096 layers made us hold 106 MB; found by
        // `cargo xtask fuzz`).
        let sizes = [
            (
                "num_hidden_layers",
                Some(self.num_hidden_layers),
                MAX_LAYERS,
            ),
            ("hidden_size", Some(self.hidden_size), MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            (
                "num_attention_heads",
                Some(self.num_attention_heads),
                MAX_HEADS,
            ),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_WIDTH),
            ("vocab_size", Some(self.vocab_size), MAX_VOCAB),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ];
        for (key, value, max) in sizes {
            check_size(key, value, max, path)?;
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
