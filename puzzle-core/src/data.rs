//! The data layer: read a corpus (plain text or JSONL, optionally gzipped), split it into
//! train/validation/test by document (deterministically, no document in two splits), tokenise,
//! and pack fixed-length sequences.
//!
//! - Plain text: documents are blank-line separated paragraphs (a Bible chapter, a speech).
//! - JSONL: one document per line, `{"text": "..."}`; other keys are ignored.
//!
//! A document's split is a pure function of its text (a SHA-256 hash), so the same corpus gives
//! the same splits on any machine, whatever the file order, and duplicate paragraphs land in the
//! same split.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::rng::SeededRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Which part of the corpus a document belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// How the corpus is read and split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Files: `.txt`, `.jsonl`, optionally `.gz`. Relative paths are resolved against the config
    /// file's folder.
    pub paths: Vec<PathBuf>,
    /// Fraction of documents held out for validation.
    #[serde(default = "default_fraction")]
    pub validation_fraction: f64,
    /// Fraction of documents held out for testing (task suites are built from these).
    #[serde(default = "default_fraction")]
    pub test_fraction: f64,
}

fn default_fraction() -> f64 {
    0.05
}

impl DataConfig {
    /// Checks the fractions.
    pub fn validate(&self) -> Result<()> {
        if self.paths.is_empty() {
            return Err(Error::invalid(
                "data.paths is empty: name at least one corpus file",
            ));
        }
        let (v, t) = (self.validation_fraction, self.test_fraction);
        if !(0.0..1.0).contains(&v) || !(0.0..1.0).contains(&t) || v + t >= 1.0 {
            return Err(Error::invalid(format!(
                "data: validation_fraction {v} and test_fraction {t} must be in [0, 1) and leave room for training"
            )));
        }
        Ok(())
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in &mut self.paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// One document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub text: String,
    /// `file:line` where it starts.
    pub origin: String,
}

impl Document {
    /// The split this document belongs to.
    pub fn split(&self, cfg: &DataConfig) -> Split {
        split_of(&self.text, cfg.validation_fraction, cfg.test_fraction)
    }
}

/// The split of a document with this text.
pub fn split_of(text: &str, validation: f64, test: f64) -> Split {
    let h = Sha256::digest(text.as_bytes());
    let u = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    if u < validation {
        Split::Validation
    } else if u < validation + test {
        Split::Test
    } else {
        Split::Train
    }
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.to_string_lossy();
    Ok(if name.ends_with(".gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Reads every document of one file.
pub fn read_file(path: &Path) -> Result<Vec<Document>> {
    let name = path.to_string_lossy();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let reader = open_text(path)?;
    let mut docs = Vec::new();
    if stem.ends_with(".jsonl") || stem.ends_with(".json") {
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| Error::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| Error::config(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
            let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::config(
                    path,
                    format!(
                        "line {}: no string field `text` (each line must be {{\"text\": ...}})",
                        i + 1
                    ),
                )
            })?;
            if !text.trim().is_empty() {
                docs.push(Document {
                    text: text.to_string(),
                    origin: format!("{}:{}", path.display(), i + 1),
                });
            }
        }
    } else {
        let mut content = String::new();
        let mut r = reader;
        r.read_to_string(&mut content)
            .map_err(|e| Error::io(path, e))?;
        let mut cur: Vec<&str> = Vec::new();
        let mut start = 1;
        for (i, line) in content.lines().enumerate() {
            if line.trim().is_empty() {
                if !cur.is_empty() {
                    docs.push(Document {
                        text: cur.join("\n"),
                        origin: format!("{}:{}", path.display(), start),
                    });
                    cur.clear();
                }
                start = i + 2;
            } else {
                cur.push(line);
            }
        }
        if !cur.is_empty() {
            docs.push(Document {
                text: cur.join("\n"),
                origin: format!("{}:{}", path.display(), start),
            });
        }
    }
    Ok(docs)
}

/// Reads every document of every file; an empty corpus is an error.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for p in paths {
        let d = read_file(p)?;
        if d.is_empty() {
            return Err(Error::config(p, "contains no text: an empty corpus file"));
        }
        docs.extend(d);
    }
    if docs.is_empty() {
        return Err(Error::invalid("the corpus is empty: no files given"));
    }
    Ok(docs)
}

