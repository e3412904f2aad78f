//! Dynamically loaded plugins (`--plugin lib.so`, `plugins = [...]` in a run config): solvers,
//! cost models, scorers over plain arrays and variant catalogs behind the stable ABI of
//! `puzzle-plugin-abi`. Loaded plugins are adapted to the same traits as static ones and pushed
//! into the caller's [`Plugins`] registries (the layer below never calls up into this host);
//! libraries stay loaded for the life of the process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use abi_stable::std_types::{RResult, RString, RVec};
use puzzle_plugin_abi::{ABI_VERSION, NamedTensor, PluginModRef};
use serde::{Deserialize, Serialize};

use puzzle_core::Plugins;
use puzzle_core::cost::{CostContext, CostModel, Costs};
use puzzle_core::error::{Error, Result};
use puzzle_core::registry::{Named, Registry};
use puzzle_core::score::{Scorer, TokenBatch};
use puzzle_core::search::mip::{MipProblem, MipSolution, SolveOptions, Solver};
use puzzle_core::spec::ModelSpec;
use puzzle_core::train::loss::target_log_probs;
use puzzle_core::variant::{SubblockKind, VariantId};
use puzzle_core::variants::{
    Initialised, LayerCalibration, SpaceOptions, SubblockSpec, VariantCatalog,
};
use puzzle_core::weights::{HostTensor, MemoryWeights};

/// What a plugin says it provides.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Provides {
    pub name: String,
    #[serde(default)]
    pub solvers: Vec<String>,
    #[serde(default)]
    pub cost_models: Vec<String>,
    #[serde(default)]
    pub scorers: Vec<String>,
    #[serde(default)]
    pub catalogs: Vec<CatalogDesc>,
}

/// A catalog's name and variant heads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CatalogDesc {
    pub name: String,
    #[serde(default)]
    pub attn: Vec<String>,
    #[serde(default)]
    pub ffn: Vec<String>,
}

/// A loaded plugin.
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub provides: Provides,
    module: PluginModRef,
}

/// Libraries opened by this process. A shared library is a process-wide resource (mapped
/// once, never unloaded), so this cache is global; what a library *registers* goes into the
/// [`Plugins`] value the caller passes.
static OPENED: Mutex<Vec<&'static LoadedPlugin>> = Mutex::new(Vec::new());

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn plugin_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("plugin {}: {msg}", path.display()))
}

fn ok<T>(path: &Path, r: RResult<T, RString>) -> Result<T> {
    match r {
        RResult::ROk(v) => Ok(v),
        RResult::RErr(e) => Err(plugin_err(path, e)),
    }
}

/// Opens a plugin library (once per process: a second call with the same path returns the
/// first load) and checks its ABI version and self-description.
pub fn open(path: &Path) -> Result<&'static LoadedPlugin> {
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let mut opened = OPENED.lock().expect("plugin list");
    if let Some(p) = opened.iter().find(|p| p.path == canon) {
        return Ok(p);
    }
    let header = abi_stable::library::lib_header_from_path(&canon)
        .map_err(|e| plugin_err(&canon, format!("cannot load: {e}")))?;
    let module: PluginModRef = header
        .init_root_module()
        .map_err(|e| plugin_err(&canon, format!("incompatible with this puzzle: {e}")))?;
    let v = (module.abi_version())();
    if v != ABI_VERSION {
        return Err(plugin_err(
            &canon,
            format!(
                "built against puzzle plugin ABI {v}, but this puzzle speaks ABI {ABI_VERSION}; rebuild it against puzzle-plugin-abi {ABI_VERSION}"
            ),
        ));
    }
    let provides: Provides = serde_json::from_str((module.describe())().as_str())
        .map_err(|e| plugin_err(&canon, format!("describe() is not valid JSON: {e}")))?;
    let plugin: &'static LoadedPlugin = leak(LoadedPlugin {
        path: canon,
        provides,
        module,
    });
    opened.push(plugin);
    Ok(plugin)
}

/// Adds `item` unless this provider already registered that name (loading a library twice
/// into the same registries is a no-op).
fn push<T: ?Sized + Named + 'static>(
    reg: &mut Registry<T>,
    item: &'static T,
    provider: &str,
    description: &str,
) -> Result<()> {
    if reg
        .iter()
        .any(|e| e.item.name() == item.name() && e.provider == provider)
    {
        return Ok(());
    }
    reg.add(item, provider, description)
}

/// What the user agreed to load. A run config is data, and data someone sent you must not run
/// code: a config's `plugins` are loaded only when the user said so on the command line, by
/// `--allow-config-plugins` or by naming the same file with `--plugin`.
#[derive(Clone, Debug, Default)]
pub struct Consent {
    /// `--allow-config-plugins`: load the libraries a config names (a pinned sha256 is still
    /// checked).
    pub config_plugins: bool,
    /// Libraries the user named with `--plugin` (already loaded by the caller).
    pub named: Vec<PathBuf>,
}

