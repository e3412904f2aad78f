//! The run config (TOML): what `puzzle run` and every stage command read. Relative paths are
//! resolved against the config file's folder; the run folder defaults to `runs/<config name>`
//! beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use puzzle_core::bld::BldConfig;
use puzzle_core::data::DataConfig;
use puzzle_core::error::{Error, Result};
use puzzle_core::kinds::BaselineKind;
use puzzle_core::variants::SpaceOptions;

/// `[parent]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentConfig {
    /// A Hugging Face folder (config.json, safetensors, tokenizer.json).
    pub path: PathBuf,
}

/// `[cost]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// The cost model for latencies: `measured` (this device), `roofline` (the hardware
    /// profile), or a plugin's.
    #[serde(default = "d_cost_model")]
    pub model: String,
}

fn d_cost_model() -> String {
    "measured".into()
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            model: d_cost_model(),
        }
    }
}

/// `[search]`: what `puzzle run` asks of the search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Metric to optimise (default: the primary score, `kl`).
    pub objective: Option<String>,
    #[serde(default)]
    pub maximize: bool,
    /// Constraints as on the command line, e.g. `"throughput>=2x"`; a key without `@b<N>`
    /// is solved for every batch size of the deployment and the best kept.
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default = "d_solver")]
    pub solver: String,
    #[serde(default = "d_one")]
    pub solutions: usize,
    #[serde(default = "d_one")]
    pub min_diversity: usize,
    #[serde(default = "d_limit")]
    pub time_limit_secs: f64,
}

/// Our exact multiple-choice solver: 10x and more faster than CBC on paper-scale problems and
/// faster than HiGHS (README, search benchmark); `solver = "highs"` is the general check.
fn d_solver() -> String {
    "bnb".into()
}
fn d_one() -> usize {
    1
}
fn d_limit() -> f64 {
    60.0
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            objective: None,
            maximize: false,
            constraints: vec![],
            solver: d_solver(),
            solutions: 1,
            min_diversity: 1,
            time_limit_secs: d_limit(),
        }
    }
}

/// `[baselines]`: what Puzzle is compared with at matched measured speed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselinesConfig {
    /// `uniform` (the same FFN width and KV heads in every layer, pruned, Minitron-style) and
    /// `layer_removal` (drop the layers of least block influence, ShortGPT-style).
    #[serde(default = "d_kinds")]
    pub kinds: Vec<BaselineKind>,
}

fn d_kinds() -> Vec<BaselineKind> {
    vec![BaselineKind::Uniform, BaselineKind::LayerRemoval]
}

impl Default for BaselinesConfig {
    fn default() -> Self {
        BaselinesConfig { kinds: d_kinds() }
    }
}

/// `[eval]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation sequences for loss, perplexity and KL.
    #[serde(default = "d_eval_seqs")]
    pub sequences: usize,
    #[serde(default = "d_eval_len")]
    pub seq_len: usize,
    #[serde(default = "d_eval_batch")]
    pub batch_size: usize,
    /// Task files (default: those of `[score]`).
    #[serde(default)]
    pub tasks: Vec<PathBuf>,
    /// Timed rounds of each end-to-end speed measurement (median kept; the final evaluation
    /// takes at least 5).
    #[serde(default = "d_repeats")]
    pub speed_repeats: usize,
    /// Passes the final evaluation's rounds are shared out over, spread over its quality
    /// scoring, minutes apart: the report gives the spread over passes beside the spread over
    /// rounds. Each pass takes `max(2, ceil(max(speed_repeats, 5) / passes))` rounds after a
    /// warm-up round of its own (9 repeats in 3 passes: 9 rounds, 3 warm-ups).
    #[serde(default = "d_passes")]
    pub speed_passes: usize,
}

fn d_passes() -> usize {
    3
}

/// The most passes a final evaluation may take (`[eval] speed_passes`).
pub const MAX_SPEED_PASSES: usize = 50;

impl EvalConfig {
    /// The final evaluation's (passes, timed rounds per pass): at least 5 rounds in all, shared
    /// out over the passes, at least 2 per pass.
    pub fn speed_rounds(&self) -> (usize, usize) {
        let passes = self.speed_passes.max(1);
        (passes, self.speed_repeats.max(5).div_ceil(passes).max(2))
    }

    /// Requests the final evaluation makes of each model per batch size: every pass's rounds
    /// and its warm-up round.
    pub fn speed_requests(&self) -> usize {
        let (passes, rounds) = self.speed_rounds();
        // Saturating: an absurd `speed_repeats` must not overflow a plan's count.
        passes.saturating_mul(rounds.saturating_add(1))
    }
}

