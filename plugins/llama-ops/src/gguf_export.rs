//! `puzzle export gguf`: a Llama or DeciLM (Puzzle child) checkpoint folder as a GGUF v3 file
//! for llama.cpp, written by our code (no Python, no converter): arch `llama` for homogeneous
//! models, `deci` for heterogeneous ones (per-layer KV heads and FFN widths, linear and no-op
//! attention), the tokenizer as `tokenizer.ggml.*` metadata.
//!
//! llama.cpp's `deci` graph has limits (`FORMATS.md`): a no-op FFN after a real or linear
//! attention loses that attention's output, a no-op FFN in the last layer crashes it, and a
//! linear FFN cannot be loaded. The first two are re-expressed exactly: a SwiGLU of the smallest
//! width (32) with zero weights adds exactly nothing, as a no-op adds nothing; each is reported.
//! A linear FFN, sliding windows and biases on the output projection are refused with the layer
//! named.

use std::path::Path;

use puzzle_core::error::{Error, Result};
use puzzle_core::family::{read_spec, static_families};
use puzzle_core::fsutil;
use puzzle_core::gguf::{GgmlType, GgufValue, TensorGroups, write_gguf_groups};
use puzzle_core::spec::{AttentionSpec, FfnSpec, ModelSpec, RopeScaling, RopeSpec};
use puzzle_core::weights::{HostTensor, SafetensorsWeights, WeightSource};
use serde_json::Value;

use crate::gguf_import::LLAMA3_SPLIT;

/// Width of the zero FFN that stands in for a no-op FFN llama.cpp cannot run (a Q8_0 block).
pub const ZERO_FFN_WIDTH: usize = puzzle_core::capabilities::LLAMACPP_ZERO_FFN_WIDTH;

/// What `export_gguf` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufExportReport {
    /// `llama` or `deci`.
    pub arch: &'static str,
    pub tensors: usize,
    /// The `tokenizer.ggml.pre` written.
    pub pre: &'static str,
    /// Re-expressions and type fallbacks, one line each.
    pub notes: Vec<String>,
}

/// How one layer is written for llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LayerPlan {
    /// `None` no-op, `Some(0)` linear, `Some(k)` grouped-query attention with `k` KV heads.
    attn_kv: Option<usize>,
    /// 0: no-op; otherwise the SwiGLU width.
    ffn: usize,
    /// The FFN is a zero SwiGLU standing in for a no-op.
    zero_ffn: bool,
    /// The attention is a zero linear attention standing in for a no-op.
    zero_attn: bool,
}

fn plan(spec: &ModelSpec, notes: &mut Vec<String>) -> Result<Vec<LayerPlan>> {
    let n = spec.layers.len();
    let mut out = Vec::with_capacity(n);
    for (l, layer) in spec.layers.iter().enumerate() {
        let attn_kv = match &layer.attention {
            AttentionSpec::Gqa {
                window: Some(w), ..
            } => {
                return Err(Error::invalid(format!(
                    "layer {l}: llama.cpp has no per-layer sliding window (window {w}); export without windowed attention"
                )));
            }
            AttentionSpec::Gqa { o_bias: true, .. } => {
                return Err(Error::invalid(format!(
                    "layer {l}: llama.cpp's llama/deci graphs have no output-projection bias"
                )));
            }
            AttentionSpec::Gqa { num_kv_heads, .. } => Some(*num_kv_heads),
            AttentionSpec::Linear => Some(0),
            // llama.cpp takes the head size from layer 0's head count: with none there, every
            // attention of the model gets size 0. A zero linear attention adds exactly nothing.
            AttentionSpec::NoOp if l == 0 => {
                notes.push(
                    "layer 0: no-op attention written as a zero linear attention (llama.cpp reads the head size from layer 0)"
                        .to_string(),
                );
                Some(0)
            }
            AttentionSpec::NoOp => None,
        };
        let zero_attn = l == 0 && layer.attention == AttentionSpec::NoOp;
        let (ffn, zero_ffn) = match &layer.ffn {
            FfnSpec::SwiGlu { bias: true, .. } => {
                return Err(Error::invalid(format!(
                    "layer {l}: llama.cpp's llama/deci graphs have no FFN bias"
                )));
            }
            FfnSpec::SwiGlu {
                intermediate_size, ..
            } => (*intermediate_size, false),
            FfnSpec::Linear => {
                return Err(Error::invalid(format!(
                    "layer {l}: llama.cpp cannot load a linear FFN (`mlp.linear_mlp.weight`); search without `ffn:linear` for this engine"
                )));
            }
            // llama.cpp skips the rest of a layer whose FFN width is 0, attention output
            // included, and crashes on a last layer without FFN: a zero FFN is exact instead.
            FfnSpec::NoOp if attn_kv.is_some() || l + 1 == n => {
                notes.push(format!(
                    "layer {l}: no-op FFN written as a zero SwiGLU of width {ZERO_FFN_WIDTH} (llama.cpp cannot run a no-op FFN {})",
                    if attn_kv.is_some() {
                        "after an attention"
                    } else {
                        "in the last layer"
                    }
                ));
                (ZERO_FFN_WIDTH, true)
            }
            FfnSpec::NoOp => (0, false),
        };
        out.push(LayerPlan {
            attn_kv,
            ffn,
            zero_ffn,
            zero_attn,
        });
    }
    Ok(out)
}

