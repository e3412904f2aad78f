//! The library, costs and scores of the tiny parent (model-zoo/tiny-parent, trained here) on its
//! own corpus: BLD improves every trained entry on held-out activations; the parent's own
//! variants score zero; an early no-op hurts more than a 75%-wide FFN; roofline costs are
//! ordered as the work is.

mod common;
use common::root;

use puzzle_core::bld::{EntrySource, read_library};
use puzzle_core::burn::tensor::Device;
use puzzle_core::progress::Silent;
use puzzle_pipeline::Run;
use puzzle_pipeline::pipeline::bld_shard;
use puzzle_pipeline::stages::{cost_stage, score_stage};

#[test]
fn tiny_parent_library_costs_and_scores_behave() {
    puzzle_llama_ops::link();
    puzzle_cost::link();
    puzzle_scorers::link();
    let dir = tempfile::tempdir().unwrap();
    let zoo = root().join("model-zoo");
    let cfg = format!(
        r#"
[parent]
path = "{zoo}/tiny-parent"
[data]
paths = ["{zoo}/corpora/kjv.txt.gz", "{zoo}/corpora/shakespeare.txt.gz"]
[space]
ffn_fractions = [0.75, 0.5, 0.25]
[bld]
tokens = 16384
seq_len = 128
batch_size = 8
lr = 1e-3
warmup_steps = 2
checkpoint_every = 100
eval_sequences = 16
calibration_sequences = 16
[deployment]
batch_sizes = [1, 8]
prefill_len = 128
generation_len = 32
[cost]
model = "roofline"
[score]
metrics = ["kl", "lm_loss"]
sequences = 16
seq_len = 128
"#,
        zoo = zoo.display()
    );
    std::fs::write(dir.path().join("run.toml"), cfg).unwrap();
    let run = Run::open(&dir.path().join("run.toml"), None, &Device::flex()).unwrap();
    bld_shard(&run, (0, 1), &mut Silent).unwrap();

    // BLD lowers the held-out normalised MSE of every trained entry below its init.
    let lib = read_library(&run.library()).unwrap();
    let trained: Vec<_> = lib
        .iter()
        .filter(|e| e.source == EntrySource::Trained)
        .collect();
    assert_eq!(
        trained.len(),
        6 * 7,
        "kv2, kv1, linear attention and 768, 512, 256, linear FFN per layer"
    );
    for e in &trained {
        assert!(
            e.nmse_final < e.nmse_init,
            "L{} {}: normalised MSE {:.4} after BLD, {:.4} at init",
            e.key.layer,
            e.key.id(),
            e.nmse_final,
            e.nmse_init
        );
    }

    let scores = score_stage(&run, &mut Silent).unwrap();
    let kl = |layer: usize, v: &str| scores.get(layer, v).unwrap()["kl"];
    for layer in 0..6 {
        assert_eq!(kl(layer, "attn:gqa(kv=4)"), 0.0);
        assert_eq!(kl(layer, "ffn:width(1024)"), 0.0);
        assert_eq!(
            scores.get(layer, "ffn:width(1024)").unwrap()["lm_loss"],
            scores.parent["lm_loss"]
        );
    }
    // Removing the first layer's FFN hurts more than keeping 75% of it.
    assert!(
        kl(0, "ffn:noop") > kl(0, "ffn:width(768)"),
        "{} vs {}",
        kl(0, "ffn:noop"),
        kl(0, "ffn:width(768)")
    );

    // Roofline costs are ordered as the work is: no-op < linear < narrow < parent (measured
    // costs are checked for adding up, not for timings, in cost_score.rs).
    let costs = cost_stage(&run, &mut Silent).unwrap();
    for (b, which) in [(8usize, "prefill"), (8, "decode")] {
        let ms = |v: &str| {
            let c = costs.get(0, v).unwrap();
            if which == "prefill" {
                c.prefill_ms[&b]
            } else {
                c.decode_ms[&b]
            }
        };
        let ffn = [
            "ffn:noop",
            "ffn:linear",
            "ffn:width(256)",
            "ffn:width(1024)",
        ]
        .map(ms);
        assert!(
            ffn.windows(2).all(|w| w[0] < w[1]),
            "{which} b{b} FFN costs not increasing: {ffn:?}"
        );
        let attn = ["attn:noop", "attn:linear", "attn:gqa(kv=4)"].map(ms);
        assert!(
            attn.windows(2).all(|w| w[0] < w[1]),
            "{which} b{b} attention costs not increasing: {attn:?}"
        );
    }
}
