//! `puzzle plan`: what every stage of a run would cost, before any of it runs, for a parent of
//! any size from its `config.json` alone (no weights): the work (entries, tokens, requests),
//! FLOPs, memory per task, and GPU-hours on a hardware profile at an assumed MFU.
//!
//! The plan models *this* implementation, so that it predicts what `puzzle run` would do:
//! - FLOPs are matmul FLOPs (2 per multiply-accumulate) of the weights and of attention's two
//!   products, causal (a window caps what a token attends to); norms, softmax, RoPE and the
//!   optimiser are left out, as model-FLOPs utilisation leaves them out.
//! - Backward costs 2x the forward for trained weights (input and weight gradients), 1x for
//!   frozen weights a gradient passes through, 0 for frozen weights before everything trained.
//! - BLD: every task (`--shard`) runs the parent forward on every batch (one forward feeds all
//!   of the task's entries), and per trained entry 3x its subblock's forward; an attention
//!   variant trains through the frozen parent FFN of its layer (2x that FFN's forward), an
//!   FFN variant reads the parent's residual after attention, a coupled pair trains both. Plus
//!   the held-out normalised MSE before and after, and the calibration pass.
//! - Cost: the cost model's own count of engine requests ([`CostModel::workload`]), each
//!   timed at the parent's roofline runtime on the deployment's hardware; loading the models
//!   is not counted.
//! - Score: per scored entry, the layers from its own on (the parent's prefix is cached) and
//!   the head, on `[score] sequences`; the parent's pass once per task (one array task per
//!   device, as `puzzle slurm` submits them).
//! - Distil: the parent forward plus 3x the model's forward, for the child and each baseline;
//!   the child is costed as the parent (an upper bound: the search has not run yet).
//! - Eval: parent, child and baselines, each on `[eval] sequences` and the task items (each
//!   context once, then each choice), plus the speed passes' requests (rounds and a warm-up
//!   per pass, `EvalConfig::speed_requests`) at the first batch
//!   size (at the parent's roofline runtime).
//! - Memory per task is f32 on the device, as the tensors are today. BLD tasks take contiguous
//!   runs of layers; the last one is the largest: the parent up to its last layer (all of it)
//!   for the forward, a frozen autodiff copy of its own layers (1/tasks of the layers), every
//!   layer's three kept activations for a batch, and 16 bytes per trained parameter (weights,
//!   gradients, two Adam moments) of its share; autodiff intermediates inside a subblock are
//!   not counted.

use std::path::Path;

use serde::Serialize;

use puzzle_core::Plugins;
use puzzle_core::bld::EntrySource;
use puzzle_core::cost::CostContext;
use puzzle_core::deploy::HardwareProfile;
use puzzle_core::error::{Error, Result};
use puzzle_core::kinds::Dtype;
use puzzle_core::spec::{AttentionSpec, ModelSpec};
use puzzle_core::variants::SubblockSpec;

use crate::config::RunConfig;
use crate::run::{entry_specs, library_plan};

/// Bytes of an f32 tensor element (what our tensors hold on the device).
const F32: f64 = 4.0;
/// Bytes per trained parameter: weights, gradients and AdamW's two moments, all f32.
const TRAINED: f64 = 16.0;
/// Characters per token when the parent folder has no tokenizer to count task tokens with
/// (about what English BPE vocabularies give).
const CHARS_PER_TOKEN: f64 = 4.0;

/// What to plan for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Where the training stages run.
    pub hardware: HardwareProfile,
    /// Devices available: BLD runs one task per device.
    pub gpus: usize,
    /// Assumed model-FLOPs utilisation of the training and scoring stages.
    pub mfu: f64,
    /// The dtype whose peak the FLOPs run at.
    pub dtype: Dtype,
}

/// One stage's row.
#[derive(Clone, Debug, Serialize)]
pub struct StagePlan {
    pub stage: &'static str,
    /// What it does, in its own units (entries, tokens, requests).
    pub work: String,
    /// Tasks that run at once (this implementation shards BLD only).
    pub tasks: usize,
    /// Matmul FLOPs over every task.
    pub flops: f64,
    /// Time in the deployment's engine (cost measurement, speed measurement), at roofline.
    pub engine_seconds: f64,
    /// Device-hours over every task: FLOPs at the assumed MFU, plus the engine time.
    pub device_hours: f64,
    /// Hours from start to end with `tasks` devices busy at once.
    pub wall_hours: f64,
    /// Peak memory of one task.
    pub memory_per_task_bytes: f64,
    /// Whether a task fits the device's memory.
    pub fits: bool,
}

