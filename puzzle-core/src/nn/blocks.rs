//! Subblocks: one residual branch of a layer, its norm included (`x + f(norm(x))`). Attention
//! and FFN alternatives are enum modules, so a heterogeneous child is a plain `Vec<Layer>`.
//! Weight names are the checkpoint's (`self_attn.q_proj.weight`, `mlp.linear_mlp.weight`, ...),
//! relative to `model.layers.{i}.`.

use std::cell::RefCell;
use std::collections::BTreeSet;

use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::primitives::{Linear, RmsNorm, RopeTables, causal_attention, host, swiglu};
use crate::error::{Error, Result};
use crate::spec::{AttentionSpec, FfnSpec, ModelSpec};
use crate::weights::{HostTensor, WeightSource};

/// What every layer of one forward call shares.
#[derive(Clone, Debug)]
pub struct ForwardCtx {
    pub rope: RopeTables,
    /// `[batch, 1, 1, kv_len]`, `true` for keys to ignore (left padding).
    pub key_mask: Option<Tensor<4, Bool>>,
}

/// One layer's cached keys and values, `[batch, kv_heads, cached, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub k: Option<Tensor<4>>,
    pub v: Option<Tensor<4>>,
}

impl LayerKv {
    /// Drops all but the last `n` cached positions.
    pub fn keep_last(&mut self, n: usize) {
        for t in [&mut self.k, &mut self.v].into_iter().flatten() {
            let len = t.dims()[2];
            if len > n {
                *t = t.clone().narrow(2, len - n, n);
            }
        }
    }

    /// Appends new keys/values and returns the full ones.
    fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let k = match self.k.take() {
            Some(old) => Tensor::cat(vec![old, k], 2),
            None => k,
        };
        let v = match self.v.take() {
            Some(old) => Tensor::cat(vec![old, v], 2),
            None => v,
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        (k, v)
    }
}

/// The contract of a subblock: given the residual stream, produce the branch output
/// `f(norm(x))` (or `None` for the identity), and list its weights by checkpoint name.
pub trait Subblock {
    /// The branch output, without the residual.
    ///
    /// # Shapes
    /// `x: [batch, seq, hidden] -> [batch, seq, hidden]`
    fn branch(&self, x: Tensor<3>, ctx: &ForwardCtx, kv: Option<&mut LayerKv>)
    -> Option<Tensor<3>>;

    /// Weights by name relative to `model.layers.{i}.`, in checkpoint layout.
    fn tensors(&self) -> Vec<(String, HostTensor)>;

    /// `x + branch(x)`.
    fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx, kv: Option<&mut LayerKv>) -> Tensor<3> {
        match self.branch(x.clone(), ctx, kv) {
            Some(y) => x + y,
            None => x,
        }
    }
}

/// Reads tensors by name with shape checks and remembers which names were used, so that
/// leftover tensors in a checkpoint can be reported.
pub struct Loader<'a> {
    src: &'a dyn WeightSource,
    device: Device,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Loader<'a> {
    /// A loader placing tensors on `device`.
    pub fn new(src: &'a dyn WeightSource, device: &Device) -> Self {
        Loader {
            src,
            device: device.clone(),
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Reads a rank-`D` tensor of the given shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let t = self.src.read_shaped(name, &shape)?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(Tensor::from_data(
            TensorData::new(t.data, shape),
            &self.device,
        ))
    }

    /// Whether the source has a tensor of that name.
    pub fn has(&self, name: &str) -> bool {
        self.src.shape(name).is_some()
    }

    /// A norm weight.
    pub fn norm(&self, name: &str, hidden: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.tensor(name, [hidden])?, eps))
    }

    /// A host tensor of the given shape.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.src.read_shaped(name, shape)?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    /// A linear map stored `[out, in]`, with `{prefix}.bias` when `bias` is set.
    pub fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.host(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.host(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::from_checkpoint(&w, b.as_ref(), &self.device))
    }

    /// Names in the source that no read touched.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.src
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect()
    }

    /// Where the weights come from.
    pub fn location(&self) -> String {
        self.src.location()
    }
}

fn linear_tensors(out: &mut Vec<(String, HostTensor)>, prefix: &str, l: &Linear) {
    out.push((format!("{prefix}.weight"), l.checkpoint_weight()));
    if let Some(b) = &l.bias {
        out.push((format!("{prefix}.bias"), host(&b.val())));
    }
}

/// The identity subblock: no norm, no weights.
#[derive(Module, Debug, Default)]
pub struct NoOp {}

/// Grouped-query attention with RoPE and an optional KV cache.
#[derive(Module, Debug)]
pub struct GqaAttention {
    pub norm: RmsNorm,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding window (positions attended, the query included).
    pub window: Option<usize>,
}

