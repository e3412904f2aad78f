//! The baselines at the Puzzle child's measured speed: each is the least-reduced architecture of
//! its kind whose measured speed (end to end, undistilled: weights do not change speed) reaches
//! the child's; then it gets the same distillation budget.
//!
//! A baseline is matched *to a child*: `baselines/<kind>/baseline.json` records the child's
//! choices and everything else the matching read, so a new child (after a change to
//! `[search]`, say) rebuilds the baselines instead of comparing it with ones matched to the old.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::calibrate::ChosenSolution;
use crate::config::RunConfig;
use crate::finish::{ComparedModel, finish_model};
use crate::run::Run;
use crate::speed::speed_vs_parent;
use puzzle_core::artifact::{Artifact, Recorded};
use puzzle_core::bld::{block_influence, calibrate};
use puzzle_core::data::Split;
use puzzle_core::distill::DistillReport;
use puzzle_core::error::{Error, Result};
use puzzle_core::fsutil;
use puzzle_core::kinds::{BaselineKind, SpeedMetric};
use puzzle_core::nn::Decoder;
use puzzle_core::progress::Progress;
use puzzle_core::realize::LayerChoice;
use puzzle_core::score::swapped;
use puzzle_core::search::BlockTable;
use puzzle_core::variant::VariantId;
use puzzle_core::variants::{LayerCalibration, build_subblock, layer_weights};
use puzzle_core::weights::MemoryWeights;

/// A measured candidate is a match when it reaches this share of the child's measured speed.
const MATCH: f64 = 0.98;

/// `baselines/<kind>/baseline.json`: which architecture matched which child.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineRecord {
    /// Hash of the child's choices and the matching's settings.
    pub provenance: String,
    pub kind: BaselineKind,
    /// What was built (`uniform attn:gqa(kv=2)+ffn:width(512)`, `layer_removal [1, 4]`).
    pub identity: String,
    pub distill: Option<DistillReport>,
}

impl Recorded for BaselineRecord {
    type Inputs = String;
    fn inputs(&self) -> String {
        self.provenance.clone()
    }
}

/// The speed the baselines are matched on, and the child's measured value of it (measured at
/// most once, and only when some baseline has to be built).
struct Target<'a> {
    run: &'a Run,
    child: &'a Decoder,
    metric: SpeedMetric,
    batch: usize,
    /// The table key of the metric (`decode_throughput@b8`).
    key: String,
    measured: Option<f64>,
    /// Ratios measured so far (this process or an earlier one), by [`Target::measurement`].
    done: BTreeMap<String, f64>,
}

/// `baselines/matching.json`: every speed ratio the matching measured, by what it measured, so
/// that a run killed half-way through matching does not measure its candidates again.
pub const MATCHING: &str = "matching.json";

impl Target<'_> {
    fn path(&self) -> PathBuf {
        self.run.dir.join("baselines").join(MATCHING)
    }

    /// What a measurement of `m` depends on: its shape (engines do not branch on weight
    /// values), the metric and batch, the deployment and its engine's build, the parent.
    fn measurement(&self, m: &Decoder) -> Result<String> {
        let engine = puzzle_core::engine::described(self.run.engine()?, &m.device());
        Ok(RunConfig::hash_of(&(
            m.current_spec(),
            &self.key,
            &self.run.config.deployment,
            self.run.config.eval.speed_repeats,
            engine,
            &self.run.parent_fingerprint,
        )))
    }

    fn ratio(&mut self, m: &Decoder) -> Result<f64> {
        let id = self.measurement(m)?;
        if let Some(&r) = self.done.get(&id) {
            return Ok(r);
        }
        let r = speed_vs_parent(self.run, m, self.batch, self.metric)?;
        self.done.insert(id, r);
        fsutil::write_json(&self.path(), &self.done)?;
        Ok(r)
    }

    fn child(&mut self) -> Result<f64> {
        if self.measured.is_none() {
            let child = self.child;
            self.measured = Some(self.ratio(child)?);
        }
        Ok(self.measured.expect("just set"))
    }
}

