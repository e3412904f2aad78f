//! Serving speed measured end to end on the running device: a batch prefills its prompts, then
//! generates greedily with the KV cache, exactly as `puzzle generate` does.

use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::kinds::SpeedMetric;
use crate::nn::{Decoder, KvCache};
use crate::spec::{AttentionSpec, ModelSpec};

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

/// The environment variable that replaces every measured time by [`simulated_ms`]
/// (`PUZZLE_SIMULATED_CLOCK=1`). For tests of what a run does around its measurements
/// (kill-and-resume, above all): real timings differ between two runs, and everything the
/// search decides from them with it. The engines still load and run every request; only the
/// times they report are replaced. A run under it says so wherever it names its engine.
pub const SIMULATED_CLOCK_ENV: &str = "PUZZLE_SIMULATED_CLOCK";

/// Whether [`SIMULATED_CLOCK_ENV`] is set to `1` (read once per process).
pub fn simulated_clock() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(SIMULATED_CLOCK_ENV).is_ok_and(|v| v == "1"))
}

/// `inner` timed by the simulated clock when [`simulated_clock`] is on, else `inner` itself.
pub fn clocked(inner: Box<dyn Served>, spec: &ModelSpec) -> Box<dyn Served> {
    if simulated_clock() {
        Box::new(SimulatedClock {
            inner,
            spec: spec.clone(),
        })
    } else {
        inner
    }
}

/// Runs each request in the real engine, reports [`simulated_ms`].
struct SimulatedClock {
    inner: Box<dyn Served>,
    spec: ModelSpec,
}

impl Served for SimulatedClock {
    fn request(&self, batch: usize, prefill: usize, decode_steps: usize) -> Result<(f64, f64)> {
        self.inner.request(batch, prefill, decode_steps)?;
        Ok(simulated_ms(&self.spec, batch, prefill, decode_steps))
    }
}

/// A deterministic request time (prefill ms, total ms) for `spec`: each forward reads every
/// weight once at 10 GB/s, computes at 20 GFLOP/s, pays 0.02 ms per attention or FFN that is
/// not a no-op (an engine's per-op overhead) and 0.05 ms per layer that has either (a layer
/// with neither is skipped whole). So, as in real engines, small batches are bound by weights
/// and overheads, and block sums do not add up exactly (the per-layer part is saved only when
/// both subblocks go), which the search's calibration has to correct. It is a plausible CPU,
/// not this one: the point is that two runs agree exactly.
pub fn simulated_ms(
    spec: &ModelSpec,
    batch: usize,
    prefill: usize,
    decode_steps: usize,
) -> (f64, f64) {
    let (mut ops, mut layers) = (0.0, 0.0);
    for l in &spec.layers {
        let n = usize::from(!matches!(l.attention, AttentionSpec::NoOp))
            + usize::from(!matches!(l.ffn, crate::spec::FfnSpec::NoOp));
        ops += n as f64;
        layers += if n > 0 { 1.0 } else { 0.0 };
    }
    let weights_ms = spec.num_params() as f64 * 4.0 / 10e9 * 1e3;
    let forward = |past: usize, tokens: usize| {
        spec.forward_flops(batch, past, tokens) / 20e9 * 1e3
            + weights_ms
            + 0.02 * ops
            + 0.05 * layers
    };
    let p = forward(0, prefill);
    let total = p
        + (0..decode_steps)
            .map(|i| forward(prefill + i, 1))
            .sum::<f64>();
    (p, total)
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
    /// Against the first model measured with it (the parent, wherever the pipeline measures),
    /// round by round; `None` for the first model itself and for older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired: Option<Paired>,
}

/// A model's speed over a reference measured in the same rounds: the median over rounds of the
/// round's ratio (its request and the reference's, run back to back). A machine slowing down
/// for a while hits both sides of each ratio, so this wanders less between measurements than
/// the ratio of the two medians (`cargo bench -p puzzle-llama-ops --features llamacpp --bench
/// repeat`: 4.7-12% against 12-18% from best to worst of 5-8 measurements, README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub throughput: f64,
    pub decode_throughput: f64,
    /// Lowest and highest round's ratio of `throughput`.
    pub throughput_range: [f64; 2],
    /// Lowest and highest round's ratio of `decode_throughput`.
    pub decode_throughput_range: [f64; 2],
    /// Each pass's median ratio, when the rounds were taken in several passes apart in time
    /// ([`Timings`]); empty for one pass and for older reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<PassRatio>,
}

/// One pass's median over its rounds of a model's ratio to the first model's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassRatio {
    pub throughput: f64,
    pub decode_throughput: f64,
}

impl Speed {
    /// The value of `metric` (medians over the rounds).
    pub fn value(&self, metric: SpeedMetric) -> f64 {
        match metric {
            SpeedMetric::Throughput => self.throughput,
            SpeedMetric::DecodeThroughput => self.decode_throughput,
        }
    }

