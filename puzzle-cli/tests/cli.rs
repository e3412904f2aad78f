//! The `puzzle` binary end to end on the tiny fixtures: help that teaches, tables, generation,
//! and clear errors with a non-zero exit.

mod common;
use common::root;

use assert_cmd::Command;

fn puzzle() -> Command {
    let mut c = Command::cargo_bin("puzzle").unwrap();
    c.current_dir(root());
    c
}

fn output(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_commands_and_teaches() {
    let (ok, out, _) = output(puzzle().arg("--help"));
    assert!(ok);
    for c in ["inspect", "generate", "import"] {
        assert!(out.contains(c), "{out}");
    }
    let (ok, out, _) = output(puzzle().args(["generate", "--help"]));
    assert!(ok);
    assert!(
        out.contains("--temperature") && out.contains("Examples"),
        "{out}"
    );
}

#[test]
fn every_argument_is_described_and_examples_stay_on_their_own_lines() {
    let commands: &[&[&str]] = &[
        &["run"],
        &["ablate"],
        &["bld"],
        &["cost"],
        &["score"],
        &["search"],
        &["realize"],
        &["eval"],
        &["train"],
        &["generate"],
        &["inspect"],
        &["report"],
        &["plugins"],
        &["library", "show"],
        &["import", "gguf"],
        &["tasks", "cloze"],
    ];
    for c in commands {
        let (ok, out, err) = output(puzzle().args(*c).arg("--help"));
        assert!(ok, "{c:?}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        // Items are listed after `Usage:` (the about text may hold indented example lines).
        let usage = lines
            .iter()
            .position(|l| l.starts_with("Usage:"))
            .unwrap_or(0);
        for (i, l) in lines.iter().enumerate().skip(usage) {
            let t = l.trim_start();
            // Items are indented 2-6 columns; their wrapped descriptions 10 or more.
            let indent = l.len() - t.len();
            let is_item = (2..10).contains(&indent) && (t.starts_with('<') || t.starts_with('-'));
            if !is_item || t.starts_with("-h, --help") || t.starts_with("-V") {
                continue;
            }
            // Long help puts the description on the next line, short help after the name.
            let inline = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let next = lines.get(i + 1).map_or("", |n| n.trim());
            assert!(
                inline || (!next.is_empty() && !next.starts_with("[default")),
                "{c:?}: `{}` has no description\n{out}",
                t
            );
        }
        for (i, l) in lines.iter().enumerate() {
            // Joined examples look like `Examples: puzzle run puzzle run x.toml` or carry a
            // shell continuation `\ ` in mid-line.
            assert!(
                l.matches("puzzle ").count() <= 1 && !l.contains("\\ "),
                "{c:?}: examples joined into one line: `{l}`\n{out}"
            );
            if l.starts_with("Example") && l.trim_end().ends_with(':') {
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(
                    next.trim_start().starts_with("puzzle "),
                    "{c:?}: the example after `{l}` is not on its own line\n{out}"
                );
            }
        }
    }
}

#[test]
fn inspect_shows_a_heterogeneous_child() {
    let (ok, out, err) = output(puzzle().args(["inspect", "fixtures/hf/tiny-decilm"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("decilm") && out.contains("linear") && out.contains("no-op"),
        "{out}"
    );
    let (ok, out, _) = output(puzzle().args(["inspect", "fixtures/hf/tiny-llama", "--json"]));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 4);
}

/// `--type q4_k_m` goes through llama.cpp's quantiser: the file it writes is llama.cpp's K-quant
/// mix (mostly Q4_K matrices) and the f32 export it started from is gone.
#[cfg(feature = "llamacpp")]
#[test]
fn export_gguf_makes_llama_cpps_k_quants() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.Q4_K_M.gguf");
    let (ok, _, err) = output(puzzle().args([
        "export".as_ref(),
        "gguf".as_ref(),
        "model-zoo/tiny-parent".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        "q4_k_m".as_ref(),
    ]));
    assert!(ok, "{err}");
    assert!(
        err.contains("q4_k_m by llama.cpp's quantiser") && err.contains("Q4_K"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["tiny.Q4_K_M.gguf".to_string()]);
    let g = puzzle_core::gguf::GgufFile::open(&out).unwrap();
    let q4k = g
        .tensors
        .iter()
        .filter(|t| t.ggml_type == puzzle_core::gguf::GgmlType::Q4K)
        .count();
    assert!(q4k >= 6 * 4, "{q4k} Q4_K tensors");
}

#[test]
fn generate_prints_text_and_speed() {
    let (ok, out, err) = output(puzzle().args([
        "generate",
        "fixtures/hf/tiny-llama",
        "--prompt",
        "In the beginning",
        "--max-new-tokens",
        "5",
    ]));
    assert!(ok, "{err}");
    assert!(out.starts_with("In the beginning"), "{out}");
    assert!(err.contains("tokens/s"), "{err}");
    // Same seed, same text; sampling flags are checked.
    let sample = |seed: &str| {
        output(puzzle().args([
            "generate",
            "fixtures/hf/tiny-llama",
            "--prompt",
            "And",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]))
        .1
    };
    assert_eq!(sample("3"), sample("3"));
    let (ok, _, err) = output(puzzle().args([
        "generate",
        "fixtures/hf/tiny-llama",
        "--prompt",
        "x",
        "--greedy",
        "--temperature",
        "1",
    ]));
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

#[test]
fn errors_name_the_culprit_and_exit_non_zero() {
    let (ok, _, err) = output(puzzle().args(["generate", "/nonexistent/model", "--prompt", "x"]));
    assert!(!ok);
    assert!(
        err.starts_with("error:") && err.contains("/nonexistent/model"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    let (ok, _, err) = output(
        puzzle()
            .args(["import", "gguf"])
            .arg(&bad)
            .arg(dir.path().join("out")),
    );
    assert!(!ok && err.contains("bad magic"), "{err}");
}
