//! How llama.cpp's CPU threads are provided, measured where it matters: a served request of the
//! tiny parent (128 prompt tokens, 64 decode steps) at batch 1 and 8, f32, every core.
//!
//! Two ways of running the same GGUF, alternating request by request in one process (which
//! goes first alternates too) so that a machine slowing down hits both alike: `pooled` (one
//! ggml thread pool for the process, attached to every context and paused between requests:
//! what the `llamacpp` engine does; `llama-cli` also attaches a pool) and
//! `per graph` (no pool attached: ggml starts and joins its worker threads for every graph,
//! which is what this build did before; stock llama.cpp builds use OpenMP's persistent team
//! instead). Prints each mode's median request time, decode tokens/s and the ratio.
//!
//! Run: `cargo bench -p puzzle-llama-ops --features llamacpp --bench serve [-- ROUNDS]`.

use std::path::Path;

use puzzle_core::eval::speed::median;
use puzzle_core::gguf::GgmlType;
use puzzle_core::weights::SafetensorsWeights;
use puzzle_llama_ops::gguf_export::{Vocab, write_model_gguf};
use puzzle_llamacpp::LlamaCpp;

fn main() {
    puzzle_llama::link();
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("model-zoo/tiny-parent");
    let plugins = puzzle_core::Plugins::builtin();
    let spec = plugins
        .read_spec(&dir)
        .expect("the tiny parent's config.json reads");
    let weights =
        SafetensorsWeights::open(&dir.join("model.safetensors")).expect("its weights open");
    let tmp = tempfile::tempdir().expect("a temp folder");
    let gguf = tmp.path().join("parent.gguf");
    write_model_gguf(&spec, &weights, Vocab::None, "bench", &gguf, GgmlType::F32)
        .expect("the GGUF export");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pooled = LlamaCpp::load(&gguf, threads).expect("llama.cpp loads it");
    let per_graph = LlamaCpp::load(&gguf, threads)
        .expect("llama.cpp loads it")
        .with_pool_per_graph();
    let (prefill, steps) = (128, 64);
    println!(
        "# llama.cpp thread pools: tiny parent, f32, {threads} threads, {prefill} prompt + {steps} generated tokens, {rounds} rounds (alternating)"
    );
    println!(
        "\n| batch | pooled ms | per-graph ms | pooled decode tok/s | per-graph decode tok/s | per-graph / pooled |\n|---|---|---|---|---|---|"
    );
    for batch in [1usize, 8] {
        let mut t = [Vec::new(), Vec::new()];
        let mut decode = [Vec::new(), Vec::new()];
        for round in 0..=rounds {
            let mut order = [(0, &pooled), (1, &per_graph)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (i, m) in order {
                let (p, total) = m.request(batch, prefill, steps).expect("a request");
                // Round 0 warms both up.
                if round > 0 {
                    t[i].push(total);
                    decode[i].push((batch * steps) as f64 / ((total - p) / 1e3));
                }
            }
        }
        let [tp, tg] = t.map(median);
        let [dp, dg] = decode.map(median);
        println!(
            "| {batch} | {tp:.1} | {tg:.1} | {dp:.0} | {dg:.0} | {:.2}x |",
            tg / tp
        );
    }
}
