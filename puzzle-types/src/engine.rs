//! What each serving engine can run: the capability table that narrows the search space to
//! children the deployment's engine loads, and says how a subblock it cannot run as such is
//! re-expressed exactly.
//!
//! The rows are facts checked by running the engine (llama.cpp, through our GGUF export and the
//! parity tests in `plugins/llamacpp/tests`) or stated by the engine's DeciLM support (vLLM:
//! no-op subblocks but no linear replacement; TensorRT-LLM: both). Whatever is not known to work
//! is refused, never assumed.

use serde::Serialize;

use crate::kinds::EngineKind;
use crate::spec::{AttentionSpec, FfnSpec, ModelSpec};

/// How an engine runs a no-op FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NoOpFfn {
    /// As the identity.
    Native,
    /// After a real or linear attention, and in the last layer, as a zero SwiGLU of the given
    /// width (exact: it adds nothing), which costs what that SwiGLU costs.
    ZeroSwiGlu(usize),
}

/// One engine's row of the capability table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub engine: EngineKind,
    pub linear_attention: bool,
    pub noop_attention: bool,
    pub linear_ffn: bool,
    /// `None`: no-op FFNs cannot be run at all.
    pub noop_ffn: Option<NoOpFfn>,
    /// Per-layer sliding windows.
    pub windows: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub ffn_bias: bool,
    /// A model must keep at least one attention with a KV cache.
    pub needs_kv_attention: bool,
}

/// Width of the zero SwiGLU llama.cpp runs in place of a no-op FFN (one Q8_0 block).
pub const LLAMACPP_ZERO_FFN_WIDTH: usize = 32;

impl EngineKind {
    /// This engine's row of the capability table.
    pub fn capabilities(self) -> Capabilities {
        let all = Capabilities {
            engine: self,
            linear_attention: true,
            noop_attention: true,
            linear_ffn: true,
            noop_ffn: Some(NoOpFfn::Native),
            windows: true,
            qkv_bias: true,
            o_bias: true,
            ffn_bias: true,
            needs_kv_attention: false,
        };
        match self {
            EngineKind::Burn => all,
            // llama.cpp's `deci` graph: linear FFN cannot be loaded, a no-op FFN after an
            // attention loses that attention's output and one in the last layer crashes it, a
            // no-op attention in layer 0 zeroes every head size (both re-expressed by the GGUF
            // export), no per-layer windows, biases only on q/k/v, and a model needs one
            // KV-cache attention somewhere (an empty KV cache fails to allocate).
            EngineKind::LlamaCpp => Capabilities {
                linear_ffn: false,
                noop_ffn: Some(NoOpFfn::ZeroSwiGlu(LLAMACPP_ZERO_FFN_WIDTH)),
                windows: false,
                o_bias: false,
                ffn_bias: false,
                needs_kv_attention: true,
                ..all
            },
            // vLLM's DeciLM: no-op subblocks, no linear replacement.
            EngineKind::Vllm => Capabilities {
                linear_attention: false,
                linear_ffn: false,
                windows: false,
                qkv_bias: false,
                o_bias: false,
                ffn_bias: false,
                ..all
            },
            EngineKind::TrtLlm => Capabilities {
                windows: false,
                qkv_bias: false,
                o_bias: false,
                ffn_bias: false,
                ..all
            },
        }
    }
}

impl Capabilities {
    /// Why this engine cannot run `a` as an attention subblock (`None`: it can).
    pub fn refuses_attention(&self, a: &AttentionSpec) -> Option<String> {
        let e = self.engine;
        match a {
            AttentionSpec::Gqa {
                window: Some(w), ..
            } if !self.windows => Some(format!("{e} has no per-layer sliding window (window {w})")),
            AttentionSpec::Gqa { qkv_bias: true, .. } if !self.qkv_bias => {
                Some(format!("{e} has no q/k/v biases"))
            }
            AttentionSpec::Gqa { o_bias: true, .. } if !self.o_bias => {
                Some(format!("{e} has no output-projection bias"))
            }
            AttentionSpec::Linear if !self.linear_attention => {
                Some(format!("{e} cannot run linear attention"))
            }
            AttentionSpec::NoOp if !self.noop_attention => {
                Some(format!("{e} cannot run no-op attention"))
            }
            _ => None,
        }
    }

    /// Why this engine cannot run `f` as an FFN subblock (`None`: it can, perhaps re-expressed).
    pub fn refuses_ffn(&self, f: &FfnSpec) -> Option<String> {
        let e = self.engine;
        match f {
            FfnSpec::SwiGlu { bias: true, .. } if !self.ffn_bias => {
                Some(format!("{e} has no FFN biases"))
            }
            FfnSpec::Linear if !self.linear_ffn => Some(format!("{e} cannot run a linear FFN")),
            FfnSpec::NoOp if self.noop_ffn.is_none() => Some(format!("{e} cannot run a no-op FFN")),
            _ => None,
        }
    }

