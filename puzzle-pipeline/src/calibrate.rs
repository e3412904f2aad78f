//! The search stage with speed calibration: search with the run's `[search]` settings, then
//! check relative speed constraints end to end on the realized child (at most
//! [`MAX_ROUNDS`] rounds). A child measured short of its target tightens that bound; when every
//! target is met with more than 10% to spare the bounds are loosened, because the block sums can
//! be pessimistic too and the spare speed could have bought quality. A round at its aim is
//! measured a second time before it is kept (the mean of the two decides), because the first
//! measurement was picked for being high. The best round that met every target is kept (the
//! last round when none did).

use serde::{Deserialize, Serialize};

use crate::run::Run;
use crate::speed::speed_vs_parent;
use puzzle_core::artifact::{Artifact, Recorded};
use puzzle_core::error::{Error, Result};
use puzzle_core::kinds::SpeedMetric;
use puzzle_core::nn::Decoder;
use puzzle_core::progress::Progress;
use puzzle_core::realize::{LayerChoice, realize};
use puzzle_core::score::ScoreTable;
use puzzle_core::search::from_run::{at_batch, batch_sizes};
use puzzle_core::search::mip::SolveOptions;
use puzzle_core::search::problem::parent_total;
use puzzle_core::search::run::{Infeasibility, SearchSolution, diverse};
use puzzle_core::search::{BlockTable, BoundValue, Constraint, Objective, Op, SearchSpec, Sense};

/// Search rounds at most (the first plus up to three calibrations).
pub const MAX_ROUNDS: usize = 4;

/// One round of the speed calibration: the constraint used, what the tables predicted and what
/// was measured end to end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Search round (0-based).
    #[serde(default)]
    pub round: usize,
    pub constraint: String,
    pub predicted_ratio: f64,
    pub measured_ratio: f64,
    /// A second measurement of a round that reached its aim, taken before it is kept.
    #[serde(default)]
    pub confirmation: bool,
}

/// `search/solution.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChosenSolution {
    pub solution: SearchSolution,
    /// Batch size the solution was found for (`None`: the keys needed none).
    pub batch: Option<usize>,
    pub spec: SearchSpec,
    pub calibration: Vec<Calibration>,
    /// The round whose solution was kept (0-based).
    #[serde(default)]
    pub chosen_round: usize,
    /// Alternatives (diversity), best first, the chosen one included.
    pub alternatives: Vec<SearchSolution>,
    pub provenance: String,
}

impl Recorded for ChosenSolution {
    type Inputs = String;
    fn inputs(&self) -> String {
        self.provenance.clone()
    }
}

impl ChosenSolution {
    /// The chosen layers.
    pub fn choices(&self) -> Result<Vec<LayerChoice>> {
        parse_choices(&self.solution)
    }
}

fn parse_choices(sol: &SearchSolution) -> Result<Vec<LayerChoice>> {
    sol.choices.iter().map(|(_, id)| id.parse()).collect()
}

/// What one search round found: the best solutions over the batch sizes tried.
#[derive(Clone, Debug)]
struct Round {
    /// 0-based.
    index: usize,
    batch: Option<usize>,
    /// Best first (diversity alternatives after).
    solutions: Vec<SearchSolution>,
    /// The spec with keys bound to `batch`, as solved.
    spec: SearchSpec,
}

impl Round {
    fn objective(&self) -> f64 {
        self.solutions[0].objective
    }
}

fn better(sense: Sense, a: f64, b: f64) -> bool {
    match sense {
        Sense::Minimize => a < b,
        Sense::Maximize => a > b,
    }
}