/// The whole plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub parent_params: usize,
    pub parent_layers: usize,
    /// Library entries the deployment's engine runs, and of them: trained by BLD, the parent's
    /// own subblocks, and those without parameters.
    pub entries: usize,
    pub trained: usize,
    pub parent_entries: usize,
    pub identity: usize,
    /// Entries left out because the deployment's engine cannot run them.
    pub refused: usize,
    /// Of BLD's FLOPs, the parent's forwards (every task's), the rest being the entries' own.
    pub bld_parent_flops: f64,
    pub hardware: String,
    pub devices: usize,
    pub mfu: f64,
    pub peak_flops: f64,
    pub stages: Vec<StagePlan>,
    pub total_flops: f64,
    pub total_device_hours: f64,
    pub total_wall_hours: f64,
    /// What the numbers rest on, said once.
    pub notes: Vec<String>,
}

/// Forward matmul FLOPs of one subblock over one causal sequence of `seq` tokens.
pub fn subblock_flops(spec: &ModelSpec, sub: &SubblockSpec, seq: usize) -> f64 {
    let macs: usize = sub
        .tensor_shapes(spec)
        .iter()
        .filter(|(_, shape)| shape.len() == 2)
        .map(|(_, shape)| shape[0] * shape[1])
        .sum();
    let mut flops = 2.0 * macs as f64 * seq as f64;
    if let SubblockSpec::Attention(AttentionSpec::Gqa { window, .. }) = sub {
        let cap = window.unwrap_or(usize::MAX);
        let attended: f64 = (0..seq).map(|t| (t + 1).min(cap) as f64).sum();
        let qd = (spec.num_attention_heads * spec.head_dim) as f64;
        // QK^T and PV: 2 products of 2 FLOPs per query dim and attended position.
        flops += 2.0 * 2.0 * qd * attended;
    }
    flops
}

/// Forward FLOPs of the parent's layer `l` over one sequence.
fn layer_flops(spec: &ModelSpec, l: usize, seq: usize) -> f64 {
    let layer = &spec.layers[l];
    subblock_flops(spec, &SubblockSpec::Attention(layer.attention.clone()), seq)
        + subblock_flops(spec, &SubblockSpec::Ffn(layer.ffn.clone()), seq)
}

/// Forward FLOPs of the LM head over one sequence (every position's logits).
fn head_flops(spec: &ModelSpec, seq: usize) -> f64 {
    2.0 * (spec.vocab_size * spec.hidden_size * seq) as f64
}

/// Forward FLOPs of the whole parent over one sequence.
pub fn model_flops(spec: &ModelSpec, seq: usize) -> f64 {
    (0..spec.layers.len())
        .map(|l| layer_flops(spec, l, seq))
        .sum::<f64>()
        + head_flops(spec, seq)
}

/// Sequences a stage of `tokens` tokens in batches of `batch` x `seq` runs (whole batches);
/// none for no tokens (BLD's init-only ablation, a run without GKD), as the stages train none.
fn sequences(tokens: usize, batch: usize, seq: usize) -> usize {
    tokens.div_ceil(batch.max(1) * seq.max(1)) * batch.max(1)
}

/// Counts an entry's kind the way BLD does: the parent's own subblocks and parameter-free ones
/// are not trained.
fn source_of(spec: &ModelSpec, layer: usize, subs: &[SubblockSpec]) -> EntrySource {
    let is_parent = subs.iter().all(|s| match s {
        SubblockSpec::Attention(a) => *a == spec.layers[layer].attention,
        SubblockSpec::Ffn(f) => *f == spec.layers[layer].ffn,
    });
    if is_parent {
        EntrySource::Parent
    } else if subs.iter().map(|s| s.params(spec)).sum::<usize>() == 0 {
        EntrySource::Identity
    } else {
        EntrySource::Trained
    }
}

