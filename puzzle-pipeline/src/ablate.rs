//! `puzzle ablate`: the paper's ablations of Puzzle, each a run beside the main one that differs
//! in one switch of the config, searched for the same constraints (so each ablated child is
//! measured at the target speed, as the paper compares them) and evaluated in the same engine.
//!
//! An ablation's run folder is `<run>/ablations/<name>/`. Before it runs, the main run's
//! artifacts are linked in (hard links: every artifact is written by temp file + rename, so a
//! rebuild in one folder never changes the other's), and the artifacts' recorded inputs decide
//! what is reused: the MIP-vs-greedy row reuses BLD, costs and scores and runs only the search,
//! GKD and evaluation again; the init-only row rebuilds its library and what follows it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use puzzle_core::bld::Prominent;
use puzzle_core::error::{Error, Result};

/// One ablation: a single switch of the run config.
#[derive(Clone, Debug, PartialEq)]
pub enum Ablation {
    /// The search minimises this score instead of the config's (`lm_loss_delta`: replace-1-block
    /// scoring by LM loss rather than KL divergence, the paper's comparison of the two).
    Objective(String),
    /// Another solver in place of the MIP: `greedy` (a per-layer greedy choice) or `random` (a
    /// random architecture from the library meeting the same constraints).
    Solver(String),
    /// Every library entry kept at its training-free init (`[bld] tokens = 0`): what BLD adds.
    InitOnly,
    /// Coupled BLD after the decoupled search, for a run that has none.
    Coupled(Prominent),
    /// The decoupled library only, for a run that couples.
    DecoupledOnly,
    /// The child exported without global distillation (`[distill] tokens = 0`).
    NoGkd,
}

/// Every ablation's name, as `--only` takes them.
pub const NAMES: [&str; 7] = [
    "lm-loss",
    "greedy",
    "random",
    "init-only",
    "coupled",
    "decoupled-only",
    "no-gkd",
];

impl Ablation {
    /// The row's name and run folder name.
    pub fn name(&self) -> &'static str {
        match self {
            Ablation::Objective(_) => "lm-loss",
            Ablation::Solver(s) if s == "random" => "random",
            Ablation::Solver(_) => "greedy",
            Ablation::InitOnly => "init-only",
            Ablation::Coupled(_) => "coupled",
            Ablation::DecoupledOnly => "decoupled-only",
            Ablation::NoGkd => "no-gkd",
        }
    }

    /// What the row changes, in the report's words.
    pub fn describe(&self) -> String {
        match self {
            Ablation::Objective(k) => {
                format!("search minimises `{k}` (replace-1-block LM loss) instead of KL")
            }
            Ablation::Solver(s) if s == "random" => {
                "a random architecture from the library meeting the same constraints".into()
            }
            Ablation::Solver(_) => "a greedy per-layer choice instead of the MIP".into(),
            Ablation::InitOnly => "library at its training-free init: no BLD".into(),
            Ablation::Coupled(p) => format!(
                "coupled BLD after the decoupled search ({} attention x {} FFN variants)",
                p.attention, p.ffn
            ),
            Ablation::DecoupledOnly => "decoupled BLD only: no coupled pairs".into(),
            Ablation::NoGkd => "no global distillation (GKD) of the child".into(),
        }
    }

    /// The ablation of `base` called `name`; `couple` sizes the coupled row. An ablation that
    /// would not change `base` (the greedy row of a greedy run) is refused by name.
    pub fn named(name: &str, base: &RunConfig, couple: Prominent) -> Result<Ablation> {
        let a = match name {
            "lm-loss" => Ablation::Objective("lm_loss_delta".into()),
            "greedy" => Ablation::Solver("greedy".into()),
            "random" => Ablation::Solver("random".into()),
            "init-only" => Ablation::InitOnly,
            "coupled" => Ablation::Coupled(couple),
            "decoupled-only" => Ablation::DecoupledOnly,
            "no-gkd" => Ablation::NoGkd,
            other => {
                return Err(Error::invalid(format!(
                    "no ablation `{other}`; there are: {}",
                    NAMES.join(", ")
                )));
            }
        };
        if matches!(a, Ablation::Objective(_)) && !base.score.metrics.iter().any(|m| m == "lm_loss")
        {
            return Err(Error::config(
                &base.source,
                "ablation `lm-loss` needs `lm_loss` in [score] metrics: the search minimises its replace-1-block scores",
            ));
        }
        let mut changed = base.clone();
        a.apply(&mut changed);
        if changed == *base {
            return Err(Error::config(
                &base.source,
                format!(
                    "ablation `{name}` ({}) is what the run already does",
                    a.describe()
                ),
            ));
        }
        Ok(a)
    }

    /// The paper's ablations that change `base`: scoring by LM loss, greedy and random instead
    /// of the MIP, no BLD, coupled BLD (or decoupled only, when the run couples), no GKD.
    pub fn all_for(base: &RunConfig, couple: Prominent) -> Vec<Ablation> {
        let coupled = if base.bld.couple_prominent.is_some() || !base.bld.coupled.is_empty() {
            "decoupled-only"
        } else {
            "coupled"
        };
        [
            "lm-loss",
            "greedy",
            "random",
            "init-only",
            coupled,
            "no-gkd",
        ]
        .iter()
        .filter_map(|n| Ablation::named(n, base, couple).ok())
        .collect()
    }

    /// `c` with this ablation's switch.
    pub fn apply(&self, c: &mut RunConfig) {
        match self {
            Ablation::Objective(k) => c.search.objective = Some(k.clone()),
            Ablation::Solver(s) => c.search.solver = s.clone(),
            Ablation::InitOnly => c.bld.tokens = 0,
            Ablation::Coupled(p) => c.bld.couple_prominent = Some(*p),
            Ablation::DecoupledOnly => {
                c.bld.couple_prominent = None;
                c.bld.coupled.clear();
            }
            Ablation::NoGkd => c.distill.tokens = 0,
        }
    }
}

