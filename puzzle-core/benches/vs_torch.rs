//! puzzle's side of `cargo xtask bench vs-torch`: the shapes xtask/scripts/vs_torch.py times in
//! PyTorch, here in puzzle's burn runtime (flex backend, f32, `RAYON_NUM_THREADS` threads).
//! Prints one JSON object, `{"library": "puzzle", "results": {name: value}}`; xtask runs both
//! sides in turn and prints the ratios. Each case is the median of `--repeats` timed runs after
//! one warm-up:
//! - `gemm_gflops`: 1024^3 f32 matmul (the mean of 10, as `train_step` states MFU against).
//! - `tiny_train_tok_s`: a training step of the tiny parent, batch 16 x 256, cross-entropy +
//!   AdamW.
//! - `tiny_forward_tok_s`: the same model forward only, batch 16 x 256 (what scoring runs).
//! - `smollm2_block_train_tok_s`: one SmolLM2-135M decoder layer, batch 8 x 256, normalised MSE
//!   against a fixed target + AdamW (a BLD step).
//!
//! Run alone: `cargo bench -p puzzle-core --bench vs_torch -- --repeats 4`

mod common;

use std::time::Instant;

use common::{gemm_rate, tiny_parent_spec};

use puzzle_core::burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use puzzle_core::nn::{Decoder, Subblock};
use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec, RopeScaling, RopeSpec};
use puzzle_core::train::init::random_weights;
use puzzle_core::train::loss::cross_entropy;
use puzzle_core::train::optim::{AdamW, AdamWConfig};

fn median_time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2.0
    }
}

/// The same architecture Python builds from config.json, or a panic naming what differs.
fn check_against_config(spec: &ModelSpec) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../model-zoo/tiny-parent/config.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let c: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let l = &spec.layers[0];
    let (kv, inter) = match (&l.attention, &l.ffn) {
        (
            AttentionSpec::Gqa { num_kv_heads, .. },
            FfnSpec::SwiGlu {
                intermediate_size, ..
            },
        ) => (*num_kv_heads, *intermediate_size),
        _ => unreachable!("the tiny parent is a Llama"),
    };
    for (key, ours) in [
        ("hidden_size", spec.hidden_size),
        ("vocab_size", spec.vocab_size),
        ("num_attention_heads", spec.num_attention_heads),
        ("head_dim", spec.head_dim),
        ("num_hidden_layers", spec.layers.len()),
        ("num_key_value_heads", kv),
        ("intermediate_size", inter),
    ] {
        assert_eq!(
            c[key].as_u64(),
            Some(ours as u64),
            "{path}: `{key}` differs from the bench's tiny parent"
        );
    }
}

fn tiny_train(spec: &ModelSpec, ad: &Device, repeats: usize) -> f64 {
    let (b, t) = (16usize, 256usize);
    let mut model = Some(Decoder::load(spec, &random_weights(spec, 0.02, 1), ad).unwrap());
    let mut opt = AdamW::new(AdamWConfig::default());
    let ids: Vec<i64> = (0..b * (t + 1))
        .map(|i| ((i * 7919) % spec.vocab_size) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t + 1]), ad);
    let secs = median_time(repeats, || {
        let m = model.take().expect("a model");
        let logits = m.forward(ids.clone().narrow(1, 0, t));
        let loss = cross_entropy(logits, ids.clone().narrow(1, 1, t));
        let grads = loss.backward();
        let m = opt.step(m, &grads, 1e-3).0;
        // Wait for the update, as torch's step returns with it done.
        let _ = m.embed_tokens.val().inner().slice([0..1, 0..1]).into_data();
        model = Some(m);
    });
    (b * t) as f64 / secs
}

