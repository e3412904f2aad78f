//! Plugins for real: a dynamically loaded solver, cost model, scorer and catalog (the example
//! cdylib), an ABI-mismatched build refused, a panicking plugin turned into an error, and the
//! sliding-window variant (a static plugin) through BLD, cost, score, search and export.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;

mod common;
use common::root;

use assert_cmd::cargo::CommandCargoExt;

/// Builds the example plugins (dev profile) and returns (example, abi-mismatch) library paths.
fn plugins() -> (PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Proc::new(cargo)
        .current_dir(root())
        .args([
            "build",
            "--quiet",
            "-p",
            "puzzle-example-plugin",
            "-p",
            "puzzle-example-abi-mismatch",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "building the example plugins failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let lib = |n: &str| {
        target.join("debug").join(format!(
            "{}{n}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ))
    };
    (
        lib("puzzle_example_plugin"),
        lib("puzzle_example_abi_mismatch"),
    )
}

fn puzzle(args: &[&str]) -> (bool, String, String) {
    let o = Proc::cargo_bin("puzzle")
        .unwrap()
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A run config on the tiny-llama fixture with extra TOML appended.
fn config(dir: &Path, space: &str, extra: &str) -> PathBuf {
    common::write_small_corpus(dir);
    let cfg = format!(
        r#"{extra_top}
[parent]
path = "{parent}"
[data]
paths = ["corpus.txt"]
validation_fraction = 0.1
test_fraction = 0.1
[space]
{space}
[bld]
tokens = 2048
seq_len = 32
batch_size = 4
checkpoint_every = 100
eval_sequences = 4
calibration_sequences = 4
[deployment]
batch_sizes = [1]
prefill_len = 24
generation_len = 8
[score]
sequences = 4
seq_len = 32
batch_size = 4
{extra}
"#,
        extra_top = "",
        parent = root().join("fixtures/hf/tiny-llama").display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn dynamic_solver_matches_the_built_in_one_and_mismatches_and_panics_are_errors() {
    let (lib, mismatch) = plugins();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "granularity = 32\nffn_fractions = [0.5]", "");
    let run = dir.path().join("run");
    for stage in ["bld", "cost", "score"] {
        let (ok, _, err) = puzzle(&[stage, cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
        assert!(ok, "{stage}: {err}");
    }
    let search = |solver: &str| {
        puzzle(&[
            "--plugin",
            lib.to_str().unwrap(),
            "search",
            run.to_str().unwrap(),
            "--objective",
            "kl",
            "--constraint",
            "decode_throughput>=1.3x",
            "--solver",
            solver,
            "--json",
        ])
    };
    let (ok, a, err) = search("bnb");
    assert!(ok, "{err}");
    let (ok, b, err) = search("dfs");
    assert!(ok, "{err}");
    let a: serde_json::Value = serde_json::from_str(&a).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(a["solutions"][0]["choices"], b["solutions"][0]["choices"]);
    assert!(
        (a["solutions"][0]["objective"].as_f64().unwrap()
            - b["solutions"][0]["objective"].as_f64().unwrap())
        .abs()
            < 1e-9
    );
    // Built against another ABI: refused with both versions.
    let (ok, _, err) = puzzle(&["--plugin", mismatch.to_str().unwrap(), "plugins"]);
    assert!(
        !ok && err.contains("ABI 2") && err.contains("ABI 1"),
        "{err}"
    );
    // A panic inside the plugin is an error, and the process goes on (library level).
    // Into registries holding exactly this plugin: nothing else is there.
    let mut plugins = puzzle_core::Plugins::empty();
    puzzle_pipeline::host::load(&lib, &mut plugins).unwrap();
    assert!(plugins.solvers.get("highs").is_err());
    let p = puzzle_core::search::mip::random::instance(1, 3, 3, 1);
    let opts = puzzle_core::search::SolveOptions::default();
    let e = plugins
        .solvers
        .get("panicky")
        .unwrap()
        .solve(&p, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("panicked") && e.contains("on purpose"), "{e}");
    let ok_after = plugins
        .solvers
        .get("dfs")
        .unwrap()
        .solve(&p, &opts)
        .unwrap();
    let want = puzzle_core::search::mip::brute_force(&p);
    assert_eq!(ok_after.status, want.status);
    // The CLI reports the panic as an error too.
    let (ok, _, err) = search("panicky");
    assert!(!ok && err.contains("the plugin panicked"), "{err}");
}

#[test]
fn scorer_cost_model_and_catalog_swapped_in_by_config_only() {
    let (lib, _) = plugins();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "attention = [\"gqa\"]\nffn = [\"width\", \"magnitude\"]\ngranularity = 32\nffn_fractions = [0.5]",
        "[cost]\nmodel = \"flops\"",
    );
    // `plugins` at the top of the config.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("plugins = [\"{}\"]\n{text}", lib.display())
            .replace("[score]\n", "[score]\nmetrics = [\"nll_gap\", \"kl\"]\n"),
    )
    .unwrap();
    let run = dir.path().join("run");
    // A config is data: the library it names is not loaded without the user's consent.
    let (ok, _, err) = puzzle(&["bld", cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
    assert!(!ok, "a config's plugin was loaded without consent");
    let hash = {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(std::fs::read(&lib).unwrap()))
    };
    assert!(
        err.contains("--allow-config-plugins") && err.contains(&hash),
        "the refusal names the flag and the library's sha256: {err}"
    );
    assert!(
        !run.join("library").exists(),
        "nothing ran before the refusal"
    );
    // Pinned to another hash: refused even with consent.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let pinned = dir.path().join("pinned.toml");
    let entry = format!("\"{}\"", lib.display());
    std::fs::write(
        &pinned,
        text.replacen(
            &entry,
            &format!("{{ path = {entry}, sha256 = \"{}\" }}", "0".repeat(64)),
            1,
        ),
    )
    .unwrap();
    let (ok, _, err) = puzzle(&["bld", pinned.to_str().unwrap(), "--allow-config-plugins"]);
    assert!(!ok && err.contains("the file changed"), "{err}");
    // Naming the same library with --plugin is consent too.
    let (ok, _, err) = puzzle(&[
        "--plugin",
        lib.to_str().unwrap(),
        "bld",
        cfg.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "bld with --plugin: {err}");
    for stage in ["cost", "score"] {
        let (ok, _, err) = puzzle(&[
            stage,
            cfg.to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
            "--allow-config-plugins",
        ]);
        assert!(ok, "{stage}: {err}");
        assert!(
            err.contains(&hash),
            "the loaded library's sha256 is printed: {err}"
        );
    }
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("scores.json")).unwrap()).unwrap();
    assert_eq!(scores["primary"], "nll_gap");
    let e = scores["entries"].as_array().unwrap();
    assert!(
        e.iter().any(|x| x["variant"] == "ffn:magnitude(88)"
            && x["metrics"]["nll_gap"].as_f64().unwrap() > 0.0)
    );
    assert!(
        e.iter().any(|x| x["variant"] == "ffn:width(176)"
            && x["metrics"]["nll_gap"].as_f64().unwrap() == 0.0)
    );
    let costs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("costs.json")).unwrap()).unwrap();
    assert_eq!(costs["model"], "flops");
    let meta = run.join("library/L000/ffn_magnitude_88_/meta.json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert!(
        meta["init"][0].as_str().unwrap().contains("plugin example"),
        "{meta}"
    );
    assert!(meta["nmse_final"].as_f64().unwrap() < meta["nmse_init"].as_f64().unwrap());

    // A scorer that errors fails the stage, naming the plugin and the scorer, instead of a
    // metric over fewer batches; the scores already written stay.
    let refusing = dir.path().join("refusing.toml");
    std::fs::write(
        &refusing,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "metrics = [\"nll_gap\", \"kl\"]",
            "metrics = [\"kl\", \"refuses\"]",
        ),
    )
    .unwrap();
    let (ok, _, err) = puzzle(&[
        "score",
        refusing.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--allow-config-plugins",
    ]);
    assert!(
        !ok && err.contains("scorer `refuses`")
            && err.contains("on purpose")
            && err.contains("libpuzzle_example_plugin"),
        "{err}"
    );
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("scores.json")).unwrap()).unwrap();
    assert_eq!(kept["primary"], "nll_gap");
}

