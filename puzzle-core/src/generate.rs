//! Text generation with a KV cache: batched (left-padded), greedy or sampled (temperature,
//! top-p, seed).

use std::time::Instant;

use crate::rng::SeededRng;

use crate::error::{Error, Result};
use crate::nn::{Decoder, KvCache, ids_tensor};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id, as `argmax` in torch).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of tokens whose
    /// probability reaches `top_p`.
    Sample {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// A row stops after producing one of these (usually the EOS ids).
    pub stop_tokens: Vec<u32>,
}

/// What a generation produced, with timings for the tokens/s report.
#[derive(Clone, Debug)]
pub struct Generation {
    /// New tokens per row (a stop token, when hit, is included).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds spent on the prompt (prefill).
    pub prefill_secs: f64,
    /// Prompt tokens processed (padding excluded).
    pub prefill_tokens: usize,
    /// Seconds spent on incremental steps.
    pub decode_secs: f64,
    /// Tokens produced by incremental steps over all rows (the first token of each row comes
    /// from the prefill).
    pub decode_tokens: usize,
}

/// Generates continuations of `prompts` (token ids, any lengths) in one batch.
pub fn generate(
    model: &Decoder,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Generation> {
    if prompts.is_empty() {
        return Ok(Generation {
            tokens: vec![],
            prefill_secs: 0.0,
            prefill_tokens: 0,
            decode_secs: 0.0,
            decode_tokens: 0,
        });
    }
    if let Sampling::Sample {
        temperature, top_p, ..
    } = opts.sampling
    {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::invalid(format!(
                "temperature must be a positive number, got {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top-p must be in (0, 1], got {top_p}"
            )));
        }
    }
    let max_pos = model.spec.max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 {
        return Err(Error::invalid("a prompt is empty: nothing to continue"));
    }
    if longest > max_pos {
        return Err(Error::TooLong {
            what: "the prompt".into(),
            len: longest,
            max: max_pos,
        });
    }
    for p in prompts {
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= model.spec.vocab_size) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                model.spec.vocab_size
            )));
        }
    }
    // New tokens stop at the model's position limit.
    let max_new = opts.max_new_tokens.min(max_pos - longest);
    let device = model.device();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut r = vec![0u32; longest - p.len()];
            r.extend_from_slice(p);
            r
        })
        .collect();
    let mut rng = match opts.sampling {
        Sampling::Sample { seed, .. } => Some(SeededRng::new(seed)),
        Sampling::Greedy => None,
    };
    let mut cache = KvCache::new(model.layers.len(), pads);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![max_new == 0; prompts.len()];

    let t0 = Instant::now();
    let mut logits = model.step(ids_tensor(&rows, &device), &mut cache, true);
    let mut next = pick(&logits_rows(logits), &opts.sampling, rng.as_mut());
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut decode_tokens = 0;
    loop {
        for (r, &tok) in next.iter().enumerate() {
            if !done[r] {
                out[r].push(tok);
                done[r] = out[r].len() >= max_new || opts.stop_tokens.contains(&tok);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let step_ids: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        logits = model.step(ids_tensor(&step_ids, &device), &mut cache, true);
        next = pick(&logits_rows(logits), &opts.sampling, rng.as_mut());
        decode_tokens += done.iter().filter(|&&d| !d).count();
    }
    Ok(Generation {
        tokens: out,
        prefill_secs,
        prefill_tokens: prompts.iter().map(Vec::len).sum(),
        decode_secs: t1.elapsed().as_secs_f64(),
        decode_tokens,
    })
}

/// `[batch, 1, vocab]` logits as host rows.
fn logits_rows(logits: burn::tensor::Tensor<3>) -> Vec<Vec<f32>> {
    let [b, _, v] = logits.dims();
    let data: Vec<f32> = logits.try_into_vec_as::<f32>().expect("logits read as f32");
    (0..b).map(|r| data[r * v..(r + 1) * v].to_vec()).collect()
}

fn pick(rows: &[Vec<f32>], sampling: &Sampling, rng: Option<&mut SeededRng>) -> Vec<u32> {
    match (sampling, rng) {
        (
            Sampling::Sample {
                temperature, top_p, ..
            },
            Some(rng),
        ) => rows
            .iter()
            .map(|r| sample_top_p(r, *temperature, *top_p, rng))
            .collect(),
        _ => rows.iter().map(|r| argmax(r)).collect(),
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Nucleus sampling: the smallest set of most likely tokens whose probability reaches `top_p`,
/// renormalised.
pub fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, rng: &mut SeededRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut n = 0;
    for p in &probs {
        kept += p.1 / total;
        n += 1;
        if kept >= top_p as f64 {
            break;
        }
    }
    let probs = &probs[..n];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * mass;
    for p in probs {
        u -= p.1;
        if u <= 0.0 {
            return p.0;
        }
    }
    probs[n - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let mut rng = SeededRng::new(7);
        // p = softmax([10, 9, -10, -10]) ~ [0.73, 0.27, 0, 0]; top_p 0.5 keeps only token 0.
        for _ in 0..100 {
            assert_eq!(
                sample_top_p(&[10.0, 9.0, -10.0, -10.0], 1.0, 0.5, &mut rng),
                0
            );
        }
        // top_p 1 and a high temperature reach the tail eventually.
        let seen: std::collections::BTreeSet<u32> = (0..2000)
            .map(|_| sample_top_p(&[1.0, 1.0, 0.0, 0.0], 5.0, 1.0, &mut rng))
            .collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn sampling_is_reproducible_with_a_seed() {
        let logits = [0.5f32, 0.1, 0.3, 0.9, 0.2];
        let draw = |seed| {
            let mut rng = SeededRng::new(seed);
            (0..20)
                .map(|_| sample_top_p(&logits, 0.8, 0.9, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
