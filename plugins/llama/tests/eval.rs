//! Evaluation on constructed cases: a model against itself has zero KL and full agreement; task
//! scoring picks the most likely choice.

use std::path::Path;

use puzzle_core::burn::tensor::Device;
use puzzle_core::eval::tasks::{TaskItem, choice_logliks, score_tasks};
use puzzle_core::eval::{agreement, lm_metrics};
use puzzle_core::model::load_model;

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
    let mut items: Vec<TaskItem> = (0..6)
        .map(|i| TaskItem {
            context: format!("And God said {i}"),
            choices: vec![
                " let there be light".into(),
                " no".into(),
                " and it was so, and more words".into(),
            ],
            label: 0,
        })
        .collect();
    let a = choice_logliks(&m.decoder, tok, &items, 1).unwrap();
    let b = choice_logliks(&m.decoder, tok, &items, 7).unwrap();
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // Label every item with its own argmax: an "always right" model scores 100%.
    for (it, l) in items.iter_mut().zip(&a) {
        it.label = l
            .iter()
            .enumerate()
            .max_by(|p, q| p.1.total_cmp(q.1))
            .unwrap()
            .0;
    }
    let s = score_tasks(&m.decoder, tok, &items, 4).unwrap();
    assert_eq!(s.acc, 1.0);
}
