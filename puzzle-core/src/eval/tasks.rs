//! Multiple-choice tasks: JSONL items `{"context", "choices", "label"}` (HellaSwag/ARC-style
//! files work as they are), a cloze suite built from held-out text, and scoring by log-likelihood
//! of each choice given the context, as lm-evaluation-harness does (`acc` on the raw sum,
//! `acc_norm` on the sum divided by the choice's length in bytes).

use std::io::BufRead;
use std::path::Path;

use crate::rng::SeededRng;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, Document, Split};
use crate::error::{Error, Result};
use crate::nn::Decoder;
use crate::tokenizer::Tokenizer;
use crate::train::loss::target_log_probs;

/// One multiple-choice item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskItem {
    pub context: String,
    pub choices: Vec<String>,
    /// Index of the correct choice.
    pub label: usize,
}

/// Reads a JSONL task file; every line is checked (label in range, at least two choices).
pub fn read_tasks(path: &Path) -> Result<Vec<TaskItem>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let item: TaskItem = serde_json::from_str(&line).map_err(|e| {
            Error::config(
                path,
                format!("line {}: expected {{\"context\": str, \"choices\": [str], \"label\": int}}: {e}", i + 1),
            )
        })?;
        if item.choices.len() < 2 {
            return Err(Error::config(
                path,
                format!("line {}: needs at least two choices", i + 1),
            ));
        }
        if item.label >= item.choices.len() {
            return Err(Error::config(
                path,
                format!(
                    "line {}: label {} is out of range for {} choices",
                    i + 1,
                    item.label,
                    item.choices.len()
                ),
            ));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(Error::config(path, "contains no task items"));
    }
    Ok(items)
}

/// Writes items as JSONL atomically.
pub fn write_tasks(path: &Path, items: &[TaskItem]) -> Result<()> {
    let mut out = String::new();
    for it in items {
        out.push_str(&serde_json::to_string(it).expect("items serialise"));
        out.push('\n');
    }
    crate::fsutil::write_atomic(path, out.as_bytes())
}

/// Builds a cloze suite from the test split, LAMBADA-style: the opening of a held-out passage
/// (up to a word boundary at least 60 characters in), its true continuation (the next three
/// words), and `choices - 1` three-word continuations of other held-out passages of the same
/// corpus file (so style alone does not give the answer away) whose length is within 25% of the
/// true one. Deterministic for a seed.
pub fn build_cloze(
    docs: &[Document],
    cfg: &DataConfig,
    items: usize,
    choices: usize,
    seed: u64,
) -> Result<Vec<TaskItem>> {
    const MIN_CONTEXT: usize = 60;
    const WORDS: usize = 3;
    // (context, next line, source file)
    let mut candidates: Vec<(String, String, String)> = Vec::new();
    for d in docs.iter().filter(|d| d.split(cfg) == Split::Test) {
        // Context: the passage up to a word boundary at least MIN_CONTEXT characters in.
        // Continuation: the next WORDS words of the same line, with their leading space.
        let text = d.text.as_str();
        let mut cut = None;
        for (i, ch) in text.char_indices() {
            if i >= MIN_CONTEXT && ch == ' ' {
                let rest = &text[i..];
                let line = rest.split('\n').next().unwrap_or("");
                if line.split_whitespace().count() >= WORDS {
                    cut = Some(i);
                    break;
                }
            }
        }
        let Some(i) = cut else { continue };
        let words: Vec<&str> = text[i..]
            .split('\n')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .take(WORDS)
            .collect();
        let cont = format!(" {}", words.join(" "));
        if cont.len() >= 8 {
            let file = d.origin.rsplit_once(':').map_or(d.origin.as_str(), |o| o.0);
            candidates.push((text[..i].to_string(), cont, file.to_string()));
        }
    }
    if candidates.len() < choices * 2 {
        return Err(Error::invalid(format!(
            "the test split has only {} passages usable for cloze items; use a larger corpus or test_fraction",
            candidates.len()
        )));
    }
    let mut rng = SeededRng::new(seed);
    rng.shuffle(&mut candidates);
    let mut by_len: Vec<usize> = (0..candidates.len()).collect();
    by_len.sort_by_key(|&i| candidates[i].1.len());
    let mut out = Vec::new();
    for (i, (context, truth, file)) in candidates.iter().enumerate() {
        if out.len() == items {
            break;
        }
        let lo = truth.len() * 3 / 4;
        let hi = truth.len() * 5 / 4;
        let pool: Vec<usize> = by_len
            .iter()
            .copied()
            .filter(|&j| {
                j != i
                    && candidates[j].2 == *file
                    && (lo..=hi).contains(&candidates[j].1.len())
                    && candidates[j].1 != *truth
            })
            .collect();
        if pool.len() < choices - 1 {
            continue;
        }
        let mut picked: Vec<String> = Vec::new();
        while picked.len() < choices - 1 {
            let j = pool[rng.below(pool.len())];
            let c = candidates[j].1.clone();
            if !picked.contains(&c) {
                picked.push(c);
            }
        }
        let label = rng.below(choices);
        picked.insert(label, truth.clone());
        out.push(TaskItem {
            context: context.clone(),
            choices: picked,
            label,
        });
    }
    Ok(out)
}

/// Accuracy on a task set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub items: usize,
    /// Argmax of the summed log-likelihood.
    pub acc: f64,
    /// Argmax of the log-likelihood per byte of the choice (lm-evaluation-harness `acc_norm`).
    pub acc_norm: f64,
    /// Chance level (mean of 1/choices).
    pub chance: f64,
}

