//! What the integration tests share: the repository root and a small corpus. Each test binary
//! uses part of it, hence the `dead_code` allowances.

use std::path::{Path, PathBuf};

/// The repository root (fixtures, model-zoo).
#[allow(dead_code)]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes the first 3000 lines of the King James Bible (model-zoo/corpora) to `dir/corpus.txt`:
/// enough text for the tiny fixtures' runs, little enough to keep them fast.
#[allow(dead_code)]
pub fn write_small_corpus(dir: &Path) {
    let gz = std::fs::read(root().join("model-zoo/corpora/kjv.txt.gz")).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let head = text.lines().take(3000).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.join("corpus.txt"), head).unwrap();
}
