//! `puzzle train RECIPE --out DIR`: pretrain a model from a recipe.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use puzzle_core::data::{self, Split};
use puzzle_core::fsutil;
use puzzle_core::tokenizer::{DOC_SEPARATOR, Tokenizer, train_bpe};
use puzzle_core::train::pretrain::{TrainData, pretrain};
use puzzle_core::train::recipe::Recipe;
use puzzle_core::weights::write_safetensors;

use crate::ui;

/// Pretrain a Llama-family model from a recipe (architecture, tokenizer, corpus,
/// hyper-parameters): AdamW with warm-up and cosine decay, gradient clipping, periodic
/// validation. Checkpoints go to OUT/checkpoint; killing the process and running the same
/// command again resumes exactly where the last checkpoint left off (same final weights).
/// The trained model is written to OUT/model as a Hugging Face folder.
///
/// Example (the tiny parent, about an hour on two cores):
///   puzzle train model-zoo/tiny-parent/recipe.toml --out runs/tiny-parent
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[command(
    verbatim_doc_comment,
    about = "Pretrain a Llama-family model from a recipe (architecture, tokenizer, corpus, hyper-parameters): AdamW with warm-up and cosine decay, gradient clipping, periodic validation. Checkpoints go to OUT/checkpoint; killing the process and running the same command again resumes exactly where the last checkpoint left off (same final weights). The trained model is written to OUT/model as a Hugging Face folder"
)]
pub struct TrainArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Output folder: tokenizer.json, checkpoint/, model/, train_report.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let recipe = Recipe::load(&a.recipe)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut bars = ui::Bars::new();
    use puzzle_core::progress::Progress;

    let docs = data::read_documents(&recipe.data.paths)?;
    let fp = data::fingerprint(&docs, &recipe.data);
    let tok_path = a.out.join("tokenizer.json");
    let tok = if tok_path.is_file() {
        Tokenizer::from_file(&tok_path)?
    } else if let Some(p) = &recipe.tokenizer.path {
        let t = Tokenizer::from_file(p)?;
        t.save(&tok_path)?;
        t
    } else {
        let vocab = recipe
            .tokenizer
            .vocab_size
            .expect("checked by Recipe::load");
        bars.note(&format!(
            "training a {vocab}-token byte-level BPE on the training split"
        ));
        let train_texts = docs
            .iter()
            .filter(|d| d.split(&recipe.data) == Split::Train)
            .map(|d| d.text.as_str());
        let t = train_bpe(train_texts, vocab, &tok_path)?;
        t.save(&tok_path)?;
        t
    };
    let sep = tok
        .token_to_id(DOC_SEPARATOR)
        .with_context(|| format!("{} has no {DOC_SEPARATOR} token", tok_path.display()))?;
    let config = recipe.config_json(tok.vocab_size(), sep, sep);
    let spec = recipe.spec(&config, &a.recipe)?;
    let seq = recipe.train.seq_len;
    let train = data::tokenize_split(&docs, &recipe.data, Split::Train, &tok, sep)?;
    let val = data::tokenize_split(&docs, &recipe.data, Split::Validation, &tok, sep)?;
    let train_w = data::windows(&train.tokens, seq);
    let val_w = data::windows(&val.tokens, seq);
    bars.note(&format!(
        "corpus {fp}: train {} documents / {} tokens / {} sequences; validation {} documents / {} tokens; model {} parameters",
        train.documents,
        train.tokens.len(),
        train_w.len(),
        val.documents,
        val.tokens.len(),
        ui::count(spec.num_params() as f64)
    ));
    let data = TrainData {
        train: &train_w,
        validation: &val_w,
        fingerprint: &fp,
    };
    let report = pretrain(&spec, &recipe.train, &data, &a.out, &device, &mut bars)?;

    // The model as a Hugging Face folder; config.json last so a complete folder has one.
    let model_dir = a.out.join("model");
    std::fs::create_dir_all(&model_dir)?;
    write_safetensors(
        &model_dir.join("model.safetensors"),
        report.weights.iter().map(|(n, t)| (n.as_str(), t)),
        recipe.export.dtype,
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    tok.save(&model_dir.join("tokenizer.json"))?;
    fsutil::write_json(&model_dir.join("config.json"), &config)?;
    let secs = report.state.train_secs;
    let tps = report.state.tokens as f64 / secs.max(1e-9);
    // Model FLOPs of a training step: forward + backward = 3x forward.
    let flops_per_seq = 3.0 * spec.forward_flops(1, 0, seq);
    let achieved = flops_per_seq * (report.state.tokens as f64 / seq as f64) / secs.max(1e-9);
    let summary = serde_json::json!({
        "recipe": a.recipe.display().to_string(),
        "data_fingerprint": fp,
        "parameters": spec.num_params(),
        "steps": report.state.step,
        "tokens": report.state.tokens,
        "train_seconds": secs,
        "train_tokens_per_second": tps,
        "model_gflops_per_second": achieved / 1e9,
        "history": report.state.history,
        "train_sequences": train_w.len(),
        "validation_sequences": val_w.len(),
    });
    fsutil::write_json(&a.out.join("train_report.json"), &summary)?;
    let last = report
        .state
        .history
        .last()
        .context("no validation point recorded")?;
    eprintln!(
        "done: {} steps, {} tokens in {:.0} s ({tps:.0} tokens/s, {:.1} model GFLOP/s); validation loss {:.4} (ppl {:.2}); model in {}",
        report.state.step,
        report.state.tokens,
        secs,
        achieved / 1e9,
        last.val_loss,
        last.val_loss.exp(),
        model_dir.display()
    );
    Ok(())
}