/// Per-item log-likelihoods of every choice.
pub fn choice_logliks(
    model: &Decoder,
    tok: &Tokenizer,
    items: &[TaskItem],
    batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let max = model.spec.max_position_embeddings;
    let device = model.device();
    // Every (item, choice) pair as one sequence: context (left-truncated to fit) + choice.
    let mut seqs: Vec<(usize, Vec<u32>, usize)> = Vec::new(); // (item, tokens, choice start)
    for (i, it) in items.iter().enumerate() {
        let ctx = tok.encode(&it.context, true)?;
        for c in &it.choices {
            let cont = tok.encode(c, false)?;
            if cont.is_empty() {
                return Err(Error::invalid(format!(
                    "item {i}: a choice encodes to no tokens"
                )));
            }
            if cont.len() >= max {
                return Err(Error::TooLong {
                    what: format!("item {i}'s choice"),
                    len: cont.len(),
                    max: max - 1,
                });
            }
            let keep = (max - cont.len()).min(ctx.len());
            let mut toks = ctx[ctx.len() - keep..].to_vec();
            let start = toks.len();
            toks.extend(cont);
            seqs.push((i, toks, start));
        }
    }
    let mut out: Vec<Vec<f64>> = items
        .iter()
        .map(|it| Vec::with_capacity(it.choices.len()))
        .collect();
    // Similar lengths together keeps padding low.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&k| seqs[k].1.len());
    let mut scores = vec![0.0f64; seqs.len()];
    for chunk in order.chunks(batch.max(1)) {
        let t = chunk.iter().map(|&k| seqs[k].1.len()).max().unwrap_or(1);
        // Right padding: causal attention never lets a real token see a later pad.
        let mut ids = Vec::with_capacity(chunk.len() * t);
        for &k in chunk {
            let s = &seqs[k].1;
            ids.extend(s.iter().map(|&x| x as i64));
            ids.extend(std::iter::repeat_n(0i64, t - s.len()));
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [chunk.len(), t]), &device);
        let logits = model.forward(ids.clone().narrow(1, 0, t - 1));
        let lp = target_log_probs(logits, ids.narrow(1, 1, t - 1));
        let lp: Vec<f32> = lp.try_into_vec_as::<f32>().expect("f32");
        for (row, &k) in chunk.iter().enumerate() {
            let (_, s, start) = &seqs[k];
            // Position p predicts token p + 1.
            scores[k] = (start - 1..s.len() - 1)
                .map(|p| lp[row * (t - 1) + p] as f64)
                .sum();
        }
    }
    for (k, (i, _, _)) in seqs.iter().enumerate() {
        out[*i].push(scores[k]);
    }
    Ok(out)
}

/// Scores a task set.
pub fn score_tasks(
    model: &Decoder,
    tok: &Tokenizer,
    items: &[TaskItem],
    batch: usize,
) -> Result<TaskScore> {
    let ll = choice_logliks(model, tok, items, batch)?;
    Ok(score_from_logliks(items, &ll))
}

/// Accuracy from precomputed log-likelihoods.
pub fn score_from_logliks(items: &[TaskItem], ll: &[Vec<f64>]) -> TaskScore {
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
            .unwrap_or(0)
    };
    let (mut acc, mut acc_norm, mut chance) = (0usize, 0usize, 0.0);
    for (it, l) in items.iter().zip(ll) {
        if argmax(l) == it.label {
            acc += 1;
        }
        let norm: Vec<f64> = l
            .iter()
            .zip(&it.choices)
            .map(|(x, c)| x / c.len().max(1) as f64)
            .collect();
        if argmax(&norm) == it.label {
            acc_norm += 1;
        }
        chance += 1.0 / it.choices.len() as f64;
    }
    let n = items.len().max(1) as f64;
    TaskScore {
        items: items.len(),
        acc: acc as f64 / n,
        acc_norm: acc_norm as f64 / n,
        chance: chance / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_task_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 1}\n{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 2}\n",
        )
        .unwrap();
        let e = read_tasks(&p).unwrap_err().to_string();
        assert!(
            e.contains("t.jsonl") && e.contains("line 2") && e.contains("label 2 is out of range"),
            "{e}"
        );
        std::fs::write(
            &p,
            "{\"context\": \"a\", \"choices\": [\"b\"], \"label\": 0}\n",
        )
        .unwrap();
        assert!(
            read_tasks(&p)
                .unwrap_err()
                .to_string()
                .contains("two choices")
        );
        std::fs::write(&p, "{\"context\": \"a\"}\n").unwrap();
        assert!(read_tasks(&p).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn accuracy_of_an_oracle_is_one_and_of_an_anti_oracle_zero() {
        let items: Vec<TaskItem> = (0..10)
            .map(|i| TaskItem {
                context: "c".into(),
                choices: vec!["aa".into(), "bb".into(), "cc".into(), "dd".into()],
                label: i % 4,
            })
            .collect();
        // The label always has the highest log-likelihood.
        let oracle: Vec<Vec<f64>> = items
            .iter()
            .map(|it| {
                (0..4)
                    .map(|c| if c == it.label { -1.0 } else { -5.0 })
                    .collect()
            })
            .collect();
        let s = score_from_logliks(&items, &oracle);
        assert_eq!((s.acc, s.acc_norm), (1.0, 1.0));
        assert!((s.chance - 0.25).abs() < 1e-12);
        let anti: Vec<Vec<f64>> = oracle
            .iter()
            .map(|v| v.iter().map(|x| -x - 10.0).collect())
            .collect();
        assert_eq!(score_from_logliks(&items, &anti).acc, 0.0);
    }
}
