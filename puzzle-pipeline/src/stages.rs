//! The cost, score and search stages of a run: each reads the run folder, writes its artifact
//! atomically, and skips the work when the artifact is already there for the same inputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::run::Run;
use puzzle_core::artifact::Artifact;
use puzzle_core::bld::{EntryKey, EntryMeta, read_done, shard_keys};
use puzzle_core::cost::{CostContext, CostEntry, CostTable};
use puzzle_core::data::Split;
use puzzle_core::deploy::resolve_hardware;
use puzzle_core::error::{Context as _, Error, Result};
use puzzle_core::eval::speed::{Served, median};
use puzzle_core::eval::tasks::{TaskItem, read_tasks};
use puzzle_core::fsutil;
use puzzle_core::progress::Progress;
use puzzle_core::rng::SeededRng;
use puzzle_core::score::{ScoreConfig, ScoreInputs, ScoreTable, run_score};
use puzzle_core::search::BlockTable;
use puzzle_core::spec::{LayerSpec, ModelSpec};
use puzzle_core::train::init::random_weights;
use puzzle_core::variant::SubblockKind;
use puzzle_core::variants::SubblockSpec;

pub use crate::run::entry_specs;

fn cost_provenance(run: &Run, model: &str) -> BTreeMap<String, String> {
    let c = &run.config;
    BTreeMap::from([
        ("parent".to_string(), run.parent_fingerprint.clone()),
        (
            "config".to_string(),
            RunConfig::hash_of(&(&c.deployment, &c.cost, &c.space, &c.bld.coupled)),
        ),
        ("model".to_string(), model.to_string()),
        // The registered description says how the model measures: a changed method (with the
        // same name and config) is a new table, not a reused one.
        (
            "method".to_string(),
            run.plugins
                .cost_models
                .iter()
                .find(|r| r.item.name() == model)
                .map(|r| r.description.clone())
                .unwrap_or_default(),
        ),
        (
            "device".to_string(),
            puzzle_core::device::describe(run.parent.device()),
        ),
        (
            "engine".to_string(),
            run.engine().map_or_else(
                |_| c.deployment.engine.to_string(),
                |e| puzzle_core::engine::described(e, run.parent.device()),
            ),
        ),
    ])
}

/// `costs.json`: every planned entry (costs depend only on shapes, not on BLD) and the
/// non-block part.
pub fn cost_stage(run: &Run, progress: &mut dyn Progress) -> Result<CostTable> {
    let c = &run.config;
    let path = run.stages.join("costs.json");
    let prov = cost_provenance(run, &c.cost.model);
    Artifact::new("costs", path).reuse_or_build(&prov, progress, |progress| {
        measure_costs(run, prov.clone(), progress)
    })
}

/// Every planned entry's costs and the non-block part, from the run's cost model.
fn measure_costs(
    run: &Run,
    prov: BTreeMap<String, String>,
    progress: &mut dyn Progress,
) -> Result<CostTable> {
    let c = &run.config;
    let model = run.plugins.cost_models.get(&c.cost.model)?;
    let base = c.source.parent().unwrap_or(std::path::Path::new("."));
    let hardware = resolve_hardware(&c.deployment.hardware, base)?;
    let ctx = CostContext {
        parent: &run.parent.spec,
        deploy: &c.deployment,
        hardware: &hardware,
        device: run.parent.device().clone(),
        engine: run.engine().map_err(|e| e.to_string()),
    };
    let keys = run.plan()?;
    let specs = keys
        .iter()
        .map(|k| Ok((k.layer, entry_specs(&run.plugins, &run.parent.spec, k)?)))
        .collect::<Result<Vec<_>>>()?;
    let (non_block, costs) = model.table(&ctx, &specs, progress)?;
    let entries = keys
        .iter()
        .zip(costs)
        .map(|(k, costs)| CostEntry {
            layer: k.layer,
            variant: k.id(),
            costs,
        })
        .collect();
    let t = CostTable {
        model: model.name().to_string(),
        deployment: c.deployment.clone(),
        hardware,
        non_block,
        entries,
        provenance: prov,
    };
    Ok(t)
}

/// Where `puzzle score --shard i/n` writes its part: `scores.d/shard-i-of-n.json`.
pub const SCORE_SHARDS: &str = "scores.d";

