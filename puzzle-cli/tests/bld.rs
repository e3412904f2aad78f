//! `puzzle bld`: killed and resumed, or split into shards, it builds the same library as one
//! uninterrupted run; every entry is trained once.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

mod common;
use common::root;

use assert_cmd::cargo::CommandCargoExt;

/// A run config on the tiny-llama fixture and a slice of the Bible.
fn config(dir: &Path) -> PathBuf {
    common::write_bld_config(dir, &root().join("fixtures/hf/tiny-llama"))
}

/// `puzzle bld` started in the background on `run`.
fn spawn_bld(cfg: &Path, run: &Path, stderr: std::process::Stdio) -> std::process::Child {
    Proc::cargo_bin("puzzle")
        .unwrap()
        .arg("bld")
        .arg(cfg)
        .arg("--run")
        .arg(run)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Runs `puzzle bld` on `run` to the end and checks its library is `reference`.
fn finish_and_compare(cfg: &Path, run: &Path, reference: &[(String, Vec<u8>, String)], what: &str) {
    let o = bld(cfg, run, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(snapshot(run), reference, "{what} differs from one run");
}

fn bld(cfg: &Path, run: &Path, extra: &[&str]) -> std::process::Output {
    Proc::cargo_bin("puzzle")
        .unwrap()
        .arg("bld")
        .arg(cfg)
        .arg("--run")
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

/// Every entry's weights bytes and (key, nmse, tokens) from meta.json, sorted.
fn snapshot(run: &Path) -> Vec<(String, Vec<u8>, String)> {
    let mut out = vec![];
    for l in std::fs::read_dir(run.join("library")).unwrap().flatten() {
        for e in std::fs::read_dir(l.path()).unwrap().flatten() {
            let meta: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path().join("meta.json")).unwrap())
                    .unwrap();
            assert!(
                !e.path().join("ckpt").exists(),
                "a finished entry keeps no checkpoint"
            );
            let w = std::fs::read(e.path().join("weights.safetensors")).unwrap_or_default();
            let summary = format!(
                "{} tokens={} steps={} init={} final={} curve={}",
                meta["key"],
                meta["tokens"],
                meta["steps"],
                meta["nmse_init"],
                meta["nmse_final"],
                meta["loss_curve"]
            );
            out.push((
                e.path().file_name().unwrap().to_string_lossy().into_owned(),
                w,
                summary,
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn killed_bld_resumes_and_shards_compose_to_the_same_library() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let full = dir.path().join("full");
    let o = bld(&cfg, &full, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = snapshot(&full);
    assert!(reference.len() > 20);
    // Every trained entry trained 128 steps of 128 tokens, once.
    for (_, _, s) in &reference {
        if !s.contains("tokens=0") {
            assert!(s.contains("tokens=16384 steps=128"), "{s}");
        }
    }

    // Kill -9 as soon as checkpoints exist, then rerun.
    let killed = dir.path().join("killed");
    let mut child = spawn_bld(&cfg, &killed, std::process::Stdio::null());
    let has_ckpt = |p: &Path| {
        std::fs::read_dir(p.join("library"))
            .map(|ls| {
                ls.flatten().any(|l| {
                    std::fs::read_dir(l.path())
                        .map(|es| {
                            es.flatten()
                                .any(|e| e.path().join("ckpt/state.json").exists())
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    let wait_for_ckpt = |p: &Path| {
        let t0 = Instant::now();
        while !has_ckpt(p) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no checkpoint appeared"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_for_ckpt(&killed);
    child.kill().unwrap();
    child.wait().unwrap();
    finish_and_compare(&cfg, &killed, &reference, "kill + resume");

    // SIGTERM (Slurm's requeue or preemption) while training: every entry in training is
    // checkpointed at the step reached, off the periodic grid, and the rerun finishes it.
    let stopped = dir.path().join("stopped");
    let child = spawn_bld(&cfg, &stopped, std::process::Stdio::piped());
    wait_for_ckpt(&stopped);
    let term = Proc::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(128 + 15), "{err}");
    let at = err
        .split("in training at step ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no stop step in: {err}"));
    assert!(err.contains("stopped by signal 15"), "{err}");
    let mut states = 0;
    for l in std::fs::read_dir(stopped.join("library"))
        .unwrap()
        .flatten()
    {
        for e in std::fs::read_dir(l.path()).unwrap().flatten() {
            let p = e.path().join("ckpt/state.json");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let st: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(st["step"], at, "{}", p.display());
                states += 1;
            }
        }
    }
    let trained = reference
        .iter()
        .filter(|(_, _, s)| !s.contains("tokens=0"))
        .count();
    assert_eq!(states, trained, "every entry in training saved its state");
    finish_and_compare(&cfg, &stopped, &reference, "stop + resume");

    // Two shards one after the other.
    let sharded = dir.path().join("sharded");
    for s in ["0/2", "1/2"] {
        let o = bld(&cfg, &sharded, &["--shard", s]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        snapshot(&sharded),
        reference,
        "two shards differ from one run"
    );

    // Two shards at once into one folder, each as PID 1 of its own PID namespace where this
    // machine lets us make one (root), so that their process ids are equal, as on two nodes.
    let together = dir.path().join("together");
    let namespaces = Proc::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let puzzle = assert_cmd::cargo::cargo_bin("puzzle");
    let kids: Vec<_> = ["0/2", "1/2"]
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let pid_file = dir.path().join(format!("pid-{i}"));
            let mut c = if namespaces {
                let mut c = Proc::new("unshare");
                c.args(["--pid", "--fork", "sh"]);
                c
            } else {
                Proc::new("sh")
            };
            c.args(["-c", r#"echo $$ > "$0"; exec "$@""#])
                .arg(&pid_file)
                .arg(&puzzle)
                .arg("bld")
                .arg(&cfg)
                .arg("--run")
                .arg(&together)
                .args(["--shard", shard])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let pids: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(dir.path().join(format!("pid-{i}"))).unwrap())
        .collect();
    if namespaces {
        assert_eq!(pids, ["1\n", "1\n"], "both shards ran as pid 1");
    } else {
        eprintln!(
            "no PID namespaces here (not root): the two shards ran at once with pids {pids:?}"
        );
    }
    assert_eq!(
        snapshot(&together),
        reference,
        "two shards at once differ from one run"
    );
    let mut walk = vec![together.clone()];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".tmp"),
                "left behind: {}",
                e.path().display()
            );
            if e.path().is_dir() {
                walk.push(e.path());
            }
        }
    }

    // A finished library is not retrained, and a checkpoint left by a kill between an
    // entry's meta.json and the checkpoint's removal is swept (seen in CI: a half-removed
    // ckpt/ with only weights.safetensors left).
    let entry = std::fs::read_dir(full.join("library/L001"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("weights.safetensors").exists())
        .unwrap()
        .path();
    for d in ["ckpt", "ckpt.tmp", "ckpt.old"] {
        std::fs::create_dir_all(entry.join(d)).unwrap();
        std::fs::copy(
            entry.join("weights.safetensors"),
            entry.join(d).join("weights.safetensors"),
        )
        .unwrap();
    }
    let o = bld(&cfg, &full, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("already trained"),
        "{err}"
    );
    for d in ["ckpt.tmp", "ckpt.old"] {
        assert!(!entry.join(d).exists(), "stale {d} kept");
    }
    assert_eq!(snapshot(&full), reference, "the sweep changed the library");
    // Bad shard syntax.
    let o = bld(&cfg, &full, &["--shard", "2/2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("INDEX/COUNT"));
}

#[test]
fn a_changed_last_byte_of_the_parent_retrains_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    for f in std::fs::read_dir(root().join("fixtures/hf/tiny-llama"))
        .unwrap()
        .flatten()
    {
        if f.path().is_file() {
            std::fs::copy(f.path(), parent.join(f.file_name())).unwrap();
        }
    }
    let cfg = common::write_bld_config(dir.path(), &parent);
    let run = dir.path().join("run");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let o = bld(&cfg, &run, &["--shard", "0/6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = snapshot(&run);
    // Unchanged: nothing to do.
    let o = bld(&cfg, &run, &["--shard", "0/6"]);
    assert!(
        o.status.success() && stderr(&o).contains("already trained"),
        "{}",
        stderr(&o)
    );
    // The last byte of the weights (the last tensor's last element) changes: every entry of the
    // library was built from the old parent and is rebuilt.
    let st = parent.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&st, &bytes).unwrap();
    let o = bld(&cfg, &run, &["--shard", "0/6"]);
    assert!(
        o.status.success() && stderr(&o).contains("(0 already done"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&run).len(), first.len());
}

#[test]
fn a_diverging_bld_stops_with_an_error_naming_the_entry_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // An absurd learning rate: the first step's update overflows the weights.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = 3e-3", "lr = 1e30");
    std::fs::write(&cfg, text).unwrap();
    let out = bld(&cfg, &dir.path().join("run"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("diverged at step")
            && err.contains("BLD of layer")
            && err.contains("lower [bld] lr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `[bld] tokens = 0` (the init-only ablation): every entry is written at its training-free
/// init, with no steps, no tokens and its held-out error unchanged by training.
#[test]
fn no_tokens_keeps_every_entry_at_its_training_free_init() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("tokens = 16384", "tokens = 0")).unwrap();
    let run = dir.path().join("run");
    let o = bld(&cfg, &run, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut trainable = 0;
    for l in std::fs::read_dir(run.join("library")).unwrap().flatten() {
        for e in std::fs::read_dir(l.path()).unwrap().flatten() {
            let meta: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path().join("meta.json")).unwrap())
                    .unwrap();
            assert_eq!(meta["steps"], 0, "{meta}");
            assert_eq!(meta["tokens"], 0, "{meta}");
            let (a, b) = (
                meta["nmse_init"].as_f64().unwrap(),
                meta["nmse_final"].as_f64().unwrap(),
            );
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-6), "{meta}");
            trainable += usize::from(meta["source"] == "trained");
        }
    }
    assert!(trainable > 0, "no entry would have been trained");
}
