//! The Llama family's variant catalog (Puzzle stages 1-2): attention `gqa(kv=k)` for every KV
//! head count that evenly pools the parent's, `linear` and `noop`; FFN `width(n)` for the search
//! space's fractions of the parent width (rounded to the granularity), `linear` and `noop`; the
//! parent's own subblocks are `gqa(kv=<parent>)` and `width(<parent>)`.
//!
//! Inits, each training-free and tested on its own:
//! - KV heads: mean-pool the K and V projections of the heads in each merged group.
//! - FFN width: keep the channels with the largest contribution
//!   `C_i = mean_tokens |X_i| * ||W_down[:, i]||` (X the intermediate activation).
//! - Linear FFN: `W = W_down W_up` (gate ignored); linear attention: `W = W_o W_v` with V repeated
//!   over each KV head's query group ("each token attends only to itself").
//! - No-op: nothing.

use burn_tensor_helpers::matmul;
use puzzle_core::error::{Error, Result};
use puzzle_core::spec::{AttentionSpec, FfnSpec, ModelSpec};
use puzzle_core::variant::{SubblockKind, VariantId};
use puzzle_core::variants::{
    Initialised, LayerCalibration, SpaceOptions, SubblockSpec, VariantCatalog,
};
use puzzle_core::weights::{HostTensor, MemoryWeights, WeightSource};

/// Host matrix products through the tensor backend (GEMM), so inits stay fast at 70B sizes.
mod burn_tensor_helpers {
    use puzzle_core::burn::tensor::Device;
    use puzzle_core::weights::HostTensor;

    /// `a [m, k] @ b [k, n]`.
    pub fn matmul(a: &HostTensor, b: &HostTensor) -> HostTensor {
        let d = Device::flex();
        HostTensor::from_tensor(&a.to_tensor::<2>(&d).matmul(b.to_tensor::<2>(&d)))
    }
}

/// The catalog.
pub struct LlamaVariants;

fn vid(kind: SubblockKind, name: String) -> VariantId {
    VariantId::new(kind, name).expect("catalog names are valid")
}

/// Rows `[start, start + n)` of a matrix (or elements of a vector).
fn rows(t: &HostTensor, start: usize, n: usize) -> Vec<f32> {
    let cols: usize = t.shape[1..].iter().product();
    t.data[start * cols..(start + n) * cols].to_vec()
}

/// Mean-pools groups of `group` consecutive heads of `head_dim` rows each.
pub fn pool_heads(t: &HostTensor, head_dim: usize, group: usize) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let heads = t.shape[0] / head_dim;
    let new_heads = heads / group;
    let mut out = vec![0f32; new_heads * head_dim * cols];
    for j in 0..new_heads {
        for g in 0..group {
            let src = rows(t, (j * group + g) * head_dim, head_dim);
            for (o, s) in out[j * head_dim * cols..(j + 1) * head_dim * cols]
                .iter_mut()
                .zip(&src)
            {
                *o += s / group as f32;
            }
        }
    }
    let mut shape = t.shape.clone();
    shape[0] = new_heads * head_dim;
    HostTensor::new(shape, out)
}

/// Repeats each KV head's `head_dim` rows `group` times (transformers' `repeat_kv` on weights).
pub fn repeat_heads(t: &HostTensor, head_dim: usize, group: usize) -> HostTensor {
    let heads = t.shape[0] / head_dim;
    let mut out = Vec::with_capacity(t.data.len() * group);
    for h in 0..heads {
        let r = rows(t, h * head_dim, head_dim);
        for _ in 0..group {
            out.extend_from_slice(&r);
        }
    }
    let mut shape = t.shape.clone();
    shape[0] = heads * head_dim * group;
    HostTensor::new(shape, out)
}

