//! NVIDIA's block-library files, read as they are: NVlabs/puzzle's `block_library.json`
//! (`{"layer_<i>": {"<description>": {"stats": {..}, "metrics": {..}}}}`, with
//! `parent_block_stats.json` beside it) and Model-Optimizer puzzletron's gathered choices
//! (`{"replacement_<k>": {"parent_layer_indices": [i], "block_config": {..}, "stats": {..},
//! "metrics": {..}, "is_teacher": bool}}`, its `replacement_metrics_and_stats.json`), with the
//! `non_block` costs of the matching scenario of `subblock_stats.json` in the folders above.
//!
//! Metrics keep NVIDIA's own dotted names (`stats.runtime_ms`, `metrics.kl_div`) and, where
//! only one section has a name, the bare name too (`runtime_ms`).

use std::collections::BTreeMap;
use std::path::Path;

use super::table::{BlockTable, TableChoice, TableGroup};
use crate::error::{Error, Result};
use crate::fsutil;

/// Stats that describe a block's structure rather than what it costs: the parent is the choice
/// whose structure is the parent's.
const STRUCTURE_KEYS: [&str; 2] = ["num_kv_heads", "ffn_intermediate_size"];

/// Which choice of a layer is the parent's: the one whose structural stats equal the parent's
/// (`parent`, from `parent_block_stats.json`), else the one that is largest in every structural
/// stat (an unpruned block), else the one whose description says `parent * 100%` throughout.
fn find_parent(
    choices: &[(String, BTreeMap<String, f64>)],
    parent: Option<&BTreeMap<String, f64>>,
) -> Option<usize> {
    let structure = |v: &BTreeMap<String, f64>| -> Vec<Option<f64>> {
        STRUCTURE_KEYS
            .iter()
            .map(|k| v.get(&format!("stats.{k}")).copied())
            .collect()
    };
    let known = |s: &[Option<f64>]| s.iter().any(|x| x.is_some());
    if let Some(p) = parent {
        let want: Vec<Option<f64>> = STRUCTURE_KEYS.iter().map(|k| p.get(*k).copied()).collect();
        if known(&want) {
            // Compare only what the parent's stats state; no match falls through.
            let matches = |v: &BTreeMap<String, f64>| {
                structure(v)
                    .iter()
                    .zip(&want)
                    .all(|(got, w)| w.is_none() || got == w)
            };
            if let Some(i) = choices.iter().position(|(_, v)| matches(v)) {
                return Some(i);
            }
        }
    }
    let all: Vec<Vec<Option<f64>>> = choices.iter().map(|(_, v)| structure(v)).collect();
    if all.iter().all(|s| s.iter().all(|x| x.is_some())) && !all.is_empty() {
        let max: Vec<f64> = (0..STRUCTURE_KEYS.len())
            .map(|k| {
                all.iter()
                    .filter_map(|s| s[k])
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .collect();
        let top: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].iter().zip(&max).all(|(x, m)| *x == Some(*m)))
            .collect();
        if let [one] = top.as_slice() {
            return Some(*one);
        }
    }
    choices
        .iter()
        .position(|(desc, _)| desc.split("&&").all(|p| p.contains("parent * 100%")))
}

/// NVIDIA writes sizes rounded (`intermediate size 29e3` for 28672): the description with the
/// exact size from the block's own stats.
fn exact_description(desc: &str, values: &BTreeMap<String, f64>) -> String {
    let desc = desc.replace('\t', " ");
    let Some(size) = values.get("stats.ffn_intermediate_size") else {
        return desc;
    };
    let marker = "intermediate size ";
    let Some(at) = desc.find(marker) else {
        return desc;
    };
    let start = at + marker.len();
    let end = desc[start..].find(' ').map_or(desc.len(), |e| start + e);
    format!("{}{}{}", &desc[..start], *size as u64, &desc[end..])
}

