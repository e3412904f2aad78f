//! Every kind of plugin in one value: the registries a command or a run works with.
//!
//! [`Plugins::builtin`] holds what the linked static plugins submitted through `inventory`;
//! [`Plugins::empty`] holds nothing, so a test can register exactly the plugins it wants. The
//! dynamic plugin host (in `puzzle-pipeline`) pushes what it loads into a `Plugins` value.

use puzzle_types::family::{Family, static_families};
use puzzle_types::registry::Registry;
use puzzle_types::search::mip::{Solver, static_solvers};

use crate::cost::{CostModel, static_cost_models};
use crate::engine::{Engine, engine_for, static_engines};
use crate::error::{Error, Result};
use crate::score::{Scorer, static_scorers};
use crate::spec::ModelSpec;
use crate::variant::VariantId;
use crate::variants::{VariantCatalog, catalog_for, static_catalogs};

/// The registries of one process, command or test.
#[derive(Clone)]
pub struct Plugins {
    pub families: Registry<dyn Family>,
    pub catalogs: Registry<dyn VariantCatalog>,
    pub cost_models: Registry<dyn CostModel>,
    pub scorers: Registry<dyn Scorer>,
    pub solvers: Registry<dyn Solver>,
    pub engines: Registry<dyn Engine>,
}

impl Plugins {
    /// No plugins at all.
    pub fn empty() -> Self {
        Plugins {
            families: Registry::new("family"),
            catalogs: Registry::new("variant catalog"),
            cost_models: Registry::new("cost model"),
            scorers: Registry::new("scorer"),
            solvers: Registry::new("solver"),
            engines: Registry::new("engine"),
        }
    }

    /// The statically linked plugins.
    pub fn builtin() -> Self {
        Plugins {
            families: static_families(),
            catalogs: static_catalogs(),
            cost_models: static_cost_models(),
            scorers: static_scorers(),
            solvers: static_solvers(),
            engines: static_engines(),
        }
    }

    /// The catalog that builds `v` (catalogs are found by the variant heads they own).
    pub fn catalog_for(&self, v: &VariantId) -> Result<&'static dyn VariantCatalog> {
        catalog_for(&self.catalogs, v)
    }

    /// The engine a deployment names, or an error saying which ones this build can run.
    pub fn engine(&self, kind: puzzle_types::kinds::EngineKind) -> Result<&'static dyn Engine> {
        engine_for(&self.engines, kind)
    }

    /// The solver `name`, or an error naming the ones this build has. HiGHS is an optional
    /// feature of the `puzzle` binary (its C++ build is the slowest part of a fresh build and
    /// `bnb` is the default), so a config asking for it in a build without it is told how to get it.
    pub fn solver(&self, name: &str) -> Result<&'static dyn Solver> {
        self.solvers.get(name).map_err(|e| {
            if name == "highs" {
                Error::invalid(format!(
                    "{e}; HiGHS is an optional feature of the `puzzle` binary: build it with \
                     `cargo build --release -p puzzle-cli --features highs` (needs cmake and a C++ compiler), \
                     or use `bnb`, the default, which solves the same programs exactly"
                ))
            } else {
                e
            }
        })
    }

    /// Reads a checkpoint folder's `config.json` with the family that claims it.
    pub fn read_spec(&self, dir: &std::path::Path) -> Result<ModelSpec> {
        puzzle_types::family::read_spec(&self.families, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_set_knows_nothing_and_says_so() {
        let p = Plugins::empty();
        let e = p.solvers.get("highs").err().unwrap().to_string();
        assert!(e.contains("no solver named `highs`"), "{e}");
        let e = p.solver("highs").err().unwrap().to_string();
        assert!(e.contains("--features highs") && e.contains("bnb"), "{e}");
        let v: VariantId = "attn:gqa(kv=2)".parse().unwrap();
        assert!(p.catalog_for(&v).is_err());
        assert!(p.read_spec(std::path::Path::new(".")).is_err());
    }
}
