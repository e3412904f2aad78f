//! Pretraining resumes exactly: a run interrupted after a checkpoint and started again ends with
//! the same weights, bit for bit, as an uninterrupted run (same seed, CPU).

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

mod common;
use common::root;

use assert_cmd::cargo::CommandCargoExt;

/// A small corpus and a micro recipe in `dir`.
fn micro_recipe(dir: &Path, steps: usize, hidden: usize) -> PathBuf {
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!(
            "And the {i} day God said, let there be light {} and there was light.\nAnd it was good.\n\n",
            i * 7 % 13
        ));
    }
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let recipe = format!(
        r#"
[model]
hidden_size = {hidden}
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
intermediate_size = {ffn}
max_position_embeddings = 64
tie_word_embeddings = true

[tokenizer]
vocab_size = 300

[data]
paths = ["corpus.txt"]
validation_fraction = 0.1
test_fraction = 0.1

[train]
seq_len = 32
batch_size = 4
steps = {steps}
lr = 1e-2
min_lr = 1e-3
warmup_steps = 2
eval_every = 4
eval_batches = 2
checkpoint_every = 4
seed = 7

[export]
dtype = "f32"
"#,
        ffn = hidden * 2
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, recipe).unwrap();
    p
}

fn train(recipe: &Path, out: &Path) -> std::process::Output {
    Proc::cargo_bin("puzzle")
        .unwrap()
        .current_dir(root())
        .arg("train")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn killed_training_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = micro_recipe(dir.path(), 40, 64);
    let full = dir.path().join("full");
    let o = train(&recipe, &full);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = std::fs::read(full.join("model/model.safetensors")).unwrap();

    // Kill -9 a second run as soon as its first checkpoint exists, then rerun.
    let killed = dir.path().join("killed");
    let mut child = Proc::cargo_bin("puzzle")
        .unwrap()
        .current_dir(root())
        .arg("train")
        .arg(&recipe)
        .arg("--out")
        .arg(&killed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !killed.join("checkpoint/state.json").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A kill between a checkpoint's two renames leaves only checkpoint.old (read on resume).
    let state_file = ["checkpoint", "checkpoint.old"]
        .map(|d| killed.join(d).join("state.json"))
        .into_iter()
        .find(|p| p.is_file())
        .expect("a complete checkpoint survives the kill");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state_file).unwrap()).unwrap();
    let at = state["step"].as_u64().unwrap();
    assert!(
        at < 40,
        "the kill came after the end (step {at}); nothing was tested"
    );
    assert!(!killed.join("model/model.safetensors").exists());
    let o = train(&recipe, &killed);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resuming from step"), "{err}");
    let resumed = std::fs::read(killed.join("model/model.safetensors")).unwrap();
    assert!(
        resumed == reference,
        "weights after resume (from step {at}) differ from an uninterrupted run"
    );
    // The report records validation points.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("train_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["steps"], 40);
    assert_eq!(report["history"].as_array().unwrap().len(), 10);
}

#[test]
fn a_changed_recipe_does_not_resume_a_foreign_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = micro_recipe(dir.path(), 4, 32);
    let out = dir.path().join("out");
    assert!(train(&recipe, &out).status.success());
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("lr = 1e-2", "lr = 2e-2");
    std::fs::write(&recipe, text).unwrap();
    let o = train(&recipe, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("different run"),
        "{err}"
    );
}

/// A training step whose loss is not finite stops with the step named, before the optimiser
/// step, and writes no model.
#[test]
fn a_diverging_pretraining_stops_with_an_error_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = micro_recipe(dir.path(), 8, 32);
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, text.replace("lr = 1e-2", "lr = 1e30")).unwrap();
    let out = dir.path().join("out");
    let o = train(&recipe, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("training diverged at step") && err.contains("lower the learning rate"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.join("model").exists(), "no model from a diverged run");
}

#[test]
fn bad_recipes_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = micro_recipe(dir.path(), 4, 32);
    let text = std::fs::read_to_string(&recipe).unwrap();
    // A sequence length above the model's limit.
    std::fs::write(&recipe, text.replace("seq_len = 32", "seq_len = 128")).unwrap();
    let o = train(&recipe, &dir.path().join("a"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("seq_len 128") && err.contains("at most 64"),
        "{err}"
    );
    // An empty corpus.
    std::fs::write(&recipe, &text).unwrap();
    std::fs::write(dir.path().join("corpus.txt"), "\n\n").unwrap();
    let o = train(&recipe, &dir.path().join("b"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("corpus.txt") && err.contains("empty corpus"),
        "{err}"
    );
    assert!(!dir.path().join("b/model").exists(), "nothing half-written");
}
