//! A pretraining recipe (TOML): the architecture (a Hugging Face config section, resolved by
//! whichever family claims it), the tokenizer, the corpus, the hyper-parameters and the export.
//! `puzzle train RECIPE --out DIR` runs it; the tiny parent's recipe is
//! `model-zoo/tiny-parent/recipe.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pretrain::TrainConfig;
use crate::data::DataConfig;
use crate::error::{Error, Result};
use crate::family::{family_for, static_families};
use crate::spec::ModelSpec;
use crate::weights::StoreDtype;

/// Where the tokenizer comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerRecipe {
    /// Train a byte-level BPE with this many tokens on the training split...
    pub vocab_size: Option<usize>,
    /// ...or use this `tokenizer.json` (relative to the recipe).
    pub path: Option<PathBuf>,
}

/// How the trained model is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecipe {
    #[serde(default = "d_dtype")]
    pub dtype: StoreDtype,
}

fn d_dtype() -> StoreDtype {
    StoreDtype::Bf16
}

/// A whole recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// A `config.json` in TOML: `hidden_size`, `num_hidden_layers`, ... (`architectures`
    /// defaults to `["LlamaForCausalLM"]`; `vocab_size`, `bos_token_id` and `eos_token_id` are
    /// filled from the tokenizer).
    pub model: toml::Table,
    pub tokenizer: TokenizerRecipe,
    pub data: DataConfig,
    pub train: TrainConfig,
    #[serde(default = "d_export")]
    pub export: ExportRecipe,
}

fn d_export() -> ExportRecipe {
    ExportRecipe { dtype: d_dtype() }
}

impl Recipe {
    /// Reads a recipe, resolving relative paths against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path)?;
        let mut r: Recipe = toml::from_str(&text)
            .map_err(|e| Error::config(path, format!("invalid recipe: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        r.data.resolve(base);
        if let Some(p) = &mut r.tokenizer.path
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        r.data.validate()?;
        if r.tokenizer.vocab_size.is_none() == r.tokenizer.path.is_none() {
            return Err(Error::config(
                path,
                "[tokenizer] needs exactly one of `vocab_size` (train one) or `path` (use one)",
            ));
        }
        Ok(r)
    }

    /// The `config.json` of the model, completed with the tokenizer's vocabulary and special ids.
    pub fn config_json(&self, vocab_size: usize, bos: u32, eos: u32) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.model).unwrap_or_default();
        let o = v.as_object_mut().expect("a TOML table is an object");
        o.entry("architectures")
            .or_insert_with(|| serde_json::json!(["LlamaForCausalLM"]));
        o.entry("model_type")
            .or_insert_with(|| serde_json::json!("llama"));
        o.entry("hidden_act")
            .or_insert_with(|| serde_json::json!("silu"));
        o.insert("vocab_size".into(), serde_json::json!(vocab_size));
        o.insert("bos_token_id".into(), serde_json::json!(bos));
        o.insert("eos_token_id".into(), serde_json::json!(eos));
        o.insert(
            "torch_dtype".into(),
            serde_json::json!(self.export.dtype.torch_name()),
        );
        v
    }

    /// The spec of the model, through the family that claims its config.
    pub fn spec(&self, config: &serde_json::Value, recipe_path: &Path) -> Result<ModelSpec> {
        family_for(&static_families(), config, recipe_path)?.parse_config(config, recipe_path)
    }
}
