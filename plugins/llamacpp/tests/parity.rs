//! Our GGUF exports in stock llama.cpp (the llama.cpp that `llama-cpp-sys-2` 0.1.161 vendors):
//! logits within 1e-4 of our own forward (f32 weights, f32 KV cache), the same greedy tokens and
//! the same tokenization, for Llama parents (`llama` arch) and heterogeneous children (`deci`),
//! llama.cpp's no-op FFN limits re-expressed.

use std::path::{Path, PathBuf};

use puzzle_core::burn::tensor::Device;
use puzzle_core::generate::{GenerateOptions, Sampling, generate};
use puzzle_core::gguf::GgmlType;
use puzzle_core::model::load_model;
use puzzle_core::nn::ids_tensor;
use puzzle_core::weights::{HostTensor, SafetensorsWeights, StoreDtype, WeightSource};
use puzzle_llama_ops::gguf_export::export_gguf;
use puzzle_llamacpp::LlamaCpp;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder exported by our GGUF writer (f32), loaded in llama.cpp, and its logits of `ids`
/// (one row per position).
fn llama_cpp_logits(dir: &Path, ids: &[u32]) -> (LlamaCpp, Vec<Vec<f32>>) {
    puzzle_llama::link();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.gguf");
    export_gguf(dir, &file, GgmlType::F32).unwrap();
    let cpp = LlamaCpp::load(&file, 2).unwrap();
    let logits = cpp.logits(ids).unwrap();
    (cpp, logits)
}

/// Largest |ours - llama.cpp| over every position's logits, and whether greedy decoding of
/// `new` tokens agrees.
fn compare(dir: &Path, ids: &[u32], new: usize) -> f32 {
    let (cpp, theirs) = llama_cpp_logits(dir, ids);
    let device = Device::flex();
    let ours = load_model(dir, &device).unwrap();
    assert_eq!(cpp.n_vocab(), ours.spec.vocab_size);
    let mine = HostTensor::from_tensor(&ours.decoder.forward(ids_tensor(&[ids.to_vec()], &device)));
    let v = ours.spec.vocab_size;
    let mut d = 0f32;
    for (t, row) in theirs.iter().enumerate() {
        for (a, b) in row.iter().zip(&mine.data[t * v..(t + 1) * v]) {
            d = d.max((a - b).abs());
        }
    }
    if new > 0 {
        let g = generate(
            &ours.decoder,
            &[ids.to_vec()],
            &GenerateOptions {
                max_new_tokens: new,
                sampling: Sampling::Greedy,
                stop_tokens: vec![],
            },
        )
        .unwrap();
        assert_eq!(
            cpp.greedy(ids, new).unwrap(),
            g.tokens[0],
            "{}",
            dir.display()
        );
    }
    let scale = mine.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "{}: max |logits diff| {d:e} (largest |logit| {scale:.2})",
        dir.display()
    );
    d
}

