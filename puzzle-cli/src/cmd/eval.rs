//! `puzzle eval MODEL`: quality of one model, and against a reference.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use puzzle_core::data::{self, DataConfig, Split};
use puzzle_core::eval::tasks::{TaskScore, read_tasks, score_tasks};
use puzzle_core::eval::{Agreement, LmMetrics, agreement, lm_metrics};
use puzzle_core::model::{LoadedModel, load_model};
use puzzle_core::tokenizer::DOC_SEPARATOR;
use serde::Serialize;

use crate::ui;

/// Measure a model's quality: validation loss and perplexity on the held-out split of a corpus,
/// accuracy on multiple-choice tasks (JSONL {"context", "choices", "label"}; scored by
/// log-likelihood as lm-evaluation-harness does), and with --reference: KL divergence of
/// next-token distributions, top-1 agreement and accuracy retention against the reference.
///
/// The split is by document and deterministic, the same one `puzzle train` used.
///
/// Example (the tiny parent's card numbers):
///   puzzle eval model-zoo/tiny-parent --corpus model-zoo/corpora/kjv.txt.gz \
///       --corpus model-zoo/corpora/shakespeare.txt.gz --tasks model-zoo/tasks/cloze.jsonl
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[command(
    verbatim_doc_comment,
    about = "Measure a model's quality: validation loss and perplexity on the held-out split of a corpus, accuracy on multiple-choice tasks (JSONL {\"context\", \"choices\", \"label\"}; scored by log-likelihood as lm-evaluation-harness does), and with --reference: KL divergence of next-token distributions, top-1 agreement and accuracy retention against the reference"
)]
pub struct EvalArgs {
    /// Checkpoint folder to evaluate.
    pub model: PathBuf,
    /// Compare against this model (the parent).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Corpus files (.txt, .jsonl, optionally .gz) whose validation split is used.
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// Share of documents in the validation split (must match how the model was trained).
    #[arg(long, default_value_t = 0.05)]
    pub validation_fraction: f64,
    /// Share of documents in the test split (must match how the model was trained).
    #[arg(long, default_value_t = 0.05)]
    pub test_fraction: f64,
    /// Tokens per evaluation window (default: the model's max positions, capped at 256).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Evaluate at most this many windows (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_sequences: usize,
    /// Multiple-choice task files (repeatable).
    #[arg(long)]
    pub tasks: Vec<PathBuf>,
    /// Sequences per forward.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device: cpu, or cuda[:N] when built with the cuda feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// One model's numbers.
#[derive(Serialize, Debug, Clone)]
pub struct ModelReport {
    pub model: String,
    pub parameters: usize,
    pub validation: Option<LmMetrics>,
    pub tasks: Vec<(String, TaskScore)>,
}

/// The whole report.
#[derive(Serialize, Debug)]
pub struct EvalReport {
    pub model: ModelReport,
    pub reference: Option<ModelReport>,
    pub agreement: Option<Agreement>,
    /// Child accuracy / reference accuracy per task (acc_norm), and their mean.
    pub retention: Option<Retention>,
}

#[derive(Serialize, Debug)]
pub struct Retention {
    pub per_task: Vec<(String, f64)>,
    pub mean: f64,
}

fn windows_for(m: &LoadedModel, a: &EvalArgs) -> Result<Option<Vec<Vec<u32>>>> {
    if a.corpus.is_empty() {
        return Ok(None);
    }
    let cfg = DataConfig {
        paths: a.corpus.clone(),
        validation_fraction: a.validation_fraction,
        test_fraction: a.test_fraction,
    };
    cfg.validate()?;
    let tok = m
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer.json", m.dir.display()))?;
    let sep = tok
        .token_to_id(DOC_SEPARATOR)
        .or(m.spec.bos_token_id)
        .context("the tokenizer has no document separator or BOS token")?;
    let seq = a.seq_len.unwrap_or(m.spec.max_position_embeddings.min(256));
    if seq + 1 > m.spec.max_position_embeddings + 1 || seq == 0 {
        return Err(puzzle_core::Error::TooLong {
            what: format!("--seq-len {seq}"),
            len: seq,
            max: m.spec.max_position_embeddings,
        }
        .into());
    }
    let docs = data::read_documents(&cfg.paths)?;
    let stream = data::tokenize_split(&docs, &cfg, Split::Validation, tok, sep)?;
    let mut w = data::windows(&stream.tokens, seq);
    if a.max_sequences > 0 {
        w.truncate(a.max_sequences);
    }
    if w.is_empty() {
        bail!("the validation split has fewer than {} tokens", seq + 1);
    }
    Ok(Some(w))
}

fn report_for(
    m: &LoadedModel,
    windows: Option<&Vec<Vec<u32>>>,
    a: &EvalArgs,
) -> Result<ModelReport> {
    let validation = windows.map(|w| lm_metrics(&m.decoder, w, a.batch));
    let mut tasks = Vec::new();
    for t in &a.tasks {
        let items = read_tasks(t)?;
        let tok = m
            .tokenizer
            .as_ref()
            .with_context(|| format!("{} has no tokenizer.json", m.dir.display()))?;
        let name = t
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| t.display().to_string());
        tasks.push((name, score_tasks(&m.decoder, tok, &items, a.batch * 4)?));
    }
    Ok(ModelReport {
        model: m.dir.display().to_string(),
        parameters: m.spec.num_params(),
        validation,
        tasks,
    })
}

