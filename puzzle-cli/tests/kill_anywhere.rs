//! Kill anywhere, with the real config: `puzzle run` on the embedded tiny example (its parent,
//! search space, llama.cpp deployment, measured costs, speed calibration, both baselines,
//! tasks), scaled down to seconds, is SIGKILLed at instants a seed chooses, at a random time or
//! at a random durability boundary inside a write (`PUZZLE_KILL_AT_WRITE`), and restarted each
//! time. The folder it ends with must equal an uninterrupted run's file for file and byte for
//! byte, except the timing fields the pipeline declares (`puzzle_pipeline::run::TIMING_FIELDS`).
//!
//! Measured times would make that impossible (the search decides from them), so both runs use
//! the simulated clock (`PUZZLE_SIMULATED_CLOCK=1`): every request still runs in llama.cpp, the
//! time it reports is a deterministic function of the model's shape.
//!
//! `PUZZLE_KILL_SEED=N` replays another sequence; the instants and where each kill landed are
//! printed.

use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{contents, scaled_config};

use assert_cmd::cargo::CommandCargoExt;
use puzzle_core::rng::SeededRng;

/// Kills per test run (the issue asks for at least 20).
const KILLS: usize = 24;

/// `puzzle run CONFIG --run run` started in `cwd` (so both runs record the same relative paths).
fn start(cfg: &Path, cwd: &Path, kill_at_write: Option<u64>, log: &Path) -> std::process::Child {
    let mut cmd = Proc::cargo_bin("puzzle").unwrap();
    cmd.current_dir(cwd)
        .args(["run"])
        .arg(cfg)
        .args(["--run", "run"])
        .env("PUZZLE_SIMULATED_CLOCK", "1")
        .env_remove("PUZZLE_KILL_AT_WRITE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(n) = kill_at_write {
        cmd.env("PUZZLE_KILL_AT_WRITE", n.to_string());
    }
    cmd.spawn().unwrap()
}

/// The stage a run folder is in: the first whose output is missing.
fn stage_of(run: &Path) -> &'static str {
    let lib_done = run.join("costs.json").exists();
    let milestones: [(&str, bool); 8] = [
        ("bld", lib_done),
        ("cost", run.join("costs.json").exists()),
        ("score", run.join("scores.json").exists()),
        ("search", run.join("search/solution.json").exists()),
        ("child", run.join("child/puzzle.json").exists()),
        (
            "baselines",
            run.join("baselines/layer_removal/baseline.json").exists(),
        ),
        ("eval", run.join("eval/report.json").exists()),
        ("report", run.join("report/README.md").exists()),
    ];
    milestones
        .iter()
        .find(|(_, done)| !done)
        .map_or("finished", |(s, _)| s)
}