fn tokenizes_alike(dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.gguf");
    export_gguf(dir, &file, GgmlType::F32).unwrap();
    let cpp = LlamaCpp::load(&file, 2).unwrap();
    let ours = puzzle_core::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    for text in [
        "In the beginning God created the heaven and the earth.",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "Numbers 1234567 and 3.14159; don't won't they're I'll",
        "émigré café naïve 東京 🙂",
    ] {
        assert_eq!(
            cpp.tokenize(text).unwrap(),
            ours.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn the_tiny_parent_in_llama_cpp_matches_our_forward_and_greedy_tokens() {
    let dir = root().join("model-zoo/tiny-parent");
    let tok = puzzle_core::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let ids = tok
        .encode("And God said, Let there be light: and there was", true)
        .unwrap();
    assert!(compare(&dir, &ids, 16) < 1e-4);
    tokenizes_alike(&dir);
}

/// The process-wide worker pool computes what a pool made per graph computes (the same
/// kernels on the same chunks), for two models taking turns on it, and serves timed requests.
#[test]
fn the_shared_thread_pool_computes_what_a_pool_per_graph_computes() {
    puzzle_llama::link();
    let dir = root().join("model-zoo/tiny-parent");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.gguf");
    export_gguf(&dir, &file, GgmlType::F32).unwrap();
    let pooled = LlamaCpp::load(&file, 2).unwrap();
    let other = LlamaCpp::load(&file, 2).unwrap();
    let per_graph = LlamaCpp::load(&file, 2).unwrap().with_pool_per_graph();
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 4096).collect();
    let want = per_graph.logits(&ids).unwrap();
    for m in [&pooled, &other, &pooled] {
        let got = m.logits(&ids).unwrap();
        let d = got
            .iter()
            .flatten()
            .zip(want.iter().flatten())
            .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
        assert!(d <= 1e-6, "pooled logits differ by {d:e}");
    }
    assert_eq!(
        pooled.greedy(&ids, 8).unwrap(),
        per_graph.greedy(&ids, 8).unwrap()
    );
    for m in [&pooled, &per_graph] {
        let (prefill, total) = m.request(2, 16, 4).unwrap();
        assert!(prefill > 0.0 && total > prefill, "{prefill} ms, {total} ms");
    }
}

#[test]
fn a_llama_fixture_with_llama3_pre_tokenizer_matches() {
    let dir = root().join("fixtures/hf/tiny-llama");
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 500).collect();
    assert!(compare(&dir, &ids, 8) < 1e-4);
    tokenizes_alike(&dir);
}

#[test]
fn a_heterogeneous_deci_child_matches_ours_and_the_independent_reference() {
    let dir = root().join("fixtures/hf/tiny-decilm");
    let r = SafetensorsWeights::open(&dir.join("reference/seq33.safetensors")).unwrap();
    let (_, ids) = r.read_i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    assert!(compare(&dir, &ids, 8) < 1e-4);
}

/// `src`'s safetensors without the tensors `drop` names, as `dir/model.safetensors` (f32).
fn write_tensors_but(src: &Path, dir: &Path, drop: impl Fn(&str) -> bool) {
    let w = SafetensorsWeights::open(src).unwrap();
    let keep: Vec<(String, HostTensor)> = w
        .names()
        .into_iter()
        .filter(|n| !drop(n))
        .map(|n| {
            let t = w.read(&n).unwrap();
            (n, t)
        })
        .collect();
    puzzle_core::weights::write_safetensors(
        &dir.join("model.safetensors"),
        keep.iter().map(|(n, t)| (n.as_str(), t)),
        StoreDtype::F32,
        None,
    )
    .unwrap();
}

#[test]
fn no_op_ffns_llama_cpp_cannot_run_are_re_expressed_exactly() {
    // tiny-decilm-full without its linear FFN: layer 4 is attention + no-op FFN (llama.cpp
    // would drop the attention) and layer 5, the last, has a no-op FFN (llama.cpp crashes).
    let full = root().join("fixtures/hf/tiny-decilm-full");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(full.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("config.json")).unwrap()).unwrap();
    c["block_configs"][5]["ffn"] = serde_json::json!({"ffn_mult": null, "no_op": true,
        "replace_with_linear": false, "sparsify": null});
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    write_tensors_but(&full, dir, |n| {
        n.starts_with("model.layers.5.mlp.") || n.starts_with("model.layers.5.post_attention")
    });
    let ids: Vec<u32> = (0..20).map(|i| (i * 53 + 11) % 500).collect();
    assert!(compare(dir, &ids, 6) < 1e-4);
}

#[test]
fn a_no_op_attention_in_layer_0_is_re_expressed_exactly() {
    // llama.cpp reads the head size from layer 0's head count: tiny-decilm with layer 0's
    // attention removed (layer 3's no-op block config) is written as a zero linear attention.
    let src = root().join("fixtures/hf/tiny-decilm");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["block_configs"][3]["attention"]["no_op"], true);
    c["block_configs"][0]["attention"] = c["block_configs"][3]["attention"].clone();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    write_tensors_but(&src, dir, |n| {
        n.starts_with("model.layers.0.self_attn.") || n == "model.layers.0.input_layernorm.weight"
    });
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    assert!(compare(dir, &ids, 6) < 1e-4);
}

