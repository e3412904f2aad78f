//! Blockwise Local Distillation (Puzzle stage 3): every library entry (a layer's variant) gets
//! the parent's input activation of its layer and learns to reproduce the parent's output.
//!
//! - Decoupled (default): an attention variant trains inside `[a_variant, f_parent (frozen)]`,
//!   an FFN variant inside `[a_parent (frozen), f_variant]`; coupled entries train both.
//! - Loss: normalised MSE `MSE(o_p, o_c) / (MSE(o_p, 0) + eps)` on the layer's output minus its
//!   input (the residual is subtracted so that a no-op scores 1, the parent 0).
//! - One parent forward per batch feeds every entry of every layer.
//! - Entries are independent: `--shard i/n` trains the `i`-th of `n` contiguous runs of the
//!   entries ordered by layer, so a shard touches few layers and needs the parent only up to its
//!   last one ([`Decoder::load_trunk`]) and frozen copies of its own layers only; shards write
//!   into the same library. Each entry checkpoints atomically and resumes from its own step after
//!   a kill; on a stop request ([`crate::interrupt`]: SIGTERM, SIGUSR1, Ctrl-C) every entry in
//!   training checkpoints at the step it reached before the invocation returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, Recorded};
use crate::data::BatchOrder;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::nn::{Decoder, FfnBlock, ForwardCtx, Layer, RopeTables, Subblock as _};
use crate::progress::Progress;
use crate::registry::Registry;
use crate::spec::ModelSpec;
use crate::train::loss::normalized_mse;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::WarmupCosine;
use crate::variant::{SubblockKind, VariantId};
use crate::variants::{
    LayerCalibration, Subblock, SubblockSpec, VariantCatalog, build_subblock, catalog_for,
    layer_weights,
};
use crate::weights::{
    HostTensor, MemoryWeights, SafetensorsWeights, StoreDtype, WeightSource, write_safetensors,
};

const EPS: f64 = 1e-6;

/// `[bld]`: blockwise local distillation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BldConfig {
    /// Training tokens per variant; 0 keeps every entry at its training-free init (the
    /// paper's ablation of BLD: `puzzle ablate`'s `init-only` row).
    pub tokens: usize,
    #[serde(default = "d_seq")]
    pub seq_len: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Peak learning rate (BLD tolerates higher rates than pretraining).
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
    #[serde(default = "d_adamw")]
    pub adamw: AdamWConfig,
    /// Save in-progress entries every this many steps.
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    /// Held-out sequences for the normalised MSE at init and at the end.
    #[serde(default = "d_eval")]
    pub eval_sequences: usize,
    /// Calibration sequences for the channel-contribution statistics.
    #[serde(default = "d_calib")]
    pub calibration_sequences: usize,
    #[serde(default)]
    pub seed: u64,
    /// Coupled BLD for a narrowed set: whole blocks `[attention variant, FFN variant]` trained
    /// together in every layer, in addition to the decoupled library.
    #[serde(default)]
    pub coupled: Vec<[VariantId; 2]>,
    /// Coupled BLD after a decoupled search, as the paper ran it (`puzzle run` only): the
    /// search runs once on the decoupled library (into the run's `decoupled/`), the attention
    /// and FFN variants its solutions chose most often are paired, every pair is trained as a
    /// whole block in every layer, and the search runs again on the library with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couple_prominent: Option<Prominent>,
}

/// `[bld.couple_prominent]`: how many of the decoupled search's most chosen variants of each
/// kind are paired for coupled BLD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prominent {
    pub attention: usize,
    pub ffn: usize,
}

fn d_seq() -> usize {
    128
}
fn d_batch() -> usize {
    8
}
fn d_lr() -> f64 {
    1e-3
}
fn d_warmup() -> usize {
    10
}
fn d_ckpt() -> usize {
    20
}
fn d_eval() -> usize {
    16
}
fn d_calib() -> usize {
    16
}
fn d_adamw() -> AdamWConfig {
    AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    }
}

/// What a library entry is: one variant (decoupled) or an attention + FFN pair (coupled).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryKey {
    pub layer: usize,
    /// One id (decoupled) or `[attention, ffn]` (coupled).
    pub variants: Vec<VariantId>,
}

impl EntryKey {
    /// `attn:gqa(kv=2)` or `attn:gqa(kv=2)+ffn:width(512)`.
    pub fn id(&self) -> String {
        self.variants
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// A file-system friendly name.
    pub fn slug(&self) -> String {
        self.id()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '=' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Whether this entry is a whole block.
    pub fn coupled(&self) -> bool {
        self.variants.len() == 2
    }

    /// The folder of the entry inside `library/`.
    pub fn dir(&self, library: &Path) -> PathBuf {
        library
            .join(format!("L{:03}", self.layer))
            .join(self.slug())
    }
}

/// How an entry's weights were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntrySource {
    /// The parent's own subblock: nothing stored, taken from the parent checkpoint.
    Parent,
    /// No parameters (no-op): nothing to train.
    Identity,
    /// Initialised from the parent and trained by BLD (for `[bld] tokens`: none at all in the
    /// init-only ablation, where it keeps its init).
    Trained,
}

/// `meta.json` of a finished entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub key: EntryKey,
    pub specs: Vec<SubblockSpec>,
    pub source: EntrySource,
    /// Init method per subblock.
    pub init: Vec<String>,
    pub params: usize,
    pub tokens: usize,
    pub steps: usize,
    /// Normalised MSE on held-out activations before and after training.
    pub nmse_init: f64,
    pub nmse_final: f64,
    /// `(step, mean training loss since the previous point)`.
    pub loss_curve: Vec<(usize, f64)>,
    pub seconds: f64,
    pub parent_fingerprint: String,
    pub data_fingerprint: String,
    pub config_hash: String,
}

