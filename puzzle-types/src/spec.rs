//! The resolved description of a decoder: plain data, produced once from a checkpoint's config by
//! a family plugin and read by everything else. Heterogeneous on purpose: each layer says what its
//! attention and FFN subblocks are, because Puzzle children differ per layer.

use serde::{Deserialize, Serialize};

use crate::variant::{SubblockKind, VariantId};

/// RoPE frequency scaling, as in transformers' `rope_type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: "default"` or no scaling block).
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's smooth band-wise scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Rotary position embedding parameters (HF rotate_half convention).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// Inverse frequencies for a head of size `head_dim`, computed in f64 (never in the storage
    /// dtype: bf16 frequencies would move positions by whole tokens at long range).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let half = head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        match &self.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // transformers `_compute_llama3_parameters`: long wavelengths are interpolated,
                // short ones kept, the band between blended smoothly.
                let old = *original_max_position_embeddings as f64;
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// One layer's attention subblock (`x + attn(input_layernorm(x))`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttentionSpec {
    /// Grouped-query attention with `num_kv_heads` key/value heads (the model's query heads and
    /// head size are global).
    Gqa {
        num_kv_heads: usize,
        /// Biases on q/k/v (Qwen2; Llama's `attention_bias`).
        #[serde(default)]
        qkv_bias: bool,
        /// Bias on o (Llama's `attention_bias`).
        #[serde(default)]
        o_bias: bool,
        /// Sliding window: each token attends to itself and the `window - 1` before it, and
        /// the KV cache keeps only that many positions (DeciLM's `window_length`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<usize>,
    },
    /// One `hidden x hidden` matrix: each token attends only to itself (Puzzle's linear attention).
    Linear,
    /// The identity: no norm, no weights.
    NoOp,
}

/// One layer's FFN subblock (`x + mlp(post_attention_layernorm(x))`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FfnSpec {
    /// SwiGLU: `down(silu(gate(h)) * up(h))`.
    SwiGlu {
        intermediate_size: usize,
        #[serde(default)]
        bias: bool,
    },
    /// One `hidden x hidden` matrix.
    Linear,
    /// The identity: no norm, no weights.
    NoOp,
}

/// One decoder layer: two subblocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub attention: AttentionSpec,
    pub ffn: FfnSpec,
}

/// A whole decoder, resolved from a config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The family plugin that parsed it (`llama`, `qwen2`, `decilm`, ...).
    pub family: String,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// Query heads of every attention layer.
    pub num_attention_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeSpec,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was stored in (`float32`, `bfloat16`, ...), when it says.
    pub storage_dtype: Option<String>,
    pub layers: Vec<LayerSpec>,
}

/// The sizes of a homogeneous Llama decoder, for [`ModelSpec::uniform_llama`].
#[derive(Clone, Copy, Debug)]
pub struct LlamaShape {
    pub hidden: usize,
    pub vocab: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub layers: usize,
}