/// `ablations/<name>/ablation.json`: which ablation a folder holds, for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AblationInfo {
    pub name: String,
    /// What the row changes ([`Ablation::describe`]).
    pub describe: String,
}

const INFO: &str = "ablation.json";

/// An ablation ready to run: its config file and run folder.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub ablation: Ablation,
    pub config: PathBuf,
    pub dir: PathBuf,
}

/// What the main run's folder shares with an ablation's: the library and every stage up to
/// the search. Models (child, baselines, GKD checkpoints) and evaluations are each run's own.
const SHARED: [&str; 6] = [
    "library",
    "parent-hashes.json",
    "costs.json",
    "scores.json",
    "search",
    "decoupled",
];

/// Writes the ablation's config into `<base_dir>/ablations/<name>/config.toml` (self-contained:
/// `base` must have been loaded from an absolute path, so every path in it is absolute) and
/// links in the main run's artifacts that the ablation's folder does not have yet. The ablation
/// compares no baselines (the main run has them). A coupled ablation also gets the main run's
/// costs, scores and search as its decoupled pass: the main run's search *is* that pass.
pub fn prepare(base: &RunConfig, base_dir: &Path, ablation: &Ablation) -> Result<Prepared> {
    if !base.source.is_absolute() {
        return Err(Error::invalid(format!(
            "an ablation's config is written into the run folder, so the main config must be read from an absolute path (got {})",
            base.source.display()
        )));
    }
    let dir = base_dir.join("ablations").join(ablation.name());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut c = base.clone();
    ablation.apply(&mut c);
    c.baselines.kinds.clear();
    c.run_dir = Some(dir.clone());
    // The run writes its copy of the config under the same name: the same bytes.
    let config = dir.join("config.toml");
    let text = toml::to_string(&c)
        .map_err(|e| Error::invalid(format!("writing {}: {e}", config.display())))?;
    let text = format!(
        "# `puzzle ablate`: {} ({}), from {}\n{text}",
        ablation.name(),
        ablation.describe(),
        base.source.display()
    );
    // What was written must read back as the same config (paths, defaults).
    let mut back = RunConfig::from_toml(&text, &config)?;
    back.source = c.source.clone();
    if back != c {
        return Err(Error::invalid(format!(
            "the ablation config {} does not read back as written",
            config.display()
        )));
    }
    puzzle_core::fsutil::write_if_changed(&config, text.as_bytes())?;
    let about = AblationInfo {
        name: ablation.name().into(),
        describe: ablation.describe(),
    };
    puzzle_core::fsutil::write_json_if_changed(&dir.join(INFO), &about)?;
    for name in SHARED {
        link_missing(&base_dir.join(name), &dir.join(name))?;
    }
    if matches!(ablation, Ablation::Coupled(_)) {
        for name in ["costs.json", "scores.json", "search"] {
            link_missing(&base_dir.join(name), &dir.join("decoupled").join(name))?;
        }
    }
    Ok(Prepared {
        ablation: ablation.clone(),
        config,
        dir,
    })
}

