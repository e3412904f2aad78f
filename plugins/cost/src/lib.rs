//! Cost models (Puzzle stage 4), registered as plugins:
//!
//! - `analytic`: parameter counts, bytes at the deployment's weight dtype, KV-cache bytes per
//!   token; no latencies.
//! - `measured`: the analytic counts plus latencies measured in context in the deployment's
//!   engine (`burn` on this device, `llamacpp`): each variant timed inside the parent, paired
//!   round-robin with the parent, so block sums add up to whole models ([`measured`]).
//! - `roofline`: latencies estimated from the hardware profile, so a GPU deployment can be
//!   planned on a CPU-only machine. Per op group (projections, attention scores, FFN, norms,
//!   head) the time is `max(FLOPs / peak, bytes / bandwidth)`: prefill is usually
//!   compute-bound, decode memory-bound on weights and KV reads. It ignores kernel launch and
//!   framework overheads, efficiency below peak, caches, tensor-parallel communication and
//!   non-GEMM arithmetic (softmax, RoPE): an optimistic lower bound whose ratios between
//!   variants are what the search uses.

pub mod measured;
pub mod roofline;

use puzzle_core::cost::{CostContext, CostModel, Costs, analytic_counts, analytic_non_block};
use puzzle_core::error::Result;
use puzzle_core::variants::SubblockSpec;

/// Counts and bytes only.
pub struct AnalyticCost;

impl CostModel for AnalyticCost {
    fn name(&self) -> &'static str {
        "analytic"
    }
    fn entry(&self, ctx: &CostContext, _layer: usize, specs: &[SubblockSpec]) -> Result<Costs> {
        analytic_counts(ctx, specs)
    }
    fn non_block(&self, ctx: &CostContext) -> Result<Costs> {
        analytic_non_block(ctx)
    }
}

inventory::submit! {
    puzzle_core::cost::CostModelRegistration {
        model: &AnalyticCost,
        provider: "puzzle-cost",
        description: "exact parameter counts, weight bytes and KV bytes; no latencies",
    }
}
inventory::submit! {
    puzzle_core::cost::CostModelRegistration {
        model: &measured::MeasuredCost,
        provider: "puzzle-cost",
        description: "latencies measured in context in the deployment's engine (the parent with the variant in place, as a ratio to the parent timed beside it)",
    }
}
inventory::submit! {
    puzzle_core::cost::CostModelRegistration {
        model: &roofline::RooflineCost,
        provider: "puzzle-cost",
        description: "latencies from the hardware profile: max(FLOPs/peak, bytes/bandwidth) per op group",
    }
}

/// Forces the linker to keep this crate's registrations.
pub fn link() {}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_core::burn::tensor::Device;
    use puzzle_core::deploy::{DeploymentProfile, resolve_hardware};
    use puzzle_core::kinds::Dtype;
    use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec, RopeScaling, RopeSpec};

    /// Llama-3.1-70B's shapes.
    fn llama70b() -> ModelSpec {
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
            bos_token_id: None,
            eos_token_ids: vec![],
            storage_dtype: None,
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
                        bias: false
                    },
                };
                80
            ],
        }
    }

    #[test]
    fn analytic_counts_match_hand_computed_llama70b_layer_sizes() {
        let spec = llama70b();
        let deploy = DeploymentProfile {
            weight_dtype: Dtype::Fp8,
            kv_dtype: Dtype::Bf16,
            ..Default::default()
        };
        let hw = resolve_hardware("h100-sxm", std::path::Path::new(".")).unwrap();
        let ctx = CostContext {
            parent: &spec,
            deploy: &deploy,
            hardware: &hw,
            device: Device::flex(),
            engine: Ok(&puzzle_core::engine::BurnEngine),
        };
        let attn = SubblockSpec::Attention(spec.layers[0].attention.clone());
        let ffn = SubblockSpec::Ffn(spec.layers[0].ffn.clone());
        let c = AnalyticCost
            .entry(&ctx, 0, &[attn.clone(), ffn.clone()])
            .unwrap();
        // NVIDIA's 70B block library lists 855,654,400 parameters for the parent block.
        assert_eq!(c.params, 855_654_400);
        assert_eq!(c.param_bytes, 855_654_400.0);
        // 2 (K and V) x 8 heads x 128 x 2 bytes.
        assert_eq!(c.kv_bytes_per_token, 4096.0);
        let a = AnalyticCost.entry(&ctx, 0, &[attn]).unwrap();
        assert_eq!(a.params, 8192 + 2 * 8192 * 8192 + 2 * 8192 * 1024);
        let nb = AnalyticCost.non_block(&ctx).unwrap();
        assert_eq!(nb.params, 2 * 128256 * 8192 + 8192);
        assert!(c.prefill_ms.is_empty());
    }
}
