//! Core tensor primitives every family's decoder is built from: RMSNorm, a linear map stored in
//! the checkpoint's `[out, in]` layout, HF-style (rotate_half) rotary embeddings, SwiGLU, and
//! scaled-dot-product attention with grouped KV heads.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::weights::HostTensor;

/// Root-mean-square layer norm: `x / sqrt(mean(x^2) + eps) * weight` (Llama's `LlamaRMSNorm`).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden]`
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// A norm with the given weight.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        RmsNorm {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// # Shapes
    /// `x: [batch, seq, hidden] -> [batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let var = x.clone().square().mean_dim(2); // [b, t, 1]
        let inv = (var + self.eps).sqrt().recip();
        x * inv * self.weight.val().unsqueeze::<3>()
    }
}

/// A linear map `y = x W^T + b`. The checkpoint stores `W` as `[out, in]`; we keep its transpose
/// `[in, out]` so the GEMM reads a contiguous right-hand side (measured 3x faster than a
/// transposed view for the small batches of decoding, equal for a single row).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]` (the checkpoint's `[out, in]`, transposed).
    pub weight: Param<Tensor<2>>,
    /// `[out]`
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// A map from an `[in, out]` weight and optional `[out]` bias.
    pub fn new(weight_in_out: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Linear {
            weight: Param::from_tensor(weight_in_out),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// A map from a checkpoint-layout `[out, in]` host weight.
    pub fn from_checkpoint(
        weight_out_in: &HostTensor,
        bias: Option<&HostTensor>,
        device: &Device,
    ) -> Self {
        Linear::new(
            weight_out_in.transposed().to_tensor(device),
            bias.map(|b| b.to_tensor(device)),
        )
    }

    /// The weight in checkpoint layout `[out, in]`, on the host.
    pub fn checkpoint_weight(&self) -> HostTensor {
        HostTensor::from_tensor(&self.weight.val()).transposed()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// # Shapes
    /// `x: [batch, seq, in] -> [batch, seq, out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, i] = x.dims();
        // One 2-D GEMM over all tokens is faster than a batched matmul with a broadcast weight.
        let y = x.reshape([b * t, i]).matmul(self.weight.val());
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        let o = y.dims()[1];
        y.reshape([b, t, o])
    }
}

/// SwiGLU feed-forward: `down(silu(gate(h)) * up(h))`.
///
/// # Shapes
/// `h: [batch, seq, hidden] -> [batch, seq, hidden]`
pub fn swiglu(gate: &Linear, up: &Linear, down: &Linear, h: Tensor<3>) -> Tensor<3> {
    down.forward(silu(gate.forward(h.clone())) * up.forward(h))
}

/// Cos/sin tables for the positions of one forward call.
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// `[batch or 1, 1, seq, head_dim]`
    pub cos: Tensor<4>,
    /// `[batch or 1, 1, seq, head_dim]`
    pub sin: Tensor<4>,
}