// Here rather than in `table`, which knows nothing of file layouts: reading dispatches to the
// readers of this module.
impl BlockTable {
    /// Reads a table: our own `BlockTable` JSON, NVlabs/puzzle's `block_library.json` (with
    /// `parent_block_stats.json` beside it when there is one) or Model-Optimizer's gathered
    /// choices.
    pub fn load(path: &Path) -> Result<Self> {
        let v: serde_json::Value = fsutil::read_json(path)?;
        let t = if v.get("groups").is_some() {
            serde_json::from_value::<BlockTable>(v)
                .map_err(|e| Error::config(path, format!("not a block table: {e}")))?
        } else {
            let beside = path.with_file_name("parent_block_stats.json");
            let parent = if beside.is_file() {
                Some(fsutil::read_json::<serde_json::Value>(&beside)?)
            } else {
                None
            };
            let mut t = read(&v, path, parent.as_ref())?;
            if is_modelopt(&v)
                && let Some(stats) = find_upwards(path, SUBBLOCK_STATS, 3)
            {
                t.constants = modelopt_non_block(&v, &t, &stats)?;
            }
            t
        };
        t.validate()?;
        Ok(t)
    }
}

/// Model-Optimizer puzzletron's measured subblock costs: it sits in the puzzle folder, a few
/// levels above the gathered choices of each solution folder.
const SUBBLOCK_STATS: &str = "subblock_stats.json";

/// `name` beside `path` or in one of its first `levels` ancestors.
fn find_upwards(path: &Path, name: &str, levels: usize) -> Option<std::path::PathBuf> {
    path.ancestors()
        .skip(1)
        .take(levels + 1)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_modelopt(v: &serde_json::Value) -> bool {
    v.as_object()
        .and_then(|o| o.keys().next())
        .is_some_and(|k| k.starts_with("replacement_"))
}

/// The non-block costs (embeddings, LM head: `non_block` of `subblock_stats.json`) that
/// Model-Optimizer adds to every total and takes off every constraint, as the table's
/// constants. The file holds one measurement scenario per batch size and sequence length; the
/// one meant is the one whose subblock costs the gathered choices carry (their
/// `attention_*`/`ffn_*` stats are copied from it), so no argument has to name it.
fn modelopt_non_block(
    gathered: &serde_json::Value,
    table: &BlockTable,
    stats_path: &Path,
) -> Result<BTreeMap<String, f64>> {
    let v: serde_json::Value = fsutil::read_json(stats_path)?;
    let scenarios: Vec<&serde_json::Value> = match &v {
        serde_json::Value::Array(a) => a.iter().collect(),
        o @ serde_json::Value::Object(_) => vec![o],
        _ => {
            return Err(Error::config(
                stats_path,
                "expected a list of measurement scenarios",
            ));
        }
    };
    // The subblock costs each gathered choice carries.
    let wanted: Vec<u64> = gathered
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|e| e.get("stats").and_then(|s| s.as_object()))
        .flat_map(|s| {
            s.iter()
                .filter(|(k, _)| k.starts_with("attention_") || k.starts_with("ffn_"))
                .filter_map(|(_, x)| x.as_f64())
        })
        .map(f64::to_bits)
        .collect();
    let numbers = |x: &serde_json::Value| -> std::collections::BTreeSet<u64> {
        x.as_object()
            .into_iter()
            .flat_map(|o| o.values())
            .filter_map(|x| x.as_f64())
            .map(f64::to_bits)
            .collect()
    };
    let mut matching = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        let subblocks = sc.get("subblocks").and_then(|s| s.as_array());
        let have: std::collections::BTreeSet<u64> =
            subblocks.into_iter().flatten().flat_map(numbers).collect();
        if wanted.iter().all(|w| have.contains(w)) {
            matching.push(i);
        }
    }
    let args = |i: usize| {
        scenarios[i]
            .get("args")
            .map_or("(no args)".to_string(), |a| a.to_string())
    };
    let non_block = |i: usize| -> Result<BTreeMap<String, f64>> {
        let nb = scenarios[i]
            .get("non_block")
            .and_then(|n| n.as_object())
            .ok_or_else(|| {
                Error::config(
                    stats_path,
                    format!("scenario {} has no `non_block` object", args(i)),
                )
            })?;
        // Null entries (runtime not measured) add nothing.
        Ok(nb
            .iter()
            .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
            .collect())
    };
    let chosen = match matching.as_slice() {
        [] => {
            return Err(Error::config(
                stats_path,
                format!(
                    "none of its {} measurement scenarios has the subblock costs of {}",
                    scenarios.len(),
                    table.source
                ),
            ));
        }
        [one] => non_block(*one)?,
        several => {
            let first = non_block(several[0])?;
            for &i in &several[1..] {
                if non_block(i)? != first {
                    let list: Vec<String> = several.iter().map(|&i| args(i)).collect();
                    return Err(Error::config(
                        stats_path,
                        format!(
                            "{} scenarios fit the costs of {} but differ in `non_block`: {}; keep the one                              measured for this search in a copy of the file",
                            several.len(),
                            table.source,
                            list.join("; ")
                        ),
                    ));
                }
            }
            first
        }
    };
    // Under NVIDIA's dotted name, and the bare name where the choices have it.
    let keys = table.common_keys();
    let mut constants = BTreeMap::new();
    for (k, x) in chosen {
        let dotted = format!("stats.{k}");
        if keys.contains(&dotted) {
            constants.insert(dotted, x);
        }
        if keys.contains(&k) {
            constants.insert(k, x);
        }
    }
    Ok(constants)
}