impl Consent {
    fn covers(&self, path: &Path) -> bool {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        self.config_plugins || self.named.iter().any(|n| canon(n) == canon(path))
    }
}

use puzzle_core::fsutil::sha256_of;

/// How a config's plugin that was loaded is reported.
pub fn loaded_note(path: &Path, hash: &str) -> String {
    format!(
        "loaded plugin {} named in the config (sha256 {hash})",
        path.display()
    )
}

/// Loads a plugin a run config names, if `consent` covers it and a pinned hash matches;
/// returns its sha256. `config` is the config file, for the errors.
pub fn load_from_config(
    plugin: &crate::config::PluginRef,
    config: &Path,
    consent: &Consent,
    plugins: &mut Plugins,
) -> Result<String> {
    let path = plugin.path();
    let hash = sha256_of(path)?;
    if let Some(want) = plugin.sha256()
        && !want.eq_ignore_ascii_case(&hash)
    {
        return Err(Error::config(
            config,
            format!(
                "plugin {} has sha256 {hash}, the config pins {want}: the file changed; not loaded",
                path.display()
            ),
        ));
    }
    if !consent.covers(path) {
        return Err(Error::config(
            config,
            format!(
                "names the plugin {} (sha256 {hash}); loading it would run its native code, so \
                 it is loaded only with your consent: pass --allow-config-plugins, or \
                 --plugin {} (to also refuse the file once it changes, pin it: \
                 {{ path = \"...\", sha256 = \"{hash}\" }})",
                path.display(),
                path.display()
            ),
        ));
    }
    // Between the hash above and the loader opening the path again the file could change; a
    // pin is a check against accidents and stale files, not against a hostile local writer.
    load(path, plugins)?;
    Ok(hash)
}

/// Opens a plugin library and pushes what it provides into `plugins`.
pub fn load(path: &Path, plugins: &mut Plugins) -> Result<&'static LoadedPlugin> {
    let plugin = open(path)?;
    let provides = &plugin.provides;
    let provider = format!("{} ({})", provides.name, plugin.path.display());
    for s in &provides.solvers {
        let solver: &'static DynSolver = leak(DynSolver {
            plugin,
            name: s.clone(),
        });
        push(
            &mut plugins.solvers,
            solver,
            &provider,
            "dynamically loaded",
        )?;
    }
    for m in &provides.cost_models {
        let model: &'static DynCost = leak(DynCost {
            plugin,
            name: leak_str(m),
        });
        push(
            &mut plugins.cost_models,
            model,
            &provider,
            "dynamically loaded",
        )?;
    }
    for s in &provides.scorers {
        let scorer: &'static DynScorer = leak(DynScorer {
            plugin,
            name: leak_str(s),
        });
        push(
            &mut plugins.scorers,
            scorer,
            &provider,
            "dynamically loaded (per-token target log-probabilities)",
        )?;
    }
    for c in &provides.catalogs {
        let cat: &'static DynCatalog = leak(DynCatalog {
            plugin,
            name: leak_str(&c.name),
            attn: c.attn.iter().map(|h| leak_str(h)).collect(),
            ffn: c.ffn.iter().map(|h| leak_str(h)).collect(),
        });
        push(&mut plugins.catalogs, cat, &provider, "")?;
    }
    Ok(plugin)
}

/// Every library this process opened.
pub fn loaded() -> Vec<&'static LoadedPlugin> {
    OPENED.lock().expect("plugin list").clone()
}

/// A plugin's solver.
pub struct DynSolver {
    plugin: &'static LoadedPlugin,
    name: String,
}

impl Solver for DynSolver {
    fn name(&self) -> &str {
        &self.name
    }

    fn solve(&self, problem: &MipProblem, options: &SolveOptions) -> Result<MipSolution> {
        let p = self.plugin;
        let req = serde_json::to_string(problem).map_err(|e| Error::invalid(e.to_string()))?;
        let opt = serde_json::to_string(options).map_err(|e| Error::invalid(e.to_string()))?;
        let out = ok(
            &p.path,
            (p.module.solve())(self.name.clone().into(), req.into(), opt.into()),
        )?;
        serde_json::from_str(out.as_str()).map_err(|e| {
            plugin_err(
                &p.path,
                format!("solver `{}` returned invalid JSON: {e}", self.name),
            )
        })
    }
}

/// A plugin's cost model.
pub struct DynCost {
    plugin: &'static LoadedPlugin,
    name: &'static str,
}

impl DynCost {
    fn call(
        &self,
        ctx: &CostContext,
        layer: Option<usize>,
        specs: Option<&[SubblockSpec]>,
    ) -> Result<Costs> {
        let p = self.plugin;
        let req = serde_json::json!({
            "parent": ctx.parent, "deployment": ctx.deploy, "hardware": ctx.hardware,
            "layer": layer, "specs": specs,
        });
        let out = ok(
            &p.path,
            (p.module.cost())(self.name.into(), req.to_string().into()),
        )?;
        serde_json::from_str(out.as_str()).map_err(|e| {
            plugin_err(
                &p.path,
                format!("cost model `{}` returned invalid JSON: {e}", self.name),
            )
        })
    }
}