/// The search stage: `search/solution.json`, reused when the table and `[search]` match.
pub fn search_stage(
    run: &Run,
    table: &BlockTable,
    scores: &ScoreTable,
    progress: &mut dyn Progress,
) -> Result<ChosenSolution> {
    // The table's content, not where it was written (`source`): a run folder started from
    // another's artifacts (`puzzle ablate`) reuses the search when its table is the same.
    let content = BlockTable {
        source: String::new(),
        ..table.clone()
    };
    let inputs = crate::config::RunConfig::hash_of(&(&content, &run.config.search));
    Artifact::new("search", run.stages.join("search/solution.json")).reuse_or_build(
        &inputs,
        progress,
        |progress| {
            let spec = search_spec(run, &scores.primary)?;
            let (kept, calibration) = calibrated_search(run, table, spec, progress)?;
            Ok(ChosenSolution {
                solution: kept.solutions[0].clone(),
                batch: kept.batch,
                spec: kept.spec,
                calibration,
                chosen_round: kept.index,
                alternatives: kept.solutions,
                provenance: inputs.clone(),
            })
        },
    )
}

/// The objective (the config's, else the primary score) and constraints of `[search]`.
fn search_spec(run: &Run, primary: &str) -> Result<SearchSpec> {
    let s = &run.config.search;
    let key = match &s.objective {
        Some(k) => k.clone(),
        None if primary == "kl" => "kl".into(),
        None => format!("{primary}_delta"),
    };
    let sense = if s.maximize {
        Sense::Maximize
    } else {
        Sense::Minimize
    };
    let mut constraints: Vec<Constraint> = s
        .constraints
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_>>()?;
    // An engine that cannot serve a model without KV-cache attention (llama.cpp) gets a child
    // that keeps one: some KV bytes per token.
    if run
        .config
        .deployment
        .engine
        .capabilities()
        .needs_kv_attention
    {
        constraints.push(Constraint {
            key: "kv_bytes_per_token".into(),
            op: Op::Ge,
            value: BoundValue::Absolute(1.0),
        });
    }
    Ok(SearchSpec {
        objective: Objective { key, sense },
        constraints,
    })
}

/// `spec` with per-batch keys (`runtime_ms`) bound to batch `b`.
fn bind(spec: &SearchSpec, table: &BlockTable, b: Option<usize>) -> SearchSpec {
    let Some(b) = b else { return spec.clone() };
    SearchSpec {
        objective: Objective {
            key: at_batch(table, &spec.objective.key, b),
            sense: spec.objective.sense,
        },
        constraints: spec
            .constraints
            .iter()
            .map(|c| Constraint {
                key: at_batch(table, &c.key, b),
                ..c.clone()
            })
            .collect(),
    }
}

/// The batch sizes to solve for: every one in the table when a key needs binding (less those
/// set aside), else none.
fn batch_choices(table: &BlockTable, spec: &SearchSpec, set_aside: &[usize]) -> Vec<Option<usize>> {
    let keys = table.common_keys();
    let needs = std::iter::once(&spec.objective.key)
        .chain(spec.constraints.iter().map(|c| &c.key))
        .any(|k| !keys.contains(k));
    if needs {
        batch_sizes(table)
            .into_iter()
            .filter(|b| !set_aside.contains(b))
            .map(Some)
            .collect()
    } else {
        vec![None]
    }
}

/// Solves `spec` at every batch choice and keeps the best; the first infeasibility otherwise.
fn solve_round(
    run: &Run,
    table: &BlockTable,
    spec: &SearchSpec,
    index: usize,
    set_aside: &[usize],
) -> Result<std::result::Result<Round, String>> {
    let c = &run.config.search;
    let solver = run.plugins.solver(&c.solver)?;
    let opts = SolveOptions {
        time_limit_secs: c.time_limit_secs,
        ..Default::default()
    };
    let mut best: Option<Round> = None;
    let mut why = None;
    for b in batch_choices(table, spec, set_aside) {
        let s = bind(spec, table, b);
        match diverse(
            table,
            &s,
            solver,
            &opts,
            c.solutions.max(1),
            c.min_diversity,
        )? {
            Ok(solutions) => {
                let round = Round {
                    index,
                    batch: b,
                    solutions,
                    spec: s,
                };
                let sense = round.spec.objective.sense;
                if best
                    .as_ref()
                    .is_none_or(|cur| better(sense, round.objective(), cur.objective()))
                {
                    best = Some(round);
                }
            }
            Err(w) => {
                why.get_or_insert(w);
            }
        }
    }
    Ok(best.ok_or_else(|| {
        why.map(|w: Infeasibility| w.to_string())
            .unwrap_or_else(|| "the block table has no batch size to solve for".into())
    }))
}

