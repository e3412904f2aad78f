//! Variant catalogs: plugins that say which alternatives exist for a parent's subblocks and how
//! to build each one from the parent without training (Puzzle stage 2). The core never names a
//! concrete variant; the Llama family's catalog (in `puzzle-llama`) provides `gqa`, `width`,
//! `linear` and `noop`, and other plugins can add more.

use std::collections::BTreeMap;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::{AttentionBlock, FfnBlock, Loader};
use crate::spec::{AttentionSpec, FfnSpec, ModelSpec};
use crate::variant::{SubblockKind, VariantId};
use crate::weights::{HostTensor, MemoryWeights, WeightSource};
use puzzle_types::registry::Registry;

/// What a variant builds: an attention or an FFN subblock of a given spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "subblock", rename_all = "lowercase")]
pub enum SubblockSpec {
    #[serde(rename = "attn")]
    Attention(AttentionSpec),
    Ffn(FfnSpec),
}

impl SubblockSpec {
    /// Which branch it is.
    pub fn kind(&self) -> SubblockKind {
        match self {
            SubblockSpec::Attention(_) => SubblockKind::Attention,
            SubblockSpec::Ffn(_) => SubblockKind::Ffn,
        }
    }

    /// Its checkpoint tensors (names relative to the layer) and shapes.
    pub fn tensor_shapes(&self, spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
        match self {
            SubblockSpec::Attention(a) => spec.attention_tensors(a),
            SubblockSpec::Ffn(f) => spec.ffn_tensors(f),
        }
    }

    /// Parameter count.
    pub fn params(&self, spec: &ModelSpec) -> usize {
        match self {
            SubblockSpec::Attention(a) => spec.attention_params(a),
            SubblockSpec::Ffn(f) => spec.ffn_params(f),
        }
    }
}

/// The search space of a run: which variant families and sizes to offer (`[space]` in a run
/// config). Catalogs read the parts they understand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceOptions {
    /// Attention variant heads to offer (`gqa`, `linear`, `noop`, or a plugin's).
    #[serde(default = "d_attn")]
    pub attention: Vec<String>,
    /// FFN variant heads to offer (`width`, `linear`, `noop`, or a plugin's).
    #[serde(default = "d_ffn")]
    pub ffn: Vec<String>,
    /// FFN widths as fractions of the parent's (the paper's ~87, 75, 50, 25, 20, 10%).
    #[serde(default = "d_fractions")]
    pub ffn_fractions: Vec<f64>,
    /// FFN widths are rounded to a multiple of this (256 keeps DeciLM/vLLM exports exact).
    #[serde(default = "d_granularity")]
    pub granularity: usize,
    /// Extra explicit variant ids, e.g. `"ffn:width(384)"`.
    #[serde(default)]
    pub extra: Vec<VariantId>,
    /// Plugin-specific options, by key.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
}

fn d_attn() -> Vec<String> {
    vec!["gqa".into(), "linear".into(), "noop".into()]
}
fn d_ffn() -> Vec<String> {
    vec!["width".into(), "linear".into(), "noop".into()]
}
fn d_fractions() -> Vec<f64> {
    vec![0.875, 0.75, 0.5, 0.25, 0.2, 0.1]
}
fn d_granularity() -> usize {
    256
}

impl Default for SpaceOptions {
    fn default() -> Self {
        SpaceOptions {
            attention: d_attn(),
            ffn: d_ffn(),
            ffn_fractions: d_fractions(),
            granularity: d_granularity(),
            extra: vec![],
            options: BTreeMap::new(),
        }
    }
}

/// Statistics of the parent on calibration data that inits may use.
#[derive(Clone, Debug, Default)]
pub struct LayerCalibration {
    /// Mean over calibration tokens of `|X_i|`, X the FFN's intermediate activation
    /// (`silu(gate(h)) * up(h)` for SwiGLU), one value per intermediate channel.
    pub ffn_abs_mean: Option<Vec<f64>>,
    /// Tokens the statistics were taken over.
    pub tokens: usize,
}

/// A subblock's initial weights and how they were obtained.
#[derive(Clone, Debug)]
pub struct Initialised {
    pub spec: SubblockSpec,
    /// Checkpoint tensors, names relative to `model.layers.{i}.`.
    pub weights: MemoryWeights,
    /// E.g. `channel-contribution pruning 1024 -> 512`.
    pub method: String,
}

/// The contract of a variant catalog.
///
/// - `enumerate` lists the variants offered for one parent layer and kind (the parent's own
///   subblock included when `space` asks for it); ids must be stable across runs.
/// - `handles`/`spec` describe a variant id; `init` builds its weights from the parent layer's
///   tensors without training. An init of the parent's own variant must reproduce the parent
///   subblock exactly.
pub trait VariantCatalog: Send + Sync + 'static {
    /// Registry name.
    fn name(&self) -> &'static str;

    /// The variant heads this catalog understands (`gqa`, `width`...).
    fn heads(&self, kind: SubblockKind) -> Vec<&'static str>;

    /// Variants of `kind` for `layer` of `parent` in the search space.
    fn enumerate(
        &self,
        parent: &ModelSpec,
        layer: usize,
        kind: SubblockKind,
        space: &SpaceOptions,
    ) -> Vec<VariantId>;

    /// Whether this catalog builds `v`.
    fn handles(&self, v: &VariantId) -> bool {
        self.heads(v.kind()).contains(&v.head())
    }

    /// What `v` builds on this parent.
    fn spec(&self, v: &VariantId, parent: &ModelSpec) -> Result<SubblockSpec>;

    /// Initial weights of `v` for `layer`, from the parent layer's tensors (names relative to
    /// the layer) and calibration statistics.
    fn init(
        &self,
        v: &VariantId,
        parent: &ModelSpec,
        layer: usize,
        parent_layer: &MemoryWeights,
        calib: &LayerCalibration,
    ) -> Result<Initialised>;
}

