//! Reading a finished run folder: what the report, the README table and `puzzle ablate` share.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use puzzle_core::kinds::SpeedMetric;
use puzzle_pipeline::ablate::finished;
use puzzle_pipeline::evaluate::{Verdict, verdicts};
use puzzle_pipeline::pipeline::{EvalReport, ModelEval};

/// `m`'s measurement at batch `b`.
pub(crate) fn speed_at(m: &ModelEval, b: usize) -> Option<&puzzle_core::eval::speed::Speed> {
    m.speed.iter().find(|s| s.batch == b)
}

/// The run's constraints as its config states them (`RUN/config.toml` `[search] constraints`).
pub fn run_constraints(run: &Path) -> Result<Vec<String>> {
    let cfg = run.join("config.toml");
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
    let v: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))?;
    Ok(v.get("search")
        .and_then(|s| s.get("constraints"))
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// One row of the ablation table: a run's child, from its own final evaluation.
pub struct Row {
    pub name: String,
    pub describe: String,
    pub eval: EvalReport,
    /// The first relative speed target's verdict, if the run had one.
    pub verdict: Option<Verdict>,
}

impl Row {
    fn of(name: &str, describe: &str, dir: &Path) -> Result<Row> {
        let eval: EvalReport = puzzle_core::fsutil::read_json(&dir.join("eval/report.json"))
            .with_context(|| format!("reading {}", dir.join("eval/report.json").display()))?;
        let verdict = verdicts(&run_constraints(dir)?, &eval, "child")?
            .into_iter()
            .next();
        Ok(Row {
            name: name.into(),
            describe: describe.into(),
            eval,
            verdict,
        })
    }

    fn child(&self) -> Option<&puzzle_pipeline::pipeline::ModelEval> {
        self.eval.models.iter().find(|m| m.name == "child")
    }

    /// (measured `metric` over the parent's at the evaluation's batch size, KL vs parent) of
    /// the row's child, as the frontier plot places every measured model.
    pub fn point(&self, metric: SpeedMetric) -> Option<(f64, f64)> {
        let b = self.eval.batch;
        let parent = self.eval.models.iter().find(|m| m.name == "parent")?;
        let child = self.child()?;
        let speed = speed_at(child, b)?.over(speed_at(parent, b)?, metric).0;
        Some((speed, child.agreement.as_ref()?.kl))
    }
}

/// The main run's child, then every finished ablation of `run`. An ablation folder that does
/// not read (a hand-edited file, a newer layout) is left out with a warning: the main run's
/// report does not depend on it.
pub fn ablation_rows(run: &Path) -> Result<Vec<Row>> {
    let mut out = vec![Row::of("puzzle", "the run itself", run)?];
    let done = match finished(run) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("warning: ablations left out of the report: {e}");
            return Ok(out);
        }
    };
    for (info, dir) in done {
        match Row::of(&info.name, &info.describe, &dir) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!(
                "warning: ablation {} left out of the report: {e:#}",
                info.name
            ),
        }
    }
    Ok(out)
}

/// The ablation table in Markdown: measured speed with its spread, retention and KL, and the
/// retention's difference to the main run's child.
pub fn ablation_markdown(rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| row | what changes | child speed vs parent (over passes) | target | retention | Δ retention | KL vs parent | val loss |\n|---|---|---|---|---|---|---|---|"
    );
    let base = rows
        .first()
        .and_then(|r| r.child())
        .and_then(|c| c.retention);
    for r in rows {
        let Some(c) = r.child() else { continue };
        let speed = r.verdict.as_ref().map_or("-".into(), |v| {
            let passes = v
                .passes
                .map_or(String::new(), |p| format!(" ({:.2}-{:.2}x)", p[0], p[1]));
            format!("{:.2}x{passes}", v.measured)
        });
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let delta = match (c.retention, base) {
            (Some(x), Some(b)) if r.name != "puzzle" => format!("{:+.1} pt", 100.0 * (x - b)),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.4} |",
            r.name,
            r.describe,
            speed,
            r.verdict
                .as_ref()
                .map_or("-".into(), |v| format!("`{}` {}", v.constraint, v.word())),
            c.retention.map_or("-".into(), pct),
            delta,
            c.agreement
                .as_ref()
                .map_or("-".into(), |a| format!("{:.4}", a.kl)),
            c.lm.loss,
        );
    }
    md
}
