//! `puzzle run`: every stage in order, each skipped when its artifact already exists for the
//! same inputs (see [`crate::artifact`]), so a killed run started again finishes with the same
//! artifacts.
//!
//! ```text
//! bld -> cost -> score -> search (+ speed calibration) -> realize -> distill -> baselines -> eval
//! ```
//!
//! With `[bld.couple_prominent]`, BLD to search runs twice, decoupled then coupled
//! ([`crate::coupled`]).

use std::path::Path;

use crate::baselines::baselines_stage;
use crate::calibrate::search_stage;
use crate::config::RunConfig;
use crate::finish::{ComparedModel, finish_model};
use crate::run::Run;
use crate::stages::{cost_stage, score_stage, search_table};
use puzzle_core::Plugins;
use puzzle_core::bld::{BldInputs, BldReport, shard_todo, todo_layers, train_todo};
use puzzle_core::burn::tensor::Device;
use puzzle_core::data::Split;
use puzzle_core::error::{Error, Result};
use puzzle_core::nn::Decoder;
use puzzle_core::progress::Progress;
use puzzle_core::realize::realize;
use puzzle_core::search::{BlockTable, BoundValue, Constraint, Op};

pub use crate::calibrate::{Calibration, ChosenSolution};
pub use crate::evaluate::{EvalReport, ModelEval, eval_stage};

/// Checks what can be checked before any work: the search space, the constraints' metrics,
/// and budgets no architecture could meet (exact for parameter and memory metrics).
pub fn precheck(run: &Run) -> Result<()> {
    let c = &run.config;
    let p = &run.plugins;
    run.plan()?;
    run.engine()?;
    p.solver(&c.search.solver)?;
    p.cost_models.get(&c.cost.model)?;
    for m in &c.score.metrics {
        p.scorers.get(m)?;
    }
    for raw in &c.search.constraints {
        check_constraint(run, raw)?;
    }
    Ok(())
}

/// The metrics of cost tables a constraint may name (with `@b<batch>` where per batch).
const COST_METRICS: [&str; 9] = [
    "params",
    "param_bytes",
    "kv_bytes_per_token",
    "memory_bytes",
    "throughput",
    "decode_throughput",
    "runtime_ms",
    "prefill_ms",
    "decode_ms",
];

