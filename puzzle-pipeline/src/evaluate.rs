//! The evaluation stage: the parent, the child and the baselines from their exported folders,
//! side by side: speed (all models measured round-robin in the deployment's engine, per batch
//! size, with the range over rounds), memory, language
//! modelling, agreement with the parent, task accuracy and retention.

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::finish::ComparedModel;
use crate::run::Run;
use crate::speed::{measure_served, serve};
use puzzle_core::artifact::{Artifact, Recorded};
use puzzle_core::data::Split;
use puzzle_core::distill::DistillReport;
use puzzle_core::error::{Error, Result};
use puzzle_core::eval::speed::{Served, Speed};
use puzzle_core::eval::tasks::{TaskItem, TaskScore, read_tasks, score_tasks};
use puzzle_core::eval::{Agreement, LmMetrics, agreement, lm_metrics};
use puzzle_core::fsutil;
use puzzle_core::kinds::SpeedMetric;
use puzzle_core::model::{LoadedModel, load_model_with};
use puzzle_core::nn::Decoder;
use puzzle_core::progress::Progress;
use puzzle_core::search::{BoundValue, Constraint, Op};
use puzzle_core::spec::ModelSpec;
use puzzle_core::variant::SubblockKind;

/// One model's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    pub name: String,
    pub path: String,
    pub params: usize,
    pub param_bytes: f64,
    pub kv_bytes_per_token: f64,
    pub layers: Vec<String>,
    pub speed: Vec<Speed>,
    pub lm: LmMetrics,
    pub agreement: Option<Agreement>,
    pub tasks: Vec<(String, TaskScore)>,
    /// Mean over tasks of acc_norm / the parent's.
    pub retention: Option<f64>,
    pub distill: Option<DistillReport>,
}

/// `eval/report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub models: Vec<ModelEval>,
    /// The batch size speed ratios are reported at.
    pub batch: usize,
    /// The engine every speed was measured in (`deployment.engine`) and its description.
    #[serde(default)]
    pub engine: String,
    pub provenance: String,
}

impl Recorded for EvalReport {
    type Inputs = String;
    fn inputs(&self) -> String {
        self.provenance.clone()
    }
}

/// What the evaluation reads besides the run: the data it scores on.
struct EvalData {
    windows: Vec<Vec<u32>>,
    tasks: Vec<(String, Vec<TaskItem>)>,
}

/// Evaluates the parent and `models`, reused when none of them changed.
pub fn eval_stage(
    run: &Run,
    models: &[ComparedModel],
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let c = &run.config;
    // A model folder's puzzle.json changes whenever the model does (its timings aside).
    let stamps: Vec<String> = models
        .iter()
        .map(|m| {
            crate::run::stamp_of(
                &fsutil::read_to_string(&m.dir.join("puzzle.json")).unwrap_or_default(),
            )
        })
        .collect();
    let inputs = RunConfig::hash_of(&(&stamps, &c.eval, &c.deployment, &run.parent_fingerprint));
    Artifact::new("eval", run.dir.join("eval/report.json")).reuse_or_build(
        &inputs,
        progress,
        |progress| {
            let mut all = vec![ComparedModel {
                name: "parent".into(),
                dir: c.parent.path.clone(),
                distill: None,
            }];
            all.extend(models.iter().cloned());
            let models = evaluate_all(run, &all, progress)?;
            Ok(EvalReport {
                models,
                batch,
                engine: format!(
                    "{} ({})",
                    c.deployment.engine,
                    puzzle_core::engine::described(run.engine()?, run.parent.device())
                ),
                provenance: inputs.clone(),
            })
        },
    )
}

fn eval_data(run: &Run) -> Result<EvalData> {
    let c = &run.config.eval;
    let mut windows = run.windows(Split::Validation, c.seq_len)?;
    windows.truncate(c.sequences);
    let tasks = c
        .tasks
        .iter()
        .map(|p| {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, read_tasks(p)?))
        })
        .collect::<Result<_>>()?;
    Ok(EvalData { windows, tasks })
}

/// Speeds of all models measured round-robin in the deployment's engine, per batch size:
/// drifts of the machine hit every model alike.
fn measure_speeds(
    run: &Run,
    all: &[ComparedModel],
    decoders: &[&Decoder],
) -> Result<Vec<Vec<Speed>>> {
    let d = &run.config.deployment;
    let rounds = run.config.eval.speed_repeats.max(5);
    let served = all
        .iter()
        .zip(decoders)
        .map(|(m, dec)| serve(run, dec, &m.name))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&dyn Served> = served.iter().map(|s| s.as_ref()).collect();
    let mut speeds: Vec<Vec<Speed>> = vec![Vec::new(); decoders.len()];
    for &b in &d.batch_sizes {
        let measured = measure_served(run, &refs, b, rounds)?;
        for (i, s) in measured.into_iter().enumerate() {
            speeds[i].push(s);
        }
    }
    Ok(speeds)
}

