//! Runtime benchmark of the Llama runtime on SmolLM2-135M (CPU): prefill and decode tokens/s at
//! batch 1 and 8, with model-FLOPs utilisation against the f32 GEMM rate measured in the same
//! process, and where decode time goes.
//!
//! Run: `cargo xtask bench runtime` (fetches SmolLM2 first) or
//! `cargo bench -p puzzle-llama --bench runtime` once `model-zoo/smollm2/hf` exists.

use std::path::Path;
use std::time::Instant;

use puzzle_core::burn::tensor::{Device, Distribution, Tensor};
use puzzle_core::model::load_model;
use puzzle_core::nn::{KvCache, LayerKv, Subblock, ids_tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sync<const D: usize>(t: Tensor<D>) {
    // Reading the data forces the computation to finish.
    let _ = t.into_data();
}

/// f32 GEMM GFLOP/s for `[m, k] x [k, n]`.
fn gemm_rate(device: &Device, m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let a = Tensor::<2>::random([m, k], Distribution::Default, device);
    let b = Tensor::<2>::random([k, n], Distribution::Default, device);
    sync(a.clone().matmul(b.clone()));
    let mut runs = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            sync(a.clone().matmul(b.clone()));
        }
        runs.push(2.0 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    median(runs)
}

fn main() {
    puzzle_llama::link();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("model-zoo/smollm2/hf");
    if !dir.join("config.json").is_file() {
        eprintln!(
            "{} is missing: run `cargo xtask fetch-smollm2`",
            dir.display()
        );
        std::process::exit(2);
    }
    let device = Device::flex();
    println!(
        "# runtime benchmark: SmolLM2-135M-Instruct (f32 compute), {}",
        puzzle_core::device::describe(&device)
    );
    let gemm_square = gemm_rate(&device, 1024, 1024, 1024, 5);
    let gemm_model = gemm_rate(&device, 2048, 576, 1536, 5);
    let peak = gemm_square.max(gemm_model);
    println!(
        "f32 GEMM: 1024^3 {gemm_square:.1} GFLOP/s; [2048x576]x[576x1536] {gemm_model:.1} GFLOP/s (reference rate {peak:.1})"
    );

    let m = load_model(&dir, &device).expect("SmolLM2 loads");
    let spec = m.spec.clone();
    let head_flops = 2.0 * (spec.vocab_size * spec.hidden_size) as f64;
    let prompt_len = 256;
    println!("\n| measurement | batch | tokens/s | GFLOP/s | MFU |\n|---|---|---|---|---|");
    for batch in [1usize, 8] {
        let rows: Vec<Vec<u32>> = (0..batch)
            .map(|r| {
                (0..prompt_len)
                    .map(|i| ((i * 7 + r * 13) % 40000 + 100) as u32)
                    .collect()
            })
            .collect();
        // Prefill: the whole prompt, logits of the last position only (as generation does).
        let mut prefill = vec![];
        let mut cache = KvCache::new(spec.layers.len(), vec![0; batch]);
        for _ in 0..3 {
            cache = KvCache::new(spec.layers.len(), vec![0; batch]);
            let t = Instant::now();
            sync(m.decoder.step(ids_tensor(&rows, &device), &mut cache, true));
            prefill.push(t.elapsed().as_secs_f64());
        }
        let secs = median(prefill);
        let flops = spec.forward_flops(batch, 0, prompt_len)
            - head_flops * ((prompt_len - 1) * batch) as f64;
        println!(
            "| prefill {prompt_len} | {batch} | {:.0} | {:.1} | {:.1}% |",
            (batch * prompt_len) as f64 / secs,
            flops / secs / 1e9,
            100.0 * flops / secs / 1e9 / peak
        );
        // Decode: 32 steps after the prompt.
        let steps = 32;
        let mut per_step = vec![];
        let mut flops = 0.0;
        let next: Vec<Vec<u32>> = (0..batch).map(|r| vec![(r * 31 + 5) as u32]).collect();
        for s in 0..steps {
            let t = Instant::now();
            sync(m.decoder.step(ids_tensor(&next, &device), &mut cache, true));
            per_step.push(t.elapsed().as_secs_f64());
            flops += spec.forward_flops(batch, prompt_len + s, 1);
        }
        let total: f64 = per_step.iter().sum();
        println!(
            "| decode (ctx {prompt_len}-{}) | {batch} | {:.1} | {:.1} | {:.1}% |",
            prompt_len + steps,
            (batch * steps) as f64 / total,
            flops / total / 1e9,
            100.0 * flops / total / 1e9 / peak
        );
    }

    // Where decode time goes: each piece timed alone over many repetitions, attention with a
    // KV cache of 256 positions.
    let l = spec.layers.len() as f64;
    let kvh = spec.kv_heads(0);
    for batch in [1usize, 8] {
        let x = Tensor::<3>::random([batch, 1, spec.hidden_size], Distribution::Default, &device);
        let reps = 100;
        let layer = &m.decoder.layers[0];
        let ctx = m.decoder.context(batch, prompt_len, 1, &[]);
        let kv = LayerKv {
            k: Some(Tensor::random(
                [batch, kvh, prompt_len, spec.head_dim],
                Distribution::Default,
                &device,
            )),
            v: Some(Tensor::random(
                [batch, kvh, prompt_len, spec.head_dim],
                Distribution::Default,
                &device,
            )),
        };
        let time = |f: &dyn Fn()| {
            f();
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let ffn = time(&|| sync(layer.ffn.forward(x.clone(), &ctx, None)));
        let attn = time(&|| {
            let mut kv = kv.clone();
            sync(layer.attention.forward(x.clone(), &ctx, Some(&mut kv)))
        });
        let head = time(&|| sync(m.decoder.logits(x.clone())));
        let total = l * (ffn + attn) + head;
        println!(
            "\ndecode batch {batch}, one step at context {prompt_len}, pieces timed alone ({:.1} ms/step predicted):",
            total * 1e3
        );
        println!(
            "  FFN  {:>8.1} us/layer x {l} = {:>5.1}%",
            ffn * 1e6,
            100.0 * l * ffn / total
        );
        println!(
            "  attn {:>8.1} us/layer x {l} = {:>5.1}%",
            attn * 1e6,
            100.0 * l * attn / total
        );
        println!(
            "  head {:>8.1} us          = {:>5.1}% ({:.1} GB/s of f32 embedding reads)",
            head * 1e6,
            100.0 * head / total,
            (spec.vocab_size * spec.hidden_size * 4) as f64 / head / 1e9
        );
    }
}