/// One relative speed constraint checked end to end in a calibration round.
#[derive(Clone, Copy, Debug)]
struct SpeedCheck {
    /// Index of the constraint in the search spec.
    index: usize,
    /// The bound the round searched with (on the predicted ratio).
    bound: f64,
    /// The target as the user asked it.
    target: f64,
    /// The child's measured ratio.
    measured: f64,
}

/// What measuring a round's child found.
struct Checked {
    checks: Vec<SpeedCheck>,
    /// Why the round's block table is not to be trusted, when it is not.
    distrust: Option<String>,
}

/// Measures the round's child against every relative `>=` speed constraint (weights do not
/// change speed: the undistilled child is measured), recording each in `calibration`.
fn check_speeds(
    run: &Run,
    table: &BlockTable,
    round: &Round,
    targets: &[Option<f64>],
    calibration: &mut Vec<Calibration>,
    progress: &mut dyn Progress,
) -> Result<Checked> {
    let mut checks = Vec::new();
    let mut distrust = None;
    // Realized once per round, on the first speed constraint (there may be none).
    let mut child: Option<Decoder> = None;
    for (i, con) in round.spec.constraints.iter().enumerate() {
        let (Some((metric, b)), BoundValue::Relative(bound), Op::Ge) =
            (SpeedMetric::from_key(&con.key), con.value, con.op)
        else {
            continue;
        };
        if child.is_none() {
            child = Some(realize(
                run.parent.decoder()?,
                &run.parent.weights,
                &run.library(),
                &parse_choices(&round.solutions[0])?,
                run.parent.device(),
            )?);
        }
        let measured = speed_vs_parent(run, child.as_ref().expect("just set"), b, metric)?;
        let predicted = round.solutions[0]
            .costs
            .get(&con.key)
            .copied()
            .unwrap_or(f64::NAN)
            / parent_total(table, &con.key)?;
        let target = targets[i].unwrap_or(bound);
        checks.push(SpeedCheck {
            index: i,
            bound,
            target,
            measured,
        });
        calibration.push(Calibration {
            round: round.index,
            constraint: con.to_string(),
            predicted_ratio: predicted,
            measured_ratio: measured,
            confirmation: false,
        });
        progress.note(&format!(
            "search round {}: {} predicted {predicted:.2}x, measured {measured:.2}x (target {target:.2}x)",
            round.index + 1,
            con.key
        ));
        // The previous round of this constraint, if any (its record is the one before ours).
        let before = calibration.iter().rev().skip(1).find(|c| {
            c.constraint
                .parse::<puzzle_core::search::Constraint>()
                .is_ok_and(|k| k.key == con.key)
        });
        if distrust.is_none() && untrusted(predicted, measured, before.map(|b| b.measured_ratio)) {
            distrust = Some(format!(
                "the costs predicted {predicted:.2}x for `{}` and {} measured {measured:.2}x, no faster than the round before although a faster child was asked for: block sums do not describe this engine at this batch size (timing noise from other work on the machine while `puzzle cost` ran, or an engine whose costs do not add up: `puzzle cost CONFIG --validate 5` tells which)",
                con.key, run.config.deployment.engine
            ));
        }
    }
    Ok(Checked { checks, distrust })
}

