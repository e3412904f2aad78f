//! Block tables: per group (a layer, or a layer's subblock) the choices and their metrics
//! (costs and scores), plus non-block constants. The input of every search, read from a run
//! folder's cost and score tables or from NVIDIA's published block-library JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
        // The first choice's keys, narrowed by lookups: no set is built per choice (an
        // 80 x 100 table has 8,000 of them, and every solution's report asks).
        let mut it = self.groups.iter().flat_map(|g| g.choices.iter());
        let mut keys: BTreeSet<String> = it
            .next()
            .map(|c| c.values.keys().cloned().collect())
            .unwrap_or_default();
        for c in it {
            // Tables are nearly always uniform: the same keys in the same (sorted) order.
            if c.values.len() == keys.len() && c.values.keys().eq(keys.iter()) {
                continue;
            }
            keys.retain(|k| c.values.contains_key(k));
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_the_constants_and_compute_ratio_metrics() {
        let choice = |id: &str, ms: f64| TableChoice {
            id: id.into(),
            values: [("runtime_ms".to_string(), ms)].into(),
        };
        let t = BlockTable {
            source: "t".into(),
            groups: (0..2)
                .map(|l| TableGroup {
                    name: format!("layer {l}"),
                    choices: vec![choice("parent", 3.0), choice("small", 1.0)],
                    parent: Some(0),
                })
                .collect(),
            constants: [("runtime_ms".to_string(), 2.0)].into(),
            inverse: [(
                "tokens_per_s".to_string(),
                InverseMetric {
                    of: "runtime_ms".into(),
                    numerator: 1000.0,
                },
            )]
            .into(),
        };
        assert_eq!(t.total(&[0, 1], "runtime_ms").unwrap(), 6.0);
        assert_eq!(t.total(&[1, 1], "tokens_per_s").unwrap(), 250.0);
        assert!(t.common_keys().contains("tokens_per_s"));
        let e = t.total(&[0, 0], "memory_mib").unwrap_err().to_string();
        assert!(
            e.contains("`memory_mib` is missing") && e.contains("layer 0"),
            "{e}"
        );
        assert_eq!(t.parent_choice(), Some(vec![0, 0]));
    }
}
