//! `puzzle run`: every stage in order, each skipped when its artifact already exists for the
//! same inputs, so a killed run started again finishes with the same artifacts.
//!
//! ```text
//! bld -> cost -> score -> search (+ speed calibration) -> realize -> distill -> baselines -> eval
//! ```

use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::Run;
use super::config::RunConfig;
use super::stages::{cost_stage, score_stage, search_table};
use crate::bld::{BldInputs, BldReport, calibrate, plan, run_bld};
use crate::data::Split;
use crate::distill::{DistillReport, distill};
use crate::error::{Error, Result};
use crate::eval::speed::{Speed, measure_together};
use crate::eval::tasks::{TaskScore, read_tasks, score_tasks};
use crate::eval::{Agreement, LmMetrics, agreement, lm_metrics};
use crate::fsutil;
use crate::model::load_model;
use crate::nn::Decoder;
use crate::progress::Progress;
use crate::realize::{LayerChoice, export, realize};
use crate::score::{ScoreTable, swapped};
use crate::search::from_run::{at_batch, batch_sizes};
use crate::search::mip::{SolveOptions, solver_by_name};
use crate::search::run::{SearchSolution, diverse};
use crate::search::{BlockTable, BoundValue, Constraint, Objective, Op, SearchSpec, Sense};
use crate::variant::{SubblockKind, VariantId};
use crate::variants::{build_subblock, catalog_for, layer_weights};

/// One round of the speed calibration: the constraint used, what the tables predicted and what
/// was measured end to end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Search round (0-based).
    #[serde(default)]
    pub round: usize,
    pub constraint: String,
    pub predicted_ratio: f64,
    pub measured_ratio: f64,
}

/// `search/solution.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChosenSolution {
    pub solution: SearchSolution,
    /// Batch size the solution was found for (`None`: the keys needed none).
    pub batch: Option<usize>,
    pub spec: SearchSpec,
    pub calibration: Vec<Calibration>,
    /// The round whose solution was kept (0-based).
    #[serde(default)]
    pub chosen_round: usize,
    /// Alternatives (diversity), best first, the chosen one included.
    pub alternatives: Vec<SearchSolution>,
    pub provenance: String,
}

/// One model's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    pub name: String,
    pub path: String,
    pub params: usize,
    pub param_bytes: f64,
    pub kv_bytes_per_token: f64,
    pub layers: Vec<String>,
    pub speed: Vec<Speed>,
    pub lm: LmMetrics,
    pub agreement: Option<Agreement>,
    pub tasks: Vec<(String, TaskScore)>,
    /// Mean over tasks of acc_norm / the parent's.
    pub retention: Option<f64>,
    pub distill: Option<DistillReport>,
}

/// `eval/report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub models: Vec<ModelEval>,
    /// The batch size speed ratios are reported at.
    pub batch: usize,
    pub provenance: String,
}

fn hash<T: Serialize>(v: &T) -> String {
    RunConfig::hash_of(v)
}

