//! What the user asks: an objective and constraints over a block table's metrics, absolute or
//! relative to the parent ("runtime_ms<=0.46x", "memory_mib<=60%", "throughput@b8>=2.17x"),
//! turned into a [`MipProblem`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::mip::{MipProblem, Row};
use super::table::BlockTable;
use crate::error::{Error, Result};

/// Minimise or maximise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sense {
    Minimize,
    Maximize,
}

/// The objective: a metric summed over the chosen blocks (Puzzle's replace-1-block estimate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub key: String,
    pub sense: Sense,
}

/// `<=` or `>=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">=")]
    Ge,
}

/// A bound's value: absolute, or a multiple of the parent's total.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundValue {
    Absolute(f64),
    /// `0.6x` or `60%`: this factor times the parent's total.
    Relative(f64),
}

/// One constraint: `key op value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    pub key: String,
    pub op: Op,
    pub value: BoundValue,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Le => "<=",
            Op::Ge => ">=",
        };
        match self.value {
            BoundValue::Absolute(v) => write!(f, "{}{op}{v}", self.key),
            BoundValue::Relative(v) => write!(f, "{}{op}{}x", self.key, short_ratio(v)),
        }
    }
}

/// A ratio with at most 4 decimals (a calibrated bound is 1.6315105195045034 otherwise).
fn short_ratio(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

impl FromStr for BoundValue {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "`{s}` is not a number, a ratio like `0.6x` or a percentage like `60%`"
                    ))
                })
        };
        if let Some(r) = s.strip_suffix('x').or_else(|| s.strip_suffix('X')) {
            Ok(BoundValue::Relative(num(r)?))
        } else if let Some(p) = s.strip_suffix('%') {
            Ok(BoundValue::Relative(num(p)? / 100.0))
        } else {
            Ok(BoundValue::Absolute(num(s)?))
        }
    }
}

impl FromStr for Constraint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (key, op, rest) = if let Some((k, v)) = s.split_once("<=") {
            (k, Op::Le, v)
        } else if let Some((k, v)) = s.split_once(">=") {
            (k, Op::Ge, v)
        } else {
            return Err(Error::invalid(format!(
                "constraint `{s}` has no `<=` or `>=` (write e.g. `runtime_ms<=0.5x`)"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::invalid(format!("constraint `{s}` names no metric")));
        }
        Ok(Constraint {
            key: key.to_string(),
            op,
            value: rest.parse()?,
        })
    }
}

/// Objective and constraints together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchSpec {
    pub objective: Objective,
    pub constraints: Vec<Constraint>,
}

/// The MIP for a table and a spec, with the variable layout needed to map solutions back.
#[derive(Clone, Debug)]
pub struct BuiltProblem {
    pub mip: MipProblem,
    /// `offsets[g]` is the first variable of group `g` (choices are consecutive).
    pub offsets: Vec<usize>,
    /// The absolute bound each constraint resolved to, in the constraint's own metric.
    pub resolved: Vec<f64>,
    /// The table's metrics defined for every choice ([`BlockTable::common_keys`]), which a
    /// solution reports totals of.
    pub keys: BTreeSet<String>,
}

/// The parent's total of `key`, for relative bounds.
pub fn parent_total(table: &BlockTable, key: &str) -> Result<f64> {
    let p = table.parent_choice().ok_or_else(|| {
        Error::invalid(format!(
            "a relative bound on `{key}` needs the parent's choice in every group, and {} does not mark it in every group",
            table.source
        ))
    })?;
    table.total(&p, key)
}

