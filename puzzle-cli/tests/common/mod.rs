//! What the integration tests share: the repository root and a small corpus. Each test binary
//! uses part of it, hence the `dead_code` allowances.

use std::collections::BTreeMap;
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

/// The embedded example's config with every budget cut to a few steps (structure unchanged),
/// paths made absolute, and the task file cut to its first 40 items.
#[allow(dead_code)]
pub fn scaled_config(dir: &Path) -> PathBuf {
    let tasks = std::fs::read_to_string(root().join("model-zoo/tasks/cloze.jsonl")).unwrap();
    let head: String = tasks.lines().take(40).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("tasks.jsonl"), head).unwrap();
    let text = std::fs::read_to_string(root().join("examples/tiny/tiny.toml")).unwrap();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    cfg.remove("run_dir");
    let abs = |rel: &str| {
        let p = root().join("examples/tiny").join(rel);
        toml::Value::String(std::fs::canonicalize(p).unwrap().display().to_string())
    };
    let section = |cfg: &mut toml::Table, name: &str| -> toml::Table {
        cfg[name].as_table().unwrap().clone()
    };
    let mut parent = section(&mut cfg, "parent");
    parent.insert("path".into(), abs(parent["path"].as_str().unwrap()));
    cfg.insert("parent".into(), parent.into());
    let mut data = section(&mut cfg, "data");
    let paths: Vec<toml::Value> = data["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| abs(p.as_str().unwrap()))
        .collect();
    data.insert("paths".into(), paths.into());
    cfg.insert("data".into(), data.into());
    let int = |v: i64| toml::Value::Integer(v);
    let edits: Vec<(&str, Vec<(&str, toml::Value)>)> = vec![
        (
            "bld",
            vec![
                ("tokens", int(1024)),
                ("seq_len", int(32)),
                ("batch_size", int(4)),
                ("checkpoint_every", int(4)),
                ("eval_sequences", int(4)),
                ("calibration_sequences", int(4)),
            ],
        ),
        (
            "deployment",
            vec![
                ("batch_sizes", vec![int(1), int(2)].into()),
                ("prefill_len", int(16)),
                ("generation_len", int(8)),
            ],
        ),
        (
            "score",
            vec![
                ("sequences", int(4)),
                ("seq_len", int(32)),
                ("batch_size", int(4)),
            ],
        ),
        (
            "distill",
            vec![
                ("tokens", int(1024)),
                ("seq_len", int(32)),
                ("batch_size", int(4)),
                ("checkpoint_every", int(4)),
            ],
        ),
        (
            "eval",
            vec![
                ("sequences", int(4)),
                ("seq_len", int(32)),
                ("batch_size", int(4)),
                ("speed_repeats", int(1)),
                (
                    "tasks",
                    vec![toml::Value::String(
                        dir.join("tasks.jsonl").display().to_string(),
                    )]
                    .into(),
                ),
            ],
        ),
    ];
    for (name, kv) in edits {
        let mut t = section(&mut cfg, name);
        for (k, v) in kv {
            assert!(
                t.contains_key(k),
                "examples/tiny/tiny.toml has no [{name}] {k}"
            );
            t.insert(k.into(), v);
        }
        cfg.insert(name.into(), t.into());
    }
    // What makes this "the real config": the parts the older kill test leaves out.
    assert_eq!(cfg["cost"]["model"].as_str(), Some("measured"));
    assert_eq!(cfg["deployment"]["engine"].as_str(), Some("llamacpp"));
    assert!(!cfg["baselines"]["kinds"].as_array().unwrap().is_empty());
    let p = dir.join("run.toml");
    std::fs::write(&p, toml::to_string(&cfg).unwrap()).unwrap();
    p
}

/// Every file of a run folder, relative path -> what must not depend on interruptions: the
/// bytes, JSON with its timing fields nulled, a checksum file's verdict on its folder.
#[allow(dead_code)]
pub fn contents(run: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut walk = vec![run.to_path_buf()];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk.push(p);
                continue;
            }
            let rel = p.strip_prefix(run).unwrap().display().to_string();
            let bytes = std::fs::read(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy();
            let v = if name == "SHA256SUMS.json" {
                let sums: BTreeMap<String, String> = serde_json::from_slice(&bytes).unwrap();
                let bad: Vec<&String> = sums
                    .iter()
                    .filter(|(f, want)| {
                        use sha2::Digest;
                        let got = sha2::Sha256::digest(std::fs::read(d.join(f)).unwrap());
                        format!("{got:x}") != **want
                    })
                    .map(|(f, _)| f)
                    .collect();
                format!("checksums of {:?}; mismatched: {bad:?}", sums.keys())
            } else if name.ends_with(".json") {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"));
                puzzle_pipeline::run::strip_timings(&mut v);
                v.to_string()
            } else {
                use sha2::Digest;
                format!(
                    "{} bytes, sha256 {:x}",
                    bytes.len(),
                    sha2::Sha256::digest(&bytes)
                )
            };
            out.insert(rel, v);
        }
    }
    out
}
