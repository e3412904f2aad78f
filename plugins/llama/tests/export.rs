//! Export in the DeciLM / nemotron-nas format: a heterogeneous child reloads with the same logits;
//! a child made of the parent's own variants is the parent.

use std::path::Path;

use puzzle_core::burn::tensor::Device;
use puzzle_core::model::load_model;
use puzzle_core::nn::ids_tensor;
use puzzle_core::realize::export;
use puzzle_core::score::swapped;
use puzzle_core::variants::{LayerCalibration, VariantCatalog, build_subblock, layer_weights};
use puzzle_core::weights::{HostTensor, SafetensorsWeights, StoreDtype};
use puzzle_llama_ops::LlamaVariants;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name)
}

fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn exported_heterogeneous_child_reloads_with_the_same_logits() {
    puzzle_llama::link();
    let device = Device::flex();
    let parent = load_model(&fixture("tiny-llama"), &device).unwrap();
    let w = SafetensorsWeights::open(&fixture("tiny-llama")).unwrap();
    let calib = LayerCalibration {
        ffn_abs_mean: Some((0..176).map(|i| (i % 7) as f64 + 1.0).collect()),
        tokens: 1,
    };
    let mut child = parent.decoder.clone();
    for (layer, id) in [
        (0, "attn:gqa(kv=1)"),
        (1, "attn:linear"),
        (1, "ffn:width(64)"),
        (2, "attn:noop"),
        (2, "ffn:noop"),
        (3, "ffn:linear"),
    ] {
        let v = id.parse().unwrap();
        let init = LlamaVariants
            .init(
                &v,
                &parent.spec,
                layer,
                &layer_weights(&w, layer).unwrap(),
                &calib,
            )
            .unwrap();
        let sub = build_subblock(&parent.spec, &init.spec, layer, &init.weights, &device).unwrap();
        child = swapped(&child, layer, vec![sub]);
    }
    let dir = tempfile::tempdir().unwrap();
    let warnings = export(&child, &fixture("tiny-llama"), dir.path(), StoreDtype::F32).unwrap();
    assert!(warnings.iter().any(|w| w.contains("vLLM")), "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w.contains("linear_mlp")),
        "{warnings:?}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "DeciLMForCausalLM");
    // trust_remote_code loaders find NVIDIA's classes by repository (transformers' `repo--module.Class`).
    assert_eq!(
        config["auto_map"]["AutoModelForCausalLM"],
        "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5--modeling_decilm.DeciLMForCausalLM"
    );
    assert_eq!(
        config["auto_map"]["AutoConfig"],
        "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5--configuration_decilm.DeciLMConfig"
    );
    let blocks = config["block_configs"].as_array().unwrap();
    assert_eq!(blocks[0]["attention"]["n_heads_in_group"], 4);
    assert_eq!(blocks[1]["attention"]["replace_with_linear"], true);
    assert!(blocks[1]["attention"]["n_heads_in_group"].is_null());
    assert_eq!(
        blocks[1]["ffn"]["intermediate_size"], 64,
        "64 is not a multiple of 256: written absolutely"
    );
    assert_eq!(blocks[2]["ffn"]["no_op"], true);
    assert!(blocks[2]["ffn"]["ffn_mult"].is_null());
    // No tensors at all for no-op subblocks, not even their norms.
    let st = SafetensorsWeights::open(dir.path()).unwrap();
    use puzzle_core::weights::WeightSource;
    assert!(!st.names().iter().any(|n| n.starts_with("model.layers.2.")));
    assert!(
        st.names()
            .contains(&"model.layers.3.mlp.linear_mlp.weight".to_string())
    );
    let back = load_model(dir.path(), &device).unwrap();
    assert_eq!(back.spec.family, "decilm");
    assert_eq!(back.spec.layers, child.current_spec().layers);
    let ids = ids_tensor(&[vec![0, 42, 79, 261, 300, 72, 266, 79, 296, 464]], &device);
    let a = HostTensor::from_tensor(&child.forward(ids.clone()));
    let b = HostTensor::from_tensor(&back.decoder.forward(ids));
    assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
    assert!(back.tokenizer.is_some());
}

#[test]
fn a_child_of_parent_variants_exports_the_parent() {
    puzzle_llama::link();
    let device = Device::flex();
    let parent = load_model(&fixture("tiny-llama"), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let warnings = export(
        &parent.decoder,
        &fixture("tiny-llama"),
        dir.path(),
        StoreDtype::F32,
    )
    .unwrap();
    // The fixture's width 176 has no exact ffn_mult: the only caveat.
    assert!(
        warnings.iter().all(|w| w.contains("not a multiple of 256")),
        "{warnings:?}"
    );
    let back = load_model(dir.path(), &device).unwrap();
    let ids = ids_tensor(&[vec![0, 500, 300, 13, 270, 83]], &device);
    let a = HostTensor::from_tensor(&parent.decoder.forward(ids.clone()));
    let b = HostTensor::from_tensor(&back.decoder.forward(ids));
    assert_eq!(a, b, "a parent-shaped child is the parent, bit for bit");
}

#[test]
fn nvidia_style_decilm_round_trips() {
    puzzle_llama::link();
    let device = Device::flex();
    for name in ["tiny-decilm", "tiny-decilm-full"] {
        let m = load_model(&fixture(name), &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        export(&m.decoder, &fixture(name), dir.path(), StoreDtype::F32).unwrap();
        let back = load_model(dir.path(), &device).unwrap();
        assert_eq!(back.spec.layers, m.spec.layers, "{name}");
        let ids = ids_tensor(&[vec![0, 5, 9, 77, 300]], &device);
        assert_eq!(
            HostTensor::from_tensor(&m.decoder.forward(ids.clone())),
            HostTensor::from_tensor(&back.decoder.forward(ids)),
            "{name}"
        );
    }
}

#[test]
fn a_parent_without_tokenizer_side_files_gets_them_in_its_export() {
    puzzle_llama::link();
    let device = Device::flex();
    // The tiny parent ships tokenizer.json alone (as `puzzle train` writes it).
    let parent_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../model-zoo/tiny-parent");
    assert!(!parent_dir.join("tokenizer_config.json").exists());
    let parent = load_model(&parent_dir, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export(&parent.decoder, &parent_dir, dir.path(), StoreDtype::F32).unwrap();
    let read = |n: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(n)).unwrap()).unwrap()
    };
    // config.json's special ids (0 for both) are the tokenizer's document separator.
    let tc = read("tokenizer_config.json");
    assert_eq!(tc["bos_token"], "<|endoftext|>");
    assert_eq!(tc["eos_token"], "<|endoftext|>");
    assert_eq!(tc["model_max_length"], 256);
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["added_tokens_decoder"]["0"]["special"], true);
    assert_eq!(
        read("special_tokens_map.json")["eos_token"]["content"],
        "<|endoftext|>"
    );
    let g = read("generation_config.json");
    assert_eq!(
        (g["bos_token_id"].as_u64(), g["eos_token_id"].as_u64()),
        (Some(0), Some(0))
    );
}