impl SearchSpec {
    /// Resolves bounds and lays out the MIP.
    pub fn build(&self, table: &BlockTable) -> Result<BuiltProblem> {
        let keys = table.common_keys();
        let check_key = |k: &str| -> Result<()> {
            if keys.contains(k) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "metric `{k}` is not defined for every choice of {} (available: {})",
                    table.source,
                    keys.iter().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        };
        check_key(&self.objective.key)?;
        if table.inverse.contains_key(&self.objective.key) {
            return Err(Error::invalid(format!(
                "`{}` is a ratio and cannot be a linear objective; optimise `{}` instead",
                self.objective.key, table.inverse[&self.objective.key].of
            )));
        }
        let mut offsets = Vec::new();
        let mut groups = Vec::new();
        let mut n = 0;
        for g in &table.groups {
            offsets.push(n);
            groups.push((n..n + g.choices.len()).collect::<Vec<_>>());
            n += g.choices.len();
        }
        let sign = match self.objective.sense {
            Sense::Minimize => 1.0,
            Sense::Maximize => -1.0,
        };
        let mut objective = Vec::with_capacity(n);
        for (gi, g) in table.groups.iter().enumerate() {
            for ci in 0..g.choices.len() {
                objective.push(sign * table.value(gi, ci, &self.objective.key)?);
            }
        }
        let objective_constant = sign
            * table
                .constants
                .get(&self.objective.key)
                .copied()
                .unwrap_or(0.0);
        let mut rows = Vec::new();
        let mut resolved = Vec::new();
        for c in &self.constraints {
            check_key(&c.key)?;
            let (bound, key, lo, hi) = row_bounds(table, c)?;
            resolved.push(bound);
            let mut coefs = Vec::with_capacity(n);
            for (gi, g) in table.groups.iter().enumerate() {
                for ci in 0..g.choices.len() {
                    coefs.push((offsets[gi] + ci, table.value(gi, ci, &key)?));
                }
            }
            rows.push(Row {
                name: c.to_string(),
                coefs,
                lo,
                hi,
            });
        }
        let mip = MipProblem {
            num_vars: n,
            groups,
            objective,
            objective_constant,
            rows,
        };
        mip.validate()?;
        Ok(BuiltProblem {
            mip,
            offsets,
            resolved,
            keys,
        })
    }
}

/// Constraint `c` as a row: the bound in `c`'s own metric, the metric the row sums, and the
/// row's lower and upper bounds on that sum.
fn row_bounds(table: &BlockTable, c: &Constraint) -> Result<(f64, String, f64, f64)> {
    let bound = match c.value {
        BoundValue::Absolute(v) => v,
        BoundValue::Relative(r) => r * parent_total(table, &c.key)?,
    };
    // A ratio metric `num / (sum + k)`: `>= T` is `sum <= num / T - k`.
    let (key, op, rhs) = match table.inverse.get(&c.key) {
        Some(inv) => {
            if bound <= 0.0 {
                return Err(Error::invalid(format!(
                    "constraint `{c}`: the bound must be positive"
                )));
            }
            // The rewrite holds only for a positive denominator: every runtime must
            // be >= 0 and the constant too (a negative one is a measurement gone wrong).
            for (gi, g) in table.groups.iter().enumerate() {
                for (ci, ch) in g.choices.iter().enumerate() {
                    let v = table.value(gi, ci, &inv.of)?;
                    if v < 0.0 {
                        return Err(Error::invalid(format!(
                            "`{}` of {} choice `{}` is {v} in {}: a time cannot be negative (a measurement lost in noise?); `{c}` cannot be solved on it",
                            inv.of, g.name, ch.id, table.source
                        )));
                    }
                }
            }
            let k = table.constants.get(&inv.of).copied().unwrap_or(0.0);
            if k < 0.0 {
                return Err(Error::invalid(format!(
                    "the non-block part of `{}` is {k} in {}: a time cannot be negative; `{c}` cannot be solved on it",
                    inv.of, table.source
                )));
            }
            let flipped = match c.op {
                Op::Ge => Op::Le,
                Op::Le => Op::Ge,
            };
            (inv.of.clone(), flipped, inv.numerator / bound)
        }
        None => (c.key.clone(), c.op, bound),
    };
    let k = table.constants.get(&key).copied().unwrap_or(0.0);
    let (lo, hi) = match op {
        Op::Le => (f64::NEG_INFINITY, rhs - k),
        Op::Ge => (rhs - k, f64::INFINITY),
    };
    Ok((bound, key, lo, hi))
}

