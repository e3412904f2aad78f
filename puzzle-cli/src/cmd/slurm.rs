//! `puzzle slurm CONFIG`: the run as Slurm jobs over a shared run folder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use puzzle_pipeline::config::RunConfig;
use puzzle_pipeline::slurm::{SlurmOptions, normalize, scripts, write};

/// Submit a run as Slurm jobs over a shared run folder: BLD as a job array (one shard per
/// task, `--shard auto`, `--requeue`: a preempted task resumes from its entries' checkpoints),
/// the cost table at once on a node of its own (timings), scores after BLD, and `puzzle run`
/// for search, realize, distillation, baselines, evaluation and report after both, chained with
/// `--dependency=afterok`. The scripts are written to RUN/slurm/ (logs in RUN/slurm/logs/), so
/// they can be read, edited and resubmitted (`RUN/slurm/submit.sh`); finished work is reused.
///
/// Only BLD is split into tasks today; the other stages run as one job each.
///
/// Examples:
///   puzzle slurm examples/tiny/tiny.toml --dry-run
///   puzzle slurm my.toml --run /shared/runs/my --array-size 16 --partition gpu \
///       --gpus-per-task 1 --cpus-per-task 8 --mem 64G --time 12:00:00 --device cuda
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Submit a run as Slurm jobs over a shared run folder: BLD as a job array, costs beside it, scores after BLD, the rest after both"
)]
pub struct SlurmArgs {
    /// Run config (TOML).
    pub config: PathBuf,
    /// Run folder, on a filesystem every node sees (default: the config's `run_dir`).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Print the scripts instead of writing and submitting them.
    #[arg(long)]
    pub dry_run: bool,
    /// BLD array tasks (shards of the library).
    #[arg(long, default_value_t = 4)]
    pub array_size: usize,
    /// Slurm partition of every job.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account of every job.
    #[arg(long)]
    pub account: Option<String>,
    /// Time limit of every job (`HH:MM:SS`, `D-HH`, ...).
    #[arg(long)]
    pub time: Option<String>,
    /// GPUs per task.
    #[arg(long)]
    pub gpus_per_task: Option<usize>,
    /// CPUs per task (also the tasks' thread count).
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// Memory of every job (`64G`).
    #[arg(long)]
    pub mem: Option<String>,
    /// Device of every command (`cpu`, `cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The `puzzle` binary the nodes run (default: this one).
    #[arg(long, value_name = "PATH")]
    pub puzzle: Option<PathBuf>,
}

pub fn run(a: SlurmArgs) -> Result<()> {
    puzzle_core::device::parse_device(&a.device)?;
    let config = normalize(&a.config)?;
    let cfg = RunConfig::load(&config)?;
    let run_dir = normalize(&a.run.clone().unwrap_or_else(|| cfg.run_dir()))?;
    let puzzle = match &a.puzzle {
        Some(p) => normalize(p)?,
        None => std::env::current_exe().context("finding this puzzle binary")?,
    };
    let opts = SlurmOptions {
        array_size: a.array_size,
        partition: a.partition,
        account: a.account,
        time: a.time,
        gpus_per_task: a.gpus_per_task,
        cpus_per_task: a.cpus_per_task,
        mem: a.mem,
        device: a.device,
    };
    let files = scripts(&puzzle, &config, &run_dir, &opts)?;
    if a.dry_run {
        for (name, text) in &files {
            println!("### {}", run_dir.join("slurm").join(name).display());
            print!("{text}");
            println!();
        }
        return Ok(());
    }
    let found = std::process::Command::new("sbatch")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!(
            "sbatch is not on PATH: run this on a Slurm login node, or add --dry-run to see the scripts"
        );
    }
    let dir = write(&run_dir, &files)?;
    let submit = dir.join("submit.sh");
    let out = std::process::Command::new("bash")
        .arg(&submit)
        .output()
        .with_context(|| format!("running {}", submit.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            submit.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!(
        "submitted ({}); scripts in {}, logs in {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.display(),
        dir.join("logs").display()
    );
    Ok(())
}