/// Builds (or reuses) every `[baselines]` kind, matched to `child`.
pub fn baselines_stage(
    run: &Run,
    table: &BlockTable,
    chosen: &ChosenSolution,
    child: &Decoder,
    progress: &mut dyn Progress,
) -> Result<Vec<ComparedModel>> {
    let c = &run.config;
    let b = chosen.batch.unwrap_or(c.deployment.batch_sizes[0]);
    let key = chosen
        .spec
        .constraints
        .iter()
        .find(|k| SpeedMetric::from_key(&k.key).is_some())
        .map(|k| k.key.clone())
        .unwrap_or_else(|| SpeedMetric::DecodeThroughput.key(b));
    let (metric, batch) = SpeedMetric::from_key(&key).expect("a speed key");
    let mut target = Target {
        run,
        child,
        metric,
        batch,
        key,
        measured: None,
        done: BTreeMap::new(),
    };
    // A cache keyed by everything its measurements depend on: one that cannot be read is
    // measured again rather than trusted or fatal.
    if let Ok(done) = fsutil::read_json(&target.path()) {
        target.done = done;
    }
    let mut out = Vec::new();
    for &kind in &c.baselines.kinds {
        let dir = run.dir.join("baselines").join(kind.as_str());
        let inputs = matching_inputs(run, table, chosen, kind, &target.key);
        let record = Artifact::new(format!("baseline {kind}"), dir.join("baseline.json"))
            .requires(dir.join("config.json"))
            .requires(dir.join("puzzle.json"))
            .reuse_or_build(&inputs, progress, |progress| {
                let (student, identity) = match kind {
                    BaselineKind::Uniform => {
                        match_uniform(run, table, chosen, &mut target, progress)?
                    }
                    BaselineKind::LayerRemoval => match_layer_removal(run, &mut target, progress)?,
                };
                let made = finish_model(run, kind.as_str(), &student, &identity, &dir, progress)?;
                Ok(BaselineRecord {
                    provenance: inputs.clone(),
                    kind,
                    identity,
                    distill: made.distill,
                })
            })?;
        out.push(ComparedModel {
            name: kind.as_str().to_string(),
            dir,
            distill: record.distill,
        });
    }
    Ok(out)
}

/// What a baseline's matching depends on: the child it is matched to, the table its candidates
/// come from, how speed is measured, and the calibration data of the training-free inits.
fn matching_inputs(
    run: &Run,
    table: &BlockTable,
    chosen: &ChosenSolution,
    kind: BaselineKind,
    key: &str,
) -> String {
    let c = &run.config;
    // The width step is an input of the uniform matching (a baseline matched on the library's
    // widths alone is matched again). It changes every kind's hash once (`null` for the
    // others), so layer-removal baselines of older runs are matched and distilled again too.
    let step = (kind == BaselineKind::Uniform).then_some(UNIFORM_WIDTH_STEP);
    RunConfig::hash_of(&(
        kind,
        step,
        &chosen.solution.choices,
        key,
        RunConfig::hash_of(table),
        &c.deployment,
        c.eval.speed_repeats,
        (c.bld.seq_len, c.bld.calibration_sequences, c.bld.batch_size),
        &run.parent_fingerprint,
        &run.data_fingerprint,
    ))
}

/// Predicted value of `key` (from the table) for a uniform choice per layer.
fn predicted(table: &BlockTable, id: &str, layers: usize, key: &str) -> Result<f64> {
    let idx: Vec<usize> = table
        .groups
        .iter()
        .take(layers)
        .map(|g| {
            g.choices
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| Error::invalid(format!("{} has no choice `{id}`", g.name)))
        })
        .collect::<Result<_>>()?;
    table.total(&idx, key)
}

/// Uniform candidates: the same (attention, FFN) pair in every layer, least reduced first.
fn uniform_candidates(table: &BlockTable, layers: usize) -> Vec<String> {
    let mut cands: Vec<(String, f64)> = table.groups[0]
        .choices
        .iter()
        .map(|ch| ch.id.clone())
        .filter(|id| !id.starts_with("coupled"))
        .filter_map(|id| {
            let p = predicted(table, &id, layers, "params").ok()?;
            Some((id, p))
        })
        .collect();
    cands.sort_by(|a, b| b.1.total_cmp(&a.1));
    cands.into_iter().map(|(id, _)| id).collect()
}

