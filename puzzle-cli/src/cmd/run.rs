//! `puzzle run [CONFIG]`, `puzzle realize`, `puzzle report`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use puzzle_core::gguf::GgmlType;
use puzzle_core::kinds::SpeedMetric;
use puzzle_pipeline::evaluate::verdicts;
use puzzle_pipeline::pipeline::{ChosenSolution, precheck, run_all};

use crate::{report, ui};

/// Run every stage of Puzzle: bld -> cost -> score -> search -> realize -> distill ->
/// baselines -> eval, then write the report. Each stage keeps its artifacts in the run folder
/// and is skipped when they are already there for the same inputs: kill it at any point and run
/// the same command again to continue.
///
/// Without CONFIG it runs the embedded example: the tiny parent trained on public-domain
/// English, searched for at least 2x decode throughput on this CPU, written to runs/tiny (how
/// long it takes: the README's "Two commands").
///
/// Examples:
///   puzzle run
///   puzzle run examples/tiny/tiny.toml
///   puzzle run my-run.toml --run runs/experiment-3
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph; the one-line
// summary is given apart, as verbatim text would keep its line breaks in `puzzle --help`.
#[command(
    verbatim_doc_comment,
    about = "Run every stage of Puzzle: bld -> cost -> score -> search -> realize -> distill -> \
             baselines -> eval, then write the report. Each stage keeps its artifacts in the run \
             folder and is skipped when they are already there for the same inputs: kill it at \
             any point and run the same command again to continue"
)]
pub struct RunArgs {
    /// Run config (TOML); default: the embedded tiny example.
    pub config: Option<PathBuf>,
    /// Run folder (default: from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Only check the config (search space, constraints, files) and exit.
    #[arg(long)]
    pub check: bool,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The config to run and the run folder to override it with: CONFIG as given, or the embedded
/// tiny example written into `<run or runs/tiny>/inputs` (its run folder then that one).
pub fn config_and_dir(
    config: Option<&Path>,
    run: Option<&Path>,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let c = match config {
        Some(c) => c.to_path_buf(),
        None => {
            let dir = run.map_or_else(|| PathBuf::from("runs/tiny"), Path::to_path_buf);
            let c =
                puzzle_zoo::materialize_tiny_example(&dir.join("inputs")).with_context(|| {
                    format!(
                        "writing the embedded example to {}",
                        dir.join("inputs").display()
                    )
                })?;
            eprintln!(
                "embedded example: {} (run folder {})",
                c.display(),
                dir.display()
            );
            c
        }
    };
    let dir = run
        .map(Path::to_path_buf)
        .or_else(|| config.is_none().then(|| PathBuf::from("runs/tiny")));
    Ok((c, dir))
}

pub fn run(a: RunArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let (config, run_dir) = config_and_dir(a.config.as_deref(), a.run.as_deref())?;
    if a.check {
        let r = crate::registry::open_run(&config, run_dir.as_deref(), &device)?;
        precheck(&r)?;
        eprintln!("{}: ok", config.display());
        return Ok(());
    }
    let mut bars = ui::Bars::new();
    let t0 = std::time::Instant::now();
    let summary = run_all(
        &config,
        run_dir.as_deref(),
        &device,
        crate::registry::plugins().clone(),
        crate::registry::consent(),
        &mut bars,
    )?;
    let dir = puzzle_pipeline::config::RunConfig::load(&config)?
        .run_dir
        .map(|d| run_dir.clone().unwrap_or(d))
        .context("run folder")?;
    for w in &summary.warnings {
        eprintln!("export warning: {w}");
    }
    child_gguf(&dir.join("child"));
    let out = report::write(&dir, &config.display().to_string())?;
    // The run is complete, so nothing else writes in its folder: what killed writers left goes.
    let stale = puzzle_core::fsutil::remove_stale_temps(&dir)?;
    if !stale.is_empty() {
        eprintln!(
            "removed {} temp file{} or folder copies left by killed writers (e.g. {})",
            stale.len(),
            if stale.len() == 1 { "" } else { "s" },
            stale[0].display()
        );
    }
    print_summary(&summary.eval, &summary.chosen);
    let cfg = puzzle_pipeline::config::RunConfig::load(&config)?;
    for v in verdicts(&cfg.search.constraints, &summary.eval, "child")? {
        println!(
            "target {}: the child measured {:.2}x ({}) in {} in the final evaluation: {}",
            v.constraint,
            v.measured,
            v.spread(),
            summary.eval.engine,
            if v.met { "met" } else { "NOT met" }
        );
    }
    eprintln!(
        "done in {:.0} s; report: {}",
        t0.elapsed().as_secs_f64(),
        out.join("README.md").display()
    );
    Ok(())
}

fn print_summary(eval: &puzzle_pipeline::pipeline::EvalReport, chosen: &ChosenSolution) {
    let b = eval.batch;
    let parent = &eval.models[0];
    let ps = parent.speed.iter().find(|s| s.batch == b);
    let mut t = ui::table(&[
        "model",
        "params",
        "decode tok/s",
        "vs parent",
        "val loss",
        "KL",
        "task acc",
        "retention",
    ]);
    for m in &eval.models {
        let s = m.speed.iter().find(|s| s.batch == b);
        t.add_row(vec![
            m.name.clone(),
            ui::count(m.params as f64),
            s.map_or("-".into(), |s| format!("{:.1}", s.decode_throughput)),
            match (s, ps) {
                (Some(s), Some(p)) => {
                    format!("{:.2}x", s.over(p, SpeedMetric::DecodeThroughput).0)
                }
                _ => "-".into(),
            },
            format!("{:.4}", m.lm.loss),
            m.agreement
                .as_ref()
                .map_or("0".into(), |a| format!("{:.4}", a.kl)),
            m.tasks
                .first()
                .map_or("-".into(), |(_, t)| format!("{:.1}%", 100.0 * t.acc_norm)),
            m.retention
                .map_or("-".into(), |r| format!("{:.1}%", 100.0 * r)),
        ]);
    }
    println!(
        "batch {b}; search objective {} = {:.4}",
        chosen.spec.objective.key, chosen.solution.objective
    );
    println!("{t}");
}

/// Write the report of a finished run: RUN/report/README.md with the quality-vs-speed
/// frontier, the child's per-layer architecture, predicted vs measured speed and every number
/// with the commands that produced it.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run folder(s). One writes RUN/report/; with --readme-table, the first is tabled and all
    /// of them give the run-to-run spread.
    pub runs: Vec<PathBuf>,
    /// Print the README's results block (tables generated from the runs' eval/report.json)
    /// instead of writing RUN/report/.
    ///
    /// Example (how the README's table is made):
    ///
    ///   puzzle report --readme-table runs/tiny-1 runs/tiny-2 runs/tiny-3 --record examples/tiny/results --into README.md
    #[arg(long)]
    pub readme_table: bool,
    /// With --readme-table: record each run given as DIR/<run folder name>.json (the old
    /// records in DIR are replaced), then render from DIR's records. Without runs: render
    /// from the records already there.
    #[arg(long, requires = "readme_table", value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// With --readme-table: replace the results block of this Markdown file (between its
    /// `<!-- results: ... -->` markers) instead of printing it.
    #[arg(long, requires = "readme_table", value_name = "FILE")]
    pub into: Option<PathBuf>,
}

