//! Stage kernels against naive f64 formulations: GKD's loss is the weighted sum of its three
//! terms (KL on logits, per-layer cosine distance, the student's LM loss); BLD's calibration
//! statistics (mean |SwiGLU activation| per FFN channel, which width pruning ranks) are those
//! computed by hand from the checkpoint's tensors.

use std::path::Path;

use puzzle_core::burn::tensor::Device;
use puzzle_core::distill::{DistillConfig, gkd_loss};
use puzzle_core::nn::{Decoder, ids_tensor};
use puzzle_core::score::swapped;
use puzzle_core::variants::{LayerCalibration, VariantCatalog, build_subblock, layer_weights};
use puzzle_core::weights::{HostTensor, SafetensorsWeights, WeightSource};
use puzzle_llama_ops::LlamaVariants;

/// The tiny-llama fixture's spec and weights.
fn fixture() -> (puzzle_core::spec::ModelSpec, SafetensorsWeights) {
    puzzle_llama::link();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/tiny-llama");
    (
        puzzle_core::Plugins::builtin().read_spec(&dir).unwrap(),
        SafetensorsWeights::open(&dir).unwrap(),
    )
}

fn log_softmax(r: &[f64]) -> Vec<f64> {
    let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z = r.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    r.iter().map(|x| x - z).collect()
}

fn rows(t: &HostTensor) -> Vec<Vec<f64>> {
    let w = *t.shape.last().unwrap();
    t.data
        .chunks(w)
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect()
}

#[test]
fn the_gkd_loss_is_the_weighted_sum_of_kl_cosine_and_lm_terms() {
    let (spec, w) = fixture();
    let device = Device::flex();
    let teacher = Decoder::load(&spec, &w, &device).unwrap();
    // The student: the parent with layer 1's FFN pruned to 64 channels (untrained), on the
    // autodiff device as in training.
    let ad = device.clone().autodiff();
    let calib = LayerCalibration {
        ffn_abs_mean: Some((0..176).map(|i| (i % 5) as f64 + 1.0).collect()),
        tokens: 1,
    };
    let init = LlamaVariants
        .init(
            &"ffn:width(64)".parse().unwrap(),
            &spec,
            1,
            &layer_weights(&w, 1).unwrap(),
            &calib,
        )
        .unwrap();
    let sub = build_subblock(&spec, &init.spec, 1, &init.weights, &ad).unwrap();
    let student = swapped(&Decoder::load(&spec, &w, &ad).unwrap(), 1, vec![sub]);
    let windows = vec![
        vec![0u32, 42, 79, 261, 300, 72, 266, 79, 296],
        vec![5, 17, 99, 250, 7, 3, 42, 1, 8],
    ];
    let inputs: Vec<Vec<u32>> = windows.iter().map(|r| r[..8].to_vec()).collect();
    let targets: Vec<u32> = windows.iter().flat_map(|r| r[1..].to_vec()).collect();
    let tt = teacher.forward_trace(ids_tensor(&inputs, &device));
    let st = student.forward_trace(ids_tensor(&inputs, &ad));
    let (p, q) = (
        rows(&HostTensor::from_tensor(&tt.logits)),
        rows(&HostTensor::from_tensor(&st.logits)),
    );
    let n = p.len() as f64;
    let (mut kl, mut lm) = (0.0, 0.0);
    for i in 0..p.len() {
        let (lp, lq) = (log_softmax(&p[i]), log_softmax(&q[i]));
        kl += (0..lp.len())
            .map(|j| lp[j].exp() * (lp[j] - lq[j]))
            .sum::<f64>()
            / n;
        lm += -lq[targets[i] as usize] / n;
    }
    let mut cos = 0.0;
    for (a, b) in tt.layer_out.iter().zip(&st.layer_out) {
        let (a, b) = (
            rows(&HostTensor::from_tensor(a)),
            rows(&HostTensor::from_tensor(b)),
        );
        for (x, y) in a.iter().zip(&b) {
            let dot: f64 = x.iter().zip(y).map(|(u, v)| u * v).sum();
            let norm = |v: &[f64]| v.iter().map(|u| u * u).sum::<f64>().sqrt();
            cos += (1.0 - dot / (norm(x) * norm(y))) / a.len() as f64;
        }
    }
    // Each term is non-trivial: the pruned FFN changes the logits and the layers after it.
    assert!(
        kl > 1e-4 && cos > 1e-5 && lm > 1.0,
        "kl {kl} cos {cos} lm {lm}"
    );
    let all = ids_tensor(&windows, &device);
    for (k, c, l) in [
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),
        (0.5, 2.0, 0.25),
    ] {
        let cfg: DistillConfig = serde_json::from_value(serde_json::json!({
            "tokens": 0, "seq_len": 8, "kl_weight": k, "cosine_weight": c, "lm_weight": l
        }))
        .unwrap();
        let got = gkd_loss(&student, &teacher, &cfg, all.clone()).into_scalar::<f32>() as f64;
        let want = k * kl + c * cos + l * lm;
        assert!(
            (got - want).abs() <= 1e-4 * want.abs() + 1e-5,
            "weights ({k}, {c}, {l}): {got} vs {want}"
        );
    }
}