/// Channel contributions `|X_i| * ||W_down[:, i]||` of an FFN with `down_proj.weight` `[h, I]`.
pub fn channel_contributions(abs_mean: &[f64], down: &HostTensor) -> Vec<f64> {
    let (h, inter) = (down.shape[0], down.shape[1]);
    (0..inter)
        .map(|i| {
            let norm: f64 = (0..h)
                .map(|r| (down.data[r * inter + i] as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            abs_mean[i] * norm
        })
        .collect()
}

/// The `n` channels of highest contribution, in their original order (ties: lower index).
pub fn top_channels(contrib: &[f64], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..contrib.len()).collect();
    idx.sort_by(|&a, &b| contrib[b].total_cmp(&contrib[a]).then(a.cmp(&b)));
    let mut keep = idx[..n.min(idx.len())].to_vec();
    keep.sort_unstable();
    keep
}

/// Keeps rows `keep` of `t`.
pub fn select_rows(t: &HostTensor, keep: &[usize]) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let mut out = Vec::with_capacity(keep.len() * cols);
    for &r in keep {
        out.extend_from_slice(&t.data[r * cols..(r + 1) * cols]);
    }
    let mut shape = t.shape.clone();
    shape[0] = keep.len();
    HostTensor::new(shape, out)
}

/// Keeps columns `keep` of a matrix.
pub fn select_cols(t: &HostTensor, keep: &[usize]) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = Vec::with_capacity(r * keep.len());
    for i in 0..r {
        out.extend(keep.iter().map(|&j| t.data[i * c + j]));
    }
    HostTensor::new(vec![r, keep.len()], out)
}

fn parent_kv(parent: &ModelSpec, layer: usize) -> Option<(usize, bool, bool)> {
    match parent.layers[layer].attention {
        AttentionSpec::Gqa {
            num_kv_heads,
            qkv_bias,
            o_bias,
            ..
        } => Some((num_kv_heads, qkv_bias, o_bias)),
        _ => None,
    }
}

fn parent_width(parent: &ModelSpec, layer: usize) -> Option<(usize, bool)> {
    match parent.layers[layer].ffn {
        FfnSpec::SwiGlu {
            intermediate_size,
            bias,
        } => Some((intermediate_size, bias)),
        _ => None,
    }
}

/// FFN widths for the space's fractions of `parent_width`, rounded to the granularity.
pub fn widths(parent_width: usize, space: &SpaceOptions) -> Vec<usize> {
    let g = space.granularity.max(1);
    let mut w: Vec<usize> = space
        .ffn_fractions
        .iter()
        .filter(|f| **f > 0.0 && **f < 1.0)
        .map(|f| (((parent_width as f64 * f) / g as f64).round() as usize).max(1) * g)
        .filter(|&n| n < parent_width)
        .collect();
    w.push(parent_width);
    w.sort_unstable_by(|a, b| b.cmp(a));
    w.dedup();
    w
}