/// The parent with `choice` in every layer, from training-free inits (no BLD).
fn uniform_student(run: &Run, calib: &[LayerCalibration], choice: &LayerChoice) -> Result<Decoder> {
    let spec = &run.parent.spec;
    let device = run.parent.device().clone();
    let mut m = run.parent.decoder()?.clone();
    for (layer, cal) in calib.iter().enumerate().take(spec.layers.len()) {
        let pw = layer_weights(&run.parent.weights, layer)?;
        for v in [&choice.attn, &choice.ffn] {
            let init = run.plugins.catalog_for(v)?.init(v, spec, layer, &pw, cal)?;
            let sub = build_subblock(spec, &init.spec, layer, &init.weights, &device)?;
            m = swapped(&m, layer, vec![sub]);
        }
    }
    Ok(m)
}

/// Calibration windows of the training-free inits and of block influence.
fn calibration_windows(run: &Run) -> Result<Vec<Vec<u32>>> {
    let c = &run.config.bld;
    let mut w = run.windows(Split::Train, c.seq_len)?;
    w.truncate(c.calibration_sequences.max(1));
    Ok(w)
}

/// Why the deployment's engine cannot serve `m` (`None`: it can).
fn refused(run: &Run, m: &Decoder) -> Option<String> {
    let r = run
        .config
        .deployment
        .engine
        .capabilities()
        .refusals(&m.current_spec());
    (!r.is_empty()).then(|| r.join("; "))
}

/// The uniform architecture at the child's measured speed: the least-reduced library pair
/// that reaches it, its FFN widened as far as the speed allows; when that is still more than
/// [`CLOSE`] faster than the child (one KV head with the parent's whole FFN already was, in
/// runs of the example), each costlier attention with its FFN narrowed as far as needed, first
/// one within [`CLOSE`] kept, else the closest.
fn match_uniform(
    run: &Run,
    table: &BlockTable,
    chosen: &ChosenSolution,
    target: &mut Target,
    progress: &mut dyn Progress,
) -> Result<(Decoder, String)> {
    let layers = run.parent.spec.layers.len();
    let calib = calibrate(
        run.parent.decoder()?,
        &calibration_windows(run)?,
        run.config.bld.batch_size,
    );
    let want = target.child()?;
    let child_pred = chosen
        .solution
        .costs
        .get(&target.key)
        .copied()
        .unwrap_or(0.0);
    let mut costlier: Vec<VariantId> = Vec::new();
    for id in uniform_candidates(table, layers) {
        let choice: LayerChoice = id.parse()?;
        // Skip candidates the tables say are far too slow before measuring.
        let r = if predicted(table, &id, layers, &target.key)? < 0.8 * child_pred {
            None
        } else {
            match uniform_ratio(run, &calib, &choice, target, progress)? {
                Some(r) => Some(r),
                // The engine cannot serve it: not an attention to try again.
                None => continue,
            }
        };
        let Some(r) = r.filter(|&r| r >= MATCH * want) else {
            if !costlier.contains(&choice.attn) {
                costlier.push(choice.attn);
            }
            continue;
        };
        let (mut choice, mut r) = widen_uniform(run, &calib, &choice, r, target, progress)?;
        costlier.retain(|a| *a != choice.attn);
        if r > CLOSE * want && !costlier.is_empty() {
            let grid = width_grid(narrowest_width(table), parent_ffn(run));
            let closer = closer_uniform(&costlier, &grid, MATCH * want, CLOSE * want, |a, w| {
                uniform_ratio(run, &calib, &width_choice(a, w)?, target, progress)
            })?;
            if let Some((a, w, r2)) = closer.filter(|c| c.2 < r) {
                (choice, r) = (width_choice(&a, w)?, r2);
            }
        }
        let id = format!("{} + {}", choice.attn, choice.ffn);
        progress.note(&format!(
            "baseline uniform: {id} in every layer, measured {r:.2}x for the child's {want:.2}x (pruned from the parent, no BLD)"
        ));
        return Ok((
            uniform_student(run, &calib, &choice)?,
            format!("uniform {id}"),
        ));
    }
    Err(Error::invalid(format!(
        "no uniform architecture reaches the child's measured {want:.2}x"
    )))
}

