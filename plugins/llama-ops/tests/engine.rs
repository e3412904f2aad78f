//! llama.cpp as a measured engine: every shape the search can produce for it loads and serves
//! batched requests (no-op attention everywhere, no-op FFNs it re-expresses, linear attention),
//! what it cannot run is refused with the layer named, and the deployment's dtypes map to
//! llama.cpp's types. No timing is asserted (timings are benchmarks' business).
#![cfg(feature = "llamacpp")]

use puzzle_core::burn::tensor::Device;
use puzzle_core::deploy::DeploymentProfile;
use puzzle_core::engine::Engine;
use puzzle_core::kinds::Dtype;
use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec, RopeScaling, RopeSpec};
use puzzle_core::train::init::random_weights;
use puzzle_llama_ops::engine::LlamaCppEngine;

fn gqa(kv: usize) -> AttentionSpec {
    AttentionSpec::Gqa {
        num_kv_heads: kv,
        qkv_bias: false,
        o_bias: false,
        window: None,
    }
}

fn swiglu(i: usize) -> FfnSpec {
    FfnSpec::SwiGlu {
        intermediate_size: i,
        bias: false,
    }
}

fn spec(layers: Vec<LayerSpec>) -> ModelSpec {
    ModelSpec {
        family: "llama".into(),
        hidden_size: 64,
        vocab_size: 96,
        num_attention_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope: RopeSpec {
            theta: 10000.0,
            scaling: RopeScaling::Default,
        },
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
        storage_dtype: None,
        layers,
    }
}

fn layer(attention: AttentionSpec, ffn: FfnSpec) -> LayerSpec {
    LayerSpec { attention, ffn }
}

fn deploy(weights: Dtype, kv: Dtype) -> DeploymentProfile {
    DeploymentProfile {
        weight_dtype: weights,
        kv_dtype: kv,
        batch_sizes: vec![1, 3],
        prefill_len: 12,
        generation_len: 5,
        ..Default::default()
    }
}

#[test]
fn every_shape_the_search_makes_for_llama_cpp_serves_batched_requests() {
    let shapes = [
        vec![layer(gqa(2), swiglu(128)); 3],
        // The no-op models the in-context costs subtract.
        vec![
            layer(AttentionSpec::NoOp, swiglu(128)),
            layer(gqa(2), swiglu(128)),
            layer(AttentionSpec::NoOp, swiglu(128)),
        ],
        vec![layer(gqa(2), FfnSpec::NoOp); 3],
        vec![
            layer(gqa(1), FfnSpec::NoOp),
            layer(AttentionSpec::Linear, swiglu(32)),
            layer(AttentionSpec::NoOp, FfnSpec::NoOp),
            layer(gqa(2), FfnSpec::NoOp),
        ],
    ];
    for (i, layers) in shapes.into_iter().enumerate() {
        let s = spec(layers);
        let w = random_weights(&s, 0.02, i as u64);
        for (wt, kv) in [
            (Dtype::Fp32, Dtype::Fp32),
            (Dtype::Bf16, Dtype::Fp16),
            (Dtype::Int8, Dtype::Int8),
            // llama.cpp's Q4_K_M by its quantiser; widths of 32 and 128 are not whole
            // 256-value super-blocks, so it falls back per tensor, as it must serve them.
            (Dtype::Int4, Dtype::Fp16),
        ] {
            let d = deploy(wt, kv);
            let m = LlamaCppEngine
                .load(&s, &w, &d, &Device::flex())
                .unwrap_or_else(|e| panic!("shape {i} ({wt}, KV {kv}): {e}"));
            for b in d.batch_sizes.clone() {
                let (p, t) = m.request(b, d.prefill_len, d.generation_len).unwrap();
                assert!(p > 0.0 && t >= p, "shape {i} b{b}: prefill {p} total {t}");
            }
        }
    }
}

#[test]
fn what_llama_cpp_cannot_run_is_refused_with_the_layer_named() {
    let s = spec(vec![
        layer(gqa(2), swiglu(128)),
        layer(gqa(2), FfnSpec::Linear),
    ]);
    let w = random_weights(&s, 0.02, 1);
    let e = LlamaCppEngine
        .load(&s, &w, &deploy(Dtype::Fp32, Dtype::Fp32), &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layer 1") && e.contains("linear FFN"), "{e}");
    let e = LlamaCppEngine
        .load(
            &spec(vec![layer(gqa(2), swiglu(128))]),
            &w,
            &deploy(Dtype::Fp4, Dtype::Fp32),
            &Device::flex(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("deployment.weight_dtype = \"fp4\""), "{e}");
    // llama.cpp's Q8_0 KV cache needs heads of whole 32-value blocks.
    let mut s = spec(vec![layer(gqa(2), swiglu(128))]);
    s.head_dim = 16;
    s.num_attention_heads = 4;
    let e = LlamaCppEngine
        .load(
            &s,
            &random_weights(&s, 0.02, 3),
            &deploy(Dtype::Fp32, Dtype::Int8),
            &Device::flex(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("head size 16") && e.contains("kv_dtype"), "{e}");
    // No attention anywhere leaves llama.cpp an empty KV cache, which it cannot allocate.
    let s = spec(vec![layer(AttentionSpec::NoOp, swiglu(128)); 2]);
    let e = LlamaCppEngine
        .load(
            &s,
            &random_weights(&s, 0.02, 2),
            &deploy(Dtype::Fp32, Dtype::Fp32),
            &Device::flex(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("without any KV-cache attention"), "{e}");
}
