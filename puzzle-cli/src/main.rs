//! `puzzle`: make a trained Llama-family LLM cheaper to serve by the Puzzle method.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Static plugins register themselves when linked.
use puzzle_cost as _;
use puzzle_llama as _;
use puzzle_llama_ops as _;
use puzzle_qwen2 as _;
use puzzle_scorers as _;
use puzzle_solver_bnb as _;
#[cfg(feature = "highs")]
use puzzle_solver_highs as _;
use puzzle_window as _;

mod cmd;
mod readme_table;
mod registry;
mod report;
mod runs;
mod ui;

/// Make a trained Llama-family model cheaper to serve, by the Puzzle method (NVIDIA,
/// "Distillation-Based NAS for Inference-Optimized LLMs"): build a library of cheaper per-layer
/// subblocks by blockwise local distillation, measure their cost and quality loss, pick one per
/// layer with a mixed-integer program under your deployment's constraints, and distil the child.
///
/// CPU threads: set RAYON_NUM_THREADS (default: all cores).
#[derive(Parser, Debug)]
#[command(name = "puzzle", version, about, long_about, max_term_width = 100)]
struct Cli {
    /// Load a plugin shared library (solvers, cost models, scorers, variant catalogs) before
    /// running the command; repeatable.
    #[arg(long = "plugin", global = true, value_name = "PATH")]
    plugins: Vec<std::path::PathBuf>,
    /// Also load the plugin libraries a run config names in `plugins`. Off by default: a
    /// config is data (perhaps sent to you), and loading a library runs its native code.
    /// Without this flag such a config is refused, with each library's path and sha256; a
    /// library also given with --plugin needs no flag.
    #[arg(long, global = true)]
    allow_config_plugins: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(cmd::run::RunArgs),
    Ablate(cmd::ablate::AblateArgs),
    Plugins(cmd::plugins::PluginsArgs),
    Inspect(cmd::inspect::InspectArgs),
    Generate(cmd::generate::GenerateArgs),
    Import(cmd::import::ImportArgs),
    Export(cmd::export::ExportArgs),
    Train(cmd::train::TrainArgs),
    Search(cmd::search::SearchArgs),
    Realize(cmd::run::RealizeArgs),
    Report(cmd::run::ReportArgs),
    Eval(cmd::eval::EvalArgs),
    Bld(cmd::bld::BldArgs),
    Cost(cmd::cost::CostArgs),
    Plan(cmd::plan::PlanArgs),
    Slurm(cmd::slurm::SlurmArgs),
    Score(cmd::cost::ScoreArgs),
    #[command(subcommand)]
    Library(cmd::bld::LibraryCommand),
    #[command(subcommand)]
    Tasks(TasksCommand),
}

/// Build multiple-choice task suites.
#[derive(Subcommand, Debug)]
enum TasksCommand {
    /// A cloze suite from the test split of a corpus: a passage's opening, its true next line
    /// and next lines of other held-out passages of similar length.
    Cloze(cmd::eval::ClozeArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`puzzle inspect M | head`) like other Unix tools, instead of
    // panicking inside println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    #[cfg(unix)]
    stop_requests();
    let cli = Cli::parse();
    let mut plugins = puzzle_core::Plugins::builtin();
    for p in &cli.plugins {
        if let Err(e) = puzzle_pipeline::host::load(p, &mut plugins) {
            eprintln!("error: {}", explain(&anyhow::Error::from(e)));
            return ExitCode::FAILURE;
        }
    }
    registry::set_plugins(
        plugins,
        puzzle_pipeline::host::Consent {
            config_plugins: cli.allow_config_plugins,
            named: cli.plugins.clone(),
        },
    );
    let result = match cli.command {
        Command::Plugins(a) => cmd::plugins::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Ablate(a) => cmd::ablate::run(a),
        Command::Realize(a) => cmd::run::realize_cmd(a),
        Command::Report(a) => cmd::run::report_cmd(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Import(a) => cmd::import::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Bld(a) => cmd::bld::run(a),
        Command::Cost(a) => cmd::cost::run_cost(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Slurm(a) => cmd::slurm::run(a),
        Command::Score(a) => cmd::cost::run_score(a),
        Command::Library(c) => cmd::bld::library(c),
        Command::Tasks(TasksCommand::Cloze(a)) => cmd::eval::cloze(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", explain(&e));
            match interrupted(&e) {
                // As a shell reports a process ended by that signal: schedulers and scripts
                // tell a stop from a failure by it.
                Some(signal) => ExitCode::from((128 + signal).clamp(0, 255) as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// SIGTERM (Slurm's requeue, preemption, `scancel`), SIGUSR1 (`sbatch --signal` ahead of a
/// time limit) and Ctrl-C ask a checkpointing loop to save and stop
/// (`puzzle_core::interrupt`); with none running, each keeps its default action.
#[cfg(unix)]
fn stop_requests() {
    use puzzle_core::interrupt::{Disposition, on_signal};
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    for sig in [SIGTERM, SIGUSR1, SIGINT] {
        // SAFETY: the handler only touches atomics (on_signal) and, when nobody polls,
        // restores and re-raises the default action (emulate_default_handler), both
        // async-signal-safe.
        let installed = unsafe {
            signal_hook::low_level::register(sig, move || {
                if on_signal(sig) == Disposition::Default {
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                }
            })
        };
        if let Err(e) = installed {
            eprintln!("warning: signal {sig} will end puzzle without a checkpoint: {e}");
        }
    }
}

/// The signal of a stop request somewhere in the error's chain.
fn interrupted(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<puzzle_core::Error>() {
            Some(puzzle_core::Error::Interrupted { signal, .. }) => Some(*signal),
            _ => None,
        })
}

/// The error and its causes, each said once: our library errors already print their source in
/// their own message, so a cause whose text is already there is not repeated.
fn explain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}