/// Training FLOPs of one entry per sequence: 3x what it trains, 2x the frozen FFN an attention
/// variant trains through.
fn trainee_flops(spec: &ModelSpec, layer: usize, subs: &[SubblockSpec], seq: usize) -> f64 {
    let own: f64 = subs.iter().map(|s| subblock_flops(spec, s, seq)).sum();
    let through = match subs {
        [SubblockSpec::Attention(_)] => subblock_flops(
            spec,
            &SubblockSpec::Ffn(spec.layers[layer].ffn.clone()),
            seq,
        ),
        _ => 0.0,
    };
    3.0 * own + 2.0 * through
}

/// Task tokens of a suite as scored (each context once, then each choice): counted with the
/// parent's tokenizer when it has one, else estimated at [`CHARS_PER_TOKEN`].
fn task_tokens(paths: &[std::path::PathBuf], parent_dir: &Path) -> Result<(f64, usize, bool)> {
    let tok = parent_dir.join("tokenizer.json");
    let tokenizer = if tok.is_file() {
        Some(puzzle_core::tokenizer::Tokenizer::from_file(&tok)?)
    } else {
        None
    };
    let (mut tokens, mut items) = (0.0, 0);
    for p in paths {
        for item in puzzle_core::eval::tasks::read_tasks(p)? {
            items += 1;
            for text in std::iter::once(&item.context).chain(&item.choices) {
                tokens += match &tokenizer {
                    Some(t) => t.encode(text, false)?.len() as f64,
                    None => text.chars().count() as f64 / CHARS_PER_TOKEN,
                };
            }
        }
    }
    Ok((tokens, items, tokenizer.is_some()))
}