/// Runs an evaluation and returns the report (used by `puzzle run` too).
pub fn evaluate(a: &EvalArgs) -> Result<EvalReport> {
    let device = puzzle_core::device::parse_device(&a.device)?;
    let m =
        load_model(&a.model, &device).with_context(|| format!("loading {}", a.model.display()))?;
    let windows = windows_for(&m, a)?;
    let model = report_for(&m, windows.as_ref(), a)?;
    let (reference, agree, retention) = match &a.reference {
        None => (None, None, None),
        Some(r) => {
            let rm = load_model(r, &device).with_context(|| format!("loading {}", r.display()))?;
            if rm.spec.vocab_size != m.spec.vocab_size {
                bail!(
                    "{} has a vocabulary of {} but the reference {} has {}: they cannot be compared token by token",
                    a.model.display(),
                    m.spec.vocab_size,
                    r.display(),
                    rm.spec.vocab_size
                );
            }
            let rep = report_for(&rm, windows.as_ref(), a)?;
            let agree = windows
                .as_ref()
                .map(|w| agreement(&m.decoder, &rm.decoder, w, a.batch));
            let per_task: Vec<(String, f64)> = model
                .tasks
                .iter()
                .zip(&rep.tasks)
                .map(|((n, c), (_, p))| (n.clone(), c.acc_norm / p.acc_norm.max(1e-12)))
                .collect();
            let retention = (!per_task.is_empty()).then(|| Retention {
                mean: per_task.iter().map(|x| x.1).sum::<f64>() / per_task.len() as f64,
                per_task,
            });
            (Some(rep), agree, retention)
        }
    };
    Ok(EvalReport {
        model,
        reference,
        agreement: agree,
        retention,
    })
}

pub fn print_report(r: &EvalReport) {
    let mut t = ui::table(&[
        "model", "params", "val loss", "ppl", "task", "acc", "acc_norm", "chance",
    ]);
    for m in std::iter::once(&r.model).chain(r.reference.as_ref()) {
        let (loss, ppl) = m.validation.as_ref().map_or(("-".into(), "-".into()), |v| {
            (format!("{:.4}", v.loss), format!("{:.2}", v.perplexity))
        });
        if m.tasks.is_empty() {
            t.add_row(vec![
                m.model.clone(),
                ui::count(m.parameters as f64),
                loss.clone(),
                ppl.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for (name, s) in &m.tasks {
            t.add_row(vec![
                m.model.clone(),
                ui::count(m.parameters as f64),
                loss.clone(),
                ppl.clone(),
                format!("{name} ({} items)", s.items),
                format!("{:.2}%", 100.0 * s.acc),
                format!("{:.2}%", 100.0 * s.acc_norm),
                format!("{:.0}%", 100.0 * s.chance),
            ]);
        }
    }
    println!("{t}");
    if let Some(g) = &r.agreement {
        println!(
            "vs reference: KL {:.5} nats/token, top-1 agreement {:.2}% over {} tokens",
            g.kl,
            100.0 * g.top1,
            g.tokens
        );
    }
    if let Some(ret) = &r.retention {
        let per: Vec<String> = ret
            .per_task
            .iter()
            .map(|(n, v)| format!("{n} {:.2}%", 100.0 * v))
            .collect();
        println!(
            "accuracy retention (acc_norm): {:.2}% ({})",
            100.0 * ret.mean,
            per.join(", ")
        );
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.corpus.is_empty() && a.tasks.is_empty() {
        bail!("nothing to evaluate: give --corpus (validation loss) and/or --tasks");
    }
    let r = evaluate(&a)?;
    if let Some(p) = &a.out {
        puzzle_core::fsutil::write_json(p, &r)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

/// `puzzle tasks cloze`: build a cloze suite from held-out text.
#[derive(Args, Debug)]
pub struct ClozeArgs {
    /// Corpus files; items come from the test split.
    #[arg(long, required = true)]
    pub corpus: Vec<PathBuf>,
    /// Share of documents in the validation split (must match how the model was trained).
    #[arg(long, default_value_t = 0.05)]
    pub validation_fraction: f64,
    /// Share of documents in the test split (must match how the model was trained).
    #[arg(long, default_value_t = 0.05)]
    pub test_fraction: f64,
    /// Items to build.
    #[arg(long, default_value_t = 1000)]
    pub items: usize,
    /// Choices per item (one true).
    #[arg(long, default_value_t = 4)]
    pub choices: usize,
    /// Seed for drawing the wrong choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output JSONL.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn cloze(a: ClozeArgs) -> Result<()> {
    if a.choices < 2 {
        bail!("--choices must be at least 2");
    }
    let cfg = DataConfig {
        paths: a.corpus.clone(),
        validation_fraction: a.validation_fraction,
        test_fraction: a.test_fraction,
    };
    cfg.validate()?;
    let docs = data::read_documents(&cfg.paths)?;
    let items = puzzle_core::eval::tasks::build_cloze(&docs, &cfg, a.items, a.choices, a.seed)?;
    puzzle_core::eval::tasks::write_tasks(&a.out, &items)?;
    eprintln!(
        "wrote {} items ({} choices each) from the test split to {}",
        items.len(),
        a.choices,
        a.out.display()
    );
    Ok(())
}
