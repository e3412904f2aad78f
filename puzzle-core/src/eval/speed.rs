//! Serving speed measured end to end on the running device: a batch prefills its prompts, then
//! generates greedily with the KV cache, exactly as `puzzle generate` does.

use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::nn::{Decoder, KvCache};

/// A model loaded in a serving engine, ready to time requests.
pub trait Served {
    /// One request, timed: a batch of `batch` prompts of `prefill` tokens is prefilled, then
    /// `decode_steps` greedy decode steps run with the KV cache. Returns (prefill ms, total ms).
    fn request(&self, batch: usize, prefill: usize, decode_steps: usize) -> Result<(f64, f64)>;
}

impl Served for Decoder {
    fn request(&self, batch: usize, prefill: usize, decode_steps: usize) -> Result<(f64, f64)> {
        Ok(once(self, batch, prefill, decode_steps))
    }
}

/// One measurement: medians over rounds, and the range over rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub batch: usize,
    pub prefill_len: usize,
    pub generation_len: usize,
    /// Median milliseconds of the prefill.
    pub prefill_ms: f64,
    /// Median milliseconds of prefill plus generation (the latency of a request).
    pub total_ms: f64,
    /// Generated tokens per second over the whole request (prefill included).
    pub throughput: f64,
    /// Generated tokens per second of the decode steps alone.
    pub decode_throughput: f64,
    /// Prompt tokens per second of the prefill.
    pub prefill_throughput: f64,
    /// Timed rounds the medians are over.
    #[serde(default)]
    pub rounds: usize,
    /// Lowest and highest `throughput` over the rounds.
    #[serde(default)]
    pub throughput_range: [f64; 2],
    /// Lowest and highest `decode_throughput` over the rounds.
    #[serde(default)]
    pub decode_throughput_range: [f64; 2],
}

/// Measures `model` serving a batch of `batch` prompts of `prefill` tokens generating
/// `generate` tokens each; median of `repeats` after one warm-up.
pub fn measure(
    model: &dyn Served,
    batch: usize,
    prefill: usize,
    generate: usize,
    repeats: usize,
) -> Result<Speed> {
    Ok(measure_together(&[model], batch, prefill, generate, repeats)?.remove(0))
}

/// Measures several models round-robin (one request each per round, `rounds` rounds after a
/// warm-up round) so that drifts of the machine (other load, clocks) hit all of them alike;
/// ratios between the results are far steadier than separate measurements.
pub fn measure_together(
    models: &[&dyn Served],
    batch: usize,
    prefill: usize,
    generate: usize,
    rounds: usize,
) -> Result<Vec<Speed>> {
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); models.len()];
    for round in 0..=rounds.max(1) {
        for (i, m) in models.iter().enumerate() {
            // `generate` tokens: the first comes from the prefill, the rest from decode steps.
            let r = m.request(batch, prefill, generate.saturating_sub(1))?;
            if round > 0 {
                runs[i].push(r);
            }
        }
    }
    let decode_steps = generate.saturating_sub(1).max(1) as f64;
    let tput = |t: f64| (batch * generate) as f64 / (t / 1e3);
    let dtput = |(p, t): (f64, f64)| batch as f64 * decode_steps / ((t - p).max(1e-9) / 1e3);
    let range = |v: &[f64]| {
        [
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ]
    };
    Ok(runs
        .into_iter()
        .map(|v| {
            let total: Vec<f64> = v.iter().map(|r| tput(r.1)).collect();
            let decode: Vec<f64> = v.iter().map(|&r| dtput(r)).collect();
            let p = median(v.iter().map(|r| r.0).collect());
            let t = median(v.iter().map(|r| r.1).collect());
            Speed {
                batch,
                prefill_len: prefill,
                generation_len: generate,
                prefill_ms: p,
                total_ms: t,
                throughput: tput(t),
                decode_throughput: median(decode.clone()),
                prefill_throughput: (batch * prefill) as f64 / (p / 1e3),
                rounds: v.len(),
                throughput_range: range(&total),
                decode_throughput_range: range(&decode),
            }
        })
        .collect())
}

/// The median (the upper one of an even count) of timings.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds (after one warm-up) of a request: a prefill of `prefill` tokens per
/// sequence then `decode_steps` greedy decode steps, for a batch of `batch`. This is what the
/// cost tables add up (prefill + steps x decode), hence steps rather than generated tokens.
pub fn request_ms(
    model: &dyn Served,
    batch: usize,
    prefill: usize,
    decode_steps: usize,
    repeats: usize,
) -> Result<f64> {
    model.request(batch, prefill, decode_steps)?;
    let v = (0..repeats.max(1))
        .map(|_| Ok(model.request(batch, prefill, decode_steps)?.1))
        .collect::<Result<Vec<f64>>>()?;
    Ok(median(v))
}

/// One request: (prefill ms, total ms).
fn once(model: &Decoder, batch: usize, prefill: usize, decode_steps: usize) -> (f64, f64) {
    let device = model.device();
    let vocab = model.spec.vocab_size;
    let ids: Vec<i64> = (0..batch * prefill)
        .map(|i| (i * 7919 % vocab) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, prefill]), &device);
    let t0 = Instant::now();
    let mut cache = KvCache::new(model.layers.len(), vec![0; batch]);
    let mut logits = model.step(ids, &mut cache, true);
    let mut next: Vec<i64> = logits
        .clone()
        .argmax(2)
        .try_into_vec_as::<i64>()
        .expect("ids");
    let t_prefill = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..decode_steps {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(next, [batch, 1]), &device);
        logits = model.step(ids, &mut cache, true);
        next = logits
            .clone()
            .argmax(2)
            .try_into_vec_as::<i64>()
            .expect("ids");
    }
    (t_prefill, t0.elapsed().as_secs_f64() * 1e3)
}