/// llama.cpp's row order for Q and K: within each head, the two rotary halves interleaved
/// (the inverse of [`crate::gguf_import::unpermute_rows`]).
pub fn permute_rows(t: &HostTensor, n_heads: usize) -> Result<HostTensor> {
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        return Err(Error::invalid(format!(
            "cannot permute {rows} rows over {n_heads} heads"
        )));
    }
    let half = rows / n_heads / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_heads {
        for a in 0..2 {
            for j in 0..half {
                let src = h * 2 * half + a * half + j; // HF row (h, a, j)
                let dst = h * 2 * half + j * 2 + a; // GGUF row (h, j, a)
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(HostTensor::new(t.shape.clone(), out))
}

/// The `tokenizer.ggml.pre` that splits text exactly as `tokenizer.json`'s pre-tokenizer.
fn pre_tokenizer_name(tok: &Value, path: &Path) -> Result<&'static str> {
    let pre = &tok["pre_tokenizer"];
    let is_byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel"
            && v["use_regex"].as_bool().unwrap_or(true) == regex
            && !v["add_prefix_space"].as_bool().unwrap_or(false)
    };
    if is_byte_level(pre, true) {
        return Ok("gpt-2");
    }
    if pre["type"] == "Sequence"
        && let Some([split, bl]) = pre["pretokenizers"].as_array().map(Vec::as_slice)
        && split["type"] == "Split"
        && split["pattern"]["Regex"] == LLAMA3_SPLIT
        && split["behavior"] == "Isolated"
        && is_byte_level(bl, false)
    {
        return Ok("llama-bpe");
    }
    Err(Error::unsupported(
        path,
        format!(
            "pre-tokenizer {} has no llama.cpp equivalent here (known: GPT-2 byte level -> `gpt-2`, Llama-3 split + byte level -> `llama-bpe`)",
            serde_json::to_string(pre).unwrap_or_default()
        ),
    ))
}

/// Every id's token text and llama.cpp token type (1 normal, 3 control, 4 user-defined, 5 unused
/// for embedding rows no token has).
fn token_table(tok: &Value, vocab_size: usize, path: &Path) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| Error::config(path, "model.vocab is not an object"))?;
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![1i32; vocab_size];
    let mut seen = vec![false; vocab_size];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let i = id as usize;
        if i >= tokens.len() {
            return Err(Error::config(
                path,
                format!(
                    "token `{text}` has id {id}, past the model's vocab_size {}",
                    vocab_size
                ),
            ));
        }
        tokens[i] = text.to_string();
        types[i] = ty;
        seen[i] = true;
        Ok(())
    };
    for (t, id) in vocab {
        place(id.as_u64().unwrap_or(u64::MAX), t, 1)?;
    }
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let special = a["special"].as_bool().unwrap_or(false);
        // 3 = control, 4 = user-defined (llama.cpp's token types).
        place(
            a["id"].as_u64().unwrap_or(u64::MAX),
            a["content"].as_str().unwrap_or_default(),
            if special { 3 } else { 4 },
        )?;
    }
    // Rows of the embedding no token uses (padding to a round vocab size).
    for (i, s) in seen.iter().enumerate() {
        if !s {
            tokens[i] = format!("[PAD{i}]");
            types[i] = 5; // unused
        }
    }
    Ok((tokens, types))
}

