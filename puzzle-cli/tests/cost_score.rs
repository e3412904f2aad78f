//! Cost and score stages on the tiny-llama fixture: exact zero KL for the parent's own variants,
//! the prefix cache changes nothing but time, analytic bytes add up to the checkpoint, and the
//! in-context measured costs in llama.cpp: the engine's capability table narrows the library,
//! and block costs add up to the parent by construction.

use std::path::Path;

mod common;
use common::root;

use puzzle_core::bld::read_library;
use puzzle_core::burn::tensor::Device;
use puzzle_core::data::Split;
use puzzle_core::progress::Silent;
use puzzle_core::score::ScoreConfig;
use puzzle_pipeline::Run;
use puzzle_pipeline::pipeline::bld_shard;
use puzzle_pipeline::stages::{SCORE_SHARDS, cost_stage, score_entries, score_shard, score_stage};

fn link() {
    puzzle_llama_ops::link();
    puzzle_cost::link();
    puzzle_scorers::link();
}

fn setup(dir: &Path, cost_model: &str, weight_dtype: &str) -> Run {
    setup_on(dir, cost_model, weight_dtype, "burn")
}

fn setup_on(dir: &Path, cost_model: &str, weight_dtype: &str, engine: &str) -> Run {
    link();
    common::write_small_corpus(dir);
    let cfg = format!(
        r#"
[parent]
path = "{}"
[data]
paths = ["corpus.txt"]
validation_fraction = 0.1
test_fraction = 0.1
[space]
granularity = 32
ffn_fractions = [0.5]
[bld]
tokens = 2048
seq_len = 32
batch_size = 4
checkpoint_every = 100
eval_sequences = 4
calibration_sequences = 4
[deployment]
engine = "{engine}"
batch_sizes = [1, 2]
prefill_len = 16
generation_len = 8
weight_dtype = "{weight_dtype}"
[cost]
model = "{cost_model}"
[score]
sequences = 8
seq_len = 32
batch_size = 4
"#,
        root().join("fixtures/hf/tiny-llama").display()
    );
    std::fs::write(dir.join("run.toml"), cfg).unwrap();
    let run = Run::open(&dir.join("run.toml"), None, &Device::flex()).unwrap();
    bld_shard(&run, (0, 1), &mut Silent).unwrap();
    run
}

#[test]
fn parent_variants_score_exactly_zero_kl_and_the_parent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let run = setup(dir.path(), "analytic", "fp32");
    let scores = score_stage(&run, &mut Silent).unwrap();
    let parent_loss = scores.parent["lm_loss"];
    let mut seen = 0;
    for e in &scores.entries {
        if e.variant == "attn:gqa(kv=2)" || e.variant == "ffn:width(176)" {
            assert_eq!(e.metrics["kl"], 0.0, "L{} {}", e.layer, e.variant);
            assert_eq!(
                e.metrics["lm_loss"], parent_loss,
                "L{} {}",
                e.layer, e.variant
            );
            assert_eq!(e.metrics["top1"], 1.0);
            seen += 1;
        } else {
            assert!(e.metrics["kl"] > 0.0, "L{} {}", e.layer, e.variant);
        }
    }
    assert_eq!(seen, 8);
}

