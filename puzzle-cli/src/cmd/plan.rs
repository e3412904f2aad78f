//! `puzzle plan CONFIG`: what a run would cost, before it runs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use puzzle_core::kinds::Dtype;
use puzzle_pipeline::config::RunConfig;
use puzzle_pipeline::plan::{PlanOptions, human, plan};

use crate::{registry, ui};

/// Plan a run before running it: every stage's work (library entries, tokens, timed
/// requests), its matmul FLOPs, the peak memory of one task and its device-hours on a hardware
/// profile at an assumed MFU. Needs only the parent's config.json (no weights), so it plans a
/// 70B parent on a laptop.
///
/// The numbers model this implementation (f32 tensors, one parent forward per BLD task and
/// batch, the prefix-cached scorer, the cost model's own count of timed requests); the child
/// and baselines are costed as the parent, so distillation and evaluation are upper bounds.
/// `--json` prints the same plan with every field.
///
/// Examples:
///   puzzle plan examples/tiny/tiny.toml --hardware cpu-dev
///   puzzle plan examples/llama70b/paper.toml --hardware h100-sxm --gpus 8
///   puzzle plan my.toml --parent /ckpt/Llama-3.1-8B --hardware a100-80gb --gpus 16 --mfu 0.35
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Plan a run before running it: each stage's work, FLOPs, memory per task and device-hours on a hardware profile, from the parent's config.json alone"
)]
pub struct PlanArgs {
    /// Run config (TOML).
    pub config: PathBuf,
    /// Parent folder to plan for instead of the config's `[parent] path` (only its
    /// config.json is read, and tokenizer.json when there, to count task tokens).
    #[arg(long, value_name = "DIR")]
    pub parent: Option<PathBuf>,
    /// Hardware the training stages run on: a built-in profile (cpu-dev, h100-sxm, h200,
    /// a100-80gb, l40s) or a profile TOML file.
    #[arg(long, default_value = "h100-sxm")]
    pub hardware: String,
    /// Devices: BLD runs one task (shard) on each.
    #[arg(long, default_value_t = 8)]
    pub gpus: usize,
    /// Model-FLOPs utilisation assumed for the training and scoring stages.
    #[arg(long, default_value_t = 0.4)]
    pub mfu: f64,
    /// The dtype whose peak FLOP rate the stages run at (bf16, fp16, tf32, fp32, fp8).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PlanArgs) -> Result<()> {
    let mut config = RunConfig::load(&a.config)?;
    if let Some(p) = &a.parent {
        config.parent.path = p.clone();
    }
    let plugins = registry::plugins();
    let parent_dir = config.parent.path.clone();
    let spec = plugins.read_spec(&parent_dir).with_context(|| {
        format!(
            "reading the parent's config.json in {}",
            parent_dir.display()
        )
    })?;
    let dtype: Dtype = a.dtype.parse()?;
    let hardware = puzzle_core::deploy::resolve_hardware(&a.hardware, std::path::Path::new("."))?;
    let p = plan(
        &config,
        &spec,
        &parent_dir,
        plugins,
        &PlanOptions {
            hardware,
            gpus: a.gpus,
            mfu: a.mfu,
            dtype,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    println!(
        "parent {} ({} parameters, {} layers); library: {} entries, {} trained by BLD, {} the parent's own, {} without parameters{}",
        parent_dir.display(),
        human(p.parent_params as f64),
        p.parent_layers,
        p.entries,
        p.trained,
        p.parent_entries,
        p.identity,
        if p.refused > 0 {
            format!(", {} left out for the engine", p.refused)
        } else {
            String::new()
        }
    );
    let mut t = ui::table(&[
        "stage",
        "tasks",
        "work",
        "PFLOP",
        "device-h",
        "wall-h",
        "memory/task",
        "fits",
    ]);
    for s in &p.stages {
        t.add_row(vec![
            s.stage.to_string(),
            s.tasks.to_string(),
            s.work.clone(),
            format!("{:.3}", s.flops / 1e15),
            format!("{:.2}", s.device_hours),
            format!("{:.2}", s.wall_hours),
            format!("{:.1} GB", s.memory_per_task_bytes / 1e9),
            if s.fits { "yes" } else { "no" }.into(),
        ]);
    }
    t.add_row(vec![
        "total".into(),
        String::new(),
        format!("on {} x {}", p.devices, p.hardware),
        format!("{:.3}", p.total_flops / 1e15),
        format!("{:.2}", p.total_device_hours),
        format!("{:.2}", p.total_wall_hours),
        String::new(),
        String::new(),
    ]);
    println!("{t}");
    for n in &p.notes {
        println!("- {n}");
    }
    if p.stages.iter().any(|s| !s.fits) {
        println!(
            "- a task that does not fit needs a device with more memory: this implementation does not split one model over devices"
        );
    }
    Ok(())
}
