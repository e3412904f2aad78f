//! `puzzle cost CONFIG` and `puzzle score CONFIG`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use puzzle_pipeline::stages::{cost_stage, score_shard, score_stage, validate_additivity};

use crate::ui;

/// Measure what every variant of the library costs (Puzzle stage 4) for the run's deployment:
/// parameters and bytes (exact), KV cache per token, and prefill/decode latency per batch size
/// from the configured cost model: `measured` times each variant in context (inside the parent,
/// against the parent, round-robin) in the deployment's engine (`[deployment] engine = "burn"`
/// or `"llamacpp"`), `roofline` estimates from the hardware profile (to plan a GPU deployment
/// on a CPU). Variants the engine cannot run are left out of the library (listed). Writes
/// costs.json.
///
/// --validate N assembles N random children (and the parent), measures them end to end in the
/// same engine, round-robin, and reports how far the sum of block costs is from the measured
/// runtime, per batch size (the search assumes runtimes add up): in milliseconds, and on the
/// speed-up over the parent measured beside them (what a `>= 2x` target depends on; free of
/// the machine's drift since the cost stage).
///
/// Example: puzzle cost examples/tiny/tiny.toml --validate 3
#[derive(Args, Debug)]
pub struct CostArgs {
    /// Run config (TOML); the run folder, parent, data and stage settings come from it.
    pub config: PathBuf,
    /// Run folder (default: from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Check additivity on this many random children.
    #[arg(long)]
    pub validate: Option<usize>,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run_cost(a: CostArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let r = crate::registry::open_run(&a.config, a.run.as_deref(), &device)?;
    let mut bars = ui::Bars::new();
    for line in r.excluded()? {
        eprintln!("not in the search space: {line}");
    }
    let t = cost_stage(&r, &mut bars)?;
    let batches = &t.deployment.batch_sizes;
    let mut header = vec![
        "layer".to_string(),
        "variant".into(),
        "params".into(),
        "bytes".into(),
        "KV B/token".into(),
    ];
    for b in batches {
        header.push(format!("prefill ms b{b}"));
        header.push(format!("decode ms b{b}"));
    }
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut tab = ui::table(&hdr);
    for e in t.entries.iter().filter(|e| e.layer == 0) {
        let mut row = vec![
            e.layer.to_string(),
            e.variant.clone(),
            ui::count(e.costs.params as f64),
            ui::bytes(e.costs.param_bytes),
            format!("{:.0}", e.costs.kv_bytes_per_token),
        ];
        for b in batches {
            row.push(
                e.costs
                    .prefill_ms
                    .get(b)
                    .map_or("-".into(), |v| format!("{v:.3}")),
            );
            row.push(
                e.costs
                    .decode_ms
                    .get(b)
                    .map_or("-".into(), |v| format!("{v:.4}")),
            );
        }
        tab.add_row(row);
    }
    println!(
        "costs ({} model, engine {}, {}; layer 0 shown, all layers in {}):",
        t.model,
        t.deployment.engine,
        t.hardware.name,
        r.dir.join("costs.json").display()
    );
    println!("{tab}");
    if let Some(n) = a.validate {
        let pts = validate_additivity(&r, &t, n, 7)?;
        let mut tab = ui::table(&[
            "child",
            "batch",
            "predicted ms",
            "measured ms",
            "error",
            "speed-up error",
        ]);
        for p in &pts {
            tab.add_row(vec![
                p.child.clone(),
                p.batch.to_string(),
                format!("{:.1}", p.predicted_ms),
                format!("{:.1}", p.measured_ms),
                format!("{:+.1}%", 100.0 * p.error),
                format!("{:+.1}%", 100.0 * p.speedup_error),
            ]);
        }
        println!(
            "additivity: sum of block costs + non-block constant vs end-to-end generation ({} prompt + {} new tokens)",
            t.deployment.prefill_len, t.deployment.generation_len
        );
        println!("{tab}");
        for b in batches {
            let at: Vec<_> = pts.iter().filter(|p| p.batch == *b).collect();
            let mean = |f: &dyn Fn(&puzzle_pipeline::stages::AdditivityPoint) -> f64| {
                100.0 * at.iter().map(|p| f(p).abs()).sum::<f64>() / at.len().max(1) as f64
            };
            println!(
                "batch {b}: mean |error| {:.1}% over the parent and {n} random children in {}, {:.1}% on the speed-up over the parent (NVIDIA reports ~8% for TensorRT-LLM on H100)",
                mean(&|p| p.error),
                t.deployment.engine,
                mean(&|p| p.speedup_error),
            );
        }
        puzzle_core::fsutil::write_json(&r.dir.join("cost_validation.json"), &pts)?;
    }
    Ok(())
}

/// Score every library entry by replace-1-block (Puzzle stage 5): the parent with exactly one
/// subblock replaced runs on the validation split and is compared with the parent by the
/// configured scorers (KL divergence first by default; LM loss, top-1/top-5 agreement, hidden
/// cosine, task accuracy). The parent's activations at each layer input are cached so that a
/// replacement at layer i recomputes only layers >= i. Writes scores.json.
///
/// With --shard, scores only that shard's entries into scores.d/shard-INDEX-of-COUNT.json.
/// Without it, every entry a shard scored for the same inputs is taken from there, the rest
/// are scored, and scores.json is written (`puzzle run` does the same).
///
/// Examples:
///   puzzle score examples/tiny/tiny.toml
///   puzzle score run.toml --shard 2/4     # one task of four; merge: the same without --shard
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[command(
    verbatim_doc_comment,
    about = "Score every library entry by replace-1-block (Puzzle stage 5): the parent with exactly one subblock replaced runs on the validation split and is compared with the parent by the configured scorers (KL divergence first by default; LM loss, top-1/top-5 agreement, hidden cosine, task accuracy). The parent's activations at each layer input are cached so that a replacement at layer i recomputes only layers >= i. Writes scores.json"
)]
pub struct ScoreArgs {
    /// Run config (TOML); the run folder, parent, data and stage settings come from it.
    pub config: PathBuf,
    /// Score only the INDEX-th (0-based) of COUNT equal runs of the entries ordered by layer:
    /// INDEX/COUNT, or `auto` from Slurm's, torchrun's or a Kubernetes indexed Job's
    /// environment (as `puzzle bld --shard`).
    #[arg(long)]
    pub shard: Option<String>,
    /// Run folder (default: from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run_score(a: ScoreArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let r = crate::registry::open_run(&a.config, a.run.as_deref(), &device)?;
    let mut bars = ui::Bars::new();
    let shard = a
        .shard
        .as_deref()
        .map(puzzle_core::bld::parse_shard)
        .transpose()?;
    let t = match shard {
        Some(s) => score_shard(&r, s, &mut bars)?,
        None => score_stage(&r, &mut bars)?,
    };
    let metrics: Vec<String> = t.parent.keys().cloned().collect();
    let mut header = vec!["layer".to_string(), "variant".to_string()];
    header.extend(metrics.iter().cloned());
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut tab = ui::table(&hdr);
    let mut prow = vec!["-".to_string(), "(parent)".to_string()];
    prow.extend(metrics.iter().map(|m| format!("{:.5}", t.parent[m])));
    tab.add_row(prow);
    for e in &t.entries {
        let mut row = vec![e.layer.to_string(), e.variant.clone()];
        row.extend(
            metrics
                .iter()
                .map(|m| e.metrics.get(m).map_or("-".into(), |v| format!("{v:.5}"))),
        );
        tab.add_row(row);
    }
    println!("{tab}");
    let out = match shard {
        Some((i, n)) => r
            .stages
            .join(puzzle_pipeline::stages::SCORE_SHARDS)
            .join(format!("shard-{i}-of-{n}.json")),
        None => r.stages.join("scores.json"),
    };
    eprintln!(
        "scored {} entries in {:.1} s -> {}",
        t.entries.len(),
        t.seconds,
        out.display()
    );
    Ok(())
}