fn tiny_forward(spec: &ModelSpec, device: &Device, repeats: usize) -> f64 {
    let (b, t) = (16usize, 256usize);
    let model = Decoder::load(spec, &random_weights(spec, 0.02, 1), device).unwrap();
    let ids: Vec<i64> = (0..b * t)
        .map(|i| ((i * 7919) % spec.vocab_size) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let secs = median_time(repeats, || {
        let _ = model.forward(ids.clone()).sum().into_data();
    });
    (b * t) as f64 / secs
}

/// SmolLM2-135M's layer shapes (model-zoo/smollm2/hf/config.json), one layer; the vocabulary
/// is cut to 64 because only the layer is trained.
fn smollm2_block_spec() -> ModelSpec {
    ModelSpec {
        family: "llama".into(),
        hidden_size: 576,
        vocab_size: 64,
        num_attention_heads: 9,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope: RopeSpec {
            theta: 100000.0,
            scaling: RopeScaling::Default,
        },
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
        storage_dtype: None,
        layers: vec![LayerSpec {
            attention: AttentionSpec::Gqa {
                num_kv_heads: 3,
                qkv_bias: false,
                o_bias: false,
                window: None,
            },
            ffn: FfnSpec::SwiGlu {
                intermediate_size: 1536,
                bias: false,
            },
        }],
    }
}

fn smollm2_block(ad: &Device, repeats: usize) -> f64 {
    let (b, t) = (8usize, 256usize);
    let spec = smollm2_block_spec();
    let mut model = Some(Decoder::load(&spec, &random_weights(&spec, 0.02, 1), ad).unwrap());
    let mut opt = AdamW::new(AdamWConfig::default());
    let x = Tensor::<3>::random([b, t, 576], Distribution::Normal(0.0, 0.5), ad);
    let target = Tensor::<3>::random([b, t, 576], Distribution::Normal(0.0, 0.5), ad);
    let denom = target.clone().powf_scalar(2.0).mean().add_scalar(1e-6);
    let secs = median_time(repeats, || {
        let m = model.take().expect("a model");
        let ctx = m.context(b, 0, t, &[]);
        let y = m.layers[0].forward(x.clone(), &ctx, None);
        let loss = (y - x.clone() - target.clone())
            .powf_scalar(2.0)
            .mean()
            .div(denom.clone());
        let grads = loss.backward();
        let m = opt.step(m, &grads, 1e-3).0;
        // Wait for the update (a forward through the updated FFN reads its weights).
        let _ = m.layers[0]
            .ffn
            .forward(x.clone().slice([0..1, 0..1, 0..576]), &ctx, None)
            .into_data();
        model = Some(m);
    });
    (b * t) as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeats = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .map(|r| r.parse().expect("--repeats N"))
        .unwrap_or(4usize);
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let spec = tiny_parent_spec();
    check_against_config(&spec);
    let results = serde_json::json!({
        "gemm_gflops": gemm_rate(&device),
        "tiny_train_tok_s": tiny_train(&spec, &ad, repeats),
        "tiny_forward_tok_s": tiny_forward(&spec, &device, repeats),
        "smollm2_block_train_tok_s": smollm2_block(&ad, repeats),
    });
    // Model FLOPs per token of each case (a training step is three forwards' worth), for the
    // MFU xtask states against the faster GEMM of the two libraries.
    let per_token = |s: &ModelSpec, b: usize, t: usize| s.forward_flops(b, 0, t) / (b * t) as f64;
    let block = smollm2_block_spec();
    let head_only = ModelSpec {
        layers: vec![],
        ..block.clone()
    };
    let flops = serde_json::json!({
        "tiny_train_tok_s": 3.0 * per_token(&spec, 16, 256),
        "tiny_forward_tok_s": per_token(&spec, 16, 256),
        "smollm2_block_train_tok_s": 3.0 * (per_token(&block, 8, 256) - per_token(&head_only, 8, 256)),
    });
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "{}",
        serde_json::json!({
            "library": "puzzle",
            "version": format!("puzzle {}, burn 0.22.1 flex", env!("CARGO_PKG_VERSION")),
            "threads": threads,
            "results": results,
            "flops_per_token": flops,
        })
    );
}