/// In-progress state of an entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EntryState {
    step: usize,
    nmse_init: f64,
    init: Vec<String>,
    loss_curve: Vec<(usize, f64)>,
    running: (f64, usize),
    seconds: f64,
    fingerprint: String,
}

/// Everything BLD needs to know about its inputs, for provenance and invalidation.
#[derive(Clone, Debug, PartialEq)]
pub struct Provenance {
    pub parent: String,
    pub data: String,
    pub config: String,
}

impl Provenance {
    fn combined(&self) -> String {
        format!("{}/{}/{}", self.parent, self.data, self.config)
    }
}

/// The library entries of a run, in canonical order (layer, attention before FFN, catalog
/// order; coupled blocks last).
pub fn plan(
    catalogs: &Registry<dyn VariantCatalog>,
    parent: &ModelSpec,
    space: &crate::variants::SpaceOptions,
    cfg: &BldConfig,
) -> Result<Vec<EntryKey>> {
    let mut keys: Vec<EntryKey> = crate::variants::enumerate_space(catalogs, parent, space)?
        .into_iter()
        .map(|(layer, v)| EntryKey {
            layer,
            variants: vec![v],
        })
        .collect();
    for [a, f] in &cfg.coupled {
        if a.kind() != SubblockKind::Attention || f.kind() != SubblockKind::Ffn {
            return Err(Error::invalid(format!(
                "bld.coupled entry [{a}, {f}] must be [attention variant, FFN variant]"
            )));
        }
        catalog_for(catalogs, a)?.spec(a, parent)?;
        catalog_for(catalogs, f)?.spec(f, parent)?;
        for layer in 0..parent.layers.len() {
            keys.push(EntryKey {
                layer,
                variants: vec![a.clone(), f.clone()],
            });
        }
    }
    Ok(keys)
}

/// Parses `i/n`, or `auto` from the launcher's environment ([`puzzle_types::shard`]).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    puzzle_types::shard::parse(s)
}

/// Reads a finished entry's meta, if it exists and matches `prov`.
pub fn read_done(library: &Path, key: &EntryKey, prov: Option<&Provenance>) -> Option<EntryMeta> {
    let meta = Artifact::new(key.id(), key.dir(library).join("meta.json"));
    match prov {
        Some(p) => meta.current(p),
        None => fsutil::read_json(meta.path()).ok(),
    }
}

/// A finished entry is current when the parent, the data and the BLD config it was trained on
/// are the ones asked for.
impl Recorded for EntryMeta {
    type Inputs = Provenance;
    fn inputs(&self) -> Provenance {
        Provenance {
            parent: self.parent_fingerprint.clone(),
            data: self.data_fingerprint.clone(),
            config: self.config_hash.clone(),
        }
    }
}

/// Every finished entry of a library (any provenance).
pub fn read_library(library: &Path) -> Result<Vec<EntryMeta>> {
    let mut out = Vec::new();
    let Ok(layers) = std::fs::read_dir(library) else {
        return Ok(out);
    };
    for l in layers.flatten() {
        if !l.path().is_dir() {
            continue;
        }
        for e in std::fs::read_dir(l.path())
            .map_err(|e| Error::io(l.path(), e))?
            .flatten()
        {
            let p = e.path().join("meta.json");
            if p.is_file() {
                out.push(fsutil::read_json(&p)?);
            }
        }
    }
    // Layer, then attention before FFN before whole blocks, larger before smaller.
    out.sort_by(|a: &EntryMeta, b: &EntryMeta| {
        let rank = |m: &EntryMeta| (m.key.layer, m.key.variants.len(), m.key.variants[0].kind());
        rank(a)
            .cmp(&rank(b))
            .then(b.params.cmp(&a.params))
            .then(a.key.cmp(&b.key))
    });
    Ok(out)
}

