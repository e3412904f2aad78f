//! `puzzle export gguf MODEL OUT.gguf`: a Hugging Face folder (a parent or a Puzzle child) as a
//! GGUF file for llama.cpp, written by puzzle itself.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use puzzle_core::gguf::GgmlType;
use puzzle_llama_ops::gguf_export::export_gguf;

/// Convert a checkpoint folder into another serving format.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub format: ExportFormat,
}

/// Matrix storage type of the GGUF (vectors such as norms stay f32).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GgufType {
    F32,
    F16,
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale (ggml's reference quantiser).
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Subcommand, Debug)]
pub enum ExportFormat {
    /// A GGUF v3 file that stock llama.cpp loads: arch `llama` for a homogeneous model, `deci`
    /// for a heterogeneous Puzzle child (per-layer KV heads and FFN widths, linear and no-op
    /// attention), the byte-level BPE tokenizer as `tokenizer.ggml.*` with the pre-tokenizer
    /// llama.cpp knows that splits identically (`gpt-2` or `llama-bpe`), special ids and the chat
    /// template. A no-op FFN that llama.cpp cannot run (after an attention, or in the last
    /// layer) is written as an exactly equivalent zero FFN of width 32 and reported; a linear
    /// FFN or a sliding window is refused with the layer named.
    ///
    /// Example: puzzle export gguf runs/tiny/child runs/tiny/child/model.gguf --type f32
    Gguf {
        /// The checkpoint folder (config.json, safetensors, tokenizer.json).
        model: PathBuf,
        /// The .gguf file to write (replaced atomically).
        out: PathBuf,
        /// Storage type of the matrices.
        #[arg(long = "type", value_enum, default_value = "f32")]
        ty: GgufType,
    },
}

pub fn run(a: ExportArgs) -> Result<()> {
    match a.format {
        ExportFormat::Gguf { model, out, ty } => {
            if out.is_dir() {
                bail!(
                    "{} is a folder; give the .gguf file to write",
                    out.display()
                );
            }
            let ty = match ty {
                GgufType::F32 => GgmlType::F32,
                GgufType::F16 => GgmlType::F16,
                GgufType::Bf16 => GgmlType::Bf16,
                GgufType::Q8_0 => GgmlType::Q8_0,
            };
            let r = export_gguf(&model, &out, ty)
                .with_context(|| format!("exporting {} as GGUF", model.display()))?;
            for n in &r.notes {
                eprintln!("note: {n}");
            }
            eprintln!(
                "wrote {}: arch {}, {} tensors, {:?} matrices, tokenizer pre `{}`",
                out.display(),
                r.arch,
                r.tensors,
                ty,
                r.pre
            );
            Ok(())
        }
    }
}
