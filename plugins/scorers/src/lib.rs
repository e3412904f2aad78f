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
