//! Synthetic block tables shaped like the paper's search (Llama-3.1-70B: 80 layers, 6 attention
//! x 9 FFN choices, or whole-block choices), for solver tests and benchmarks.
//!
//! Each choice has a relative cost `c` in (0, 1] (the parent is 1); runtime, memory and
//! parameters follow `c` with independent noise, and the quality loss (KL) falls with `c` at a
//! layer-dependent sensitivity, as replace-1-block scores do.

use std::collections::BTreeMap;

use crate::rng::SeededRng;

use super::table::{BlockTable, TableChoice, TableGroup};

fn choice(rng: &mut SeededRng, id: String, c: f64, sensitivity: f64, scale: f64) -> TableChoice {
    let noise = |rng: &mut SeededRng| rng.uniform_in(0.9, 1.1);
    let mut values = BTreeMap::new();
    values.insert("runtime_ms".into(), scale * c * noise(rng));
    values.insert("memory_mib".into(), scale * 1.7 * c * noise(rng));
    values.insert("num_params".into(), scale * 1e6 * c * noise(rng));
    let kl = if c >= 1.0 {
        0.0
    } else {
        sensitivity * (1.0 - c).powf(1.5) * rng.uniform_in(0.7, 1.3)
    };
    values.insert("kl_div".into(), kl);
    TableChoice { id, values }
}

/// Decoupled: per layer one attention group (`attn_choices`) and one FFN group (`ffn_choices`).
pub fn decoupled(seed: u64, layers: usize, attn_choices: usize, ffn_choices: usize) -> BlockTable {
    let mut rng = SeededRng::new(seed);
    let mut groups = Vec::new();
    for l in 0..layers {
        // Middle layers matter most (as observed in the paper).
        let pos = l as f64 / layers.max(1) as f64;
        let sens = 0.05 + 0.5 * (1.0 - (2.0 * pos - 1.0).powi(2)) * rng.uniform_in(0.5, 1.5);
        for (kind, n, scale) in [("attn", attn_choices, 0.35), ("ffn", ffn_choices, 0.65)] {
            let mut choices = Vec::new();
            for i in 0..n {
                // The parent (c = 1) first, then cheaper alternatives down to a no-op (c ~ 0).
                let c = if i == 0 {
                    1.0
                } else {
                    1.0 - i as f64 / (n - 1).max(1) as f64 * 0.999
                };
                choices.push(choice(&mut rng, format!("{kind}:{i}"), c, sens, scale));
            }
            groups.push(TableGroup {
                name: format!("layer {l} {kind}"),
                choices,
                parent: Some(0),
            });
        }
    }
    BlockTable {
        source: format!(
            "synthetic decoupled (seed {seed}, {layers} layers, {attn_choices}x{ffn_choices})"
        ),
        groups,
        constants: BTreeMap::from([("runtime_ms".to_string(), 1.0)]),
        inverse: BTreeMap::new(),
    }
}

/// Coupled: per layer one group of `choices` whole-block alternatives.
pub fn whole_block(seed: u64, layers: usize, choices: usize) -> BlockTable {
    let mut rng = SeededRng::new(seed);
    let mut groups = Vec::new();
    for l in 0..layers {
        let pos = l as f64 / layers.max(1) as f64;
        let sens = 0.1 + 1.0 * (1.0 - (2.0 * pos - 1.0).powi(2)) * rng.uniform_in(0.5, 1.5);
        let mut cs = vec![choice(&mut rng, "block:0".into(), 1.0, sens, 1.0)];
        for i in 1..choices {
            let c = rng.uniform_in(0.02, 0.98);
            cs.push(choice(&mut rng, format!("block:{i}"), c, sens, 1.0));
        }
        groups.push(TableGroup {
            name: format!("layer {l}"),
            choices: cs,
            parent: Some(0),
        });
    }
    BlockTable {
        source: format!("synthetic whole-block (seed {seed}, {layers} layers x {choices})"),
        groups,
        constants: BTreeMap::from([("runtime_ms".to_string(), 1.0)]),
        inverse: BTreeMap::new(),
    }
}