/// `child/model.gguf` beside the Hugging Face folder, for llama.cpp (f32). A child llama.cpp
/// cannot load (a linear FFN, a sliding window) is reported, not fatal: the HF folder stands.
fn child_gguf(child: &Path) {
    let file = child.join("model.gguf");
    match puzzle_llama_ops::gguf_export::export_gguf(child, &file, GgmlType::F32) {
        Ok(r) => {
            for n in &r.notes {
                eprintln!("gguf note: {n}");
            }
            eprintln!("wrote {} (arch {})", file.display(), r.arch);
        }
        Err(e) => eprintln!("no {}: {e}", file.display()),
    }
}

pub fn report_cmd(a: ReportArgs) -> Result<()> {
    if a.readme_table {
        return readme_table_cmd(&a);
    }
    let [run] = a.runs.as_slice() else {
        anyhow::bail!(
            "give one run folder (more than one only with --readme-table); got {}",
            a.runs.len()
        );
    };
    let cfg = run.join("config.toml");
    let out = report::write(run, &cfg.display().to_string())?;
    println!("{}", out.join("README.md").display());
    Ok(())
}

fn run_name(run: &Path) -> String {
    let abs = std::fs::canonicalize(run).unwrap_or_else(|_| run.to_path_buf());
    abs.file_name()
        .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
}

