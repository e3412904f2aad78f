//! `puzzle ablate [CONFIG]`: the paper's ablations as runs beside the main one.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use puzzle_core::bld::Prominent;
use puzzle_pipeline::ablate::{Ablation, NAMES, prepare};
use puzzle_pipeline::config::RunConfig;
use puzzle_pipeline::pipeline::run_all;

use crate::ui;

/// Run the paper's ablations of Puzzle beside a run, each a run that changes one switch and is
/// searched for the same constraints, so every ablated child is measured at the target speed in
/// the same engine: scoring by LM loss instead of KL (lm-loss), a greedy per-layer choice or a
/// random architecture instead of the MIP (greedy, random), the library at its training-free
/// init (init-only: no BLD), coupled BLD after the decoupled search (coupled; decoupled-only for
/// a run that couples), and no global distillation (no-gkd).
///
/// The main run goes first (reused when finished). Each ablation runs in RUN/ablations/<name>/,
/// starting from the main run's artifacts (hard links): what its switch leaves unchanged is
/// reused, so the greedy row costs a search, GKD and an evaluation. The table goes to stdout and
/// into RUN/report/README.md. Kill it at any point and run the same command again to continue.
///
/// Examples:
///   puzzle ablate
///   puzzle ablate examples/tiny/tiny.toml --only greedy,no-gkd
///   puzzle ablate my-run.toml --run runs/experiment-3 --couple 1,2
#[derive(Args, Debug)]
#[command(
    verbatim_doc_comment,
    about = "Run the paper's ablations of Puzzle beside a run (LM-loss scoring, greedy and random \
             search, no BLD, coupled BLD, no GKD), each searched for the same constraints and \
             measured in the same engine; a table of retention at the measured speed"
)]
pub struct AblateArgs {
    /// Run config (TOML); default: the embedded tiny example.
    pub config: Option<PathBuf>,
    /// The main run's folder (default: from the config).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Only these ablations, comma-separated: lm-loss, greedy, random, init-only, coupled,
    /// decoupled-only, no-gkd (default: every one that changes the run).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// For the coupled row: how many of the decoupled search's most chosen attention and FFN
    /// variants are paired, as ATTENTION,FFN.
    #[arg(long, default_value = "2,2", value_name = "A,F")]
    pub couple: String,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn parse_couple(s: &str) -> Result<Prominent> {
    let parse = |x: &str| -> Result<usize> {
        let n: usize = x
            .trim()
            .parse()
            .with_context(|| format!("--couple {s}: `{x}` is not a count"))?;
        anyhow::ensure!(n >= 1, "--couple {s}: counts must be at least 1");
        Ok(n)
    };
    let (a, f) = s
        .split_once(',')
        .with_context(|| format!("--couple {s}: expected ATTENTION,FFN, e.g. 2,2"))?;
    Ok(Prominent {
        attention: parse(a)?,
        ffn: parse(f)?,
    })
}

pub fn run(a: AblateArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let couple = parse_couple(&a.couple)?;
    for n in &a.only {
        anyhow::ensure!(
            NAMES.contains(&n.as_str()),
            "--only {n}: no such ablation; there are: {}",
            NAMES.join(", ")
        );
    }
    let (config, run_dir) = super::run::config_and_dir(a.config.as_deref(), a.run.as_deref())?;
    // Absolute, so that the ablations' configs, written elsewhere, name the same files.
    let config = std::path::absolute(&config).unwrap_or(config);
    let mut base = RunConfig::load(&config)?;
    if let Some(d) = &run_dir {
        base.run_dir = Some(std::path::absolute(d).unwrap_or_else(|_| d.clone()));
    }
    let dir = base.run_dir();
    let ablations: Vec<Ablation> = if a.only.is_empty() {
        Ablation::all_for(&base, couple)
    } else {
        a.only
            .iter()
            .map(|n| Ablation::named(n, &base, couple))
            .collect::<puzzle_core::Result<_>>()?
    };
    let t0 = std::time::Instant::now();
    let mut bars = ui::Bars::new();
    eprintln!("main run: {}", dir.display());
    run_all(
        &config,
        Some(&dir),
        &device,
        crate::registry::plugins().clone(),
        crate::registry::consent(),
        &mut bars,
    )?;
    let mut failed = Vec::new();
    for (i, ab) in ablations.iter().enumerate() {
        let p = prepare(&base, &dir, ab)?;
        eprintln!(
            "ablation {}/{}: {} ({}) in {}",
            i + 1,
            ablations.len(),
            ab.name(),
            ab.describe(),
            p.dir.display()
        );
        let t = std::time::Instant::now();
        let r = run_all(
            &p.config,
            Some(&p.dir),
            &device,
            crate::registry::plugins().clone(),
            crate::registry::consent(),
            &mut bars,
        );
        match r {
            Ok(_) => eprintln!(
                "ablation {}: done in {:.0} s",
                ab.name(),
                t.elapsed().as_secs_f64()
            ),
            // The other rows are still worth having: say what failed, go on, fail at the end.
            Err(e) => {
                eprintln!("ablation {} failed: {e}", ab.name());
                failed.push(format!("{}: {e}", ab.name()));
            }
        }
    }
    let rows = crate::runs::ablation_rows(&dir)?;
    println!("{}", crate::runs::ablation_markdown(&rows));
    let out = crate::report::write(&dir, &config.display().to_string())?;
    eprintln!(
        "done in {:.0} s; report: {}",
        t0.elapsed().as_secs_f64(),
        out.join("README.md").display()
    );
    anyhow::ensure!(
        failed.is_empty(),
        "{} ablation(s) failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn couple_counts_parse_or_say_what_is_wrong() {
        let p = parse_couple("1, 3").unwrap();
        assert_eq!((p.attention, p.ffn), (1, 3));
        for (bad, want) in [
            ("2", "expected ATTENTION,FFN"),
            ("0,2", "at least 1"),
            ("x,2", "`x` is not a count"),
        ] {
            let e = format!("{:#}", parse_couple(bad).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
