//! A new block variant as a static plugin: sliding-window attention, `attn:window(w=N)`.
//!
//! Each token attends to itself and the `N - 1` tokens before it, so the KV cache of that layer
//! never holds more than `N` positions: memory stops growing with the sequence, and decode
//! reads less. The weights are the parent's attention weights (the init is a copy); BLD then
//! teaches the layer to do without the far context.
//!
//! It takes part in every stage without touching the core: the catalog below enumerates the
//! variant (window sizes from `[space] options."window.sizes"`, default 64), the spec is the
//! core's grouped-query attention with its `window` switch, costs follow (the KV cache per
//! sequence is capped at the window; roofline and measured timings see the shorter attention),
//! scores and the search treat it like any variant, and the export writes DeciLM's
//! `window_length` for that layer (TensorRT-LLM reads per-layer windows; check your server).
//!
//! Linked into a binary with `use puzzle_window as _;`.

use puzzle_core::error::{Error, Result};
use puzzle_core::spec::{AttentionSpec, ModelSpec};
use puzzle_core::variant::{SubblockKind, VariantId};
use puzzle_core::variants::{
    Initialised, LayerCalibration, SpaceOptions, SubblockSpec, VariantCatalog,
};
use puzzle_core::weights::{MemoryWeights, WeightSource};

/// The catalog.
pub struct WindowVariants;

fn sizes(space: &SpaceOptions) -> Vec<usize> {
    space
        .options
        .get("window.sizes")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_integer())
                .map(|x| x as usize)
                .collect()
        })
        .unwrap_or_else(|| vec![64])
}

impl VariantCatalog for WindowVariants {
    fn name(&self) -> &'static str {
        "window"
    }

    fn heads(&self, kind: SubblockKind) -> Vec<&'static str> {
        match kind {
            SubblockKind::Attention => vec!["window"],
            SubblockKind::Ffn => vec![],
        }
    }

    fn enumerate(
        &self,
        parent: &ModelSpec,
        layer: usize,
        kind: SubblockKind,
        space: &SpaceOptions,
    ) -> Vec<VariantId> {
        let wanted =
            kind == SubblockKind::Attention && space.attention.iter().any(|h| h == "window");
        let gqa = matches!(
            parent.layers[layer].attention,
            AttentionSpec::Gqa { window: None, .. }
        );
        if !wanted || !gqa {
            return vec![];
        }
        sizes(space)
            .into_iter()
            .filter(|&w| w >= 2 && w < parent.max_position_embeddings)
            .filter_map(|w| VariantId::new(kind, format!("window(w={w})")).ok())
            .collect()
    }

    fn spec(&self, v: &VariantId, parent: &ModelSpec) -> Result<SubblockSpec> {
        let w = v.usize_arg(Some("w"))?;
        if w < 2 {
            return Err(Error::invalid(format!(
                "variant `{v}`: a window must hold at least 2 positions"
            )));
        }
        // The parent's grouped-query attention (first GQA layer), windowed.
        let base = parent
            .layers
            .iter()
            .find_map(|l| match &l.attention {
                AttentionSpec::Gqa {
                    num_kv_heads,
                    qkv_bias,
                    o_bias,
                    ..
                } => Some((*num_kv_heads, *qkv_bias, *o_bias)),
                _ => None,
            })
            .ok_or_else(|| {
                Error::invalid(format!("`{v}` needs a parent with grouped-query attention"))
            })?;
        Ok(SubblockSpec::Attention(AttentionSpec::Gqa {
            num_kv_heads: base.0,
            qkv_bias: base.1,
            o_bias: base.2,
            window: Some(w),
        }))
    }

    fn init(
        &self,
        v: &VariantId,
        parent: &ModelSpec,
        layer: usize,
        w: &MemoryWeights,
        _c: &LayerCalibration,
    ) -> Result<Initialised> {
        let spec = self.spec(v, parent)?;
        let mut out = MemoryWeights::new(format!("init of {v} for layer {layer}"));
        for (name, _) in spec.tensor_shapes(parent) {
            out.insert(name.clone(), w.read(&name)?);
        }
        Ok(Initialised {
            spec,
            weights: out,
            method: "copy of the parent attention".into(),
        })
    }
}

inventory::submit! {
    puzzle_core::variants::CatalogRegistration { catalog: &WindowVariants, provider: "puzzle-window" }
}

/// Forces the linker to keep this crate's registration.
pub fn link() {}