/// `tokenizer.ggml.*` from `tokenizer.json` (byte-level BPE) and the spec's special ids.
fn tokenizer_metadata(
    dir: &Path,
    spec: &ModelSpec,
) -> Result<(Vec<(String, GgufValue)>, &'static str)> {
    let path = dir.join("tokenizer.json");
    let tok: Value = fsutil::read_json(&path)?;
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return Err(Error::unsupported(
            &path,
            format!(
                "tokenizer model {}: only byte-level BPE is exported",
                model["type"]
            ),
        ));
    }
    let pre = pre_tokenizer_name(&tok, &path)?;
    let (tokens, types) = token_table(&tok, spec.vocab_size, &path)?;
    let merges: Vec<GgufValue> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => GgufValue::String(s.clone()),
            Value::Array(p) => GgufValue::String(
                p.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => GgufValue::String(String::new()),
        })
        .collect();
    let add_bos = tok["post_processor"]["single"]
        .as_array()
        .and_then(|s| s.first())
        .is_some_and(|f| f.get("SpecialToken").is_some());
    let mut m: Vec<(String, GgufValue)> = vec![
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), GgufValue::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(add_bos),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            GgufValue::Bool(false),
        ),
    ];
    if let Some(b) = spec.bos_token_id {
        m.push(("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(b)));
    }
    if let Some(&e) = spec.eos_token_ids.first() {
        m.push(("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(e)));
    }
    let config: Value = fsutil::read_json(&dir.join("config.json"))?;
    if let Some(p) = config["pad_token_id"].as_u64() {
        m.push((
            "tokenizer.ggml.padding_token_id".into(),
            GgufValue::U32(p as u32),
        ));
    }
    if let Some(t) = chat_template(dir) {
        m.push(("tokenizer.chat_template".into(), GgufValue::String(t)));
    }
    Ok((m, pre))
}

/// The chat template of a folder: `chat_template.jinja`, else `tokenizer_config.json`'s.
fn chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let c: Value = fsutil::read_json(&dir.join("tokenizer_config.json")).ok()?;
    c["chat_template"].as_str().map(str::to_string)
}

/// Architecture metadata: scalars for `llama`, per-layer arrays for `deci`.
fn model_metadata(
    spec: &ModelSpec,
    arch: &'static str,
    layers: &[LayerPlan],
    name: &str,
    ty: GgmlType,
) -> Vec<(String, GgufValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    let file_type = match ty {
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::Bf16 => 32,
        _ => 0,
    };
    let mut m: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
        ),
        ("general.name".into(), GgufValue::String(name.into())),
        ("general.file_type".into(), GgufValue::U32(file_type)),
        (k("vocab_size"), GgufValue::U32(spec.vocab_size as u32)),
        (
            k("context_length"),
            GgufValue::U32(spec.max_position_embeddings as u32),
        ),
        (
            k("embedding_length"),
            GgufValue::U32(spec.hidden_size as u32),
        ),
        (k("block_count"), GgufValue::U32(layers.len() as u32)),
        (k("rope.freq_base"), GgufValue::F32(spec.rope.theta as f32)),
        (
            k("rope.dimension_count"),
            GgufValue::U32(spec.head_dim as u32),
        ),
        (
            k("attention.key_length"),
            GgufValue::U32(spec.head_dim as u32),
        ),
        (
            k("attention.value_length"),
            GgufValue::U32(spec.head_dim as u32),
        ),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(spec.rms_norm_eps as f32),
        ),
    ];
    let heads: Vec<i32> = layers
        .iter()
        .map(|p| p.attn_kv.map_or(0, |_| spec.num_attention_heads as i32))
        .collect();
    let kv: Vec<i32> = layers
        .iter()
        .map(|p| p.attn_kv.unwrap_or(0) as i32)
        .collect();
    let ff: Vec<i32> = layers.iter().map(|p| p.ffn as i32).collect();
    let arr = |v: Vec<i32>| GgufValue::Array(v.into_iter().map(GgufValue::I32).collect());
    if arch == "llama" {
        m.push((k("attention.head_count"), GgufValue::U32(heads[0] as u32)));
        m.push((k("attention.head_count_kv"), GgufValue::U32(kv[0] as u32)));
        m.push((k("feed_forward_length"), GgufValue::U32(ff[0] as u32)));
    } else {
        m.push((k("attention.head_count"), arr(heads)));
        m.push((k("attention.head_count_kv"), arr(kv)));
        m.push((k("feed_forward_length"), arr(ff)));
    }
    m
}

