//! Parity with Hugging Face transformers on the tiny fixtures (`fixtures/hf/*`, made with
//! transformers 5.24 / torch 2.15, f32 eager attention): logits and every hidden state within
//! 1e-4, KV-cache greedy decoding token for token, tokenizer ids, RoPE tables.

use std::path::{Path, PathBuf};

use puzzle_core::burn::tensor::{Device, Tensor};
use puzzle_core::generate::{GenerateOptions, Sampling, generate};
use puzzle_core::model::load_model;
use puzzle_core::nn::{RopeTables, ids_tensor};
use puzzle_core::weights::{HostTensor, SafetensorsWeights, WeightSource};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name)
}

fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape, "shape mismatch");
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn host(t: &Tensor<3>) -> HostTensor {
    HostTensor::from_tensor(t)
}

fn check_model(name: &str) {
    puzzle_llama::link();
    let device = Device::flex();
    let dir = fixture(name);
    let m = load_model(&dir, &device).unwrap();
    let tok = m.tokenizer.as_ref().expect("fixture has a tokenizer");
    let layers = m.spec.layers.len();
    for seq in ["seq1", "seq17", "seq64"] {
        let r =
            SafetensorsWeights::open(&dir.join(format!("reference/{seq}.safetensors"))).unwrap();
        let (_, ids) = r.read_i64("input_ids").unwrap();
        let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
        // The tokenizer reproduces the reference ids (they are a prefix of the text's encoding).
        if let Some(text) = r.file_metadata().get("text") {
            let enc = tok.encode(text, true).unwrap();
            assert_eq!(&enc[..ids.len()], &ids[..], "{name} {seq}: tokenizer ids");
        }
        let trace = m
            .decoder
            .forward_trace(ids_tensor(std::slice::from_ref(&ids), &device));
        let d = max_abs_diff(&host(&trace.logits), &r.read("logits").unwrap());
        eprintln!("{name} {seq}: logits maxdiff {d:e}");
        assert!(d < TOL, "{name} {seq}: logits differ by {d}");
        // hidden_states[0] = embeddings, [i] = output of layer i-1 (i < L), [L] = final norm.
        let mut hs = vec![host(&trace.embed)];
        hs.extend(trace.layer_out[..layers - 1].iter().map(host));
        hs.push(host(&trace.final_norm));
        for (i, h) in hs.iter().enumerate() {
            let d = max_abs_diff(h, &r.read(&format!("hidden_states.{i}")).unwrap());
            assert!(d < TOL, "{name} {seq}: hidden_states.{i} differs by {d}");
        }
        for (i, h) in trace.layer_out.iter().enumerate() {
            let d = max_abs_diff(&host(h), &r.read(&format!("layer_out.{i}")).unwrap());
            assert!(d < TOL, "{name} {seq}: layer_out.{i} differs by {d}");
        }
    }
    // KV-cache greedy decoding reproduces transformers' `generate` exactly.
    let g = SafetensorsWeights::open(&dir.join("reference/greedy.safetensors")).unwrap();
    let (_, prompt) = g.read_i64("prompt_ids").unwrap();
    let (_, all) = g.read_i64("generated_ids").unwrap();
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    let expected: Vec<u32> = all[prompt.len()..].iter().map(|&x| x as u32).collect();
    let out = generate(
        &m.decoder,
        &[prompt],
        &GenerateOptions {
            max_new_tokens: expected.len(),
            sampling: Sampling::Greedy,
            stop_tokens: vec![],
        },
    )
    .unwrap();
    assert_eq!(out.tokens[0], expected, "{name}: greedy tokens");
    // RoPE tables.
    let rope = SafetensorsWeights::open(&dir.join("reference/rope.safetensors")).unwrap();
    let (_, pos) = rope.read_i64("positions").unwrap();
    let pos: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
    let t = RopeTables::new(&m.spec.rope.inv_freq(m.spec.head_dim), &[pos], &device);
    let cos = HostTensor::from_tensor(&t.cos.squeeze_dims::<2>(&[0, 1]));
    let d = max_abs_diff(&cos, &rope.read("cos").unwrap());
    assert!(d < 1e-5, "{name}: rope cos differs by {d}");
    // Both config dialects resolve to the same spec.
    let v5: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.transformers5.json")).unwrap(),
    )
    .unwrap();
    let fam = puzzle_core::family::family_for(
        &puzzle_core::family::static_families(),
        &v5,
        Path::new("config.transformers5.json"),
    )
    .unwrap();
    let s5 = fam
        .parse_config(&v5, Path::new("config.transformers5.json"))
        .unwrap();
    assert_eq!(s5.rope, m.spec.rope, "{name}: rope from both dialects");
    assert_eq!(s5.layers, m.spec.layers);
}

#[test]
fn tiny_llama_matches_transformers() {
    check_model("tiny-llama");
}

#[test]
fn tiny_llama3_rope_matches_transformers() {
    check_model("tiny-llama3-rope");
}

#[test]
fn tiny_llama_tied_bf16_matches_transformers() {
    check_model("tiny-llama-tied-bf16");
}

#[test]
fn heterogeneous_decilm_fixtures_match_the_references() {
    puzzle_llama::link();
    let device = Device::flex();
    for name in ["tiny-decilm", "tiny-decilm-full"] {
        let dir = fixture(name);
        let m = load_model(&dir, &device).unwrap();
        for seq in ["seq7", "seq33"] {
            let r = SafetensorsWeights::open(&dir.join(format!("reference/{seq}.safetensors")))
                .unwrap();
            let (_, ids) = r.read_i64("input_ids").unwrap();
            let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
            let logits = m.decoder.forward(ids_tensor(&[ids], &device));
            let d = max_abs_diff(&host(&logits), &r.read("logits").unwrap());
            eprintln!("{name} {seq}: logits maxdiff {d:e}");
            assert!(d < TOL, "{name} {seq}: logits differ by {d}");
        }
    }
}

#[test]
fn batched_left_padded_generation_equals_one_row_at_a_time() {
    puzzle_llama::link();
    let device = Device::flex();
    let m = load_model(&fixture("tiny-llama"), &device).unwrap();
    let prompts = vec![
        vec![0u32, 42, 79, 261, 300, 72],
        vec![0u32, 500, 300],
        vec![0u32, 9, 8, 7, 6, 5, 4, 3],
    ];
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
    };
    let batched = generate(&m.decoder, &prompts, &opts).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let single = generate(&m.decoder, std::slice::from_ref(p), &opts).unwrap();
        assert_eq!(batched.tokens[i], single.tokens[0], "row {i}");
    }
}
