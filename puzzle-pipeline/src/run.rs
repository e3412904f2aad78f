//! Runs: the run config and the run folder every stage reads and writes.
//!
//! ```text
//! runs/<name>/
//!   config.toml     the config the run was started with
//!   library/        BLD entries: L<layer>/<variant>/{meta.json, weights.safetensors, ckpt/}
//!   costs.json      per (layer, variant) costs        (puzzle cost)
//!   scores.json     per (layer, variant) scores       (puzzle score)
//!   search/         block table, solutions            (puzzle search)
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use puzzle_core::burn::tensor::Device;

use crate::config::{RunConfig, checkpoint_fingerprint};
use crate::host::Consent;
use puzzle_core::Plugins;
use puzzle_core::bld::{EntryKey, Provenance, plan};
use puzzle_core::data::{self, Document, Split};
use puzzle_core::engine::Engine;
use puzzle_core::error::{Context as _, Error, Result};
use puzzle_core::family::{Family, read_spec};
use puzzle_core::nn::Decoder;
use puzzle_core::registry::Registry;
use puzzle_core::spec::ModelSpec;
use puzzle_core::tokenizer::{DOC_SEPARATOR, Tokenizer};
use puzzle_core::variants::SubblockSpec;
use puzzle_core::weights::SafetensorsWeights;

/// The keys of a run folder's JSON files that record how long something took: the wall seconds
/// of a BLD entry, a training or distillation session, a scoring pass, a solve. With measured
/// times made deterministic (`PUZZLE_SIMULATED_CLOCK=1`, `puzzle_core::eval::speed`), they are
/// the only content of a run folder that differs between two runs of one config on the same
/// inputs, interrupted or not; the kill-anywhere test (`puzzle-cli/tests/kill_anywhere.rs`)
/// compares everything else byte for byte. A checkpoint's `SHA256SUMS.json` hashes files that
/// hold them, so it is checked against its folder instead.
pub const TIMING_FIELDS: &[&str] = &["seconds"];

/// `v` with every [`TIMING_FIELDS`] key, at any depth, set to null.
pub fn strip_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if TIMING_FIELDS.contains(&k.as_str()) {
                    *x = serde_json::Value::Null;
                } else {
                    strip_timings(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_timings),
        _ => {}
    }
}

/// A JSON artifact's text as an input of a later stage: without its timings, which would make
/// the later stage's provenance (and so whether it is redone) depend on how long the earlier one
/// took. Text that is not JSON is taken as it is.
pub fn stamp_of(json_text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json_text) {
        Ok(mut v) => {
            strip_timings(&mut v);
            v.to_string()
        }
        Err(_) => json_text.to_string(),
    }
}

/// The run folder's cache of the parent's weight-file hashes (`checkpoint_fingerprint`).
pub const PARENT_HASHES: &str = "parent-hashes.json";

/// A planned entry the deployment's engine cannot run, and why.
pub type Refused = (EntryKey, String);

/// The parent of a run: its folder, spec and tokenizer, read when the run opens, and its weights
/// on the compute device, loaded whole only when a stage first asks ([`Parent::decoder`]): a BLD
/// shard loads just the layers it works on ([`Decoder::load_trunk`]), so nothing holds the
/// whole parent that does not need it.
pub struct Parent {
    pub dir: PathBuf,
    pub spec: ModelSpec,
    pub tokenizer: Option<Tokenizer>,
    /// The checkpoint's tensors, memory-mapped (read per tensor, on demand).
    pub weights: SafetensorsWeights,
    device: Device,
    decoder: OnceLock<Decoder>,
}

impl Parent {
    /// Reads the parent's config and tokenizer, maps its weights and checks their names and
    /// shapes against the config; loads no tensor.
    pub fn open(families: &Registry<dyn Family>, dir: &Path, device: &Device) -> Result<Parent> {
        let spec = read_spec(families, dir)?;
        let weights = SafetensorsWeights::open(dir)?;
        // A broken checkpoint is refused now, not hours later in the stage that loads it.
        Decoder::check_tensors(&spec, &weights)?;
        let tok = dir.join("tokenizer.json");
        let tokenizer = tok
            .is_file()
            .then(|| Tokenizer::from_file(&tok))
            .transpose()?;
        Ok(Parent {
            dir: dir.to_path_buf(),
            spec,
            tokenizer,
            weights,
            device: device.clone(),
            decoder: OnceLock::new(),
        })
    }