#[test]
fn score_shards_merge_into_the_table_one_pass_writes() {
    let dir = tempfile::tempdir().unwrap();
    let run = setup(dir.path(), "analytic", "fp32");
    let whole = score_stage(&run, &mut Silent).unwrap();
    let strip = |mut t: puzzle_core::score::ScoreTable| {
        t.seconds = 0.0;
        t
    };
    let whole = strip(whole);
    std::fs::remove_file(run.dir.join("scores.json")).unwrap();
    // Every shard of 3, then the merge: no entry is scored again (each shard's file is what
    // the merged table's entries come from; they are written once).
    let mut n = 0;
    for i in 0..3 {
        let part = score_shard(&run, (i, 3), &mut Silent).unwrap();
        assert_eq!(part.parent, whole.parent);
        assert_eq!(part.provenance["shard"], format!("{i}/3"));
        n += part.entries.len();
    }
    assert_eq!(n, whole.entries.len(), "the shards partition the entries");
    let merged = strip(score_stage(&run, &mut Silent).unwrap());
    assert_eq!(merged, whole, "three shards merged");
    // One shard of 2 only: the merge scores the other half itself.
    std::fs::remove_file(run.dir.join("scores.json")).unwrap();
    std::fs::remove_dir_all(run.dir.join(SCORE_SHARDS)).unwrap();
    score_shard(&run, (1, 2), &mut Silent).unwrap();
    assert_eq!(
        strip(score_stage(&run, &mut Silent).unwrap()),
        whole,
        "half from a shard"
    );
    // A shard file for other inputs (another [score] config) is not taken.
    let path = run.dir.join(SCORE_SHARDS).join("shard-1-of-2.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    t["provenance"]["config"] = "other".into();
    t["entries"][0]["metrics"]["kl"] = 1234.5.into();
    std::fs::write(&path, t.to_string()).unwrap();
    std::fs::remove_file(run.dir.join("scores.json")).unwrap();
    assert_eq!(
        strip(score_stage(&run, &mut Silent).unwrap()),
        whole,
        "a foreign shard file is ignored"
    );
}

#[test]
fn prefix_cache_gives_the_same_scores_as_full_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let run = setup(dir.path(), "analytic", "fp32");
    let metas = read_library(&run.library()).unwrap();
    let windows = run.windows(Split::Validation, 32).unwrap();
    let mut cfg = run.config.score.clone();
    let score = |cfg: &ScoreConfig| {
        score_entries(
            &run,
            &metas,
            &windows,
            &[],
            Default::default(),
            cfg,
            &mut Silent,
        )
        .unwrap()
    };
    let cached = score(&cfg);
    cfg.no_prefix_cache = true;
    let full = score(&cfg);
    eprintln!(
        "scoring {} entries: prefix cache {:.3} s, full recompute {:.3} s ({:.2}x)",
        metas.len(),
        cached.seconds,
        full.seconds,
        full.seconds / cached.seconds
    );
    for (a, b) in cached.entries.iter().zip(&full.entries) {
        for (k, v) in &a.metrics {
            assert!(
                (v - b.metrics[k]).abs() <= 1e-5 * v.abs().max(1.0),
                "L{} {} {k}: {v} vs {}",
                a.layer,
                a.variant,
                b.metrics[k]
            );
        }
    }
}

#[test]
fn analytic_bytes_of_the_parent_equal_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = setup(dir.path(), "analytic", "fp32");
    let costs = cost_stage(&run, &mut Silent).unwrap();
    let spec = &run.parent.spec;
    let mut total = costs.non_block.param_bytes;
    for layer in 0..spec.layers.len() {
        for kind in puzzle_core::variant::SubblockKind::ALL {
            total += costs
                .get(layer, &spec.variant_of(layer, kind).to_string())
                .unwrap()
                .param_bytes;
        }
    }
    // The fixture is stored in f32: data bytes = file size minus the 8-byte length and header.
    let f = run.config.parent.path.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(total as usize, bytes.len() - 8 - header);
    // Roofline costs are ordered as the work is: the parent FFN costs more than half of it.
    let mut c = run.config.clone();
    c.cost.model = "roofline".into();
    let hw = puzzle_core::deploy::resolve_hardware("h100-sxm", Path::new(".")).unwrap();
    let ctx = puzzle_core::cost::CostContext {
        parent: spec,
        deploy: &c.deployment,
        hardware: &hw,
        device: Device::flex(),
        engine: Ok(&puzzle_core::engine::BurnEngine),
    };
    let m = run.plugins.cost_models.get("roofline").unwrap();
    let spec_of = |v: &str| {
        puzzle_pipeline::stages::entry_specs(
            &run.plugins,
            spec,
            &puzzle_core::bld::EntryKey {
                layer: 0,
                variants: vec![v.parse().unwrap()],
            },
        )
        .unwrap()
    };
    let full = m.entry(&ctx, 0, &spec_of("ffn:width(176)")).unwrap();
    let half = m.entry(&ctx, 0, &spec_of("ffn:width(96)")).unwrap();
    assert!(full.decode_ms[&1] > half.decode_ms[&1] && full.prefill_ms[&2] > half.prefill_ms[&2]);
}