/// Hard-links `from` (a file, or a folder recursively) to `to` where `to` has nothing yet;
/// copies where linking fails (another filesystem). An ablation folder keeps what it built
/// itself: delete it to start again from the main run.
fn link_missing(from: &Path, to: &Path) -> Result<()> {
    let meta = match std::fs::metadata(from) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    // Temp files and staging folders of a killed writer are not artifacts.
    let name = from.file_name().map(|n| n.to_string_lossy().into_owned());
    if name.is_some_and(|n| n.ends_with(".tmp")) {
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
        for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
            let entry = entry.map_err(|e| Error::io(from, e))?;
            link_missing(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if !meta.is_file() || to.exists() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(|e| Error::io(to, e))?;
    }
    Ok(())
}

/// The ablations of `base_dir` that finished their evaluation, in [`NAMES`] order, each with
/// its run folder.
pub fn finished(base_dir: &Path) -> Result<Vec<(AblationInfo, PathBuf)>> {
    let mut out = Vec::new();
    for n in NAMES {
        let d = base_dir.join("ablations").join(n);
        if d.join("eval/report.json").is_file() && d.join(INFO).is_file() {
            out.push((puzzle_core::fsutil::read_json(&d.join(INFO))?, d));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let path = std::path::absolute(root.join("examples/tiny/tiny.toml")).unwrap();
        RunConfig::load(&path).unwrap()
    }

    const COUPLE: Prominent = Prominent {
        attention: 2,
        ffn: 2,
    };

    /// The tiny example gets every ablation but `decoupled-only` (it couples nothing), each a
    /// single switch; asking for what the run already does, or for no known name, is an error
    /// that names it.
    #[test]
    fn each_ablation_is_one_switch_of_the_config() {
        let b = base();
        let all = Ablation::all_for(&b, COUPLE);
        let names: Vec<&str> = all.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "lm-loss",
                "greedy",
                "random",
                "init-only",
                "coupled",
                "no-gkd"
            ]
        );
        for a in &all {
            let mut c = b.clone();
            a.apply(&mut c);
            let mut changed = 0;
            changed += usize::from(c.search != b.search);
            changed += usize::from(c.bld != b.bld);
            changed += usize::from(c.distill != b.distill);
            assert_eq!(changed, 1, "{a:?}");
        }
        let err = Ablation::named("decoupled-only", &b, COUPLE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is what the run already does"), "{err}");
        let err = Ablation::named("no-mip", &b, COUPLE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no ablation `no-mip`"), "{err}");
        // Scoring by LM loss needs the LM loss scored.
        let mut kl_only = b.clone();
        kl_only.score.metrics = vec!["kl".into()];
        let err = Ablation::named("lm-loss", &kl_only, COUPLE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `lm_loss` in [score] metrics"), "{err}");
        // A run with coupled pairs listed by hand gets the decoupled-only row.
        let mut listed = b.clone();
        listed.bld.coupled = vec![["attn:noop".parse().unwrap(), "ffn:noop".parse().unwrap()]];
        let names: Vec<&str> = Ablation::all_for(&listed, COUPLE)
            .iter()
            .map(|a| a.name())
            .collect();
        assert!(names.contains(&"decoupled-only") && !names.contains(&"coupled"));
    }

    /// The ablation's config is self-contained and reads back as the base with its switch and
    /// no baselines; the main run's artifacts are linked in, never over the ablation's own; a
    /// coupled ablation gets the main search as its decoupled pass.
    #[test]
    fn an_ablation_folder_starts_from_the_main_runs_artifacts() {
        let tmp = tempfile::tempdir().unwrap();
        let base_dir = tmp.path().join("run");
        std::fs::create_dir_all(base_dir.join("library/L0/ffn:noop")).unwrap();
        std::fs::create_dir_all(base_dir.join("search")).unwrap();
        std::fs::create_dir_all(base_dir.join("child")).unwrap();
        std::fs::write(base_dir.join("library/L0/ffn:noop/meta.json"), "{}").unwrap();
        std::fs::write(base_dir.join("library/L0/ffn:noop/.meta.json.1.tmp"), "x").unwrap();
        std::fs::create_dir_all(base_dir.join("library/L0/ffn:noop/ckpt.tmp")).unwrap();
        std::fs::write(base_dir.join("costs.json"), "costs").unwrap();
        std::fs::write(base_dir.join("scores.json"), "scores").unwrap();
        std::fs::write(base_dir.join("search/solution.json"), "solution").unwrap();
        std::fs::write(base_dir.join("child/config.json"), "child").unwrap();
        let b = base();
        let p = prepare(&b, &base_dir, &Ablation::NoGkd).unwrap();
        assert_eq!(p.dir, base_dir.join("ablations/no-gkd"));
        let c = RunConfig::load(&p.config).unwrap();
        assert_eq!(c.distill.tokens, 0);
        assert!(c.baselines.kinds.is_empty());
        assert_eq!(c.parent.path, b.parent.path);
        assert_eq!(c.data.paths, b.data.paths);
        assert_eq!(c.run_dir.as_deref(), Some(p.dir.as_path()));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&p.dir.join("library/L0/ffn:noop/meta.json")), "{}");
        assert_eq!(read(&p.dir.join("search/solution.json")), "solution");
        assert!(!p.dir.join("library/L0/ffn:noop/.meta.json.1.tmp").exists());
        assert!(!p.dir.join("library/L0/ffn:noop/ckpt.tmp").exists());
        // A config read from a relative path cannot be written elsewhere.
        let relative = RunConfig {
            source: "tiny.toml".into(),
            ..b.clone()
        };
        let err = prepare(&relative, &base_dir, &Ablation::NoGkd)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute path (got tiny.toml)"), "{err}");
        assert!(!p.dir.join("child").exists());
        // The ablation's own costs stay when the main run's are linked again.
        std::fs::remove_file(p.dir.join("costs.json")).unwrap();
        std::fs::write(p.dir.join("costs.json"), "mine").unwrap();
        prepare(&b, &base_dir, &Ablation::NoGkd).unwrap();
        assert_eq!(read(&p.dir.join("costs.json")), "mine");
        assert_eq!(read(&base_dir.join("costs.json")), "costs");
        let p = prepare(&b, &base_dir, &Ablation::Coupled(COUPLE)).unwrap();
        assert_eq!(
            read(&p.dir.join("decoupled/search/solution.json")),
            "solution"
        );
        assert_eq!(read(&p.dir.join("decoupled/scores.json")), "scores");
        // Not finished: no evaluation yet.
        assert!(finished(&base_dir).unwrap().is_empty());
        std::fs::create_dir_all(p.dir.join("eval")).unwrap();
        std::fs::write(p.dir.join("eval/report.json"), "{}").unwrap();
        let done = finished(&base_dir).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0.name, "coupled");
        assert!(
            done[0].0.describe.contains("2 attention x 2 FFN"),
            "{:?}",
            done[0]
        );
    }
}
