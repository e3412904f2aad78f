//! `puzzle generate MODEL --prompt TEXT`: continue a prompt with a KV cache.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use puzzle_core::generate::{GenerateOptions, Sampling, generate};
use puzzle_core::model::load_model;

/// Continue a prompt. Prints the continuation on stdout, then prefill and decode speed on
/// stderr. Greedy unless a temperature is given.
///
/// Examples:
///   puzzle generate model-zoo/tiny-parent --prompt "And God said" --max-new-tokens 40
///   puzzle generate model-zoo/smollm2/hf --prompt "The capital of France is" --greedy
///   puzzle generate MODEL --prompt "Once" --temperature 0.8 --top-p 0.95 --seed 7 --batch 4
///   puzzle generate runs/tiny/child/model.gguf --prompt "And God said"   (greedy, in llama.cpp)
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[command(
    verbatim_doc_comment,
    about = "Continue a prompt. Prints the continuation on stdout, then prefill and decode speed on stderr. Greedy unless a temperature is given"
)]
pub struct GenerateArgs {
    /// Checkpoint folder with config.json, safetensors and tokenizer.json; or a `.gguf` file,
    /// which runs in llama.cpp (greedy, batch 1, with the GGUF's own tokenizer).
    pub model: PathBuf,
    /// Text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate (fewer when an end-of-sequence token comes first).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default when no temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "seed"])]
    pub greedy: bool,
    /// Sampling temperature (> 0); enables sampling.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0, requires = "temperature")]
    pub top_p: f32,
    /// Random seed for sampling (same seed, same text).
    #[arg(long, default_value_t = 0, requires = "temperature")]
    pub seed: u64,
    /// Run this many copies of the prompt as one batch (to measure batched decoding).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Do not stop at the model's end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Prepend the tokenizer's BOS/special tokens (its post-processor) to the prompt.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub add_special_tokens: bool,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.model.extension().is_some_and(|e| e == "gguf") {
        return generate_gguf(&a);
    }
    let device = puzzle_core::device::parse_device(&a.device)?;
    let m =
        load_model(&a.model, &device).with_context(|| format!("loading {}", a.model.display()))?;
    let tok = m
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer.json", a.model.display()))?;
    let ids = tok.encode(&a.prompt, a.add_special_tokens)?;
    let sampling = match a.temperature {
        Some(t) => Sampling::Sample {
            temperature: t,
            top_p: a.top_p,
            seed: a.seed,
        },
        None => Sampling::Greedy,
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling,
        stop_tokens: if a.ignore_eos {
            vec![]
        } else {
            m.spec.eos_token_ids.clone()
        },
    };
    let prompts = vec![ids.clone(); a.batch];
    let g = generate(&m.decoder, &prompts, &opts)?;
    let text = tok.decode(&g.tokens[0], true)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}{}", a.prompt, text)?;
    out.flush()?;
    eprintln!(
        "prompt {} tokens x {}: prefill {:.1} tokens/s; generated {} tokens: decode {:.1} tokens/s",
        ids.len(),
        a.batch,
        g.prefill_tokens as f64 / g.prefill_secs.max(1e-9),
        g.tokens.iter().map(Vec::len).sum::<usize>(),
        g.decode_tokens as f64 / g.decode_secs.max(1e-9),
    );
    Ok(())
}

/// A GGUF continued greedily in llama.cpp (what `llama-simple` does), with its own tokenizer.
#[cfg(feature = "llamacpp")]
fn generate_gguf(a: &GenerateArgs) -> Result<()> {
    if a.temperature.is_some() || a.batch != 1 {
        bail!("a .gguf model runs greedy at batch 1 here (no --temperature, --batch)");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m = puzzle_llamacpp::LlamaCpp::load(&a.model, threads)?;
    let ids = m.tokenize(&a.prompt)?;
    let t0 = std::time::Instant::now();
    let out = m.generate(&ids, a.max_new_tokens, !a.ignore_eos)?;
    let secs = t0.elapsed().as_secs_f64();
    println!("{}{}", a.prompt, m.detokenize(&out)?);
    eprintln!(
        "{} prompt + {} new tokens in {secs:.2} s ({:.1} tok/s) in {}",
        ids.len(),
        out.len(),
        out.len() as f64 / secs.max(1e-9),
        puzzle_llamacpp::LLAMACPP_SOURCE
    );
    Ok(())
}

#[cfg(not(feature = "llamacpp"))]
fn generate_gguf(a: &GenerateArgs) -> Result<()> {
    bail!(
        "{}: this build has no llama.cpp (build with the default `llamacpp` feature)",
        a.model.display()
    )
}