/// Every numeric entry of an entry's `stats` and `metrics`, under `stats.k` / `metrics.k` and,
/// when only one section has `k`, under `k` too.
fn metric_values(entry: &serde_json::Value) -> BTreeMap<String, f64> {
    let sections = ["stats", "metrics"];
    let section = |s: &str| entry.get(s).and_then(|m| m.as_object());
    let mut values = BTreeMap::new();
    for s in sections {
        let Some(m) = section(s) else { continue };
        for (k, x) in m {
            let Some(x) = x.as_f64() else { continue };
            values.insert(format!("{s}.{k}"), x);
            let in_both = sections
                .iter()
                .all(|t| section(t).is_some_and(|m| m.contains_key(k)));
            if !in_both {
                values.insert(k.clone(), x);
            }
        }
    }
    values
}

/// Reads either layout (told apart by their top-level keys); `parent_stats` is NVlabs'
/// `parent_block_stats.json`.
pub fn read(
    v: &serde_json::Value,
    path: &Path,
    parent_stats: Option<&serde_json::Value>,
) -> Result<BlockTable> {
    let first = v
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default();
    if first.starts_with("replacement_") {
        from_modelopt_json(v, path)
    } else if first.starts_with("block_") {
        Err(Error::config(
            path,
            "this is Model-Optimizer's per-block metrics layout (`block_<i>`: block config -> \
             metrics), which has no costs; give its gathered choices with stats instead \
             (replacement_metrics_and_stats.json: `replacement_<k>` entries)",
        ))
    } else {
        from_nvidia_json_with(v, path, parent_stats)
    }
}

/// A Model-Optimizer block config as one of our choice ids: `attn:gqa(kv=8) + ffn:width(14336)`.
fn modelopt_id(block: Option<&serde_json::Value>) -> Option<String> {
    let b = block?;
    // `no_op`, `linear`, or the size under `size_key` formatted by `sized`.
    let part = |name: &str, size_key: &str, sized: &dyn Fn(u64) -> String| -> Option<String> {
        let p = b.get(name)?;
        let flag = |k: &str| p.get(k).and_then(|x| x.as_bool()) == Some(true);
        if p.is_null() || flag("no_op") {
            Some("noop".into())
        } else if flag("replace_with_linear") {
            Some("linear".into())
        } else {
            Some(sized(p.get(size_key)?.as_u64()?))
        }
    };
    let attn = part("attention", "num_key_value_heads", &|n| {
        format!("gqa(kv={n})")
    })?;
    let ffn = part("ffn", "intermediate_size", &|n| format!("width({n})"))?;
    Some(format!("attn:{attn} + ffn:{ffn}"))
}