/// `scores.json`: replace-1-block scores of every library entry. The library must be complete.
/// Entries already scored by shards (`puzzle score --shard`, files in [`SCORE_SHARDS`] recorded
/// for the same inputs) are taken from them; the rest are scored here. Each entry's scores
/// depend only on it and the parent, so the merged table is the one an unsharded pass writes
/// (but for `seconds`, the shards' sum plus this pass's).
pub fn score_stage(run: &Run, progress: &mut dyn Progress) -> Result<ScoreTable> {
    let (metas, prov) = score_inputs(run)?;
    let path = run.stages.join("scores.json");
    Artifact::new("scores", path).reuse_or_build(&prov.clone(), progress, |progress| {
        let parts = score_shards(run, &prov)?;
        let done: BTreeMap<(usize, String), &puzzle_core::score::ScoreEntry> = parts
            .iter()
            .flat_map(|t| t.entries.iter().map(|e| ((e.layer, e.variant.clone()), e)))
            .collect();
        let todo: Vec<EntryMeta> = metas
            .iter()
            .filter(|m| !done.contains_key(&(m.key.layer, m.key.id())))
            .cloned()
            .collect();
        if !parts.is_empty() {
            progress.note(&format!(
                "scores: {} entries from {} shard file(s) in {}, {} to score here",
                done.len(),
                parts.len(),
                run.stages.join(SCORE_SHARDS).display(),
                todo.len()
            ));
        }
        let mut table = match (todo.is_empty(), parts.first()) {
            (true, Some(first)) => ScoreTable {
                entries: vec![],
                seconds: 0.0,
                provenance: prov.clone(),
                ..first.clone()
            },
            _ => score_library(run, &todo, prov.clone(), progress)?,
        };
        // In the library's order, as one pass over every entry lists them.
        let mut by_key: BTreeMap<(usize, String), puzzle_core::score::ScoreEntry> = done
            .into_iter()
            .map(|(k, e)| (k, e.clone()))
            .chain(
                table
                    .entries
                    .drain(..)
                    .map(|e| ((e.layer, e.variant.clone()), e)),
            )
            .collect();
        table.entries = metas
            .iter()
            .filter_map(|m| by_key.remove(&(m.key.layer, m.key.id())))
            .collect();
        table.seconds += parts.iter().map(|t| t.seconds).sum::<f64>();
        Ok(table)
    })
}

/// Shard `index` of `count` of the replace-1-block scores (the entries [`shard_keys`] gives it),
/// into `scores.d/shard-INDEX-of-COUNT.json`; [`score_stage`] merges them.
pub fn score_shard(
    run: &Run,
    shard: (usize, usize),
    progress: &mut dyn Progress,
) -> Result<ScoreTable> {
    let (metas, prov) = score_inputs(run)?;
    let keys: Vec<EntryKey> = metas.iter().map(|m| m.key.clone()).collect();
    let mine = shard_keys(&keys, shard);
    let mine: Vec<EntryMeta> = metas
        .into_iter()
        .filter(|m| mine.contains(&m.key))
        .collect();
    let mut shard_prov = prov;
    shard_prov.insert("shard".into(), format!("{}/{}", shard.0, shard.1));
    let path = run
        .stages
        .join(SCORE_SHARDS)
        .join(format!("shard-{}-of-{}.json", shard.0, shard.1));
    Artifact::new("scores shard", path).reuse_or_build(&shard_prov.clone(), progress, |progress| {
        score_library(run, &mine, shard_prov, progress)
    })
}

/// The shard files in [`SCORE_SHARDS`] recorded for `prov` (any shard count); others are
/// ignored (made for another library, config or parent).
fn score_shards(run: &Run, prov: &BTreeMap<String, String>) -> Result<Vec<ScoreTable>> {
    let dir = run.stages.join(SCORE_SHARDS);
    let Ok(files) = std::fs::read_dir(&dir) else {
        return Ok(vec![]);
    };
    let mut paths: Vec<_> = files
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let Ok(t) = fsutil::read_json::<ScoreTable>(&p) else {
            continue;
        };
        let mut base = t.provenance.clone();
        if base.remove("shard").is_some() && &base == prov {
            out.push(t);
        }
    }
    Ok(out)
}

