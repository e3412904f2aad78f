//! `puzzle plan` on the paper's Llama-3.1-70B setup (examples/llama70b: a config.json, no
//! weights) and on the tiny example: the counts by hand, the FLOPs against the closed forms
//! and the paper's token budgets, and errors that name what is wrong.

use assert_cmd::Command;
use serde_json::Value;
// Links the `llama` family into this test binary (families register themselves when linked).
use puzzle_llama as _;

mod common;
use common::root;

fn plan(args: &[&str]) -> Value {
    let out = Command::cargo_bin("puzzle")
        .unwrap()
        .current_dir(root())
        .arg("plan")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stage<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name}: {p}"))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs()
}

#[test]
fn the_papers_70b_setup_is_planned_from_its_config_json_alone() {
    let p = plan(&[
        "examples/llama70b/paper.toml",
        "--hardware",
        "h100-sxm",
        "--gpus",
        "8",
    ]);
    // 80 layers x (GQA kv 8/4/2/1, linear, no-op; FFN 100/87.5/75/50/25/20/10%, linear, no-op).
    assert_eq!(p["parent_layers"], 80);
    assert_eq!(p["entries"], 80 * (6 + 9));
    assert_eq!(p["parent_entries"], 80 * 2);
    assert_eq!(p["identity"], 80 * 2);
    assert_eq!(p["trained"], 80 * (4 + 7));
    let n = p["parent_params"].as_f64().unwrap();
    assert!(close(n, 70.55e9, 0.001), "{n}");

    let spec = puzzle_core::Plugins::builtin()
        .read_spec(&root().join("examples/llama70b"))
        .unwrap();
    // GKD: 45B tokens for the child and both baselines, each the parent's forward plus 3x the
    // model's (costed as the parent), in whole batches of 64 x 4096.
    let seqs = (45e9_f64 / (64.0 * 4096.0)).ceil() * 64.0;
    let gkd = 3.0 * seqs * 4.0 * spec.forward_flops(1, 0, 4096);
    let got = stage(&p, "distill")["flops"].as_f64().unwrap();
    assert!(close(got, gkd, 1e-9), "{got} vs {gkd}");
    // Against the paper's budget by the usual rule (2ND forward + 6ND training, N = 70.55B,
    // D = 45B per model): the same within the attention products' share at 4096 tokens.
    let rule = 3.0 * 8.0 * n * 45e9;
    assert!(got > rule && close(got, rule, 0.05), "{got} vs {rule}");
    // BLD: 1B tokens; the parent's forward alone in each of the 8 tasks is 2 x 70.55B x 1B
    // FLOPs and more; the trained entries' share is bounded by 3x their parameters' FLOPs
    // plus 2x an FFN per attention variant.
    let bld = stage(&p, "bld");
    assert_eq!(bld["tasks"], 8);
    let bld_flops = bld["flops"].as_f64().unwrap();
    assert!(bld_flops > 8.0 * 2.0 * n * 1e9, "{bld_flops}");
    assert!(
        bld_flops < 8.0 * 2.2 * n * 1e9 + 3.0 * 2.2 * 11.0 * n * 1e9,
        "{bld_flops}"
    );
    // Wall time divides by the tasks; nothing else is sharded.
    let (dh, wh) = (
        bld["device_hours"].as_f64().unwrap(),
        bld["wall_hours"].as_f64().unwrap(),
    );
    assert!(close(wh, dh / 8.0, 1e-9));
    // Device-hours are FLOPs at 40% of the H100's 989 TFLOP/s.
    let d = stage(&p, "distill");
    assert!(close(
        d["device_hours"].as_f64().unwrap(),
        got / (0.4 * 989e12) / 3600.0,
        1e-9
    ));
    // A 70B parent in f32 with its trainee does not fit an 80 GB device: said, not hidden.
    assert_eq!(d["fits"], false);
    // The roofline cost model times nothing.
    assert_eq!(stage(&p, "cost")["engine_seconds"], 0.0);
}

#[test]
fn the_tiny_examples_plan_counts_its_measured_requests_and_its_task_tokens() {
    let p = plan(&[
        "examples/tiny/tiny.toml",
        "--hardware",
        "cpu-dev",
        "--gpus",
        "1",
    ]);
    // 6 layers x (kv 4/2/1, linear, no-op; FFN 100/75/50/25%, no-op), the linear FFN left out
    // for llama.cpp.
    assert_eq!(p["entries"], 6 * 10);
    assert_eq!(p["refused"], 6);
    assert_eq!(p["trained"], 6 * 6);
    let cost = stage(&p, "cost");
    assert!(cost["engine_seconds"].as_f64().unwrap() > 0.0, "{cost}");
    assert!(
        cost["work"].as_str().unwrap().contains("timed requests"),
        "{cost}"
    );
    // The parent folder has a tokenizer: task tokens are counted, not estimated.
    let eval = stage(&p, "eval")["work"].as_str().unwrap().to_string();
    assert!(!eval.contains("estimated"), "{eval}");
    assert!(stage(&p, "bld")["fits"].as_bool().unwrap());
}

#[test]
fn bad_plans_are_refused_with_the_reason() {
    let fail = |args: &[&str], want: &str| {
        let out = Command::cargo_bin("puzzle")
            .unwrap()
            .current_dir(root())
            .arg("plan")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    let cfg = "examples/llama70b/paper.toml";
    fail(&[cfg, "--gpus", "0"], "--gpus must be at least 1");
    fail(&[cfg, "--mfu", "1.5"], "--mfu must be in (0, 1]");
    fail(&[cfg, "--hardware", "tpu-v9"], "hardware `tpu-v9`");
    fail(&[cfg, "--dtype", "fp7"], "fp7");
    fail(
        &[cfg, "--parent", "/nonexistent/llama"],
        "/nonexistent/llama",
    );
}
