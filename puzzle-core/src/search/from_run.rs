//! The block table of a run: per layer, every combination of a library attention entry and FFN
//! entry (their costs and scores add up), plus coupled blocks with their own numbers.
//!
//! Metrics of a choice:
//! - `kl` and `<metric>_delta` for every score (child minus parent: the parent's choice is 0,
//!   and the estimate of an architecture is the sum over its blocks, as in the paper);
//! - `params`, `param_bytes`, `kv_bytes_per_token`;
//! - per deployment batch size `b`: `prefill_ms@b<b>`, `decode_ms@b<b>`, `runtime_ms@b<b>`
//!   (prefill + generation_len decode steps), `memory_bytes@b<b>` (weights + the batch's KV
//!   cache, bounded by sliding windows), and the ratios `throughput@b<b>` (generated tokens/s) and
//!   `decode_throughput@b<b>` (tokens/s of a decode step).

use std::collections::BTreeMap;

use super::table::{BlockTable, InverseMetric, TableChoice, TableGroup};
use crate::cost::{CostTable, Costs};
use crate::error::{Error, Result};
use crate::kinds::SpeedMetric;
use crate::score::{ScoreEntry, ScoreTable};
use crate::spec::ModelSpec;
use crate::variant::SubblockKind;

fn cost_values(c: &Costs, table: &CostTable) -> BTreeMap<String, f64> {
    let d = &table.deployment;
    let mut v = BTreeMap::new();
    v.insert("params".to_string(), c.params as f64);
    v.insert("param_bytes".to_string(), c.param_bytes);
    v.insert("kv_bytes_per_token".to_string(), c.kv_bytes_per_token);
    for &b in &d.batch_sizes {
        if let (Some(p), Some(dec)) = (c.prefill_ms.get(&b), c.decode_ms.get(&b)) {
            v.insert(format!("prefill_ms@b{b}"), *p);
            v.insert(format!("decode_ms@b{b}"), *dec);
            v.insert(
                format!("runtime_ms@b{b}"),
                p + d.generation_len as f64 * dec,
            );
        }
        v.insert(
            format!("memory_bytes@b{b}"),
            c.param_bytes + b as f64 * kv_bytes_per_sequence(c, table),
        );
    }
    v
}

/// KV-cache bytes of one sequence of the deployment's length: what the cost model computed,
/// which a sliding window caps; per token times the length for cost tables from before that
/// field (and models that leave it out), which is exact without windows and an upper bound with.
fn kv_bytes_per_sequence(c: &Costs, table: &CostTable) -> f64 {
    let d = &table.deployment;
    let full = (d.prefill_len + d.generation_len) as f64 * c.kv_bytes_per_token;
    if c.kv_bytes_per_sequence > 0.0 {
        c.kv_bytes_per_sequence.min(full)
    } else {
        full
    }
}

fn score_values(m: &BTreeMap<String, f64>, scores: &ScoreTable) -> BTreeMap<String, f64> {
    let mut v = BTreeMap::new();
    for (k, x) in m {
        if k == "kl" {
            v.insert("kl".to_string(), *x);
        } else if let Some(p) = scores.parent.get(k) {
            v.insert(format!("{k}_delta"), x - p);
        }
    }
    v
}

/// Builds the table. Errors name the layer and variant whose cost or score is missing.
pub fn block_table(
    parent: &ModelSpec,
    costs: &CostTable,
    scores: &ScoreTable,
    source: &str,
) -> Result<BlockTable> {
    let groups = (0..parent.layers.len())
        .map(|layer| layer_group(parent, costs, scores, layer))
        .collect::<Result<_>>()?;
    let mut constants = cost_values(&costs.non_block, costs);
    // Non-block parts carry no KV cache but their weights count towards memory.
    constants.retain(|k, _| !k.starts_with("kv_"));
    let inverse = speed_metrics(costs, &constants);
    let t = BlockTable {
        source: source.to_string(),
        groups,
        constants,
        inverse,
    };
    t.validate()?;
    Ok(t)
}