/// The finished library's entries (all of them: scores are taken against a complete library)
/// and the provenance a score table records.
fn score_inputs(run: &Run) -> Result<(Vec<EntryMeta>, BTreeMap<String, String>)> {
    let c = &run.config;
    let keys = run.plan()?;
    let prov_bld = run.bld_provenance();
    let mut metas = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for k in &keys {
        match read_done(&run.library(), k, Some(&prov_bld)) {
            Some(m) => metas.push(m),
            None => missing.push(format!("L{} {}", k.layer, k.id())),
        }
    }
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "the library is incomplete: {} of {} entries are missing (e.g. {}); run `puzzle bld` (all shards) first",
            missing.len(),
            keys.len(),
            missing[..missing.len().min(3)].join(", ")
        )));
    }
    // What the entries are, not how long they took.
    let timeless: Vec<_> = metas
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.seconds = 0.0;
            m
        })
        .collect();
    let library_hash = RunConfig::hash_of(&timeless);
    let prov = BTreeMap::from([
        ("parent".to_string(), run.parent_fingerprint.clone()),
        ("data".to_string(), run.data_fingerprint.clone()),
        ("library".to_string(), library_hash),
        ("config".to_string(), RunConfig::hash_of(&c.score)),
    ]);
    Ok((metas, prov))
}

/// Replace-1-block scores of the finished library `metas` on the run's validation windows and
/// `[score]` tasks.
fn score_library(
    run: &Run,
    metas: &[EntryMeta],
    prov: BTreeMap<String, String>,
    progress: &mut dyn Progress,
) -> Result<ScoreTable> {
    let c = &run.config;
    let windows = run.windows(Split::Validation, c.score.seq_len)?;
    let tasks: Vec<(String, Vec<TaskItem>)> = c
        .score
        .tasks
        .iter()
        .map(|p| {
            let mut items = read_tasks(p)?;
            if c.score.task_items > 0 {
                items.truncate(c.score.task_items);
            }
            Ok((p.display().to_string(), items))
        })
        .collect::<Result<_>>()?;
    score_entries(run, metas, &windows, &tasks, prov, &c.score, progress)
}

/// Replace-1-block scores of `entries` against the run's parent on `windows` and `tasks`, with
/// `cfg` (which may differ from the run's own, e.g. to compare with the prefix cache off).
pub fn score_entries(
    run: &Run,
    entries: &[EntryMeta],
    windows: &[Vec<u32>],
    tasks: &[(String, Vec<TaskItem>)],
    provenance: BTreeMap<String, String>,
    cfg: &ScoreConfig,
    progress: &mut dyn Progress,
) -> Result<ScoreTable> {
    let inputs = ScoreInputs {
        parent_spec: &run.parent.spec,
        parent: run.parent.decoder()?,
        parent_weights: &run.parent.weights,
        tokenizer: run.tokenizer(),
        entries,
        library: &run.library(),
        windows,
        tasks,
        provenance,
        scorers: &run.plugins.scorers,
    };
    run_score(&inputs, cfg, progress)
}

/// `search/table.json` from the cost and score tables.
pub fn search_table(run: &Run, costs: &CostTable, scores: &ScoreTable) -> Result<BlockTable> {
    let t = puzzle_core::search::from_run::block_table(
        &run.parent.spec,
        costs,
        scores,
        &run.stages.join("search/table.json").display().to_string(),
    )?;
    fsutil::write_json(&run.stages.join("search/table.json"), &t)?;
    Ok(t)
}

/// One child of the additivity check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdditivityPoint {
    pub child: String,
    /// Per layer: `attention + FFN` variant ids.
    #[serde(default)]
    pub layers: Vec<String>,
    pub batch: usize,
    pub predicted_ms: f64,
    pub measured_ms: f64,
    /// `(predicted - measured) / measured`.
    pub error: f64,
    /// The error of the predicted speed-up over the parent (predicted parent / predicted child
    /// over measured parent / measured child, minus 1): what a relative target depends on, free
    /// of the machine's drift between the cost stage and this check.
    #[serde(default)]
    pub speedup_error: f64,
}

