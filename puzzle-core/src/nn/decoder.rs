//! The decoder every family resolves to: embeddings, a heterogeneous stack of layers (each an
//! attention and an FFN subblock), the final norm and the LM head (tied or not). Incremental
//! decoding keeps a per-layer KV cache; batches may be left-padded.

use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::blocks::{AttentionBlock, FfnBlock, ForwardCtx, LayerKv, Loader, Subblock};
use super::primitives::{Linear, RmsNorm, RopeTables, host};
use crate::error::{Error, Result};
use crate::spec::{LayerSpec, ModelSpec};
use crate::weights::{HostTensor, WeightSource};

/// One decoder layer.
#[derive(Module, Debug)]
pub struct Layer {
    pub attention: AttentionBlock,
    pub ffn: FfnBlock,
}

impl Layer {
    /// `ffn(attn(x))`, each with its residual.
    ///
    /// # Shapes
    /// `x: [batch, seq, hidden] -> same`
    pub fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx, kv: Option<&mut LayerKv>) -> Tensor<3> {
        let x = self.attention.forward(x, ctx, kv);
        self.ffn.forward(x, ctx, None)
    }

    /// Layer `layer` of the model `spec` describes, from checkpoint tensors named as in Hugging
    /// Face Llama (only that layer's are read).
    pub fn load(
        spec: &ModelSpec,
        layer: usize,
        src: &dyn WeightSource,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(spec, layer, &Loader::new(src, device))
    }

    fn load_with(spec: &ModelSpec, layer: usize, w: &Loader) -> Result<Self> {
        let l = spec.layers.get(layer).ok_or_else(|| {
            Error::invalid(format!(
                "layer {layer} was asked of a model with {} layers",
                spec.layers.len()
            ))
        })?;
        Ok(Layer {
            attention: AttentionBlock::load(spec, &l.attention, layer, w)?,
            ffn: FfnBlock::load(spec, &l.ffn, layer, w)?,
        })
    }

    /// The layer's spec.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec {
            attention: self.attention.spec(),
            ffn: self.ffn.spec(),
        }
    }
}

/// Cached keys/values of a batch being decoded.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Left-padding of each row (tokens before the row's first real token).
    pub pads: Vec<usize>,
    /// Positions cached so far (padding included).
    pub len: usize,
}

impl KvCache {
    /// An empty cache for `batch` rows with the given left padding.
    pub fn new(num_layers: usize, pads: Vec<usize>) -> Self {
        KvCache {
            layers: vec![LayerKv::default(); num_layers],
            pads,
            len: 0,
        }
    }
}

/// Everything a forward can report, for parity tests and distillation.
#[derive(Debug)]
pub struct ForwardTrace {
    /// `[batch, seq, hidden]` embeddings.
    pub embed: Tensor<3>,
    /// `[batch, seq, hidden]` output of each layer.
    pub layer_out: Vec<Tensor<3>>,
    /// `[batch, seq, hidden]` after the final norm.
    pub final_norm: Tensor<3>,
    /// `[batch, seq, vocab]`
    pub logits: Tensor<3>,
}

/// A decoder-only language model.
#[derive(Module, Debug)]
pub struct Decoder {
    /// `[vocab, hidden]`
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to the embeddings.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    pub spec: ModelSpec,
}

impl Decoder {
    /// Builds the model described by `spec` from checkpoint tensors named as in Hugging Face
    /// Llama. Missing tensors, wrong shapes and tensors the spec does not use are errors that
    /// name the key.
    pub fn load(spec: &ModelSpec, src: &dyn WeightSource, device: &Device) -> Result<Self> {
        // The header check is the one place the checkpoint's names and shapes are judged.
        Self::check_tensors(spec, src)?;
        Self::load_first(spec, &Loader::new(src, device), spec.layers.len())
    }

