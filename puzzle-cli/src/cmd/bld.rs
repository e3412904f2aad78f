//! `puzzle bld CONFIG` and `puzzle library show RUN`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use puzzle_core::bld::{EntrySource, parse_shard, read_library};
use puzzle_pipeline::pipeline::bld_shard;

use crate::ui;

/// Build the block library by Blockwise Local Distillation (Puzzle stages 1-3): for every layer
/// and every variant of the search space, initialise the variant from the parent (KV-head
/// pooling, channel-contribution pruning, linear products) and train it to reproduce the
/// parent layer's output from the parent's input activation (normalised MSE). One parent
/// forward per batch feeds every entry. Killing it and running the same command again resumes
/// each entry from its last checkpoint; finished entries are skipped. SIGTERM, SIGUSR1 or
/// Ctrl-C checkpoints every entry at the step it reached, then stops (exit status 128 + the
/// signal); a second Ctrl-C stops at once.
///
/// Examples:
///   puzzle bld examples/tiny/tiny.toml
///   puzzle bld run.toml --shard 3/8      # one task of eight
///   puzzle bld run.toml --shard auto     # the task's shard from Slurm (SLURM_ARRAY_TASK_ID and
///                                        # _COUNT, or SLURM_PROCID/SLURM_NTASKS), torchrun
///                                        # (RANK/WORLD_SIZE) or a Kubernetes indexed Job
///                                        # (JOB_COMPLETION_INDEX, with PUZZLE_SHARD_COUNT)
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[command(
    verbatim_doc_comment,
    about = "Build the block library by Blockwise Local Distillation (Puzzle stages 1-3): for every layer and every variant of the search space, initialise the variant from the parent (KV-head pooling, channel-contribution pruning, linear products) and train it to reproduce the parent layer's output from the parent's input activation (normalised MSE). One parent forward per batch feeds every entry. Killing it and running the same command again resumes each entry from its last checkpoint; finished entries are skipped. SIGTERM, SIGUSR1 or Ctrl-C checkpoints every entry at the step it reached, then stops (exit status 128 + the signal); a second Ctrl-C stops at once"
)]
pub struct BldArgs {
    /// Run config (TOML).
    pub config: PathBuf,
    /// Train only the INDEX-th (0-based) of COUNT equal runs of the entries ordered by layer:
    /// INDEX/COUNT, or `auto` to read them from Slurm's, torchrun's or a Kubernetes indexed
    /// Job's environment. A shard loads the parent only up to its last layer.
    #[arg(long)]
    pub shard: Option<String>,
    /// Run folder (default: from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: BldArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let shard = a
        .shard
        .as_deref()
        .map(parse_shard)
        .transpose()?
        .unwrap_or((0, 1));
    let r = crate::registry::open_run(&a.config, a.run.as_deref(), &device)?;
    let mut bars = ui::Bars::new();
    let rep = bld_shard(&r, shard, &mut bars)?;
    eprintln!(
        "bld: {} entries planned, {} in this shard, {} were done, {} finished now in {:.0} s ({:.0} entry-tokens/s); library {}",
        rep.planned,
        rep.in_shard,
        rep.already_done,
        rep.finished_now,
        rep.seconds,
        rep.trained_tokens_per_second,
        r.library().display()
    );
    Ok(())
}

/// Inspect a run's block library.
#[derive(Subcommand, Debug)]
pub enum LibraryCommand {
    /// Per layer and variant: how it was initialised, tokens trained, normalised MSE on held-out
    /// activations at init and after BLD, and (when measured) its costs and scores.
    Show {
        /// Run folder.
        run: PathBuf,
        /// Print the entries as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn library(c: LibraryCommand) -> Result<()> {
    let LibraryCommand::Show { run, json } = c;
    let lib = run.join("library");
    let entries = read_library(&lib).with_context(|| format!("reading {}", lib.display()))?;
    if entries.is_empty() {
        anyhow::bail!(
            "{} has no library entries yet: run `puzzle bld` first",
            run.display()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let header = vec![
        "layer",
        "variant",
        "source",
        "init",
        "params",
        "tokens",
        "nmse init",
        "nmse final",
    ];
    let mut t = ui::table(&header);
    for e in &entries {
        let row = vec![
            e.key.layer.to_string(),
            e.key.id(),
            match e.source {
                EntrySource::Parent => "parent".to_string(),
                EntrySource::Identity => "identity".into(),
                EntrySource::Trained => "trained".into(),
            },
            e.init.join(" + "),
            ui::count(e.params as f64),
            ui::count(e.tokens as f64),
            format!("{:.4}", e.nmse_init),
            format!("{:.4}", e.nmse_final),
        ];
        t.add_row(row);
    }
    println!("{t}");
    Ok(())
}
