//! End-to-end speed of models relative to the parent, on the run's deployment workload, in the
//! deployment's engine.

use crate::run::Run;
use puzzle_core::engine::load_timed;
use puzzle_core::error::{Context as _, Result};
use puzzle_core::eval::speed::{Served, Speed, clocked, measure_together};
use puzzle_core::kinds::{EngineKind, SpeedMetric};
use puzzle_core::nn::Decoder;
use puzzle_core::weights::MemoryWeights;

/// `model` loaded in the deployment's engine (our own runtime serves the decoder as it is).
pub fn serve(run: &Run, model: &Decoder, what: &str) -> Result<Box<dyn Served>> {
    let d = &run.config.deployment;
    if d.engine == EngineKind::Burn {
        return Ok(clocked(Box::new(model.clone()), &model.current_spec()));
    }
    let mut w = MemoryWeights::new(what);
    for (name, t) in model.tensors() {
        w.insert(name, t);
    }
    load_timed(run.engine()?, &model.current_spec(), &w, d, &model.device())
        .context(format!("loading {what} in {}", d.engine))
}

/// Every model measured round-robin in the deployment's engine at batch `batch`, `rounds`
/// rounds after a warm-up: drifts of the machine hit every model alike.
pub fn measure_served(
    run: &Run,
    models: &[&dyn Served],
    batch: usize,
    rounds: usize,
) -> Result<Vec<Speed>> {
    let d = &run.config.deployment;
    measure_together(models, batch, d.prefill_len, d.generation_len, rounds)
}

/// `metric` of `model` over the parent's, at batch `batch`, the two measured together in the
/// deployment's engine (round-robin, so drifts of the machine hit both alike): the median of
/// the rounds' ratios, as the final evaluation decides a target.
pub fn speed_vs_parent(
    run: &Run,
    model: &Decoder,
    batch: usize,
    metric: SpeedMetric,
) -> Result<f64> {
    let parent = serve(run, run.parent.decoder()?, "the parent")?;
    let m = serve(run, model, "a candidate")?;
    let s = measure_served(
        run,
        &[parent.as_ref(), m.as_ref()],
        batch,
        run.config.eval.speed_repeats.max(5),
    )?;
    Ok(s[1].over(&s[0], metric).0)
}
