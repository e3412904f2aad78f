//! Multiple-choice tasks: JSONL items `{"context", "choices", "label"}` (HellaSwag/ARC-style
//! files work as they are), a cloze suite built from held-out text, and scoring by log-likelihood
//! of each choice given the context, as lm-evaluation-harness does (`acc` on the raw sum,
//! `acc_norm` on the sum divided by the choice's length in characters, as the harness's
//! `len(choice)` of a Python string counts; bytes would agree on ASCII text and not beyond).

use std::io::BufRead;
use std::path::Path;

use crate::rng::SeededRng;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, Document, Split};
use crate::error::{Error, Result};
use crate::nn::{Decoder, KvCache};
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
    /// Argmax of the log-likelihood per character of the choice (lm-evaluation-harness
    /// `acc_norm`: Unicode scalar values, not bytes).
    pub acc_norm: f64,
    /// Chance level (mean of 1/choices).
    pub chance: f64,
}

/// An item's context (left-truncated so its longest choice fits) and choices, as tokens.
struct Encoded {
    ctx: Vec<u32>,
    choices: Vec<Vec<u32>>,
}

fn encode_item(tok: &Tokenizer, it: &TaskItem, i: usize, max: usize) -> Result<Encoded> {
    let choices = it
        .choices
        .iter()
        .map(|c| tok.encode(c, false))
        .collect::<Result<Vec<_>>>()?;
    if choices.iter().any(Vec::is_empty) {
        return Err(Error::invalid(format!(
            "item {i}: a choice encodes to no tokens"
        )));
    }
    let longest = choices.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= max {
        return Err(Error::TooLong {
            what: format!("item {i}'s choice"),
            len: longest,
            max: max - 1,
        });
    }
    let mut ctx = tok.encode(&it.context, true)?;
    if ctx.is_empty() {
        // Nothing would predict the first token of a choice.
        return Err(Error::invalid(format!(
            "item {i}: the context encodes to no tokens (and the tokenizer adds no BOS)"
        )));
    }
    let keep = (max - longest).min(ctx.len());
    ctx.drain(..ctx.len() - keep);
    Ok(Encoded { ctx, choices })
}

