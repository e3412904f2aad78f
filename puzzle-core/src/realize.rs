//! Realize and export (Puzzle stage 7, first half): assemble the child from the library and a
//! search solution, and write it in the format serving stacks load (the parent family decides:
//! DeciLM / nemotron-nas for Llama parents), with the parent's tokenizer files.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::Device;

use crate::bld::{EntryKey, load_entry, read_done};
use crate::error::{Error, Result};
use crate::family::static_families;
use crate::fsutil;
use crate::hf_folder::SpecialTokens;
use crate::nn::Decoder;
use crate::score::swapped;
use crate::variant::{SubblockKind, VariantId};
use crate::weights::{
    HostTensor, MAX_SHARD_BYTES, StoreDtype, WeightSource, write_weights_folder_with,
};

/// One layer of a child: an attention and an FFN library entry, or a coupled block.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChoice {
    pub attn: VariantId,
    pub ffn: VariantId,
    pub coupled: bool,
}

impl FromStr for LayerChoice {
    type Err = Error;
    /// `attn:gqa(kv=2) + ffn:width(512)` or `coupled attn:... + ffn:...` (search choice ids).
    fn from_str(s: &str) -> Result<Self> {
        let (coupled, rest) = match s.trim().strip_prefix("coupled ") {
            Some(r) => (true, r),
            None => (false, s.trim()),
        };
        let (a, f) = rest.split_once('+').ok_or_else(|| {
            Error::invalid(format!(
                "choice `{s}` is not `attn:<variant> + ffn:<variant>`"
            ))
        })?;
        let (attn, ffn): (VariantId, VariantId) = (a.trim().parse()?, f.trim().parse()?);
        if attn.kind() != SubblockKind::Attention || ffn.kind() != SubblockKind::Ffn {
            return Err(Error::invalid(format!(
                "choice `{s}`: expected an attention then an FFN variant"
            )));
        }
        Ok(LayerChoice { attn, ffn, coupled })
    }
}

impl LayerChoice {
    /// The library entries it is made of.
    pub fn entries(&self, layer: usize) -> Vec<EntryKey> {
        if self.coupled {
            vec![EntryKey {
                layer,
                variants: vec![self.attn.clone(), self.ffn.clone()],
            }]
        } else {
            vec![
                EntryKey {
                    layer,
                    variants: vec![self.attn.clone()],
                },
                EntryKey {
                    layer,
                    variants: vec![self.ffn.clone()],
                },
            ]
        }
    }
}

/// The parent with every layer replaced by its chosen library entries.
pub fn realize(
    parent: &Decoder,
    parent_weights: &dyn WeightSource,
    library: &Path,
    choices: &[LayerChoice],
    device: &Device,
) -> Result<Decoder> {
    if choices.len() != parent.layers.len() {
        return Err(Error::invalid(format!(
            "the solution has {} layers but the parent has {}",
            choices.len(),
            parent.layers.len()
        )));
    }
    let mut child = parent.clone();
    for (layer, c) in choices.iter().enumerate() {
        for key in c.entries(layer) {
            let meta = read_done(library, &key, None).ok_or_else(|| {
                Error::invalid(format!(
                    "layer {layer}: `{}` is not in the library {} (run `puzzle bld`)",
                    key.id(),
                    library.display()
                ))
            })?;
            let subs = load_entry(library, &meta, &parent.spec, parent_weights, device)?;
            child = swapped(&child, layer, subs);
        }
    }
    child.spec = child.current_spec();
    Ok(child)
}

/// Writes a model as a checkpoint folder its family's serving stacks load: `config.json` (from
/// the parent's, per-layer fields from the child), `model.safetensors` (sharded with an index
/// beyond [`MAX_SHARD_BYTES`]), the parent's
/// tokenizer files, and the tokenizer and generation side files the parent lacks
/// ([`crate::hf_folder`]). Returns the caveats of the format. `config.json` is written last.
pub fn export(
    model: &Decoder,
    parent_dir: &Path,
    out: &Path,
    dtype: StoreDtype,
) -> Result<Vec<String>> {
    let parent_config: serde_json::Value = fsutil::read_json(&parent_dir.join("config.json"))?;
    let spec = model.current_spec();
    // Families are static plugins only.
    let family = static_families().get(&spec.family)?;
    let (config, warnings) = family.child_config(&parent_config, &spec, dtype.torch_name())?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Names and shapes from the spec (what a load of this checkpoint checks against), then each
    // layer's tensors copied to the host as the files take them: the host copy is never whole,
    // and the writer refuses a tensor whose shape differs from the one announced.
    let extra = family.export_extra(&spec);
    let mut infos = spec.tensor_shapes();
    let layers = model.tensor_groups() - 2;
    let group_of: BTreeMap<String, usize> = infos
        .iter()
        .map(|(n, _)| {
            let layer = n
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            let g = match (n.as_str(), layer) {
                ("model.embed_tokens.weight", _) => 0,
                (_, Some(l)) => l + 1,
                _ => layers + 1,
            };
            (n.clone(), g)
        })
        .collect();
    infos.extend(extra.iter().cloned());
    let mut cached: (Option<usize>, BTreeMap<String, HostTensor>) = (None, BTreeMap::new());
    write_weights_folder_with(
        out,
        &infos,
        dtype,
        Some([("format".to_string(), "pt".to_string())].into()),
        MAX_SHARD_BYTES,
        &mut |name| {
            let Some(&g) = group_of.get(name) else {
                // A tensor the family's loaders expect that the model does not hold: zeros.
                let (_, shape) = extra.iter().find(|(n, _)| n == name).ok_or_else(|| {
                    Error::invalid(format!("the export asked for an unknown tensor `{name}`"))
                })?;
                return Ok(HostTensor::new(
                    shape.clone(),
                    vec![0.0; shape.iter().product()],
                ));
            };
            if cached.0 != Some(g) {
                cached = (Some(g), model.tensor_group(g).into_iter().collect());
            }
            cached.1.remove(name).ok_or_else(|| {
                Error::invalid(format!("tensor `{name}` was asked for twice by the export"))
            })
        },
    )?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ] {
        let src = parent_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            fsutil::write_atomic(&out.join(f), &bytes)?;
        }
    }
    // What transformers and llama.cpp's converter need beside the tokenizer, when the parent
    // did not ship it.
    crate::hf_folder::complete(out, &SpecialTokens::from_config(&config), None)?;
    fsutil::write_json(&out.join("config.json"), &config)?;
    Ok(warnings)
}