/// RoPE frequency factors (`rope_freqs.weight`) for scaled RoPE: llama.cpp divides each base
/// frequency by its factor, so the factor is base / scaled.
fn rope_factors(rope: &RopeSpec, head_dim: usize) -> Option<HostTensor> {
    if rope.scaling == RopeScaling::Default {
        return None;
    }
    let base = RopeSpec {
        theta: rope.theta,
        scaling: RopeScaling::Default,
    }
    .inv_freq(head_dim);
    let scaled = rope.inv_freq(head_dim);
    let f: Vec<f32> = base
        .iter()
        .zip(&scaled)
        .map(|(b, s)| (b / s) as f32)
        .collect();
    Some(HostTensor::new(vec![f.len()], f))
}

/// A tensor's storage type: norms and other vectors stay f32 (as llama.cpp's converter keeps
/// them); Q8_0 needs rows of whole blocks, else F16 with a note.
fn storage(t: &HostTensor, ty: GgmlType, name: &str, notes: &mut Vec<String>) -> GgmlType {
    if t.shape.len() < 2 {
        return GgmlType::F32;
    }
    if ty == GgmlType::Q8_0 && !t.shape.last().copied().unwrap_or(0).is_multiple_of(32) {
        notes.push(format!(
            "{name}: rows of {} values are not Q8_0 blocks; stored F16",
            t.shape.last().copied().unwrap_or(0)
        ));
        return GgmlType::F16;
    }
    ty
}

/// The tensors of one layer, in llama.cpp's names and row order.
fn layer_tensors(
    w: &dyn WeightSource,
    spec: &ModelSpec,
    l: usize,
    plan: LayerPlan,
) -> Result<Vec<(String, HostTensor)>> {
    let LayerPlan {
        attn_kv,
        ffn,
        zero_ffn,
        zero_attn,
    } = plan;
    let hf = |s: &str| format!("model.layers.{l}.{s}");
    let gg = |s: &str| format!("blk.{l}.{s}");
    let mut out = Vec::new();
    match attn_kv {
        None => {}
        Some(0) if zero_attn => {
            let h = spec.hidden_size;
            out.push((
                gg("attn_norm.weight"),
                HostTensor::new(vec![h], vec![1.0; h]),
            ));
            out.push((
                gg("attn_output.weight"),
                HostTensor::new(vec![h, h], vec![0.0; h * h]),
            ));
        }
        Some(0) => {
            out.push((
                gg("attn_norm.weight"),
                w.read(&hf("input_layernorm.weight"))?,
            ));
            out.push((
                gg("attn_output.weight"),
                w.read(&hf("self_attn.linear_attn.weight"))?,
            ));
        }
        Some(kv) => {
            out.push((
                gg("attn_norm.weight"),
                w.read(&hf("input_layernorm.weight"))?,
            ));
            let heads = spec.num_attention_heads;
            for (p, g, perm) in [
                ("q_proj", "attn_q", Some(heads)),
                ("k_proj", "attn_k", Some(kv)),
                ("v_proj", "attn_v", None),
            ] {
                for kind in ["weight", "bias"] {
                    let name = hf(&format!("self_attn.{p}.{kind}"));
                    if kind == "bias" && w.shape(&name).is_none() {
                        continue;
                    }
                    let t = w.read(&name)?;
                    let t = match perm {
                        Some(n) => permute_rows(&t, n)?,
                        None => t,
                    };
                    out.push((gg(&format!("{g}.{kind}")), t));
                }
            }
            out.push((
                gg("attn_output.weight"),
                w.read(&hf("self_attn.o_proj.weight"))?,
            ));
        }
    }
    if ffn > 0 {
        if zero_ffn {
            let h = spec.hidden_size;
            out.push((
                gg("ffn_norm.weight"),
                HostTensor::new(vec![h], vec![1.0; h]),
            ));
            for (g, shape) in [
                ("ffn_gate", vec![ffn, h]),
                ("ffn_up", vec![ffn, h]),
                ("ffn_down", vec![h, ffn]),
            ] {
                let n = shape.iter().product();
                out.push((
                    gg(&format!("{g}.weight")),
                    HostTensor::new(shape, vec![0.0; n]),
                ));
            }
        } else {
            out.push((
                gg("ffn_norm.weight"),
                w.read(&hf("post_attention_layernorm.weight"))?,
            ));
            for (p, g) in [
                ("gate_proj", "ffn_gate"),
                ("up_proj", "ffn_up"),
                ("down_proj", "ffn_down"),
            ] {
                out.push((
                    gg(&format!("{g}.weight")),
                    w.read(&hf(&format!("mlp.{p}.weight")))?,
                ));
            }
        }
    }
    Ok(out)
}