/// A baseline more than this much faster than the child is matched further when it can be.
const CLOSE: f64 = 1.05;

/// `attn` with an FFN of width `w`.
fn width_choice(attn: &VariantId, w: usize) -> Result<LayerChoice> {
    Ok(LayerChoice {
        attn: attn.clone(),
        ffn: format!("ffn:width({w})").parse()?,
        coupled: false,
    })
}

/// The measured ratio of the uniform student of `choice` (noted), `None` when the engine
/// cannot serve it (noted with why).
fn uniform_ratio(
    run: &Run,
    calib: &[LayerCalibration],
    choice: &LayerChoice,
    target: &mut Target,
    progress: &mut dyn Progress,
) -> Result<Option<f64>> {
    let id = format!("{} + {}", choice.attn, choice.ffn);
    let m = uniform_student(run, calib, choice)?;
    if let Some(why) = refused(run, &m) {
        progress.note(&format!("baseline uniform candidate {id}: skipped ({why})"));
        return Ok(None);
    }
    let r = target.ratio(&m)?;
    let want = target.child()?;
    progress.note(&format!(
        "baseline uniform candidate {id}: measured {r:.2}x (child {want:.2}x)"
    ));
    Ok(Some(r))
}

/// The parent's FFN width (the narrowest layer's; `None` when no layer has a SwiGLU FFN).
fn parent_ffn(run: &Run) -> Option<usize> {
    run.parent
        .spec
        .layers
        .iter()
        .filter_map(|l| match l.ffn {
            puzzle_core::spec::FfnSpec::SwiGlu {
                intermediate_size, ..
            } => Some(intermediate_size),
            _ => None,
        })
        .min()
}

/// The narrowest `ffn:width(N)` of the library's first layer (0 when it has none).
fn narrowest_width(table: &BlockTable) -> usize {
    table.groups[0]
        .choices
        .iter()
        .filter_map(|c| c.id.parse::<LayerChoice>().ok())
        .filter(|c| c.ffn.head() == "width")
        .filter_map(|c| c.ffn.usize_arg(None).ok())
        .min()
        .unwrap_or(0)
}

/// FFN widths from `from` up to `full`: `from`, then the multiples of [`UNIFORM_WIDTH_STEP`]
/// above it, then `full` when it is no such multiple (empty without a `full`).
fn width_grid(from: usize, full: Option<usize>) -> Vec<usize> {
    let Some(full) = full else {
        return Vec::new();
    };
    let mut grid: Vec<usize> = std::iter::once(from)
        .chain(
            (from / UNIFORM_WIDTH_STEP + 1..=full / UNIFORM_WIDTH_STEP)
                .map(|k| k * UNIFORM_WIDTH_STEP),
        )
        .collect();
    if full > from && grid.last() != Some(&full) {
        grid.push(full);
    }
    grid
}

/// For each attention of `attns` in turn, the widest width of `grid` (ascending) whose
/// `ratio` reaches `floor` (by [`widest_passing`], after the narrowest is measured: an
/// attention too slow even there is passed over); stops at the first result at most `close`,
/// else returns the least ratio found. `ratio`: `None` when the engine cannot serve it.
fn closer_uniform<A: Clone>(
    attns: &[A],
    grid: &[usize],
    floor: f64,
    close: f64,
    mut ratio: impl FnMut(&A, usize) -> Result<Option<f64>>,
) -> Result<Option<(A, usize, f64)>> {
    let mut best: Option<(A, usize, f64)> = None;
    let Some(&narrowest) = grid.first() else {
        return Ok(None);
    };
    for a in attns {
        match ratio(a, narrowest)? {
            Some(r) if r >= floor => {
                let found = widest_with_ratio(grid, r, floor, |w| ratio(a, w))?;
                if best.as_ref().is_none_or(|b| found.1 < b.2) {
                    best = Some((a.clone(), found.0, found.1));
                }
                if found.1 <= close {
                    break;
                }
            }
            _ => continue,
        }
    }
    Ok(best)
}

