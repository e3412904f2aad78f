//! Global knowledge distillation (Puzzle stage 7, GKD): the assembled child learns from the
//! parent with `w_cos * sum_l (1 - cos(h_child^l, h_parent^l)) + w_kl * KL(p_parent || q_child)`
//! on every layer's output and on the logits; the plain LM loss is off by default (the paper
//! found it hurts). Checkpointed like pretraining, so a killed run resumes exactly.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::BatchOrder;
use crate::error::{Error, Result};
use crate::nn::Decoder;
use crate::progress::Progress;
use crate::train::checkpoint::Checkpoint;
use crate::train::loss::{cosine_distance, cross_entropy, kl_divergence};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::WarmupCosine;
use crate::weights::{MemoryWeights, SafetensorsWeights, WeightSource};

/// `[distill]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Training tokens (0 skips distillation).
    pub tokens: usize,
    #[serde(default = "d_seq")]
    pub seq_len: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
    #[serde(default = "d_adamw")]
    pub adamw: AdamWConfig,
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    /// Weight of the per-layer cosine term.
    #[serde(default = "d_one")]
    pub cosine_weight: f64,
    /// Weight of KL(parent || child) on logits.
    #[serde(default = "d_one")]
    pub kl_weight: f64,
    /// Weight of the child's own LM loss (0 by default, as in the paper).
    #[serde(default)]
    pub lm_weight: f64,
    #[serde(default)]
    pub seed: u64,
}

fn d_seq() -> usize {
    128
}
fn d_batch() -> usize {
    8
}
fn d_lr() -> f64 {
    3e-4
}
fn d_warmup() -> usize {
    10
}
fn d_ckpt() -> usize {
    25
}
fn d_one() -> f64 {
    1.0
}
fn d_adamw() -> AdamWConfig {
    AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    }
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            tokens: 0,
            seq_len: d_seq(),
            batch_size: d_batch(),
            lr: d_lr(),
            min_lr: 0.0,
            warmup_steps: d_warmup(),
            adamw: d_adamw(),
            checkpoint_every: d_ckpt(),
            cosine_weight: 1.0,
            kl_weight: 1.0,
            lm_weight: 0.0,
            seed: 0,
        }
    }
}

/// Saved beside a distillation checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillState {
    pub step: usize,
    pub fingerprint: String,
    /// `(step, mean loss since the previous point)`.
    pub loss_curve: Vec<(usize, f64)>,
    pub running: (f64, usize),
    pub seconds: f64,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillReport {
    pub steps: usize,
    pub tokens: usize,
    pub loss_curve: Vec<(usize, f64)>,
    pub seconds: f64,
}

fn ids_of(windows: &[&Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let t = windows[0].len();
    let flat: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [windows.len(), t]), device)
}

fn as_weights(model: &Decoder) -> MemoryWeights {
    let mut m = MemoryWeights::new("student");
    for (n, t) in model.tensors() {
        m.insert(n, t);
    }
    m
}