fn d_eval_seqs() -> usize {
    64
}
fn d_eval_len() -> usize {
    128
}
fn d_eval_batch() -> usize {
    8
}
fn d_repeats() -> usize {
    3
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            sequences: d_eval_seqs(),
            seq_len: d_eval_len(),
            batch_size: d_eval_batch(),
            tasks: vec![],
            speed_repeats: d_repeats(),
            speed_passes: d_passes(),
        }
    }
}

/// `[export]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    #[serde(default = "d_export_dtype")]
    pub dtype: puzzle_core::weights::StoreDtype,
}

fn d_export_dtype() -> puzzle_core::weights::StoreDtype {
    puzzle_core::weights::StoreDtype::Bf16
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            dtype: d_export_dtype(),
        }
    }
}

/// A dynamic plugin named by a run config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PluginRef {
    Path(PathBuf),
    /// Loaded only when the file's sha256 is this (lowercase hex).
    Pinned {
        path: PathBuf,
        sha256: String,
    },
}

impl PluginRef {
    pub fn path(&self) -> &Path {
        match self {
            PluginRef::Path(p) | PluginRef::Pinned { path: p, .. } => p,
        }
    }

    pub fn sha256(&self) -> Option<&str> {
        match self {
            PluginRef::Path(_) => None,
            PluginRef::Pinned { sha256, .. } => Some(sha256),
        }
    }
}

/// A whole run config. Later stages add their sections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run folder (default `runs/<config file stem>` beside the config).
    pub run_dir: Option<PathBuf>,
    /// Dynamically loaded plugins (shared libraries): `"lib.so"` or, pinned to the file's
    /// content, `{ path = "lib.so", sha256 = "..." }`. Parsing the config only records them; a
    /// run loads them only with the user's consent ([`crate::host::Consent`]), because loading
    /// a library runs its code.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    pub parent: ParentConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub space: SpaceOptions,
    pub bld: BldConfig,
    #[serde(default)]
    pub deployment: puzzle_core::deploy::DeploymentProfile,
    #[serde(default)]
    pub cost: CostConfig,
    #[serde(default)]
    pub score: puzzle_core::score::ScoreConfig,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub distill: puzzle_core::distill::DistillConfig,
    #[serde(default)]
    pub baselines: BaselinesConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub export: ExportConfig,
    /// Where the config was read from (set by `load`).
    #[serde(skip)]
    pub source: PathBuf,
}

impl RunConfig {
    /// Reads and validates a config, resolving relative paths against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = puzzle_core::fsutil::read_to_string(path)?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates a config's text as if read from `path` (relative paths resolve
    /// against its folder; the files it names must exist).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let mut c: RunConfig = toml::from_str(text)
            .map_err(|e| Error::config(path, format!("invalid run config: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        c.parent.path = rebase(&c.parent.path);
        for p in &mut c.plugins {
            let path = rebase(p.path());
            *p = match p {
                PluginRef::Path(_) => PluginRef::Path(path),
                PluginRef::Pinned { sha256, .. } => PluginRef::Pinned {
                    path,
                    sha256: sha256.clone(),
                },
            };
        }
        c.data.resolve(base);
        c.score.tasks = c.score.tasks.iter().map(|p| rebase(p)).collect();
        c.eval.tasks = c.eval.tasks.iter().map(|p| rebase(p)).collect();
        if c.eval.tasks.is_empty() {
            c.eval.tasks = c.score.tasks.clone();
        }
        c.run_dir = Some(match &c.run_dir {
            Some(d) => rebase(d),
            None => base.join("runs").join(
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "run".into()),
            ),
        });
        c.source = path.to_path_buf();
        c.validate(path)?;
        Ok(c)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        self.data.validate()?;
        for p in &self.data.paths {
            if !p.is_file() {
                return Err(Error::config(
                    path,
                    format!("corpus file {} does not exist", p.display()),
                ));
            }
        }
        if !self.parent.path.join("config.json").is_file() {
            return Err(Error::config(
                path,
                format!("parent {} has no config.json", self.parent.path.display()),
            ));
        }
        self.deployment.validate()?;
        for c in &self.search.constraints {
            c.parse::<puzzle_core::search::Constraint>()
                .map_err(|e| Error::config(path, format!("[search] constraint: {e}")))?;
        }
        for t in self.score.tasks.iter().chain(&self.eval.tasks) {
            if !t.is_file() {
                return Err(Error::config(
                    path,
                    format!("task file {} does not exist", t.display()),
                ));
            }
        }
        let b = &self.bld;
        if !(1..=MAX_SPEED_PASSES).contains(&self.eval.speed_passes) {
            return Err(Error::config(
                path,
                format!(
                    "[eval] speed_passes = {}: must be 1 to {MAX_SPEED_PASSES} (each pass takes at least 2 timed rounds and a warm-up)",
                    self.eval.speed_passes
                ),
            ));
        }
        // tokens = 0 is allowed: the entries keep their training-free init (an ablation).
        if b.seq_len == 0 || b.batch_size == 0 || b.lr <= 0.0 || b.checkpoint_every == 0 {
            return Err(Error::config(
                path,
                "[bld] seq_len, batch_size, lr and checkpoint_every must be positive",
            ));
        }
        if let Some(p) = b.couple_prominent
            && (p.attention == 0 || p.ffn == 0)
        {
            return Err(Error::config(
                path,
                format!(
                    "[bld.couple_prominent] attention = {}, ffn = {}: both must be at least 1 (leave the table out for no coupled BLD)",
                    p.attention, p.ffn
                ),
            ));
        }
        Ok(())
    }

    /// The run folder.
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir.clone().expect("set by load")
    }