/// An entry's subblocks as modules on `device`: from the library, or the parent for
/// `Parent` entries.
pub fn load_entry(
    library: &Path,
    meta: &EntryMeta,
    parent: &ModelSpec,
    parent_weights: &dyn WeightSource,
    device: &Device,
) -> Result<Vec<Subblock>> {
    let weights = match meta.source {
        EntrySource::Parent => layer_weights(parent_weights, meta.key.layer)?,
        EntrySource::Identity => MemoryWeights::new("identity"),
        EntrySource::Trained => {
            let f = meta.key.dir(library).join("weights.safetensors");
            let w = SafetensorsWeights::open(&f)?;
            let mut m = MemoryWeights::new(f.display().to_string());
            for n in w.names() {
                m.insert(n.clone(), w.read(&n)?);
            }
            m
        }
    };
    meta.specs
        .iter()
        .map(|s| {
            let names: Vec<String> = s
                .tensor_shapes(parent)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let mut part = MemoryWeights::new(weights.label.clone());
            for n in names {
                part.insert(n.clone(), weights.read(&n)?);
            }
            build_subblock(parent, s, meta.key.layer, &part, device)
        })
        .collect()
}

/// Parent activations of one batch: per layer its input, the residual after attention, and the
/// output. `[batch, seq, hidden]` each.
pub struct LayerActs {
    pub input: Tensor<3>,
    pub mid: Tensor<3>,
    pub output: Tensor<3>,
}

/// Runs the parent and keeps every layer's activations.
pub fn parent_activations(parent: &Decoder, ids: Tensor<2, Int>) -> (Vec<LayerActs>, ForwardCtx) {
    parent_activations_from(parent, ids, 0)
}

/// Runs the parent and keeps the activations of layers `from..` (element `i` is layer
/// `from + i`): a shard of late layers holds no activations of the early ones.
pub fn parent_activations_from(
    parent: &Decoder,
    ids: Tensor<2, Int>,
    from: usize,
) -> (Vec<LayerActs>, ForwardCtx) {
    let [b, t] = ids.dims();
    let ctx = parent.context(b, 0, t, &[]);
    let mut x = parent.embed(ids);
    let mut acts = Vec::with_capacity(parent.layers.len().saturating_sub(from));
    for (i, layer) in parent.layers.iter().enumerate() {
        if i < from {
            x = layer.forward(x, &ctx, None);
            continue;
        }
        let mid = layer.attention.forward(x.clone(), &ctx, None);
        let out = layer.ffn.forward(mid.clone(), &ctx, None);
        acts.push(LayerActs {
            input: x,
            mid,
            output: out.clone(),
        });
        x = out;
    }
    (acts, ctx)
}

/// Block influence of every layer, `1 - cos(x_in, x_out)` averaged over tokens (ShortGPT).
pub fn block_influence(parent: &Decoder, windows: &[Vec<u32>], batch: usize) -> Vec<f64> {
    let device = parent.device();
    let mut sums = vec![0.0; parent.layers.len()];
    let mut n = 0;
    for chunk in windows.chunks(batch.max(1)) {
        let ids = ids_of(chunk, &device);
        let (acts, _) = parent_activations(parent, ids);
        for (i, a) in acts.iter().enumerate() {
            sums[i] += crate::train::loss::cosine_distance(a.input.clone(), a.output.clone())
                .into_scalar::<f32>() as f64;
        }
        n += 1;
    }
    sums.into_iter().map(|s| s / n.max(1) as f64).collect()
}

/// Calibration statistics of every layer (mean |X| of SwiGLU intermediate channels).
pub fn calibrate(parent: &Decoder, windows: &[Vec<u32>], batch: usize) -> Vec<LayerCalibration> {
    let device = parent.device();
    let mut sums: Vec<Option<Tensor<1>>> = vec![None; parent.layers.len()];
    let mut tokens = 0;
    for chunk in windows.chunks(batch.max(1)) {
        let ids = ids_of(chunk, &device);
        let [b, t] = ids.dims();
        tokens += b * t;
        let (acts, _) = parent_activations(parent, ids);
        for (i, (layer, a)) in parent.layers.iter().zip(&acts).enumerate() {
            if let FfnBlock::SwiGlu(s) = &layer.ffn {
                let h = s.norm.forward(a.mid.clone());
                let x = burn::tensor::activation::silu(s.gate_proj.forward(h.clone()))
                    * s.up_proj.forward(h);
                let n = x.dims()[2];
                let col = x.abs().reshape([b * t, n]).sum_dim(0).reshape([n]);
                sums[i] = Some(match sums[i].take() {
                    Some(acc) => acc + col,
                    None => col,
                });
            }
        }
    }
    sums.into_iter()
        .map(|s| LayerCalibration {
            ffn_abs_mean: s.map(|s| {
                s.try_into_vec_as::<f32>()
                    .expect("f32")
                    .into_iter()
                    .map(|v| v as f64 / tokens.max(1) as f64)
                    .collect()
            }),
            tokens,
        })
        .collect()
}

fn ids_of(windows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let t = windows[0].len();
    let flat: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [windows.len(), t]), device)
}

fn lift<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
    Tensor::from_inner(t.clone())
}

fn lift_ctx(ctx: &ForwardCtx) -> ForwardCtx {
    ForwardCtx {
        rope: RopeTables {
            cos: lift(&ctx.rope.cos),
            sin: lift(&ctx.rope.sin),
        },
        key_mask: ctx.key_mask.clone().map(Tensor::from_inner),
    }
}

