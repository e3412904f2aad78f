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
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        Ok(Tokenizer { inner, path })
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