fn evaluate_all(
    run: &Run,
    all: &[ComparedModel],
    progress: &mut dyn Progress,
) -> Result<Vec<ModelEval>> {
    let data = eval_data(run)?;
    let device = run.parent.device().clone();
    progress.start("eval", all.len() as u64 + 1);
    let loaded: Vec<LoadedModel> = all
        .iter()
        .map(|m| load_model_with(&run.plugins.families, &m.dir, &device))
        .collect::<Result<_>>()?;
    let decoders: Vec<&Decoder> = loaded.iter().map(|m| &m.decoder).collect();
    let mut speeds = measure_speeds(run, all, &decoders)?;
    progress.set(1, "speed");
    let mut evals: Vec<ModelEval> = Vec::new();
    for (i, (m, loaded)) in all.iter().zip(&loaded).enumerate() {
        let speed = std::mem::take(&mut speeds[i]);
        let e = evaluate_one(run, &data, m, loaded, speed, evals.first())?;
        evals.push(e);
        progress.set(i as u64 + 2, &m.name);
    }
    progress.finish();
    Ok(evals)
}

/// Quality of one model; `parent` is the parent's evaluation (`None` for the parent itself).
fn evaluate_one(
    run: &Run,
    data: &EvalData,
    m: &ComparedModel,
    loaded: &LoadedModel,
    speed: Vec<Speed>,
    parent: Option<&ModelEval>,
) -> Result<ModelEval> {
    let c = &run.config;
    let tok = loaded
        .tokenizer
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("{} has no tokenizer", m.dir.display())))?;
    let batch = c.eval.batch_size;
    let lm = lm_metrics(&loaded.decoder, &data.windows, batch);
    let agree = match parent {
        Some(_) => Some(agreement(
            &loaded.decoder,
            run.parent.decoder()?,
            &data.windows,
            batch,
        )),
        None => None,
    };
    let tasks: Vec<(String, TaskScore)> = data
        .tasks
        .iter()
        .map(|(n, items)| {
            Ok((
                n.clone(),
                score_tasks(&loaded.decoder, tok, items, batch * 4)?,
            ))
        })
        .collect::<Result<_>>()?;
    let retention = parent.and_then(|p| {
        let r: Vec<f64> = tasks
            .iter()
            .zip(&p.tasks)
            .map(|((_, a), (_, b))| a.acc_norm / b.acc_norm.max(1e-12))
            .collect();
        (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
    });
    let spec = &loaded.spec;
    let d = &c.deployment;
    Ok(ModelEval {
        name: m.name.clone(),
        path: m.dir.display().to_string(),
        params: spec.num_params(),
        param_bytes: spec.num_params() as f64 * d.weight_dtype.bytes(),
        kv_bytes_per_token: spec.kv_elements_per_token() as f64 * d.kv_dtype.bytes(),
        layers: layer_names(spec),
        speed,
        lm,
        agreement: agree,
        tasks,
        retention,
        distill: m.distill.clone(),
    })
}

fn layer_names(spec: &ModelSpec) -> Vec<String> {
    (0..spec.layers.len())
        .map(|l| {
            format!(
                "{} + {}",
                spec.variant_of(l, SubblockKind::Attention),
                spec.variant_of(l, SubblockKind::Ffn)
            )
        })
        .collect()
}

/// A relative speed target of the run (`decode_throughput>=2x`) decided by the final
/// evaluation's measurement, not by a search round or a prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The constraint as the config states it.
    pub constraint: String,
    pub target: f64,
    /// The median over rounds of the child's speed over the parent's in the same round
    /// (measured together; the ratio of medians for reports from before the pairing).
    pub measured: f64,
    /// The lowest and highest round's ratio.
    pub range: [f64; 2],
    pub met: bool,
}

impl Verdict {
    /// `met` or a bold `**not met**`, as the report and the README tables write it.
    pub fn word(&self) -> &'static str {
        if self.met { "met" } else { "**not met**" }
    }
}

/// The verdict on every relative end-to-end speed constraint of `constraints` for `model`.
pub fn verdicts(constraints: &[String], eval: &EvalReport, model: &str) -> Result<Vec<Verdict>> {
    let find = |name: &str| {
        eval.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::invalid(format!("eval/report.json has no `{name}`")))
    };
    let (parent, child) = (find("parent")?, find(model)?);
    let mut out = Vec::new();
    for raw in constraints {
        let c: Constraint = raw.parse()?;
        let (metric, batch) = match SpeedMetric::from_key(&c.key) {
            Some(mb) => mb,
            None => match c.key.parse::<SpeedMetric>() {
                Ok(m) => (m, eval.batch),
                Err(_) => continue,
            },
        };
        let BoundValue::Relative(target) = c.value else {
            continue;
        };
        let at = |m: &ModelEval| m.speed.iter().find(|s| s.batch == batch).cloned();
        let (Some(p), Some(s)) = (at(parent), at(child)) else {
            continue;
        };
        let (measured, range) = s.over(&p, metric);
        out.push(Verdict {
            constraint: raw.clone(),
            target,
            measured,
            range,
            met: match c.op {
                Op::Ge => measured >= target,
                Op::Le => measured <= target,
            },
        });
    }
    Ok(out)
}
