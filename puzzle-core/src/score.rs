//! What each variant loses (Puzzle stage 5): replace-1-block scores. The parent with exactly one
//! library entry swapped in is run on a validation set and compared with the parent by
//! pluggable [`Scorer`]s. The parent's activation at every layer input is cached, so replacing
//! layer `i` recomputes only layers `>= i`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::bld::{EntryMeta, load_entry};
use crate::error::{Error, Result};
use crate::eval::tasks::{TaskItem, choice_logliks};
use crate::nn::Decoder;
use crate::progress::Progress;
use crate::spec::ModelSpec;
use crate::variants::Subblock;
use crate::weights::WeightSource;
use puzzle_types::registry::Registry;

/// One validation batch as scorers see it.
pub struct TokenBatch<'a> {
    /// `[batch, seq, vocab]`
    pub parent_logits: &'a Tensor<3>,
    pub child_logits: &'a Tensor<3>,
    /// Final-norm outputs `[batch, seq, hidden]`.
    pub parent_hidden: &'a Tensor<3>,
    pub child_hidden: &'a Tensor<3>,
    /// Next tokens `[batch, seq]`.
    pub targets: &'a Tensor<2, Int>,
}

/// Task log-likelihoods of the child and the parent, per item and choice.
pub struct TaskBatch<'a> {
    pub items: &'a [TaskItem],
    pub child: &'a [Vec<f64>],
    pub parent: &'a [Vec<f64>],
}

/// The contract of a scorer: a number per replaced block, comparable across entries. Token-level
/// scorers return `(sum, count)` per batch (the score is the ratio over the set); task scorers
/// return their score from log-likelihoods. A scorer answers `None` for inputs it does not use.
pub trait Scorer: Send + Sync + 'static {
    /// Metric name in tables (`kl`, `lm_loss`, ...).
    fn name(&self) -> &'static str;
    /// Whether larger is better (accuracy, agreement).
    fn higher_is_better(&self) -> bool {
        false
    }
    /// Contribution of one validation batch: (sum, count), the metric being the sums' ratio over
    /// all batches; `None` when the scorer does not use token batches. An error fails the
    /// scoring stage: a metric over some of the batches would look valid and not be.
    fn token_batch(&self, _b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        Ok(None)
    }
    /// Score from task log-likelihoods; `None` when the scorer does not use tasks.
    fn tasks(&self, _t: &TaskBatch) -> Result<Option<f64>> {
        Ok(None)
    }
    /// Whether it needs task items.
    fn needs_tasks(&self) -> bool {
        false
    }
}

/// A scorer registered by a static plugin.
pub struct ScorerRegistration {
    pub scorer: &'static dyn Scorer,
    pub provider: &'static str,
    pub description: &'static str,
}

inventory::collect!(ScorerRegistration);

impl puzzle_types::registry::Named for dyn Scorer {
    fn name(&self) -> &str {
        Scorer::name(self)
    }
}

/// The statically linked scorers (their `inventory` submissions), as a registry.
pub fn static_scorers() -> Registry<dyn Scorer> {
    let mut r = Registry::new("scorer");
    for m in inventory::iter::<ScorerRegistration> {
        r.add(m.scorer, m.provider, m.description)
            .expect("two static scorers share a name");
    }
    r
}

/// One row of `scores.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreEntry {
    pub layer: usize,
    pub variant: String,
    pub metrics: BTreeMap<String, f64>,
}

/// `scores.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreTable {
    /// The metric the search optimises by default.
    pub primary: String,
    /// Metrics where larger is better.
    pub higher_is_better: Vec<String>,
    /// The parent's own values (e.g. its LM loss and task accuracy).
    pub parent: BTreeMap<String, f64>,
    pub entries: Vec<ScoreEntry>,
    pub provenance: BTreeMap<String, String>,
    /// Seconds spent scoring.
    pub seconds: f64,
}

impl ScoreTable {
    /// Reads `scores.json`.
    pub fn load(path: &Path) -> Result<Self> {
        crate::fsutil::read_json(path)
    }

    /// The metrics of `(layer, variant)`.
    pub fn get(&self, layer: usize, variant: &str) -> Option<&BTreeMap<String, f64>> {
        self.entries
            .iter()
            .find(|e| e.layer == layer && e.variant == variant)
            .map(|e| &e.metrics)
    }
}

/// The parent's activations on one validation batch.
struct CachedBatch {
    ids: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    /// Input of every layer.
    inputs: Vec<Tensor<3>>,
    hidden: Tensor<3>,
    logits: Tensor<3>,
}

/// The parent with one entry swapped in (shares every other weight with the parent).
pub fn swapped(parent: &Decoder, layer: usize, subs: Vec<Subblock>) -> Decoder {
    let mut child = parent.clone();
    for s in subs {
        match s {
            Subblock::Attention(a) => child.layers[layer].attention = a,
            Subblock::Ffn(f) => child.layers[layer].ffn = f,
        }
    }
    child
}

