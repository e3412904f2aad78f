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

/// A BLD run config (`dir/run.toml`) on the parent at `parent` and [`write_small_corpus`]:
/// two FFN widths, 128 steps per entry, a checkpoint every 8.
#[allow(dead_code)]
pub fn write_bld_config(dir: &Path, parent: &Path) -> PathBuf {
    write_small_corpus(dir);
    let cfg = format!(
        r#"
[parent]
path = "{}"
[data]
paths = ["corpus.txt"]
validation_fraction = 0.1
test_fraction = 0.1
[space]
granularity = 32
ffn_fractions = [0.5, 0.25]
[bld]
tokens = 16384
seq_len = 32
batch_size = 4
lr = 3e-3
checkpoint_every = 8
eval_sequences = 8
calibration_sequences = 8
seed = 3
"#,
        parent.display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}
