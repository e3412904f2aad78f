//! Distil a model (unless `[distill] tokens = 0`) and export it to its folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::run::Run;
use puzzle_core::artifact::{Artifact, Recorded};
use puzzle_core::data::Split;
use puzzle_core::distill::{DistillReport, distill};
use puzzle_core::error::Result;
use puzzle_core::nn::Decoder;
use puzzle_core::progress::Progress;
use puzzle_core::realize::export;

/// `<model>/puzzle.json`: what was done to produce the folder, written after the export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Made {
    pub provenance: String,
    pub distill: Option<DistillReport>,
    pub warnings: Vec<String>,
}

impl Recorded for Made {
    type Inputs = String;
    fn inputs(&self) -> String {
        self.provenance.clone()
    }
}

/// A model compared in the evaluation: its name, exported folder and distillation.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparedModel {
    pub name: String,
    pub dir: PathBuf,
    pub distill: Option<DistillReport>,
}

/// Distils `student` and exports it to `out`; reused when `out` holds the same result (the
/// same `identity`, distillation, data and export settings).
pub fn finish_model(
    run: &Run,
    name: &str,
    student: &Decoder,
    identity: &str,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<Made> {
    let c = &run.config;
    let inputs = RunConfig::hash_of(&(identity, &c.distill, &run.data_fingerprint, &c.export));
    Artifact::new(name, out.join("puzzle.json"))
        .requires(out.join("config.json"))
        .reuse_or_build(&inputs, progress, |progress| {
            let (model, report) = if c.distill.tokens > 0 {
                let train = run.windows(Split::Train, c.distill.seq_len)?;
                let (m, r) = distill(
                    student,
                    run.parent.decoder()?,
                    &c.distill,
                    &train,
                    &inputs,
                    &run.dir.join("distill").join(name),
                    progress,
                )?;
                (m, Some(r))
            } else {
                (student.clone(), None)
            };
            let warnings = export(&model, &c.parent.path, out, c.export.dtype)?;
            Ok(Made {
                provenance: inputs.clone(),
                distill: report,
                warnings,
            })
        })
}