    /// What [`Decoder::load`] would refuse, found from the checkpoint's header alone (no tensor
    /// is read): a missing tensor, a wrong shape, a tensor the spec does not use. A run checks
    /// its parent this way when it opens, before a stage loads any of it.
    pub fn check_tensors(spec: &ModelSpec, src: &dyn WeightSource) -> Result<()> {
        let want = spec.tensor_shapes();
        for (name, shape) in &want {
            match src.shape(name) {
                None => {
                    return Err(Error::MissingTensor {
                        key: name.clone(),
                        location: src.location(),
                    });
                }
                Some(found) if &found != shape => {
                    return Err(Error::ShapeMismatch {
                        key: name.clone(),
                        location: src.location(),
                        expected: shape.clone(),
                        found,
                    });
                }
                Some(_) => {}
            }
        }
        let known: std::collections::BTreeSet<&str> =
            want.iter().map(|(n, _)| n.as_str()).collect();
        let unused: Vec<String> = src
            .names()
            .into_iter()
            .filter(|n| !known.contains(n.as_str()))
            .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
            .filter(|n| !(spec.tie_word_embeddings && n == "lm_head.weight"))
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnexpectedTensors {
                location: src.location(),
                keys: unused.join(", "),
            });
        }
        Ok(())
    }

    /// The parent's first `layers` layers with its embeddings, final norm and head: what
    /// produces the input and output activations of those layers (a BLD shard's parent) without
    /// holding the rest in memory. Its logits are those of the truncated model. Tensors of the
    /// layers left out are not read.
    pub fn load_trunk(
        spec: &ModelSpec,
        src: &dyn WeightSource,
        device: &Device,
        layers: usize,
    ) -> Result<Self> {
        if layers > spec.layers.len() {
            return Err(Error::invalid(format!(
                "a trunk of {layers} layers was asked of a model with {}",
                spec.layers.len()
            )));
        }
        Self::load_first(spec, &Loader::new(src, device), layers)
    }

    fn load_first(spec: &ModelSpec, w: &Loader, n: usize) -> Result<Self> {
        let (v, h) = (spec.vocab_size, spec.hidden_size);
        if !spec.head_dim.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "head_dim {} is odd; rotary embeddings need an even head size",
                spec.head_dim
            )));
        }
        let embed = w.tensor("model.embed_tokens.weight", [v, h])?;
        let layers = (0..n)
            .map(|i| Layer::load_with(spec, i, w))
            .collect::<Result<Vec<_>>>()?;
        let norm = w.norm("model.norm.weight", h, spec.rms_norm_eps)?;
        let lm_head = if spec.tie_word_embeddings {
            None
        } else {
            Some(w.linear("lm_head", v, h, false)?)
        };
        let mut spec = spec.clone();
        spec.layers.truncate(n);
        Ok(Decoder {
            embed_tokens: Param::from_tensor(embed),
            layers,
            norm,
            lm_head,
            spec,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// `ids: [batch, seq] -> [batch, seq, hidden]`
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        self.embed_tokens
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, self.spec.hidden_size])
    }

    /// Rotary tables and padding mask for `seq` new tokens after `past` cached positions.
    pub fn context(&self, batch: usize, past: usize, seq: usize, pads: &[usize]) -> ForwardCtx {
        let device = self.device();
        let inv_freq = self.spec.rope.inv_freq(self.spec.head_dim);
        let any_pad = pads.iter().any(|&p| p > 0);
        let positions: Vec<Vec<usize>> = if any_pad {
            pads.iter()
                .map(|&p| (past..past + seq).map(|j| j.saturating_sub(p)).collect())
                .collect()
        } else {
            // Shared positions broadcast over the batch.
            vec![(past..past + seq).collect()]
        };
        let rope = RopeTables::new(&inv_freq, &positions, &device);
        let key_mask = any_pad.then(|| {
            let kv = past + seq;
            let mask: Vec<bool> = pads
                .iter()
                .flat_map(|&p| (0..kv).map(move |j| j < p))
                .collect();
            Tensor::<4, Bool>::from_data(TensorData::new(mask, [batch, 1, 1, kv]), &device)
        });
        ForwardCtx { rope, key_mask }
    }

    /// The final norm.
    pub fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.norm.forward(x)
    }

    /// Logits from normed hidden states.
    ///
    /// # Shapes
    /// `x: [batch, seq, hidden] -> [batch, seq, vocab]`
    pub fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => {
                let [b, t, h] = x.dims();
                x.reshape([b * t, h])
                    .matmul(self.embed_tokens.val().transpose())
                    .reshape([b, t, self.spec.vocab_size])
            }
        }
    }

    /// A full forward without cache.
    ///
    /// # Shapes
    /// `ids: [batch, seq] -> [batch, seq, vocab]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let ctx = self.context(b, 0, t, &[]);
        let mut x = self.embed(ids);
        for layer in &self.layers {
            x = layer.forward(x, &ctx, None);
        }
        self.logits(self.final_norm(x))
    }

    /// A full forward that keeps every intermediate (see `ForwardTrace`).
    pub fn forward_trace(&self, ids: Tensor<2, Int>) -> ForwardTrace {
        let [b, t] = ids.dims();
        let ctx = self.context(b, 0, t, &[]);
        let embed = self.embed(ids);
        let mut x = embed.clone();
        let mut layer_out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            x = layer.forward(x, &ctx, None);
            layer_out.push(x.clone());
        }
        let final_norm = self.final_norm(x);
        let logits = self.logits(final_norm.clone());
        ForwardTrace {
            embed,
            layer_out,
            final_norm,
            logits,
        }
    }

    /// Runs `ids` (`[batch, seq]`) after what `cache` holds and appends to it. Returns logits of
    /// every new position, or of the last one only when `last_only` (saves the head matmul
    /// over the prompt when generating).
    ///
    /// # Shapes
    /// `ids: [batch, seq] -> [batch, seq or 1, vocab]`
    pub fn step(&self, ids: Tensor<2, Int>, cache: &mut KvCache, last_only: bool) -> Tensor<3> {
        let [b, t] = ids.dims();
        let ctx = self.context(b, cache.len, t, &cache.pads.clone());
        let mut x = self.embed(ids);
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &ctx, Some(kv));
        }
        cache.len += t;
        let x = if last_only && t > 1 {
            x.narrow(1, t - 1, 1)
        } else {
            x
        };
        self.logits(self.final_norm(x))
    }

    /// All weights by full checkpoint name, in checkpoint layout.
    pub fn tensors(&self) -> Vec<(String, HostTensor)> {
        (0..self.tensor_groups())
            .flat_map(|g| self.tensor_group(g))
            .collect()
    }

    /// How many groups [`Decoder::tensor_group`] splits the tensors into: the embeddings, one
    /// per layer, then the final norm and head.
    pub fn tensor_groups(&self) -> usize {
        self.layers.len() + 2
    }

    /// Group `g` of the checkpoint tensors (HF names, `[out, in]` matrices), copied to the
    /// host: an export holds one group at a time instead of the whole model.
    pub fn tensor_group(&self, g: usize) -> Vec<(String, HostTensor)> {
        if g == 0 {
            return vec![(
                "model.embed_tokens.weight".to_string(),
                host(&self.embed_tokens.val()),
            )];
        }
        if let Some(l) = self.layers.get(g - 1) {
            return l
                .attention
                .tensors()
                .into_iter()
                .chain(l.ffn.tensors())
                .map(|(n, t)| (format!("model.layers.{}.{n}", g - 1), t))
                .collect();
        }
        let mut v = vec![(
            "model.norm.weight".to_string(),
            host(&self.norm.weight.val()),
        )];
        if let Some(head) = &self.lm_head {
            v.push(("lm_head.weight".into(), head.checkpoint_weight()));
        }
        v
    }

    /// The spec of the layers as they are now (after surgery, it may differ from the loaded one).
    pub fn current_spec(&self) -> ModelSpec {
        let mut s = self.spec.clone();
        s.layers = self.layers.iter().map(Layer::spec).collect();
        s
    }
}

