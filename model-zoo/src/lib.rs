//! Data compiled into the binary so that `puzzle` runs anywhere without the repository:
//! hardware profiles (TOML, values from vendor datasheets), and later the tiny parent, the
//! corpora and the task suite.

/// Hardware profiles by name: `(name, TOML)`.
pub const HARDWARE: &[(&str, &str)] = &[
    ("h100-sxm", include_str!("../hardware/h100-sxm.toml")),
    ("h200", include_str!("../hardware/h200.toml")),
    ("a100-80gb", include_str!("../hardware/a100-80gb.toml")),
    ("l40s", include_str!("../hardware/l40s.toml")),
    ("cpu-dev", include_str!("../hardware/cpu-dev.toml")),
];

/// The TOML of a built-in hardware profile.
pub fn hardware(name: &str) -> Option<&'static str> {
    HARDWARE.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The tiny parent, the corpora, the cloze suite and the example run config, as files.
const TINY_EXAMPLE: &[(&str, &[u8])] = &[
    (
        "model-zoo/tiny-parent/config.json",
        include_bytes!("../tiny-parent/config.json"),
    ),
    (
        "model-zoo/tiny-parent/model.safetensors",
        include_bytes!("../tiny-parent/model.safetensors"),
    ),
    (
        "model-zoo/tiny-parent/tokenizer.json",
        include_bytes!("../tiny-parent/tokenizer.json"),
    ),
    (
        "model-zoo/corpora/kjv.txt.gz",
        include_bytes!("../corpora/kjv.txt.gz"),
    ),
    (
        "model-zoo/corpora/shakespeare.txt.gz",
        include_bytes!("../corpora/shakespeare.txt.gz"),
    ),
    (
        "model-zoo/tasks/cloze.jsonl",
        include_bytes!("../tasks/cloze.jsonl"),
    ),
    // The repository's example config: its relative paths work in both places.
    (
        "examples/tiny/tiny.toml",
        include_bytes!("../../examples/tiny/tiny.toml"),
    ),
];

/// Writes the embedded tiny example into `dir` (files already there with the same content are
/// kept) and returns the path of its run config (`dir/examples/tiny/tiny.toml`, whose run
/// folder is `dir/runs/tiny` unless overridden).
pub fn materialize_tiny_example(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    for (name, bytes) in TINY_EXAMPLE {
        let p = dir.join(name);
        if std::fs::read(&p).is_ok_and(|b| b == *bytes) {
            continue;
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &p)?;
    }
    Ok(dir.join("examples/tiny/tiny.toml"))
}
