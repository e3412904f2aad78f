//! Bad input gets a clear error naming the culprit, never a panic.

use std::path::{Path, PathBuf};

use puzzle_core::burn::tensor::Device;
use puzzle_core::generate::{GenerateOptions, Sampling, generate};
use puzzle_core::model::load_model;
use puzzle_core::weights::{SafetensorsWeights, StoreDtype, WeightSource, write_safetensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name)
}

/// A writable copy of the tiny-llama fixture.
fn copy_fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-llama").join(f), d.path().join(f)).unwrap();
    }
    d
}

fn load_err(dir: &Path) -> String {
    puzzle_llama::link();
    format!("{}", load_model(dir, &Device::flex()).unwrap_err())
}

fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&mut Vec<(String, puzzle_core::weights::HostTensor)>),
) {
    let w = SafetensorsWeights::open(dir).unwrap();
    let mut ts: Vec<_> = w
        .names()
        .into_iter()
        .map(|n| {
            let t = w.read(&n).unwrap();
            (n, t)
        })
        .collect();
    drop(w);
    edit(&mut ts);
    write_safetensors(
        &dir.join("model.safetensors"),
        ts.iter().map(|(n, t)| (n.as_str(), t)),
        StoreDtype::F32,
        None,
    )
    .unwrap();
}

#[test]
fn missing_folder_and_missing_config() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(
        e.contains("/nonexistent/model") && e.contains("no such checkpoint folder"),
        "{e}"
    );
    let d = copy_fixture();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn malformed_and_unsupported_configs() {
    let d = copy_fixture();
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );

    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llama/config.json")).unwrap())
            .unwrap();
    c["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 2.0});
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("unsupported") && e.contains("rope_type `dynamic`"),
        "{e}"
    );

    c["rope_scaling"] = serde_json::Value::Null;
    c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    c["model_type"] = serde_json::json!("gpt2");
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("no registered family"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let d = copy_fixture();
    rewrite_weights(d.path(), |ts| {
        ts.retain(|(n, _)| n != "model.layers.2.mlp.up_proj.weight")
    });
    let e = load_err(d.path());
    assert!(
        e.contains("`model.layers.2.mlp.up_proj.weight` is missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let d = copy_fixture();
    rewrite_weights(d.path(), |ts| {
        let t = ts
            .iter_mut()
            .find(|(n, _)| n == "model.layers.1.self_attn.k_proj.weight")
            .unwrap();
        t.1 = puzzle_core::weights::HostTensor::new(vec![16, 64], vec![0.0; 16 * 64]);
    });
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.1.self_attn.k_proj.weight")
            && e.contains("[16, 64]")
            && e.contains("[32, 64]"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let d = copy_fixture();
    rewrite_weights(d.path(), |ts| {
        ts.push((
            "model.layers.9.mlp.up_proj.weight".into(),
            puzzle_core::weights::HostTensor::new(vec![1], vec![0.0]),
        ))
    });
    let e = load_err(d.path());
    assert!(
        e.contains("does not use") && e.contains("model.layers.9.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let d = copy_fixture();
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn prompt_longer_than_max_positions_is_refused() {
    puzzle_llama::link();
    let d = copy_fixture();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llama/config.json")).unwrap())
            .unwrap();
    c["max_position_embeddings"] = serde_json::json!(8);
    std::fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let m = load_model(d.path(), &Device::flex()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 4,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
    };
    let e = generate(&m.decoder, &[vec![0; 9]], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("9 tokens") && e.contains("at most 8 positions"),
        "{e}"
    );
    // At the limit, generation stops at the last position instead of running past it.
    let g = generate(&m.decoder, &[vec![0; 6]], &opts).unwrap();
    assert_eq!(g.tokens[0].len(), 2);
    // Out-of-vocabulary ids and bad sampling settings are refused too.
    let e = generate(&m.decoder, &[vec![600]], &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token id 600"), "{e}");
    let bad = GenerateOptions {
        sampling: Sampling::Sample {
            temperature: 0.0,
            top_p: 0.9,
            seed: 1,
        },
        ..opts
    };
    let e = generate(&m.decoder, &[vec![0]], &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("temperature"), "{e}");
}