/// Tightening the bound stops helping when a round's child measures under this fraction of its
/// predicted speed-up and no faster than the round before: the table is wrong, not slightly
/// off, and further rounds chase noise (a run whose costs were timed beside a compiler
/// predicted 3.2x and measured 1.1x, then 11x and 1.1x). Burn at batch 8, whose sums are
/// systematically optimistic, measured 0.85-0.60 of its predictions while still getting faster.
const MIN_TRUSTED_FRACTION: f64 = 0.6;

/// Whether a round's measurement shows its block table wrong (see [`MIN_TRUSTED_FRACTION`]):
/// `before` is the previous round's measured ratio of the same constraint.
fn untrusted(predicted: f64, measured: f64, before: Option<f64>) -> bool {
    measured < MIN_TRUSTED_FRACTION * predicted && before.is_some_and(|b| measured <= b)
}

/// The rounds of search and measurement; returns the kept round and every round's calibration.
fn calibrated_search(
    run: &Run,
    table: &BlockTable,
    spec: SearchSpec,
    progress: &mut dyn Progress,
) -> Result<(Round, Vec<Calibration>)> {
    calibrate(
        spec,
        &mut |spec, index, set_aside| solve_round(run, table, spec, index, set_aside),
        &mut |round, targets, calibration, progress| {
            check_speeds(run, table, round, targets, calibration, progress)
        },
        &|spec, set_aside| batch_choices(table, spec, set_aside),
        progress,
    )
}

/// Solves a round: (spec, round index, batch sizes set aside).
type SolveFn<'a> =
    dyn FnMut(&SearchSpec, usize, &[usize]) -> Result<std::result::Result<Round, String>> + 'a;
/// Measures a round's child: (round, targets as asked, calibration records, progress).
type CheckFn<'a> = dyn FnMut(&Round, &[Option<f64>], &mut Vec<Calibration>, &mut dyn Progress) -> Result<Checked>
    + 'a;
/// The batch choices left: (spec, batch sizes set aside).
type BatchesFn<'a> = dyn Fn(&SearchSpec, &[usize]) -> Vec<Option<usize>> + 'a;