/// The additivity check: `children` random children (plus the parent) from the cost table's
/// entries, measured end to end and compared with the sum of their blocks' costs plus the
/// non-block constant.
pub fn validate_additivity(
    run: &Run,
    costs: &CostTable,
    children: usize,
    seed: u64,
) -> Result<Vec<AdditivityPoint>> {
    let d = &costs.deployment;
    let device = run.parent.device().clone();
    let engine = run.plugins.engine(d.engine)?;
    let mut rng = SeededRng::new(seed);
    let mut models = Vec::new();
    for c in 0..=children {
        // Child 0 is the parent itself.
        let (spec, picks) = additivity_child(run, costs, (c > 0).then_some(&mut rng))?;
        let weights = random_weights(&spec, 0.02, seed + c as u64);
        let label = if c == 0 {
            "parent".to_string()
        } else {
            format!("random child {c}")
        };
        let served = puzzle_core::engine::load_timed(engine, &spec, &weights, d, &device)
            .context(format!("loading the {label} in {}", d.engine))?;
        let layers = picks
            .iter()
            .map(|(a, f)| format!("{} + {}", a.variant, f.variant))
            .collect::<Vec<_>>();
        models.push((label, layers, picks, served));
    }
    let refs: Vec<&dyn Served> = models.iter().map(|m| m.3.as_ref()).collect();
    let mut out = Vec::new();
    for &b in &d.batch_sizes {
        // Round-robin (after a warm-up round), so drifts hit every model alike.
        let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); refs.len()];
        for round in 0..=ADDITIVITY_ROUNDS {
            for (i, m) in refs.iter().enumerate() {
                let (_, total) = m.request(b, d.prefill_len, d.generation_len)?;
                if round > 0 {
                    rounds[i].push(total);
                }
            }
        }
        for ((label, layers, picks, _), times) in models.iter().zip(rounds) {
            let mut predicted = costs.non_block.runtime_ms(b, d).ok_or_else(|| {
                Error::invalid(format!(
                    "costs.json has no latency for batch {b}: use a timing cost model"
                ))
            })?;
            for (a, f) in picks {
                predicted += a.costs.runtime_ms(b, d).unwrap_or(0.0)
                    + f.costs.runtime_ms(b, d).unwrap_or(0.0);
            }
            let measured = median(times);
            out.push(AdditivityPoint {
                child: label.clone(),
                layers: layers.clone(),
                batch: b,
                predicted_ms: predicted,
                measured_ms: measured,
                error: (predicted - measured) / measured,
                speedup_error: 0.0,
            });
        }
        // Child 0, the parent, is the first point of this batch.
        let first = out.len() - models.len();
        let (pp, pm) = (out[first].predicted_ms, out[first].measured_ms);
        for p in &mut out[first..] {
            p.speedup_error = (pp / p.predicted_ms) / (pm / p.measured_ms) - 1.0;
        }
    }
    Ok(out)
}

/// Timed rounds of the additivity check (after one warm-up round).
const ADDITIVITY_ROUNDS: usize = 7;

/// A child of the additivity check: the parent (no `rng`) or a random (attention, FFN) entry
/// per layer; its spec and the cost entries it is made of.
fn additivity_child<'c>(
    run: &Run,
    costs: &'c CostTable,
    mut rng: Option<&mut SeededRng>,
) -> Result<(ModelSpec, Vec<(&'c CostEntry, &'c CostEntry)>)> {
    let parent = &run.parent.spec;
    let mut spec = parent.clone();
    let mut picks = Vec::new();
    for layer in 0..parent.layers.len() {
        let of_kind = |kind: &str| -> Vec<&CostEntry> {
            costs
                .entries
                .iter()
                .filter(|e| {
                    e.layer == layer && e.variant.starts_with(kind) && !e.variant.contains('+')
                })
                .collect()
        };
        let (attns, ffns) = (of_kind("attn:"), of_kind("ffn:"));
        let (a, f) = match rng.as_deref_mut() {
            None => {
                let pa = parent
                    .variant_of(layer, SubblockKind::Attention)
                    .to_string();
                let pf = parent.variant_of(layer, SubblockKind::Ffn).to_string();
                (
                    attns.iter().find(|e| e.variant == pa).copied(),
                    ffns.iter().find(|e| e.variant == pf).copied(),
                )
            }
            Some(rng) => (
                attns.get(rng.below(attns.len().max(1))).copied(),
                ffns.get(rng.below(ffns.len().max(1))).copied(),
            ),
        };
        let (a, f) = a
            .zip(f)
            .ok_or_else(|| Error::invalid(format!("costs.json lacks layer {layer}")))?;
        let key = EntryKey {
            layer,
            variants: vec![a.variant.parse()?, f.variant.parse()?],
        };
        let specs = entry_specs(&run.plugins, parent, &key)?;
        let (SubblockSpec::Attention(att), SubblockSpec::Ffn(ffn)) = (&specs[0], &specs[1]) else {
            return Err(Error::invalid("entry kinds out of order"));
        };
        spec.layers[layer] = LayerSpec {
            attention: att.clone(),
            ffn: ffn.clone(),
        };
        picks.push((a, f));
    }
    Ok((spec, picks))
}