impl CostModel for DynCost {
    fn name(&self) -> &'static str {
        self.name
    }
    fn entry(&self, ctx: &CostContext, layer: usize, specs: &[SubblockSpec]) -> Result<Costs> {
        self.call(ctx, Some(layer), Some(specs))
    }
    fn non_block(&self, ctx: &CostContext) -> Result<Costs> {
        self.call(ctx, None, None)
    }
}

/// A plugin's scorer, fed per-token target log-probabilities of the parent and the child.
pub struct DynScorer {
    plugin: &'static LoadedPlugin,
    name: &'static str,
}

impl Scorer for DynScorer {
    fn name(&self) -> &'static str {
        self.name
    }
    fn token_batch(&self, b: &TokenBatch) -> Result<Option<(f64, f64)>> {
        let flat = |logits: &puzzle_core::burn::tensor::Tensor<3>| -> RVec<f32> {
            target_log_probs(logits.clone(), b.targets.clone())
                .try_into_vec_as::<f32>()
                .expect("f32")
                .into()
        };
        let p = self.plugin;
        match (p.module.score())(
            self.name.into(),
            flat(b.parent_logits),
            flat(b.child_logits),
        ) {
            RResult::ROk(part) => Ok(Some((part.sum, part.count))),
            RResult::RErr(e) => Err(plugin_err(&p.path, format!("scorer `{}`: {e}", self.name))),
        }
    }
}

/// A plugin's variant catalog; inits go through flat arrays.
pub struct DynCatalog {
    plugin: &'static LoadedPlugin,
    name: &'static str,
    attn: Vec<&'static str>,
    ffn: Vec<&'static str>,
}

impl VariantCatalog for DynCatalog {
    fn name(&self) -> &'static str {
        self.name
    }

    fn heads(&self, kind: SubblockKind) -> Vec<&'static str> {
        match kind {
            SubblockKind::Attention => self.attn.clone(),
            SubblockKind::Ffn => self.ffn.clone(),
        }
    }

    fn enumerate(
        &self,
        parent: &ModelSpec,
        layer: usize,
        kind: SubblockKind,
        space: &SpaceOptions,
    ) -> Vec<VariantId> {
        let p = self.plugin;
        let req =
            serde_json::json!({"parent": parent, "layer": layer, "kind": kind, "space": space});
        match (p.module.catalog_enumerate())(self.name.into(), req.to_string().into()) {
            RResult::ROk(s) => {
                serde_json::from_str::<Vec<VariantId>>(s.as_str()).unwrap_or_else(|e| {
                    eprintln!(
                        "plugin {}: catalog `{}` returned invalid variant ids: {e}",
                        p.path.display(),
                        self.name
                    );
                    vec![]
                })
            }
            RResult::RErr(e) => {
                eprintln!("plugin {}: catalog `{}`: {e}", p.path.display(), self.name);
                vec![]
            }
        }
    }

    fn spec(&self, v: &VariantId, parent: &ModelSpec) -> Result<SubblockSpec> {
        let p = self.plugin;
        let req = serde_json::json!({"parent": parent, "variant": v});
        let out = ok(
            &p.path,
            (p.module.catalog_spec())(self.name.into(), req.to_string().into()),
        )?;
        serde_json::from_str(out.as_str()).map_err(|e| {
            plugin_err(
                &p.path,
                format!(
                    "catalog `{}` returned an invalid spec for {v}: {e}",
                    self.name
                ),
            )
        })
    }

    fn init(
        &self,
        v: &VariantId,
        parent: &ModelSpec,
        layer: usize,
        w: &MemoryWeights,
        _calib: &LayerCalibration,
    ) -> Result<Initialised> {
        let p = self.plugin;
        let spec = self.spec(v, parent)?;
        let tensors: RVec<NamedTensor> = w
            .tensors
            .iter()
            .map(|(n, t)| NamedTensor {
                name: n.as_str().into(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                data: t.data.clone().into(),
            })
            .collect();
        let req = serde_json::json!({"parent": parent, "variant": v, "layer": layer});
        let out = ok(
            &p.path,
            (p.module.catalog_init())(self.name.into(), req.to_string().into(), tensors),
        )?;
        let mut weights = MemoryWeights::new(format!("{} init of {v}", p.provides.name));
        for t in out {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            if shape.iter().product::<usize>() != t.data.len() {
                return Err(plugin_err(
                    &p.path,
                    format!("init of {v}: tensor `{}` has a wrong element count", t.name),
                ));
            }
            weights.insert(t.name.as_str(), HostTensor::new(shape, t.data.into_vec()));
        }
        Ok(Initialised {
            spec,
            weights,
            method: format!("{} (plugin {})", self.name, p.provides.name),
        })
    }
}