impl ModelSpec {
    /// A homogeneous Llama decoder of `shape` (GQA and SwiGLU without biases, untied head,
    /// default RoPE at theta 10000, 256 positions): the small models tests and examples build
    /// by hand, in one place.
    pub fn uniform_llama(shape: LlamaShape) -> ModelSpec {
        ModelSpec {
            family: "llama".into(),
            hidden_size: shape.hidden,
            vocab_size: shape.vocab,
            num_attention_heads: shape.heads,
            head_dim: shape.head_dim,
            rms_norm_eps: 1e-5,
            rope: RopeSpec {
                theta: 10000.0,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            storage_dtype: None,
            layers: vec![
                LayerSpec {
                    attention: AttentionSpec::Gqa {
                        num_kv_heads: shape.kv_heads,
                        qkv_bias: false,
                        o_bias: false,
                        window: None,
                    },
                    ffn: FfnSpec::SwiGlu {
                        intermediate_size: shape.intermediate,
                        bias: false,
                    },
                };
                shape.layers
            ],
        }
    }

    /// Parameters of one attention subblock (its norm included).
    pub fn attention_params(&self, a: &AttentionSpec) -> usize {
        let (h, q) = (self.hidden_size, self.num_attention_heads * self.head_dim);
        match a {
            AttentionSpec::Gqa {
                num_kv_heads,
                qkv_bias,
                o_bias,
                ..
            } => {
                let kv = num_kv_heads * self.head_dim;
                let mut n = h + h * q + 2 * h * kv + q * h;
                if *qkv_bias {
                    n += q + 2 * kv;
                }
                if *o_bias {
                    n += h;
                }
                n
            }
            AttentionSpec::Linear => h + h * h,
            AttentionSpec::NoOp => 0,
        }
    }

    /// Parameters of one FFN subblock (its norm included).
    pub fn ffn_params(&self, f: &FfnSpec) -> usize {
        let h = self.hidden_size;
        match f {
            FfnSpec::SwiGlu {
                intermediate_size: i,
                bias,
            } => h + 3 * h * i + if *bias { 2 * i + h } else { 0 },
            FfnSpec::Linear => h + h * h,
            FfnSpec::NoOp => 0,
        }
    }

    /// Parameters outside the layers: embeddings, final norm, and the head when untied.
    pub fn non_block_params(&self) -> usize {
        let e = self.vocab_size * self.hidden_size;
        e + self.hidden_size + if self.tie_word_embeddings { 0 } else { e }
    }

    /// All parameters.
    pub fn num_params(&self) -> usize {
        self.non_block_params()
            + self
                .layers
                .iter()
                .map(|l| self.attention_params(&l.attention) + self.ffn_params(&l.ffn))
                .sum::<usize>()
    }

    /// Key/value heads of a layer's attention (0 when it keeps no cache).
    pub fn kv_heads(&self, layer: usize) -> usize {
        match self.layers[layer].attention {
            AttentionSpec::Gqa { num_kv_heads, .. } => num_kv_heads,
            _ => 0,
        }
    }

    /// KV-cache elements per token over all layers.
    pub fn kv_elements_per_token(&self) -> usize {
        (0..self.layers.len())
            .map(|l| 2 * self.kv_heads(l) * self.head_dim)
            .sum()
    }

    /// Multiply-accumulates per token spent in weight matmuls (the head included, norms and
    /// attention scores excluded); `2 x` this is the model FLOPs per token before attention.
    pub fn matmul_macs_per_token(&self) -> usize {
        let h = self.hidden_size;
        let mut n = self.vocab_size * h;
        for l in &self.layers {
            n += match &l.attention {
                AttentionSpec::Gqa { num_kv_heads, .. } => {
                    let (q, kv) = (
                        self.num_attention_heads * self.head_dim,
                        num_kv_heads * self.head_dim,
                    );
                    2 * h * q + 2 * h * kv
                }
                AttentionSpec::Linear => h * h,
                AttentionSpec::NoOp => 0,
            };
            n += match &l.ffn {
                FfnSpec::SwiGlu {
                    intermediate_size, ..
                } => 3 * h * intermediate_size,
                FfnSpec::Linear => h * h,
                FfnSpec::NoOp => 0,
            };
        }
        n
    }

    /// FLOPs of a causal forward over `tokens` new tokens per sequence, each attending to
    /// `past` cached positions plus the causal prefix of the new ones, for `batch` sequences.
    /// Counts weight matmuls and the two attention matmuls (QK^T, PV); norms and softmax are
    /// left out as is customary for model-FLOPs utilisation.
    pub fn forward_flops(&self, batch: usize, past: usize, tokens: usize) -> f64 {
        let weights = 2.0 * self.matmul_macs_per_token() as f64 * (batch * tokens) as f64;
        let attn_layers = self
            .layers
            .iter()
            .filter(|l| matches!(l.attention, AttentionSpec::Gqa { .. }))
            .count();
        // Sum over new tokens of the positions each attends to (causal).
        let attended: f64 = (0..tokens).map(|t| (past + t + 1) as f64).sum();
        let qd = (self.num_attention_heads * self.head_dim) as f64;
        let attn = 2.0 * 2.0 * qd * attended * batch as f64 * attn_layers as f64;
        weights + attn
    }

    /// Checkpoint tensor names and shapes of one layer's attention subblock (HF names relative
    /// to `model.layers.{i}.`; linear weights `[out, in]`).
    pub fn attention_tensors(&self, a: &AttentionSpec) -> Vec<(String, Vec<usize>)> {
        let (h, q) = (self.hidden_size, self.num_attention_heads * self.head_dim);
        match a {
            AttentionSpec::Gqa {
                num_kv_heads,
                qkv_bias,
                o_bias,
                ..
            } => {
                let kv = num_kv_heads * self.head_dim;
                let mut v = vec![
                    ("input_layernorm.weight".into(), vec![h]),
                    ("self_attn.q_proj.weight".into(), vec![q, h]),
                    ("self_attn.k_proj.weight".into(), vec![kv, h]),
                    ("self_attn.v_proj.weight".into(), vec![kv, h]),
                    ("self_attn.o_proj.weight".into(), vec![h, q]),
                ];
                if *qkv_bias {
                    v.push(("self_attn.q_proj.bias".into(), vec![q]));
                    v.push(("self_attn.k_proj.bias".into(), vec![kv]));
                    v.push(("self_attn.v_proj.bias".into(), vec![kv]));
                }
                if *o_bias {
                    v.push(("self_attn.o_proj.bias".into(), vec![h]));
                }
                v
            }
            AttentionSpec::Linear => vec![
                ("input_layernorm.weight".into(), vec![h]),
                ("self_attn.linear_attn.weight".into(), vec![h, h]),
            ],
            AttentionSpec::NoOp => vec![],
        }
    }

    /// Checkpoint tensor names and shapes of one layer's FFN subblock.
    pub fn ffn_tensors(&self, f: &FfnSpec) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        match f {
            FfnSpec::SwiGlu {
                intermediate_size: i,
                bias,
            } => {
                let mut v = vec![
                    ("post_attention_layernorm.weight".into(), vec![h]),
                    ("mlp.gate_proj.weight".into(), vec![*i, h]),
                    ("mlp.up_proj.weight".into(), vec![*i, h]),
                    ("mlp.down_proj.weight".into(), vec![h, *i]),
                ];
                if *bias {
                    v.push(("mlp.gate_proj.bias".into(), vec![*i]));
                    v.push(("mlp.up_proj.bias".into(), vec![*i]));
                    v.push(("mlp.down_proj.bias".into(), vec![h]));
                }
                v
            }
            FfnSpec::Linear => vec![
                ("post_attention_layernorm.weight".into(), vec![h]),
                ("mlp.linear_mlp.weight".into(), vec![h, h]),
            ],
            FfnSpec::NoOp => vec![],
        }
    }