/// The layer output of an entry's block (minus its input), given the parent's activations and
/// the frozen parent layer for the half the entry does not replace.
fn block_delta(
    subs: &[Subblock],
    frozen: &Layer,
    a: &LayerActs,
    ctx: &ForwardCtx,
    lifted: bool,
) -> Tensor<3> {
    let (input, mid) = if lifted {
        (lift(&a.input), lift(&a.mid))
    } else {
        (a.input.clone(), a.mid.clone())
    };
    let out = match subs {
        [Subblock::Attention(at)] => {
            let m = at.forward(input.clone(), ctx, None);
            frozen.ffn.forward(m, ctx, None)
        }
        [Subblock::Ffn(f)] => f.forward(mid, ctx, None),
        [Subblock::Attention(at), Subblock::Ffn(f)] => {
            let m = at.forward(input.clone(), ctx, None);
            f.forward(m, ctx, None)
        }
        _ => unreachable!("entries hold one subblock or an attention + FFN pair"),
    };
    out - input
}

struct Trainee {
    key: EntryKey,
    specs: Vec<SubblockSpec>,
    source: EntrySource,
    modules: Vec<Subblock>,
    opt: AdamW,
    state: EntryState,
}

/// What a BLD invocation did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BldReport {
    pub planned: usize,
    pub in_shard: usize,
    pub already_done: usize,
    pub finished_now: usize,
    pub trained_tokens_per_second: f64,
    pub seconds: f64,
}

/// Inputs of a BLD invocation.
pub struct BldInputs<'a> {
    pub parent_spec: &'a ModelSpec,
    /// The parent on the compute device (no autodiff), or its trunk: at least every layer up to
    /// the last one an entry to train is in ([`todo_layers`]).
    pub parent: &'a Decoder,
    pub parent_weights: &'a dyn WeightSource,
    /// Training windows of `seq_len` tokens (extra tokens are ignored).
    pub train: &'a [Vec<u32>],
    /// Held-out windows for the normalised MSE.
    pub held_out: &'a [Vec<u32>],
    pub provenance: Provenance,
    /// The planned entries ([`plan`], less what the deployment's engine cannot run).
    pub keys: &'a [EntryKey],
    pub space: &'a crate::variants::SpaceOptions,
    /// Where variant ids find the catalog that builds them.
    pub catalogs: &'a Registry<dyn VariantCatalog>,
}

/// Trains the shard's unfinished entries of the library in `library`.
pub fn run_bld(
    inputs: &BldInputs,
    cfg: &BldConfig,
    library: &Path,
    shard: (usize, usize),
    progress: &mut dyn Progress,
) -> Result<BldReport> {
    let (report, todo) = shard_todo(inputs.keys, &inputs.provenance, library, shard)?;
    train_todo(inputs, cfg, library, report, &todo, progress)
}

/// The layers the entries of `todo` are in, ascending: the parent layers a shard needs frozen
/// copies of; the last one + 1 is the trunk its parent forward needs.
pub fn todo_layers(todo: &[EntryKey]) -> Vec<usize> {
    let mut l: Vec<usize> = todo.iter().map(|k| k.layer).collect();
    l.sort_unstable();
    l.dedup();
    l
}

/// Trains `todo` (a shard's unfinished entries, from [`shard_todo`]); `report` is what
/// [`shard_todo`] found.
pub fn train_todo(
    inputs: &BldInputs,
    cfg: &BldConfig,
    library: &Path,
    mut report: BldReport,
    todo: &[EntryKey],
    progress: &mut dyn Progress,
) -> Result<BldReport> {
    let t_start = Instant::now();
    if todo.is_empty() {
        progress.note(&format!(
            "library complete for this shard: {} of {} entries already trained",
            report.in_shard, report.planned
        ));
        return Ok(report);
    }
    let layers = todo_layers(todo);
    let last = layers.last().copied().unwrap_or(0);
    if last >= inputs.parent.layers.len() {
        return Err(Error::invalid(format!(
            "BLD of layer {last} was given a parent trunk of {} layers",
            inputs.parent.layers.len()
        )));
    }
    let job = BldJob::new(inputs, cfg, library, &layers, progress)?;
    let mut trainees = todo
        .iter()
        .map(|k| job.trainee(k))
        .collect::<Result<Vec<_>>>()?;
    job.measure_init(&mut trainees);
    // Entries with nothing to train are finished now.
    let mut finished = 0;
    for t in trainees.iter().filter(|t| t.source != EntrySource::Trained) {
        job.write(t, t.state.nmse_init, 0)?;
        finished += 1;
    }
    trainees.retain(|t| t.source == EntrySource::Trained);
    progress.note(&format!(
        "BLD: {} entries to train ({} already done, {} without training) for {} steps of {} tokens",
        trainees.len(),
        report.already_done,
        finished,
        job.steps,
        cfg.batch_size * cfg.seq_len
    ));
    let t_loop = Instant::now();
    let trained_tokens = job.train(&mut trainees, progress)?;
    // Final held-out measurement and the finished entries.
    let all: Vec<usize> = (0..trainees.len()).collect();
    let finals = job.nmse(&trainees, &all);
    for (t, nmse) in trainees.iter().zip(finals) {
        job.write(t, nmse, job.steps)?;
        remove_checkpoint(&t.key.dir(library));
        finished += 1;
    }
    report.finished_now = finished;
    report.seconds = t_start.elapsed().as_secs_f64();
    report.trained_tokens_per_second =
        trained_tokens as f64 / t_loop.elapsed().as_secs_f64().max(1e-9);
    Ok(report)
}