/// Model-Optimizer puzzletron's gathered choices (`replacement_metrics_and_stats.json`): one
/// group per layer, one choice per single-layer replacement, the parent where `is_teacher`.
pub fn from_modelopt_json(v: &serde_json::Value, path: &Path) -> Result<BlockTable> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(path, "expected an object of `replacement_<k>` entries"))?;
    let mut layers: BTreeMap<usize, Vec<(TableChoice, bool)>> = BTreeMap::new();
    for (key, entry) in obj {
        let at = |what: &str| Error::config(path, format!("`{key}`: {what}"));
        let indices: Vec<u64> = entry
            .get("parent_layer_indices")
            .and_then(|x| x.as_array())
            .ok_or_else(|| at("no `parent_layer_indices` list"))?
            .iter()
            .map(|i| {
                i.as_u64()
                    .ok_or_else(|| at("a layer index is not a whole number"))
            })
            .collect::<Result<_>>()?;
        let [layer] = indices.as_slice() else {
            return Err(at(&format!(
                "replaces layers {indices:?} at once; only single-layer replacements can be \
                 searched (our groups are disjoint layers)"
            )));
        };
        let values = metric_values(entry);
        if !values.keys().any(|k| k.starts_with("stats.")) {
            return Err(at(
                "has no numeric `stats` (costs); was it gathered with stats?",
            ));
        }
        let teacher = entry.get("is_teacher").and_then(|x| x.as_bool()) == Some(true);
        let id = modelopt_id(entry.get("block_config")).unwrap_or_else(|| key.clone());
        layers
            .entry(*layer as usize)
            .or_default()
            .push((TableChoice { id, values }, teacher));
    }
    let mut groups = Vec::new();
    for (pos, (i, mut choices)) in layers.into_iter().enumerate() {
        if i != pos {
            return Err(Error::config(
                path,
                format!("layer {pos} has no replacements (found layer {i})"),
            ));
        }
        // Keep the file's order stable but put the teacher first, as our tables do.
        choices.sort_by_key(|(_, t)| !*t);
        let teachers = choices.iter().filter(|(_, t)| *t).count();
        if teachers > 1 {
            return Err(Error::config(
                path,
                format!("layer {i} has {teachers} teacher entries"),
            ));
        }
        groups.push(TableGroup {
            name: format!("layer {i}"),
            parent: (teachers == 1).then_some(0),
            choices: choices.into_iter().map(|(c, _)| c).collect(),
        });
    }
    Ok(BlockTable {
        source: path.display().to_string(),
        groups,
        constants: BTreeMap::new(),
        inverse: BTreeMap::new(),
    })
}

/// Parses NVIDIA's Puzzle block-library JSON (NVlabs/puzzle `block_library.json`). Each `layer_i`
/// holds whole-block choices keyed by a description; every numeric entry of `stats` and
/// `metrics` becomes a metric under NVIDIA's own dotted name (`stats.runtime_ms`,
/// `metrics.kl_div`) and, where only one section has it, under the bare name too
/// (`runtime_ms`). The parent choice is found by structure ([`find_parent`]); `parent` is the
/// content of `parent_block_stats.json` when there is one.
pub fn from_nvidia_json(v: &serde_json::Value, path: &Path) -> Result<BlockTable> {
    from_nvidia_json_with(v, path, None)
}

