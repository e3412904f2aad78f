//! Qwen2 (q/k/v biases) against transformers, and as a Puzzle parent: variants keep their
//! biases and a child exports and reloads exactly.

use std::path::{Path, PathBuf};

use puzzle_core::burn::tensor::Device;
use puzzle_core::generate::{GenerateOptions, Sampling, generate};
use puzzle_core::model::load_model;
use puzzle_core::nn::ids_tensor;
use puzzle_core::realize::export;
use puzzle_core::score::swapped;
use puzzle_core::variants::{LayerCalibration, VariantCatalog, build_subblock, layer_weights};
use puzzle_core::weights::{HostTensor, SafetensorsWeights, StoreDtype, WeightSource};
use puzzle_llama_ops::LlamaVariants;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/tiny-qwen2")
}

fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn qwen2_matches_transformers_and_decodes_the_same_tokens() {
    puzzle_qwen2::link();
    let device = Device::flex();
    let m = load_model(&dir(), &device).unwrap();
    assert_eq!(m.spec.family, "qwen2");
    for seq in ["seq1", "seq17", "seq64"] {
        let r =
            SafetensorsWeights::open(&dir().join(format!("reference/{seq}.safetensors"))).unwrap();
        let (_, ids) = r.read_i64("input_ids").unwrap();
        let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
        let t = m.decoder.forward_trace(ids_tensor(&[ids], &device));
        let d = max_diff(
            &HostTensor::from_tensor(&t.logits),
            &r.read("logits").unwrap(),
        );
        assert!(d < 1e-4, "{seq}: logits differ by {d}");
        let layers = m.spec.layers.len();
        for i in 1..layers {
            let d = max_diff(
                &HostTensor::from_tensor(&t.layer_out[i - 1]),
                &r.read(&format!("hidden_states.{i}")).unwrap(),
            );
            assert!(d < 1e-4, "{seq}: hidden_states.{i} differs by {d}");
        }
    }
    let g = SafetensorsWeights::open(&dir().join("reference/greedy.safetensors")).unwrap();
    let (_, prompt) = g.read_i64("prompt_ids").unwrap();
    let (_, all) = g.read_i64("generated_ids").unwrap();
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    // This fixture stores only the new tokens (the Llama ones store prompt + new).
    let new = if all.len() > prompt.len()
        && all[..prompt.len()] == prompt.iter().map(|&x| x as i64).collect::<Vec<_>>()[..]
    {
        &all[prompt.len()..]
    } else {
        &all[..]
    };
    let want: Vec<u32> = new.iter().map(|&x| x as u32).collect();
    let out = generate(
        &m.decoder,
        &[prompt],
        &GenerateOptions {
            max_new_tokens: want.len(),
            sampling: Sampling::Greedy,
            stop_tokens: vec![],
        },
    )
    .unwrap();
    assert_eq!(out.tokens[0], want);
}

#[test]
fn qwen2_is_a_puzzle_parent_whose_children_export_exactly() {
    puzzle_qwen2::link();
    let device = Device::flex();
    let m = load_model(&dir(), &device).unwrap();
    let w = SafetensorsWeights::open(&dir()).unwrap();
    let calib = LayerCalibration {
        ffn_abs_mean: Some(vec![1.0; 176]),
        tokens: 1,
    };
    let mut child = m.decoder.clone();
    for (layer, id) in [
        (0, "attn:gqa(kv=1)"),
        (1, "ffn:width(96)"),
        (2, "attn:linear"),
        (3, "attn:noop"),
    ] {
        let v = id.parse().unwrap();
        let init = LlamaVariants
            .init(
                &v,
                &m.spec,
                layer,
                &layer_weights(&w, layer).unwrap(),
                &calib,
            )
            .unwrap();
        if id == "attn:gqa(kv=1)" {
            // Pooled KV heads keep pooled biases.
            assert_eq!(
                init.weights.read("self_attn.k_proj.bias").unwrap().shape,
                vec![16]
            );
            assert!(init.weights.read("self_attn.q_proj.bias").is_ok());
        }
        if id == "attn:linear" {
            assert!(
                init.weights.read("self_attn.v_proj.bias").is_err(),
                "linear attention drops the v bias"
            );
        }
        let sub = build_subblock(&m.spec, &init.spec, layer, &init.weights, &device).unwrap();
        child = swapped(&child, layer, vec![sub]);
    }
    let out = tempfile::tempdir().unwrap();
    let warnings = export(&child, &dir(), out.path(), StoreDtype::F32).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("zero o_proj biases")),
        "{warnings:?}"
    );
    let back = load_model(out.path(), &device).unwrap();
    assert_eq!(back.spec.family, "decilm");
    let ids = ids_tensor(&[vec![0, 42, 79, 261, 300, 72, 266]], &device);
    let d = max_diff(
        &HostTensor::from_tensor(&child.forward(ids.clone())),
        &HostTensor::from_tensor(&back.decoder.forward(ids)),
    );
    assert!(d < 1e-5, "{d}");
    let st = SafetensorsWeights::open(out.path()).unwrap();
    assert!(
        st.names()
            .contains(&"model.layers.0.self_attn.o_proj.bias".to_string())
    );
}