/// Shard `index` of `count` of the planned entries: the `index`-th of `count` contiguous, equal
/// (within one) runs of the entries ordered by layer (ties in plan order). Contiguous in layers
/// so that a shard holds the parent only up to its last layer; every layer has the same
/// variants, so equal runs are equal work but for the parent forward's depth.
pub fn shard_keys(keys: &[EntryKey], (index, count): (usize, usize)) -> Vec<EntryKey> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| (keys[i].layer, i));
    let n = keys.len();
    let count = count.max(1);
    order[index * n / count..((index + 1) * n / count).min(n)]
        .iter()
        .map(|&i| keys[i].clone())
        .collect()
}

/// The shard's planned entries that are not finished yet, and the report so far.
pub fn shard_todo(
    keys: &[EntryKey],
    provenance: &Provenance,
    library: &Path,
    shard: (usize, usize),
) -> Result<(BldReport, Vec<EntryKey>)> {
    let mine = shard_keys(keys, shard);
    let mut report = BldReport {
        planned: keys.len(),
        in_shard: mine.len(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for k in mine {
        if read_done(library, &k, Some(provenance)).is_none() {
            todo.push(k);
        } else {
            // A kill between an entry's meta.json and the removal of its checkpoint
            // leaves a stale ckpt/ behind; the meta is the truth, so sweep it.
            remove_checkpoint(&k.dir(library));
        }
    }
    report.already_done = report.in_shard - todo.len();
    Ok((report, todo))
}

/// Windows cut to `seq_len` tokens.
fn cut(windows: &[Vec<u32>], seq_len: usize) -> Vec<Vec<u32>> {
    windows
        .iter()
        .map(|w| w[..seq_len.min(w.len())].to_vec())
        .collect()
}

/// Everything the entries of one BLD invocation share.
struct BldJob<'a> {
    inputs: &'a BldInputs<'a>,
    cfg: &'a BldConfig,
    library: &'a Path,
    device: Device,
    ad: Device,
    fingerprint: String,
    steps: usize,
    schedule: WarmupCosine,
    windows: Vec<Vec<u32>>,
    held: Vec<Vec<u32>>,
    calib: Vec<LayerCalibration>,
    /// Frozen parent layers on the autodiff device (gradients flow through, not into, them):
    /// only those an entry to train is in (by layer index).
    frozen_ad: Frozen,
    /// The first of those layers: the parent's activations are kept from it on.
    first_layer: usize,
}

impl<'a> BldJob<'a> {
    fn new(
        inputs: &'a BldInputs<'a>,
        cfg: &'a BldConfig,
        library: &'a Path,
        layers: &[usize],
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        if inputs.train.is_empty() || inputs.held_out.is_empty() {
            return Err(Error::invalid(format!(
                "BLD needs training and held-out sequences of {} tokens; the corpus is too small",
                cfg.seq_len
            )));
        }
        let device = inputs.parent.device();
        let ad = device.clone().autodiff();
        // No tokens: the training-free init only, as the paper's ablation of BLD compares.
        let steps = match cfg.tokens {
            0 => 0,
            t => t.div_ceil(cfg.batch_size * cfg.seq_len).max(1),
        };
        let windows = cut(inputs.train, cfg.seq_len);
        let held = cut(
            &inputs.held_out[..inputs.held_out.len().min(cfg.eval_sequences.max(1))],
            cfg.seq_len,
        );
        progress.start("calibrate", 1);
        let n_calib = windows.len().min(cfg.calibration_sequences.max(1));
        let calib = calibrate(inputs.parent, &windows[..n_calib], cfg.batch_size);
        progress.finish();
        let mut frozen_ad = Frozen::default();
        for &l in layers {
            let layer = Layer::load(inputs.parent_spec, l, inputs.parent_weights, &ad)?.no_grad();
            frozen_ad.0.insert(l, layer);
        }
        Ok(BldJob {
            inputs,
            cfg,
            library,
            device,
            ad,
            fingerprint: inputs.provenance.combined(),
            steps,
            schedule: WarmupCosine {
                lr: cfg.lr,
                min_lr: cfg.min_lr,
                warmup_steps: cfg.warmup_steps.min(steps / 2),
                total_steps: steps,
            },
            windows,
            held,
            calib,
            frozen_ad,
            first_layer: layers.first().copied().unwrap_or(0),
        })
    }

    /// The training-free init of an entry: its specs, init methods, weights and source.
    fn init(
        &self,
        key: &EntryKey,
    ) -> Result<(Vec<SubblockSpec>, Vec<String>, MemoryWeights, EntrySource)> {
        let spec = self.inputs.parent_spec;
        let mut specs = Vec::new();
        let mut inits = Vec::new();
        let mut weights = MemoryWeights::new(format!("init of {}", key.id()));
        let parent_layer = layer_weights(self.inputs.parent_weights, key.layer)?;
        let mut is_parent = true;
        for v in &key.variants {
            let cat = catalog_for(self.inputs.catalogs, v)?;
            let init = cat.init(v, spec, key.layer, &parent_layer, &self.calib[key.layer])?;
            is_parent &= match &init.spec {
                SubblockSpec::Attention(a) => *a == spec.layers[key.layer].attention,
                SubblockSpec::Ffn(f) => *f == spec.layers[key.layer].ffn,
            };
            inits.push(init.method.clone());
            specs.push(init.spec.clone());
            for (n, t) in init.weights.tensors {
                weights.insert(n, t);
            }
        }
        let params: usize = specs.iter().map(|s| s.params(spec)).sum();
        let source = if is_parent {
            EntrySource::Parent
        } else if params == 0 {
            EntrySource::Identity
        } else {
            EntrySource::Trained
        };
        Ok((specs, inits, weights, source))
    }

    /// An entry ready to train: resumed from its checkpoint when one matches, else its init.
    fn trainee(&self, key: &EntryKey) -> Result<Trainee> {
        let spec = self.inputs.parent_spec;
        let (specs, inits, weights, source) = self.init(key)?;
        let resumed: Option<(PathBuf, EntryState)> = checkpoint_of(&key.dir(self.library))
            .find("state.json")?
            .and_then(|d| {
                let st = fsutil::read_json::<EntryState>(&d.join("state.json")).ok()?;
                (st.fingerprint == self.fingerprint).then_some((d, st))
            });
        let adamw = self.cfg.adamw.clone();
        let (modules, opt, state) = match (resumed, source) {
            (Some((ckpt, st)), EntrySource::Trained) => {
                let w = SafetensorsWeights::open(&ckpt.join("weights.safetensors"))?;
                let mut m = MemoryWeights::new(ckpt.display().to_string());
                for n in w.names() {
                    m.insert(n.clone(), w.read(&n)?);
                }
                let modules = split_build(spec, &specs, key.layer, &m, &self.ad)?;
                let opt = AdamW::load(adamw, &ckpt.join("optimizer.safetensors"), &self.device)?;
                (modules, opt, st)
            }
            _ => {
                let modules = split_build(spec, &specs, key.layer, &weights, &self.ad)?;
                let state = EntryState {
                    step: 0,
                    nmse_init: f64::NAN,
                    init: inits,
                    loss_curve: vec![],
                    running: (0.0, 0),
                    seconds: 0.0,
                    fingerprint: self.fingerprint.clone(),
                };
                (modules, AdamW::new(adamw), state)
            }
        };
        Ok(Trainee {
            key: key.clone(),
            specs,
            source,
            modules,
            opt,
            state,
        })
    }

    /// Held-out normalised MSE of `which` trainees.
    fn nmse(&self, trainees: &[Trainee], which: &[usize]) -> Vec<f64> {
        let (p, b) = (self.inputs.parent, self.cfg.batch_size);
        held_out_nmse(
            p,
            self.first_layer,
            &self.frozen_ad,
            trainees,
            which,
            &self.held,
            b,
        )
    }

    /// Normalised MSE at init on held-out activations (entries resumed keep theirs).
    fn measure_init(&self, trainees: &mut [Trainee]) {
        let need: Vec<usize> = (0..trainees.len())
            .filter(|&i| trainees[i].state.nmse_init.is_nan())
            .collect();
        if need.is_empty() {
            return;
        }
        let vals = self.nmse(trainees, &need);
        for (i, v) in need.into_iter().zip(vals) {
            trainees[i].state.nmse_init = v;
        }
    }

    /// Writes a finished entry trained for `steps` steps.
    fn write(&self, t: &Trainee, nmse_final: f64, steps: usize) -> Result<()> {
        let tokens = steps * self.cfg.batch_size * self.cfg.seq_len;
        let (spec, prov) = (self.inputs.parent_spec, &self.inputs.provenance);
        write_entry(self.library, t, spec, prov, nmse_final, steps, tokens)
    }

    /// One optimiser step of `t` on the parent's activations; returns the loss. A loss that is
    /// not finite stops before the optimiser touches the weights, so no checkpoint written
    /// after it can hold them: the entry's last checkpoint stays the last good state.
    fn step(&self, t: &mut Trainee, acts: &[LayerActs], ctx: &ForwardCtx, lr: f64) -> Result<f64> {
        let t0 = Instant::now();
        let a = &acts[t.key.layer - self.first_layer];
        let target = lift(&(a.output.clone() - a.input.clone()));
        let pred = block_delta(&t.modules, self.frozen_ad.layer(t.key.layer), a, ctx, true);
        let loss = normalized_mse(target, pred, EPS);
        let lv = loss.clone().into_scalar::<f32>() as f64;
        if !lv.is_finite() {
            return Err(diverged(
                &t.key,
                t.state.step,
                lv,
                self.cfg.checkpoint_every,
            ));
        }
        let grads = loss.backward();
        let modules = std::mem::take(&mut t.modules);
        let (m, _) = t.opt.step(modules, &grads, lr);
        t.modules = m;
        t.state.step += 1;
        t.state.running.0 += lv;
        t.state.running.1 += 1;
        if t.state.step.is_multiple_of(self.cfg.checkpoint_every) || t.state.step == self.steps {
            let mean = t.state.running.0 / t.state.running.1.max(1) as f64;
            t.state.loss_curve.push((t.state.step, mean));
            t.state.running = (0.0, 0);
        }
        t.state.seconds += t0.elapsed().as_secs_f64();
        Ok(lv)
    }

    /// The training loop: one parent forward per batch feeds every entry due at that step;
    /// checkpoints every `checkpoint_every` steps. Returns the entry-tokens trained.
    fn train(&self, trainees: &mut [Trainee], progress: &mut dyn Progress) -> Result<usize> {
        let cfg = self.cfg;
        let order = BatchOrder {
            n: self.windows.len(),
            batch_size: cfg.batch_size,
            seed: cfg.seed,
        };
        let first = trainees
            .iter()
            .map(|t| t.state.step)
            .min()
            .unwrap_or(self.steps);
        progress.start("bld", self.steps as u64);
        let _polling = crate::interrupt::Polling::start();
        let t_loop = Instant::now();
        let mut trained_tokens = 0usize;
        for step in first..self.steps {
            let batch: Vec<Vec<u32>> = order
                .batch(step)
                .iter()
                .map(|&i| self.windows[i].clone())
                .collect();
            let (acts, ctx) = parent_activations_from(
                self.inputs.parent,
                ids_of(&batch, &self.device),
                self.first_layer,
            );
            let ctx_ad = lift_ctx(&ctx);
            let lr = self.schedule.at(step);
            let mut loss_sum = 0.0;
            let mut active = 0;
            for t in trainees.iter_mut().filter(|t| t.state.step == step) {
                loss_sum += self.step(t, &acts, &ctx_ad, lr)?;
                active += 1;
                trained_tokens += cfg.batch_size * cfg.seq_len;
            }
            let done_step = step + 1;
            let periodic = done_step.is_multiple_of(cfg.checkpoint_every) && done_step < self.steps;
            let stop = crate::interrupt::requested().is_some();
            if periodic || stop {
                for t in trainees.iter() {
                    save_ckpt(self.library, t)?;
                }
            }
            crate::interrupt::check(|| {
                format!(
                    "BLD checkpointed its {} entries in training at step {done_step} of {}",
                    trainees.len(),
                    self.steps
                )
            })?;
            let tps = trained_tokens as f64 / t_loop.elapsed().as_secs_f64().max(1e-9);
            progress.set(
                done_step as u64,
                &format!(
                    "{active} entries | mean nmse {:.4} | {:.0} entry-tokens/s",
                    loss_sum / active.max(1) as f64,
                    tps
                ),
            );
        }
        progress.finish();
        Ok(trained_tokens)
    }
}

/// The error of a BLD entry whose loss stopped being finite at `step` (0-based).
fn diverged(key: &EntryKey, step: usize, loss: f64, checkpoint_every: usize) -> Error {
    let kept = step / checkpoint_every.max(1) * checkpoint_every.max(1);
    let resume = if kept == 0 {
        "it had no checkpoint yet, so a rerun starts it from its initialisation".to_string()
    } else {
        format!("its last checkpoint (step {kept}) is kept and a rerun resumes from it")
    };
    Error::invalid(format!(
        "BLD of layer {} {} diverged at step {}: loss {loss}; {resume}; lower [bld] lr",
        key.layer,
        key.id(),
        step + 1
    ))
}

fn split_build(
    spec: &ModelSpec,
    specs: &[SubblockSpec],
    layer: usize,
    weights: &MemoryWeights,
    device: &Device,
) -> Result<Vec<Subblock>> {
    specs
        .iter()
        .map(|s| {
            let mut part = MemoryWeights::new(weights.label.clone());
            for (n, _) in s.tensor_shapes(spec) {
                part.insert(n.clone(), weights.read(&n)?);
            }
            build_subblock(spec, s, layer, &part, device)
        })
        .collect()
}

/// Held-out normalised MSE (pooled over batches) of the selected trainees.
fn held_out_nmse(
    parent: &Decoder,
    first_layer: usize,
    frozen_ad: &Frozen,
    trainees: &[Trainee],
    which: &[usize],
    held: &[Vec<u32>],
    batch: usize,
) -> Vec<f64> {
    let device = parent.device();
    let valid: Vec<Vec<Subblock>> = which
        .iter()
        .map(|&i| trainees[i].modules.iter().map(|m| m.valid()).collect())
        .collect();
    let frozen = Frozen(frozen_ad.0.iter().map(|(&i, l)| (i, l.valid())).collect());
    let mut num = vec![0.0; which.len()];
    let mut den = vec![0.0; which.len()];
    for chunk in held.chunks(batch.max(1)) {
        let (acts, ctx) = parent_activations_from(parent, ids_of(chunk, &device), first_layer);
        for (j, &i) in which.iter().enumerate() {
            let a = &acts[trainees[i].key.layer - first_layer];
            let target = a.output.clone() - a.input.clone();
            let pred = block_delta(
                &valid[j],
                frozen.layer(trainees[i].key.layer),
                a,
                &ctx,
                false,
            );
            num[j] += (target.clone() - pred).square().mean().into_scalar::<f32>() as f64;
            den[j] += target.square().mean().into_scalar::<f32>() as f64 + EPS;
        }
    }
    num.iter().zip(&den).map(|(n, d)| n / d).collect()
}

/// Frozen parent layers by index: the layers of the entries being trained.
#[derive(Default)]
struct Frozen(BTreeMap<usize, Layer>);

impl Frozen {
    fn layer(&self, i: usize) -> &Layer {
        // BldJob::new loads the layer of every entry it is given; nothing else is trained.
        self.0
            .get(&i)
            .expect("a frozen copy of every trained entry's layer")
    }
}

fn subblock_tensors(modules: &[Subblock]) -> BTreeMap<String, HostTensor> {
    modules.iter().flat_map(|m| m.valid().tensors()).collect()
}

/// An entry's training checkpoint (weights, optimiser moments, state), swapped in whole.
fn checkpoint_of(entry: &Path) -> fsutil::SwappedDir {
    fsutil::SwappedDir::new(entry.join("ckpt"))
}

/// Removes an entry's training checkpoint (live, half-written and previous); missing is fine.
fn remove_checkpoint(entry: &Path) {
    checkpoint_of(entry).remove();
}

fn save_ckpt(library: &Path, t: &Trainee) -> Result<()> {
    let ckpt = checkpoint_of(&t.key.dir(library));
    let tmp = ckpt.stage()?;
    let tensors = subblock_tensors(&t.modules);
    write_safetensors(
        &tmp.join("weights.safetensors"),
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        StoreDtype::F32,
        None,
    )?;
    t.opt.save(&tmp.join("optimizer.safetensors"))?;
    fsutil::write_json(&tmp.join("state.json"), &t.state)?;
    ckpt.commit()
}

fn write_entry(
    library: &Path,
    t: &Trainee,
    spec: &ModelSpec,
    prov: &Provenance,
    nmse_final: f64,
    steps: usize,
    tokens: usize,
) -> Result<()> {
    let dir = t.key.dir(library);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    if t.source == EntrySource::Trained {
        let tensors = subblock_tensors(&t.modules);
        write_safetensors(
            &dir.join("weights.safetensors"),
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            StoreDtype::F32,
            None,
        )?;
    }
    let meta = EntryMeta {
        key: t.key.clone(),
        specs: t.specs.clone(),
        source: t.source,
        init: t.state.init.clone(),
        params: t.specs.iter().map(|s| s.params(spec)).sum(),
        tokens,
        steps,
        nmse_init: t.state.nmse_init,
        nmse_final,
        loss_curve: t.state.loss_curve.clone(),
        seconds: t.state.seconds,
        parent_fingerprint: prov.parent.clone(),
        data_fingerprint: prov.data.clone(),
        config_hash: prov.config.clone(),
    };
    // meta.json last: an entry with a meta is complete.
    fsutil::write_json(&dir.join("meta.json"), &meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(layers: usize, variants: &[&str]) -> Vec<EntryKey> {
        // Plan order: by variant, then layer (as `plan` lists them).
        variants
            .iter()
            .flat_map(|v| {
                (0..layers).map(move |layer| EntryKey {
                    layer,
                    variants: vec![v.parse().unwrap()],
                })
            })
            .collect()
    }

    #[test]
    fn shards_are_contiguous_in_layers_disjoint_and_cover_the_plan() {
        let all = keys(8, &["attn:noop", "ffn:width(64)", "ffn:linear"]);
        for count in [1, 2, 3, 4, 5, 24, 30] {
            let shards: Vec<Vec<EntryKey>> =
                (0..count).map(|i| shard_keys(&all, (i, count))).collect();
            let mut seen: Vec<String> = shards
                .iter()
                .flatten()
                .map(|k| format!("{}{:?}", k.layer, k.variants))
                .collect();
            seen.sort();
            let mut want: Vec<String> = all
                .iter()
                .map(|k| format!("{}{:?}", k.layer, k.variants))
                .collect();
            want.sort();
            assert_eq!(seen, want, "{count} shards cover every entry once");
            let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{count} shards: sizes {sizes:?}");
            // Each shard's layers form one run, and shards come in layer order.
            let mut last_end = 0;
            for s in shards.iter().filter(|s| !s.is_empty()) {
                let layers = todo_layers(s);
                assert_eq!(
                    layers.len(),
                    layers[layers.len() - 1] - layers[0] + 1,
                    "{layers:?}"
                );
                assert!(
                    layers[0] >= last_end,
                    "{count} shards overlap beyond a boundary layer"
                );
                last_end = *layers.last().unwrap();
            }
        }
        // Four shards of eight layers: two layers each.
        assert_eq!(todo_layers(&shard_keys(&all, (3, 4))), vec![6, 7]);
    }
}
