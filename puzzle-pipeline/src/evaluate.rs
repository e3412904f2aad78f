//! The evaluation stage: the parent, the child and the baselines from their exported folders,
//! side by side: speed (all models measured round-robin in the deployment's engine, per batch
//! size, with the range over rounds), memory, language
//! modelling, agreement with the parent, task accuracy and retention.

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::finish::ComparedModel;
use crate::run::Run;
use crate::speed::serve;
use puzzle_core::artifact::{Artifact, Recorded};
use puzzle_core::data::Split;
use puzzle_core::distill::DistillReport;
use puzzle_core::error::{Error, Result};
use puzzle_core::eval::speed::{Served, Speed, Timings};
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

/// Speeds of all models measured round-robin in the deployment's engine, per batch size, in
/// `eval.speed_passes` passes spread over the quality scoring: drifts of the machine within a
/// pass hit every model alike (the paired ratios), and the passes, minutes apart, show how far
/// the whole measurement wanders with the machine (a search round measured the same child 10-25%
/// apart from one stage to the next, README).
struct SpeedPasses<'a> {
    run: &'a Run,
    /// Each model's name and decoder, loaded in the engine again for every pass: held in an
    /// engine through the quality scoring, every model would be in memory twice at its peak.
    models: Vec<(&'a str, &'a Decoder)>,
    timings: Vec<Timings>,
    rounds_per_pass: usize,
    left: usize,
}

impl<'a> SpeedPasses<'a> {
    fn new(run: &'a Run, all: &'a [ComparedModel], decoders: &[&'a Decoder]) -> Self {
        let (d, e) = (&run.config.deployment, &run.config.eval);
        // The timed rounds shared out over the passes (`EvalConfig::speed_rounds`), each pass
        // after its own warm-up round.
        let (passes, rounds_per_pass) = e.speed_rounds();
        SpeedPasses {
            run,
            models: all
                .iter()
                .map(|m| m.name.as_str())
                .zip(decoders.iter().copied())
                .collect(),
            timings: d
                .batch_sizes
                .iter()
                .map(|&b| Timings::new(all.len(), b, d.prefill_len, d.generation_len))
                .collect(),
            rounds_per_pass,
            left: passes,
        }
    }

    /// One pass at every batch size; false (and nothing measured) once every pass was taken.
    fn pass(&mut self) -> Result<bool> {
        if self.left == 0 {
            return Ok(false);
        }
        let served = self
            .models
            .iter()
            .map(|(name, dec)| serve(self.run, dec, name))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&dyn Served> = served.iter().map(|s| s.as_ref()).collect();
        for t in &mut self.timings {
            t.pass(&refs, self.rounds_per_pass)?;
        }
        self.left -= 1;
        Ok(true)
    }

    /// Per model, its speed at each batch size over every pass taken.
    fn speeds(&self, models: usize) -> Vec<Vec<Speed>> {
        let mut out = vec![Vec::new(); models];
        for t in &self.timings {
            for (i, s) in t.speeds().into_iter().enumerate() {
                out[i].push(s);
            }
        }
        out
    }
}

/// After which model's quality scoring (index into `models`) each pass after the first is
/// taken, for `passes` passes over `models` models: evenly spaced, the last after every model.
fn pass_points(models: usize, passes: usize) -> Vec<usize> {
    let later = passes.max(1) - 1;
    (1..=later)
        .map(|p| (p * models).div_ceil(later).max(1) - 1)
        .collect()
}

fn evaluate_all(
    run: &Run,
    all: &[ComparedModel],
    progress: &mut dyn Progress,
) -> Result<Vec<ModelEval>> {
    let data = eval_data(run)?;
    let device = run.parent.device().clone();
    let (passes, _) = run.config.eval.speed_rounds();
    progress.start("eval", (all.len() + passes) as u64);
    let loaded: Vec<LoadedModel> = all
        .iter()
        .map(|m| load_model_with(&run.plugins.families, &m.dir, &device))
        .collect::<Result<_>>()?;
    let decoders: Vec<&Decoder> = loaded.iter().map(|m| &m.decoder).collect();
    let mut speed = SpeedPasses::new(run, all, &decoders);
    let mut done = 0u64;
    let mut step = |progress: &mut dyn Progress, what: &str| {
        done += 1;
        progress.set(done, what);
    };
    speed.pass()?;
    step(progress, "speed, pass 1");
    let points = pass_points(all.len(), passes);
    let mut evals: Vec<ModelEval> = Vec::new();
    for (i, (m, loaded)) in all.iter().zip(&loaded).enumerate() {
        let e = evaluate_one(run, &data, m, loaded, evals.first())?;
        evals.push(e);
        step(progress, &m.name);
        for _ in points.iter().filter(|&&p| p == i) {
            if speed.pass()? {
                step(progress, "speed, another pass");
            }
        }
    }
    for (e, s) in evals.iter_mut().zip(speed.speeds(all.len())) {
        e.speed = s;
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
        // Filled in once every speed pass was taken.
        speed: Vec::new(),
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
    /// The lowest and highest pass's median ratio, when the evaluation measured in several
    /// passes apart in time (`eval.speed_passes`): how far the measurement itself wanders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<[f64; 2]>,
    pub met: bool,
}

impl Verdict {
    /// `met` or a bold `**not met**`, as the report and the README tables write it.
    pub fn word(&self) -> &'static str {
        if self.met { "met" } else { "**not met**" }
    }

    /// The spread in words, as the README table and `puzzle run` print it: `2.05x-2.61x over
    /// rounds` and, when measured in passes, `, 2.21x-2.40x over passes`.
    pub fn spread(&self) -> String {
        let mut out = format!("{:.2}x-{:.2}x over rounds", self.range[0], self.range[1]);
        if let Some(p) = self.passes {
            out += &format!(", {:.2}x-{:.2}x over passes", p[0], p[1]);
        }
        out
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
            passes: s.over_passes(metric),
            met: match c.op {
                Op::Ge => measured >= target,
                Op::Le => measured <= target,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first pass comes before any quality scoring; the later ones are spread evenly over
    /// the models, the last after the last model; one pass takes no later point.
    #[test]
    fn later_passes_are_spread_over_the_quality_scoring() {
        assert_eq!(pass_points(4, 1), Vec::<usize>::new());
        assert_eq!(pass_points(4, 2), vec![3]);
        assert_eq!(pass_points(4, 3), vec![1, 3]);
        assert_eq!(pass_points(3, 3), vec![1, 2]);
        // More passes than models: some follow the same model, none is lost.
        assert_eq!(pass_points(2, 5), vec![0, 0, 1, 1]);
        assert_eq!(pass_points(1, 3), vec![0, 0]);
    }
}
