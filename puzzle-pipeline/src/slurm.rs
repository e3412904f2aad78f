//! `puzzle slurm`: a run as Slurm jobs over a shared run folder.
//!
//! - `bld.sbatch`: a job array, one BLD shard per task (`--shard auto` reads
//!   `SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT`); `--requeue`, so a preempted or
//!   `scontrol requeue`d task starts again and resumes from its entries' checkpoints.
//!   `--signal=B:USR1@120`: two minutes before the time limit the batch shell passes SIGUSR1
//!   to `puzzle`, which checkpoints every entry at the step it reached and stops; the shell then
//!   requeues the task. SIGTERM (scancel, requeue, preemption) checkpoints the same way.
//! - `cost.sbatch`: the cost table, alongside BLD (it needs no library), on a node of its own
//!   (`--exclusive`): measured costs are timings, and neighbours would change them.
//! - `score.sbatch`: replace-1-block scores as a job array too (`puzzle score --shard auto`, one
//!   file per task in `scores.d/`), after every BLD task succeeded; the finish job merges them.
//! - `finish.sbatch`: `puzzle run` on the same folder after both (search, realize, distill,
//!   baselines, evaluation, report; every earlier stage is found done and reused); requeued
//!   like a BLD task near its time limit (distillation checkpoints where it stopped).
//! - `submit.sh`: submits the four with `--dependency=afterok` and prints the job ids.
//!
//! BLD and scoring are split into tasks. The cost table is one job: measured costs are ratios
//! to the parent timed in the same rounds on one machine, and a table timed on several would
//! mix them. Evaluation is one job for the same reason (its speeds are round-robin).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use puzzle_core::error::{Error, Result};

/// How long before its time limit a checkpointing job is told to stop (SIGUSR1): time to save
/// every BLD entry in training, or the distillation state.
pub const STOP_LEAD_SECONDS: u32 = 120;

/// What the jobs ask of the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmOptions {
    /// BLD array tasks.
    pub array_size: usize,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// `--time` of every job (Slurm's formats: `MM`, `HH:MM:SS`, `D-HH`).
    pub time: Option<String>,
    pub gpus_per_task: Option<usize>,
    pub cpus_per_task: Option<usize>,
    /// `--mem` of every job (`16G`).
    pub mem: Option<String>,
    /// `--device` passed to every command (`cpu`, `cuda`).
    pub device: String,
}