    /// `metric` over `base`'s and the lowest and highest round's ratio: paired round by round
    /// when this was measured together with `base` as the first model, else the ratio of the
    /// medians (and of the ranges' ends to `base`'s median).
    pub fn over(&self, base: &Speed, metric: SpeedMetric) -> (f64, [f64; 2]) {
        match (&self.paired, metric) {
            (Some(p), SpeedMetric::Throughput) => (p.throughput, p.throughput_range),
            (Some(p), SpeedMetric::DecodeThroughput) => {
                (p.decode_throughput, p.decode_throughput_range)
            }
            (None, _) => {
                let b = base.value(metric);
                let r = match metric {
                    SpeedMetric::Throughput => self.throughput_range,
                    SpeedMetric::DecodeThroughput => self.decode_throughput_range,
                };
                (self.value(metric) / b, [r[0] / b, r[1] / b])
            }
        }
    }

    /// The lowest and highest pass's median ratio of `metric` to the first model's, when this
    /// was measured together with it in more than one pass.
    pub fn over_passes(&self, metric: SpeedMetric) -> Option<[f64; 2]> {
        let p = self.paired.as_ref().filter(|p| !p.passes.is_empty())?;
        let v: Vec<f64> = p
            .passes
            .iter()
            .map(|r| match metric {
                SpeedMetric::Throughput => r.throughput,
                SpeedMetric::DecodeThroughput => r.decode_throughput,
            })
            .collect();
        Some(range(&v))
    }
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
/// ratios between the results are far steadier than separate measurements. Every model after
/// the first gets its [`Paired`] ratios to the first.
pub fn measure_together(
    models: &[&dyn Served],
    batch: usize,
    prefill: usize,
    generate: usize,
    rounds: usize,
) -> Result<Vec<Speed>> {
    let mut t = Timings::new(models.len(), batch, prefill, generate);
    t.pass(models, rounds)?;
    Ok(t.speeds())
}

/// The timed rounds of models measured together, gathered in one or more passes: each pass is
/// a warm-up round then its timed rounds, round-robin. Passes taken minutes apart (the final
/// evaluation spreads them over its quality scoring) show how far the whole measurement wanders
/// with the machine, which rounds of one pass, seconds apart, do not: the noise here comes in
/// stretches (README, "How far one measured speed-up wanders").
#[derive(Clone, Debug)]
pub struct Timings {
    batch: usize,
    prefill: usize,
    generate: usize,
    /// Per model, (prefill ms, total ms) of each timed round, passes one after the other.
    rounds: Vec<Vec<(f64, f64)>>,
    /// Timed rounds of each pass.
    passes: Vec<usize>,
}

impl Timings {
    /// No rounds yet for `models` models serving `batch` prompts of `prefill` tokens and
    /// generating `generate` tokens each.
    pub fn new(models: usize, batch: usize, prefill: usize, generate: usize) -> Timings {
        Timings {
            batch,
            prefill,
            generate,
            rounds: vec![Vec::new(); models],
            passes: Vec::new(),
        }
    }

    /// One more pass over `models` (the same models, in the same order, every pass): a warm-up
    /// round, then `rounds` timed rounds (at least one).
    pub fn pass(&mut self, models: &[&dyn Served], rounds: usize) -> Result<()> {
        if models.len() != self.rounds.len() {
            return Err(crate::error::Error::invalid(format!(
                "a speed pass over {} models where the first pass had {}",
                models.len(),
                self.rounds.len()
            )));
        }
        let rounds = rounds.max(1);
        // Kept apart until the pass is whole, so a failed request leaves the earlier passes as
        // they were.
        let mut timed: Vec<Vec<(f64, f64)>> = vec![Vec::with_capacity(rounds); models.len()];
        for round in 0..=rounds {
            for (i, m) in models.iter().enumerate() {
                // `generate` tokens: the first comes from the prefill, the rest from decode steps.
                let r = m.request(self.batch, self.prefill, self.generate.saturating_sub(1))?;
                if round > 0 {
                    timed[i].push(r);
                }
            }
        }
        for (all, new) in self.rounds.iter_mut().zip(timed) {
            all.extend(new);
        }
        self.passes.push(rounds);
        Ok(())
    }