impl RopeTables {
    /// Tables for `positions[row][token]`, from inverse frequencies computed in f64. All rows
    /// must have the same length. Angles are formed in f64 and rounded once.
    pub fn new(inv_freq: &[f64], positions: &[Vec<usize>], device: &Device) -> Self {
        let half = inv_freq.len();
        let hd = 2 * half;
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let mut cos = Vec::with_capacity(b * t * hd);
        let mut sin = Vec::with_capacity(b * t * hd);
        for row in positions {
            assert_eq!(row.len(), t, "rope rows must have equal lengths");
            for &p in row {
                // HF layout: the same frequencies repeated for the two halves of a head.
                for _rep in 0..2 {
                    for &f in inv_freq {
                        let a = p as f64 * f;
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
        let shape = [b, 1, t, hd];
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Applies the rotation to queries or keys (HF `rotate_half` convention: the first half of a
    /// head pairs with the second half, not interleaved pairs).
    ///
    /// # Shapes
    /// `x: [batch, heads, seq, head_dim] -> same`
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let hd = x.dims()[3];
        let half = hd / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Causal scaled-dot-product attention with `q_heads / kv_heads` query heads per KV head
/// (head `h` reads KV head `h / group`, as transformers' `repeat_kv`), optionally within a
/// sliding window of `window` positions (the query itself included).
///
/// `key_mask` marks keys to ignore (left padding) with `true`. The causal mask is aligned to the
/// end, so queries may be the last `seq` of `kv_len` positions (incremental decoding).
///
/// # Shapes
/// `q: [b, q_heads, seq, hd]`, `k, v: [b, kv_heads, kv_len, hd]`, `key_mask: [b, 1, 1, kv_len]`
/// -> `[b, q_heads, seq, hd]`
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Option<Tensor<4, Bool>>,
    window: Option<usize>,
) -> Tensor<4> {
    let opts = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    let [b, heads, t, d] = q.dims();
    let (kv_heads, kv_len) = (k.dims()[1], k.dims()[2]);
    let device = q.device();
    // Keys further back than the window, as a mask `[1, 1, t, kv_len]` (query i sits at
    // position kv_len - t + i).
    let band = window.filter(|&w| kv_len > w || t > 1).map(|w| {
        let m: Vec<bool> = (0..t)
            .flat_map(|i| (0..kv_len).map(move |j| kv_len - t + i >= j + w))
            .collect();
        Tensor::<4, Bool>::from_data(TensorData::new(m, [1, 1, t, kv_len]), &device)
    });
    let mask = match (key_mask, band) {
        (Some(a), Some(b)) => Some((a.int() + b.int()).greater_elem(0)),
        (a, b) => a.or(b),
    };
    if !q.is_autodiff() {
        // The fused CPU kernel handles grouped heads and the end-aligned causal mask itself.
        return attention(q, k, v, mask, None, opts);
    }
    // Under autodiff burn falls back to a decomposed attention without grouped heads. Doing
    // it ourselves with the query heads of a group stacked along the sequence axis avoids
    // copying K/V per query head and measured ~25% faster forward + backward.
    if mask.is_some() && (window.is_none() || kv_len != t) {
        let group = heads / kv_heads;
        let (k, v) = (repeat_kv(k, group), repeat_kv(v, group));
        return attention(q, k, v, mask, None, opts);
    }
    let group = heads / kv_heads;
    // [b, heads, t, d] -> [b, kv, group * t, d]: rows are (query head in group, position).
    let qg = q.reshape([b, kv_heads, group * t, d]);
    let w = window.unwrap_or(usize::MAX);
    let bias: Vec<f32> = (0..group * t)
        .flat_map(|r| {
            let i = r % t;
            (0..t).map(move |j| {
                if j > i || i - j >= w {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let bias = Tensor::<4>::from_data(TensorData::new(bias, [1, 1, group * t, t]), &device);
    let scores = qg
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt())
        + bias;
    softmax(scores, 3).matmul(v).reshape([b, heads, t, d])
}

/// `[b, kv, t, d] -> [b, kv * group, t, d]`, each KV head repeated `group` times in place.
pub fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [b, kv, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, group, t, d])
        .reshape([b, kv * group, t, d])
}

/// Host copy helper for tests and exports.
pub fn host<const D: usize>(t: &Tensor<D>) -> HostTensor {
    HostTensor::from_tensor(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device::flex()
    }

    #[test]
    fn rms_norm_matches_hand_computation() {
        let d = dev();
        let n = RmsNorm::new(
            Tensor::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &d),
            0.0,
        );
        let x = Tensor::<3>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 1, 2]), &d);
        let y = host(&n.forward(x)).data;
        // rms = sqrt((9 + 16) / 2) = 3.5355
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn linear_uses_out_in_layout() {
        let d = dev();
        // W = [[1, 0], [0, 2], [1, 1]]: 3 outputs from 2 inputs, checkpoint layout [out, in].
        let w = HostTensor::new(vec![3, 2], vec![1.0f32, 0., 0., 2., 1., 1.]);
        let l = Linear::from_checkpoint(&w, Some(&HostTensor::new(vec![3], vec![0.5, 0., 0.])), &d);
        assert_eq!(l.checkpoint_weight(), w);
        let x = Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 3.0], [1, 1, 2]), &d);
        assert_eq!(host(&l.forward(x)).data, vec![1.5, 6.0, 4.0]);
    }

    #[test]
    fn rotate_half_rotates_pairs_of_halves() {
        let d = dev();
        // One frequency of 1 rad/position; position 1; head [a, b] -> [a cos - b sin, b cos + a sin].
        let t = RopeTables::new(&[1.0], &[vec![1]], &d);
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 1, 1, 2]), &d);
        let y = host(&t.apply(x)).data;
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn differentiable_attention_equals_the_fused_kernel() {
        let d = dev();
        let q = Tensor::<4>::random([2, 4, 6, 8], burn::tensor::Distribution::Default, &d);
        let k = Tensor::<4>::random([2, 2, 6, 8], burn::tensor::Distribution::Default, &d);
        let v = Tensor::<4>::random([2, 2, 6, 8], burn::tensor::Distribution::Default, &d);
        let fused = causal_attention(q.clone(), k.clone(), v.clone(), None, None);
        let ad = d.autodiff();
        let lift = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &ad).require_grad();
        let grouped = causal_attention(lift(&q), lift(&k), lift(&v), None, None).inner();
        let diff = (fused - grouped).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn a_window_as_long_as_the_sequence_changes_nothing_and_shorter_ones_agree_everywhere() {
        let d = dev();
        let q = Tensor::<4>::random([1, 4, 6, 8], burn::tensor::Distribution::Default, &d);
        let k = Tensor::<4>::random([1, 2, 6, 8], burn::tensor::Distribution::Default, &d);
        let v = Tensor::<4>::random([1, 2, 6, 8], burn::tensor::Distribution::Default, &d);
        let full = causal_attention(q.clone(), k.clone(), v.clone(), None, None);
        let w6 = causal_attention(q.clone(), k.clone(), v.clone(), None, Some(6));
        assert!((full - w6).abs().max().into_scalar::<f32>() < 1e-6);
        // Window 2 (fused) against the differentiable path.
        let fused = causal_attention(q.clone(), k.clone(), v.clone(), None, Some(2));
        let ad = d.autodiff();
        let lift = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &ad).require_grad();
        let grouped = causal_attention(lift(&q), lift(&k), lift(&v), None, Some(2)).inner();
        assert!((fused.clone() - grouped).abs().max().into_scalar::<f32>() < 1e-5);
        // The last query with window 2 only sees the last two keys: decoding it alone against
        // those keys gives the same result.
        let last = causal_attention(
            q.narrow(2, 5, 1),
            k.narrow(2, 4, 2),
            v.narrow(2, 4, 2),
            None,
            Some(2),
        );
        assert!(
            (fused.narrow(2, 5, 1) - last)
                .abs()
                .max()
                .into_scalar::<f32>()
                < 1e-6
        );
    }

    #[test]
    fn grouped_attention_equals_explicitly_repeated_heads() {
        let d = dev();
        let q = Tensor::<4>::random([1, 4, 5, 8], burn::tensor::Distribution::Default, &d);
        let k = Tensor::<4>::random([1, 2, 5, 8], burn::tensor::Distribution::Default, &d);
        let v = Tensor::<4>::random([1, 2, 5, 8], burn::tensor::Distribution::Default, &d);
        let a = causal_attention(q.clone(), k.clone(), v.clone(), None, None);
        let b = causal_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), None, None);
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
    }
}
