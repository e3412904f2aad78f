//! Random initialisation of a fresh model (pretraining from scratch).

use crate::rng::SeededRng;

use crate::spec::ModelSpec;
use crate::weights::{HostTensor, MemoryWeights};

/// A standard normal draw, so initialisation depends only on the seed.
pub fn normal(rng: &mut SeededRng) -> f32 {
    rng.normal() as f32
}

/// GPT-2 style initialisation of every tensor the spec implies: norms 1, biases 0, matrices
/// N(0, std), residual-output projections (`o_proj`, `down_proj`, linear replacements) scaled by
/// `1/sqrt(2 * layers)` so the residual stream does not grow with depth.
pub fn random_weights(spec: &ModelSpec, std: f32, seed: u64) -> MemoryWeights {
    let mut rng = SeededRng::new(seed);
    let mut w = MemoryWeights::new(format!("random init (seed {seed})"));
    let residual_scale = 1.0 / (2.0 * spec.layers.len().max(1) as f32).sqrt();
    for (name, shape) in spec.tensor_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let s = if name.contains("o_proj")
                || name.contains("down_proj")
                || name.contains("linear_")
            {
                std * residual_scale
            } else {
                std
            };
            (0..n).map(|_| normal(&mut rng) * s).collect()
        };
        w.insert(name, HostTensor::new(shape, data));
    }
    w
}