    /// The whole parent on the compute device, loaded on first use and kept.
    pub fn decoder(&self) -> Result<&Decoder> {
        if let Some(d) = self.decoder.get() {
            return Ok(d);
        }
        let d = Decoder::load(&self.spec, &self.weights, &self.device)
            .context(format!("loading the parent {}", self.dir.display()))?;
        Ok(self.decoder.get_or_init(|| d))
    }

    /// The whole parent when it is loaded already.
    pub fn loaded(&self) -> Option<&Decoder> {
        self.decoder.get()
    }

    /// The compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// A run: its config, folder, the parent and the corpus.
pub struct Run {
    pub config: RunConfig,
    pub dir: PathBuf,
    /// Where the cost, score and search stages keep their artifacts (`costs.json`,
    /// `scores.json`, `search/`): the run folder, except for the decoupled search that comes
    /// before coupled BLD (`decoupled/`).
    pub stages: PathBuf,
    pub parent: Parent,
    pub parent_fingerprint: String,
    pub docs: Vec<Document>,
    pub data_fingerprint: String,
    /// The registries this run uses: the caller's, plus the config's `plugins`.
    pub plugins: Plugins,
    /// The config's plugins that were loaded, with their sha256.
    pub config_plugins: Vec<(PathBuf, String)>,
}

impl Run {
    /// [`Run::open_with`] the statically linked plugins, without consent to load the config's
    /// dynamic ones (a config naming any is refused).
    pub fn open(config_path: &Path, run_dir: Option<&Path>, device: &Device) -> Result<Run> {
        Run::open_with(
            config_path,
            run_dir,
            device,
            Plugins::builtin(),
            &Consent::default(),
        )
    }

    /// Loads the config, the config's dynamic plugins (into `plugins`, as far as `consent`
    /// allows), the parent and the corpus; creates the run folder.
    pub fn open_with(
        config_path: &Path,
        run_dir: Option<&Path>,
        device: &Device,
        mut plugins: Plugins,
        consent: &Consent,
    ) -> Result<Run> {
        let mut config = RunConfig::load(config_path)?;
        let mut config_plugins = Vec::new();
        for p in &config.plugins {
            let hash = crate::host::load_from_config(p, config_path, consent, &mut plugins)
                .context(format!(
                    "loading plugin {} named in the config's `plugins`",
                    p.path().display()
                ))?;
            config_plugins.push((p.path().to_path_buf(), hash));
        }
        if let Some(d) = run_dir {
            config.run_dir = Some(d.to_path_buf());
        }
        let dir = config.run_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let copy = dir.join("config.toml");
        let text = puzzle_core::fsutil::read_to_string(config_path)?;
        // Every shard opens the run: write once, not under the others' readers.
        puzzle_core::fsutil::write_if_changed(&copy, text.as_bytes())?;
        let parent = Parent::open(&plugins.families, &config.parent.path, device).context(
            format!("opening the parent {}", config.parent.path.display()),
        )?;
        if parent.tokenizer.is_none() {
            return Err(Error::config(
                &config.source,
                format!(
                    "the parent {} has no tokenizer.json",
                    config.parent.path.display()
                ),
            ));
        }
        let parent_fingerprint =
            checkpoint_fingerprint(&config.parent.path, &dir.join(PARENT_HASHES))?;
        // Resolved facts about the run, for commands given only the run folder.
        let info = serde_json::json!({
            "config": std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf()),
            "parent": std::path::absolute(&config.parent.path).unwrap_or_else(|_| config.parent.path.clone()),
            "spec": parent.spec,
        });
        puzzle_core::fsutil::write_json_if_changed(&dir.join("run.json"), &info)?;
        let docs = data::read_documents(&config.data.paths)?;
        let data_fingerprint = data::fingerprint(&docs, &config.data);
        Ok(Run {
            config,
            stages: dir.clone(),
            dir,
            parent,
            parent_fingerprint,
            docs,
            data_fingerprint,
            plugins,
            config_plugins,
        })
    }