/// [`calibrated_search`]'s rounds, over any solver and measurement (tests fake both).
fn calibrate(
    mut spec: SearchSpec,
    solve: &mut SolveFn<'_>,
    check: &mut CheckFn<'_>,
    batches: &BatchesFn<'_>,
    progress: &mut dyn Progress,
) -> Result<(Round, Vec<Calibration>)> {
    // The relative targets as asked, before any tightening.
    let targets: Vec<Option<f64>> = spec
        .constraints
        .iter()
        .map(|k| match k.value {
            BoundValue::Relative(t) => Some(t),
            BoundValue::Absolute(_) => None,
        })
        .collect();
    let asked = spec.clone();
    let mut calibration = Vec::new();
    // The best round whose child met every speed target with the margin, the best that met
    // them as asked, and the last round.
    let mut kept: Option<Round> = None;
    let mut met: Option<Round> = None;
    let mut last: Option<Round> = None;
    // Batch sizes whose tables a round showed to be wrong; each one set aside buys the search
    // a fresh set of rounds at the others.
    let mut set_aside: Vec<usize> = Vec::new();
    let mut end = MAX_ROUNDS;
    let mut index = 0;
    while index < end {
        let round = match solve(&spec, index, &set_aside)? {
            Ok(r) => r,
            Err(why) => match kept.or(met).or(last) {
                // A tightened bound has no solution: keep what was found before.
                Some(k) => {
                    progress.note(&format!(
                        "search round {}: no solution with the adjusted bound; keeping round {}",
                        index + 1,
                        k.index + 1
                    ));
                    return Ok((k, calibration));
                }
                None => {
                    return Err(Error::invalid(format!(
                        "the search has no solution:\n{why}"
                    )));
                }
            },
        };
        let Checked {
            mut checks,
            distrust,
        } = check(&round, &targets, &mut calibration, progress)?;
        let mut adjust = adjust_speed_bounds(&checks);
        if adjust == Adjust::Keep && !checks.is_empty() && distrust.is_none() {
            checks = confirm(&round, &checks, &targets, check, &mut calibration, progress)?;
            adjust = adjust_speed_bounds(&checks);
        }
        let sense = round.spec.objective.sense;
        let best_of = |slot: &Option<Round>| {
            slot.as_ref()
                .is_none_or(|k| better(sense, round.objective(), k.objective()))
        };
        if !matches!(adjust, Adjust::Tighten(..)) && best_of(&kept) {
            kept = Some(round.clone());
        }
        if checks.iter().all(|c| c.measured >= c.target) && best_of(&met) {
            met = Some(round.clone());
        }
        if let Some(why) = distrust {
            let others = round.batch.filter(|b| {
                batches(&spec, &set_aside)
                    .iter()
                    .any(|o| o.is_some_and(|o| o != *b))
            });
            if let Some(k) = kept {
                progress.note(&format!(
                    "search round {}: {why}; keeping round {}, which met every target",
                    index + 1,
                    k.index + 1
                ));
                return Ok((k, calibration));
            }
            if let Some(b) = others {
                progress.note(&format!(
                    "search round {}: {why}; the batch-{b} table is set aside and the search starts again at the other batch sizes",
                    index + 1
                ));
                set_aside.push(b);
                spec = asked.clone();
                end = index + 1 + MAX_ROUNDS;
                last = Some(round);
                index += 1;
                continue;
            }
            if let Some(k) = met {
                progress.note(&format!(
                    "search round {}: {why}; keeping round {}, which met every target as asked but without the {:.0}% margin: the final evaluation decides",
                    index + 1,
                    k.index + 1,
                    AIM_MARGIN * 100.0
                ));
                return Ok((k, calibration));
            }
            return Err(Error::invalid(format!(
                "search round {}: {why}. No round met the targets: delete costs.json, re-measure on a quiet machine and run again",
                index + 1
            )));
        }
        last = Some(round);
        if index + 1 == end || !apply(&adjust, &mut spec, index, progress) {
            break;
        }
        index += 1;
    }
    Ok((
        kept.or(met).or(last).expect("at least one round ran"),
        calibration,
    ))
}

/// A round about to be kept, measured again: the check that found it at its aim was chosen
/// among rounds *for* measuring high, so on a noisy machine it overstates the child (the final
/// evaluation, a fresh measurement, found kept children up to 15% slower than their round had;
/// `cargo bench -p puzzle-llama-ops --features llamacpp --bench repeat` shows single
/// measurements of one child 5-17% apart). The second measurement is independent of that
/// choice, though not of the machine's state: it follows at once, and this machine's noise
/// comes in stretches longer than a measurement, so it removes part of the bias, not all; the
/// aim's margin covers the rest. The mean of the two decides.
fn confirm(
    round: &Round,
    first: &[SpeedCheck],
    targets: &[Option<f64>],
    check: &mut CheckFn<'_>,
    calibration: &mut Vec<Calibration>,
    progress: &mut dyn Progress,
) -> Result<Vec<SpeedCheck>> {
    progress.note(&format!(
        "search round {}: at its aim; measured again before it is kept",
        round.index + 1
    ));
    let before = calibration.len();
    // Its own distrust verdict is not asked for: the first check of this round passed it, and
    // comparing a round with itself says nothing about the table.
    let again = check(round, targets, calibration, progress)?.checks;
    for c in &mut calibration[before..] {
        c.confirmation = true;
    }
    let mean: Vec<SpeedCheck> = first
        .iter()
        .map(|c| {
            let m = again
                .iter()
                .find(|a| a.index == c.index)
                .map_or(c.measured, |a| (a.measured + c.measured) / 2.0);
            SpeedCheck { measured: m, ..*c }
        })
        .collect();
    let says: Vec<String> = mean
        .iter()
        .map(|c| format!("{:.2}x (target {:.2}x)", c.measured, c.target))
        .collect();
    progress.note(&format!(
        "search round {}: mean of the two measurements {}",
        round.index + 1,
        says.join(", ")
    ));
    Ok(mean)
}

