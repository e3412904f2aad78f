//! Measuring quality: language-model loss and perplexity on held-out text, multiple-choice task
//! accuracy, and agreement with a reference model (KL divergence of next-token distributions,
//! top-1 agreement, accuracy retention).

pub mod speed;
pub mod tasks;

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::nn::Decoder;
use crate::train::loss::{cross_entropy, kl_per_token};

/// Next-token loss on held-out windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmMetrics {
    pub sequences: usize,
    /// Tokens predicted.
    pub tokens: usize,
    /// Mean cross-entropy (nats per token).
    pub loss: f64,
    pub perplexity: f64,
}

/// How closely a model follows a reference on the same windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub tokens: usize,
    /// Mean over tokens of `KL(reference || model)` (nats).
    pub kl: f64,
    /// Share of positions where both put the most probability on the same token.
    pub top1: f64,
}

fn batch_ids(windows: &[Vec<u32>], device: &burn::tensor::Device) -> Tensor<2, Int> {
    let t = windows[0].len();
    let flat: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [windows.len(), t]), device)
}

/// Loss and perplexity over windows of `seq_len + 1` tokens.
pub fn lm_metrics(model: &Decoder, windows: &[Vec<u32>], batch: usize) -> LmMetrics {
    let device = model.device();
    let (mut sum, mut tokens) = (0.0, 0usize);
    for chunk in windows.chunks(batch.max(1)) {
        let ids = batch_ids(chunk, &device);
        let t = ids.dims()[1] - 1;
        let logits = model.forward(ids.clone().narrow(1, 0, t));
        let loss = cross_entropy(logits, ids.narrow(1, 1, t)).into_scalar::<f32>() as f64;
        sum += loss * (chunk.len() * t) as f64;
        tokens += chunk.len() * t;
    }
    let loss = sum / tokens.max(1) as f64;
    LmMetrics {
        sequences: windows.len(),
        tokens,
        loss,
        perplexity: loss.exp(),
    }
}

/// KL divergence and top-1 agreement of `model` against `reference` on the same windows.
pub fn agreement(
    model: &Decoder,
    reference: &Decoder,
    windows: &[Vec<u32>],
    batch: usize,
) -> Agreement {
    let device = model.device();
    let (mut kl, mut agree, mut tokens) = (0.0, 0usize, 0usize);
    for chunk in windows.chunks(batch.max(1)) {
        let ids = batch_ids(chunk, &device);
        let t = ids.dims()[1] - 1;
        let inputs = ids.narrow(1, 0, t);
        let q = model.forward(inputs.clone());
        let p = reference.forward(inputs);
        let per = kl_per_token(p.clone(), q.clone());
        kl += per.sum().into_scalar::<f32>() as f64;
        let same = p
            .argmax(2)
            .equal(q.argmax(2))
            .int()
            .sum()
            .into_scalar::<i64>();
        agree += same as usize;
        tokens += chunk.len() * t;
    }
    Agreement {
        tokens,
        kl: kl / tokens.max(1) as f64,
        top1: agree as f64 / tokens.max(1) as f64,
    }
}