    /// The parent's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.parent.tokenizer.as_ref().expect("checked in open")
    }

    /// The document separator (BOS) of the parent's tokenizer.
    pub fn separator(&self) -> Result<u32> {
        self.tokenizer()
            .token_to_id(DOC_SEPARATOR)
            .or(self.parent.spec.bos_token_id)
            .ok_or_else(|| {
                Error::invalid("the parent's tokenizer has no document separator or BOS token")
            })
    }

    /// Windows of `seq_len + 1` tokens of a split.
    pub fn windows(&self, split: Split, seq_len: usize) -> Result<Vec<Vec<u32>>> {
        if seq_len > self.parent.spec.max_position_embeddings {
            return Err(Error::TooLong {
                what: format!("a sequence length of {seq_len}"),
                len: seq_len,
                max: self.parent.spec.max_position_embeddings,
            });
        }
        let s = data::tokenize_split(
            &self.docs,
            &self.config.data,
            split,
            self.tokenizer(),
            self.separator()?,
        )?;
        Ok(data::windows(&s.tokens, seq_len))
    }

    /// The library folder.
    pub fn library(&self) -> PathBuf {
        self.dir.join("library")
    }

    /// The deployment's engine.
    pub fn engine(&self) -> Result<&'static dyn Engine> {
        self.plugins.engine(self.config.deployment.engine)
    }

    /// The library entries: the search space's, less those the deployment's engine cannot run
    /// (its capability table); [`Run::excluded`] says which and why.
    pub fn plan(&self) -> Result<Vec<EntryKey>> {
        Ok(self.plan_split()?.0)
    }

    /// Every entry of the search space the deployment's engine cannot run, with the reason, one
    /// line per variant (`ffn:linear: llamacpp cannot run a linear FFN (6 layers)`).
    pub fn excluded(&self) -> Result<Vec<String>> {
        let mut lines: Vec<(String, String, usize)> = Vec::new();
        for (k, why) in self.plan_split()?.1 {
            match lines
                .iter_mut()
                .find(|(id, w, _)| *id == k.id() && *w == why)
            {
                Some(l) => l.2 += 1,
                None => lines.push((k.id(), why, 1)),
            }
        }
        Ok(lines
            .into_iter()
            .map(|(id, why, n)| format!("{id}: {why} ({n} layer{})", if n == 1 { "" } else { "s" }))
            .collect())
    }

    /// (kept, left out with the reason).
    fn plan_split(&self) -> Result<(Vec<EntryKey>, Vec<Refused>)> {
        library_plan(&self.plugins, &self.parent.spec, &self.config)
    }

    /// What BLD entries depend on.
    pub fn bld_provenance(&self) -> Provenance {
        Provenance {
            parent: self.parent_fingerprint.clone(),
            data: self.data_fingerprint.clone(),
            config: RunConfig::hash_of(&(&self.bld_identity(), &self.config.space)),
        }
    }

    /// `[bld]` without what only decides which entries exist (the coupled pairs, listed or
    /// found by a decoupled search): an entry is trained the same whatever else the library
    /// holds, so adding pairs keeps every entry already trained.
    fn bld_identity(&self) -> puzzle_core::bld::BldConfig {
        let mut b = self.config.bld.clone();
        b.coupled.clear();
        b.couple_prominent = None;
        b
    }
}

/// The library entries of `config`'s search space over `parent`, split into those the
/// deployment's engine runs and those it cannot (with the reason): [`Run::plan`] without an
/// opened run, for `puzzle plan` on a parent that is only a `config.json`.
pub fn library_plan(
    plugins: &Plugins,
    parent: &puzzle_core::spec::ModelSpec,
    config: &RunConfig,
) -> Result<(Vec<EntryKey>, Vec<Refused>)> {
    let c = config;
    let caps = c.deployment.engine.capabilities();
    let mut keep = Vec::new();
    let mut out = Vec::new();
    for k in plan(&plugins.catalogs, parent, &c.space, &c.bld)? {
        let specs = entry_specs(plugins, parent, &k)?;
        let why = specs.iter().find_map(|s| match s {
            SubblockSpec::Attention(a) => caps.refuses_attention(a),
            SubblockSpec::Ffn(f) => caps.refuses_ffn(f),
        });
        match why {
            Some(w) => out.push((k, w)),
            None => keep.push(k),
        }
    }
    Ok((keep, out))
}

/// The specs of a planned entry.
pub fn entry_specs(
    plugins: &Plugins,
    parent: &puzzle_core::spec::ModelSpec,
    key: &EntryKey,
) -> Result<Vec<SubblockSpec>> {
    key.variants
        .iter()
        .map(|v| plugins.catalog_for(v)?.spec(v, parent))
        .collect()
}

/// The parent spec recorded in a run folder's `run.json`.
pub fn recorded_spec(run_dir: &Path) -> Result<puzzle_core::spec::ModelSpec> {
    let p = run_dir.join("run.json");
    let v: serde_json::Value = puzzle_core::fsutil::read_json(&p)?;
    serde_json::from_value(v["spec"].clone())
        .map_err(|e| Error::config(&p, format!("bad `spec`: {e}")))
}