    /// Every checkpoint tensor of the model with its shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (v, h) = (self.vocab_size, self.hidden_size);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for (i, l) in self.layers.iter().enumerate() {
            for (n, s) in self
                .attention_tensors(&l.attention)
                .into_iter()
                .chain(self.ffn_tensors(&l.ffn))
            {
                out.push((format!("model.layers.{i}.{n}"), s));
            }
        }
        out.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![v, h]));
        }
        out
    }

    /// The variant id that names this layer's subblock of the given kind.
    pub fn variant_of(&self, layer: usize, kind: SubblockKind) -> VariantId {
        let l = &self.layers[layer];
        match kind {
            SubblockKind::Attention => attention_variant(&l.attention),
            SubblockKind::Ffn => ffn_variant(&l.ffn),
        }
    }
}

/// The id of an attention spec: `attn:gqa(kv=N)`, `attn:gqa(kv=N,w=W)` with a sliding window of
/// W positions, `attn:linear`, `attn:noop`.
pub fn attention_variant(a: &AttentionSpec) -> VariantId {
    let name = match a {
        AttentionSpec::Gqa {
            num_kv_heads,
            window: None,
            ..
        } => format!("gqa(kv={num_kv_heads})"),
        AttentionSpec::Gqa {
            num_kv_heads,
            window: Some(w),
            ..
        } => format!("gqa(kv={num_kv_heads},w={w})"),
        AttentionSpec::Linear => "linear".into(),
        AttentionSpec::NoOp => "noop".into(),
    };
    VariantId::new(SubblockKind::Attention, name).expect("built-in names are valid")
}