impl GqaAttention {
    fn branch(&self, x: Tensor<3>, ctx: &ForwardCtx, kv: Option<&mut LayerKv>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let h = self.norm.forward(x);
        // [b, t, heads * hd] -> [b, heads, t, hd]
        let q = self
            .q_proj
            .forward(h.clone())
            .reshape([b, t, nh, hd])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(h.clone())
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(h)
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        let q = ctx.rope.apply(q);
        let k = ctx.rope.apply(k);
        let (o, cache) = match kv {
            Some(cache) => {
                let (k, v) = cache.append(k, v);
                (self.attend(q, k, v, ctx), Some(cache))
            }
            None => (self.attend(q, k, v, ctx), None),
        };
        // A windowed layer's cache only needs the last `window - 1` positions for later steps.
        if let (Some(w), Some(cache)) = (self.window, cache) {
            cache.keep_last(w.saturating_sub(1));
        }
        self.o_proj
            .forward(o.swap_dims(1, 2).reshape([b, t, nh * hd]))
    }

    /// `[b, nh, t, hd]` attention output for keys/values of any (possibly truncated) length.
    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, ctx: &ForwardCtx) -> Tensor<4> {
        let kv_len = k.dims()[2];
        // The padding mask covers every position since the start; a truncated cache holds the
        // last `kv_len` of them.
        let mask = ctx.key_mask.clone().map(|m| {
            let total = m.dims()[3];
            if total > kv_len {
                m.narrow(3, total - kv_len, kv_len)
            } else {
                m
            }
        });
        causal_attention(q, k, v, mask, self.window)
    }

    fn tensors(&self) -> Vec<(String, HostTensor)> {
        let mut v = vec![(
            "input_layernorm.weight".to_string(),
            host(&self.norm.weight.val()),
        )];
        for (n, l) in [
            ("q_proj", &self.q_proj),
            ("k_proj", &self.k_proj),
            ("v_proj", &self.v_proj),
            ("o_proj", &self.o_proj),
        ] {
            linear_tensors(&mut v, &format!("self_attn.{n}"), l);
        }
        v
    }
}

/// A single `hidden x hidden` matrix applied to the normed input: Puzzle's linear replacement of
/// attention (`self_attn.linear_attn`) or FFN (`mlp.linear_mlp`).
#[derive(Module, Debug)]
pub struct LinearSubblock {
    pub norm: RmsNorm,
    pub linear: Linear,
}

/// An attention subblock: the parent's kind or one of Puzzle's replacements.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AttentionBlock {
    Gqa(GqaAttention),
    Linear(LinearSubblock),
    NoOp(NoOp),
}

impl AttentionBlock {
    /// Builds the subblock described by `a` from `model.layers.{layer}.*` tensors.
    pub fn load(spec: &ModelSpec, a: &AttentionSpec, layer: usize, w: &Loader) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let (h, eps) = (spec.hidden_size, spec.rms_norm_eps);
        Ok(match a {
            AttentionSpec::Gqa {
                num_kv_heads,
                qkv_bias,
                o_bias,
                window,
            } => {
                let (nh, hd) = (spec.num_attention_heads, spec.head_dim);
                if *num_kv_heads == 0 || nh % num_kv_heads != 0 {
                    return Err(Error::invalid(format!(
                        "layer {layer}: {nh} query heads cannot be grouped over {num_kv_heads} KV heads"
                    )));
                }
                AttentionBlock::Gqa(GqaAttention {
                    norm: w.norm(&format!("{p}.input_layernorm.weight"), h, eps)?,
                    q_proj: w.linear(&format!("{p}.self_attn.q_proj"), nh * hd, h, *qkv_bias)?,
                    k_proj: w.linear(
                        &format!("{p}.self_attn.k_proj"),
                        num_kv_heads * hd,
                        h,
                        *qkv_bias,
                    )?,
                    v_proj: w.linear(
                        &format!("{p}.self_attn.v_proj"),
                        num_kv_heads * hd,
                        h,
                        *qkv_bias,
                    )?,
                    o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h, nh * hd, *o_bias)?,
                    num_heads: nh,
                    num_kv_heads: *num_kv_heads,
                    head_dim: hd,
                    window: *window,
                })
            }
            AttentionSpec::Linear => AttentionBlock::Linear(LinearSubblock {
                norm: w.norm(&format!("{p}.input_layernorm.weight"), h, eps)?,
                linear: w.linear(&format!("{p}.self_attn.linear_attn"), h, h, false)?,
            }),
            AttentionSpec::NoOp => AttentionBlock::NoOp(NoOp {}),
        })
    }

    /// The spec this subblock implements.
    pub fn spec(&self) -> AttentionSpec {
        match self {
            AttentionBlock::Gqa(g) => AttentionSpec::Gqa {
                num_kv_heads: g.num_kv_heads,
                qkv_bias: g.q_proj.bias.is_some(),
                o_bias: g.o_proj.bias.is_some(),
                window: g.window,
            },
            AttentionBlock::Linear(_) => AttentionSpec::Linear,
            AttentionBlock::NoOp(_) => AttentionSpec::NoOp,
        }
    }
}