    /// Every layer of `spec` this engine cannot run, with the reason (empty: it runs `spec`).
    pub fn refusals(&self, spec: &ModelSpec) -> Vec<String> {
        let kv = spec
            .layers
            .iter()
            .any(|l| matches!(l.attention, AttentionSpec::Gqa { .. }));
        let whole = (self.needs_kv_attention && !kv).then(|| {
            format!(
                "{} needs at least one attention with a KV cache (no layer has one)",
                self.engine
            )
        });
        whole.into_iter().chain(self.layer_refusals(spec)).collect()
    }

    fn layer_refusals(&self, spec: &ModelSpec) -> Vec<String> {
        spec.layers
            .iter()
            .enumerate()
            .flat_map(|(l, layer)| {
                [
                    self.refuses_attention(&layer.attention),
                    self.refuses_ffn(&layer.ffn),
                ]
                .into_iter()
                .flatten()
                .map(move |why| format!("layer {l}: {why}"))
            })
            .collect()
    }

    /// The table as rows for `--help`-style listings: (capability, supported).
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        vec![
            ("linear attention", yes(self.linear_attention)),
            (
                "no-op attention",
                if self.engine == EngineKind::LlamaCpp {
                    "yes (in layer 0 as a zero linear attention)".into()
                } else {
                    yes(self.noop_attention)
                },
            ),
            ("linear FFN", yes(self.linear_ffn)),
            (
                "no-op FFN",
                match self.noop_ffn {
                    None => "no".into(),
                    Some(NoOpFfn::Native) => "yes".into(),
                    Some(NoOpFfn::ZeroSwiGlu(w)) => {
                        format!("as a zero SwiGLU of width {w} after an attention or last")
                    }
                },
            ),
            ("sliding windows", yes(self.windows)),
            ("q/k/v bias", yes(self.qkv_bias)),
            ("o bias", yes(self.o_bias)),
            ("FFN bias", yes(self.ffn_bias)),
            ("model without KV attention", yes(!self.needs_kv_attention)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamacpp_refuses_what_its_graph_cannot_run_and_names_it() {
        let c = EngineKind::LlamaCpp.capabilities();
        assert_eq!(
            c.refuses_ffn(&FfnSpec::Linear).unwrap(),
            "llamacpp cannot run a linear FFN"
        );
        assert!(c.refuses_ffn(&FfnSpec::NoOp).is_none());
        assert!(c.refuses_attention(&AttentionSpec::Linear).is_none());
        let windowed = AttentionSpec::Gqa {
            num_kv_heads: 2,
            qkv_bias: false,
            o_bias: false,
            window: Some(64),
        };
        assert!(
            c.refuses_attention(&windowed)
                .unwrap()
                .contains("window 64")
        );
        assert!(
            EngineKind::Burn
                .capabilities()
                .refuses_attention(&windowed)
                .is_none()
        );
        assert!(
            EngineKind::Vllm
                .capabilities()
                .refuses_attention(&AttentionSpec::Linear)
                .is_some()
        );
        assert!(
            EngineKind::TrtLlm
                .capabilities()
                .refuses_ffn(&FfnSpec::Linear)
                .is_none()
        );
        let spec = |attention: AttentionSpec, ffn: FfnSpec| ModelSpec {
            family: "llama".into(),
            hidden_size: 8,
            vocab_size: 8,
            num_attention_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope: crate::spec::RopeSpec {
                theta: 1e4,
                scaling: crate::spec::RopeScaling::Default,
            },
            max_position_embeddings: 8,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
            storage_dtype: None,
            layers: vec![crate::spec::LayerSpec { attention, ffn }; 2],
        };
        let r = c.refusals(&spec(AttentionSpec::Linear, FfnSpec::Linear));
        assert_eq!(
            r,
            vec![
                "llamacpp needs at least one attention with a KV cache (no layer has one)"
                    .to_string(),
                "layer 0: llamacpp cannot run a linear FFN".into(),
                "layer 1: llamacpp cannot run a linear FFN".into(),
            ]
        );
        assert!(c.refusals(&spec(windowed.clone(), FfnSpec::NoOp)).len() == 2);
        assert!(
            EngineKind::Burn
                .capabilities()
                .refusals(&spec(AttentionSpec::NoOp, FfnSpec::Linear))
                .is_empty()
        );
    }

    #[test]
    fn engine_names_parse_with_their_aliases() {
        assert_eq!(
            "llama.cpp".parse::<EngineKind>().unwrap(),
            EngineKind::LlamaCpp
        );
        let e = "onnx".parse::<EngineKind>().unwrap_err().to_string();
        assert!(
            e.contains("engine `onnx` is unknown (burn, llamacpp, vllm, trtllm)"),
            "{e}"
        );
    }
}