/// Applies `adjust` to the spec's bounds; false when the search is done.
fn apply(
    adjust: &Adjust,
    spec: &mut SearchSpec,
    index: usize,
    progress: &mut dyn Progress,
) -> bool {
    match adjust {
        Adjust::Tighten(i, tighter) => spec.constraints[*i].value = BoundValue::Relative(*tighter),
        Adjust::Loosen(looser) => {
            progress.note(&format!(
                "search round {}: more than 10% faster than needed; loosening to buy quality",
                index + 1
            ));
            for &(i, b) in looser {
                spec.constraints[i].value = BoundValue::Relative(b);
            }
        }
        Adjust::Keep => return false,
    }
    true
}

/// What the next calibration round does.
#[derive(Clone, Debug, PartialEq)]
enum Adjust {
    /// Every target met without much to spare (or nothing to check): done.
    Keep,
    /// Constraint `i` missed its aim: search again with this bound.
    Tighten(usize, f64),
    /// Every target met with more than 10% to spare: search again with these bounds.
    Loosen(Vec<(usize, f64)>),
}

/// How far above a speed target a search round's measured child must be. The final evaluation
/// decides the target, and on this 2-core machine it measured the same child 0-8.5% slower than
/// the search round had (five llama.cpp runs: 2.18x -> 2.18x, 2.20x -> 2.16x, 2.23x -> 2.10x,
/// 2.09x -> 1.95x, 2.11x -> 1.93x), so a 3% and then a 5% aim each lost runs their target.
/// Rounds are cheap next to distillation; the price is a child a little faster than asked.
pub const AIM_MARGIN: f64 = 0.10;