    /// A hash of a section, for provenance and invalidation.
    pub fn hash_of<T: Serialize>(section: &T) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(section).unwrap_or_default());
        format!("{:x}", h.finalize())[..16].to_string()
    }
}

/// The fingerprint of a checkpoint folder: its `config.json` and the full sha256 of every
/// safetensors file, so a change to any byte of the weights invalidates what was built from them.
/// Hashing reads every byte (minutes for a 70B parent), so each file's hash is kept in `cache`
/// (a JSON map from path to size, modification time and sha256) and reused while the file's size
/// and modification time (to the nanosecond) are unchanged. A rewrite that restores both (say
/// `touch -r`) is not noticed; delete `cache` to force a re-hash.
pub fn checkpoint_fingerprint(dir: &Path, cache: &Path) -> Result<String> {
    let mut known: BTreeMap<String, FileHash> = if cache.is_file() {
        // A cache that does not parse (an older layout, a torn write) is only a lost shortcut.
        puzzle_core::fsutil::read_json(cache).unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    let mut h = Sha256::new();
    h.update(puzzle_core::fsutil::read_to_string(&dir.join("config.json"))?.as_bytes());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut changed = false;
    for f in files {
        let stamp = FileHash::stamp(&f)?;
        let key = std::path::absolute(&f)
            .unwrap_or_else(|_| f.clone())
            .display()
            .to_string();
        let sha256 = match known.get(&key) {
            Some(k) if k.size == stamp.size && k.mtime_ns == stamp.mtime_ns => k.sha256.clone(),
            _ => {
                let sha256 = puzzle_core::fsutil::sha256_of(&f)?;
                known.insert(
                    key,
                    FileHash {
                        sha256: sha256.clone(),
                        ..stamp
                    },
                );
                changed = true;
                sha256
            }
        };
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(sha256.as_bytes());
    }
    if changed {
        if let Some(parent) = cache.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        puzzle_core::fsutil::write_json(cache, &known)?;
    }
    Ok(format!("{:x}", h.finalize())[..16].to_string())
}

/// A weights file's full hash and what it was taken of.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileHash {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

impl FileHash {
    /// Size and modification time of `path` (the hash is filled in by the caller).
    fn stamp(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            size: meta.len(),
            mtime_ns,
            sha256: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_every_byte_and_its_cache_holds_while_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let st = dir.path().join("model.safetensors");
        // Past the first MiB, where the fingerprint used to stop reading.
        let mut bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&st, &bytes).unwrap();
        let cache = dir.path().join("run/hashes.json");
        let a = checkpoint_fingerprint(dir.path(), &cache).unwrap();
        assert!(cache.is_file());
        assert_eq!(a, checkpoint_fingerprint(dir.path(), &cache).unwrap());
        let set_mtime = |secs: u64| {
            let f = std::fs::File::options().write(true).open(&st).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&st, &bytes).unwrap();
        set_mtime(1_000_000);
        let b = checkpoint_fingerprint(dir.path(), &cache).unwrap();
        assert_ne!(a, b, "the last byte changed");
        // The cached hash is what is used while size and mtime hold: a forged one shows through...
        let mut known: BTreeMap<String, FileHash> = puzzle_core::fsutil::read_json(&cache).unwrap();
        for v in known.values_mut() {
            v.sha256 = "0".repeat(64);
        }
        puzzle_core::fsutil::write_json(&cache, &known).unwrap();
        let forged = checkpoint_fingerprint(dir.path(), &cache).unwrap();
        assert_ne!(forged, b);
        // ...and a new mtime, or no cache at all, hashes the file again.
        set_mtime(2_000_000);
        assert_eq!(checkpoint_fingerprint(dir.path(), &cache).unwrap(), b);
        std::fs::remove_file(&cache).unwrap();
        assert_eq!(checkpoint_fingerprint(dir.path(), &cache).unwrap(), b);
        // A torn cache is only a lost shortcut.
        std::fs::write(&cache, "{not json").unwrap();
        assert_eq!(checkpoint_fingerprint(dir.path(), &cache).unwrap(), b);
    }
}