/// A fingerprint of the corpus content and split settings, for provenance.
pub fn fingerprint(docs: &[Document], cfg: &DataConfig) -> String {
    let mut h = Sha256::new();
    h.update(format!("{}/{}", cfg.validation_fraction, cfg.test_fraction));
    for d in docs {
        h.update((d.text.len() as u64).to_le_bytes());
        h.update(d.text.as_bytes());
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// A tokenised split: documents joined into one stream, each preceded by the separator token.
#[derive(Clone, Debug)]
pub struct TokenStream {
    pub split: Split,
    pub tokens: Vec<u32>,
    pub documents: usize,
}

/// Tokenises the documents of one split. Each document is preceded by `separator` (the
/// tokenizer's BOS/EOS), so the model sees document boundaries.
pub fn tokenize_split(
    docs: &[Document],
    cfg: &DataConfig,
    split: Split,
    tok: &Tokenizer,
    separator: u32,
) -> Result<TokenStream> {
    let texts: Vec<&str> = docs
        .iter()
        .filter(|d| d.split(cfg) == split)
        .map(|d| d.text.as_str())
        .collect();
    if texts.is_empty() {
        return Err(Error::invalid(format!(
            "the {split:?} split has no documents (corpus too small for the split fractions)"
        )));
    }
    let encodings = tok
        .inner()
        .encode_batch(texts.clone(), false)
        .map_err(|e| Error::Tokenizer {
            path: tok.path().to_path_buf(),
            msg: e.to_string(),
        })?;
    let mut tokens = Vec::new();
    for e in encodings {
        tokens.push(separator);
        tokens.extend_from_slice(e.get_ids());
    }
    Ok(TokenStream {
        split,
        tokens,
        documents: texts.len(),
    })
}

/// Fixed-length windows of `seq_len + 1` tokens (inputs and shifted targets), stride `seq_len`;
/// the ragged tail is dropped.
pub fn windows(stream: &[u32], seq_len: usize) -> Vec<Vec<u32>> {
    if seq_len == 0 || stream.len() < seq_len + 1 {
        return vec![];
    }
    (0..(stream.len() - 1) / seq_len)
        .map(|i| stream[i * seq_len..i * seq_len + seq_len + 1].to_vec())
        .collect()
}

/// A deterministic batch order over `n` windows: epoch `e` is a permutation seeded by
/// `seed + e`, so batch `k` is a pure function of `(seed, k)` and training can resume exactly.
#[derive(Clone, Debug)]
pub struct BatchOrder {
    pub n: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl BatchOrder {
    /// Window indices of batch `step`.
    pub fn batch(&self, step: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch_size);
        let mut pos = step * self.batch_size;
        let mut cached: Option<(usize, Vec<usize>)> = None;
        while out.len() < self.batch_size {
            let epoch = pos / self.n;
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                let mut perm: Vec<usize> = (0..self.n).collect();
                SeededRng::new(self.seed.wrapping_add(epoch as u64)).shuffle(&mut perm);
                cached = Some((epoch, perm));
            }
            out.push(cached.as_ref().expect("set above").1[pos % self.n]);
            pos += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DataConfig {
        DataConfig {
            paths: vec![],
            validation_fraction: 0.2,
            test_fraction: 0.2,
        }
    }

    #[test]
    fn plain_text_documents_are_blank_line_paragraphs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "one\ntwo\n\n\nthree\n  \nfour").unwrap();
        let d = read_file(&p).unwrap();
        let texts: Vec<&str> = d.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, vec!["one\ntwo", "three", "four"]);
        assert!(d[1].origin.ends_with("a.txt:5"), "{}", d[1].origin);
    }

    #[test]
    fn gzip_and_jsonl_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut enc,
            b"{\"text\": \"hello\", \"id\": 1}\n\n{\"text\": \"world\"}\n",
        )
        .unwrap();
        std::fs::write(&p, enc.finish().unwrap()).unwrap();
        let d = read_file(&p).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].text, "world");
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("a.jsonl") && e.contains("line 2") && e.contains("`text`"),
            "{e}"
        );
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n\n  \n").unwrap();
        let e = read_documents(&[empty]).unwrap_err().to_string();
        assert!(e.contains("empty.txt") && e.contains("empty corpus"), "{e}");
        let e = read_documents(&[dir.path().join("missing.txt")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn splits_are_deterministic_disjoint_and_near_the_fractions() {
        let c = cfg();
        let docs: Vec<Document> = (0..4000)
            .map(|i| Document {
                text: format!("document number {i}"),
                origin: String::new(),
            })
            .collect();
        let mut counts = [0usize; 3];
        for d in &docs {
            let s = d.split(&c);
            assert_eq!(s, d.split(&c));
            counts[s as usize] += 1;
        }
        for (got, want) in counts.iter().zip([0.6, 0.2, 0.2]) {
            let f = *got as f64 / docs.len() as f64;
            assert!((f - want).abs() < 0.03, "{counts:?}");
        }
    }

    #[test]
    fn windows_overlap_by_one_token() {
        let w = windows(&[1, 2, 3, 4, 5, 6, 7], 3);
        assert_eq!(w, vec![vec![1, 2, 3, 4], vec![4, 5, 6, 7]]);
        assert!(windows(&[1, 2], 3).is_empty());
    }

    #[test]
    fn batch_order_is_a_pure_function_of_the_step() {
        let o = BatchOrder {
            n: 10,
            batch_size: 4,
            seed: 3,
        };
        let all: Vec<usize> = (0..5).flat_map(|s| o.batch(s)).collect();
        // The first 10 draws are a permutation (one epoch), then the next epoch starts.
        let mut first: Vec<usize> = all[..10].to_vec();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(o.batch(3), o.clone().batch(3));
    }
}