#[test]
fn killed_anywhere_with_the_real_config_it_ends_with_the_same_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = scaled_config(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();

    let t0 = Instant::now();
    let log = dir.path().join("reference.log");
    let status = start(&cfg, &a, None, &log).wait().unwrap();
    let whole = t0.elapsed();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log_text}");
    assert!(log_text.contains("times SIMULATED"), "{log_text}");
    let want = contents(&a.join("run"));
    // The matching's measurements are kept, so a restart in the baselines does not redo them.
    assert!(
        want.contains_key("baselines/matching.json"),
        "{:?}",
        want.keys()
    );
    // A restart of a finished run redoes nothing and changes nothing.
    let t1 = Instant::now();
    assert!(start(&cfg, &a, None, &log).wait().unwrap().success());
    let restart = t1.elapsed();
    assert_eq!(
        contents(&a.join("run")),
        want,
        "a restart of a finished run changed it"
    );

    let seed = std::env::var("PUZZLE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18u64);
    let mut rng = SeededRng::new(seed);
    let mut kills: Vec<String> = Vec::new();
    // Halved whenever a restart gets to the end before its kill (the machine is faster now than
    // when `whole` was measured), so the kills land in runs rather than in finished folders;
    // doubled when kills stop moving the run on (below).
    let mut pace = 1.0;
    let mut attempts = 0;
    while kills.len() < KILLS {
        attempts += 1;
        assert!(
            attempts <= 3 * KILLS,
            "seed {seed}: only {} kills in {attempts} attempts: {kills:?}",
            kills.len()
        );
        let log = dir.path().join(format!("killed-{attempts}.log"));
        // One kill in three at a durability boundary (the N-th synced-temp-file-before-rename,
        // rename, or checkpoint swap of that process), the others at a random time after the
        // restart has opened the run and reached its first stage: a share of the whole run
        // drawn so that the kills' new work adds up to about one run, spreading them over
        // every stage.
        let (at_write, delay) = if attempts % 3 == 0 {
            (Some(1 + rng.below(40) as u64), None)
        } else {
            let share = rng.uniform_in(0.0, 2.0) / KILLS as f64;
            (None, Some(whole.mul_f64(share * pace)))
        };
        let mut child = start(&cfg, &b, at_write, &log);
        let started = Instant::now();
        let mut armed: Option<Instant> = None;
        let killed = loop {
            if let Some(status) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                // A self-inflicted SIGKILL at a write, or a run that got to the end.
                break status.signal() == Some(9);
            }
            if armed.is_none() && delay.is_some() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("\nBLD: ") || text.contains("\nlibrary complete") {
                    armed = Some(Instant::now());
                }
            }
            if armed.zip(delay).is_some_and(|(t, d)| t.elapsed() >= d) {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "a restart ran for 10 minutes: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let how = match (at_write, delay) {
            (Some(n), _) => format!("write boundary {n}"),
            (_, Some(d)) => format!("{:.2} s into the stages", d.as_secs_f64()),
            _ => unreachable!(),
        };
        if killed {
            let stage = stage_of(&b.join("run"));
            kills.push(format!("{how} in {stage}"));
            // A slower machine than the one `whole` was measured on (CI's, under load) spends
            // most of a short restart reopening the run, so kills can pile up in one stage
            // without moving it on: after four in a row in the same stage, let them run longer.
            let in_stage = format!(" in {stage}");
            let streak = kills
                .iter()
                .rev()
                .take_while(|k| k.ends_with(&in_stage))
                .count();
            if streak % 4 == 0 {
                pace *= 2.0;
                eprintln!("seed {seed}: four kills in a row in {stage}: pace {pace}");
            }
        } else {
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(text.contains("done in"), "{how}: the run failed: {text}");
            // It finished before the kill: start again from nothing so the kills that are
            // left land in a run, not in a finished folder.
            assert_eq!(
                contents(&b.join("run")),
                want,
                "seed {seed}: after kills at {kills:?} a completed run differs"
            );
            std::fs::remove_dir_all(b.join("run")).unwrap();
            pace /= 2.0;
        }
    }
    eprintln!(
        "seed {seed}: whole run {:.1} s, restart {:.1} s; {} kills: {kills:#?}",
        whole.as_secs_f64(),
        restart.as_secs_f64(),
        kills.len()
    );
    // Kills spread over the pipeline, not all in one stage (which stages depends on the seed
    // and the machine: cost, score and search take well under a second here).
    let stages: std::collections::BTreeSet<&str> = kills
        .iter()
        .filter_map(|k| k.rsplit(" in ").next())
        .collect();
    assert!(
        stages.len() >= 3,
        "seed {seed}: kills landed in {stages:?} only: {kills:?}"
    );
    let log = dir.path().join("final.log");
    let status = start(&cfg, &b, None, &log).wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let got = contents(&b.join("run"));
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<&String> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    // Where each differing file first differs, with some context.
    let first_difference = |k: &String| {
        let (w, g) = (&want[k], &got[k]);
        let at = w
            .char_indices()
            .zip(g.chars())
            .find(|((_, a), b)| a != b)
            .map_or(w.len().min(g.len()), |((i, _), _)| i);
        let around = |s: &str| {
            let lo = s.floor_char_boundary(at.saturating_sub(120));
            let hi = s.ceil_char_boundary((at + 120).min(s.len()));
            s[lo..hi].to_string()
        };
        format!(
            "{k}:\n  uninterrupted …{}…\n  killed        …{}…",
            around(w),
            around(g)
        )
    };
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "seed {seed}, kills {kills:?}:\nmissing {missing:?}\nextra {extra:?}\n{}",
        differ
            .iter()
            .map(|k| first_difference(k))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