/// A catalog registered by a static plugin.
pub struct CatalogRegistration {
    pub catalog: &'static dyn VariantCatalog,
    pub provider: &'static str,
}

inventory::collect!(CatalogRegistration);

impl puzzle_types::registry::Named for dyn VariantCatalog {
    fn name(&self) -> &str {
        VariantCatalog::name(self)
    }
}

/// The statically linked catalogs (their `inventory` submissions), as a registry.
pub fn static_catalogs() -> Registry<dyn VariantCatalog> {
    let mut r = Registry::new("variant catalog");
    for c in inventory::iter::<CatalogRegistration> {
        r.add(c.catalog, c.provider, "")
            .expect("two static catalogs share a name");
    }
    r
}

/// The heads every catalog offers for `kind`, as `kind:head`.
fn known_heads(catalogs: &Registry<dyn VariantCatalog>, kinds: &[SubblockKind]) -> String {
    catalogs
        .iter()
        .flat_map(|r| {
            kinds
                .iter()
                .flat_map(move |&k| r.item.heads(k).into_iter().map(move |h| format!("{k}:{h}")))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The catalog that builds `v`.
pub fn catalog_for(
    catalogs: &Registry<dyn VariantCatalog>,
    v: &VariantId,
) -> Result<&'static dyn VariantCatalog> {
    catalogs
        .find(|c| c.handles(v))
        .ok_or_else(|| Error::UnknownPlugin {
            kind: "variant",
            name: v.to_string(),
            known: known_heads(catalogs, &SubblockKind::ALL),
        })
}

/// Every variant of the search space for every layer and kind, in a stable order.
pub fn enumerate_space(
    catalogs: &Registry<dyn VariantCatalog>,
    parent: &ModelSpec,
    space: &SpaceOptions,
) -> Result<Vec<(usize, VariantId)>> {
    // Every requested head must be known to some catalog.
    for (kind, heads) in [
        (SubblockKind::Attention, &space.attention),
        (SubblockKind::Ffn, &space.ffn),
    ] {
        for h in heads {
            let known = catalogs
                .iter()
                .any(|r| r.item.heads(kind).contains(&h.as_str()));
            if !known {
                return Err(Error::UnknownPlugin {
                    kind: "variant head",
                    name: format!("{kind}:{h}"),
                    known: known_heads(catalogs, &[kind]),
                });
            }
        }
    }
    for v in &space.extra {
        catalog_for(catalogs, v)?.spec(v, parent)?;
    }
    let mut out = Vec::new();
    for layer in 0..parent.layers.len() {
        for kind in SubblockKind::ALL {
            let mut vs: Vec<VariantId> = catalogs
                .iter()
                .flat_map(|r| r.item.enumerate(parent, layer, kind, space))
                .collect();
            vs.extend(space.extra.iter().filter(|v| v.kind() == kind).cloned());
            let mut seen = std::collections::BTreeSet::new();
            vs.retain(|v| seen.insert(v.clone()));
            out.extend(vs.into_iter().map(|v| (layer, v)));
        }
    }
    Ok(out)
}

/// The parent layer's tensors (names relative to the layer) as host tensors.
pub fn layer_weights(src: &dyn WeightSource, layer: usize) -> Result<MemoryWeights> {
    let prefix = format!("model.layers.{layer}.");
    let mut m = MemoryWeights::new(format!("{} layer {layer}", src.location()));
    for name in src.names() {
        if let Some(rel) = name.strip_prefix(&prefix) {
            m.insert(rel, src.read(&name)?);
        }
    }
    Ok(m)
}

/// Builds the subblock module for `spec` from weights named relative to the layer.
pub fn build_subblock(
    parent: &ModelSpec,
    spec: &SubblockSpec,
    layer: usize,
    weights: &MemoryWeights,
    device: &Device,
) -> Result<Subblock> {
    // The loaders expect full names.
    let mut full = MemoryWeights::new(weights.label.clone());
    for (k, v) in &weights.tensors {
        full.insert(format!("model.layers.{layer}.{k}"), v.clone());
    }
    let loader = Loader::new(&full, device);
    let built = match spec {
        SubblockSpec::Attention(a) => {
            Subblock::Attention(AttentionBlock::load(parent, a, layer, &loader)?)
        }
        SubblockSpec::Ffn(f) => Subblock::Ffn(FfnBlock::load(parent, f, layer, &loader)?),
    };
    let unused = loader.unused();
    if !unused.is_empty() {
        return Err(Error::UnexpectedTensors {
            location: weights.label.clone(),
            keys: unused.join(", "),
        });
    }
    Ok(built)
}

/// A built subblock of either kind.
#[derive(burn::module::Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Subblock {
    Attention(AttentionBlock),
    Ffn(FfnBlock),
}

impl Subblock {
    /// Checkpoint tensors relative to the layer.
    pub fn tensors(&self) -> Vec<(String, HostTensor)> {
        use crate::nn::Subblock as _;
        match self {
            Subblock::Attention(a) => a.tensors(),
            Subblock::Ffn(f) => f.tensors(),
        }
    }

    /// The module's spec.
    pub fn spec(&self) -> SubblockSpec {
        match self {
            Subblock::Attention(a) => SubblockSpec::Attention(a.spec()),
            Subblock::Ffn(f) => SubblockSpec::Ffn(f.spec()),
        }
    }
}
