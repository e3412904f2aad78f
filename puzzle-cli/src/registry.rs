//! The registries (plugins) of this invocation, shared by every command and the report.

use std::sync::OnceLock;

use puzzle_core::Plugins;
use puzzle_pipeline::host::Consent;

/// The registries of this invocation: the linked static plugins plus every `--plugin`, set once
/// by `main` before any command runs.
static PLUGINS: OnceLock<Plugins> = OnceLock::new();

/// What the user consented to load from run configs (`--allow-config-plugins`, `--plugin`).
static CONSENT: OnceLock<Consent> = OnceLock::new();

/// Sets this invocation's registries and consent (first call wins).
pub fn set_plugins(p: Plugins, consent: Consent) {
    let _ = PLUGINS.set(p);
    let _ = CONSENT.set(consent);
}

/// This invocation's consent to load a config's plugins.
pub fn consent() -> &'static Consent {
    CONSENT.get_or_init(Consent::default)
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
    let run =
        puzzle_pipeline::Run::open_with(config, run_dir, device, plugins().clone(), consent())?;
    for (path, hash) in &run.config_plugins {
        eprintln!("{}", puzzle_pipeline::host::loaded_note(path, hash));
    }
    Ok(run)
}
