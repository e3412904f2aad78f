//! Built-in scorers (Puzzle stage 5). Each compares the parent with one block replaced against
//! the parent on the same validation tokens:
//!
//! - `kl`: mean `KL(p_parent || p_child)` of next-token distributions (the paper's best).
//! - `lm_loss`: the child's next-token cross-entropy.
//! - `top1`: share of positions where both pick the same most likely token.
//! - `top5`: share of positions where the parent's most likely token is in the child's top 5.
//! - `cosine`: mean cosine similarity of the final hidden states.
//! - `accuracy`: multiple-choice task accuracy (acc_norm), needs `[score] tasks`.

use puzzle_core::error::Result;
use puzzle_core::eval::tasks::score_from_logliks;
use puzzle_core::score::{Scorer, TaskBatch, TokenBatch};
use puzzle_core::train::loss::{cross_entropy, kl_per_token};

macro_rules! register {
    ($t:expr, $d:expr) => {
        inventory::submit! {
            puzzle_core::score::ScorerRegistration { scorer: &$t, provider: "puzzle-scorers", description: $d }
        }
    };
}

/// KL divergence of next-token distributions.
pub struct KlScorer;
impl Scorer for KlScorer {
    fn name(&self) -> &'static str {
        "kl"
    }
    fn token_batch(&self, b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        let per = kl_per_token(b.parent_logits.clone(), b.child_logits.clone());
        let n = per.dims().iter().product::<usize>() as f64;
        Ok(Some((per.sum().into_scalar::<f32>() as f64, n)))
    }
}
register!(
    KlScorer,
    "mean KL(parent || child) of next-token distributions (nats)"
);

/// Child LM loss.
pub struct LmLossScorer;
impl Scorer for LmLossScorer {
    fn name(&self) -> &'static str {
        "lm_loss"
    }
    fn token_batch(&self, b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        let n = b.targets.dims().iter().product::<usize>() as f64;
        let l =
            cross_entropy(b.child_logits.clone(), b.targets.clone()).into_scalar::<f32>() as f64;
        Ok(Some((l * n, n)))
    }
}
register!(LmLossScorer, "the child's next-token cross-entropy (nats)");

/// Top-1 agreement.
pub struct Top1Scorer;
impl Scorer for Top1Scorer {
    fn name(&self) -> &'static str {
        "top1"
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn token_batch(&self, b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        let same = b
            .parent_logits
            .clone()
            .argmax(2)
            .equal(b.child_logits.clone().argmax(2))
            .int()
            .sum()
            .into_scalar::<i64>();
        let n = b.targets.dims().iter().product::<usize>() as f64;
        Ok(Some((same as f64, n)))
    }
}
register!(
    Top1Scorer,
    "share of positions where parent and child pick the same top token"
);

/// Top-5 agreement.
pub struct Top5Scorer;
impl Scorer for Top5Scorer {
    fn name(&self) -> &'static str {
        "top5"
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn token_batch(&self, b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        let [bs, t, v] = b.child_logits.dims();
        let k = 5.min(v);
        let parent_top = b.parent_logits.clone().argmax(2); // [b, t, 1]
        let child_topk = b.child_logits.clone().topk_with_indices(k, 2).1; // [b, t, k]
        let hit = child_topk
            .equal(parent_top.expand([bs, t, k]))
            .int()
            .sum()
            .into_scalar::<i64>();
        Ok(Some((hit as f64, (bs * t) as f64)))
    }
}
register!(
    Top5Scorer,
    "share of positions where the parent's top token is in the child's top 5"
);

/// Cosine similarity of final hidden states.
pub struct CosineScorer;
impl Scorer for CosineScorer {
    fn name(&self) -> &'static str {
        "cosine"
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn token_batch(&self, b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        let (p, c) = (b.parent_hidden.clone(), b.child_hidden.clone());
        let dot = (p.clone() * c.clone()).sum_dim(2);
        let norms = p.square().sum_dim(2).sqrt() * c.square().sum_dim(2).sqrt();
        let cos = dot / norms.add_scalar(1e-12);
        let n = cos.dims().iter().product::<usize>() as f64;
        Ok(Some((cos.sum().into_scalar::<f32>() as f64, n)))
    }
}
register!(
    CosineScorer,
    "mean cosine similarity of parent and child final hidden states"
);