impl BuiltProblem {
    /// Row `i` (built from a constraint on the same key with the same operator) re-bounded to
    /// `c`: what a sweep changes between points, without building the problem again.
    pub fn rebound(&mut self, table: &BlockTable, i: usize, c: &Constraint) -> Result<()> {
        let (bound, _, lo, hi) = row_bounds(table, c)?;
        let row = self
            .mip
            .rows
            .get_mut(i)
            .ok_or_else(|| Error::invalid(format!("no row {i} to re-bound to `{c}`")))?;
        let same = row
            .name
            .parse::<Constraint>()
            .is_ok_and(|was| was.key == c.key && was.op == c.op);
        if !same {
            return Err(Error::invalid(format!(
                "row {i} is `{}`, which `{c}` cannot re-bound (another key or direction)",
                row.name
            )));
        }
        row.name = c.to_string();
        row.lo = lo;
        row.hi = hi;
        self.resolved[i] = bound;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_absolute_and_relative_bounds() {
        let c: Constraint = "runtime_ms<=0.46x".parse().unwrap();
        assert_eq!(c.op, Op::Le);
        assert_eq!(c.value, BoundValue::Relative(0.46));
        let c: Constraint = "memory_mib <= 60%".parse().unwrap();
        assert_eq!(c.key, "memory_mib");
        assert_eq!(c.value, BoundValue::Relative(0.6));
        let c: Constraint = "throughput@b8>=2.17x".parse().unwrap();
        assert_eq!(c.op, Op::Ge);
        let c: Constraint = "num_params<=5e9".parse().unwrap();
        assert_eq!(c.value, BoundValue::Absolute(5e9));
        for bad in ["runtime_ms<0.5", "<=3", "x<=fast"] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad}");
        }
        // Shown short: whole ratios bare, calibrated ones to 4 decimals.
        let mut c: Constraint = "decode_throughput@b1>=2x".parse().unwrap();
        assert_eq!(c.to_string(), "decode_throughput@b1>=2x");
        c.value = BoundValue::Relative(1.6315105195045034);
        assert_eq!(c.to_string(), "decode_throughput@b1>=1.6315x");
    }

    /// A throughput constraint is linear only over non-negative times: a negative one (a cost
    /// measurement lost in noise) is refused with the choice named, not solved into nonsense.
    #[test]
    fn negative_times_under_a_throughput_constraint_are_refused() {
        use crate::search::table::{InverseMetric, TableChoice, TableGroup};
        let choice = |id: &str, ms: f64, kl: f64| TableChoice {
            id: id.into(),
            values: [("runtime_ms".to_string(), ms), ("kl".to_string(), kl)].into(),
        };
        let mut t = BlockTable {
            source: "costs.json".into(),
            groups: vec![TableGroup {
                name: "layer 0".into(),
                choices: vec![choice("parent", 2.0, 0.0), choice("attn:noop", -0.5, 0.3)],
                parent: Some(0),
            }],
            constants: [("runtime_ms".to_string(), 1.0)].into(),
            inverse: [(
                "throughput".to_string(),
                InverseMetric {
                    of: "runtime_ms".into(),
                    numerator: 1000.0,
                },
            )]
            .into(),
        };
        let spec = SearchSpec {
            objective: Objective {
                key: "kl".into(),
                sense: Sense::Minimize,
            },
            constraints: vec!["throughput>=1.5x".parse().unwrap()],
        };
        let e = spec.build(&t).unwrap_err().to_string();
        assert!(
            e.contains("attn:noop") && e.contains("cannot be negative"),
            "{e}"
        );
        t.groups[0].choices[1]
            .values
            .insert("runtime_ms".into(), 0.5);
        assert!(spec.build(&t).is_ok());
        t.constants.insert("runtime_ms".into(), -1.0);
        let e = spec.build(&t).unwrap_err().to_string();
        assert!(e.contains("non-block"), "{e}");
    }

    #[test]
    fn a_row_is_re_bounded_only_by_a_constraint_on_its_key_and_direction() {
        let table = crate::search::synthetic::whole_block(3, 4, 5);
        let spec = SearchSpec {
            objective: Objective {
                key: "kl_div".into(),
                sense: Sense::Minimize,
            },
            constraints: vec!["memory_mib<=0.6x".parse().unwrap()],
        };
        let mut built = spec.build(&table).unwrap();
        let c: Constraint = "memory_mib<=0.8x".parse().unwrap();
        built.rebound(&table, 0, &c).unwrap();
        let fresh = SearchSpec {
            constraints: vec![c],
            ..spec.clone()
        }
        .build(&table)
        .unwrap();
        assert_eq!(built.mip, fresh.mip);
        assert_eq!(built.resolved, fresh.resolved);
        for bad in ["runtime_ms<=0.8x", "memory_mib>=0.8x"] {
            let e = built.rebound(&table, 0, &bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("cannot re-bound"), "{e}");
        }
        assert!(
            built
                .rebound(&table, 3, &"memory_mib<=1x".parse().unwrap())
                .is_err()
        );
    }
}
