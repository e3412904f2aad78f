//! Pretraining a decoder from scratch (or continuing one): AdamW, warm-up + cosine, gradient
//! clipping, periodic validation, and checkpoints that resume bit-exactly after a kill.
//!
//! Resumption is exact because everything a step depends on is either in the checkpoint
//! (weights, AdamW moments, step) or a pure function of the step (batch order, learning rate).

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::Checkpoint;
use super::init::random_weights;
use super::loss::cross_entropy;
use super::optim::{AdamW, AdamWConfig};
use super::schedule::WarmupCosine;
use crate::data::BatchOrder;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::nn::Decoder;
use crate::progress::Progress;
use crate::spec::ModelSpec;
use crate::weights::{HostTensor, SafetensorsWeights};

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Validate every this many steps (and at the end).
    pub eval_every: usize,
    /// Validation batches (of `batch_size` sequences) per evaluation; 0 = the whole split.
    #[serde(default)]
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Seed of initialisation and batch order.
    pub seed: u64,
    /// Standard deviation of the initial weights.
    #[serde(default = "d_std")]
    pub init_std: f32,
}

fn d_std() -> f32 {
    0.02
}

impl TrainConfig {
    /// Rejects settings that cannot train.
    pub fn validate(&self, spec: &ModelSpec) -> Result<()> {
        if self.seq_len == 0 || self.batch_size == 0 || self.steps == 0 {
            return Err(Error::invalid(
                "train: seq_len, batch_size and steps must be positive",
            ));
        }
        if self.seq_len > spec.max_position_embeddings {
            return Err(Error::TooLong {
                what: format!("train.seq_len {}", self.seq_len),
                len: self.seq_len,
                max: spec.max_position_embeddings,
            });
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(Error::invalid(format!(
                "train: need 0 <= min_lr <= lr and lr > 0 (got lr {}, min_lr {})",
                self.lr, self.min_lr
            )));
        }
        if self.eval_every == 0 || self.checkpoint_every == 0 {
            return Err(Error::invalid(
                "train: eval_every and checkpoint_every must be positive",
            ));
        }
        Ok(())
    }

    fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
        }
    }
}

/// One validation measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: f64,
}

/// What is saved beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// Hash of the config, spec and data the run was started with.
    pub fingerprint: String,
    pub history: Vec<EvalPoint>,
    /// Mean training loss since the last evaluation (for the next history point).
    pub running_loss_sum: f64,
    pub running_loss_count: usize,
    /// Training tokens seen.
    pub tokens: u64,
    /// Seconds spent in training steps (over all sessions).
    pub train_secs: f64,
}

/// The result of a finished run.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub state: TrainState,
    /// The final weights (f32, checkpoint names).
    pub weights: Vec<(String, HostTensor)>,
}

/// Fingerprint of what determines a run's result.
pub fn run_fingerprint(cfg: &TrainConfig, spec: &ModelSpec, data_fingerprint: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cfg).unwrap_or_default());
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    h.update(data_fingerprint.as_bytes());
    format!("{:x}", h.finalize())[..16].to_string()
}

fn batch_tensor(windows: &[Vec<u32>], idx: &[usize], device: &Device) -> Tensor<2, Int> {
    let t = windows[idx[0]].len();
    let flat: Vec<i64> = idx
        .iter()
        .flat_map(|&i| windows[i].iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [idx.len(), t]), device)
}

/// Mean next-token loss of `model` over `windows` (each `seq_len + 1` tokens), in batches.
pub fn eval_loss(model: &Decoder, windows: &[Vec<u32>], batch: usize) -> f64 {
    let device = model.device();
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in windows.chunks(batch.max(1)) {
        let idx: Vec<usize> = (0..chunk.len()).collect();
        let ids = batch_tensor(chunk, &idx, &device);
        let t = ids.dims()[1] - 1;
        let logits = model.forward(ids.clone().narrow(1, 0, t));
        let loss = cross_entropy(logits, ids.narrow(1, 1, t)).into_scalar::<f32>() as f64;
        sum += loss * chunk.len() as f64;
        n += chunk.len();
    }
    sum / n.max(1) as f64
}

/// The token windows a run trains and validates on.
pub struct TrainData<'a> {
    /// Windows of `seq_len + 1` tokens.
    pub train: &'a [Vec<u32>],
    pub validation: &'a [Vec<u32>],
    /// Fingerprint of the corpus and split (guards resumption).
    pub fingerprint: &'a str,
}