    /// Every model's speed over all rounds of all passes (medians and ranges over the rounds),
    /// and for every model after the first its [`Paired`] ratios to the first, with each pass's
    /// median ratio when there was more than one pass. Empty before the first pass.
    pub fn speeds(&self) -> Vec<Speed> {
        let Some(first) = self.rounds.first().filter(|_| !self.passes.is_empty()) else {
            return Vec::new();
        };
        let (batch, prefill, generate) = (self.batch, self.prefill, self.generate);
        let decode_steps = generate.saturating_sub(1).max(1) as f64;
        let tput = |t: f64| (batch * generate) as f64 / (t / 1e3);
        let dtput = |(p, t): (f64, f64)| batch as f64 * decode_steps / ((t - p).max(1e-9) / 1e3);
        let per_round = |v: &[(f64, f64)]| -> (Vec<f64>, Vec<f64>) {
            (
                v.iter().map(|r| tput(r.1)).collect(),
                v.iter().map(|&r| dtput(r)).collect(),
            )
        };
        let (first_total, first_decode) = per_round(first);
        self.rounds
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (total, decode) = per_round(v);
                let ratios = |mine: &[f64], base: &[f64]| -> Vec<f64> {
                    mine.iter().zip(base).map(|(m, b)| m / b).collect()
                };
                let paired = (i > 0).then(|| {
                    let (t, d) = (ratios(&total, &first_total), ratios(&decode, &first_decode));
                    Paired {
                        throughput: median(t.clone()),
                        decode_throughput: median(d.clone()),
                        throughput_range: range(&t),
                        decode_throughput_range: range(&d),
                        passes: self.pass_medians(&t, &d),
                    }
                });
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
                    paired,
                }
            })
            .collect()
    }

    /// Each pass's median of the per-round ratios `t` (throughput) and `d` (decode); none for a
    /// single pass, whose median is the whole measurement's.
    fn pass_medians(&self, t: &[f64], d: &[f64]) -> Vec<PassRatio> {
        if self.passes.len() < 2 {
            return Vec::new();
        }
        let mut start = 0;
        self.passes
            .iter()
            .map(|&n| {
                let r = start..start + n;
                start += n;
                PassRatio {
                    throughput: median(t[r.clone()].to_vec()),
                    decode_throughput: median(d[r].to_vec()),
                }
            })
            .collect()
    }
}