/// Writes the checkpoint folder `dir` (a `llama` or `decilm` family model) as `out`, with
/// matrices stored as `ty` (F32, F16, BF16 or Q8_0).
pub fn export_gguf(dir: &Path, out: &Path, ty: GgmlType) -> Result<GgufExportReport> {
    let spec = read_spec(&static_families(), dir)?;
    if spec.family != "llama" && spec.family != "decilm" {
        return Err(Error::unsupported(
            dir.join("config.json"),
            format!(
                "GGUF export reads the llama and decilm families, not `{}`",
                spec.family
            ),
        ));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let w = SafetensorsWeights::open(dir)?;
    write_model_gguf(&spec, &w, Vocab::Folder(dir), &name, out, ty)
}

/// Where the GGUF's tokenizer comes from.
#[derive(Clone, Copy, Debug)]
pub enum Vocab<'a> {
    /// The folder's `tokenizer.json` (and chat template), as `tokenizer.ggml.*`.
    Folder(&'a Path),
    /// None (`tokenizer.ggml.model = "no_vocab"`, `vocab_size` dummy tokens): for models that
    /// are only timed, never asked to read text.
    None,
}

/// Writes the model `spec` with weights `w` (HF names) as the GGUF `out`, with matrices stored
/// as `ty`; llama.cpp's limits are re-expressed or refused as the module says.
pub fn write_model_gguf(
    spec: &ModelSpec,
    w: &dyn WeightSource,
    vocab: Vocab,
    name: &str,
    out: &Path,
    ty: GgmlType,
) -> Result<GgufExportReport> {
    let mut notes = Vec::new();
    let layers = plan(spec, &mut notes)?;
    let homogeneous = layers.windows(2).all(|p| p[0] == p[1])
        && layers
            .first()
            .is_some_and(|p| p.attn_kv.is_some_and(|k| k > 0) && p.ffn > 0 && !p.zero_ffn);
    let arch = if homogeneous { "llama" } else { "deci" };
    let mut metadata = model_metadata(spec, arch, &layers, name, ty);
    let pre = match vocab {
        Vocab::Folder(dir) => {
            let (tok, pre) = tokenizer_metadata(dir, spec)?;
            metadata.extend(tok);
            pre
        }
        Vocab::None => {
            metadata.push((
                "tokenizer.ggml.model".into(),
                GgufValue::String("no_vocab".into()),
            ));
            "none"
        }
    };
    // A layer's tensors at a time: the model is never in memory whole.
    let groups = ModelTensors {
        spec,
        w,
        layers: &layers,
    };
    let written = write_gguf_groups(out, &metadata, &groups, |n, t| {
        storage(t, ty, n, &mut notes)
    })?;
    Ok(GgufExportReport {
        arch,
        tensors: written,
        pre,
        notes,
    })
}

/// The GGUF tensors of a model: group 0 the embeddings (and RoPE factors), then one group per
/// layer, then the final norm and the untied head.
struct ModelTensors<'a> {
    spec: &'a ModelSpec,
    w: &'a dyn WeightSource,
    layers: &'a [LayerPlan],
}

impl TensorGroups for ModelTensors<'_> {
    fn groups(&self) -> usize {
        self.layers.len() + 2
    }

    fn group(&self, i: usize) -> Result<Vec<(String, HostTensor)>> {
        let (spec, w) = (self.spec, self.w);
        if i == 0 {
            let mut g = vec![(
                "token_embd.weight".to_string(),
                w.read("model.embed_tokens.weight")?,
            )];
            if let Some(f) = rope_factors(&spec.rope, spec.head_dim) {
                g.push(("rope_freqs.weight".into(), f));
            }
            return Ok(g);
        }
        if let Some(p) = self.layers.get(i - 1) {
            return layer_tensors(w, spec, i - 1, *p);
        }
        let mut g = vec![(
            "output_norm.weight".to_string(),
            w.read("model.norm.weight")?,
        )];
        if !spec.tie_word_embeddings {
            g.push(("output.weight".into(), w.read("lm_head.weight")?));
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_import::unpermute_rows;

    #[test]
    fn permute_is_the_inverse_of_the_import_unpermute() {
        let t = HostTensor::new(vec![16, 3], (0..48).map(|x| x as f32).collect());
        for heads in [1, 2, 4] {
            let p = permute_rows(&t, heads).unwrap();
            assert_ne!(p.data, t.data);
            assert_eq!(unpermute_rows(&p, heads).unwrap().data, t.data);
        }
        assert!(permute_rows(&t, 3).is_err());
    }
}
