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
    /// llama.cpp's quantiser: 4-bit blocks of 32.
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    /// llama.cpp's quantiser: K-quants, super-blocks of 256 values.
    #[value(name = "q2_k")]
    Q2K,
    #[value(name = "q3_k_s")]
    Q3KS,
    #[value(name = "q3_k_m")]
    Q3KM,
    #[value(name = "q3_k_l")]
    Q3KL,
    #[value(name = "q4_k_s")]
    Q4KS,
    /// llama.cpp's quantiser: the 4-bit mix most llama.cpp users serve.
    #[value(name = "q4_k_m")]
    Q4KM,
    #[value(name = "q5_k_s")]
    Q5KS,
    #[value(name = "q5_k_m")]
    Q5KM,
    #[value(name = "q6_k")]
    Q6K,
}

impl GgufType {
    /// The type our own exporter writes, or `None` for llama.cpp's quantiser's.
    fn ours(self) -> Option<GgmlType> {
        Some(match self {
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::Bf16 => GgmlType::Bf16,
            GgufType::Q8_0 => GgmlType::Q8_0,
            _ => return None,
        })
    }

    /// Its name on the command line.
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
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
    ///
    /// Example: puzzle export gguf runs/tiny/child child.Q4_K_M.gguf --type q4_k_m
    Gguf {
        /// The checkpoint folder (config.json, safetensors, tokenizer.json).
        model: PathBuf,
        /// The .gguf file to write (replaced atomically).
        out: PathBuf,
        /// Storage type of the matrices. f32, f16, bf16 and q8_0 are written by puzzle; the
        /// others are llama.cpp's own quantiser's types (`llama-quantize`'s names), made by it
        /// from puzzle's f32 export (the `llamacpp` feature, on by default). With K-quants a row
        /// that is not whole 256-value super-blocks falls back to a type that holds it, and the
        /// _S/_M/_L mixes keep some tensors wider, as llama.cpp chooses: the summary line
        /// counts the matrix types written.
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
            let Some(ours) = ty.ours() else {
                return quantised(&model, &out, ty);
            };
            let r = export_gguf(&model, &out, ours)
                .with_context(|| format!("exporting {} as GGUF", model.display()))?;
            for n in &r.notes {
                eprintln!("note: {n}");
            }
            eprintln!(
                "wrote {}: arch {}, {} tensors, {} matrices, tokenizer pre `{}`",
                out.display(),
                r.arch,
                r.tensors,
                ty.name(),
                r.pre
            );
            Ok(())
        }
    }
}

/// `--type` one of llama.cpp's quantiser's: our f32 export (a temp file beside `out`), then
/// llama.cpp's quantiser into `out` (atomically).
#[cfg(feature = "llamacpp")]
fn quantised(model: &std::path::Path, out: &std::path::Path, ty: GgufType) -> Result<()> {
    let q: puzzle_llamacpp::Quant = ty.name().parse()?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f32 = tempfile::Builder::new()
        .prefix(".puzzle-f32-")
        .suffix(".gguf")
        .tempfile_in(dir)
        .with_context(|| format!("making a temp file in {}", dir.display()))?;
    let r = export_gguf(model, f32.path(), GgmlType::F32)
        .with_context(|| format!("exporting {} as GGUF", model.display()))?;
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    puzzle_llamacpp::quantize(f32.path(), out, q, threads)?;
    let file = puzzle_core::gguf::GgufFile::open(out)
        .with_context(|| format!("reading back {}", out.display()))?;
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for t in &file.tensors {
        if t.dims.len() > 1 {
            *types.entry(t.ggml_type.name()).or_default() += 1;
        }
    }
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {}: arch {}, {} tensors, {} by llama.cpp's quantiser (matrices: {}), tokenizer pre `{}`",
        out.display(),
        r.arch,
        r.tensors,
        ty.name(),
        types.join(", "),
        r.pre
    );
    Ok(())
}

#[cfg(not(feature = "llamacpp"))]
fn quantised(_model: &std::path::Path, _out: &std::path::Path, ty: GgufType) -> Result<()> {
    bail!(
        "--type {} is made by llama.cpp's quantiser, and this puzzle was built without the `llamacpp` feature (f32, f16, bf16 and q8_0 are written without it)",
        ty.name()
    )
}