#[test]
fn the_window_variant_takes_part_in_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = puzzle(&["plugins"]);
    assert!(ok && out.contains("attn:window"), "{out}");
    // Only windowed attention on offer: the search has to pick it.
    let cfg = config(
        dir.path(),
        "attention = [\"window\"]\nffn = [\"width\"]\ngranularity = 32\nffn_fractions = [0.5]\noptions = { \"window.sizes\" = [8] }",
        "",
    );
    let run = dir.path().join("run");
    for stage in ["bld", "cost", "score"] {
        let (ok, _, err) = puzzle(&[stage, cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
        assert!(ok, "{stage}: {err}");
    }
    let (ok, out, err) = puzzle(&["library", "show", run.to_str().unwrap()]);
    assert!(
        ok && out.contains("attn:window(w=8)") && out.contains("trained"),
        "{err}{out}"
    );
    let costs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("costs.json")).unwrap()).unwrap();
    let win = costs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["variant"] == "attn:window(w=8)")
        .unwrap();
    // 2 x 2 KV heads x 16 x 2 bytes per token, but only 8 of the 32 positions are kept.
    assert_eq!(win["kv_bytes_per_token"], 128.0);
    assert_eq!(win["kv_bytes_per_sequence"], 128.0 * 8.0);
    let (ok, out, err) = puzzle(&[
        "search",
        run.to_str().unwrap(),
        "--objective",
        "kl",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let choices = v["solutions"][0]["choices"].as_object().unwrap();
    assert!(
        choices
            .values()
            .all(|c| c.as_str().unwrap().starts_with("attn:window(w=8)")),
        "{choices:?}"
    );
    // The memory constraint sees the window-capped cache: weights plus, per sequence, 8
    // positions of 128 bytes in every layer (not the 32 of the whole request).
    let totals = v["solutions"][0]["costs"].as_object().unwrap();
    let mut batches = 0;
    for (k, m) in totals {
        if let Some(b) = k.strip_prefix("memory_bytes@b") {
            let b: f64 = b.parse().unwrap();
            let kv = m.as_f64().unwrap() - totals["param_bytes"].as_f64().unwrap();
            assert!(
                (kv - b * choices.len() as f64 * 128.0 * 8.0).abs() < 1e-6,
                "{k}: {kv}"
            );
            batches += 1;
        }
    }
    assert!(batches > 0, "{totals:?}");
    std::fs::create_dir_all(run.join("search")).unwrap();
    std::fs::write(run.join("search/solution.json"), "{}").unwrap();
    let sol: Vec<String> = choices
        .values()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let out_dir = dir.path().join("child");
    let (ok, _, err) = puzzle(&[
        "realize",
        cfg.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--solution",
        &sol.join(";"),
    ]);
    assert!(ok, "{err}");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(c["block_configs"][0]["attention"]["window_length"], 8);
    let (ok, out, err) = puzzle(&[
        "generate",
        out_dir.to_str().unwrap(),
        "--prompt",
        "In the beginning",
        "--max-new-tokens",
        "20",
        "--ignore-eos",
    ]);
    assert!(ok && out.starts_with("In the beginning"), "{err}");
}