#[test]
fn bld_calibration_is_the_mean_absolute_swiglu_activation_per_channel() {
    let (spec, w) = fixture();
    let device = Device::flex();
    // With layer 0's attention a no-op, the FFN's input is the token embedding itself, so the
    // reference needs nothing of our forward: RMSNorm, gate/up projections and SiLU by hand.
    let noop = LlamaVariants
        .init(
            &"attn:noop".parse().unwrap(),
            &spec,
            0,
            &layer_weights(&w, 0).unwrap(),
            &LayerCalibration::default(),
        )
        .unwrap();
    let sub = build_subblock(&spec, &noop.spec, 0, &noop.weights, &device).unwrap();
    let parent = swapped(&Decoder::load(&spec, &w, &device).unwrap(), 0, vec![sub]);
    let windows = vec![vec![0u32, 42, 79, 261, 300, 72], vec![5, 17, 99, 250, 7, 3]];
    let calib = puzzle_core::bld::calibrate(&parent, &windows, 1);
    let got = calib[0].ffn_abs_mean.as_ref().unwrap();
    assert_eq!(calib[0].tokens, 12);
    let read = |n: &str| w.read(n).unwrap();
    let (embed, norm) = (
        read("model.embed_tokens.weight"),
        read("model.layers.0.post_attention_layernorm.weight"),
    );
    let (gate, up) = (
        read("model.layers.0.mlp.gate_proj.weight"),
        read("model.layers.0.mlp.up_proj.weight"),
    );
    let (h, inter) = (spec.hidden_size, gate.shape[0]);
    assert_eq!(got.len(), inter);
    let mut want = vec![0.0f64; inter];
    for &id in windows.iter().flatten() {
        let x: Vec<f64> = embed.data[id as usize * h..(id as usize + 1) * h]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / h as f64 + spec.rms_norm_eps).sqrt();
        let xn: Vec<f64> = (0..h).map(|j| x[j] / rms * norm.data[j] as f64).collect();
        for (c, acc) in want.iter_mut().enumerate() {
            let dot = |m: &HostTensor| {
                (0..h)
                    .map(|j| m.data[c * h + j] as f64 * xn[j])
                    .sum::<f64>()
            };
            let g = dot(&gate);
            let silu = g / (1.0 + (-g).exp());
            *acc += (silu * dot(&up)).abs() / 12.0;
        }
    }
    for (c, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs() + 1e-6,
            "channel {c}: {a} vs {b}"
        );
    }
    // Later layers are calibrated too (their inputs come from the real forward).
    assert!(
        calib[1..]
            .iter()
            .all(|c| c.ffn_abs_mean.as_ref().is_some_and(|m| m.len() == inter))
    );
}
