//! End-to-end speed of a model relative to the parent, on the run's deployment workload.

use crate::run::Run;
use puzzle_core::eval::speed::{Speed, measure_together};
use puzzle_core::kinds::SpeedMetric;
use puzzle_core::nn::Decoder;

/// The value of `metric` in a measurement.
pub fn speed_of(s: &Speed, metric: SpeedMetric) -> f64 {
    match metric {
        SpeedMetric::Throughput => s.throughput,
        SpeedMetric::DecodeThroughput => s.decode_throughput,
    }
}

/// `metric` of `model` over the parent's, at batch `batch`, the two measured together
/// (round-robin, so drifts of the machine hit both alike).
pub fn speed_vs_parent(run: &Run, model: &Decoder, batch: usize, metric: SpeedMetric) -> f64 {
    let d = &run.config.deployment;
    let s = measure_together(
        &[&run.parent.decoder, model],
        batch,
        d.prefill_len,
        d.generation_len,
        run.config.eval.speed_repeats.max(5),
    );
    speed_of(&s[1], metric) / speed_of(&s[0], metric)
}