/// Checks what can be checked before any work: the search space, the constraints' metrics,
/// and budgets no architecture could meet (exact for parameter and memory metrics).
pub fn precheck(run: &Run) -> Result<()> {
    let c = &run.config;
    plan(&run.parent.spec, &c.space, &c.bld)?;
    solver_by_name(&c.search.solver)?;
    crate::cost::cost_model(&c.cost.model)?;
    for m in &c.score.metrics {
        crate::score::scorer(m)?;
    }
    let spec = &run.parent.spec;
    let keys = [
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
    for raw in &c.search.constraints {
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
    let inputs = BldInputs {
        parent_spec: &run.parent.spec,
        parent: &run.parent.decoder,
        parent_weights: &run.parent_weights,
        train: &train,
        held_out: &held,
        provenance: run.bld_provenance(),
        space: &run.config.space,
    };
    run_bld(&inputs, cfg, &run.library(), shard, progress)
}

fn parse_choices(sol: &SearchSolution) -> Result<Vec<LayerChoice>> {
    sol.choices.iter().map(|(_, id)| id.parse()).collect()
}

fn bind(spec: &SearchSpec, table: &BlockTable, b: Option<usize>) -> SearchSpec {
    let Some(b) = b else { return spec.clone() };
    SearchSpec {
        objective: Objective {
            key: at_batch(table, &spec.objective.key, b),
            sense: spec.objective.sense,
        },
        constraints: spec
            .constraints
            .iter()
            .map(|c| Constraint {
                key: at_batch(table, &c.key, b),
                ..c.clone()
            })
            .collect(),
    }
}

/// The speed metric a throughput constraint measures end to end, if any.
fn speed_metric(key: &str) -> Option<(&'static str, usize)> {
    let (base, b) = key.split_once("@b")?;
    let b: usize = b.parse().ok()?;
    match base {
        "throughput" => Some(("throughput", b)),
        "decode_throughput" => Some(("decode_throughput", b)),
        _ => None,
    }
}

fn measured_metric(s: &Speed, which: &str) -> f64 {
    if which == "throughput" {
        s.throughput
    } else {
        s.decode_throughput
    }
}

/// `which` speed metric of `model` over the parent's, at batch `batch`, the two measured
/// together (round-robin) on the run's deployment workload.
fn speed_vs_parent(run: &Run, model: &Decoder, batch: usize, which: &str) -> f64 {
    let d = &run.config.deployment;
    let s = measure_together(
        &[&run.parent.decoder, model],
        batch,
        d.prefill_len,
        d.generation_len,
        run.config.eval.speed_repeats.max(5),
    );
    measured_metric(&s[1], which) / measured_metric(&s[0], which)
}

/// Search with the run's `[search]` settings, then check relative speed constraints end to end on
/// the realized child (at most 4 rounds): one measured short of the target is tightened; when
/// every one is met with more than 10% to spare they are loosened, because the block sums can be
/// pessimistic too and the spare speed could have bought quality. The best round that met every
/// target is kept (the last round when none did).
pub fn search_stage(
    run: &Run,
    table: &BlockTable,
    scores: &ScoreTable,
    progress: &mut dyn Progress,
) -> Result<ChosenSolution> {
    let c = &run.config;
    let path = run.dir.join("search/solution.json");
    let prov = hash(&(table, &c.search));
    if let Ok(s) = fsutil::read_json::<ChosenSolution>(&path)
        && s.provenance == prov
    {
        progress.note(&format!("search: {} is up to date", path.display()));
        return Ok(s);
    }
    let solver = solver_by_name(&c.search.solver)?;
    let opts = SolveOptions {
        time_limit_secs: c.search.time_limit_secs,
        ..Default::default()
    };
    let objective = Objective {
        key: match &c.search.objective {
            Some(k) => k.clone(),
            None if scores.primary == "kl" => "kl".into(),
            None => format!("{}_delta", scores.primary),
        },
        sense: if c.search.maximize {
            Sense::Maximize
        } else {
            Sense::Minimize
        },
    };
    let mut spec = SearchSpec {
        objective,
        constraints: c
            .search
            .constraints
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?,
    };
    let batches: Vec<Option<usize>> = {
        let keys = table.common_keys();
        let needs = std::iter::once(&spec.objective.key)
            .chain(spec.constraints.iter().map(|c| &c.key))
            .any(|k| !keys.contains(k));
        if needs {
            batch_sizes(table).into_iter().map(Some).collect()
        } else {
            vec![None]
        }
    };
    let mut calibration = Vec::new();
    // The relative targets as asked, before any tightening.
    let targets: Vec<Option<f64>> = spec
        .constraints
        .iter()
        .map(|k| match k.value {
            BoundValue::Relative(t) => Some(t),
            BoundValue::Absolute(_) => None,
        })
        .collect();
    // The best round whose child met every speed target: (round, batch, solutions, bound spec).
    type Round = (usize, Option<usize>, Vec<SearchSolution>, SearchSpec);
    let mut kept: Option<Round> = None;
    let mut last: Option<Round> = None;
    let better = |sense: Sense, a: f64, b: f64| match sense {
        Sense::Minimize => a < b,
        Sense::Maximize => a > b,
    };
    let finish = |(chosen_round, batch, sols, spec): Round, calibration| {
        let chosen = ChosenSolution {
            solution: sols[0].clone(),
            batch,
            spec,
            calibration,
            chosen_round,
            alternatives: sols,
            provenance: prov.clone(),
        };
        fsutil::write_json(&path, &chosen)?;
        Ok(chosen)
    };
    for round in 0..4 {
        let mut best: Option<(Option<usize>, Vec<SearchSolution>, SearchSpec)> = None;
        let mut why = None;
        for &b in &batches {
            let s = bind(&spec, table, b);
            match diverse(
                table,
                &s,
                solver,
                &opts,
                c.search.solutions.max(1),
                c.search.min_diversity,
            )? {
                Ok(sols) => {
                    let improves = best.as_ref().is_none_or(|(_, cur, _)| {
                        better(s.objective.sense, sols[0].objective, cur[0].objective)
                    });
                    if improves {
                        best = Some((b, sols, s));
                    }
                }
                Err(w) => {
                    why.get_or_insert(w);
                }
            }
        }
        let Some((b, sols, bound)) = best else {
            if let Some(k) = kept.or(last) {
                // A tightened bound has no solution: keep what was found before.
                progress.note(&format!(
                    "search round {}: no solution with the adjusted bound; keeping round {}",
                    round + 1,
                    k.0 + 1
                ));
                return finish(k, calibration);
            }
            return Err(Error::invalid(format!(
                "the search has no solution:\n{}",
                why.map(|w| w.to_string()).unwrap_or_default()
            )));
        };
        // Check speed constraints end to end (weights do not change speed: the undistilled child
        // is measured).
        let mut checks = Vec::new();
        // Realized once per round, on the first speed constraint (there may be none).
        let mut child: Option<Decoder> = None;
        for (i, con) in bound.constraints.iter().enumerate() {
            let (Some((which, mb)), BoundValue::Relative(target), Op::Ge) =
                (speed_metric(&con.key), con.value, con.op)
            else {
                continue;
            };
            if child.is_none() {
                child = Some(realize(
                    &run.parent.decoder,
                    &run.parent_weights,
                    &run.library(),
                    &parse_choices(&sols[0])?,
                    &run.parent.decoder.device(),
                )?);
            }
            let child = child.as_ref().expect("realized just above");
            let measured = speed_vs_parent(run, child, mb, which);
            let predicted = sols[0].costs.get(&con.key).copied().unwrap_or(f64::NAN)
                / crate::search::problem::parent_total(table, &con.key)?;
            let original_target = targets[i].unwrap_or(target);
            checks.push(SpeedCheck {
                index: i,
                bound: target,
                target: original_target,
                measured,
            });
            calibration.push(Calibration {
                round,
                constraint: con.to_string(),
                predicted_ratio: predicted,
                measured_ratio: measured,
            });
            progress.note(&format!(
                "search round {}: {} predicted {predicted:.2}x, measured {measured:.2}x (target {original_target:.2}x)",
                round + 1,
                con.key
            ));
        }
        let adjust = adjust_speed_bounds(&checks);
        let objective = sols[0].objective;
        let sense = bound.objective.sense;
        let this: Round = (round, b, sols, bound);
        if !matches!(adjust, Adjust::Tighten(..))
            && kept
                .as_ref()
                .is_none_or(|k| better(sense, objective, k.2[0].objective))
        {
            kept = Some(this.clone());
        }
        last = Some(this);
        if round == 3 {
            break;
        }
        match adjust {
            Adjust::Tighten(i, tighter) => {
                spec.constraints[i].value = BoundValue::Relative(tighter)
            }
            Adjust::Loosen(looser) => {
                progress.note(&format!(
                    "search round {}: more than 10% faster than needed; loosening to buy quality",
                    round + 1
                ));
                for (i, b) in looser {
                    spec.constraints[i].value = BoundValue::Relative(b);
                }
            }
            Adjust::Keep => break,
        }
    }
    finish(kept.or(last).expect("at least one round ran"), calibration)
}

/// One relative speed constraint checked end to end in a calibration round.
#[derive(Clone, Copy, Debug)]
struct SpeedCheck {
    /// Index of the constraint in the search spec.
    index: usize,
    /// The bound the round searched with (on the predicted ratio).
    bound: f64,
    /// The target as the user asked it.
    target: f64,
    /// The child's measured ratio.
    measured: f64,
}

/// What the next calibration round does.
#[derive(Clone, Debug, PartialEq)]
enum Adjust {
    /// Every target met without much to spare (or nothing to check): done.
    Keep,
    /// Constraint `i` missed its aim: search again with this bound.
    Tighten(usize, f64),
    /// Every target met with more than 10% to spare: search again with these bounds.
    Loosen(Vec<(usize, f64)>),
}

/// Measurements on a shared machine wander by a few percent, so the aim is 3% above the target
/// (a later measurement, the evaluation, should still meet it). The new bound scales the old one
/// by how far the measured ratio is from the aim, 1% further: the predicted ratio is a proxy, and
/// a loosened bound may sit below the target as asked when the block sums are pessimistic; the
/// next round's measurement checks it.
fn adjust_speed_bounds(checks: &[SpeedCheck]) -> Adjust {
    let rescale = |c: &SpeedCheck| c.bound * (c.target * 1.03 / c.measured) * 1.01;
    if let Some(c) = checks.iter().find(|c| c.measured < c.target * 1.03) {
        return Adjust::Tighten(c.index, rescale(c));
    }
    if !checks.is_empty() && checks.iter().all(|c| c.measured > c.target * 1.03 * 1.10) {
        return Adjust::Loosen(checks.iter().map(|c| (c.index, rescale(c))).collect());
    }
    Adjust::Keep
}

/// Distils `student` (unless `[distill] tokens = 0`) and exports it to `out`, recording what was
/// done in `out/puzzle.json`. Skipped when `out` already holds the same result.
pub fn finish_model(
    run: &Run,
    name: &str,
    student: &Decoder,
    identity: &str,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<(Option<DistillReport>, Vec<String>)> {
    let c = &run.config;
    let prov = hash(&(identity, &c.distill, &run.data_fingerprint, &c.export));
    #[derive(Serialize, Deserialize)]
    struct Made {
        provenance: String,
        distill: Option<DistillReport>,
        warnings: Vec<String>,
    }
    if let Ok(m) = fsutil::read_json::<Made>(&out.join("puzzle.json"))
        && m.provenance == prov
        && out.join("config.json").is_file()
    {
        progress.note(&format!("{name}: {} is up to date", out.display()));
        return Ok((m.distill, m.warnings));
    }
    let (model, report) = if c.distill.tokens > 0 {
        let train = run.windows(Split::Train, c.distill.seq_len)?;
        let (m, r) = distill(
            student,
            &run.parent.decoder,
            &c.distill,
            &train,
            &prov,
            &run.dir.join("distill").join(name),
            progress,
        )?;
        (m, Some(r))
    } else {
        (student.clone(), None)
    };
    let warnings = export(&model, &c.parent.path, out, c.export.dtype)?;
    fsutil::write_json(
        &out.join("puzzle.json"),
        &Made {
            provenance: prov,
            distill: report.clone(),
            warnings: warnings.clone(),
        },
    )?;
    Ok((report, warnings))
}

/// Block influence of every layer, `1 - cos(x_in, x_out)` averaged over tokens (ShortGPT).
pub fn block_influence(parent: &Decoder, windows: &[Vec<u32>], batch: usize) -> Vec<f64> {
    let device = parent.device();
    let mut sums = vec![0.0; parent.layers.len()];
    let mut n = 0;
    for chunk in windows.chunks(batch.max(1)) {
        let t = chunk[0].len();
        let flat: Vec<i64> = chunk
            .iter()
            .flat_map(|w| w.iter().map(|&x| x as i64))
            .collect();
        let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(flat, [chunk.len(), t]),
            &device,
        );
        let (acts, _) = crate::bld::parent_activations(parent, ids);
        for (i, a) in acts.iter().enumerate() {
            sums[i] += crate::train::loss::cosine_distance(a.input.clone(), a.output.clone())
                .into_scalar::<f32>() as f64;
        }
        n += 1;
    }
    sums.into_iter().map(|s| s / n.max(1) as f64).collect()
}

/// Predicted value of `key` (from the table) for a uniform choice per layer.
fn predicted(table: &BlockTable, ids: &[String], key: &str) -> Result<f64> {
    let idx: Vec<usize> = table
        .groups
        .iter()
        .zip(ids)
        .map(|(g, id)| {
            g.choices
                .iter()
                .position(|c| &c.id == id)
                .ok_or_else(|| Error::invalid(format!("{} has no choice `{id}`", g.name)))
        })
        .collect::<Result<_>>()?;
    table.total(&idx, key)
}

/// The baselines at the Puzzle child's measured speed: each is the least-reduced architecture of
/// its kind whose measured speed (end to end, undistilled: weights do not change speed) reaches
/// the child's; then it gets the same distillation budget.
pub fn baselines_stage(
    run: &Run,
    table: &BlockTable,
    chosen: &ChosenSolution,
    child: &Decoder,
    progress: &mut dyn Progress,
) -> Result<Vec<(String, std::path::PathBuf, Option<DistillReport>)>> {
    let c = &run.config;
    let spec = &run.parent.spec;
    let layers = spec.layers.len();
    let d = &c.deployment;
    let b = chosen.batch.unwrap_or(d.batch_sizes[0]);
    let key = chosen
        .spec
        .constraints
        .iter()
        .find(|k| speed_metric(&k.key).is_some())
        .map(|k| k.key.clone())
        .unwrap_or_else(|| format!("decode_throughput@b{b}"));
    let (which, mb) = speed_metric(&key).unwrap_or(("decode_throughput", b));
    let device = run.parent.decoder.device();
    let ratio = |m: &Decoder| speed_vs_parent(run, m, mb, which);
    let mut out = Vec::new();
    let pending: Vec<&String> = c
        .baselines
        .kinds
        .iter()
        .filter(|k| {
            let dir = run.dir.join("baselines").join(k);
            !(dir.join("config.json").is_file() && dir.join("puzzle.json").is_file())
        })
        .collect();
    // Measure the target once, only when some baseline still has to be built.
    let target = if pending.is_empty() {
        f64::NAN
    } else {
        ratio(child)
    };
    for kind in &c.baselines.kinds {
        let dir = run.dir.join("baselines").join(kind);
        if !pending.contains(&kind)
            && let Ok(m) = fsutil::read_json::<serde_json::Value>(&dir.join("puzzle.json"))
        {
            let report = serde_json::from_value(m["distill"].clone()).ok();
            progress.note(&format!("{kind}: {} is up to date", dir.display()));
            out.push((kind.clone(), dir, report));
            continue;
        }
        let (student, identity) = match kind.as_str() {
            "uniform" => {
                // Candidates: the same (attention, FFN) pair in every layer, least reduced first.
                let mut cands: Vec<(String, f64)> = table.groups[0]
                    .choices
                    .iter()
                    .map(|ch| ch.id.clone())
                    .filter(|id| !id.starts_with("coupled"))
                    .filter_map(|id| {
                        let all = vec![id.clone(); layers];
                        predicted(table, &all, "params").ok().map(|p| (id, p))
                    })
                    .collect();
                cands.sort_by(|a, b| b.1.total_cmp(&a.1));
                let calib_w = run.windows(Split::Train, c.bld.seq_len)?;
                let calib = calibrate(
                    &run.parent.decoder,
                    &calib_w[..calib_w.len().min(c.bld.calibration_sequences.max(1))],
                    c.bld.batch_size,
                );
                let build = |id: &str| -> Result<Decoder> {
                    let choice: LayerChoice = id.parse()?;
                    let mut m = run.parent.decoder.clone();
                    for (layer, cal) in calib.iter().enumerate().take(layers) {
                        let pw = layer_weights(&run.parent_weights, layer)?;
                        for v in [&choice.attn, &choice.ffn] {
                            let init = catalog_for(v)?.init(v, spec, layer, &pw, cal)?;
                            let sub =
                                build_subblock(spec, &init.spec, layer, &init.weights, &device)?;
                            m = swapped(&m, layer, vec![sub]);
                        }
                    }
                    Ok(m)
                };
                let mut found = None;
                for (id, _) in &cands {
                    // Skip candidates the tables say are far too slow before measuring.
                    let pred = predicted(table, &vec![id.clone(); layers], &key)?;
                    let child_pred = chosen.solution.costs.get(&key).copied().unwrap_or(0.0);
                    if pred < 0.8 * child_pred {
                        continue;
                    }
                    let m = build(id)?;
                    let r = ratio(&m);
                    progress.note(&format!(
                        "baseline uniform candidate {id}: measured {r:.2}x (child {target:.2}x)"
                    ));
                    if r >= 0.98 * target {
                        found = Some((m, id.clone()));
                        break;
                    }
                }
                let (m, id) = found.ok_or_else(|| {
                    Error::invalid(format!(
                        "no uniform architecture reaches the child's measured {target:.2}x"
                    ))
                })?;
                progress.note(&format!(
                    "baseline uniform: {id} in every layer (pruned from the parent, no BLD)"
                ));
                (m, format!("uniform {id}"))
            }
            _ => {
                let windows = run.windows(Split::Train, c.bld.seq_len)?;
                let bi = block_influence(
                    &run.parent.decoder,
                    &windows[..windows.len().min(c.bld.calibration_sequences.max(1))],
                    c.bld.batch_size,
                );
                let mut order: Vec<usize> = (0..layers).collect();
                order.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]));
                let noop_a: VariantId = "attn:noop".parse()?;
                let noop_f: VariantId = "ffn:noop".parse()?;
                let mut m = run.parent.decoder.clone();
                let mut removed = Vec::new();
                for &l in &order {
                    for v in [&noop_a, &noop_f] {
                        let s = catalog_for(v)?.spec(v, spec)?;
                        let sub = build_subblock(
                            spec,
                            &s,
                            l,
                            &crate::weights::MemoryWeights::new("noop"),
                            &device,
                        )?;
                        m = swapped(&m, l, vec![sub]);
                    }
                    removed.push(l);
                    let r = ratio(&m);
                    if r >= 0.98 * target || removed.len() == layers {
                        progress.note(&format!(
                            "baseline layer removal: measured {r:.2}x (child {target:.2}x)"
                        ));
                        break;
                    }
                }
                removed.sort_unstable();
                progress.note(&format!(
                    "baseline layer removal: layers {removed:?} removed (lowest block influence)"
                ));
                (m, format!("layer_removal {removed:?}"))
            }
        };
        let (report, _) = finish_model(run, kind, &student, &identity, &dir, progress)?;
        out.push((kind.clone(), dir, report));
    }
    Ok(out)
}