/// Multiple-choice accuracy.
pub struct AccuracyScorer;
impl Scorer for AccuracyScorer {
    fn name(&self) -> &'static str {
        "accuracy"
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn needs_tasks(&self) -> bool {
        true
    }
    fn tasks(&self, t: &TaskBatch) -> Result<Option<f64>> {
        Ok(Some(score_from_logliks(t.items, t.child).acc_norm))
    }
}
register!(
    AccuracyScorer,
    "multiple-choice task accuracy (acc_norm) of the child"
);

/// Forces the linker to keep this crate's registrations.
pub fn link() {}

#[cfg(test)]
mod tests {
    //! Every scorer against a naive f64 formulation on the same numbers (and hand-made cases
    //! where a mistake would hide in random data: a parent top token just outside the child's
    //! top 5, an item that acc and acc_norm judge differently).
    use super::*;
    use puzzle_core::burn::tensor::{Device, Int, Tensor, TensorData};
    use puzzle_core::eval::tasks::TaskItem;
    use puzzle_core::rng::SeededRng;

    const B: usize = 2;
    const T: usize = 3;
    const V: usize = 9;
    const H: usize = 5;

    struct Case {
        parent: Vec<f32>,
        child: Vec<f32>,
        parent_hidden: Vec<f32>,
        child_hidden: Vec<f32>,
        targets: Vec<i64>,
    }

    fn draws(n: usize, r: &mut SeededRng) -> Vec<f32> {
        (0..n).map(|_| r.uniform_in(-3.0, 3.0) as f32).collect()
    }

    fn case(seed: u64) -> Case {
        let mut r = SeededRng::new(seed);
        let parent = draws(B * T * V, &mut r);
        // The child near the parent, so top-1 and top-5 agree at some positions and not others.
        let child = parent
            .iter()
            .zip(draws(B * T * V, &mut r))
            .map(|(p, n)| p + 0.8 * n)
            .collect();
        let parent_hidden = draws(B * T * H, &mut r);
        let child_hidden = draws(B * T * H, &mut r);
        let targets = (0..B * T).map(|_| r.below(V) as i64).collect();
        Case {
            parent,
            child,
            parent_hidden,
            child_hidden,
            targets,
        }
    }

    /// `sum / count` of a token scorer on the case.
    fn score(s: &dyn Scorer, c: &Case) -> f64 {
        let d = Device::flex();
        let t3 = |v: &[f32], last: usize| {
            Tensor::<3>::from_data(TensorData::new(v.to_vec(), [B, T, last]), &d)
        };
        let (pl, cl) = (t3(&c.parent, V), t3(&c.child, V));
        let (ph, ch) = (t3(&c.parent_hidden, H), t3(&c.child_hidden, H));
        let targets = Tensor::<2, Int>::from_data(TensorData::new(c.targets.clone(), [B, T]), &d);
        let batch = TokenBatch {
            parent_logits: &pl,
            child_logits: &cl,
            parent_hidden: &ph,
            child_hidden: &ch,
            targets: &targets,
        };
        let (sum, n) = s.token_batch(&batch).unwrap().unwrap();
        sum / n
    }

    fn rows(v: &[f32], width: usize) -> Vec<Vec<f64>> {
        v.chunks(width)
            .map(|r| r.iter().map(|&x| x as f64).collect())
            .collect()
    }

    fn log_softmax(r: &[f64]) -> Vec<f64> {
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z = r.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
        r.iter().map(|x| x - z).collect()
    }