#[test]
fn llamacpp_runs_narrow_the_library_and_measured_costs_add_up_to_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let run = setup_on(dir.path(), "measured", "fp32", "llamacpp");
    let keys = run.plan().unwrap();
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|k| k.id() != "ffn:linear"),
        "llama.cpp cannot load a linear FFN"
    );
    assert!(
        keys.iter().any(|k| k.id() == "ffn:noop"),
        "a no-op FFN is re-expressed, kept"
    );
    let excluded = run.excluded().unwrap();
    assert_eq!(
        excluded,
        vec![format!(
            "ffn:linear: llamacpp cannot run a linear FFN ({} layers)",
            run.parent.spec.layers.len()
        )]
    );
    let costs = cost_stage(&run, &mut Silent).unwrap();
    assert_eq!(costs.entries.len(), keys.len());
    let spec = &run.parent.spec;
    for b in [1, 2] {
        for e in &costs.entries {
            let d = e.costs.decode_ms[&b];
            assert!(d.is_finite(), "L{} {} decode at b{b}", e.layer, e.variant);
            if e.variant.ends_with(":noop") {
                assert_eq!(d, 0.0, "a no-op costs nothing in context");
            }
        }
        // Non-block plus the parent's own entries is the parent's measured step (positive).
        let mut parent = costs.non_block.decode_ms[&b];
        for layer in 0..spec.layers.len() {
            for kind in puzzle_core::variant::SubblockKind::ALL {
                parent += costs
                    .get(layer, &spec.variant_of(layer, kind).to_string())
                    .unwrap()
                    .decode_ms[&b];
            }
        }
        assert!(parent > 0.0);
    }
    // The additivity check measures the parent and random children (no-op FFNs after attention
    // among them, which the GGUF re-expresses) in llama.cpp.
    let pts = puzzle_pipeline::stages::validate_additivity(&run, &costs, 2, 3).unwrap();
    assert_eq!(pts.len(), 3 * 2);
    // Each prediction is, by hand, the non-block request time plus the request time of every
    // entry the child lists; the errors are the stated ratios of those numbers.
    let d = &costs.deployment;
    for (i, p) in pts.iter().enumerate() {
        assert!(p.measured_ms > 0.0, "{p:?}");
        assert_eq!(p.layers.len(), spec.layers.len());
        let mut want = costs.non_block.runtime_ms(p.batch, d).unwrap();
        for (layer, ids) in p.layers.iter().enumerate() {
            let (a, f) = ids.split_once(" + ").unwrap();
            for id in [a, f] {
                want += costs
                    .get(layer, id)
                    .unwrap()
                    .runtime_ms(p.batch, d)
                    .unwrap();
            }
        }
        assert!(
            (p.predicted_ms - want).abs() <= 1e-9 * want,
            "{p:?} vs {want}"
        );
        assert!((p.error - (want - p.measured_ms) / p.measured_ms).abs() < 1e-12);
        // The parent opens each batch's points; the speed-up error is relative to it.
        let parent = &pts[i - i % 3];
        assert_eq!(parent.child, "parent");
        let su =
            (parent.predicted_ms / p.predicted_ms) / (parent.measured_ms / p.measured_ms) - 1.0;
        assert!((p.speedup_error - su).abs() < 1e-12, "{p:?}");
    }
    assert!(
        pts.iter()
            .any(|p| p.child != "parent" && p.layers != pts[0].layers)
    );
}
