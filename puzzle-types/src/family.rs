//! Parent families: plugins that turn a checkpoint's `config.json` into a [`ModelSpec`].
//!
//! A family is data-level on purpose: decoder families differ mostly in switches (biases, norm,
//! RoPE scaling, tied head, per-layer shapes), which the spec expresses; the tensors are built by
//! the core decoder. Families register themselves with `inventory` and are found by asking each
//! whether it claims a config.

use std::path::Path;

use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::spec::ModelSpec;

/// The contract of a parent family.
///
/// - `claims` must be cheap and side-effect free; at most one family should claim a config.
/// - `parse_config` resolves every default (head_dim, RoPE scaling, tied head, per-layer shapes)
///   and rejects anything it cannot run with an error naming the key and the file.
pub trait Family: Send + Sync + 'static {
    /// Stable short name (`llama`, `qwen2`, `decilm`).
    fn name(&self) -> &'static str;

    /// The `architectures` values this family reads, for listings and error messages.
    fn architectures(&self) -> &'static [&'static str];

    /// Whether this family reads `config` (usually by `architectures` or `model_type`).
    fn claims(&self, config: &serde_json::Value) -> bool {
        let arch = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        arch.is_some_and(|a| self.architectures().contains(&a))
    }

    /// Resolves `config` (read from `path`) into a spec.
    fn parse_config(&self, config: &serde_json::Value, path: &Path) -> Result<ModelSpec>;

    /// The `config.json` of a child (a heterogeneous spec) of a parent of this family, in the
    /// format serving stacks load, with caveats (features a server does not support).
    fn child_config(
        &self,
        parent_config: &serde_json::Value,
        child: &ModelSpec,
        dtype: &str,
    ) -> Result<(serde_json::Value, Vec<String>)> {
        let _ = (parent_config, child, dtype);
        Err(Error::invalid(format!(
            "family `{}` cannot export children",
            self.name()
        )))
    }

    /// Zero tensors the export format needs beyond the model's own (e.g. a bias the format's
    /// switch implies but the family does not have); names and shapes.
    fn export_extra(&self, child: &ModelSpec) -> Vec<(String, Vec<usize>)> {
        let _ = child;
        vec![]
    }
}

/// A family registered by a static plugin: `inventory::submit!(FamilyRegistration { .. })`.
pub struct FamilyRegistration {
    pub family: &'static dyn Family,
    /// The crate that provides it, for `puzzle plugins`.
    pub provider: &'static str,
}

inventory::collect!(FamilyRegistration);

impl crate::registry::Named for dyn Family {
    fn name(&self) -> &str {
        Family::name(self)
    }
}

/// The statically linked families (their `inventory` submissions), as a registry.
pub fn static_families() -> Registry<dyn Family> {
    let mut r = Registry::new("family");
    for f in inventory::iter::<FamilyRegistration> {
        r.add(f.family, f.provider, f.family.architectures().join(", "))
            .expect("two static families share a name");
    }
    r
}

fn known_families(families: &Registry<dyn Family>) -> String {
    if families.is_empty() {
        return "none: link a family plugin".into();
    }
    families
        .iter()
        .map(|r| format!("{} ({})", r.item.name(), r.item.architectures().join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The family that claims `config` (read from `path`).
pub fn family_for(
    families: &Registry<dyn Family>,
    config: &serde_json::Value,
    path: &Path,
) -> Result<&'static dyn Family> {
    families.find(|f| f.claims(config)).ok_or_else(|| {
        let arch = config
            .get("architectures")
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(none)".into());
        let mt = config
            .get("model_type")
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(none)".into());
        Error::unsupported(
            path,
            format!(
                "architectures {arch}, model_type {mt}: no registered family reads it; known: {}",
                known_families(families)
            ),
        )
    })
}

/// Reads `config.json` from a checkpoint folder and resolves it with the family that claims it.
pub fn read_spec(families: &Registry<dyn Family>, dir: &Path) -> Result<ModelSpec> {
    let path = dir.join("config.json");
    if !dir.exists() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint folder"),
        ));
    }
    let config: serde_json::Value = crate::fsutil::read_json(&path)?;
    family_for(families, &config, &path)?.parse_config(&config, &path)
}