/// One layer's choices: every (attention, FFN) pair of its decoupled entries, then its coupled
/// blocks.
fn layer_group(
    parent: &ModelSpec,
    costs: &CostTable,
    scores: &ScoreTable,
    layer: usize,
) -> Result<TableGroup> {
    let attn_parent = parent
        .variant_of(layer, SubblockKind::Attention)
        .to_string();
    let ffn_parent = parent.variant_of(layer, SubblockKind::Ffn).to_string();
    let mine: Vec<&ScoreEntry> = scores.entries.iter().filter(|e| e.layer == layer).collect();
    let single = |kind: &str| -> Vec<&ScoreEntry> {
        mine.iter()
            .copied()
            .filter(|e| !e.variant.contains('+') && e.variant.starts_with(kind))
            .collect()
    };
    let cost_of = |variant: &str| -> Result<&Costs> {
        costs.get(layer, variant).ok_or_else(|| {
            Error::invalid(format!(
                "costs.json has no entry for layer {layer} `{variant}`: run `puzzle cost` again"
            ))
        })
    };
    let mut choices = Vec::new();
    let mut parent_idx = None;
    for a in single("attn:") {
        for f in single("ffn:") {
            let mut c = cost_of(&a.variant)?.clone();
            c.add(cost_of(&f.variant)?);
            let mut values = cost_values(&c, costs);
            let sf = score_values(&f.metrics, scores);
            for (k, x) in score_values(&a.metrics, scores) {
                if let Some(y) = sf.get(&k) {
                    values.insert(k, x + y);
                }
            }
            if a.variant == attn_parent && f.variant == ffn_parent {
                parent_idx = Some(choices.len());
            }
            choices.push(TableChoice {
                id: format!("{} + {}", a.variant, f.variant),
                values,
            });
        }
    }
    for blk in mine.iter().filter(|e| e.variant.contains('+')) {
        let mut values = cost_values(cost_of(&blk.variant)?, costs);
        values.extend(score_values(&blk.metrics, scores));
        choices.push(TableChoice {
            id: format!("coupled {}", blk.variant.replace('+', " + ")),
            values,
        });
    }
    if choices.is_empty() {
        return Err(Error::invalid(format!(
            "layer {layer} has no scored attention and FFN entries: run `puzzle bld` and `puzzle score`"
        )));
    }
    Ok(TableGroup {
        name: format!("layer {layer}"),
        choices,
        parent: parent_idx,
    })
}

/// The speed metrics, as inverses of summed latencies, for every batch size the costs time.
fn speed_metrics(
    costs: &CostTable,
    constants: &BTreeMap<String, f64>,
) -> BTreeMap<String, InverseMetric> {
    let d = &costs.deployment;
    let mut inverse = BTreeMap::new();
    for &b in &d.batch_sizes {
        if constants.contains_key(&format!("runtime_ms@b{b}")) {
            inverse.insert(
                SpeedMetric::Throughput.key(b),
                InverseMetric {
                    of: format!("runtime_ms@b{b}"),
                    numerator: (b * d.generation_len) as f64 * 1000.0,
                },
            );
            inverse.insert(
                SpeedMetric::DecodeThroughput.key(b),
                InverseMetric {
                    of: format!("decode_ms@b{b}"),
                    numerator: b as f64 * 1000.0,
                },
            );
        }
    }
    inverse
}

/// Batch sizes a table has metrics for (from its `@b<N>` keys).
pub fn batch_sizes(table: &BlockTable) -> Vec<usize> {
    let mut v: Vec<usize> = table
        .common_keys()
        .iter()
        .filter_map(|k| k.rsplit_once("@b").and_then(|(_, b)| b.parse().ok()))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Replaces a key without a batch suffix by its `@b<N>` form when only that exists.
pub fn at_batch(table: &BlockTable, key: &str, b: usize) -> String {
    if table.common_keys().contains(key) {
        key.to_string()
    } else {
        format!("{key}@b{b}")
    }
}
