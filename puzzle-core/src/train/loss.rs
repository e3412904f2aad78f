//! Losses on logits and hidden states (differentiable; used by pretraining, BLD and GKD).

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

/// Mean next-token cross-entropy (nats).
///
/// # Shapes
/// `logits: [batch, seq, vocab]`, `targets: [batch, seq]` -> scalar `[1]`
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = logp.gather(1, targets.reshape([b * t, 1]));
    picked.mean().neg()
}

/// Per-token log-probability of the targets.
///
/// # Shapes
/// `logits: [batch, seq, vocab]`, `targets: [batch, seq]` -> `[batch, seq]`
pub fn target_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    log_softmax(logits.reshape([b * t, v]), 1)
        .gather(1, targets.reshape([b * t, 1]))
        .reshape([b, t])
}

/// Mean over tokens of `KL(p_teacher || q_student)` on next-token distributions (nats).
///
/// # Shapes
/// `teacher, student: [batch, seq, vocab]` -> scalar `[1]`
pub fn kl_divergence(teacher_logits: Tensor<3>, student_logits: Tensor<3>) -> Tensor<1> {
    let [b, t, v] = teacher_logits.dims();
    let lp = log_softmax(teacher_logits.reshape([b * t, v]), 1);
    let lq = log_softmax(student_logits.reshape([b * t, v]), 1);
    let p = lp.clone().exp();
    (p * (lp - lq)).sum_dim(1).mean()
}

/// Per-token `KL(p || q)` (nats).
///
/// # Shapes
/// `[batch, seq, vocab]` x 2 -> `[batch, seq]`
pub fn kl_per_token(teacher_logits: Tensor<3>, student_logits: Tensor<3>) -> Tensor<2> {
    let [b, t, v] = teacher_logits.dims();
    let lp = log_softmax(teacher_logits.reshape([b * t, v]), 1);
    let lq = log_softmax(student_logits.reshape([b * t, v]), 1);
    let p = softmax(lp.clone(), 1);
    (p * (lp - lq)).sum_dim(1).reshape([b, t])
}

/// Puzzle's normalised MSE: `MSE(target, pred) / (MSE(target, 0) + eps)`.
pub fn normalized_mse(target: Tensor<3>, pred: Tensor<3>, eps: f64) -> Tensor<1> {
    let num = (target.clone() - pred).square().mean();
    let den = target.square().mean().add_scalar(eps);
    num / den
}

/// Mean over tokens of `1 - cos(a, b)` along the hidden dimension.
pub fn cosine_distance(a: Tensor<3>, b: Tensor<3>) -> Tensor<1> {
    let dot = (a.clone() * b.clone()).sum_dim(2);
    let na = a.square().sum_dim(2).sqrt();
    let nb = b.square().sum_dim(2).sqrt();
    (dot / (na * nb).add_scalar(1e-12))
        .neg()
        .add_scalar(1.0)
        .mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t3(v: Vec<f32>, s: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v, s), &Device::flex())
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_vocab() {
        let logits = t3(vec![0.0; 8], [1, 2, 4]);
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 3], [1, 2]), &Device::flex());
        let l = cross_entropy(logits, targets).into_scalar::<f32>();
        assert!((l - 4f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn kl_of_a_distribution_with_itself_is_zero_and_positive_otherwise() {
        let a = t3(vec![0.3, -1.0, 2.0, 0.1, 0.0, 0.5], [1, 2, 3]);
        assert!(
            kl_divergence(a.clone(), a.clone())
                .into_scalar::<f32>()
                .abs()
                < 1e-7
        );
        let b = t3(vec![0.0; 6], [1, 2, 3]);
        assert!(kl_divergence(a, b).into_scalar::<f32>() > 0.01);
    }

    #[test]
    fn normalized_mse_and_cosine() {
        let a = t3(vec![1.0, 2.0, 3.0, 4.0], [1, 2, 2]);
        assert!(normalized_mse(a.clone(), a.clone(), 1e-6).into_scalar::<f32>() < 1e-7);
        let z = t3(vec![0.0; 4], [1, 2, 2]);
        assert!((normalized_mse(a.clone(), z, 0.0).into_scalar::<f32>() - 1.0).abs() < 1e-6);
        assert!(
            cosine_distance(a.clone(), a.clone().mul_scalar(3.0))
                .into_scalar::<f32>()
                .abs()
                < 1e-6
        );
        assert!((cosine_distance(a.clone(), a.neg()).into_scalar::<f32>() - 2.0).abs() < 1e-6);
    }
}
