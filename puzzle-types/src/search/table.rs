//! Block tables: per group (a layer, or a layer's subblock) the choices and their metrics
//! (costs and scores), plus non-block constants. The input of every search, read from a run
//! folder's cost and score tables or from NVIDIA's published block-library JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

/// One alternative for a group, with its metric values (any keys: `runtime_ms`, `kl_div`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableChoice {
    pub id: String,
    pub values: BTreeMap<String, f64>,
}

/// A set of mutually exclusive alternatives (exactly one is chosen).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableGroup {
    /// `layer 3`, `layer 3 attn`...
    pub name: String,
    pub choices: Vec<TableChoice>,
    /// Index of the parent's own choice, when known (relative constraints need it).
    pub parent: Option<usize>,
}

/// A metric defined as `numerator / (sum of runtime + constant)`, e.g. throughput in tokens/s
/// from per-block runtimes; constraining it from below is linear in the runtimes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InverseMetric {
    /// The summed metric (e.g. `runtime_ms@b8`).
    pub of: String,
    /// Work per unit of the summed metric (e.g. generated tokens x 1000 for ms -> tokens/s).
    pub numerator: f64,
}

/// A whole table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockTable {
    /// Where it came from, for reports.
    pub source: String,
    pub groups: Vec<TableGroup>,
    /// Non-block terms added to every total (embeddings, head, sampling).
    #[serde(default)]
    pub constants: BTreeMap<String, f64>,
    #[serde(default)]
    pub inverse: BTreeMap<String, InverseMetric>,
}

impl BlockTable {
    /// Every metric key that every choice of every group has.
    pub fn common_keys(&self) -> BTreeSet<String> {
        let mut it = self
            .groups
            .iter()
            .flat_map(|g| g.choices.iter())
            .map(|c| c.values.keys().cloned().collect::<BTreeSet<_>>());
        let first = it.next().unwrap_or_default();
        let mut keys = it.fold(first, |acc, k| acc.intersection(&k).cloned().collect());
        keys.extend(self.inverse.keys().cloned());
        keys
    }

    /// The value of `key` for a choice, with an error naming group and choice when absent.
    pub fn value(&self, group: usize, choice: usize, key: &str) -> Result<f64> {
        let g = &self.groups[group];
        let c = &g.choices[choice];
        c.values.get(key).copied().ok_or_else(|| {
            Error::invalid(format!(
                "metric `{key}` is missing for choice `{}` of {} in {} (available: {})",
                c.id,
                g.name,
                self.source,
                c.values.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Total of `key` over a full choice, constants included (inverse metrics computed).
    pub fn total(&self, choice: &[usize], key: &str) -> Result<f64> {
        if let Some(inv) = self.inverse.get(key) {
            let t = self.total(choice, &inv.of)?;
            return Ok(inv.numerator / t);
        }
        let mut s = self.constants.get(key).copied().unwrap_or(0.0);
        for (g, &c) in choice.iter().enumerate() {
            s += self.value(g, c, key)?;
        }
        Ok(s)
    }

    /// The parent's choice in every group, when all are known.
    pub fn parent_choice(&self) -> Option<Vec<usize>> {
        self.groups.iter().map(|g| g.parent).collect()
    }

    /// Checks shape and values.
    pub fn validate(&self) -> Result<()> {
        if self.groups.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the table has no groups",
                self.source
            )));
        }
        for g in &self.groups {
            if g.choices.is_empty() {
                return Err(Error::invalid(format!(
                    "{}: {} has no choices",
                    self.source, g.name
                )));
            }
            if let Some(p) = g.parent
                && p >= g.choices.len()
            {
                return Err(Error::invalid(format!(
                    "{}: {} names parent choice {p} of {}",
                    self.source,
                    g.name,
                    g.choices.len()
                )));
            }
            for c in &g.choices {
                if let Some((k, v)) = c.values.iter().find(|(_, v)| !v.is_finite()) {
                    return Err(Error::invalid(format!(
                        "{}: {} choice `{}` has {k} = {v}",
                        self.source, g.name, c.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads a table: NVIDIA's block-library JSON (`{"layer_0": {"<block>": {"stats": {...},
    /// "metrics": {...}}}}`) or our own `BlockTable` JSON.
    pub fn load(path: &Path) -> Result<Self> {
        let v: serde_json::Value = fsutil::read_json(path)?;
        let t = if v.get("groups").is_some() {
            serde_json::from_value::<BlockTable>(v)
                .map_err(|e| Error::config(path, format!("not a block table: {e}")))?
        } else {
            from_nvidia_json(&v, path)?
        };
        t.validate()?;
        Ok(t)
    }
}

/// Parses NVIDIA's Puzzle block-library JSON. Each `layer_i` holds whole-block choices keyed by
/// a description; every numeric entry of `stats` and `metrics` becomes a metric (bare key, or
/// `stats.key` / `metrics.key` when both sections use the same name). A choice whose description
/// says `parent * 100%` for every part is the parent's.
pub fn from_nvidia_json(v: &serde_json::Value, path: &Path) -> Result<BlockTable> {
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
        let mut choices = Vec::new();
        let mut parent = None;
        for (desc, entry) in blocks {
            let mut values = BTreeMap::new();
            let sections = ["stats", "metrics"];
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for s in sections {
                if let Some(m) = entry.get(s).and_then(|m| m.as_object()) {
                    for k in m.keys() {
                        *seen.entry(k.clone()).or_default() += 1;
                    }
                }
            }
            for s in sections {
                if let Some(m) = entry.get(s).and_then(|m| m.as_object()) {
                    for (k, x) in m {
                        let Some(x) = x.as_f64() else { continue };
                        let key = if seen[k] > 1 {
                            format!("{s}.{k}")
                        } else {
                            k.clone()
                        };
                        values.insert(key, x);
                    }
                }
            }
            if values.is_empty() {
                return Err(Error::config(
                    path,
                    format!("layer_{i} block `{desc}` has no numeric stats or metrics"),
                ));
            }
            let parts: Vec<&str> = desc.split("&&").collect();
            if parts.iter().all(|p| p.contains("parent * 100%")) {
                parent = Some(choices.len());
            }
            choices.push(TableChoice {
                id: desc.replace('\t', " "),
                values,
            });
        }
        groups.push(TableGroup {
            name: format!("layer {i}"),
            choices,
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
        let bad = serde_json::json!({"layer_0": {}, "layer_2": {}});
        let e = from_nvidia_json(&bad, Path::new("lib.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_1 is missing"), "{e}");
    }
}
