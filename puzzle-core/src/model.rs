//! A checkpoint folder, loaded: spec (from the family that claims its config), weights, and
//! tokenizer.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::Result;
use crate::family::{Family, read_spec, static_families};
use crate::nn::Decoder;
use crate::registry::Registry;
use crate::spec::ModelSpec;
use crate::tokenizer::Tokenizer;
use crate::weights::SafetensorsWeights;

/// A model ready to run.
#[derive(Debug)]
pub struct LoadedModel {
    pub dir: PathBuf,
    pub spec: ModelSpec,
    pub decoder: Decoder,
    /// `None` when the folder has no `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
}

/// Loads a Hugging Face style folder: `config.json`, safetensors (single or sharded) and
/// `tokenizer.json` when present.
pub fn load_model(dir: &Path, device: &Device) -> Result<LoadedModel> {
    load_model_with(&static_families(), dir, device)
}

/// [`load_model`] with the families of `families` (families are static plugins only, so the
/// statically linked ones are what `load_model` uses).
pub fn load_model_with(
    families: &Registry<dyn Family>,
    dir: &Path,
    device: &Device,
) -> Result<LoadedModel> {
    let spec = read_spec(families, dir)?;
    let weights = SafetensorsWeights::open(dir)?;
    let decoder = Decoder::load(&spec, &weights, device)?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        spec,
        decoder,
        tokenizer,
    })
}