/// The lowest and highest of `v`.
fn range(v: &[f64]) -> [f64; 2] {
    [
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FfnSpec, LayerSpec, RopeScaling, RopeSpec};

    fn spec(layers: Vec<(bool, bool)>) -> ModelSpec {
        ModelSpec {
            family: "llama".into(),
            hidden_size: 64,
            vocab_size: 128,
            num_attention_heads: 4,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope: RopeSpec {
                theta: 10000.0,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
            storage_dtype: None,
            layers: layers
                .into_iter()
                .map(|(attn, ffn)| LayerSpec {
                    attention: if attn {
                        AttentionSpec::Gqa {
                            num_kv_heads: 2,
                            qkv_bias: false,
                            o_bias: false,
                            window: None,
                        }
                    } else {
                        AttentionSpec::NoOp
                    },
                    ffn: if ffn {
                        FfnSpec::SwiGlu {
                            intermediate_size: 128,
                            bias: false,
                        }
                    } else {
                        FfnSpec::NoOp
                    },
                })
                .collect(),
        }
    }

    /// The simulated clock's request times, against the formula worked by hand, and the
    /// non-additivity the kill-anywhere test relies on to exercise the speed calibration.
    #[test]
    fn simulated_times_follow_the_documented_formula() {
        let s = spec(vec![(true, true), (true, true)]);
        // One forward of 1 token at batch 1 with 3 cached positions: weight FLOPs are
        // 2 x MACs per token; attention 2 x 2 x 64 x 4 attended positions per layer.
        let flops = 2.0 * s.matmul_macs_per_token() as f64 + 2.0 * (2.0 * 2.0 * 64.0 * 4.0);
        let step =
            flops / 20e9 * 1e3 + s.num_params() as f64 * 4.0 / 10e9 * 1e3 + 0.02 * 4.0 + 0.05 * 2.0;
        let (p, t) = simulated_ms(&s, 1, 3, 1);
        let (p0, _) = simulated_ms(&s, 1, 3, 0);
        assert_eq!(p, p0);
        assert!((t - p - step).abs() < 1e-12, "{} vs {step}", t - p);
        // Removing both subblocks of a layer saves more than removing each alone.
        let full = simulated_ms(&s, 1, 8, 4).1;
        let no_attn = simulated_ms(&spec(vec![(false, true), (true, true)]), 1, 8, 4).1;
        let no_ffn = simulated_ms(&spec(vec![(true, false), (true, true)]), 1, 8, 4).1;
        let neither = simulated_ms(&spec(vec![(false, false), (true, true)]), 1, 8, 4).1;
        let saved_apart = (full - no_attn) + (full - no_ffn);
        assert!((full - neither) - saved_apart > 0.05 * 5.0 - 1e-9);
        // Deterministic: the point of it.
        assert_eq!(simulated_ms(&s, 2, 16, 7), simulated_ms(&s, 2, 16, 7));
    }

    /// Request times from a script: (prefill ms, total ms) per call, in order.
    struct Scripted(std::cell::RefCell<std::vec::IntoIter<(f64, f64)>>);

    impl Served for Scripted {
        fn request(&self, _: usize, _: usize, _: usize) -> Result<(f64, f64)> {
            Ok(self.0.borrow_mut().next().expect("a scripted time"))
        }
    }

    /// Requests taking `ms` in turn, a quarter of each the prefill.
    fn script(ms: &[f64]) -> Scripted {
        Scripted(std::cell::RefCell::new(
            ms.iter()
                .map(|&t| (t / 4.0, t))
                .collect::<Vec<_>>()
                .into_iter(),
        ))
    }

    /// A machine that runs at half speed in two of five rounds, hitting parent and model alike,
    /// and once the model alone (a neighbour's burst): the model is twice as fast in four rounds
    /// of five, which the paired ratio says, while the ratio of the two medians says 1x (the
    /// model's median comes from a slow round, the parent's from a fast one).
    #[test]
    fn paired_ratios_compare_requests_of_the_same_round() {
        // Warm-up round first.
        let parent = script(&[100.0, 100.0, 200.0, 100.0, 200.0, 100.0]);
        let model = script(&[50.0, 50.0, 100.0, 50.0, 100.0, 100.0]);
        let s = measure_together(&[&parent, &model], 1, 16, 5, 5).unwrap();
        assert!(s[0].paired.is_none());
        let p = s[1].paired.as_ref().expect("paired with the first model");
        // Per-round throughput ratios: 2, 2, 2, 2, 1 -> median 2, range [1, 2].
        assert!((p.throughput - 2.0).abs() < 1e-12, "{p:?}");
        assert_eq!(p.throughput_range, [1.0, 2.0]);
        let (r, range) = s[1].over(&s[0], SpeedMetric::Throughput);
        assert_eq!((r, range), (p.throughput, p.throughput_range));
        // Without the pairing (an older report): the ratio of medians, 100 ms / 100 ms.
        let unpaired = Speed {
            paired: None,
            ..s[1].clone()
        };
        let (r, range) = unpaired.over(&s[0], SpeedMetric::Throughput);
        assert!((r - 1.0).abs() < 1e-12, "{r}");
        assert_eq!(range, [1.0, 2.0]);
        // Decode throughput pairs the same way (prefill a quarter of every request).
        assert!((p.decode_throughput - 2.0).abs() < 1e-12);
        assert!(measure_together(&[], 1, 16, 5, 5).unwrap().is_empty());
    }

    /// Two passes, the second after the machine changed: the pooled median is over all five
    /// rounds, each pass's median ratio is kept, and `over_passes` gives their spread. A pass
    /// over a different number of models is refused.
    #[test]
    fn passes_keep_their_own_ratio_and_pool_their_rounds() {
        // Each pass starts with a warm-up round (the 1000 ms requests, never counted).
        let parent = script(&[1000.0, 100.0, 120.0, 1000.0, 100.0, 100.0, 100.0]);
        let model = script(&[1000.0, 50.0, 20.0, 1000.0, 25.0, 25.0, 25.0]);
        let mut t = Timings::new(2, 1, 16, 5);
        assert!(t.speeds().is_empty());
        t.pass(&[&parent, &model], 2).unwrap();
        // One pass: no per-pass ratios.
        let one = t.speeds();
        assert!(one[1].paired.as_ref().unwrap().passes.is_empty());
        assert_eq!(one[1].over_passes(SpeedMetric::Throughput), None);
        t.pass(&[&parent, &model], 3).unwrap();
        let s = t.speeds();
        assert_eq!(s[0].rounds, 5);
        let p = s[1].paired.as_ref().unwrap();
        // Round ratios 2, 6 | 4, 4, 4: median 4 over the five; pass medians (the upper one of
        // an even count) 6 and 4. A pass boundary one round off would give 4 and 4.
        assert!((p.throughput - 4.0).abs() < 1e-12, "{p:?}");
        assert_eq!(p.passes.len(), 2);
        assert!((p.passes[0].throughput - 6.0).abs() < 1e-12, "{p:?}");
        assert!((p.passes[1].decode_throughput - 4.0).abs() < 1e-12, "{p:?}");
        let spread = s[1].over_passes(SpeedMetric::Throughput).unwrap();
        assert!((spread[0] - 4.0).abs() < 1e-12 && (spread[1] - 6.0).abs() < 1e-12);
        assert!(s[0].over_passes(SpeedMetric::Throughput).is_none());
        let err = t.pass(&[&parent], 1).unwrap_err().to_string();
        assert!(err.contains("1 models where the first pass had 2"), "{err}");
    }
}
