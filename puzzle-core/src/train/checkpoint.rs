//! Training checkpoints that survive a kill at any instant: weights, optimiser moments and a
//! state file written into `checkpoint.tmp/`, then swapped in with renames. A kill between the
//! renames leaves `checkpoint.old/`, which `find` falls back to.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::optim::AdamW;
use crate::error::Result;
use crate::fsutil;
use crate::nn::Decoder;
use crate::weights::{StoreDtype, write_safetensors};

/// The checkpoint folder of a training run.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// Checkpoints under `dir`.
    pub fn new(dir: &Path) -> Self {
        Checkpoint {
            dir: dir.to_path_buf(),
        }
    }

    fn swapped(&self) -> fsutil::SwappedDir {
        fsutil::SwappedDir::new(self.dir.join("checkpoint"))
    }

    /// The checkpoint to resume from, if any (an error when it is damaged).
    pub fn find(&self) -> Result<Option<PathBuf>> {
        self.swapped().find("state.json")
    }

    /// Reads the state of the checkpoint to resume from.
    pub fn state<S: DeserializeOwned>(&self) -> Result<Option<(PathBuf, Result<S>)>> {
        Ok(self.find()?.map(|d| {
            let s = fsutil::read_json(&d.join("state.json"));
            (d, s)
        }))
    }

    /// Saves a consistent checkpoint.
    pub fn save<S: Serialize>(&self, model: &Decoder, opt: &AdamW, state: &S) -> Result<()> {
        let swapped = self.swapped();
        let tmp = swapped.stage()?;
        let tensors = model.tensors();
        write_safetensors(
            &tmp.join("model.safetensors"),
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            StoreDtype::F32,
            None,
        )?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        fsutil::write_json(&tmp.join("state.json"), state)?;
        swapped.commit()
    }
}
