//! The registries (plugins) of this invocation, shared by every command and the report.

use std::sync::OnceLock;

use puzzle_core::Plugins;

/// The registries of this invocation: the linked static plugins plus every `--plugin`, set once
/// by `main` before any command runs.
static PLUGINS: OnceLock<Plugins> = OnceLock::new();

/// Sets this invocation's registries (first call wins).
pub fn set_plugins(p: Plugins) {
    let _ = PLUGINS.set(p);
}

/// This invocation's registries.
pub fn plugins() -> &'static Plugins {
    PLUGINS.get_or_init(Plugins::builtin)
}

/// Opens a run with this invocation's registries (the config's own `plugins` are added).
pub fn open_run(
    config: &std::path::Path,
    run_dir: Option<&std::path::Path>,
    device: &puzzle_core::burn::tensor::Device,
) -> puzzle_core::Result<puzzle_pipeline::Run> {
    puzzle_pipeline::Run::open_with(config, run_dir, device, plugins().clone())
}