/// Distils `student` from `teacher` on `train` windows (`seq_len + 1` tokens), checkpointing in
/// `dir`. Returns the distilled student on the teacher's device.
pub fn distill(
    student: &Decoder,
    teacher: &Decoder,
    cfg: &DistillConfig,
    train: &[Vec<u32>],
    fingerprint: &str,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<(Decoder, DistillReport)> {
    let device = teacher.device();
    let steps = cfg.tokens.div_ceil(cfg.batch_size * cfg.seq_len);
    if steps == 0 {
        return Ok((
            student.clone(),
            DistillReport {
                steps: 0,
                tokens: 0,
                loss_curve: vec![],
                seconds: 0.0,
            },
        ));
    }
    if train.is_empty() {
        return Err(Error::invalid("no training sequences to distil on"));
    }
    let spec = student.current_spec();
    let ckpt = Checkpoint::new(dir);
    let (mut model, mut opt, mut state) =
        resume_or_start(student, &device, cfg, fingerprint, &ckpt, progress)?;
    let schedule = WarmupCosine {
        lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_steps: cfg.warmup_steps.min(steps / 2),
        total_steps: steps,
    };
    let order = BatchOrder {
        n: train.len(),
        batch_size: cfg.batch_size,
        seed: cfg.seed,
    };
    progress.start("distill", steps as u64);
    progress.set(state.step as u64, "");
    let _polling = crate::interrupt::Polling::start();
    while state.step < steps {
        let t0 = Instant::now();
        let idx = order.batch(state.step);
        let rows: Vec<&Vec<u32>> = idx.iter().map(|&i| &train[i]).collect();
        let all = ids_of(&rows, &device);
        let loss = gkd_loss(&model, teacher, cfg, all);
        let lv = loss.clone().into_scalar::<f32>() as f64;
        if !lv.is_finite() {
            return Err(Error::invalid(format!(
                "distillation diverged at step {}: loss {lv}; lower [distill] lr",
                state.step
            )));
        }
        let grads = loss.backward();
        let (m, _) = opt.step(model, &grads, schedule.at(state.step));
        model = m;
        state.step += 1;
        state.running.0 += lv;
        state.running.1 += 1;
        state.seconds += t0.elapsed().as_secs_f64();
        let done = state.step == steps;
        if state.step % cfg.checkpoint_every == 0 || done {
            state
                .loss_curve
                .push((state.step, state.running.0 / state.running.1.max(1) as f64));
            state.running = (0.0, 0);
            ckpt.save(&model, &opt, &state)?;
        } else if crate::interrupt::requested().is_some() {
            // Off the curve's grid: the running mean is saved as it is, so a resumed run
            // records the same loss curve as one that never stopped.
            ckpt.save(&model, &opt, &state)?;
        }
        if !done {
            crate::interrupt::check(|| {
                format!(
                    "distillation checkpointed at step {} of {steps}",
                    state.step
                )
            })?;
        }
        progress.set(state.step as u64, &format!("loss {lv:.4}"));
    }
    progress.finish();
    let valid = model.valid();
    let out = Decoder::load(&spec, &as_weights(&valid) as &dyn WeightSource, &device)?;
    Ok((
        out,
        DistillReport {
            steps,
            tokens: steps * cfg.batch_size * t_len(cfg),
            loss_curve: state.loss_curve,
            seconds: state.seconds,
        },
    ))
}

/// The student, optimiser and state to continue from: the checkpoint in `ckpt` when it was made
/// for the same `fingerprint`, else the fresh student.
fn resume_or_start(
    student: &Decoder,
    device: &Device,
    cfg: &DistillConfig,
    fingerprint: &str,
    ckpt: &Checkpoint,
    progress: &mut dyn Progress,
) -> Result<(Decoder, AdamW, DistillState)> {
    let spec = student.current_spec();
    let ad = device.clone().autodiff();
    Ok(match ckpt.state::<DistillState>()? {
        Some((d, Ok(s))) if s.fingerprint == fingerprint => {
            let w = SafetensorsWeights::open(&d.join("model.safetensors"))?;
            let m = Decoder::load(&spec, &w, &ad)?;
            let o = AdamW::load(cfg.adamw.clone(), &d.join("optimizer.safetensors"), device)?;
            progress.note(&format!(
                "distill: resuming from step {} ({})",
                s.step,
                d.display()
            ));
            (m, o, s)
        }
        _ => (
            Decoder::load(&spec, &as_weights(student) as &dyn WeightSource, &ad)?,
            AdamW::new(cfg.adamw.clone()),
            DistillState {
                step: 0,
                fingerprint: fingerprint.to_string(),
                loss_curve: vec![],
                running: (0.0, 0),
                seconds: 0.0,
            },
        ),
    })
}

/// The GKD loss of one batch of `seq_len + 1`-token windows: KL between the teacher's and the
/// student's next-token distributions, plus the per-layer cosine distance of their outputs and
/// the LM loss, each with its `[distill]` weight. `model` is the student on the autodiff device,
/// `all` the windows on the teacher's (public for its test against a naive formulation).
pub fn gkd_loss(
    model: &Decoder,
    teacher: &Decoder,
    cfg: &DistillConfig,
    all: Tensor<2, Int>,
) -> Tensor<1> {
    let t = cfg.seq_len.min(all.dims()[1] - 1);
    let inputs = all.clone().narrow(1, 0, t);
    let teacher_trace = teacher.forward_trace(inputs.clone());
    let student_trace = model.forward_trace(Tensor::from_inner(inputs));
    let mut loss = kl_divergence(
        Tensor::from_inner(teacher_trace.logits),
        student_trace.logits.clone(),
    )
    .mul_scalar(cfg.kl_weight);
    if cfg.cosine_weight > 0.0 {
        for (s, p) in student_trace.layer_out.iter().zip(&teacher_trace.layer_out) {
            loss = loss
                + cosine_distance(s.clone(), Tensor::from_inner(p.clone()))
                    .mul_scalar(cfg.cosine_weight);
        }
    }
    if cfg.lm_weight > 0.0 {
        let targets = Tensor::from_inner(all.narrow(1, 1, t));
        loss = loss + cross_entropy(student_trace.logits, targets).mul_scalar(cfg.lm_weight);
    }
    loss
}

fn t_len(cfg: &DistillConfig) -> usize {
    cfg.seq_len
}
