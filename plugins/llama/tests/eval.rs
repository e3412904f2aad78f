//! Evaluation on constructed cases: a model against itself has zero KL and full agreement; task
//! scoring picks the most likely choice.

use std::path::Path;

use puzzle_core::burn::tensor::Device;
use puzzle_core::eval::tasks::{TaskItem, choice_logliks, score_tasks};
use puzzle_core::eval::{agreement, lm_metrics};
use puzzle_core::model::load_model;
use puzzle_core::nn::ids_tensor;
use puzzle_core::weights::HostTensor;

#[test]
fn a_model_against_itself_has_zero_kl_and_full_agreement() {
    puzzle_llama::link();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/tiny-llama");
    let m = load_model(&dir, &Device::flex()).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let ids = tok
        .encode(
            &"In the beginning God created the heaven and the earth. ".repeat(8),
            true,
        )
        .unwrap();
    let windows: Vec<Vec<u32>> = ids
        .chunks(33)
        .filter(|c| c.len() == 33)
        .map(|c| c.to_vec())
        .collect();
    assert!(windows.len() >= 2);
    let g = agreement(&m.decoder, &m.decoder, &windows, 2);
    assert!(g.kl.abs() < 1e-6, "{g:?}");
    assert_eq!(g.top1, 1.0);
    let lm = lm_metrics(&m.decoder, &windows, 2);
    assert!(lm.loss > 0.0 && (lm.perplexity - lm.loss.exp()).abs() < 1e-9);
    assert_eq!(lm.tokens, windows.len() * 32);
}

#[test]
fn task_scores_follow_the_log_likelihoods_and_batching_does_not_matter() {
    puzzle_llama::link();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/tiny-llama");
    let m = load_model(&dir, &Device::flex()).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let contexts = [
        "And God said",
        "In the beginning",
        "The LORD is my",
        "To be, or not",
        "And it came to pass",
        "Now the serpent",
    ];
    let items: Vec<TaskItem> = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| TaskItem {
            context: c.to_string(),
            choices: vec![
                " let there be light".into(),
                " no".into(),
                " and it was so, and more words".into(),
            ],
            label: i % 3,
        })
        .collect();
    let a = choice_logliks(&m.decoder, tok, &items, 1).unwrap();
    let b = choice_logliks(&m.decoder, tok, &items, 7).unwrap();
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // An independent reference: one unpadded forward per (context + choice), the choice tokens'
    // log-probabilities summed in f64 from the logits.
    let reference: Vec<Vec<f64>> = items
        .iter()
        .map(|it| {
            let ctx = tok.encode(&it.context, true).unwrap();
            it.choices
                .iter()
                .map(|c| {
                    let mut ids = ctx.clone();
                    ids.extend(tok.encode(c, false).unwrap());
                    let logits = HostTensor::from_tensor(
                        &m.decoder
                            .forward(ids_tensor(&[ids.clone()], &Device::flex())),
                    );
                    let v = logits.shape[2];
                    (ctx.len()..ids.len())
                        .map(|p| {
                            let row: Vec<f64> = logits.data[(p - 1) * v..p * v]
                                .iter()
                                .map(|&x| x as f64)
                                .collect();
                            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let z = row.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
                            row[ids[p] as usize] - z
                        })
                        .sum()
                })
                .collect()
        })
        .collect();
    for (x, y) in a.iter().flatten().zip(reference.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{x} vs the reference {y}");
    }
    // Accuracy from the reference by hand: the argmax of the sum (acc) and of the sum per
    // character of the choice (acc_norm, as lm-evaluation-harness's `len(choice)`), against the
    // fixed labels.
    let argmax = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
    let (mut acc, mut acc_norm) = (0.0, 0.0);
    for (it, l) in items.iter().zip(&reference) {
        acc += (argmax(l) == it.label) as u8 as f64 / items.len() as f64;
        let per_char: Vec<f64> = l
            .iter()
            .zip(&it.choices)
            .map(|(x, c)| x / c.chars().count() as f64)
            .collect();
        acc_norm += (argmax(&per_char) == it.label) as u8 as f64 / items.len() as f64;
    }
    let s = score_tasks(&m.decoder, tok, &items, 4).unwrap();
    assert!(
        (s.acc - acc).abs() < 1e-12 && (s.acc_norm - acc_norm).abs() < 1e-12,
        "{s:?} vs {acc} {acc_norm}"
    );
    assert!((s.chance - 1.0 / 3.0).abs() < 1e-12);
    // The labels are neither all right nor all wrong, or the comparison would say little.
    assert!(acc > 0.0 && acc < 1.0, "acc {acc}");
}
