//! `puzzle slurm` on a real one-node Slurm cluster that the test starts and stops (munged,
//! slurmctld, slurmd; config written here): the scaled-down tiny run (`common::scaled_config`)
//! goes through 3 BLD array tasks, one of them requeued mid-training, and the library, the
//! costs (the simulated clock makes them deterministic) and the scores equal a serial run's.
//!
//! Needs root and Debian's `slurm-wlm` and `munge` (`.ci/run` installs them and sets
//! `PUZZLE_REQUIRE_SLURM=1`, which turns a missing cluster into a failure); elsewhere it says
//! why it did not run.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;

mod common;
use common::{contents, scaled_config};

fn have(cmd: &str) -> bool {
    Proc::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The cluster: stopped (`scontrol shutdown`) when dropped, whatever the test's outcome.
struct Cluster {
    conf: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let host = String::from_utf8(Proc::new("hostname").arg("-s").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for d in ["spool", "state", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let p = |d: &str| dir.join(d).display().to_string();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=puzzle-test\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nCredType=cred/munge\nStateSaveLocation={}\n\
                 SlurmdSpoolDir={}\nSlurmctldPidFile={}/slurmctld.pid\nSlurmdPidFile={}/slurmd.pid\n\
                 SlurmctldLogFile={}/slurmctld.log\nSlurmdLogFile={}/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nSchedulerType=sched/backfill\n\
                 ReturnToService=2\nMpiDefault=none\n\
                 NodeName={host} CPUs={cpus} RealMemory=8000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n",
                p("state"),
                p("spool"),
                p("state"),
                p("state"),
                p("log"),
                p("log"),
            ),
        )
        .unwrap();
        // munged runs as its own user; one may already be running (then this one exits).
        let munge_ok = || {
            Proc::new("sh")
                .args(["-c", "munge -n | unmunge"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !munge_ok() {
            for d in ["/run/munge", "/var/log/munge", "/var/lib/munge"] {
                std::fs::create_dir_all(d).unwrap();
                assert!(
                    Proc::new("chown")
                        .args(["munge:munge", d])
                        .status()
                        .unwrap()
                        .success()
                );
            }
            if !Path::new("/etc/munge/munge.key").exists() {
                assert!(
                    Proc::new("mungekey")
                        .arg("--create")
                        .status()
                        .unwrap()
                        .success()
                );
                let _ = Proc::new("chown")
                    .args(["munge:munge", "/etc/munge/munge.key"])
                    .status();
            }
            let _ = Proc::new("runuser")
                .args(["-u", "munge", "--", "/usr/sbin/munged"])
                .status();
            assert!(munge_ok(), "munged did not start");
        }
        let c = Cluster { conf };
        for d in ["slurmctld", "slurmd"] {
            let s = Proc::new(d).env("SLURM_CONF", &c.conf).status().unwrap();
            assert!(
                s.success(),
                "{d} did not start: see {}",
                dir.join("log").display()
            );
        }
        let t0 = Instant::now();
        while !c.out("sinfo", &["-h", "-o", "%t"]).contains("idle") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the node never became idle: {}",
                c.out("sinfo", &[])
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        c
    }

    fn out(&self, cmd: &str, args: &[&str]) -> String {
        let o = Proc::new(cmd)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Proc::new("scontrol")
            .arg("shutdown")
            .env("SLURM_CONF", &self.conf)
            .status();
    }
}

fn puzzle(args: &[&str], cfg: &Path, run: &Path) {
    let o = Proc::cargo_bin("puzzle")
        .unwrap()
        .arg(args[0])
        .arg(cfg)
        .arg("--run")
        .arg(run)
        .args(&args[1..])
        .env("PUZZLE_SIMULATED_CLOCK", "1")
        // As the tasks run (`--cpus-per-task 1`): the engine's thread count is recorded.
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_one_node_cluster_runs_the_scaled_run_and_a_requeued_task_changes_nothing() {
    let root = Proc::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let missing: Vec<&str> = ["slurmctld", "slurmd", "sbatch", "munged"]
        .into_iter()
        .filter(|c| !have(c) && !Path::new(&format!("/usr/sbin/{c}")).exists())
        .collect();
    if !root || !missing.is_empty() {
        let why = format!("not root ({root}) or missing {missing:?}");
        assert!(
            std::env::var_os("PUZZLE_REQUIRE_SLURM").is_none(),
            "PUZZLE_REQUIRE_SLURM is set but there is no cluster to start: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = scaled_config(dir.path());
    let cluster = Cluster::start(&dir.path().join("slurm"));
    let run = dir.path().join("shared/run");
    let o = Proc::cargo_bin("puzzle")
        .unwrap()
        .args(["slurm"])
        .arg(&cfg)
        .arg("--run")
        .arg(&run)
        .args(["--array-size", "3", "--cpus-per-task", "1"])
        .env("SLURM_CONF", &cluster.conf)
        // sbatch exports the environment: every task times on the simulated clock.
        .env("PUZZLE_SIMULATED_CLOCK", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bld_job = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("(bld=").or_else(|| w.strip_prefix("bld=")))
        .unwrap_or_else(|| panic!("no bld job id in: {said}"))
        .to_string();
    // Once tasks 1 and 2 are training (their logs show BLD's start): requeue task 1 (Slurm
    // sends it SIGTERM), and give task 2's batch shell the time limit's warning (SIGUSR1, as
    // `--signal=B:USR1@120` would), after which it checkpoints, stops and requeues itself.
    let logs = run.join("slurm/logs");
    let t0 = Instant::now();
    let training = |task: usize| {
        std::fs::read_to_string(logs.join(format!("bld-{task}.log")))
            .unwrap_or_default()
            .contains("BLD: ")
    };
    let wait_training = |task: usize| {
        while !training(task) {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "task {task} never started training"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_training(1);
    let task = format!("{bld_job}_1");
    let o = Proc::new("scontrol")
        .args(["requeue", &task])
        .env("SLURM_CONF", &cluster.conf)
        .output()
        .unwrap();
    let requeued = o.status.success();
    eprintln!(
        "scontrol requeue {task}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    wait_training(2);
    let warned = Proc::new("scancel")
        .args(["--batch", "--signal=USR1", &format!("{bld_job}_2")])
        .env("SLURM_CONF", &cluster.conf)
        .status()
        .unwrap()
        .success();
    // Everything drains.
    let t0 = Instant::now();
    while !cluster.out("squeue", &["-h"]).trim().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "jobs still queued after 15 minutes: {}",
            cluster.out("squeue", &[])
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let finish = std::fs::read_to_string(logs.join("finish.log")).unwrap_or_default();
    assert!(
        run.join("report/README.md").is_file(),
        "the run did not finish: {finish}"
    );
    if requeued {
        // The requeued task's log (appended) shows two starts.
        let log = std::fs::read_to_string(logs.join("bld-1.log")).unwrap();
        assert!(
            log.matches("BLD: ").count() + log.matches("library complete").count() >= 2,
            "{log}"
        );
    } else {
        // It finished before the requeue reached it: said, and the rest still holds.
        eprintln!("task 1 had finished before the requeue");
    }
    let log2 = std::fs::read_to_string(logs.join("bld-2.log")).unwrap();
    if warned && log2.contains("stopped by signal 10") {
        // Checkpointed at the step reached, requeued by its own script, and resumed.
        assert!(log2.contains("in training at step"), "{log2}");
        let starts = log2.matches("BLD: ").count() + log2.matches("library complete").count();
        assert!(
            starts >= 2,
            "task 2 did not start again after its stop: {log2}"
        );
        eprintln!("task 2: stopped by SIGUSR1, requeued itself, started {starts} times");
    } else {
        eprintln!("task 2 was not stopped by SIGUSR1 in training (warned: {warned}): {log2}");
    }

    // The same stages, serially, outside Slurm.
    let serial = dir.path().join("serial");
    puzzle(&["bld"], &cfg, &serial);
    puzzle(&["cost"], &cfg, &serial);
    puzzle(&["score"], &cfg, &serial);
    let pick = |m: std::collections::BTreeMap<String, String>| {
        m.into_iter()
            .filter(|(k, _)| k.starts_with("library/") || k == "costs.json" || k == "scores.json")
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (got, want) = (pick(contents(&run)), pick(contents(&serial)));
    assert!(want.contains_key("costs.json") && want.contains_key("scores.json"));
    let differ: Vec<&String> = want
        .keys()
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    let first = |k: &String| {
        let (a, b) = (&got[k], &want[k]);
        let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        let from = at.saturating_sub(120);
        format!(
            "{k} at byte {at}: Slurm ...{} | serial ...{}",
            &a[from.min(a.len())..(at + 120).min(a.len())],
            &b[from.min(b.len())..(at + 120).min(b.len())]
        )
    };
    assert!(
        differ.is_empty() && got.len() == want.len(),
        "Slurm vs serial differ in {differ:?} ({} vs {} files): {:?}",
        got.len(),
        want.len(),
        differ
            .iter()
            .filter(|k| got.contains_key(**k))
            .map(|k| first(k))
            .collect::<Vec<_>>()
    );
}
