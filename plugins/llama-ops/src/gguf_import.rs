//! GGUF -> Hugging Face folder for `general.architecture = llama`: tensors dequantised, renamed
//! to HF names (one table below), Q/K rows un-permuted, a `config.json` written from the
//! metadata, and a `tokenizer.json` taken from a file or rebuilt from `tokenizer.ggml.*`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use puzzle_core::error::{Error, Result};
use puzzle_core::fsutil;
use puzzle_core::gguf::{GgufFile, GgufValue};
use puzzle_core::hf_folder::{self, SpecialTokens};
use puzzle_core::weights::{HostTensor, MAX_SHARD_BYTES, StoreDtype, write_weights_folder_with};
use serde_json::{Value, json};

/// Import settings.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Storage dtype of the written safetensors. bf16 matches how reference dumps of quantised
    /// checkpoints are usually made (dequantise, then round to bf16).
    pub dtype: StoreDtype,
    /// Use this `tokenizer.json` instead of rebuilding one from the metadata.
    pub tokenizer: Option<PathBuf>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: StoreDtype::Bf16,
            tokenizer: None,
        }
    }
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub tensors: usize,
    pub params: usize,
    /// Quantisation types found, with tensor counts.
    pub types: Vec<(String, usize)>,
    pub tokenizer_from: String,
}

/// GGUF tensor name -> HF name, for one layer's tensors (`blk.{i}.` stripped) and globals.
/// The single remapping table of the importer.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The HF name of a GGUF tensor, or `None` when it has no HF counterpart.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == gguf_name) {
        return Some(hf.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER_NAMES
        .iter()
        .find(|(g, _)| *g == tail)
        .map(|(_, hf)| format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's rotary permutation of Q/K rows: GGUF stores each head's rows as
/// `[head_dim/2, 2]` (interleaved pairs), HF as `[2, head_dim/2]` (rotate_half halves).
/// Works for weights `[heads*hd, in]` and biases `[heads*hd]`.
pub fn unpermute_rows(t: &HostTensor, n_heads: usize) -> Result<HostTensor> {
    // A scalar has no rows (a crafted file's `attn_q` may be one; found by fuzzing).
    let Some(&rows) = t.shape.first() else {
        return Err(Error::invalid(format!(
            "cannot un-permute a tensor of shape {:?}: it has no rows",
            t.shape
        )));
    };
    let cols: usize = t.shape[1..].iter().product();
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        return Err(Error::invalid(format!(
            "cannot un-permute {rows} rows over {n_heads} heads"
        )));
    }
    let half = rows / n_heads / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for a in 0..2 {
                let src = h * 2 * half + j * 2 + a; // GGUF row (h, j, a)
                let dst = h * 2 * half + a * half + j; // HF row (h, a, j)
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(HostTensor::new(t.shape.clone(), out))
}

fn meta_u64(g: &GgufFile, key: &str) -> Result<u64> {
    g.get(key)
        .and_then(GgufValue::as_u64)
        .ok_or_else(|| Error::Gguf {
            path: g.path().to_path_buf(),
            msg: format!("metadata `{key}` is missing or not an integer"),
        })
}

/// The HF `config.json` implied by a llama GGUF's metadata.
pub fn config_from_metadata(g: &GgufFile) -> Result<Value> {
    let arch = g
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .unwrap_or("(none)");
    if arch != "llama" {
        return Err(Error::unsupported(
            g.path(),
            format!("general.architecture `{arch}` (only `llama` GGUF files are imported)"),
        ));
    }
    if g.info("rope_freqs.weight").is_some() {
        return Err(Error::unsupported(
            g.path(),
            "the file carries `rope_freqs.weight` (Llama-3.1 style RoPE scaling stored as factors); \
             its llama3 parameters cannot be recovered from GGUF",
        ));
    }
    let hidden = meta_u64(g, "llama.embedding_length")?;
    let heads = meta_u64(g, "llama.attention.head_count")?;
    let kv = g
        .get("llama.attention.head_count_kv")
        .and_then(GgufValue::as_u64)
        .unwrap_or(heads);
    let layers = meta_u64(g, "llama.block_count")?;
    let ffn = meta_u64(g, "llama.feed_forward_length")?;
    let head_dim = g
        .get("llama.attention.key_length")
        .and_then(GgufValue::as_u64)
        .unwrap_or(hidden / heads.max(1));
    let vocab = match g.get("llama.vocab_size").and_then(GgufValue::as_u64) {
        Some(v) => v,
        None => g
            .info("token_embd.weight")
            .map(|t| t.shape()[0] as u64)
            .ok_or_else(|| Error::MissingTensor {
                key: "token_embd.weight".into(),
                location: g.path().display().to_string(),
            })?,
    };
    let eps = g
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(GgufValue::as_f64)
        .unwrap_or(1e-5);
    let theta = g
        .get("llama.rope.freq_base")
        .and_then(GgufValue::as_f64)
        .unwrap_or(10000.0);
    let ctx = g
        .get("llama.context_length")
        .and_then(GgufValue::as_u64)
        .unwrap_or(2048);
    let rope_scaling = match g.get("llama.rope.scaling.type").and_then(GgufValue::as_str) {
        None | Some("none") => Value::Null,
        Some("linear") => json!({
            "rope_type": "linear",
            "factor": g.get("llama.rope.scaling.factor").and_then(GgufValue::as_f64).unwrap_or(1.0)
        }),
        Some(other) => {
            return Err(Error::unsupported(
                g.path(),
                format!("llama.rope.scaling.type `{other}`"),
            ));
        }
    };
    let tied = g.info("output.weight").is_none();
    let tok = |k: &str| g.get(k).and_then(GgufValue::as_u64);
    let mut c = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tied,
        "vocab_size": vocab,
        "attention_bias": g.info("blk.0.attn_q.bias").is_some(),
        "mlp_bias": false,
        "torch_dtype": "bfloat16",
    });
    for (hf, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(v) = tok(key) {
            c[hf] = json!(v);
        }
    }
    Ok(c)
}