/// A `[search]` constraint names a known metric and asks for something the space can reach.
fn check_constraint(run: &Run, raw: &str) -> Result<()> {
    let c = &run.config;
    let spec = &run.parent.spec;
    let keys = COST_METRICS;
    {
        let con: Constraint = raw.parse()?;
        let base = con.key.split('@').next().unwrap_or(&con.key);
        if !keys.contains(&base)
            && !c
                .score
                .metrics
                .iter()
                .any(|m| base == m || base == format!("{m}_delta"))
        {
            return Err(Error::config(
                &c.source,
                format!(
                    "[search] constraint `{raw}`: unknown metric `{}` (cost metrics: {}; score metrics: {})",
                    con.key,
                    keys.join(", "),
                    c.score.metrics.join(", ")
                ),
            ));
        }
        if let BoundValue::Relative(r) = con.value {
            // The smallest model the space allows keeps only the embeddings and head.
            let floor = spec.non_block_params() as f64 / spec.num_params() as f64;
            let impossible = match (base, con.op) {
                ("params" | "param_bytes", Op::Le) => r < floor,
                ("throughput" | "decode_throughput", Op::Ge)
                | ("runtime_ms" | "decode_ms" | "prefill_ms", Op::Le) => r <= 0.0,
                _ => false,
            };
            if impossible {
                return Err(Error::config(
                    &c.source,
                    format!(
                        "[search] constraint `{raw}` cannot be met: even removing every layer keeps {:.1}% of the parameters (embeddings and head)",
                        100.0 * floor
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The library: every planned entry trained.
pub fn bld_stage(run: &Run, progress: &mut dyn Progress) -> Result<()> {
    bld_shard(run, (0, 1), progress).map(|_| ())
}

/// Shard `i` of `n` of the library (`(0, 1)` is all of it), from the run's parent, data and
/// config; what `puzzle bld --shard i/n` runs.
pub fn bld_shard(
    run: &Run,
    shard: (usize, usize),
    progress: &mut dyn Progress,
) -> Result<BldReport> {
    let cfg = &run.config.bld;
    let train = run.windows(Split::Train, cfg.seq_len)?;
    let held = run.windows(Split::Validation, cfg.seq_len)?;
    let keys = run.plan()?;
    let provenance = run.bld_provenance();
    let library = run.library();
    let (report, todo) = shard_todo(&keys, &provenance, &library, shard)?;
    // The parent up to the shard's last layer: a shard early in the stack never reads the rest.
    // When the whole parent is loaded already (or needed), it is that one.
    let depth = todo_layers(&todo).last().map_or(0, |l| l + 1);
    let trunk;
    let parent = match run.parent.loaded() {
        Some(d) => d,
        None if depth == run.parent.spec.layers.len() => run.parent.decoder()?,
        None => {
            trunk = Decoder::load_trunk(
                &run.parent.spec,
                &run.parent.weights,
                run.parent.device(),
                depth,
            )?;
            &trunk
        }
    };
    let inputs = BldInputs {
        keys: &keys,
        parent_spec: &run.parent.spec,
        parent,
        parent_weights: &run.parent.weights,
        train: &train,
        held_out: &held,
        provenance,
        space: &run.config.space,
        catalogs: &run.plugins.catalogs,
    };
    train_todo(&inputs, cfg, &library, report, &todo, progress)
}

/// Cost, score, block table and search over the run's library, into `run.stages`.
fn search_pass(run: &Run, progress: &mut dyn Progress) -> Result<(BlockTable, ChosenSolution)> {
    let costs = cost_stage(run, progress)?;
    let scores = score_stage(run, progress)?;
    let table = search_table(run, &costs, &scores)?;
    let chosen = search_stage(run, &table, &scores, progress)?;
    Ok((table, chosen))
}

/// What a whole run produced.
pub struct RunSummary {
    pub chosen: ChosenSolution,
    pub eval: EvalReport,
    pub warnings: Vec<String>,
}

/// Every stage of a run, resumable.
pub fn run_all(
    config: &Path,
    run_dir: Option<&Path>,
    device: &Device,
    plugins: Plugins,
    consent: &crate::host::Consent,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let mut run = Run::open_with(config, run_dir, device, plugins, consent)?;
    precheck(&run)?;
    progress.note(&format!("run folder {}", run.dir.display()));
    for (path, hash) in &run.config_plugins {
        progress.note(&crate::host::loaded_note(path, hash));
    }
    let engine = run.engine()?;
    progress.note(&format!(
        "engine {} ({}): speeds are measured there",
        engine.kind(),
        puzzle_core::engine::described(engine, device)
    ));
    for line in run.excluded()? {
        progress.note(&format!("not in the search space: {line}"));
    }
    if let Some(p) = run.config.bld.couple_prominent {
        // The decoupled pass keeps its artifacts apart, so that a restart finds both passes'.
        run.stages = run.dir.join("decoupled");
        bld_stage(&run, progress)?;
        let (_, first) = search_pass(&run, progress)?;
        let mut solutions = Vec::new();
        for s in &first.alternatives {
            solutions.push(
                s.choices
                    .iter()
                    .map(|(_, id)| id.parse())
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        let pairs = crate::coupled::prominent_pairs(&solutions, &run.parent.spec, p);
        progress.note(&format!(
            "coupled BLD after the decoupled search ({}): {} pair{} of its {} most chosen attention and {} most chosen FFN variants, in every layer: {}",
            run.stages.join("search/solution.json").display(),
            pairs.len(),
            if pairs.len() == 1 { "" } else { "s" },
            p.attention,
            p.ffn,
            pairs
                .iter()
                .map(|[a, f]| format!("{a} + {f}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for pair in pairs {
            if !run.config.bld.coupled.contains(&pair) {
                run.config.bld.coupled.push(pair);
            }
        }
        run.stages = run.dir.clone();
    }
    bld_stage(&run, progress)?;
    let (table, chosen) = search_pass(&run, progress)?;
    let child = realize(
        run.parent.decoder()?,
        &run.parent.weights,
        &run.library(),
        &chosen.choices()?,
        device,
    )?;
    let child_dir = run.dir.join("child");
    let identity = RunConfig::hash_of(&chosen.solution.choices);
    let made = finish_model(&run, "child", &child, &identity, &child_dir, progress)?;
    let mut models = vec![ComparedModel {
        name: "child".into(),
        dir: child_dir,
        distill: made.distill,
    }];
    models.extend(baselines_stage(&run, &table, &chosen, &child, progress)?);
    let batch = chosen.batch.unwrap_or(run.config.deployment.batch_sizes[0]);
    let eval = eval_stage(&run, &models, batch, progress)?;
    Ok(RunSummary {
        chosen,
        eval,
        warnings: made.warnings,
    })
}