#[test]
fn smollm2_imported_then_exported_runs_in_llama_cpp_as_in_ours() {
    let gguf = root().join("model-zoo/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run `cargo xtask fetch-smollm2` (or `cargo xtask test`, which does it)",
        gguf.display()
    );
    puzzle_llama::link();
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    puzzle_llama_ops::gguf_import::import_gguf(
        &gguf,
        &hf,
        &puzzle_llama_ops::gguf_import::ImportOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let tok = puzzle_core::tokenizer::Tokenizer::from_file(&hf.join("tokenizer.json")).unwrap();
    let ids = tok.encode("The capital of France is", true).unwrap();
    // 30 layers of 576 with bf16-valued weights: f32 sums in another order drift further than in
    // the tiny models (measured 1.6e-4, 6e-6 of the largest logit). The greedy tokens agree.
    assert!(compare(&hf, &ids, 12) < 3e-4);
    tokenizes_alike(&hf);
    // Where the floor is: transformers' logits of the same prompt on the same bf16-valued
    // weights (fixtures/smollm2/reference) against llama.cpp's. Two independent f32
    // implementations of this model differ by this much before ours is involved.
    let r =
        SafetensorsWeights::open(&root().join("fixtures/smollm2/reference/prompt0.safetensors"))
            .unwrap();
    let (_, ref_ids) = r.read_i64("input_ids").unwrap();
    assert_eq!(ref_ids, ids.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let reference = r.read("logits").unwrap();
    let (_, theirs) = llama_cpp_logits(&hf, &ids);
    let d = theirs
        .iter()
        .flatten()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("smollm2: max |llama.cpp - transformers| {d:e}");
    assert!(d < 3e-4, "llama.cpp is {d} from transformers");
}

/// Our f32 export quantised by llama.cpp's own quantiser loads and serves in llama.cpp, and our
/// importer reads the quantised file back: our dequantisers of its block types against
/// llama.cpp's quantiser, through the whole model. llama.cpp's quantised matmuls also round the
/// activations (to 8-bit blocks), so the logits of the two differ by that, not by the weights.
#[test]
fn llama_cpps_k_quants_of_our_export_load_and_read_back_in_our_importer() {
    use puzzle_llamacpp::{Quant, quantize};
    puzzle_llama::link();
    let dir = root().join("model-zoo/tiny-parent");
    let tok = puzzle_core::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let ids = tok
        .encode("And God said, Let there be light: and there was", true)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f32 = tmp.path().join("f32.gguf");
    export_gguf(&dir, &f32, GgmlType::F32).unwrap();
    let (_, exact) = llama_cpp_logits(&dir, &ids);
    let device = Device::flex();
    // (type, ggml type most matrices get, bound on |ours on the dequantised import - llama.cpp|,
    // bound on the mean |quantised - f32| logit in llama.cpp, bound on the relative RMS error
    // of a dequantised weight matrix).
    for (q, main, close, drift, weights) in [
        (Quant::Q6K, GgmlType::Q6K, 0.3f32, 0.1f32, 0.05f64),
        (Quant::Q4KM, GgmlType::Q4K, 0.6, 0.5, 0.15),
    ] {
        let file = tmp.path().join(format!("{q}.gguf"));
        quantize(&f32, &file, q, 2).unwrap();
        let g = puzzle_core::gguf::GgufFile::open(&file).unwrap();
        let matrices: Vec<GgmlType> = g
            .tensors
            .iter()
            .filter(|t| t.dims.len() > 1)
            .map(|t| t.ggml_type)
            .collect();
        let n_main = matrices.iter().filter(|&&t| t == main).count();
        assert!(
            n_main * 2 > matrices.len(),
            "{q}: {n_main} of {} matrices are {main:?}: {matrices:?}",
            matrices.len()
        );
        let cpp = LlamaCpp::load(&file, 2).unwrap();
        let theirs = cpp.logits(&ids).unwrap();
        let hf = tmp.path().join(format!("{q}-hf"));
        puzzle_llama_ops::gguf_import::import_gguf(
            &file,
            &hf,
            &puzzle_llama_ops::gguf_import::ImportOptions {
                dtype: StoreDtype::F32,
                tokenizer: None,
            },
            |_, _| {},
        )
        .unwrap();
        let ours = load_model(&hf, &device).unwrap();
        let mine = HostTensor::from_tensor(
            &ours
                .decoder
                .forward(ids_tensor(std::slice::from_ref(&ids), &device)),
        );
        let (mut d, mut mean_d, mut mean_drift, mut n) = (0f32, 0f64, 0f64, 0usize);
        for (t, row) in theirs.iter().enumerate() {
            let v = row.len();
            for ((a, b), e) in row
                .iter()
                .zip(&mine.data[t * v..(t + 1) * v])
                .zip(&exact[t])
            {
                d = d.max((a - b).abs());
                mean_d += f64::from((a - b).abs());
                mean_drift += f64::from((a - e).abs());
                n += 1;
            }
        }
        let (mean_d, mean_drift) = ((mean_d / n as f64) as f32, (mean_drift / n as f64) as f32);
        eprintln!(
            "{q}: |ours on the import - llama.cpp| max {d:e} mean {mean_d:e}; mean |{q} - f32| logit in llama.cpp {mean_drift:e}"
        );
        assert!(d < close, "{q}: our import is {d} from llama.cpp's logits");
        assert!(
            mean_drift > 0.0 && mean_drift < drift,
            "{q}: mean logit drift from f32 {mean_drift}"
        );
        // The weights our importer dequantised are the parent's within the type's rounding
        // (a misread block layout would be off by the weights' own size).
        let (orig, back) = (
            SafetensorsWeights::open(&dir).unwrap(),
            SafetensorsWeights::open(&hf).unwrap(),
        );
        let mut worst = (0f64, String::new());
        for name in orig.names() {
            let a = orig.read(&name).unwrap();
            if a.shape.len() < 2 {
                continue;
            }
            let b = back.read(&name).unwrap();
            let (mut num, mut den) = (0f64, 0f64);
            for (x, y) in a.data.iter().zip(&b.data) {
                num += f64::from(x - y).powi(2);
                den += f64::from(*x).powi(2);
            }
            let rel = (num / den).sqrt();
            if rel > worst.0 {
                worst = (rel, name);
            }
        }
        eprintln!(
            "{q}: worst relative RMS weight error {:.4} ({})",
            worst.0, worst.1
        );
        assert!(worst.0 < weights, "{q}: {} is {:.4} off", worst.1, worst.0);
        assert!(!cpp.greedy(&ids, 8).unwrap().is_empty());
    }
    // A failed quantisation leaves the target as it was and says why.
    let out = tmp.path().join("kept.gguf");
    std::fs::write(&out, b"kept").unwrap();
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    let e = quantize(&bad, &out, Quant::Q4KM, 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.gguf") && e.contains("quantiser failed"),
        "{e}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"kept");
}
