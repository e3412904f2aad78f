//! The side files a Hugging Face model folder needs besides `config.json`, the weights and
//! `tokenizer.json`: `tokenizer_config.json` (without it `AutoTokenizer` falls back to the model
//! config and fails on architectures it does not know, and llama.cpp's `convert_hf_to_gguf.py`
//! cannot read the vocabulary), `special_tokens_map.json` and `generation_config.json`.
//!
//! They are derived from `tokenizer.json` (the added tokens and their flags) and the special
//! token ids of `config.json`; a file already in the folder (copied from the parent) is kept.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::fsutil;

/// The special tokens and limits of a model, from its `config.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// The first is the tokenizer's `eos_token`; all are generation stops.
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    pub max_len: Option<usize>,
}

impl SpecialTokens {
    /// Reads `bos_token_id`, `eos_token_id` (an id or a list), `pad_token_id` and
    /// `max_position_embeddings` of a `config.json`.
    pub fn from_config(config: &Value) -> Self {
        let id = |k: &str| config.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let eos = match config.get("eos_token_id") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => vec![],
        };
        SpecialTokens {
            bos: id("bos_token_id"),
            eos,
            pad: id("pad_token_id"),
            max_len: config
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
        }
    }
}

/// `tokenizer.json`'s added tokens by id, and the token text of any id.
struct Vocab {
    added: Vec<Value>,
    by_id: std::collections::BTreeMap<u32, String>,
}

impl Vocab {
    fn read(path: &Path) -> Result<Self> {
        let t: Value = fsutil::read_json(path)?;
        let added: Vec<Value> = t
            .get("added_tokens")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut by_id = std::collections::BTreeMap::new();
        if let Some(v) = t.pointer("/model/vocab").and_then(Value::as_object) {
            for (tok, id) in v {
                if let Some(id) = id.as_u64() {
                    by_id.insert(id as u32, tok.clone());
                }
            }
        }
        for a in &added {
            if let (Some(id), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
                by_id.insert(id as u32, c.to_string());
            }
        }
        Ok(Vocab { added, by_id })
    }

    fn text(&self, id: u32, path: &Path) -> Result<String> {
        self.by_id.get(&id).cloned().ok_or_else(|| {
            Error::config(
                path,
                format!("special token id {id} (config.json) is not in the vocabulary"),
            )
        })
    }

    /// A token as transformers' `AddedToken` dict (its flags from `added_tokens` when listed).
    fn added_token(&self, content: &str) -> Value {
        let a = self.added.iter().find(|a| a["content"] == content);
        let flag = |k: &str| a.and_then(|a| a[k].as_bool()).unwrap_or(false);
        json!({
            "content": content,
            "lstrip": flag("lstrip"),
            "normalized": flag("normalized"),
            "rstrip": flag("rstrip"),
            "single_word": flag("single_word"),
        })
    }
}

/// The special tokens as `(role, text)`: `bos_token`, `eos_token`, `pad_token`.
fn roles(v: &Vocab, s: &SpecialTokens, path: &Path) -> Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    for (role, id) in [
        ("bos_token", s.bos),
        ("eos_token", s.eos.first().copied()),
        ("pad_token", s.pad),
    ] {
        if let Some(id) = id {
            out.push((role, v.text(id, path)?));
        }
    }
    Ok(out)
}

