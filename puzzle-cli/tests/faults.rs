//! Faults a shared machine throws at a long run: the disk fills up during BLD checkpoints or
//! an export, the run folder turns read-only. Each gives an error naming the file and the
//! cause (never a panic), leaves nothing half-written where a reader would take it for whole,
//! and a rerun once the fault is gone builds exactly what an undisturbed run builds.
//!
//! The faults are real: a small tmpfs mounted for the test (root is needed; as another user
//! these tests say so and do nothing).

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Output};

mod common;
use common::root;

use assert_cmd::cargo::CommandCargoExt;

/// A tmpfs of `kib` KiB at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when not root (the test is skipped, saying so); a failing mount as root is a
    /// test failure, not a skip.
    fn mount(dir: &Path, kib: usize) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let o = Proc::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn remount(&self, opts: &str) {
        let o = Proc::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Fills the disk up to `leave` bytes free with a file that [`Tmpfs::unfill`] removes.
    fn fill(&self, leave: u64) {
        let free = free_bytes(&self.0);
        let n = free.saturating_sub(leave);
        std::fs::write(self.0.join("filler"), vec![0u8; n as usize]).unwrap();
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Proc::new("umount").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Proc::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_bytes(dir: &Path) -> u64 {
    let o = Proc::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df --output=avail")
}

fn puzzle(args: &[&std::ffi::OsStr]) -> Output {
    Proc::cargo_bin("puzzle")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` (relative path, bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The trained library, which a faulted-then-resumed BLD must reproduce exactly: every entry's
/// weights (by sha256) and meta.json without `seconds`, its one timing field.
fn library(run: &Path) -> Vec<(String, String)> {
    use sha2::{Digest, Sha256};
    files(&run.join("library"))
        .into_iter()
        .filter_map(|(p, b)| {
            if p.ends_with("weights.safetensors") {
                Some((p, format!("{:x}", Sha256::digest(&b))))
            } else if p.ends_with("meta.json") {
                let mut m: serde_json::Value = serde_json::from_slice(&b).unwrap();
                m.as_object_mut().unwrap().remove("seconds");
                Some((p, m.to_string()))
            } else {
                None
            }
        })
        .collect()
}

/// `bld.rs`'s BLD config on the tiny-llama fixture, trained a quarter as long and
/// checkpointing twice as often.
fn config(dir: &Path) -> PathBuf {
    let p = common::write_bld_config(dir, &root().join("fixtures/hf/tiny-llama"));
    let text = std::fs::read_to_string(&p).unwrap();
    let shorter = text
        .replace("tokens = 16384", "tokens = 4096")
        .replace("checkpoint_every = 8", "checkpoint_every = 4");
    assert_ne!(text, shorter, "the BLD config changed its budget lines");
    std::fs::write(&p, shorter).unwrap();
    p
}

fn bld(cfg: &Path, run: &Path) -> Output {
    puzzle(&[
        "bld".as_ref(),
        cfg.as_os_str(),
        "--run".as_ref(),
        run.as_os_str(),
    ])
}

/// The error of a faulted command: it failed, without a panic, naming a file under `under`
/// and the system's reason.
fn assert_clear_error(o: &Output, under: &Path, reason: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "the command succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(reason), "no `{reason}` in: {err}");
    assert!(
        err.contains(&under.display().to_string()),
        "the error names no file under {}: {err}",
        under.display()
    );
}

#[test]
fn a_disk_that_fills_during_bld_stops_it_cleanly_and_a_rerun_finishes_the_same_library() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let reference = dir.path().join("reference");
    let o = bld(&cfg, &reference);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = library(&reference);
    assert!(want.len() >= 8, "{} files", want.len());

    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), 16 * 1024) else {
        return;
    };
    let run = disk.0.join("run");
    // Room for the run's first files and a few entries, not for the library: the disk fills
    // somewhere inside BLD (a checkpoint, an entry's weights or its meta).
    let total: usize = files(&reference).iter().map(|(_, b)| b.len()).sum();
    disk.fill(total as u64 / 3);
    let o = bld(&cfg, &run);
    assert_clear_error(&o, &run, "No space left on device");
    let partial = library(&run);
    assert!(
        !partial.is_empty() && partial.len() < want.len(),
        "the disk did not fill during BLD ({} of {} library files written)",
        partial.len(),
        want.len()
    );
    // What the faulted run finished is already what an undisturbed run finishes.
    for (p, b) in &partial {
        if p.ends_with("meta.json") {
            let w = want
                .iter()
                .find(|(q, _)| q == p)
                .expect("an entry of the library");
            assert_eq!(&w.1, b, "{p} differs");
        }
    }
    eprintln!(
        "disk full after {} of {} library files (an undisturbed run folder: {total} bytes): {}",
        partial.len(),
        want.len(),
        stderr(&o).lines().last().unwrap_or_default()
    );
    disk.unfill();
    let o = bld(&cfg, &run);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(library(&run), want, "a rerun after a full disk differs");
}

#[test]
fn a_read_only_run_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), 16 * 1024) else {
        return;
    };
    let run = disk.0.join("run");
    std::fs::create_dir_all(&run).unwrap();
    disk.remount("ro");
    let o = bld(&cfg, &run);
    assert_clear_error(&o, &run, "Read-only file system");
    disk.remount("rw");
}

#[test]
fn an_export_to_a_full_disk_fails_cleanly_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny-llama fixture is 1 MB of f32 weights: neither a GGUF nor an HF folder of it
    // fits in 256 KiB.
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), 256) else {
        return;
    };
    let model = root().join("fixtures/hf/tiny-llama");
    let gguf = disk.0.join("model.gguf");
    let o = puzzle(&[
        "export".as_ref(),
        "gguf".as_ref(),
        model.as_os_str(),
        gguf.as_os_str(),
    ]);
    assert_clear_error(&o, &gguf, "No space left on device");
    assert_eq!(files(&disk.0), vec![], "a partial export was left");

    // An HF folder written from a GGUF (`puzzle import gguf`) on the full disk.
    let src = dir.path().join("src.gguf");
    let o = puzzle(&[
        "export".as_ref(),
        "gguf".as_ref(),
        model.as_os_str(),
        src.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let hf = disk.0.join("hf");
    let o = puzzle(&[
        "import".as_ref(),
        "gguf".as_ref(),
        src.as_os_str(),
        hf.as_os_str(),
    ]);
    assert_clear_error(&o, &hf, "No space left on device");
    let left: Vec<String> = files(&disk.0).into_iter().map(|(p, _)| p).collect();
    assert!(
        !left.iter().any(|p| p.ends_with("model.safetensors")),
        "a partial model.safetensors was left: {left:?}"
    );
}