/// Per-item log-likelihoods of every choice.
///
/// The context is computed once per item, as lm-evaluation-harness's caching does: a batch of
/// contexts (left-padded) is run once, its KV cache is copied to one row per choice, and the
/// choices (right-padded: causal attention never lets a real token see a later pad) continue
/// from it. `batch` bounds the choices per forward (an item's choices always go together, so
/// an item with more choices than `batch` is a forward of its own). A context is truncated on the left so that
/// it and the item's longest choice fit the model's positions.
pub fn choice_logliks(
    model: &Decoder,
    tok: &Tokenizer,
    items: &[TaskItem],
    batch: usize,
) -> Result<Vec<Vec<f64>>> {
    let max = model.spec.max_position_embeddings;
    let device = model.device();
    let enc = items
        .iter()
        .enumerate()
        .map(|(i, it)| encode_item(tok, it, i, max))
        .collect::<Result<Vec<_>>>()?;
    let mut out: Vec<Vec<f64>> = enc.iter().map(|e| vec![0.0; e.choices.len()]).collect();
    // Similar context lengths together keep padding low.
    let mut order: Vec<usize> = (0..enc.len()).collect();
    order.sort_by_key(|&i| enc[i].ctx.len());
    let mut rest = order.as_slice();
    while !rest.is_empty() {
        // As many items as fit `batch` choice rows (at least one).
        let mut n = 0;
        let mut rows = 0;
        while n < rest.len() && (n == 0 || rows + enc[rest[n]].choices.len() <= batch.max(1)) {
            rows += enc[rest[n]].choices.len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        score_chunk(model, &enc, chunk, &device, &mut out);
    }
    Ok(out)
}

/// The choices of the items `chunk` (indices into `enc`), into `out`.
fn score_chunk(
    model: &Decoder,
    enc: &[Encoded],
    chunk: &[usize],
    device: &burn::tensor::Device,
    out: &mut [Vec<f64>],
) {
    let l = chunk.iter().map(|&i| enc[i].ctx.len()).max().unwrap_or(1);
    let pads: Vec<usize> = chunk.iter().map(|&i| l - enc[i].ctx.len()).collect();
    let mut ids = Vec::with_capacity(chunk.len() * l);
    for (&i, &p) in chunk.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(0i64, p));
        ids.extend(enc[i].ctx.iter().map(|&x| x as i64));
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [chunk.len(), l]), device);
    let mut cache = KvCache::new(model.layers.len(), pads.clone());
    // [items, 1, vocab]: the last context position predicts each choice's first token.
    let last = model.step(ids, &mut cache, true);
    // One row per (item, choice): the item's cache row, its padding, its choice.
    let row_item: Vec<usize> = (0..chunk.len())
        .flat_map(|r| std::iter::repeat_n(r, enc[chunk[r]].choices.len()))
        .collect();
    let conts: Vec<&Vec<u32>> = chunk.iter().flat_map(|&i| &enc[i].choices).collect();
    let select = Tensor::<1, Int>::from_data(
        TensorData::new(
            row_item.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [row_item.len()],
        ),
        device,
    );
    let firsts = Tensor::<2, Int>::from_data(
        TensorData::new(
            conts.iter().map(|c| c[0] as i64).collect::<Vec<_>>(),
            [conts.len(), 1],
        ),
        device,
    );
    let first_lp: Vec<f32> = target_log_probs(last.select(0, select.clone()), firsts)
        .try_into_vec_as::<f32>()
        .expect("f32");
    let mut scores: Vec<f64> = first_lp.iter().map(|&x| x as f64).collect();
    // The rest of each choice: tokens 0..len-1 in, tokens 1..len scored.
    let c = conts.iter().map(|c| c.len()).max().unwrap_or(1);
    if c > 1 {
        for kv in &mut cache.layers {
            kv.k = kv.k.take().map(|k| k.select(0, select.clone()));
            kv.v = kv.v.take().map(|v| v.select(0, select.clone()));
        }
        cache.pads = row_item.iter().map(|&r| pads[r]).collect();
        let (mut inp, mut tgt) = (Vec::new(), Vec::new());
        for cont in &conts {
            for j in 0..c - 1 {
                inp.push(cont.get(j).map_or(0, |&x| x as i64));
                tgt.push(cont.get(j + 1).map_or(0, |&x| x as i64));
            }
        }
        let rows = conts.len();
        let inp = Tensor::<2, Int>::from_data(TensorData::new(inp, [rows, c - 1]), device);
        let tgt = Tensor::<2, Int>::from_data(TensorData::new(tgt, [rows, c - 1]), device);
        let logits = model.step(inp, &mut cache, false);
        let lp: Vec<f32> = target_log_probs(logits, tgt)
            .try_into_vec_as::<f32>()
            .expect("f32");
        for (row, cont) in conts.iter().enumerate() {
            scores[row] += (0..cont.len() - 1)
                .map(|j| lp[row * (c - 1) + j] as f64)
                .sum::<f64>();
        }
    }
    let mut scores = scores.into_iter();
    for &i in chunk {
        for slot in out[i].iter_mut() {
            *slot = scores.next().expect("one score per choice row");
        }
    }
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
            .map(|(x, c)| x / c.chars().count().max(1) as f64)
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

    /// `acc_norm` divides by characters as lm-evaluation-harness does: with a two-byte `é`,
    /// per byte would pick the other choice.
    #[test]
    fn acc_norm_divides_by_characters_not_bytes() {
        let items = vec![TaskItem {
            context: "x".into(),
            // 4 characters in 8 bytes, and 5 characters in 5 bytes.
            choices: vec!["éééé".into(), "abcde".into()],
            label: 0,
        }];
        // Per character -4/4 = -1.0 against -2.6/5 = -0.52: the second wins. Per byte it would
        // be -4/8 = -0.5 against -0.52, and the first would.
        let s = score_from_logliks(&items, &[vec![-4.0, -2.6]]);
        assert_eq!(s.acc_norm, 0.0);
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