fn readme_table_cmd(a: &ReportArgs) -> Result<()> {
    use crate::readme_table::{RecordedRun, read_records, render, splice};
    let mut runs: Vec<(String, RecordedRun)> = Vec::new();
    for r in &a.runs {
        let id = run_name(r);
        if runs.iter().any(|(other, _)| *other == id) {
            anyhow::bail!(
                "two runs are named `{id}`: records are named after the run folder, so rename one"
            );
        }
        runs.push((id, RecordedRun::from_run(r)?));
    }
    if let Some(dir) = &a.record {
        if !runs.is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // The old records go, readable or not.
            for e in std::fs::read_dir(dir)?.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    std::fs::remove_file(e.path())?;
                }
            }
            for (id, r) in &runs {
                let file = dir.join(format!("{id}.json"));
                puzzle_core::fsutil::write_json(&file, r)?;
                eprintln!("recorded {}", file.display());
            }
        }
        runs = read_records(dir)?;
    }
    if runs.is_empty() {
        anyhow::bail!("no runs: give run folders, or --record DIR with recorded runs in it");
    }
    let block = render(&runs)?;
    match &a.into {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            if crate::readme_table::current(&text) == Some(block.trim_end()) {
                eprintln!("the results block of {} is current", file.display());
                return Ok(());
            }
            let out = splice(&text, &block, file)?;
            puzzle_core::fsutil::write_atomic(file, out.as_bytes())?;
            eprintln!("updated the results block of {}", file.display());
        }
        None => print!("{block}"),
    }
    Ok(())
}

/// Assemble a child from the library and a solution and export it (DeciLM / nemotron-nas:
/// config.json with block_configs, safetensors, the parent's tokenizer), without distillation.
///
/// Example: puzzle realize examples/tiny/tiny.toml --out runs/tiny/realized
#[derive(Args, Debug)]
pub struct RealizeArgs {
    /// Run config (TOML); the run folder, parent, data and stage settings come from it.
    pub config: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// A solution JSON (search/solution.json by default), or explicit per-layer choices
    /// `attn:...+ffn:...` separated by `;`.
    #[arg(long)]
    pub solution: Option<String>,
    /// Run folder (default: from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn realize_cmd(a: RealizeArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let r = crate::registry::open_run(&a.config, a.run.as_deref(), &device)?;
    let choices: Vec<puzzle_core::realize::LayerChoice> = match &a.solution {
        Some(s) if s.contains("attn:") => s
            .split(';')
            .map(|c| c.trim().parse())
            .collect::<puzzle_core::Result<_>>()?,
        other => {
            let p = other
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| r.dir.join("search/solution.json"));
            let c: ChosenSolution = puzzle_core::fsutil::read_json(&p)?;
            c.solution
                .choices
                .iter()
                .map(|(_, id)| id.parse())
                .collect::<puzzle_core::Result<_>>()?
        }
    };
    let child = puzzle_core::realize::realize(
        r.parent.decoder()?,
        &r.parent.weights,
        &r.library(),
        &choices,
        &device,
    )?;
    let warnings =
        puzzle_core::realize::export(&child, &r.config.parent.path, &a.out, r.config.export.dtype)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "wrote {} ({} parameters)",
        a.out.display(),
        ui::count(child.current_spec().num_params() as f64)
    );
    Ok(())
}