impl Subblock for AttentionBlock {
    fn branch(
        &self,
        x: Tensor<3>,
        ctx: &ForwardCtx,
        kv: Option<&mut LayerKv>,
    ) -> Option<Tensor<3>> {
        match self {
            AttentionBlock::Gqa(g) => Some(g.branch(x, ctx, kv)),
            AttentionBlock::Linear(l) => Some(l.linear.forward(l.norm.forward(x))),
            AttentionBlock::NoOp(_) => None,
        }
    }

    fn tensors(&self) -> Vec<(String, HostTensor)> {
        match self {
            AttentionBlock::Gqa(g) => g.tensors(),
            AttentionBlock::Linear(l) => {
                let mut v = vec![(
                    "input_layernorm.weight".to_string(),
                    host(&l.norm.weight.val()),
                )];
                linear_tensors(&mut v, "self_attn.linear_attn", &l.linear);
                v
            }
            AttentionBlock::NoOp(_) => vec![],
        }
    }
}

/// SwiGLU FFN.
#[derive(Module, Debug)]
pub struct SwiGluFfn {
    pub norm: RmsNorm,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl SwiGluFfn {
    /// Intermediate width.
    pub fn intermediate_size(&self) -> usize {
        self.gate_proj.out_features()
    }
}

/// An FFN subblock: the parent's kind or one of Puzzle's replacements.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum FfnBlock {
    SwiGlu(SwiGluFfn),
    Linear(LinearSubblock),
    NoOp(NoOp),
}

impl FfnBlock {
    /// Builds the subblock described by `f` from `model.layers.{layer}.*` tensors.
    pub fn load(spec: &ModelSpec, f: &FfnSpec, layer: usize, w: &Loader) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let (h, eps) = (spec.hidden_size, spec.rms_norm_eps);
        Ok(match f {
            FfnSpec::SwiGlu {
                intermediate_size: i,
                bias,
            } => FfnBlock::SwiGlu(SwiGluFfn {
                norm: w.norm(&format!("{p}.post_attention_layernorm.weight"), h, eps)?,
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), *i, h, *bias)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), *i, h, *bias)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), h, *i, *bias)?,
            }),
            FfnSpec::Linear => FfnBlock::Linear(LinearSubblock {
                norm: w.norm(&format!("{p}.post_attention_layernorm.weight"), h, eps)?,
                linear: w.linear(&format!("{p}.mlp.linear_mlp"), h, h, false)?,
            }),
            FfnSpec::NoOp => FfnBlock::NoOp(NoOp {}),
        })
    }

    /// The spec this subblock implements.
    pub fn spec(&self) -> FfnSpec {
        match self {
            FfnBlock::SwiGlu(s) => FfnSpec::SwiGlu {
                intermediate_size: s.intermediate_size(),
                bias: s.gate_proj.bias.is_some(),
            },
            FfnBlock::Linear(_) => FfnSpec::Linear,
            FfnBlock::NoOp(_) => FfnSpec::NoOp,
        }
    }
}

impl Subblock for FfnBlock {
    fn branch(
        &self,
        x: Tensor<3>,
        _ctx: &ForwardCtx,
        _kv: Option<&mut LayerKv>,
    ) -> Option<Tensor<3>> {
        match self {
            FfnBlock::SwiGlu(s) => Some(swiglu(
                &s.gate_proj,
                &s.up_proj,
                &s.down_proj,
                s.norm.forward(x),
            )),
            FfnBlock::Linear(l) => Some(l.linear.forward(l.norm.forward(x))),
            FfnBlock::NoOp(_) => None,
        }
    }

    fn tensors(&self) -> Vec<(String, HostTensor)> {
        match self {
            FfnBlock::SwiGlu(s) => {
                let mut v = vec![(
                    "post_attention_layernorm.weight".to_string(),
                    host(&s.norm.weight.val()),
                )];
                for (n, l) in [
                    ("gate_proj", &s.gate_proj),
                    ("up_proj", &s.up_proj),
                    ("down_proj", &s.down_proj),
                ] {
                    linear_tensors(&mut v, &format!("mlp.{n}"), l);
                }
                v
            }
            FfnBlock::Linear(l) => {
                let mut v = vec![(
                    "post_attention_layernorm.weight".to_string(),
                    host(&l.norm.weight.val()),
                )];
                linear_tensors(&mut v, "mlp.linear_mlp", &l.linear);
                v
            }
            FfnBlock::NoOp(_) => vec![],
        }
    }
}