/// The files of a submission, by name, in the order `submit.sh` submits them (itself last).
pub fn scripts(
    puzzle: &Path,
    config: &Path,
    run_dir: &Path,
    o: &SlurmOptions,
) -> Result<Vec<(&'static str, String)>> {
    if o.array_size == 0 {
        return Err(Error::invalid("--array-size must be at least 1"));
    }
    for (flag, v) in [
        ("--partition", &o.partition),
        ("--account", &o.account),
        ("--time", &o.time),
        ("--mem", &o.mem),
    ] {
        if let Some(v) = v
            && (v.is_empty()
                || v.chars()
                    .any(|c| c.is_whitespace() || c == '\'' || c == '"'))
        {
            return Err(Error::invalid(format!(
                "{flag} `{v}`: empty, or with a space or quote Slurm would not read as one value"
            )));
        }
    }
    let logs = run_dir.join("slurm/logs");
    let q = |p: &Path| quote(&p.display().to_string());
    let line = |command: &str, extra: &str| {
        format!(
            "{} {command} {} --run {} --device {}{extra}",
            q(puzzle),
            q(config),
            q(run_dir),
            o.device
        )
    };
    let cmd = |command: &str, extra: &str| format!("exec {}\n", line(command, extra));
    // puzzle runs as the shell's child so the shell can requeue the task after it stopped.
    let stoppable = |command: &str, extra: &str| {
        format!(
            "# SIGUSR1 (the time limit is near) and SIGTERM go to puzzle, which checkpoints and\n\
             # stops; after SIGUSR1 this task is requeued and resumes from the checkpoints.\n\
             requeue=\n\
             pid=\n\
             trap 'requeue=1; if [ -n \"$pid\" ]; then kill -USR1 \"$pid\" 2>/dev/null || true; fi' USR1\n\
             trap 'if [ -n \"$pid\" ]; then kill -TERM \"$pid\" 2>/dev/null || true; fi' TERM\n\
             {} &\n\
             pid=$!\n\
             status=0\n\
             # A trapped signal ends `wait` early: wait again until puzzle has exited.\n\
             wait \"$pid\" || status=$?\n\
             while kill -0 \"$pid\" 2>/dev/null; do status=0; wait \"$pid\" || status=$?; done\n\
             if [ -n \"$requeue\" ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi\n\
             exit \"$status\"\n",
            line(command, extra)
        )
    };
    let stop_lead = format!("--signal=B:USR1@{STOP_LEAD_SECONDS}");
    let header = |name: &str, log: &str, extra: &[String]| {
        let mut s = String::from("#!/bin/bash\n");
        let _ = writeln!(s, "#SBATCH --job-name=puzzle-{name}");
        let _ = writeln!(s, "#SBATCH --output={}", logs.join(log).display());
        let _ = writeln!(s, "#SBATCH --open-mode=append");
        for (k, v) in [
            ("partition", &o.partition),
            ("account", &o.account),
            ("time", &o.time),
            ("mem", &o.mem),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "#SBATCH --{k}={v}");
            }
        }
        if let Some(g) = o.gpus_per_task {
            let _ = writeln!(s, "#SBATCH --gpus-per-task={g}");
        }
        if let Some(c) = o.cpus_per_task {
            let _ = writeln!(s, "#SBATCH --cpus-per-task={c}");
            // Our CPU kernels use as many threads as they are given, not the node's cores.
        }
        for e in extra {
            let _ = writeln!(s, "#SBATCH {e}");
        }
        s.push_str("set -euo pipefail\n");
        if o.cpus_per_task.is_some() {
            s.push_str("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK}\"\n");
        }
        s
    };
    let bld = header(
        "bld",
        "bld-%a.log",
        &[
            format!("--array=0-{}", o.array_size - 1),
            "--requeue".into(),
            stop_lead.clone(),
        ],
    ) + "# One shard of the library per array task; a requeued task resumes from its entries'\n\
         # checkpoints (each written atomically), so nothing finished is trained again.\n"
        + &stoppable("bld", " --shard auto");
    let cost = header("cost", "cost.log", &["--exclusive".into()])
        + "# Alone on its node: measured costs are timings.\n"
        + &cmd("cost", "");
    let score = header(
        "score",
        "score-%a.log",
        &[format!("--array=0-{}", o.array_size - 1)],
    ) + "# One shard of the scores per array task (scores.d/); `puzzle run` merges them into\n\
         # scores.json.\n"
        + &cmd("score", " --shard auto");
    let finish = header("finish", "finish.log", &["--requeue".into(), stop_lead])
        + "# Search, realize, distill, baselines, evaluation and report; BLD, costs and scores are\n\
           # found done and reused.\n"
        + &stoppable("run", "");
    let submit = format!(
        "#!/bin/bash\n\
         # Submits the run in {run}:\n\
         # BLD as a job array and the cost table at once, scores after BLD, the rest after both.\n\
         # Rerunning it resubmits; finished work is reused.\n\
         set -euo pipefail\n\
         cd {dir}\n\
         mkdir -p {logs}\n\
         # The job id of what sbatch submitted (`--parsable` prints `id` or `id;cluster`).\n\
         submit() {{ local out; out=$(sbatch --parsable \"$@\"); echo \"${{out%%;*}}\"; }}\n\
         bld=$(submit bld.sbatch)\n\
         cost=$(submit cost.sbatch)\n\
         score=$(submit --dependency=afterok:\"$bld\" score.sbatch)\n\
         finish=$(submit --dependency=afterok:\"$score\":\"$cost\" finish.sbatch)\n\
         echo \"bld=$bld cost=$cost score=$score finish=$finish\"\n",
        run = run_dir.display(),
        dir = q(&run_dir.join("slurm")),
        logs = q(&logs),
    );
    Ok(vec![
        ("bld.sbatch", bld),
        ("cost.sbatch", cost),
        ("score.sbatch", score),
        ("finish.sbatch", finish),
        ("submit.sh", submit),
    ])
}

/// Writes the scripts into `run_dir/slurm/` (executable) and returns that folder.
pub fn write(run_dir: &Path, files: &[(&'static str, String)]) -> Result<PathBuf> {
    let dir = run_dir.join("slurm");
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| Error::io(&dir, e))?;
    for (name, text) in files {
        let p = dir.join(name);
        puzzle_core::fsutil::write_atomic(&p, text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(dir)
}

/// `path` made absolute with `.` and `..` resolved lexically, so scripts name plain paths.
pub fn normalize(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A shell word: as it is when it has nothing a shell would read, else in single quotes.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SlurmOptions {
        SlurmOptions {
            array_size: 4,
            device: "cpu".into(),
            ..Default::default()
        }
    }

    #[test]
    fn paths_are_normalised_lexically() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")).unwrap(),
            PathBuf::from("/a/c/d")
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(quote("/runs/tiny"), "/runs/tiny");
        assert_eq!(quote("/my runs/it's"), r"'/my runs/it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn the_array_covers_every_shard_and_bad_values_are_named() {
        let f = scripts(
            Path::new("/bin/puzzle"),
            Path::new("/c.toml"),
            Path::new("/r"),
            &opts(),
        )
        .unwrap();
        assert!(f[0].1.contains("#SBATCH --array=0-3\n"), "{}", f[0].1);
        assert!(f[0].1.contains("--shard auto"));
        let bad = |o: SlurmOptions, want: &str| {
            let e = scripts(Path::new("/p"), Path::new("/c"), Path::new("/r"), &o)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        };
        bad(
            SlurmOptions {
                array_size: 0,
                ..opts()
            },
            "--array-size",
        );
        bad(
            SlurmOptions {
                partition: Some("gpu main".into()),
                ..opts()
            },
            "--partition `gpu main`",
        );
    }
}