/// The Llama-3 split pattern (`tokenizer.ggml.pre = llama-bpe`).
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A `tokenizer.json` rebuilt from `tokenizer.ggml.*` metadata (GPT-2 style byte-level BPE).
pub fn tokenizer_from_metadata(g: &GgufFile) -> Result<Value> {
    let err = |msg: String| Error::Gguf {
        path: g.path().to_path_buf(),
        msg,
    };
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .unwrap_or("(none)");
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model `{model}`: only byte-level BPE (`gpt2`) is rebuilt; pass a tokenizer.json"
        )));
    }
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .ok_or_else(|| err("no tokenizer.ggml.tokens".into()))?;
    let merges = g
        .get("tokenizer.ggml.merges")
        .and_then(GgufValue::as_array)
        .ok_or_else(|| err("no tokenizer.ggml.merges".into()))?;
    let types = g
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array);
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let s = t
            .as_str()
            .ok_or_else(|| err(format!("token {i} is not a string")))?;
        vocab.insert(s.to_string(), json!(i));
        // 3 = control, 4 = user-defined (llama.cpp's token types).
        let ty = types
            .and_then(|t| t.get(i))
            .and_then(GgufValue::as_u64)
            .unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(
                json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": ty == 4, "special": ty == 3}),
            );
        }
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| m.as_str().map(|s| json!(s)))
        .collect::<Option<_>>()
        .ok_or_else(|| err("a merge is not a string".into()))?;
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "smollm" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre `{other}` has no known split pattern here; pass a tokenizer.json"
            )));
        }
    };
    let add_bos = matches!(
        g.get("tokenizer.ggml.add_bos_token"),
        Some(GgufValue::Bool(true))
    );
    let bos = g
        .get("tokenizer.ggml.bos_token_id")
        .and_then(GgufValue::as_u64);
    let post = match (add_bos, bos) {
        (true, Some(b)) => {
            let content = usize::try_from(b)
                .ok()
                .and_then(|i| tokens.get(i))
                .and_then(GgufValue::as_str)
                .ok_or_else(|| {
                    err(format!(
                        "tokenizer.ggml.bos_token_id {b} is not one of the {} tokens",
                        tokens.len()
                    ))
                })?;
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {content: {"id": content, "ids": [b], "tokens": [content]}}})
        }
        _ => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