/// Trains `spec` from a random initialisation (or resumes from `out/checkpoint`). Returns when
/// `cfg.steps` steps are done; the final checkpoint stays in `out/checkpoint`.
pub fn pretrain(
    spec: &ModelSpec,
    cfg: &TrainConfig,
    data: &TrainData,
    out: &Path,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<TrainReport> {
    let (train, validation, data_fingerprint) = (data.train, data.validation, data.fingerprint);
    cfg.validate(spec)?;
    if train.is_empty() {
        return Err(Error::invalid(format!(
            "no training sequences of {} tokens: the training split is too small",
            cfg.seq_len
        )));
    }
    if validation.is_empty() {
        return Err(Error::invalid(format!(
            "no validation sequences of {} tokens: the validation split is too small",
            cfg.seq_len
        )));
    }
    let fingerprint = run_fingerprint(cfg, spec, data_fingerprint);
    let ckpt = Checkpoint::new(out);
    let ad = device.clone().autodiff();
    let (mut model, mut opt, mut state) = match ckpt.find()? {
        Some(dir) => {
            let state: TrainState = fsutil::read_json(&dir.join("state.json"))?;
            if state.fingerprint != fingerprint {
                return Err(Error::invalid(format!(
                    "{} holds a checkpoint of a different run (config, model or data changed); \
                     delete it or train into another folder",
                    dir.display()
                )));
            }
            let w = SafetensorsWeights::open(&dir.join("model.safetensors"))?;
            let model = Decoder::load(spec, &w, &ad)?;
            let opt = AdamW::load(
                cfg.adamw.clone(),
                &dir.join("optimizer.safetensors"),
                device,
            )?;
            progress.note(&format!(
                "resuming from step {} ({})",
                state.step,
                dir.display()
            ));
            (model, opt, state)
        }
        None => {
            let w = random_weights(spec, cfg.init_std, cfg.seed);
            let model = Decoder::load(spec, &w, &ad)?;
            let state = TrainState {
                step: 0,
                fingerprint: fingerprint.clone(),
                history: vec![],
                running_loss_sum: 0.0,
                running_loss_count: 0,
                tokens: 0,
                train_secs: 0.0,
            };
            (model, AdamW::new(cfg.adamw.clone()), state)
        }
    };
    let order = BatchOrder {
        n: train.len(),
        batch_size: cfg.batch_size,
        seed: cfg.seed,
    };
    let val_windows: &[Vec<u32>] = if cfg.eval_batches == 0 {
        validation
    } else {
        &validation[..validation.len().min(cfg.eval_batches * cfg.batch_size)]
    };
    let schedule = cfg.schedule();
    progress.start("train", cfg.steps as u64);
    progress.set(state.step as u64, "");
    let session_start = Instant::now();
    let session_tokens0 = state.tokens;
    let mut last_val = state.history.last().map(|p| p.val_loss);
    let _polling = crate::interrupt::Polling::start();
    while state.step < cfg.steps {
        let t0 = Instant::now();
        let ids = batch_tensor(train, &order.batch(state.step), &ad);
        let t = cfg.seq_len;
        let logits = model.forward(ids.clone().narrow(1, 0, t));
        let loss = cross_entropy(logits, ids.narrow(1, 1, t));
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            return Err(Error::invalid(format!(
                "training diverged at step {}: loss is {loss_value}; lower the learning rate",
                state.step
            )));
        }
        let grads = loss.backward();
        let lr = schedule.at(state.step);
        let (m, stats) = opt.step(model, &grads, lr);
        model = m;
        state.step += 1;
        state.tokens += (cfg.batch_size * cfg.seq_len) as u64;
        state.running_loss_sum += loss_value;
        state.running_loss_count += 1;
        state.train_secs += t0.elapsed().as_secs_f64();
        let done = state.step == cfg.steps;
        if state.step % cfg.eval_every == 0 || done {
            let val = eval_loss(&model.valid(), val_windows, cfg.batch_size);
            let train_loss = state.running_loss_sum / state.running_loss_count.max(1) as f64;
            state.history.push(EvalPoint {
                step: state.step,
                train_loss,
                val_loss: val,
            });
            state.running_loss_sum = 0.0;
            state.running_loss_count = 0;
            last_val = Some(val);
            progress.note(&format!(
                "step {:>6}: train loss {train_loss:.4}, validation loss {val:.4} (ppl {:.2})",
                state.step,
                val.exp()
            ));
        }
        if state.step % cfg.checkpoint_every == 0 || done || crate::interrupt::requested().is_some()
        {
            ckpt.save(&model, &opt, &state)?;
        }
        if !done {
            crate::interrupt::check(|| {
                format!(
                    "training checkpointed at step {} of {}",
                    state.step, cfg.steps
                )
            })?;
        }
        let tps = (state.tokens - session_tokens0) as f64 / session_start.elapsed().as_secs_f64();
        progress.set(
            state.step as u64,
            &format!(
                "loss {loss_value:.3} | val {} | lr {lr:.2e} | |g| {:.2} | {tps:.0} tok/s",
                last_val.map_or("-".into(), |v| format!("{v:.3}")),
                stats.grad_norm
            ),
        );
    }
    progress.finish();
    Ok(TrainReport {
        state,
        weights: model.valid().tensors(),
    })
}