/// Evaluates the parent, the child and the baselines from their exported folders.
pub fn eval_stage(
    run: &Run,
    models: &[(String, std::path::PathBuf, Option<DistillReport>)],
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let c = &run.config;
    let path = run.dir.join("eval/report.json");
    let mut stamps = Vec::new();
    for (_, p, _) in models {
        stamps.push(fsutil::read_to_string(&p.join("puzzle.json")).unwrap_or_default());
    }
    let prov = hash(&(&stamps, &c.eval, &c.deployment, &run.parent_fingerprint));
    if let Ok(r) = fsutil::read_json::<EvalReport>(&path)
        && r.provenance == prov
    {
        progress.note(&format!("eval: {} is up to date", path.display()));
        return Ok(r);
    }
    let device: Device = run.parent.decoder.device();
    let windows: Vec<Vec<u32>> = run
        .windows(Split::Validation, c.eval.seq_len)?
        .into_iter()
        .take(c.eval.sequences)
        .collect();
    let tasks: Vec<(String, Vec<crate::eval::tasks::TaskItem>)> = c
        .eval
        .tasks
        .iter()
        .map(|p| {
            Ok((
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                read_tasks(p)?,
            ))
        })
        .collect::<Result<_>>()?;
    let d = &c.deployment;
    let wb = crate::deploy::dtype_bytes(&d.weight_dtype)?;
    let kb = crate::deploy::dtype_bytes(&d.kv_dtype)?;
    let mut all = vec![("parent".to_string(), c.parent.path.clone(), None)];
    all.extend(models.iter().cloned());
    progress.start("eval", all.len() as u64 + 1);
    let loaded: Vec<crate::model::LoadedModel> = all
        .iter()
        .map(|(_, dir, _)| load_model(dir, &device))
        .collect::<Result<_>>()?;
    // Speeds of all models measured round-robin, per batch size: drifts of the machine hit
    // every model alike.
    let decoders: Vec<&Decoder> = loaded.iter().map(|m| &m.decoder).collect();
    let mut speeds: Vec<Vec<Speed>> = vec![Vec::new(); all.len()];
    for &b in &d.batch_sizes {
        let rounds = c.eval.speed_repeats.max(5);
        for (i, s) in measure_together(&decoders, b, d.prefill_len, d.generation_len, rounds)
            .into_iter()
            .enumerate()
        {
            speeds[i].push(s);
        }
    }
    progress.set(1, "speed");
    let mut evals: Vec<ModelEval> = Vec::new();
    for (i, ((name, dir, report), m)) in all.iter().zip(&loaded).enumerate() {
        let tok = m
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("{} has no tokenizer", dir.display())))?;
        let speed = speeds[i].clone();
        let lm = lm_metrics(&m.decoder, &windows, c.eval.batch_size);
        let agree = (i > 0)
            .then(|| agreement(&m.decoder, &run.parent.decoder, &windows, c.eval.batch_size));
        let task_scores: Vec<(String, TaskScore)> = tasks
            .iter()
            .map(|(n, items)| {
                Ok((
                    n.clone(),
                    score_tasks(&m.decoder, tok, items, c.eval.batch_size * 4)?,
                ))
            })
            .collect::<Result<_>>()?;
        let retention = evals.first().and_then(|p: &ModelEval| {
            let r: Vec<f64> = task_scores
                .iter()
                .zip(&p.tasks)
                .map(|((_, a), (_, b))| a.acc_norm / b.acc_norm.max(1e-12))
                .collect();
            (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
        });
        let spec = &m.spec;
        evals.push(ModelEval {
            name: name.clone(),
            path: dir.display().to_string(),
            params: spec.num_params(),
            param_bytes: spec.num_params() as f64 * wb,
            kv_bytes_per_token: spec.kv_elements_per_token() as f64 * kb,
            layers: (0..spec.layers.len())
                .map(|l| {
                    format!(
                        "{} + {}",
                        spec.variant_of(l, SubblockKind::Attention),
                        spec.variant_of(l, SubblockKind::Ffn)
                    )
                })
                .collect(),
            speed,
            lm,
            agreement: agree,
            tasks: task_scores,
            retention,
            distill: report.clone(),
        });
        progress.set(i as u64 + 2, name);
    }
    progress.finish();
    let r = EvalReport {
        models: evals,
        batch,
        provenance: prov,
    };
    fsutil::write_json(&path, &r)?;
    Ok(r)
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
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    let run = Run::open(config, run_dir, device)?;
    precheck(&run)?;
    progress.note(&format!("run folder {}", run.dir.display()));
    bld_stage(&run, progress)?;
    let costs = cost_stage(&run, progress)?;
    let scores = score_stage(&run, progress)?;
    let table = search_table(&run, &costs, &scores)?;
    let chosen = search_stage(&run, &table, &scores, progress)?;
    let child = realize(
        &run.parent.decoder,
        &run.parent_weights,
        &run.library(),
        &parse_choices(&chosen.solution)?,
        device,
    )?;
    let child_dir = run.dir.join("child");
    let identity = hash(&chosen.solution.choices);
    let (report, warnings) = finish_model(&run, "child", &child, &identity, &child_dir, progress)?;
    let mut models = vec![("child".to_string(), child_dir, report)];
    models.extend(baselines_stage(&run, &table, &chosen, &child, progress)?);
    let batch = chosen.batch.unwrap_or(run.config.deployment.batch_sizes[0]);
    let eval = eval_stage(&run, &models, batch, progress)?;
    Ok(RunSummary {
        chosen,
        eval,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(index: usize, bound: f64, target: f64, measured: f64) -> SpeedCheck {
        SpeedCheck {
            index,
            bound,
            target,
            measured,
        }
    }

    #[test]
    fn a_child_short_of_its_aim_tightens_that_constraint() {
        // Asked 2x, searched with 2x, measured 1.81x: aim 2.06x, bound 2 x 2.06 / 1.81 x 1.01.
        let a = adjust_speed_bounds(&[check(1, 2.0, 2.0, 1.81)]);
        let want = 2.0 * (2.06 / 1.81) * 1.01;
        match a {
            Adjust::Tighten(1, b) => assert!((b - want).abs() < 1e-12, "{b} vs {want}"),
            other => panic!("{other:?}"),
        }
        // Met but within the 3% margin: still tightened.
        assert!(matches!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 2.05)]),
            Adjust::Tighten(0, b) if b > 2.0
        ));
    }

    #[test]
    fn a_child_far_faster_than_needed_loosens_below_the_predicted_target() {
        // Predicted 2.0x, measured 2.84x for a 2x target: the sums were pessimistic.
        let a = adjust_speed_bounds(&[check(0, 2.0, 2.0, 2.84)]);
        let want = 2.0 * (2.06 / 2.84) * 1.01;
        match a {
            Adjust::Loosen(v) => {
                assert_eq!(v.len(), 1);
                assert!((v[0].1 - want).abs() < 1e-12 && v[0].1 < 2.0, "{v:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn met_with_little_to_spare_or_mixed_keeps_the_round() {
        // 2.2x for 2x: 6.8% above the aim, under the 10% that triggers loosening.
        assert_eq!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 2.2)]),
            Adjust::Keep
        );
        // One constraint with room, one without: loosening one would only trade between them.
        assert_eq!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 3.0), check(1, 1.5, 1.5, 1.6)]),
            Adjust::Keep
        );
        // One short among several: tighten the short one.
        assert!(matches!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 3.0), check(2, 1.5, 1.5, 1.4)]),
            Adjust::Tighten(2, _)
        ));
        assert_eq!(adjust_speed_bounds(&[]), Adjust::Keep);
    }
}