/// Converts a llama GGUF into a Hugging Face folder at `out`.
pub fn import_gguf(
    path: &Path,
    out: &Path,
    opts: &ImportOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ImportReport> {
    let g = GgufFile::open(path)?;
    let config = config_from_metadata(&g)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let kv = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
    // Names and shapes from the GGUF's header; each tensor is dequantised only when its file
    // is written, so the model is never in memory whole.
    let mut infos: Vec<(String, Vec<usize>)> = Vec::new();
    let mut gguf_name: HashMap<String, String> = HashMap::new();
    let mut types: HashMap<String, usize> = HashMap::new();
    for info in &g.tensors {
        let Some(name) = hf_name(&info.name) else {
            return Err(Error::Gguf {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{}` has no Hugging Face Llama counterpart",
                    info.name
                ),
            });
        };
        *types.entry(info.ggml_type.name()).or_default() += 1;
        infos.push((name.clone(), info.shape()));
        gguf_name.insert(name, info.name.clone());
    }
    let total = infos.len();
    let mut done = 0;
    let mut make = |name: &str| -> Result<HostTensor> {
        progress(done, total);
        done += 1;
        let src = &gguf_name[name];
        let mut t = g.tensor_f32(src)?;
        if src.contains(".attn_q.") {
            t = unpermute_rows(&t, heads)?;
        } else if src.contains(".attn_k.") {
            t = unpermute_rows(&t, kv)?;
        }
        if opts.dtype == StoreDtype::Bf16 {
            t.round_to_bf16();
        }
        Ok(t)
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut config = config;
    config["torch_dtype"] = json!(opts.dtype.torch_name());
    let tokenizer_from = match &opts.tokenizer {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            fsutil::write_atomic(&out.join("tokenizer.json"), &bytes)?;
            p.display().to_string()
        }
        None => {
            let t = tokenizer_from_metadata(&g)?;
            fsutil::write_json(&out.join("tokenizer.json"), &t)?;
            "GGUF metadata (tokenizer.ggml.*)".to_string()
        }
    };
    let params = infos.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    write_weights_folder_with(
        out,
        &infos,
        opts.dtype,
        Some(HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (
                "source".to_string(),
                format!(
                    "puzzle import gguf {}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
            ),
        ])),
        MAX_SHARD_BYTES,
        &mut make,
    )?;
    progress(total, total);
    // The tokenizer side files transformers and llama.cpp's converter expect, with the GGUF's
    // chat template when it has one.
    let template = g.get("tokenizer.chat_template").and_then(GgufValue::as_str);
    hf_folder::complete(out, &SpecialTokens::from_config(&config), template)?;
    // config.json last: a folder with a config is a complete import.
    fsutil::write_json(&out.join("config.json"), &config)?;
    let mut types: Vec<(String, usize)> = types.into_iter().collect();
    types.sort();
    Ok(ImportReport {
        tensors: total,
        params,
        types,
        tokenizer_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask fuzz` (target `gguf`): a crafted file's `attn_q` of no dimensions
    /// indexed an empty shape.
    #[test]
    fn unpermuting_a_scalar_is_an_error_not_a_panic() {
        // (and, below, a BOS id past the vocabulary: the same target's next find)
        let e = unpermute_rows(&HostTensor::new(vec![], vec![1.0]), 2).unwrap_err();
        assert!(e.to_string().contains("no rows"), "{e}");
    }

    #[test]
    fn a_bos_id_past_the_vocabulary_is_an_error_not_a_panic() {
        use puzzle_core::gguf::write_gguf;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bos.gguf");
        let s = |v: &str| GgufValue::String(v.into());
        let meta = [
            ("tokenizer.ggml.model".to_string(), s("gpt2")),
            (
                "tokenizer.ggml.tokens".to_string(),
                GgufValue::Array(vec![s("a"), s("b")]),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                GgufValue::Array(vec![]),
            ),
            (
                "tokenizer.ggml.add_bos_token".to_string(),
                GgufValue::Bool(true),
            ),
            (
                "tokenizer.ggml.bos_token_id".to_string(),
                GgufValue::U32(1024),
            ),
        ];
        write_gguf(&p, &meta, &[]).unwrap();
        let e = tokenizer_from_metadata(&GgufFile::open(&p).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("bos_token_id 1024 is not one of the 2 tokens"),
            "{e}"
        );
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape)
        let (heads, hd, cols) = (2, 4, 3);
        let rows = heads * hd;
        let hf = HostTensor::new(
            vec![rows, cols],
            (0..rows * cols).map(|x| x as f32).collect(),
        );
        let mut permuted = vec![0f32; rows * cols];
        for h in 0..heads {
            for a in 0..2 {
                for j in 0..hd / 2 {
                    let src = h * hd + a * hd / 2 + j;
                    let dst = h * hd + j * 2 + a;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf.data[src * cols..(src + 1) * cols]);
                }
            }
        }
        let gg = HostTensor::new(vec![rows, cols], permuted);
        assert_eq!(unpermute_rows(&gg, heads).unwrap(), hf);
    }
}
