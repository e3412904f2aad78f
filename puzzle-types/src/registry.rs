//! One registry type for every kind of plugin (families, variant catalogs, cost models, scorers,
//! solvers): an explicit value, so a test can build one with exactly the plugins it wants, while
//! the default one is filled from the static plugins' `inventory` submissions. Dynamic plugins
//! are pushed into a registry by the host that loads them (in `puzzle-pipeline`), never pulled
//! from here: this crate knows nothing about shared libraries.
//!
//! One naming scheme: `registry.get(name)` finds by name, `registry.find(pred)` by a predicate
//! (a family that claims a config, a catalog that owns a variant head), `registry.iter()` lists.

use crate::error::{Error, Result};

/// What every registered item has: a stable name, unique within its registry.
pub trait Named {
    /// The registry name (`highs`, `kl`, `llama`, ...).
    fn name(&self) -> &str;
}

/// A registered item with where it came from, for `puzzle plugins` and error messages.
pub struct Registered<T: ?Sized + 'static> {
    /// Items live for the whole process: static plugins are statics, and a dynamic library is
    /// never unloaded (abi_stable keeps it mapped), so the host leaks its adapters on purpose.
    pub item: &'static T,
    /// The crate or library that provides it.
    pub provider: String,
    /// One line for listings.
    pub description: String,
}

impl<T: ?Sized + 'static> Clone for Registered<T> {
    fn clone(&self) -> Self {
        Registered {
            item: self.item,
            provider: self.provider.clone(),
            description: self.description.clone(),
        }
    }
}

/// A set of plugins of one kind, sorted by name.
pub struct Registry<T: ?Sized + 'static> {
    kind: &'static str,
    entries: Vec<Registered<T>>,
}

impl<T: ?Sized + 'static> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Registry {
            kind: self.kind,
            entries: self.entries.clone(),
        }
    }
}

impl<T: ?Sized + Named + 'static> Registry<T> {
    /// An empty registry of `kind` (`solver`, `scorer`, ...: used in error messages).
    pub fn new(kind: &'static str) -> Self {
        Registry {
            kind,
            entries: Vec::new(),
        }
    }

    /// What this registry holds (`solver`, `scorer`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Adds `item`; a second item under a name already taken is refused with an error naming
    /// both providers (two plugins must not silently shadow each other).
    pub fn add(
        &mut self,
        item: &'static T,
        provider: impl Into<String>,
        description: impl Into<String>,
    ) -> Result<()> {
        let provider = provider.into();
        if let Some(e) = self.entries.iter().find(|e| e.item.name() == item.name()) {
            return Err(Error::invalid(format!(
                "{} `{}` from {provider} is already registered by {}",
                self.kind,
                item.name(),
                e.provider
            )));
        }
        self.entries.push(Registered {
            item,
            provider,
            description: description.into(),
        });
        self.entries
            .sort_by(|a, b| a.item.name().cmp(b.item.name()));
        Ok(())
    }

    /// The item registered as `name`.
    pub fn get(&self, name: &str) -> Result<&'static T> {
        self.entries
            .iter()
            .find(|e| e.item.name() == name)
            .map(|e| e.item)
            .ok_or_else(|| Error::UnknownPlugin {
                kind: self.kind,
                name: name.to_string(),
                known: self.known(),
            })
    }

    /// The first item (by name) for which `pred` holds.
    pub fn find(&self, pred: impl Fn(&T) -> bool) -> Option<&'static T> {
        self.entries.iter().map(|e| e.item).find(|i| pred(i))
    }

    /// Every entry, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Registered<T>> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registered names, comma-separated (for error messages).
    pub fn known(&self) -> String {
        if self.entries.is_empty() {
            return format!("none: link or load a {} plugin", self.kind);
        }
        self.entries
            .iter()
            .map(|e| e.item.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing(&'static str);
    impl Named for Thing {
        fn name(&self) -> &str {
            self.0
        }
    }
    static A: Thing = Thing("a");
    static B: Thing = Thing("b");
    static A2: Thing = Thing("a");

    #[test]
    fn lookups_are_by_name_sorted_and_unknown_names_list_what_is_known() {
        let mut r: Registry<Thing> = Registry::new("thing");
        assert!(r.is_empty());
        let e = r.get("a").err().unwrap().to_string();
        assert!(
            e.contains("no thing named `a`") && e.contains("none"),
            "{e}"
        );
        r.add(&B, "crate-b", "").unwrap();
        r.add(&A, "crate-a", "").unwrap();
        assert_eq!(r.get("a").unwrap().0, "a");
        let names: Vec<_> = r.iter().map(|e| e.item.name()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(r.find(|t| t.0 == "b").is_some());
        let e = r.get("c").err().unwrap().to_string();
        assert!(e.contains("known: a, b"), "{e}");
    }

    #[test]
    fn a_second_plugin_under_a_taken_name_is_refused() {
        let mut r: Registry<Thing> = Registry::new("thing");
        r.add(&A, "crate-a", "").unwrap();
        let e = r.add(&A2, "lib2.so", "").unwrap_err().to_string();
        assert!(
            e.contains("thing `a` from lib2.so is already registered by crate-a"),
            "{e}"
        );
        assert_eq!(r.len(), 1);
    }
}