/// FFN widths the uniform baseline may take between the library's: multiples of this many
/// channels (llama.cpp's quantised blocks and GPU kernels favour multiples of 32). Uniform
/// pruning needs no BLD, so it is not held to the library's widths, whose steps (a quarter of
/// the parent's width in the example) can leave it 20% faster than the child it is compared
/// with.
pub const UNIFORM_WIDTH_STEP: usize = 32;

/// A width of `grid` (ascending; `grid[0]` known to pass) that `passes`, by binary search: the
/// widest when what passes at a width passes at every narrower one (a narrower FFN faster).
/// Measured speeds need not be monotone (llama.cpp at batch 1 was not, README), so then it is
/// a passing width next to a failing one, not necessarily the widest.
fn widest_passing(grid: &[usize], mut passes: impl FnMut(usize) -> Result<bool>) -> Result<usize> {
    let (mut lo, mut hi) = (0, grid.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if passes(grid[mid])? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(grid[lo])
}

/// The width [`widest_passing`] finds in `grid` for `ratio >= floor`, with its ratio; `first`
/// is `grid[0]`'s ratio, known to reach `floor`. `ratio`: `None` (the engine cannot serve it)
/// fails.
fn widest_with_ratio(
    grid: &[usize],
    first: f64,
    floor: f64,
    mut ratio: impl FnMut(usize) -> Result<Option<f64>>,
) -> Result<(usize, f64)> {
    let mut found = (grid[0], first);
    widest_passing(grid, |w| {
        let r = ratio(w)?.unwrap_or(0.0);
        let pass = r >= floor;
        if pass {
            // The search only moves up after a pass, so the last pass is the widest.
            found = (w, r);
        }
        Ok(pass)
    })?;
    Ok(found)
}

/// The matched uniform candidate `hit` (measured at `r`) with its FFN widened as far as the
/// child's speed allows (the same attention; multiples of [`UNIFORM_WIDTH_STEP`] up to the
/// parent's narrowest FFN, which is included even when it is not such a multiple): a less
/// reduced uniform architecture at the child's measured speed than the library's few widths
/// give. Returns the choice and its measured ratio.
fn widen_uniform(
    run: &Run,
    calib: &[LayerCalibration],
    hit: &LayerChoice,
    r: f64,
    target: &mut Target,
    progress: &mut dyn Progress,
) -> Result<(LayerChoice, f64)> {
    if hit.ffn.head() != "width" {
        return Ok((hit.clone(), r));
    }
    let grid = width_grid(hit.ffn.usize_arg(None)?, parent_ffn(run));
    if grid.is_empty() {
        return Ok((hit.clone(), r));
    }
    let want = target.child()?;
    let (w, r) = widest_with_ratio(&grid, r, MATCH * want, |w| {
        uniform_ratio(run, calib, &width_choice(&hit.attn, w)?, target, progress)
    })?;
    Ok((width_choice(&hit.attn, w)?, r))
}

/// The parent without its layers of least block influence (ShortGPT), removed one at a time
/// until the measured speed reaches the child's.
fn match_layer_removal(
    run: &Run,
    target: &mut Target,
    progress: &mut dyn Progress,
) -> Result<(Decoder, String)> {
    let spec = &run.parent.spec;
    let layers = spec.layers.len();
    let device = run.parent.device().clone();
    let bi = block_influence(
        run.parent.decoder()?,
        &calibration_windows(run)?,
        run.config.bld.batch_size,
    );
    let mut order: Vec<usize> = (0..layers).collect();
    order.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]));
    let noops: [VariantId; 2] = ["attn:noop".parse()?, "ffn:noop".parse()?];
    let want = target.child()?;
    let mut m = run.parent.decoder()?.clone();
    let mut removed = Vec::new();
    for &l in &order {
        let mut next = m.clone();
        for v in &noops {
            let s = run.plugins.catalog_for(v)?.spec(v, spec)?;
            let sub = build_subblock(spec, &s, l, &MemoryWeights::new("noop"), &device)?;
            next = swapped(&next, l, vec![sub]);
        }
        if let Some(why) = refused(run, &next) {
            progress.note(&format!(
                "baseline layer removal: stops before layer {l} ({why})"
            ));
            break;
        }
        m = next;
        removed.push(l);
        let r = target.ratio(&m)?;
        if r >= MATCH * want || removed.len() == layers {
            progress.note(&format!(
                "baseline layer removal: measured {r:.2}x (child {want:.2}x)"
            ));
            break;
        }
    }
    removed.sort_unstable();
    progress.note(&format!(
        "baseline layer removal: layers {removed:?} removed (lowest block influence)"
    ));
    Ok((m, format!("layer_removal {removed:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: the widest width at which `passes` holds, scanning every width.
    fn scan(grid: &[usize], limit: usize) -> usize {
        *grid.iter().rev().find(|&&w| w <= limit).unwrap()
    }

    #[test]
    fn the_widest_passing_width_is_found_by_bisection_as_by_a_scan() {
        let grid: Vec<usize> = std::iter::once(256)
            .chain((9..=32).map(|k| k * 32))
            .collect();
        for limit in [256, 287, 288, 300, 511, 512, 700, 1000, 1023, 1024, 5000] {
            let mut asked = Vec::new();
            let got = widest_passing(&grid, |w| {
                asked.push(w);
                Ok(w <= limit)
            })
            .unwrap();
            assert_eq!(got, scan(&grid, limit), "limit {limit}");
            // A binary search over 25 widths: at most 5 measurements, never the known one.
            assert!(asked.len() <= 5, "{asked:?}");
            assert!(!asked.contains(&256), "{asked:?}");
        }
        assert_eq!(widest_passing(&[512], |_| Ok(false)).unwrap(), 512);
    }

    /// Speeds that fall with the FFN's width and with the KV heads: attention `a` (its KV
    /// heads) at width `w` measures this ratio over the parent.
    fn speed(a: usize, w: usize) -> f64 {
        4.0 / (1.0 + 0.25 * a as f64 + w as f64 / 512.0)
    }

    /// By brute force: every attention's widest passing width, the first within `close`, else
    /// the slowest that passes.
    fn closest_by_scan(
        attns: &[usize],
        grid: &[usize],
        floor: f64,
        close: f64,
    ) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, f64)> = None;
        for &a in attns {
            let Some(&w) = grid.iter().rev().find(|&&w| speed(a, w) >= floor) else {
                continue;
            };
            let r = speed(a, w);
            if best.is_none_or(|b| r < b.2) {
                best = Some((a, w, r));
            }
            if r <= close {
                break;
            }
        }
        best.map(|(a, w, _)| (a, w))
    }

    #[test]
    fn costlier_attentions_are_narrowed_to_the_childs_speed_as_a_scan_finds() {
        let grid = width_grid(256, Some(1024));
        assert_eq!(grid.len(), 25);
        assert_eq!((grid[0], grid[1], grid[24]), (256, 288, 1024));
        for child in [1.2, 1.5, 1.8, 2.0, 2.2, 2.5, 3.0] {
            let (floor, close) = (0.98 * child, 1.05 * child);
            for attns in [vec![4, 2], vec![2], vec![8, 4, 2]] {
                let mut asked = 0;
                let got = closer_uniform(&attns, &grid, floor, close, |&a, w| {
                    asked += 1;
                    Ok(Some(speed(a, w)))
                })
                .unwrap();
                assert_eq!(
                    got.map(|(a, w, _)| (a, w)),
                    closest_by_scan(&attns, &grid, floor, close),
                    "child {child}, attentions {attns:?}"
                );
                // One measurement at the narrowest width, then at most 5 for a binary search.
                assert!(asked <= attns.len() * 6, "{asked}");
            }
        }
        // An attention the engine cannot serve is passed over.
        let got = closer_uniform(&[1, 2], &grid, 1.5, 1.6, |&a, w| {
            Ok((a == 2).then(|| speed(a, w)))
        })
        .unwrap();
        assert_eq!(got.map(|g| g.0), Some(2));
        assert!(width_grid(256, None).is_empty());
        assert_eq!(width_grid(300, Some(330)), [300, 320, 330]);
    }

    #[test]
    fn a_failed_measurement_stops_the_search_with_its_error() {
        let e = widest_passing(&[1, 2, 3], |_| Err(Error::invalid("engine gone")));
        assert!(e.unwrap_err().to_string().contains("engine gone"));
    }
}