/// Plans `config` for `parent` (read from `parent_dir`, which needs only a `config.json`).
pub fn plan(
    config: &RunConfig,
    parent: &ModelSpec,
    parent_dir: &Path,
    plugins: &Plugins,
    opts: &PlanOptions,
) -> Result<Plan> {
    if opts.gpus == 0 {
        return Err(Error::invalid("--gpus must be at least 1"));
    }
    if !(opts.mfu > 0.0 && opts.mfu <= 1.0) {
        return Err(Error::invalid(format!(
            "--mfu must be in (0, 1], got {}",
            opts.mfu
        )));
    }
    let peak = opts.hardware.peak_flops(opts.dtype)?;
    let rate = peak * opts.mfu;
    let memory = opts.hardware.memory_gb * 1e9;
    let n = parent.num_params() as f64;
    let h = parent.hidden_size as f64;
    let layers = parent.layers.len();

    let (keys, refused) = library_plan(plugins, parent, config)?;
    let mut entries = Vec::with_capacity(keys.len());
    for k in &keys {
        let subs = entry_specs(plugins, parent, k)?;
        entries.push((k.layer, source_of(parent, k.layer, &subs), subs));
    }
    let count = |s: EntrySource| entries.iter().filter(|e| e.1 == s).count();
    let trained = count(EntrySource::Trained);
    let mut stages = Vec::new();
    let row = |stage, work: String, tasks: usize, flops: f64, engine_s: f64, mem: f64| {
        let device_hours = flops / rate / 3600.0 + engine_s / 3600.0;
        StagePlan {
            stage,
            work,
            tasks,
            flops,
            engine_seconds: engine_s,
            device_hours,
            wall_hours: device_hours / tasks.max(1) as f64,
            memory_per_task_bytes: mem,
            fits: mem <= memory,
        }
    };

    // BLD.
    let b = &config.bld;
    let tasks = opts.gpus.min(trained.max(1));
    let seqs = sequences(b.tokens, b.batch_size, b.seq_len) as f64;
    let evals = b.eval_sequences as f64;
    let calib = b.calibration_sequences as f64;
    let parent_seq = model_flops(parent, b.seq_len);
    let train: f64 = entries
        .iter()
        .filter(|e| e.1 == EntrySource::Trained)
        .map(|(l, _, subs)| {
            let fwd: f64 = subs
                .iter()
                .map(|s| subblock_flops(parent, s, b.seq_len))
                .sum();
            seqs * trainee_flops(parent, *l, subs, b.seq_len) + 2.0 * evals * fwd
        })
        .sum();
    let per_task_parent = (seqs + 2.0 * evals + calib) * parent_seq;
    let bld_parent_flops = tasks as f64 * per_task_parent;
    let trained_params: f64 = entries
        .iter()
        .filter(|e| e.1 == EntrySource::Trained)
        .map(|e| e.2.iter().map(|s| s.params(parent)).sum::<usize>() as f64)
        .sum();
    let acts = layers as f64 * 3.0 * (b.batch_size * b.seq_len) as f64 * h * F32;
    let layer_params = (parent.num_params() - parent.non_block_params()) as f64;
    let bld_mem =
        (n + layer_params / tasks as f64) * F32 + acts + trained_params / tasks as f64 * TRAINED;
    stages.push(row(
        "bld",
        format!(
            "{trained} entries x {} tokens; the parent's forward in each of {tasks} task{}",
            human(b.tokens as f64),
            if tasks == 1 { "" } else { "s" }
        ),
        tasks,
        train + bld_parent_flops,
        0.0,
        bld_mem,
    ));

    // Cost, in the deployment's engine on its hardware.
    let d = &config.deployment;
    let base = config.source.parent().unwrap_or(Path::new("."));
    let deploy_hw = puzzle_core::deploy::resolve_hardware(&d.hardware, base)?;
    let ctx = CostContext {
        parent,
        deploy: d,
        hardware: &deploy_hw,
        device: puzzle_core::burn::tensor::Device::flex(),
        engine: Err("puzzle plan times nothing".into()),
    };
    let roofline = plugins.cost_models.get("roofline")?;
    let mut parent_runtime = roofline.non_block(&ctx)?;
    for (l, layer) in parent.layers.iter().enumerate() {
        parent_runtime.add(&roofline.entry(
            &ctx,
            l,
            &[
                SubblockSpec::Attention(layer.attention.clone()),
                SubblockSpec::Ffn(layer.ffn.clone()),
            ],
        )?);
    }
    let request_s = |batch: usize| parent_runtime.runtime_ms(batch, d).unwrap_or(0.0) / 1e3;
    let cost_entries: Vec<(usize, Vec<SubblockSpec>)> =
        entries.iter().map(|(l, _, s)| (*l, s.clone())).collect();
    let work = plugins
        .cost_models
        .get(&config.cost.model)?
        .workload(&ctx, &cost_entries)?;
    let cost_s: f64 = d
        .batch_sizes
        .iter()
        .map(|&bs| work.requests_per_batch_size as f64 * request_s(bs))
        .sum();
    let largest = d.batch_sizes.iter().copied().max().unwrap_or(1);
    let kv_bytes = (parent.kv_elements_per_token() * largest * (d.prefill_len + d.generation_len))
        as f64
        * d.kv_dtype.bytes();
    stages.push(StagePlan {
        fits: n * d.weight_dtype.bytes() + kv_bytes <= deploy_hw.memory_gb * 1e9,
        ..row(
            "cost",
            if work.models == 0 {
                format!("`{}` costs: computed, nothing timed", config.cost.model)
            } else {
                format!(
                    "{} models, {} timed requests at each of batch {:?} in {} on {}",
                    work.models,
                    work.requests_per_batch_size,
                    d.batch_sizes,
                    d.engine,
                    deploy_hw.name
                )
            },
            1,
            0.0,
            cost_s,
            n * d.weight_dtype.bytes() + kv_bytes,
        )
    });

    // Score.
    let s = &config.score;
    let score_seqs = s.sequences as f64;
    let scored: Vec<_> = entries
        .iter()
        .filter(|e| e.1 != EntrySource::Parent)
        .collect();
    // An array task per device (`puzzle score --shard`), each with its own parent pass.
    let score_tasks = opts.gpus.min(scored.len().max(1));
    let score_flops: f64 = score_tasks as f64 * score_seqs * model_flops(parent, s.seq_len)
        + scored
            .iter()
            .map(|(l, _, subs)| {
                let from = if s.no_prefix_cache { 0 } else { *l };
                let own: f64 = subs
                    .iter()
                    .map(|x| subblock_flops(parent, x, s.seq_len))
                    .sum();
                let replaced: f64 = subs
                    .iter()
                    .map(|x| match x {
                        SubblockSpec::Attention(_) => subblock_flops(
                            parent,
                            &SubblockSpec::Attention(parent.layers[*l].attention.clone()),
                            s.seq_len,
                        ),
                        SubblockSpec::Ffn(_) => subblock_flops(
                            parent,
                            &SubblockSpec::Ffn(parent.layers[*l].ffn.clone()),
                            s.seq_len,
                        ),
                    })
                    .sum();
                let rest: f64 = (from..layers)
                    .map(|j| layer_flops(parent, j, s.seq_len))
                    .sum();
                score_seqs * (rest - replaced + own + head_flops(parent, s.seq_len))
            })
            .sum::<f64>();
    let score_mem = n * F32 + layers as f64 * score_seqs * s.seq_len as f64 * h * F32;
    stages.push(row(
        "score",
        format!(
            "{} entries x {} sequences of {} tokens{}",
            scored.len(),
            s.sequences,
            s.seq_len,
            if s.no_prefix_cache {
                ", every layer"
            } else {
                ", from the replaced layer on"
            }
        ),
        score_tasks,
        score_flops,
        0.0,
        score_mem,
    ));

    stages.push(row(
        "search",
        format!(
            "a MIP over {layers} layers and {} choices (seconds on a CPU)",
            entries.len()
        ),
        1,
        0.0,
        0.0,
        0.0,
    ));

    // Distil the child and every baseline.
    let g = &config.distill;
    let models = 1 + config.baselines.kinds.len();
    let dseqs = sequences(g.tokens, g.batch_size, g.seq_len) as f64;
    let gkd = models as f64 * dseqs * 4.0 * model_flops(parent, g.seq_len);
    let gkd_acts = 2.0 * layers as f64 * (g.batch_size * g.seq_len) as f64 * h * F32;
    stages.push(row(
        "distill",
        format!(
            "{models} model{} (child{}) x {} tokens",
            if models == 1 { "" } else { "s" },
            if models > 1 { " and baselines" } else { "" },
            human(g.tokens as f64)
        ),
        1,
        gkd,
        0.0,
        n * F32 + n * TRAINED + gkd_acts,
    ));

    // Evaluate parent, child and baselines.
    let e = &config.eval;
    let (task_toks, items, counted) = task_tokens(&e.tasks, parent_dir)?;
    let compared = models + 1;
    let per_token = model_flops(parent, e.seq_len) / e.seq_len as f64;
    let eval_flops = compared as f64
        * (e.sequences as f64 * model_flops(parent, e.seq_len) + task_toks * per_token);
    let first = d.batch_sizes.first().copied().unwrap_or(1);
    let speed_s = compared as f64 * e.speed_requests() as f64 * request_s(first);
    stages.push(row(
        "eval",
        format!(
            "{compared} models x ({} sequences + {items} task items, {} tokens{}) + {} timed requests",
            e.sequences,
            human(task_toks),
            if counted { "" } else { " estimated" },
            compared.saturating_mul(e.speed_requests())
        ),
        1,
        eval_flops,
        speed_s,
        n * F32,
    ));

    let mut notes = vec![
        format!(
            "{} at {:.0}% MFU of {} TFLOP/s ({}) for FLOPs; roofline times on {} for engine requests",
            opts.hardware.name,
            opts.mfu * 100.0,
            peak / 1e12,
            opts.dtype,
            deploy_hw.name
        ),
        "the child and baselines are costed as the parent (the search has not run): distill and eval are upper bounds".into(),
        "not counted: the search's speed-calibration rounds and the baselines' speed matching (a few engine requests per model), model loading".into(),
    ];
    if !counted && items > 0 {
        notes.push(format!(
            "task tokens estimated at {CHARS_PER_TOKEN} characters per token (no tokenizer.json beside the parent's config.json)"
        ));
    }
    if !refused.is_empty() {
        notes.push(format!(
            "{} entries left out: {} cannot run them",
            refused.len(),
            d.engine
        ));
    }
    let total_flops = stages.iter().map(|s| s.flops).sum();
    let total_device_hours = stages.iter().map(|s| s.device_hours).sum();
    let total_wall_hours = stages.iter().map(|s| s.wall_hours).sum();
    Ok(Plan {
        parent_params: parent.num_params(),
        parent_layers: layers,
        entries: entries.len(),
        trained,
        parent_entries: count(EntrySource::Parent),
        identity: count(EntrySource::Identity),
        refused: refused.len(),
        bld_parent_flops,
        hardware: opts.hardware.name.clone(),
        devices: opts.gpus,
        mfu: opts.mfu,
        peak_flops: peak,
        stages,
        total_flops,
        total_device_hours,
        total_wall_hours,
        notes,
    })
}