/// The id of an FFN spec: `ffn:width(N)`, `ffn:linear`, `ffn:noop`.
pub fn ffn_variant(f: &FfnSpec) -> VariantId {
    let name = match f {
        FfnSpec::SwiGlu {
            intermediate_size, ..
        } => format!("width({intermediate_size})"),
        FfnSpec::Linear => "linear".into(),
        FfnSpec::NoOp => "noop".into(),
    };
    VariantId::new(SubblockKind::Ffn, name).expect("built-in names are valid")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Llama-3.1-70B's shapes, for hand-checkable counts.
    pub fn llama70b() -> ModelSpec {
        ModelSpec {
            family: "llama".into(),
            hidden_size: 8192,
            vocab_size: 128256,
            num_attention_heads: 64,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope: RopeSpec {
                theta: 500000.0,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001],
            storage_dtype: Some("bfloat16".into()),
            layers: vec![
                LayerSpec {
                    attention: AttentionSpec::Gqa {
                        num_kv_heads: 8,
                        qkv_bias: false,
                        o_bias: false,
                        window: None,
                    },
                    ffn: FfnSpec::SwiGlu {
                        intermediate_size: 28672,
                        bias: false,
                    },
                };
                80
            ],
        }
    }

    #[test]
    fn llama70b_parameter_count_matches_the_published_size() {
        let s = llama70b();
        // Attention: norm 8192 + q 8192*8192 + k,v 2*8192*1024 + o 8192*8192.
        assert_eq!(
            s.attention_params(&s.layers[0].attention),
            8192 + 2 * 8192 * 8192 + 2 * 8192 * 1024
        );
        // FFN: norm + 3 * 8192 * 28672.
        assert_eq!(s.ffn_params(&s.layers[0].ffn), 8192 + 3 * 8192 * 28672);
        // The model card says 70.6B parameters.
        assert_eq!(s.num_params(), 70_553_706_496);
        // 2 * 80 layers * 8 kv heads * 128.
        assert_eq!(s.kv_elements_per_token(), 163_840);
    }

    #[test]
    fn llama3_inv_freq_keeps_short_and_stretches_long_wavelengths() {
        let r = RopeSpec {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        };
        let plain = RopeSpec {
            theta: 500000.0,
            scaling: RopeScaling::Default,
        };
        let (a, b) = (r.inv_freq(128), plain.inv_freq(128));
        assert_eq!(a[0], b[0]);
        assert!((a[63] - b[63] / 8.0).abs() < 1e-18);
    }

    #[test]
    fn tensor_shapes_add_up_to_the_parameter_count() {
        let s = llama70b();
        let n: usize = s
            .tensor_shapes()
            .iter()
            .map(|(_, sh)| sh.iter().product::<usize>())
            .sum();
        assert_eq!(n, s.num_params());
    }

    #[test]
    fn variant_ids_of_specs() {
        let s = llama70b();
        assert_eq!(
            s.variant_of(0, SubblockKind::Attention).to_string(),
            "attn:gqa(kv=8)"
        );
        assert_eq!(
            s.variant_of(0, SubblockKind::Ffn).to_string(),
            "ffn:width(28672)"
        );
    }
}
