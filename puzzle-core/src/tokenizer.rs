//! Tokenizers from `tokenizer.json` (the `tokenizers` crate, fancy-regex for Llama-3 style
//! split patterns; never the network).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A loaded tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.path.display())
    }
}

/// A `TemplateProcessing` post-processor (alone or in a `Sequence`) names only special tokens
/// it defines: tokenizers 0.23.2 reads one that does not and then panics ("no entry found for
/// key") on the first encode with special tokens (found by `cargo xtask fuzz`). Told apart by
/// structure, not by `type`: tokenizers reads its post-processors untagged, so a template
/// whose `type` is misspelt still loads as one.
fn check_templates(p: &serde_json::Value) -> std::result::Result<(), String> {
    if let Some(inner) = p.get("processors").and_then(|v| v.as_array()) {
        inner.iter().try_for_each(check_templates)?;
    }
    let defined = p.get("special_tokens").and_then(|s| s.as_object());
    for key in ["single", "pair"] {
        for piece in p.get(key).and_then(|v| v.as_array()).into_iter().flatten() {
            let Some(id) = piece
                .get("SpecialToken")
                .and_then(|t| t.get("id"))
                .and_then(|id| id.as_str())
            else {
                continue;
            };
            if !defined.is_some_and(|d| d.contains_key(id)) {
                return Err(format!(
                    "post_processor.{key} uses special token `{id}`, which its special_tokens do not define"
                ));
            }
        }
    }
    Ok(())
}

impl Tokenizer {
    /// Loads `tokenizer.json` (a file, or a folder containing one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !path.is_file() {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json"),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_bytes(&bytes, &path)
    }

    /// Parses a `tokenizer.json` already in memory; `path` only names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        // JSON first, then the tokenizer: tokenizers 0.23.2 panics (`expect("Helper")` in its
        // decoder deserializer) instead of erroring on some text that is not JSON at all, such
        // as a control character inside a string (found by `cargo xtask fuzz`).
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not JSON: {e}")))?;
        if let Some(p) = json.get("post_processor") {
            check_templates(p).map_err(err)?;
        }
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(json).map_err(|e| err(e.to_string()))?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Wraps an in-memory tokenizer (e.g. one just trained).
    pub fn from_inner(inner: tokenizers::Tokenizer, path: PathBuf) -> Self {
        Tokenizer { inner, path }
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; `add_special` applies the post-processor (e.g. a BOS token).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The special token that separates documents; also BOS and EOS of models we train.
pub const DOC_SEPARATOR: &str = "<|endoftext|>";

/// Trains a byte-level BPE tokenizer (GPT-2 style: every byte representable, no unknown token)
/// on `texts`, with [`DOC_SEPARATOR`] as id 0, prepended to every encoding as BOS.
pub fn train_bpe<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
    path_for_errors: &Path,
) -> Result<Tokenizer> {
    use tokenizers::AddedToken;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::template::TemplateProcessing;

    let err = |msg: String| Error::Tokenizer {
        path: path_for_errors.to_path_buf(),
        msg,
    };
    if vocab_size < 257 {
        return Err(err(format!(
            "vocabulary size {vocab_size} is below the 256 bytes + separator a byte-level BPE needs"
        )));
    }
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(DOC_SEPARATOR, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::from(trainer);
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, texts)
        .map_err(|e| err(e.to_string()))?;
    let sep = tok
        .token_to_id(DOC_SEPARATOR)
        .ok_or_else(|| err("the separator token was not added".into()))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{DOC_SEPARATOR} $A"))
        .map_err(|e| err(e.to_string()))?
        .special_tokens(vec![(DOC_SEPARATOR, sep)])
        .build()
        .map_err(|e| err(e.to_string()))?;
    tok.with_post_processor(Some(post));
    Ok(Tokenizer::from_inner(tok, path_for_errors.to_path_buf()))
}

impl Tokenizer {
    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        crate::fsutil::write_atomic(path, json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask fuzz` (target `tokenizer`): tokenizers' decoder deserializer
    /// panicked on text that is not JSON inside the decoder (a NUL in a key, a key without a
    /// value); both are errors naming the file now.
    #[test]
    fn a_tokenizer_json_that_is_not_json_is_an_error_not_a_panic() {
        let path = Path::new("fuzzed/tokenizer.json");
        for text in [
            "{\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_sp\u{0}ace\": true}}",
            "{\"decoder\": {\"type\": \"ByteLevel\", \"trim_offsets\": \"post_processor\": {}}}",
        ] {
            let e = Tokenizer::from_bytes(text.as_bytes(), path)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("fuzzed/tokenizer.json") && e.contains("not JSON"),
                "{e}"
            );
        }
        // A template naming a special token it does not define.
        let undefined = r#"{"post_processor": {"type": "Sequence", "processors": [
            {"type": "T`mplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
             "pair": [], "special_tokens": {}}]}}"#;
        let e = Tokenizer::from_bytes(undefined.as_bytes(), path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("special token `<s>`"), "{e}");
        // Valid JSON that is no tokenizer is an error too (from tokenizers itself).
        let e = Tokenizer::from_bytes(b"{\"decoder\": 3}", path).unwrap_err();
        assert!(e.to_string().contains("fuzzed/tokenizer.json"), "{e}");
    }

    #[test]
    fn trained_bpe_round_trips_any_text_and_adds_bos() {
        let corpus = ["In the beginning God created the heaven and the earth."; 50];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        let t = train_bpe(corpus.iter().copied(), 300, &p).unwrap();
        let ids = t.encode("the earth, and café ☕", true).unwrap();
        assert_eq!(ids[0], 0, "BOS is the separator");
        assert_eq!(t.decode(&ids, true).unwrap(), "the earth, and café ☕");
        t.save(&p).unwrap();
        let back = Tokenizer::from_file(&p).unwrap();
        assert_eq!(
            back.encode("the heaven", true).unwrap(),
            t.encode("the heaven", true).unwrap()
        );
        assert!(train_bpe(corpus.iter().copied(), 100, &p).is_err());
    }
}