/// Settings of a scoring pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Scorers to run; the first is the search's default objective.
    #[serde(default = "d_metrics")]
    pub metrics: Vec<String>,
    /// Validation sequences.
    #[serde(default = "d_seqs")]
    pub sequences: usize,
    #[serde(default = "d_seq_len")]
    pub seq_len: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Task files for task scorers (relative to the config).
    #[serde(default)]
    pub tasks: Vec<std::path::PathBuf>,
    /// Task items to use per task file (0: all).
    #[serde(default = "d_items")]
    pub task_items: usize,
    /// Recompute every layer from the embeddings instead of caching the parent's prefix (for
    /// checking the cache; slower).
    #[serde(default)]
    pub no_prefix_cache: bool,
}

fn d_metrics() -> Vec<String> {
    vec![
        "kl".into(),
        "lm_loss".into(),
        "top1".into(),
        "cosine".into(),
    ]
}
fn d_seqs() -> usize {
    32
}
fn d_seq_len() -> usize {
    128
}
fn d_batch() -> usize {
    8
}
fn d_items() -> usize {
    200
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            metrics: d_metrics(),
            sequences: d_seqs(),
            seq_len: d_seq_len(),
            batch_size: d_batch(),
            tasks: vec![],
            task_items: d_items(),
            no_prefix_cache: false,
        }
    }
}

fn ids_of(windows: &[Vec<u32>], device: &burn::tensor::Device) -> Tensor<2, Int> {
    let t = windows[0].len();
    let flat: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [windows.len(), t]), device)
}

/// Inputs of a scoring pass.
pub struct ScoreInputs<'a> {
    pub parent_spec: &'a ModelSpec,
    pub parent: &'a Decoder,
    pub parent_weights: &'a dyn WeightSource,
    pub tokenizer: &'a crate::tokenizer::Tokenizer,
    /// Library entries to score.
    pub entries: &'a [EntryMeta],
    pub library: &'a Path,
    /// Validation windows of `seq_len + 1` tokens.
    pub windows: &'a [Vec<u32>],
    /// Task suites: (name, items).
    pub tasks: &'a [(String, Vec<TaskItem>)],
    pub provenance: BTreeMap<String, String>,
    /// Where metric names find their scorer.
    pub scorers: &'a Registry<dyn Scorer>,
}

