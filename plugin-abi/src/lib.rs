//! The ABI between `puzzle` and plugins loaded at run time (`--plugin lib.so`).
//!
//! Only plain data crosses it: numbers, strings (JSON documents of puzzle's plain data types)
//! and flat f32 arrays. Never tensors, never trait objects (`&dyn Trait` across a dylib is
//! unsound; bevy removed its dynamic plugins for that reason). The root module is an
//! `abi_stable` prefix type: its layout is checked when the library is loaded, and
//! [`ABI_VERSION`] is compared explicitly so that a plugin built against another version is
//! refused with both versions named.
//!
//! Every entry point returns `RResult`; plugins wrap their bodies in [`guard`] so that a panic
//! becomes an `RErr` instead of unwinding across `extern "C"` (which aborts the process).
//!
//! A plugin implements any subset of the capabilities and says which in `describe()`:
//! `{"name": "...", "solvers": [...], "cost_models": [...], "scorers": [...], "catalogs": [...]}`.
//! The JSON documents are those of `puzzle-core`: `MipProblem`/`SolveOptions` -> `MipSolution`;
//! a cost request `{"parent": ModelSpec, "deployment": ..., "hardware": ..., "layer": n,
//! "specs": [SubblockSpec]}` -> `Costs`; catalog requests `{"parent": ModelSpec, "layer": n,
//! "kind": "attn"|"ffn", "space": SpaceOptions}` -> `["ffn:...", ...]`, `{"parent", "variant"}`
//! -> `SubblockSpec`, and `{"parent", "variant", "layer"}` plus the parent layer's tensors ->
//! the variant's tensors.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

pub use abi_stable;

/// The version of this ABI; bump on any change of meaning of the entry points or documents.
pub const ABI_VERSION: u32 = 1;

/// A named tensor: checkpoint name, row-major shape, f32 data.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct NamedTensor {
    pub name: RString,
    pub shape: RVec<u64>,
    pub data: RVec<f32>,
}

/// One batch's contribution to a token-level score: the score is `sum / count` over the set.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct ScorePart {
    pub sum: f64,
    pub count: f64,
}

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// [`ABI_VERSION`] as the plugin saw it when built.
    pub abi_version: extern "C" fn() -> u32,
    /// What the plugin provides (JSON, see the crate docs).
    pub describe: extern "C" fn() -> RString,
    /// `(solver, MipProblem JSON, SolveOptions JSON) -> MipSolution JSON`.
    pub solve: extern "C" fn(RString, RString, RString) -> RResult<RString, RString>,
    /// `(cost model, request JSON) -> Costs JSON`.
    pub cost: extern "C" fn(RString, RString) -> RResult<RString, RString>,
    /// `(scorer, parent target log-probs, child target log-probs) -> ScorePart`, over the
    /// tokens of one validation batch (flattened).
    pub score: extern "C" fn(RString, RVec<f32>, RVec<f32>) -> RResult<ScorePart, RString>,
    /// `(catalog, request JSON) -> variant ids JSON`.
    pub catalog_enumerate: extern "C" fn(RString, RString) -> RResult<RString, RString>,
    /// `(catalog, request JSON) -> SubblockSpec JSON`.
    pub catalog_spec: extern "C" fn(RString, RString) -> RResult<RString, RString>,
    /// `(catalog, request JSON, parent layer tensors) -> variant tensors`.
    #[sabi(last_prefix_field)]
    pub catalog_init:
        extern "C" fn(RString, RString, RVec<NamedTensor>) -> RResult<RVec<NamedTensor>, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "puzzle_plugin";
    const NAME: &'static str = "puzzle_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Runs `f`, turning a panic (or an error) into `RErr` with its message.
pub fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(RString::from(e)),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            RResult::RErr(RString::from(format!("the plugin panicked: {msg}")))
        }
    }
}

/// The answer of an entry point a plugin does not implement.
pub fn unsupported<T>(what: &str, name: &str) -> RResult<T, RString> {
    RResult::RErr(RString::from(format!(
        "this plugin provides no {what} named `{name}`"
    )))
}