    fn argmax(r: &[f64]) -> usize {
        (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b })
    }

    /// The naive reference of every token scorer: kl, lm_loss, top1, top5, cosine.
    fn reference(c: &Case) -> [f64; 5] {
        let (p, q) = (rows(&c.parent, V), rows(&c.child, V));
        let (ph, ch) = (rows(&c.parent_hidden, H), rows(&c.child_hidden, H));
        let n = (B * T) as f64;
        let mut out = [0.0; 5];
        for i in 0..B * T {
            let (lp, lq) = (log_softmax(&p[i]), log_softmax(&q[i]));
            out[0] += (0..V).map(|j| lp[j].exp() * (lp[j] - lq[j])).sum::<f64>() / n;
            out[1] += -lq[c.targets[i] as usize] / n;
            let top = argmax(&p[i]);
            out[2] += (argmax(&q[i]) == top) as u8 as f64 / n;
            let above = (0..V).filter(|&j| q[i][j] > q[i][top]).count();
            out[3] += (above < 5) as u8 as f64 / n;
            let dot: f64 = (0..H).map(|j| ph[i][j] * ch[i][j]).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            out[4] += dot / (norm(&ph[i]) * norm(&ch[i])) / n;
        }
        out
    }

    #[test]
    fn token_scorers_match_naive_f64_formulas() {
        let scorers: [&dyn Scorer; 5] = [
            &KlScorer,
            &LmLossScorer,
            &Top1Scorer,
            &Top5Scorer,
            &CosineScorer,
        ];
        let mut seen_partial = [false; 2];
        for seed in 0..8 {
            let c = case(seed);
            let want = reference(&c);
            for (s, w) in scorers.iter().zip(want) {
                let got = score(*s, &c);
                assert!(
                    (got - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "seed {seed} {}: {got} vs {w}",
                    s.name()
                );
            }
            // The cases must exercise agreement and disagreement, or top-k is untested.
            seen_partial[0] |= want[2] > 0.0 && want[2] < 1.0;
            seen_partial[1] |= want[3] > want[2] && want[3] < 1.0;
        }
        assert_eq!(seen_partial, [true, true]);
    }

    #[test]
    fn top5_misses_a_parent_token_ranked_sixth_and_kl_of_equal_logits_is_zero() {
        let mut c = case(1);
        for pos in 0..B * T {
            let (p, q) = (
                &mut c.parent[pos * V..(pos + 1) * V],
                &mut c.child[pos * V..(pos + 1) * V],
            );
            for j in 0..V {
                // Parent: token 0 on top. Child: token 0 ranked 6th at even positions
                // (five tokens above it), 5th at odd ones.
                p[j] = if j == 0 { 5.0 } else { -(j as f32) };
                q[j] = -(j as f32);
            }
            q[0] = if pos % 2 == 0 { -5.5 } else { -4.5 };
        }
        assert!((score(&Top5Scorer, &c) - 0.5).abs() < 1e-12);
        assert_eq!(score(&Top1Scorer, &c), 0.0);
        c.child = c.parent.clone();
        c.child_hidden = c.parent_hidden.iter().map(|x| 3.0 * x).collect();
        assert!(score(&KlScorer, &c).abs() < 1e-6);
        assert_eq!(score(&Top1Scorer, &c), 1.0);
        assert!((score(&CosineScorer, &c) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn accuracy_is_the_childs_length_normalised_accuracy() {
        let item = |choices: &[&str], label| TaskItem {
            context: "ctx".into(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
            label,
        };
        let items = [
            // Raw log-likelihood prefers the short wrong choice; per character the long right
            // one wins (-4/4 > -2/1): right for acc_norm only.
            item(&["a", "bbbb"], 1),
            // Right either way.
            item(&["cc", "dd", "ee"], 2),
            // Wrong either way.
            item(&["ff", "gg"], 0),
        ];
        let child = vec![vec![-2.0, -4.0], vec![-9.0, -8.0, -1.0], vec![-6.0, -2.0]];
        // The parent's log-likelihoods must not matter: they pick every label.
        let parent = vec![vec![-9.0, -1.0], vec![-9.0, -9.0, -1.0], vec![-1.0, -9.0]];
        let t = TaskBatch {
            items: &items,
            child: &child,
            parent: &parent,
        };
        let got = AccuracyScorer.tasks(&t).unwrap().unwrap();
        assert!((got - 2.0 / 3.0).abs() < 1e-12, "{got}");
    }
}