/// [`from_nvidia_json`] with the parent's block stats (`{"stats": {...}}`).
pub fn from_nvidia_json_with(
    v: &serde_json::Value,
    path: &Path,
    parent_stats: Option<&serde_json::Value>,
) -> Result<BlockTable> {
    let parent_stats: Option<BTreeMap<String, f64>> = parent_stats.map(|p| {
        p.get("stats")
            .and_then(|s| s.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    });
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(path, "expected an object of `layer_<i>` entries"))?;
    let mut layers: Vec<(usize, &serde_json::Map<String, serde_json::Value>)> = Vec::new();
    for (k, val) in obj {
        let i: usize = k
            .strip_prefix("layer_")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::config(path, format!("key `{k}` is not `layer_<index>`")))?;
        let m = val
            .as_object()
            .ok_or_else(|| Error::config(path, format!("`{k}` is not an object of blocks")))?;
        layers.push((i, m));
    }
    layers.sort_by_key(|(i, _)| *i);
    for (pos, (i, _)) in layers.iter().enumerate() {
        if *i != pos {
            return Err(Error::config(
                path,
                format!("layer_{pos} is missing (found layer_{i})"),
            ));
        }
    }
    let mut groups = Vec::new();
    for (i, blocks) in layers {
        let mut choices: Vec<(String, BTreeMap<String, f64>)> = Vec::new();
        for (desc, entry) in blocks {
            let values = metric_values(entry);
            if values.is_empty() {
                return Err(Error::config(
                    path,
                    format!("layer_{i} block `{desc}` has no numeric stats or metrics"),
                ));
            }
            choices.push((desc.clone(), values));
        }
        let parent = find_parent(&choices, parent_stats.as_ref());
        groups.push(TableGroup {
            name: format!("layer {i}"),
            choices: choices
                .into_iter()
                .map(|(desc, values)| TableChoice {
                    id: exact_description(&desc, &values),
                    values,
                })
                .collect(),
            parent,
        });
    }
    Ok(BlockTable {
        source: path.display().to_string(),
        groups,
        constants: BTreeMap::new(),
        inverse: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nvidia_block_library_json() {
        let v = serde_json::json!({
            "layer_0": {
                "attention = 8 kv heads (parent * 100%)\t&&\tffn = intermediate size 29e3 (parent * 100%)":
                    {"stats": {"memory_mib": 1437.1, "runtime_ms": 817.0, "num_params": 855654400},
                     "metrics": {"kl_div": 0.0, "lm_loss": 1.64}},
                "attention = no_op\t&&\tffn = intermediate size 14e3 (parent * 50%)":
                    {"stats": {"memory_mib": 400.0, "runtime_ms": 300.0, "num_params": 300000000},
                     "metrics": {"kl_div": 0.2, "lm_loss": 1.9}}
            },
            "layer_1": {
                "attention = 8 kv heads (parent * 100%)\t&&\tffn = intermediate size 29e3 (parent * 100%)":
                    {"stats": {"memory_mib": 1437.1, "runtime_ms": 817.0, "num_params": 855654400},
                     "metrics": {"kl_div": 0.0, "lm_loss": 1.64}}
            }
        });
        let t = from_nvidia_json(&v, Path::new("lib.json")).unwrap();
        assert_eq!(t.groups.len(), 2);
        assert_eq!(t.groups[0].choices.len(), 2);
        assert_eq!(t.groups[0].parent, Some(0));
        assert!(t.common_keys().contains("runtime_ms"));
        let p = t.parent_choice().unwrap();
        assert!((t.total(&p, "runtime_ms").unwrap() - 1634.0).abs() < 1e-9);
        // NVIDIA's own dotted names resolve as well as the bare ones.
        assert!(t.common_keys().contains("stats.runtime_ms"));
        assert!(t.common_keys().contains("metrics.kl_div"));
        let bad = serde_json::json!({"layer_0": {}, "layer_2": {}});
        let e = from_nvidia_json(&bad, Path::new("lib.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_1 is missing"), "{e}");
    }

    #[test]
    fn reads_model_optimizer_gathered_choices() {
        let entry = |layer: u64,
                     kv: serde_json::Value,
                     ffn: u64,
                     teacher: bool,
                     mib: f64,
                     kl: f64| {
            serde_json::json!({
                "parent_layer_indices": [layer],
                "block_config": {"attention": {"no_op": kv.is_null(), "num_key_value_heads": kv},
                                 "ffn": {"no_op": false, "intermediate_size": ffn}},
                "stats": {"memory_mib": mib, "runtime_ms": mib / 10.0, "num_params": mib * 1e3},
                "metrics": {"kl_div": kl, "one_minus_kl_div": 1.0 - kl},
                "is_teacher": teacher
            })
        };
        let v = serde_json::json!({
            "replacement_0": entry(0, serde_json::json!(null), 7168, false, 80.0, 0.3),
            "replacement_1": entry(1, serde_json::json!(4), 7168, false, 120.0, 0.1),
            "replacement_2": entry(0, serde_json::json!(8), 14336, true, 200.0, 0.0),
            "replacement_3": entry(1, serde_json::json!(8), 14336, true, 200.0, 0.0)
        });
        let t = read(&v, Path::new("replacement_metrics_and_stats.json"), None).unwrap();
        assert_eq!(t.groups.len(), 2);
        assert_eq!(t.groups[0].parent, Some(0));
        assert_eq!(
            t.groups[0].choices[0].id,
            "attn:gqa(kv=8) + ffn:width(14336)"
        );
        assert_eq!(t.groups[0].choices[1].id, "attn:noop + ffn:width(7168)");
        assert_eq!(
            t.groups[1].choices[1].id,
            "attn:gqa(kv=4) + ffn:width(7168)"
        );
        for k in ["stats.memory_mib", "memory_mib", "metrics.kl_div", "kl_div"] {
            assert!(t.common_keys().contains(k), "{k}");
        }
        let p = t.parent_choice().unwrap();
        assert!((t.total(&p, "stats.memory_mib").unwrap() - 400.0).abs() < 1e-9);
        // A replacement spanning two layers cannot be one choice of one group.
        let mut multi = v.clone();
        multi["replacement_0"]["parent_layer_indices"] = serde_json::json!([0, 1]);
        let e = read(&multi, Path::new("r.json"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("replacement_0") && e.contains("single-layer"),
            "{e}"
        );
        let legacy = serde_json::json!({"block_0": {"{'attention': ...}": {"kl_div": 0.1}}});
        let e = read(&legacy, Path::new("m.json"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no costs"), "{e}");
    }

    /// Model-Optimizer's `non_block` costs come from the scenario of `subblock_stats.json`
    /// (in the puzzle folder above the solution folder) whose subblock costs the gathered
    /// choices carry, and count in every total.
    #[test]
    fn model_optimizer_non_block_costs_come_from_the_matching_scenario() {
        let dir = tempfile::tempdir().unwrap();
        let solution = dir.path().join("mip/puzzle_solutions/target_memory_780");
        std::fs::create_dir_all(&solution).unwrap();
        // Per batch size: attention and FFN memory of the parent's and the pruned subblocks.
        let scenario = |batch: u64,
                        attn: [f64; 2],
                        ffn: [f64; 2],
                        nb_mib: f64,
                        nb_ms: serde_json::Value| {
            serde_json::json!({
                "args": {"batch_size": batch, "generation_seq_len": 128},
                "non_block": {"memory_mib": nb_mib, "runtime_ms": nb_ms, "num_params": 5000},
                "subblocks": [
                    {"subblock_config_class": "AttentionConfig", "subblock_config": {"num_key_value_heads": 8}, "memory_mib": attn[0], "runtime_ms": attn[0] / 10.0},
                    {"subblock_config_class": "AttentionConfig", "subblock_config": {"num_key_value_heads": 4}, "memory_mib": attn[1], "runtime_ms": attn[1] / 10.0},
                    {"subblock_config_class": "FFNConfig", "subblock_config": {"intermediate_size": 14336}, "memory_mib": ffn[0], "runtime_ms": ffn[0] / 10.0},
                    {"subblock_config_class": "FFNConfig", "subblock_config": {"intermediate_size": 7168}, "memory_mib": ffn[1], "runtime_ms": ffn[1] / 10.0}
                ]
            })
        };
        let stats = serde_json::json!([
            scenario(1, [30.0, 20.0], [50.0, 25.0], 10.0, serde_json::Value::Null),
            scenario(8, [90.0, 60.0], [110.0, 55.0], 20.0, serde_json::json!(2.5))
        ]);
        std::fs::write(dir.path().join("subblock_stats.json"), stats.to_string()).unwrap();
        let entry = |layer: u64, kv: u64, ffn: u64, attn_mib: f64, ffn_mib: f64, teacher: bool| {
            serde_json::json!({
                "parent_layer_indices": [layer],
                "block_config": {"attention": {"no_op": false, "num_key_value_heads": kv},
                                 "ffn": {"no_op": false, "intermediate_size": ffn}},
                "stats": {"memory_mib": attn_mib + ffn_mib, "attention_memory_mib": attn_mib,
                          "ffn_memory_mib": ffn_mib, "runtime_ms": (attn_mib + ffn_mib) / 10.0,
                          "attention_runtime_ms": attn_mib / 10.0, "ffn_runtime_ms": ffn_mib / 10.0},
                "metrics": {"kl_div": if teacher { 0.0 } else { 0.2 }},
                "is_teacher": teacher
            })
        };
        // The batch-8 scenario's costs.
        let mut gathered = serde_json::json!({
            "replacement_0": entry(0, 8, 14336, 90.0, 110.0, true),
            "replacement_1": entry(0, 4, 7168, 60.0, 55.0, false),
            "replacement_2": entry(1, 8, 14336, 90.0, 110.0, true)
        });
        let file = solution.join("replacement_metrics_and_stats.json");
        std::fs::write(&file, gathered.to_string()).unwrap();
        let t = BlockTable::load(&file).unwrap();
        for k in ["stats.memory_mib", "memory_mib"] {
            assert_eq!(t.constants.get(k), Some(&20.0), "{k}: {:?}", t.constants);
        }
        assert_eq!(t.constants.get("stats.runtime_ms"), Some(&2.5));
        // num_params is not a stat of these choices, so it is not a constant of the table.
        assert!(!t.constants.contains_key("num_params"));
        let p = t.parent_choice().unwrap();
        assert!((t.total(&p, "stats.memory_mib").unwrap() - (400.0 + 20.0)).abs() < 1e-9);

        // Costs no scenario has: refused, naming the stats file.
        gathered["replacement_1"]["stats"]["attention_memory_mib"] = serde_json::json!(61.0);
        std::fs::write(&file, gathered.to_string()).unwrap();
        let e = BlockTable::load(&file).unwrap_err().to_string();
        assert!(
            e.contains("subblock_stats.json") && e.contains("none of its 2"),
            "{e}"
        );
    }

    /// The parent is found by its structure, not by the words of the description, and sizes
    /// print exactly.
    #[test]
    fn the_nvidia_parent_is_found_by_structure() {
        let block = |kv: f64, ffn: f64, ms: f64| {
            serde_json::json!({"stats": {"num_kv_heads": kv, "ffn_intermediate_size": ffn,
                "runtime_ms": ms}, "metrics": {"kl_div": 0.1}})
        };
        // The descriptions lie (no `parent * 100%`, or on the wrong block).
        let v = serde_json::json!({"layer_0": {
            "attention = 8 kv heads\t&&\tffn = intermediate size 29e3": block(8.0, 28672.0, 9.0),
            "attention = 4 kv heads (parent * 100%)\t&&\tffn = intermediate size 14e3 (parent * 100%)":
                block(4.0, 14336.0, 5.0),
            "attention = 8 kv heads\t&&\tffn = intermediate size 14e3": block(8.0, 14336.0, 7.0)
        }});
        let t = from_nvidia_json(&v, Path::new("lib.json")).unwrap();
        let g = &t.groups[0];
        let parent = g.parent.expect("a parent");
        assert_eq!(
            g.choices[parent].values["stats.ffn_intermediate_size"],
            28672.0
        );
        assert_eq!(g.choices[parent].values["num_kv_heads"], 8.0);
        assert!(
            g.choices[parent].id.ends_with("intermediate size 28672"),
            "{}",
            g.choices[parent].id
        );
        // With the parent's own stats (parent_block_stats.json), that structure wins.
        let p = serde_json::json!({"stats": {"num_kv_heads": 8, "ffn_intermediate_size": 14336}});
        let t = from_nvidia_json_with(&v, Path::new("lib.json"), Some(&p)).unwrap();
        let g = &t.groups[0];
        assert_eq!(g.choices[g.parent.unwrap()].values["runtime_ms"], 7.0);
    }
}
