//! `puzzle slurm --dry-run`: the scripts a submission writes, against a golden copy
//! (`tests/golden/slurm-dry-run.txt`; `PUZZLE_UPDATE_GOLDEN=1` rewrites it after a deliberate
//! change), and the errors before anything is submitted.

use assert_cmd::Command;

mod common;
use common::root;

#[test]
fn a_dry_run_prints_the_golden_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = std::fs::canonicalize(dir.path()).unwrap();
    let repo = std::fs::canonicalize(root()).unwrap();
    let out = Command::cargo_bin("puzzle")
        .unwrap()
        .current_dir(&repo)
        .args(["slurm", "examples/tiny/tiny.toml", "--dry-run", "--run"])
        .arg(tmp.join("shared/runs/tiny"))
        .args([
            "--array-size",
            "3",
            "--partition",
            "debug",
            "--account",
            "puzzle",
            "--time",
            "00:30:00",
            "--cpus-per-task",
            "2",
            "--mem",
            "4G",
            "--puzzle",
            "/opt/puzzle/bin/puzzle",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)
        .unwrap()
        .replace(&tmp.display().to_string(), "$TMP")
        .replace(&repo.display().to_string(), "$REPO");
    let golden = root().join("puzzle-cli/tests/golden/slurm-dry-run.txt");
    if std::env::var_os("PUZZLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(text, want, "the dry run differs from {}", golden.display());
    // A dry run writes nothing.
    assert!(!tmp.join("shared").exists());
}

#[test]
fn bad_submissions_are_refused_before_anything_is_submitted() {
    let fail = |args: &[&str], want: &str| {
        let out = Command::cargo_bin("puzzle")
            .unwrap()
            .current_dir(root())
            .arg("slurm")
            .args(args)
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    let cfg = "examples/tiny/tiny.toml";
    fail(
        &[cfg, "--dry-run", "--array-size", "0"],
        "--array-size must be at least 1",
    );
    fail(&[cfg, "--dry-run", "--time", "1 day"], "--time `1 day`");
    fail(&[cfg, "--dry-run", "--device", "tpu"], "tpu");
    fail(&["no-such.toml", "--dry-run"], "no-such.toml");
    // Without sbatch (PATH emptied), a real submission says where to run it.
    fail(&[cfg], "sbatch is not on PATH");
}
