//! "Reuse this artifact if its recorded inputs match, else rebuild it atomically": the one rule
//! that makes `puzzle run` resumable, written once and used by every stage.
//!
//! An artifact is a JSON file that records the inputs it was built from ([`Recorded`]). It is
//! current when it parses, records exactly the inputs the stage would build it from now, and
//! every file it [`requires`](Artifact::requires) beside it exists (e.g. a model folder's
//! `config.json`). Otherwise it is rebuilt and written atomically (temp file + rename) *last*,
//! after everything it describes, so a kill at any instant leaves either the old artifact, no
//! artifact, or the new one, never a record of work that is not there.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::progress::Progress;

/// An artifact that records the inputs it was built from.
pub trait Recorded: Serialize + DeserializeOwned {
    /// What decides whether the artifact is current (a hash, or named hashes).
    type Inputs: PartialEq + std::fmt::Debug;
    /// The inputs this artifact was built from.
    fn inputs(&self) -> Self::Inputs;
}

/// Where an artifact lives and what it needs beside it.
pub struct Artifact {
    label: String,
    path: PathBuf,
    requires: Vec<PathBuf>,
}

impl Artifact {
    /// The artifact at `path`, called `label` in progress notes.
    pub fn new(label: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Artifact {
            label: label.into(),
            path: path.into(),
            requires: Vec::new(),
        }
    }

    /// A file that must exist for the artifact to count as current.
    pub fn requires(mut self, file: impl Into<PathBuf>) -> Self {
        self.requires.push(file.into());
        self
    }

    /// The artifact's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The artifact as recorded, if it is current for `inputs`.
    pub fn current<A: Recorded>(&self, inputs: &A::Inputs) -> Option<A> {
        let a: A = fsutil::read_json(&self.path).ok()?;
        (&a.inputs() == inputs && self.requires.iter().all(|p| p.is_file())).then_some(a)
    }

    /// The recorded artifact when current for `inputs`; else `build()`, written atomically.
    /// `build` must record `inputs` (checked: a mismatch would make the stage rebuild forever).
    pub fn reuse_or_build<A: Recorded>(
        &self,
        inputs: &A::Inputs,
        progress: &mut dyn Progress,
        build: impl FnOnce(&mut dyn Progress) -> Result<A>,
    ) -> Result<A> {
        if let Some(a) = self.current::<A>(inputs) {
            progress.note(&format!(
                "{}: {} is up to date",
                self.label,
                self.path.display()
            ));
            return Ok(a);
        }
        let a = build(progress)?;
        if &a.inputs() != inputs {
            return Err(Error::invalid(format!(
                "{}: built with inputs {:?} but asked for {inputs:?} (a bug in the stage)",
                self.label,
                a.inputs()
            )));
        }
        fsutil::write_json(&self.path, &a)?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Thing {
        provenance: String,
        value: u32,
    }
    impl Recorded for Thing {
        type Inputs = String;
        fn inputs(&self) -> String {
            self.provenance.clone()
        }
    }

    fn build(inputs: &str, value: u32, calls: &mut u32) -> Result<Thing> {
        *calls += 1;
        Ok(Thing {
            provenance: inputs.into(),
            value,
        })
    }

    #[test]
    fn reused_when_the_inputs_match_rebuilt_when_they_change_or_a_required_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("config.json");
        std::fs::write(&model, "{}").unwrap();
        let a = Artifact::new("thing", dir.path().join("thing.json")).requires(&model);
        let mut calls = 0;
        let t = a
            .reuse_or_build(&"in-1".to_string(), &mut Silent, |_| {
                build("in-1", 1, &mut calls)
            })
            .unwrap();
        assert_eq!((t.value, calls), (1, 1));
        // Same inputs: the recorded artifact, no build.
        let t = a
            .reuse_or_build(&"in-1".to_string(), &mut Silent, |_| {
                build("in-1", 2, &mut calls)
            })
            .unwrap();
        assert_eq!((t.value, calls), (1, 1));
        // Other inputs: rebuilt and rewritten.
        let t = a
            .reuse_or_build(&"in-2".to_string(), &mut Silent, |_| {
                build("in-2", 3, &mut calls)
            })
            .unwrap();
        assert_eq!((t.value, calls), (3, 2));
        assert_eq!(a.current::<Thing>(&"in-2".to_string()).unwrap().value, 3);
        // A required file missing: not current, rebuilt.
        std::fs::remove_file(&model).unwrap();
        assert!(a.current::<Thing>(&"in-2".to_string()).is_none());
        let t = a
            .reuse_or_build(&"in-2".to_string(), &mut Silent, |_| {
                build("in-2", 4, &mut calls)
            })
            .unwrap();
        assert_eq!((t.value, calls), (4, 3));
    }

    #[test]
    fn a_build_that_records_other_inputs_is_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifact::new("thing", dir.path().join("thing.json"));
        let mut calls = 0;
        let e = a
            .reuse_or_build(&"asked".to_string(), &mut Silent, |_| {
                build("other", 1, &mut calls)
            })
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("thing: built with inputs"), "{e}");
        assert!(!a.path().exists());
    }
}