/// `1.5K`, `2.0M`, `1.00B`: a count at a glance.
pub fn human(x: f64) -> String {
    match x {
        x if x >= 1e12 => format!("{:.2}T", x / 1e12),
        x if x >= 1e9 => format!("{:.2}B", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}K", x / 1e3),
        x => format!("{x:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_core::spec::{FfnSpec, LlamaShape};

    fn spec(layers: usize) -> ModelSpec {
        ModelSpec::uniform_llama(LlamaShape {
            hidden: 64,
            vocab: 100,
            heads: 4,
            head_dim: 16,
            kv_heads: 2,
            intermediate: 128,
            layers,
        })
    }

    #[test]
    fn layer_sums_are_the_models_forward_flops() {
        let s = spec(3);
        for seq in [1, 7, 32] {
            let want = s.forward_flops(1, 0, seq);
            assert!(
                (model_flops(&s, seq) - want).abs() < 1e-6 * want,
                "seq {seq}"
            );
        }
    }

    #[test]
    fn subblock_flops_by_hand() {
        let s = spec(1);
        // GQA kv=2 over 4 tokens: q,o 64x64 and k,v 64x32 weights; QK^T and PV over 1+2+3+4.
        let attn = SubblockSpec::Attention(s.layers[0].attention.clone());
        let weights = 2.0 * (2 * 64 * 64 + 2 * 64 * 32) as f64 * 4.0;
        assert_eq!(subblock_flops(&s, &attn, 4), weights + 4.0 * 64.0 * 10.0);
        // A window of 2 caps the attended positions at 1+2+2+2.
        let win = SubblockSpec::Attention(AttentionSpec::Gqa {
            num_kv_heads: 2,
            qkv_bias: false,
            o_bias: false,
            window: Some(2),
        });
        assert_eq!(subblock_flops(&s, &win, 4), weights + 4.0 * 64.0 * 7.0);
        let ffn = SubblockSpec::Ffn(FfnSpec::SwiGlu {
            intermediate_size: 32,
            bias: false,
        });
        assert_eq!(subblock_flops(&s, &ffn, 4), 2.0 * 3.0 * 64.0 * 32.0 * 4.0);
        assert_eq!(
            subblock_flops(&s, &SubblockSpec::Attention(AttentionSpec::Linear), 4),
            2.0 * 64.0 * 64.0 * 4.0
        );
        assert_eq!(
            subblock_flops(&s, &SubblockSpec::Ffn(FfnSpec::NoOp), 4),
            0.0
        );
    }

    #[test]
    fn an_attention_variant_trains_through_its_layers_ffn_and_an_ffn_variant_does_not() {
        let s = spec(2);
        let seq = 8;
        let lin = SubblockSpec::Attention(AttentionSpec::Linear);
        let ffn = SubblockSpec::Ffn(s.layers[1].ffn.clone());
        let w = SubblockSpec::Ffn(FfnSpec::SwiGlu {
            intermediate_size: 64,
            bias: false,
        });
        let f = |x: &SubblockSpec| subblock_flops(&s, x, seq);
        assert_eq!(
            trainee_flops(&s, 1, std::slice::from_ref(&lin), seq),
            3.0 * f(&lin) + 2.0 * f(&ffn)
        );
        assert_eq!(
            trainee_flops(&s, 1, std::slice::from_ref(&w), seq),
            3.0 * f(&w)
        );
        assert_eq!(
            trainee_flops(&s, 1, &[lin.clone(), w.clone()], seq),
            3.0 * (f(&lin) + f(&w))
        );
        assert_eq!(
            source_of(&s, 0, std::slice::from_ref(&ffn)),
            EntrySource::Parent
        );
        assert_eq!(
            source_of(&s, 0, &[SubblockSpec::Ffn(FfnSpec::NoOp)]),
            EntrySource::Identity
        );
        assert_eq!(source_of(&s, 0, &[w]), EntrySource::Trained);
    }

    #[test]
    fn whole_batches_are_run() {
        assert_eq!(sequences(1000, 4, 100), 12);
        assert_eq!(sequences(800, 4, 100), 8);
        assert_eq!(sequences(0, 4, 100), 0);
        assert_eq!(human(1.0e9), "1.00B");
        assert_eq!(human(45.0e9), "45.00B");
        assert_eq!(human(32768.0), "32.8K");
    }
}
