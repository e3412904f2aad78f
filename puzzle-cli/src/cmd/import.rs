//! `puzzle import gguf FILE OUT`: convert a llama.cpp GGUF into a Hugging Face folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use puzzle_core::weights::StoreDtype;
use puzzle_llama_ops::gguf_import::{ImportOptions, import_gguf};

use crate::ui;

/// Convert checkpoints from other formats into Hugging Face folders puzzle (and transformers)
/// read.
#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub format: ImportFormat,
}

#[derive(Subcommand, Debug)]
pub enum ImportFormat {
    /// A llama.cpp GGUF file (general.architecture = llama). Tensors are dequantised (F32, F16,
    /// BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), renamed to Hugging Face names, and
    /// Q/K rows un-permuted back to rotate_half order. config.json comes from the metadata,
    /// tokenizer.json from --tokenizer or is rebuilt from tokenizer.ggml.*.
    ///
    /// Example: puzzle import gguf SmolLM2-135M-Instruct.Q4_1.gguf model-zoo/smollm2/hf
    Gguf {
        /// The .gguf file.
        file: PathBuf,
        /// Output folder (created; files in it are replaced).
        out: PathBuf,
        /// Storage dtype: bf16 (default; what reference dumps of quantised models use) or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Copy this tokenizer.json instead of rebuilding it from the GGUF metadata.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
}

pub fn run(a: ImportArgs) -> Result<()> {
    match a.format {
        ImportFormat::Gguf {
            file,
            out,
            dtype,
            tokenizer,
        } => {
            let dtype: StoreDtype = dtype.parse()?;
            let pb = ui::bar(0, "tensors");
            let report = import_gguf(&file, &out, &ImportOptions { dtype, tokenizer }, |i, n| {
                pb.set_length(n as u64);
                pb.set_position(i as u64);
            })
            .with_context(|| format!("importing {}", file.display()))?;
            pb.finish_and_clear();
            let types: Vec<String> = report
                .types
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect();
            eprintln!(
                "wrote {}: {} tensors ({}), {} parameters as {}, tokenizer from {}",
                out.display(),
                report.tensors,
                types.join(", "),
                ui::count(report.params as f64),
                dtype.torch_name(),
                report.tokenizer_from
            );
            Ok(())
        }
    }
}