/// Measurements on a shared machine wander by a few percent, so the aim is [`AIM_MARGIN`] above
/// the target (a later measurement, the evaluation, should still meet it). The new bound scales the old one
/// by how far the measured ratio is from the aim, 1% further: the predicted ratio is a proxy, and
/// a loosened bound may sit below the target as asked when the block sums are pessimistic; the
/// next round's measurement checks it.
fn adjust_speed_bounds(checks: &[SpeedCheck]) -> Adjust {
    let aim = 1.0 + AIM_MARGIN;
    let rescale = |c: &SpeedCheck| c.bound * (c.target * aim / c.measured) * 1.01;
    if let Some(c) = checks.iter().find(|c| c.measured < c.target * aim) {
        return Adjust::Tighten(c.index, rescale(c));
    }
    if !checks.is_empty() && checks.iter().all(|c| c.measured > c.target * aim * 1.10) {
        return Adjust::Loosen(checks.iter().map(|c| (c.index, rescale(c))).collect());
    }
    Adjust::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(index: usize, bound: f64, target: f64, measured: f64) -> SpeedCheck {
        SpeedCheck {
            index,
            bound,
            target,
            measured,
        }
    }

    #[test]
    fn a_child_short_of_its_aim_tightens_that_constraint() {
        // Asked 2x, searched with 2x, measured 1.81x: aim 2.2x, bound 2 x 2.2 / 1.81 x 1.01.
        let a = adjust_speed_bounds(&[check(1, 2.0, 2.0, 1.81)]);
        let want = 2.0 * (2.2 / 1.81) * 1.01;
        match a {
            Adjust::Tighten(1, b) => assert!((b - want).abs() < 1e-12, "{b} vs {want}"),
            other => panic!("{other:?}"),
        }
        // Met but within the 10% margin: still tightened.
        assert!(matches!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 2.15)]),
            Adjust::Tighten(0, b) if b > 2.0
        ));
    }

    #[test]
    fn a_child_far_faster_than_needed_loosens_below_the_predicted_target() {
        // Predicted 2.0x, measured 2.84x for a 2x target: the sums were pessimistic.
        let a = adjust_speed_bounds(&[check(0, 2.0, 2.0, 2.84)]);
        let want = 2.0 * (2.2 / 2.84) * 1.01;
        match a {
            Adjust::Loosen(v) => {
                assert_eq!(v.len(), 1);
                assert!((v[0].1 - want).abs() < 1e-12 && v[0].1 < 2.0, "{v:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn met_with_little_to_spare_or_mixed_keeps_the_round() {
        // 2.3x for 2x: 4.5% above the aim, under the 10% that triggers loosening.
        assert_eq!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 2.3)]),
            Adjust::Keep
        );
        // One constraint with room, one without: loosening one would only trade between them.
        assert_eq!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 3.0), check(1, 1.5, 1.5, 1.7)]),
            Adjust::Keep
        );
        // One short among several: tighten the short one.
        assert!(matches!(
            adjust_speed_bounds(&[check(0, 2.0, 2.0, 3.0), check(2, 1.5, 1.5, 1.4)]),
            Adjust::Tighten(2, _)
        ));
        assert_eq!(adjust_speed_bounds(&[]), Adjust::Keep);
    }

    /// Notes kept for assertions.
    #[derive(Default)]
    struct Notes(Vec<String>);

    impl Progress for Notes {
        fn start(&mut self, _: &str, _: u64) {}
        fn set(&mut self, _: u64, _: &str) {}
        fn note(&mut self, line: &str) {
            self.0.push(line.to_string());
        }
        fn finish(&mut self) {}
    }

    /// A search whose child's predicted ratio is the bound it was searched with (objective: the
    /// bound, so tighter is worse), at the first batch size not set aside; `measure(batch,
    /// nth round at that batch, predicted)` is the end-to-end measurement.
    fn fake_calibration(
        batches: &[usize],
        measure: impl Fn(usize, usize, f64) -> f64,
    ) -> (Result<(Round, Vec<Calibration>)>, Vec<String>) {
        let spec = SearchSpec {
            objective: Objective {
                key: "kl".into(),
                sense: Sense::Minimize,
            },
            constraints: vec!["decode_throughput>=2x".parse().unwrap()],
        };
        let left = |set_aside: &[usize]| -> Vec<Option<usize>> {
            batches
                .iter()
                .filter(|b| !set_aside.contains(b))
                .map(|&b| Some(b))
                .collect()
        };
        let mut solve = |spec: &SearchSpec, index: usize, set_aside: &[usize]| {
            let b = left(set_aside)[0];
            let BoundValue::Relative(bound) = spec.constraints[0].value else {
                unreachable!()
            };
            let solution = SearchSolution {
                objective: bound,
                choices: vec![],
                choice_index: vec![],
                costs: Default::default(),
                status: puzzle_core::search::mip::MipStatus::Optimal,
                gap: 0.0,
                solver: "fake".into(),
                seconds: 0.0,
                table: format!("{b:?}"),
            };
            Ok(Ok(Round {
                index,
                batch: b,
                solutions: vec![solution],
                spec: spec.clone(),
            }))
        };
        let mut check = |round: &Round,
                         targets: &[Option<f64>],
                         cal: &mut Vec<Calibration>,
                         _: &mut dyn Progress| {
            let b = round.batch.expect("batched");
            let key = format!("decode_throughput@b{b}");
            let before = cal.iter().rev().find(|c| c.constraint == key);
            let nth = cal.iter().filter(|c| c.constraint == key).count();
            let predicted = round.objective();
            let measured = measure(b, nth, predicted);
            let distrust = untrusted(predicted, measured, before.map(|c| c.measured_ratio))
                .then(|| format!("batch {b} untrusted"));
            cal.push(Calibration {
                round: round.index,
                constraint: key,
                predicted_ratio: predicted,
                measured_ratio: measured,
                confirmation: false,
            });
            Ok(Checked {
                checks: vec![SpeedCheck {
                    index: 0,
                    bound: predicted,
                    target: targets[0].unwrap(),
                    measured,
                }],
                distrust,
            })
        };
        let mut notes = Notes::default();
        let out = calibrate(
            spec,
            &mut solve,
            &mut check,
            &|_, set_aside| left(set_aside),
            &mut notes,
        );
        (out, notes.0)
    }

    /// What run on a busy machine measured at batch 1 (its costs timed in noise): the child
    /// gets slower as faster ones are asked for.
    fn noisy_batch_1(nth: usize) -> f64 {
        [1.75, 2.09, 1.90, 1.83][nth.min(3)]
    }

    #[test]
    fn a_batch_size_whose_table_proves_wrong_is_set_aside_for_the_others() {
        let (out, notes) = fake_calibration(&[1, 8], |b, nth, predicted| match b {
            1 => noisy_batch_1(nth),
            _ => 0.95 * predicted,
        });
        let (kept, cal) = out.unwrap();
        assert_eq!(kept.batch, Some(8), "{notes:?}");
        assert!(kept.solutions[0].objective > 2.0);
        // Four rounds at batch 1 (the fourth shows the table wrong), then batch 8 from the
        // target as asked: 1.90x, tightened, 2.22x (within the aim's 10%), confirmed.
        let b8: Vec<f64> = cal
            .iter()
            .filter(|c| c.constraint.ends_with("@b8"))
            .map(|c| c.predicted_ratio)
            .collect();
        assert_eq!(cal.len(), 7, "{cal:?}");
        assert_eq!(b8[0], 2.0);
        assert!(cal[6].confirmation && !cal[5].confirmation);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("batch-1 table is set aside")),
            "{notes:?}"
        );
    }

    /// A round measured at its aim once, and short of it when measured again (the first
    /// measurement was chosen for being high): tightened, not kept.
    #[test]
    fn a_round_at_its_aim_is_measured_again_and_the_mean_decides() {
        let (out, notes) = fake_calibration(&[1], |_, nth, _| [2.25, 2.05, 2.30, 2.34][nth.min(3)]);
        let (kept, cal) = out.unwrap();
        assert_eq!(kept.index, 1, "{notes:?}");
        // Round 1: 2.25x then 2.05x (mean 2.15x < the 2.2x aim): tightened; round 2: 2.30x and
        // 2.34x (mean 2.32x, within 10% of the aim): kept.
        let flags: Vec<(usize, bool)> = cal.iter().map(|c| (c.round, c.confirmation)).collect();
        assert_eq!(flags, [(0, false), (0, true), (1, false), (1, true)]);
        assert!(kept.solutions[0].objective > 2.0);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("mean of the two measurements 2.15x")),
            "{notes:?}"
        );
    }

    #[test]
    fn with_no_other_batch_size_the_best_round_that_met_the_target_is_kept() {
        let (out, notes) = fake_calibration(&[1], |_, nth, _| noisy_batch_1(nth));
        let (kept, _) = out.unwrap();
        // Round 2 measured 2.09x: the target, not the aim.
        assert_eq!(kept.index, 1);
        assert!(
            notes.iter().any(|n| n.contains("without the 10% margin")),
            "{notes:?}"
        );
    }

    #[test]
    fn with_no_round_meeting_the_target_a_wrong_table_is_an_error() {
        let (out, _) = fake_calibration(&[1], |_, nth, _| [1.75, 1.95, 1.90, 1.83][nth.min(3)]);
        let e = out.expect_err("no round met the target").to_string();
        assert!(
            e.contains("costs.json") && e.contains("batch 1 untrusted"),
            "{e}"
        );
    }
}