/// Replace-1-block scores of every entry.
pub fn run_score(
    inputs: &ScoreInputs,
    cfg: &ScoreConfig,
    progress: &mut dyn Progress,
) -> Result<ScoreTable> {
    let t0 = Instant::now();
    let scorers = select_scorers(inputs, cfg)?;
    let windows: Vec<Vec<u32>> = inputs.windows.iter().take(cfg.sequences).cloned().collect();
    if windows.is_empty() {
        return Err(Error::invalid("no validation sequences to score on"));
    }
    let pass = ScorePass {
        inputs,
        cfg,
        cache: parent_pass(inputs.parent, &windows, cfg.batch_size),
        task_ll_parent: if scorers.iter().any(|s| s.needs_tasks()) {
            inputs
                .tasks
                .iter()
                .map(|(_, items)| {
                    choice_logliks(inputs.parent, inputs.tokenizer, items, cfg.batch_size * 4)
                })
                .collect::<Result<_>>()?
        } else {
            vec![]
        },
        scorers,
    };
    let parent_metrics = pass.score(inputs.parent, None)?;
    let entries = pass.score_entries(progress)?;
    let scorers = &pass.scorers;
    Ok(ScoreTable {
        primary: scorers[0].name().to_string(),
        higher_is_better: scorers
            .iter()
            .filter(|s| s.higher_is_better())
            .map(|s| s.name().to_string())
            .collect(),
        parent: parent_metrics,
        entries,
        provenance: inputs.provenance.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The scorers of `[score] metrics`, checked against the inputs they need.
fn select_scorers(inputs: &ScoreInputs, cfg: &ScoreConfig) -> Result<Vec<&'static dyn Scorer>> {
    let scorers: Vec<&'static dyn Scorer> = cfg
        .metrics
        .iter()
        .map(|m| inputs.scorers.get(m))
        .collect::<Result<_>>()?;
    if scorers.is_empty() {
        return Err(Error::invalid("[score] metrics is empty"));
    }
    if scorers.iter().any(|s| s.needs_tasks()) && inputs.tasks.is_empty() {
        return Err(Error::invalid(
            "a task scorer (accuracy) is selected but [score] tasks names no task file",
        ));
    }
    Ok(scorers)
}

/// The parent pass: every batch's ids, targets, each layer's input, final hidden and logits.
fn parent_pass(parent: &Decoder, windows: &[Vec<u32>], batch: usize) -> Vec<CachedBatch> {
    let device = parent.device();
    let mut cache = Vec::new();
    for chunk in windows.chunks(batch.max(1)) {
        let all = ids_of(chunk, &device);
        let t = all.dims()[1] - 1;
        let ids = all.clone().narrow(1, 0, t);
        let targets = all.narrow(1, 1, t);
        let [b, _] = ids.dims();
        let ctx = parent.context(b, 0, t, &[]);
        let mut x = parent.embed(ids.clone());
        let mut inputs_l = Vec::with_capacity(parent.layers.len());
        for layer in &parent.layers {
            inputs_l.push(x.clone());
            x = layer.forward(x, &ctx, None);
        }
        let hidden = parent.final_norm(x);
        let logits = parent.logits(hidden.clone());
        cache.push(CachedBatch {
            ids,
            targets,
            inputs: inputs_l,
            hidden,
            logits,
        });
    }
    cache
}

/// One scoring pass: the parent's cached activations and what the scorers compare with.
struct ScorePass<'a> {
    inputs: &'a ScoreInputs<'a>,
    cfg: &'a ScoreConfig,
    scorers: Vec<&'static dyn Scorer>,
    cache: Vec<CachedBatch>,
    /// Per task suite, per item, the parent's choice log-likelihoods.
    task_ll_parent: Vec<Vec<Vec<f64>>>,
}

impl ScorePass<'_> {
    /// The child's final hidden state and logits on a cached batch, from layer `from_layer`'s
    /// cached input (the prefix cache) or from the embeddings.
    fn child_forward(
        child: &Decoder,
        cb: &CachedBatch,
        from_layer: Option<usize>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [b, t] = cb.ids.dims();
        let ctx = child.context(b, 0, t, &[]);
        let (start, mut x) = match from_layer {
            Some(i) => (i, cb.inputs[i].clone()),
            None => (0, child.embed(cb.ids.clone())),
        };
        for layer in &child.layers[start..] {
            x = layer.forward(x, &ctx, None);
        }
        let h = child.final_norm(x);
        let l = child.logits(h.clone());
        (h, l)
    }

    /// The token scorers' (sum, count) over every cached batch.
    fn token_sums(&self, child: &Decoder, from_layer: Option<usize>) -> Result<Vec<(f64, f64)>> {
        let mut sums: Vec<(f64, f64)> = vec![(0.0, 0.0); self.scorers.len()];
        for cb in &self.cache {
            let (ch_hidden, ch_logits) = Self::child_forward(child, cb, from_layer);
            let batch = TokenBatch {
                parent_logits: &cb.logits,
                child_logits: &ch_logits,
                parent_hidden: &cb.hidden,
                child_hidden: &ch_hidden,
                targets: &cb.targets,
            };
            for (k, s) in self.scorers.iter().enumerate() {
                if let Some((a, c)) = s.token_batch(&batch)? {
                    sums[k].0 += a;
                    sums[k].1 += c;
                }
            }
        }
        Ok(sums)
    }

    /// A task scorer's mean over the task suites, `None` when it scored none.
    fn task_score(&self, s: &dyn Scorer, child: &Decoder) -> Result<Option<f64>> {
        let (tok, batch) = (self.inputs.tokenizer, self.cfg.batch_size * 4);
        let mut vals = Vec::new();
        for (ti, (_, items)) in self.inputs.tasks.iter().enumerate() {
            let child_ll = choice_logliks(child, tok, items, batch)?;
            if let Some(v) = s.tasks(&TaskBatch {
                items,
                child: &child_ll,
                parent: &self.task_ll_parent[ti],
            })? {
                vals.push(v);
            }
        }
        Ok((!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64))
    }

    /// Every metric of `child`.
    fn score(&self, child: &Decoder, from_layer: Option<usize>) -> Result<BTreeMap<String, f64>> {
        let sums = self.token_sums(child, from_layer)?;
        let mut out = BTreeMap::new();
        for (k, s) in self.scorers.iter().enumerate() {
            if s.needs_tasks() {
                if let Some(v) = self.task_score(*s, child)? {
                    out.insert(s.name().to_string(), v);
                }
            } else if sums[k].1 > 0.0 {
                out.insert(s.name().to_string(), sums[k].0 / sums[k].1);
            }
        }
        Ok(out)
    }

    /// Every library entry swapped into the parent alone, scored.
    fn score_entries(&self, progress: &mut dyn Progress) -> Result<Vec<ScoreEntry>> {
        let inputs = self.inputs;
        let device = inputs.parent.device();
        let first = self.scorers[0].name();
        progress.start("score", inputs.entries.len() as u64);
        let mut entries = Vec::new();
        for (n, e) in inputs.entries.iter().enumerate() {
            let subs = load_entry(
                inputs.library,
                e,
                inputs.parent_spec,
                inputs.parent_weights,
                &device,
            )?;
            let child = swapped(inputs.parent, e.key.layer, subs);
            let from = (!self.cfg.no_prefix_cache).then_some(e.key.layer);
            let metrics = self.score(&child, from)?;
            let shown = metrics.get(first).copied().unwrap_or(f64::NAN);
            progress.set(
                n as u64 + 1,
                &format!("L{} {}: {first} {shown:.5}", e.key.layer, e.key.id()),
            );
            entries.push(ScoreEntry {
                layer: e.key.layer,
                variant: e.key.id(),
                metrics,
            });
        }
        progress.finish();
        Ok(entries)
    }
}

impl crate::artifact::Recorded for ScoreTable {
    type Inputs = BTreeMap<String, String>;
    fn inputs(&self) -> BTreeMap<String, String> {
        self.provenance.clone()
    }
}
