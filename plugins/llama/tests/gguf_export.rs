//! `puzzle export gguf`: what llama.cpp reads, checked through our own GGUF reader and importer
//! (a Llama model exported and imported back computes the same logits and tokenizes the same),
//! and the `deci` layout of heterogeneous children with llama.cpp's limits handled.

use std::path::{Path, PathBuf};

use puzzle_core::burn::tensor::Device;
use puzzle_core::gguf::{GgmlType, GgufFile, GgufValue};
use puzzle_core::model::load_model;
use puzzle_core::nn::ids_tensor;
use puzzle_core::weights::HostTensor;
use puzzle_llama_ops::gguf_export::{ZERO_FFN_WIDTH, export_gguf};
use puzzle_llama_ops::gguf_import::{ImportOptions, import_gguf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn ints(g: &GgufFile, key: &str) -> Vec<u64> {
    match g.get(key) {
        Some(GgufValue::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(0)).collect(),
        Some(v) => vec![v.as_u64().unwrap()],
        None => panic!("no {key}"),
    }
}

/// Export, import back, and compare logits (within `tol` of the largest logit) and tokenization
/// with the original folder.
fn round_trip(dir: &Path, ty: GgmlType, tol: f32) -> (f32, &'static str) {
    puzzle_llama::link();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.gguf");
    let r = export_gguf(dir, &file, ty).unwrap();
    assert_eq!(r.arch, "llama", "{r:?}");
    let back = tmp.path().join("back");
    import_gguf(
        &file,
        &back,
        &ImportOptions {
            dtype: puzzle_core::weights::StoreDtype::F32,
            tokenizer: None,
        },
        |_, _| {},
    )
    .unwrap();
    let device = Device::flex();
    let a = load_model(dir, &device).unwrap();
    let b = load_model(&back, &device).unwrap();
    let text = "In the beginning God created the heaven and the earth. 1234, don't!";
    let (ta, tb) = (a.tokenizer.unwrap(), b.tokenizer.unwrap());
    let ids = ta.encode(text, true).unwrap();
    assert_eq!(
        ids,
        tb.encode(text, true).unwrap(),
        "tokenizer rebuilt from the GGUF"
    );
    let x = ids_tensor(&[ids], &device);
    let la = HostTensor::from_tensor(&a.decoder.forward(x.clone()));
    let scale = la.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_diff(&la, &HostTensor::from_tensor(&b.decoder.forward(x)));
    assert!(
        d <= tol * scale,
        "{} {ty:?}: logits differ by {d} (largest logit {scale})",
        dir.display()
    );
    (d, r.pre)
}

#[test]
fn a_llama_exported_and_imported_back_computes_the_same_logits() {
    // The tiny parent: GPT-2 byte-level pre-tokenizer, tied embeddings.
    let (d, pre) = round_trip(&root().join("model-zoo/tiny-parent"), GgmlType::F32, 0.0);
    assert_eq!((d, pre), (0.0, "gpt-2"));
    // A transformers fixture: Llama-3 split pre-tokenizer, untied head.
    let (d, pre) = round_trip(&root().join("fixtures/hf/tiny-llama"), GgmlType::F32, 0.0);
    assert_eq!((d, pre), (0.0, "llama-bpe"));
    // Q8_0: the quantisation error only (each weight within half a step of 1/127 of its
    // block's largest), a few percent of the largest logit.
    let (d, _) = round_trip(&root().join("fixtures/hf/tiny-llama"), GgmlType::Q8_0, 0.05);
    assert!(d > 0.0);
}

#[test]
fn a_heterogeneous_child_is_deci_with_llama_cpp_limits_re_expressed_or_refused() {
    puzzle_llama::link();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("child.gguf");
    // Attention: 4, 1 KV heads, linear, no-op, no-op, 2; FFN 256, 512, 256, 768, no-op, 256.
    let r = export_gguf(
        &root().join("fixtures/hf/tiny-decilm"),
        &file,
        GgmlType::F32,
    )
    .unwrap();
    assert_eq!(r.arch, "deci");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let g = GgufFile::open(&file).unwrap();
    assert_eq!(ints(&g, "deci.attention.head_count"), [4, 4, 4, 0, 0, 4]);
    assert_eq!(ints(&g, "deci.attention.head_count_kv"), [4, 1, 0, 0, 0, 2]);
    assert_eq!(
        ints(&g, "deci.feed_forward_length"),
        [256, 512, 256, 768, 0, 256]
    );
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(!names.iter().any(|n| n.starts_with("blk.4.")), "{names:?}");
    assert!(!names.contains(&"blk.3.attn_norm.weight"));
    assert!(names.contains(&"blk.2.attn_output.weight") && !names.contains(&"blk.2.attn_q.weight"));
    // A no-op FFN after an attention becomes an exact zero FFN; a linear FFN is refused.
    let full = root().join("fixtures/hf/tiny-decilm-full");
    let e = export_gguf(&full, &file, GgmlType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 5") && e.contains("linear FFN"), "{e}");
    let fixed = tmp.path().join("no-linear");
    std::fs::create_dir(&fixed).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(full.join(f), fixed.join(f)).unwrap();
    }
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("config.json")).unwrap()).unwrap();
    // Layer 5's linear FFN replaced by a no-op: the last layer's no-op FFN is re-expressed too.
    c["block_configs"][5]["ffn"] = serde_json::json!({"ffn_mult": null, "no_op": true,
        "replace_with_linear": false, "sparsify": null});
    std::fs::write(fixed.join("config.json"), c.to_string()).unwrap();
    // Drop layer 5's linear FFN tensor from the checkpoint.
    let w = puzzle_core::weights::SafetensorsWeights::open(&fixed).unwrap();
    use puzzle_core::weights::WeightSource;
    let keep: Vec<(String, HostTensor)> = w
        .names()
        .into_iter()
        .filter(|n| {
            !n.starts_with("model.layers.5.mlp.") && !n.starts_with("model.layers.5.post_attention")
        })
        .map(|n| {
            let t = w.read(&n).unwrap();
            (n, t)
        })
        .collect();
    drop(w);
    puzzle_core::weights::write_safetensors(
        &fixed.join("model.safetensors"),
        keep.iter().map(|(n, t)| (n.as_str(), t)),
        puzzle_core::weights::StoreDtype::F32,
        None,
    )
    .unwrap();
    let r = export_gguf(&fixed, &file, GgmlType::F32).unwrap();
    assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    assert!(
        r.notes[0].contains("layer 4") && r.notes[1].contains("layer 5"),
        "{:?}",
        r.notes
    );
    let g = GgufFile::open(&file).unwrap();
    let w = ZERO_FFN_WIDTH as u64;
    assert_eq!(ints(&g, "deci.feed_forward_length")[4..], [w, w]);
    let down = g.tensor_f32("blk.4.ffn_down.weight").unwrap();
    assert!(down.data.iter().all(|&x| x == 0.0) && down.shape == [128, ZERO_FFN_WIDTH]);
}