impl VariantCatalog for LlamaVariants {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn heads(&self, kind: SubblockKind) -> Vec<&'static str> {
        match kind {
            SubblockKind::Attention => vec!["gqa", "linear", "noop"],
            SubblockKind::Ffn => vec!["width", "linear", "noop"],
        }
    }

    fn enumerate(
        &self,
        parent: &ModelSpec,
        layer: usize,
        kind: SubblockKind,
        space: &SpaceOptions,
    ) -> Vec<VariantId> {
        let mut out = Vec::new();
        match kind {
            SubblockKind::Attention => {
                for head in &space.attention {
                    match head.as_str() {
                        "gqa" => {
                            if let Some((kv, _, _)) = parent_kv(parent, layer) {
                                // A sliding-window parent layer keeps its window: its own
                                // attention is then `gqa(kv=<parent>,w=<window>)`, the parent
                                // variant, and fewer KV heads keep the same window.
                                let window = match parent.layers[layer].attention {
                                    AttentionSpec::Gqa {
                                        window: Some(w), ..
                                    } => {
                                        format!(",w={w}")
                                    }
                                    _ => String::new(),
                                };
                                for k in (1..=kv).rev() {
                                    if kv % k == 0 && parent.num_attention_heads.is_multiple_of(k) {
                                        out.push(vid(kind, format!("gqa(kv={k}{window})")));
                                    }
                                }
                            }
                        }
                        "linear"
                            if parent_kv(parent, layer).is_some()
                                || parent.layers[layer].attention == AttentionSpec::Linear =>
                        {
                            out.push(vid(kind, "linear".into()))
                        }
                        "noop" => out.push(vid(kind, "noop".into())),
                        _ => {}
                    }
                }
            }
            SubblockKind::Ffn => {
                for head in &space.ffn {
                    match head.as_str() {
                        "width" => {
                            if let Some((w, _)) = parent_width(parent, layer) {
                                out.extend(
                                    widths(w, space)
                                        .into_iter()
                                        .map(|n| vid(kind, format!("width({n})"))),
                                );
                            }
                        }
                        "linear"
                            if parent_width(parent, layer).is_some()
                                || parent.layers[layer].ffn == FfnSpec::Linear =>
                        {
                            out.push(vid(kind, "linear".into()))
                        }
                        "noop" => out.push(vid(kind, "noop".into())),
                        _ => {}
                    }
                }
            }
        }
        out
    }

    fn spec(&self, v: &VariantId, parent: &ModelSpec) -> Result<SubblockSpec> {
        // Biases follow the parent's first layer of that kind (families are uniform here).
        let (qkv_bias, o_bias) = parent
            .layers
            .iter()
            .find_map(|l| match l.attention {
                AttentionSpec::Gqa {
                    qkv_bias, o_bias, ..
                } => Some((qkv_bias, o_bias)),
                _ => None,
            })
            .unwrap_or((false, false));
        let mlp_bias = parent
            .layers
            .iter()
            .find_map(|l| match l.ffn {
                FfnSpec::SwiGlu { bias, .. } => Some(bias),
                _ => None,
            })
            .unwrap_or(false);
        match (v.kind(), v.head()) {
            (SubblockKind::Attention, "gqa") => {
                let k = v.usize_arg(Some("kv"))?;
                if k == 0 || !parent.num_attention_heads.is_multiple_of(k) {
                    return Err(Error::invalid(format!(
                        "variant `{v}`: {} query heads cannot be grouped over {k} KV heads",
                        parent.num_attention_heads
                    )));
                }
                let window = match v.arg("w") {
                    None => None,
                    Some(_) => match v.usize_arg(Some("w"))? {
                        w if w >= 2 => Some(w),
                        w => {
                            return Err(Error::invalid(format!(
                                "variant `{v}`: a window of {w} positions cannot attend to the past"
                            )));
                        }
                    },
                };
                Ok(SubblockSpec::Attention(AttentionSpec::Gqa {
                    num_kv_heads: k,
                    qkv_bias,
                    o_bias,
                    window,
                }))
            }
            (SubblockKind::Attention, "linear") => {
                Ok(SubblockSpec::Attention(AttentionSpec::Linear))
            }
            (SubblockKind::Attention, "noop") => Ok(SubblockSpec::Attention(AttentionSpec::NoOp)),
            (SubblockKind::Ffn, "width") => {
                let n = v.usize_arg(None)?;
                if n == 0 {
                    return Err(Error::invalid(format!(
                        "variant `{v}`: width must be positive"
                    )));
                }
                Ok(SubblockSpec::Ffn(FfnSpec::SwiGlu {
                    intermediate_size: n,
                    bias: mlp_bias,
                }))
            }
            (SubblockKind::Ffn, "linear") => Ok(SubblockSpec::Ffn(FfnSpec::Linear)),
            (SubblockKind::Ffn, "noop") => Ok(SubblockSpec::Ffn(FfnSpec::NoOp)),
            _ => Err(Error::invalid(format!(
                "the llama catalog does not build `{v}`"
            ))),
        }
    }

    fn init(
        &self,
        v: &VariantId,
        parent: &ModelSpec,
        layer: usize,
        w: &MemoryWeights,
        calib: &LayerCalibration,
    ) -> Result<Initialised> {
        let spec = self.spec(v, parent)?;
        let mut out = MemoryWeights::new(format!("init of {v} for layer {layer}"));
        let copy = |out: &mut MemoryWeights, name: &str| -> Result<()> {
            out.insert(name, w.read(name)?);
            Ok(())
        };
        let hd = parent.head_dim;
        let method = match &spec {
            SubblockSpec::Attention(AttentionSpec::Gqa {
                num_kv_heads: k, ..
            }) => {
                let (kv, qkv_bias, o_bias) = parent_kv(parent, layer).ok_or_else(|| {
                    Error::invalid(format!("{v} needs a GQA parent attention in layer {layer}"))
                })?;
                if kv % k != 0 {
                    return Err(Error::invalid(format!(
                        "{v}: the parent's {kv} KV heads cannot be mean-pooled into {k}"
                    )));
                }
                copy(&mut out, "input_layernorm.weight")?;
                copy(&mut out, "self_attn.q_proj.weight")?;
                copy(&mut out, "self_attn.o_proj.weight")?;
                if qkv_bias {
                    copy(&mut out, "self_attn.q_proj.bias")?;
                }
                if o_bias {
                    copy(&mut out, "self_attn.o_proj.bias")?;
                }
                let mut names = vec!["self_attn.k_proj.weight", "self_attn.v_proj.weight"];
                if qkv_bias {
                    names.extend(["self_attn.k_proj.bias", "self_attn.v_proj.bias"]);
                }
                for n in names {
                    out.insert(n, pool_heads(&w.read(n)?, hd, kv / k));
                }
                if *k == kv {
                    "copy of the parent".to_string()
                } else {
                    format!("KV-head mean pooling {kv} -> {k}")
                }
            }
            SubblockSpec::Attention(AttentionSpec::Linear) => {
                let (kv, _, _) = parent_kv(parent, layer).ok_or_else(|| {
                    Error::invalid(format!("{v} needs a GQA parent attention in layer {layer}"))
                })?;
                copy(&mut out, "input_layernorm.weight")?;
                let v_exp = repeat_heads(
                    &w.read("self_attn.v_proj.weight")?,
                    hd,
                    parent.num_attention_heads / kv,
                );
                let wo = w.read("self_attn.o_proj.weight")?;
                out.insert("self_attn.linear_attn.weight", matmul(&wo, &v_exp));
                "W_o W_v (V repeated over query groups)".to_string()
            }
            SubblockSpec::Ffn(FfnSpec::SwiGlu {
                intermediate_size: n,
                bias,
            }) => {
                let (full, _) = parent_width(parent, layer).ok_or_else(|| {
                    Error::invalid(format!("{v} needs a SwiGLU parent FFN in layer {layer}"))
                })?;
                if *n > full {
                    return Err(Error::invalid(format!(
                        "{v} is wider than the parent's {full} channels"
                    )));
                }
                copy(&mut out, "post_attention_layernorm.weight")?;
                if *n == full {
                    for name in [
                        "mlp.gate_proj.weight",
                        "mlp.up_proj.weight",
                        "mlp.down_proj.weight",
                    ] {
                        copy(&mut out, name)?;
                    }
                    if *bias {
                        for name in [
                            "mlp.gate_proj.bias",
                            "mlp.up_proj.bias",
                            "mlp.down_proj.bias",
                        ] {
                            copy(&mut out, name)?;
                        }
                    }
                    "copy of the parent".to_string()
                } else {
                    let abs = calib.ffn_abs_mean.as_ref().ok_or_else(|| {
                        Error::invalid(format!(
                            "{v}: channel pruning needs calibration statistics for layer {layer}"
                        ))
                    })?;
                    let down = w.read("mlp.down_proj.weight")?;
                    let keep = top_channels(&channel_contributions(abs, &down), *n);
                    out.insert(
                        "mlp.gate_proj.weight",
                        select_rows(&w.read("mlp.gate_proj.weight")?, &keep),
                    );
                    out.insert(
                        "mlp.up_proj.weight",
                        select_rows(&w.read("mlp.up_proj.weight")?, &keep),
                    );
                    out.insert("mlp.down_proj.weight", select_cols(&down, &keep));
                    if *bias {
                        out.insert(
                            "mlp.gate_proj.bias",
                            select_rows(&w.read("mlp.gate_proj.bias")?, &keep),
                        );
                        out.insert(
                            "mlp.up_proj.bias",
                            select_rows(&w.read("mlp.up_proj.bias")?, &keep),
                        );
                        copy(&mut out, "mlp.down_proj.bias")?;
                    }
                    format!(
                        "channel-contribution pruning {full} -> {n} ({} calibration tokens)",
                        calib.tokens
                    )
                }
            }
            SubblockSpec::Ffn(FfnSpec::Linear) => {
                copy(&mut out, "post_attention_layernorm.weight")?;
                let down = w.read("mlp.down_proj.weight")?;
                let up = w.read("mlp.up_proj.weight")?;
                out.insert("mlp.linear_mlp.weight", matmul(&down, &up));
                "W_down W_up (gate ignored)".to_string()
            }
            SubblockSpec::Attention(AttentionSpec::NoOp) | SubblockSpec::Ffn(FfnSpec::NoOp) => {
                "identity".to_string()
            }
        };
        Ok(Initialised {
            spec,
            weights: out,
            method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_the_fractions_and_granularity() {
        let s = SpaceOptions::default();
        assert_eq!(widths(1024, &s), vec![1024, 768, 512, 256]);
        assert_eq!(widths(1536, &s), vec![1536, 1280, 768, 512, 256]);
        let fine = SpaceOptions {
            granularity: 64,
            ..SpaceOptions::default()
        };
        assert_eq!(
            widths(1024, &fine),
            vec![1024, 896, 768, 512, 256, 192, 128]
        );
    }

    #[test]
    fn pruning_keeps_exactly_the_highest_contribution_channels() {
        // 4 channels; |X| = [1, 10, 1, 1]; down columns with norms [3, 0.25, 2, 5]: the channel
        // with the largest activation is not kept, its weights are too small.
        let down = HostTensor::new(vec![1, 4], vec![3.0, 0.25, 2.0, 5.0]);
        let c = channel_contributions(&[1.0, 10.0, 1.0, 1.0], &down);
        assert_eq!(c, vec![3.0, 2.5, 2.0, 5.0]);
        assert_eq!(top_channels(&c, 2), vec![0, 3]);
        assert_eq!(top_channels(&c, 3), vec![0, 1, 3]);
        let g = HostTensor::new(vec![4, 1], vec![10.0, 11.0, 12.0, 13.0]);
        assert_eq!(select_rows(&g, &[0, 3]).data, vec![10.0, 13.0]);
        assert_eq!(select_cols(&down, &[0, 3]).data, vec![3.0, 5.0]);
    }

    #[test]
    fn head_pooling_and_repetition() {
        // 4 heads of 1 row x 2 columns: pooling pairs averages them.
        let t = HostTensor::new(vec![4, 2], vec![1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(pool_heads(&t, 1, 2).data, vec![2., 3., 6., 7.]);
        assert_eq!(pool_heads(&t, 1, 1), t);
        let r = repeat_heads(&HostTensor::new(vec![2, 1], vec![1., 2.]), 1, 3);
        assert_eq!(r.data, vec![1., 1., 1., 2., 2., 2.]);
    }
}