fn tokenizer_config(
    v: &Vocab,
    roles: &[(&'static str, String)],
    s: &SpecialTokens,
    chat_template: Option<&str>,
) -> Value {
    let mut decoder = Map::new();
    for a in &v.added {
        if let Some(id) = a["id"].as_u64() {
            let mut e = a.clone();
            if let Some(o) = e.as_object_mut() {
                o.remove("id");
            }
            decoder.insert(id.to_string(), e);
        }
    }
    let mut c = Map::new();
    c.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (role, text) in roles {
        c.insert((*role).into(), json!(text));
    }
    c.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(n) = s.max_len {
        c.insert("model_max_length".into(), json!(n));
    }
    c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    if let Some(t) = chat_template {
        c.insert("chat_template".into(), json!(t));
    }
    Value::Object(c)
}

fn generation_config(s: &SpecialTokens) -> Value {
    let mut g = Map::new();
    g.insert("_from_model_config".into(), json!(true));
    if let Some(b) = s.bos {
        g.insert("bos_token_id".into(), json!(b));
    }
    match s.eos.as_slice() {
        [] => {}
        [e] => {
            g.insert("eos_token_id".into(), json!(e));
        }
        many => {
            g.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(p) = s.pad {
        g.insert("pad_token_id".into(), json!(p));
    }
    Value::Object(g)
}

/// Writes the side files `dir` lacks, from its `tokenizer.json` and `special`; returns the names
/// written. Nothing is written when the folder has no `tokenizer.json`.
pub fn complete(
    dir: &Path,
    special: &SpecialTokens,
    chat_template: Option<&str>,
) -> Result<Vec<&'static str>> {
    let tok = dir.join("tokenizer.json");
    if !tok.is_file() {
        return Ok(vec![]);
    }
    let v = Vocab::read(&tok)?;
    let roles = roles(&v, special, &dir.join("config.json"))?;
    let mut written = Vec::new();
    let mut write = |name: &'static str, value: Value| -> Result<()> {
        let p = dir.join(name);
        if !p.is_file() {
            fsutil::write_json(&p, &value)?;
            written.push(name);
        }
        Ok(())
    };
    write(
        "tokenizer_config.json",
        tokenizer_config(&v, &roles, special, chat_template),
    )?;
    let map: Map<String, Value> = roles
        .iter()
        .map(|(role, text)| ((*role).to_string(), v.added_token(text)))
        .collect();
    write("special_tokens_map.json", Value::Object(map))?;
    write("generation_config.json", generation_config(special))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Value {
        json!({
            "added_tokens": [
                {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}
            ],
            "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "<|im_start|>": 1, "a": 2, "b": 3}}
        })
    }

    #[test]
    fn side_files_follow_the_config_ids_and_the_tokenizer_flags() {
        let dir = tempfile::tempdir().unwrap();
        fsutil::write_json(&dir.path().join("tokenizer.json"), &tokenizer()).unwrap();
        let config =
            json!({"bos_token_id": 1, "eos_token_id": [0, 3], "max_position_embeddings": 64});
        let s = SpecialTokens::from_config(&config);
        assert_eq!(s.eos, [0, 3]);
        let written = complete(dir.path(), &s, Some("{{ messages }}")).unwrap();
        assert_eq!(
            written,
            [
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json"
            ]
        );
        let read = |n: &str| -> Value { fsutil::read_json(&dir.path().join(n)).unwrap() };
        let tc = read("tokenizer_config.json");
        assert_eq!(tc["bos_token"], "<|im_start|>");
        assert_eq!(tc["eos_token"], "<|endoftext|>");
        assert!(tc.get("pad_token").is_none());
        assert_eq!(tc["model_max_length"], 64);
        assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(tc["chat_template"], "{{ messages }}");
        assert_eq!(tc["added_tokens_decoder"]["1"]["content"], "<|im_start|>");
        assert_eq!(tc["added_tokens_decoder"]["1"]["special"], true);
        let sm = read("special_tokens_map.json");
        assert_eq!(sm["bos_token"]["content"], "<|im_start|>");
        assert_eq!(sm["eos_token"]["normalized"], false);
        let g = read("generation_config.json");
        assert_eq!(g["bos_token_id"], 1);
        assert_eq!(g["eos_token_id"], json!([0, 3]));
    }

    #[test]
    fn files_already_there_are_kept_and_a_bad_id_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fsutil::write_json(&dir.path().join("tokenizer.json"), &tokenizer()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "{\"mine\": 1}").unwrap();
        let s = SpecialTokens {
            eos: vec![0],
            ..Default::default()
        };
        let written = complete(dir.path(), &s, None).unwrap();
        assert_eq!(
            written,
            ["special_tokens_map.json", "generation_config.json"]
        );
        let tc: Value = fsutil::read_json(&dir.path().join("tokenizer_config.json")).unwrap();
        assert_eq!(tc, json!({"mine": 1}));
        let bad = SpecialTokens {
            bos: Some(99),
            ..Default::default()
        };
        let e = complete(dir.path(), &bad, None).unwrap_err().to_string();
        assert!(
            e.contains("special token id 99") && e.contains("config.json"),
            "{e}"
        );
        // No tokenizer.json: nothing to derive from, nothing written.
        let empty = tempfile::tempdir().unwrap();
        assert!(complete(empty.path(), &s, None).unwrap().is_empty());
    }
}