/// Token ids as a `[batch, seq]` tensor.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let b = rows.len();
    let t = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| {
            assert_eq!(r.len(), t, "rows must have equal lengths");
            r.iter().map(|&x| x as i64)
        })
        .collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LlamaShape;
    use crate::train::init::random_weights;

    fn spec() -> ModelSpec {
        ModelSpec::uniform_llama(LlamaShape {
            hidden: 16,
            vocab: 32,
            heads: 2,
            head_dim: 8,
            kv_heads: 1,
            intermediate: 24,
            layers: 3,
        })
    }

    #[test]
    fn the_header_check_refuses_what_load_refuses_and_a_trunk_is_the_first_layers() {
        let s = spec();
        let w = random_weights(&s, 0.02, 1);
        let device = Device::flex();
        Decoder::check_tensors(&s, &w).unwrap();
        let full = Decoder::load(&s, &w, &device).unwrap();
        let trunk = Decoder::load_trunk(&s, &w, &device, 2).unwrap();
        assert_eq!(trunk.layers.len(), 2);
        assert_eq!(trunk.spec.layers, s.layers[..2]);
        let x = full.embed(Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 7], [1, 3]),
            &device,
        ));
        let ctx = full.context(1, 0, 3, &[]);
        let (a, b) = (
            full.layers[1].forward(full.layers[0].forward(x.clone(), &ctx, None), &ctx, None),
            trunk.layers[1].forward(trunk.layers[0].forward(x, &ctx, None), &ctx, None),
        );
        assert_eq!(
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap()
        );
        assert!(Decoder::load_trunk(&s, &w, &device, 4).is_err());
        // Each fault: the header check and the full load name the same tensor.
        let name = "model.layers.2.mlp.up_proj.weight";
        let mut missing = w.clone();
        missing.tensors.remove(name);
        let mut reshaped = w.clone();
        reshaped.insert(name, HostTensor::new(vec![24, 8], vec![0.0; 192]));
        let mut extra = w.clone();
        extra.insert(
            "model.layers.9.mlp.up_proj.weight",
            HostTensor::new(vec![1], vec![0.0]),
        );
        for bad in [missing, reshaped, extra] {
            let early = Decoder::check_tensors(&s, &bad).unwrap_err().to_string();
            let late = Decoder::load(&s, &bad, &device).unwrap_err().to_string();
            assert_eq!(early, late);
            assert!(early.contains("mlp.up_proj.weight"), "{early}");
        }
    }
}
