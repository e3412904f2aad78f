//! What the benches share: the tiny parent's architecture and the GEMM rate MFU is stated
//! against.

use std::time::Instant;

use puzzle_core::burn::tensor::{Device, Distribution, Tensor};
use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec, RopeScaling, RopeSpec};

/// The tiny parent's architecture (model-zoo/tiny-parent/config.json; `vs_torch` checks that
/// they agree).
pub fn tiny_parent_spec() -> ModelSpec {
    ModelSpec {
        family: "llama".into(),
        hidden_size: 256,
        vocab_size: 4096,
        num_attention_heads: 8,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope: RopeSpec {
            theta: 10000.0,
            scaling: RopeScaling::Default,
        },
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        bos_token_id: Some(0),
        eos_token_ids: vec![0],
        storage_dtype: None,
        layers: vec![
            LayerSpec {
                attention: AttentionSpec::Gqa {
                    num_kv_heads: 4,
                    qkv_bias: false,
                    o_bias: false,
                    window: None,
                },
                ffn: FfnSpec::SwiGlu {
                    intermediate_size: 1024,
                    bias: false
                },
            };
            6
        ],
    }
}

/// f32 GEMM 1024^3 in GFLOP/s, the mean of 10 after a warm-up.
pub fn gemm_rate(device: &Device) -> f64 {
    let a = Tensor::<2>::random([1024, 1024], Distribution::Default, device);
    let b = Tensor::<2>::random([1024, 1024], Distribution::Default, device);
    let _ = a.clone().matmul(b.clone()).into_data();
    let t = Instant::now();
    for _ in 0..10 {
        let _ = a.clone().matmul(b.clone()).into_data();
    }
    2.0 * 1024f64.powi(3) * 10.0 / t.elapsed().as_secs_f64() / 1e9
}
