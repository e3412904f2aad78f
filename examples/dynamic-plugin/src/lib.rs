//! An example plugin loaded at run time: `puzzle search TABLE --plugin
//! target/release/libpuzzle_example_plugin.so --solver dfs`.
//!
//! It depends on nothing of puzzle but the ABI crate (no tensors, no burn): everything arrives
//! as JSON documents and flat arrays. It provides:
//! - solver `dfs`: exact depth-first branch and bound (small problems; a second opinion);
//! - solver `panicky`: panics, to show that a panic in a plugin becomes an error;
//! - cost model `flops`: latency = FLOPs / 1 TFLOP/s + bytes / 100 GB/s per subblock;
//! - scorer `nll_gap`: mean |log p_child(target) - log p_parent(target)|;
//! - scorer `refuses`: returns an error, to show that a scorer's error fails the stage;
//! - catalog `magnitude`: `ffn:magnitude(n)`, FFN width pruning by weight magnitude
//!   (`||gate_i|| * ||up_i|| * ||down[:, i]||`), no calibration data needed.

use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RString, RVec};
use puzzle_plugin_abi::{
    ABI_VERSION, NamedTensor, PluginMod, PluginModRef, ScorePart, guard, unsupported,
};
use puzzle_types::search::mip::MipProblem;
use serde_json::{Value, json};

#[export_root_module]
fn root_module() -> PluginModRef {
    PluginMod {
        abi_version,
        describe,
        solve,
        cost,
        score,
        catalog_enumerate,
        catalog_spec,
        catalog_init,
    }
    .leak_into_prefix()
}

extern "C" fn abi_version() -> u32 {
    ABI_VERSION
}

extern "C" fn describe() -> RString {
    json!({
        "name": "example",
        "solvers": ["dfs", "panicky"],
        "cost_models": ["flops"],
        "scorers": ["nll_gap", "refuses"],
        "catalogs": [{"name": "magnitude", "ffn": ["magnitude"]}],
    })
    .to_string()
    .into()
}

/// Exact DFS over groups with objective and feasibility bounds.
fn dfs_solve(p: &MipProblem) -> Result<Value, String> {
    p.validate().map_err(|e| e.to_string())?;
    let groups = &p.groups;
    let obj = &p.objective;
    let n = p.num_vars;
    // Rows as `a . x <= b`.
    let mut rows: Vec<(Vec<f64>, f64)> = Vec::new();
    for r in &p.rows {
        let mut a = vec![0.0; n];
        for &(v, c) in &r.coefs {
            a[v] += c;
        }
        let (lo, hi) = (r.lo, r.hi);
        if hi.is_finite() {
            rows.push((a.clone(), hi));
        }
        if lo.is_finite() {
            rows.push((a.iter().map(|x| -x).collect(), -lo));
        }
    }
    let g = groups.len();
    let min_obj: Vec<f64> = groups
        .iter()
        .map(|vs| vs.iter().map(|&v| obj[v]).fold(f64::INFINITY, f64::min))
        .collect();
    let mut suffix_obj = vec![0.0; g + 1];
    for i in (0..g).rev() {
        suffix_obj[i] = suffix_obj[i + 1] + min_obj[i];
    }
    let suffix_row: Vec<Vec<f64>> = rows
        .iter()
        .map(|(a, _)| {
            let mut s = vec![0.0; g + 1];
            for i in (0..g).rev() {
                s[i] = s[i + 1]
                    + groups[i]
                        .iter()
                        .map(|&v| a[v])
                        .fold(f64::INFINITY, f64::min);
            }
            s
        })
        .collect();
    struct St<'a> {
        groups: &'a [Vec<usize>],
        obj: &'a [f64],
        rows: &'a [(Vec<f64>, f64)],
        suffix_obj: &'a [f64],
        suffix_row: &'a [Vec<f64>],
        best: Option<(f64, Vec<usize>)>,
        cur: Vec<usize>,
    }
    fn go(s: &mut St, i: usize, val: f64, used: &mut Vec<f64>) {
        if let Some((b, _)) = &s.best
            && val + s.suffix_obj[i] >= *b - 1e-12
        {
            return;
        }
        for (r, (_, b)) in s.rows.iter().enumerate() {
            if used[r] + s.suffix_row[r][i] > b + 1e-9 * (1.0 + b.abs()) {
                return;
            }
        }
        if i == s.groups.len() {
            s.best = Some((val, s.cur.clone()));
            return;
        }
        let mut order: Vec<usize> = (0..s.groups[i].len()).collect();
        order.sort_by(|&a, &b| s.obj[s.groups[i][a]].total_cmp(&s.obj[s.groups[i][b]]));
        for c in order {
            let v = s.groups[i][c];
            for (r, (a, _)) in s.rows.iter().enumerate() {
                used[r] += a[v];
            }
            s.cur.push(c);
            go(s, i + 1, val + s.obj[v], used);
            s.cur.pop();
            for (r, (a, _)) in s.rows.iter().enumerate() {
                used[r] -= a[v];
            }
        }
    }
    let t0 = std::time::Instant::now();
    let mut st = St {
        groups,
        obj,
        rows: &rows,
        suffix_obj: &suffix_obj,
        suffix_row: &suffix_row,
        best: None,
        cur: vec![],
    };
    let mut used = vec![0.0; rows.len()];
    go(&mut st, 0, 0.0, &mut used);
    let k = p.objective_constant;
    Ok(match st.best {
        Some((o, choice)) => {
            json!({"status": "optimal", "choice": choice, "objective": o + k, "bound": o + k,
                                    "seconds": t0.elapsed().as_secs_f64()})
        }
        None => json!({"status": "infeasible", "choice": [], "objective": null, "bound": null,
                       "seconds": t0.elapsed().as_secs_f64()}),
    })
}

extern "C" fn solve(
    name: RString,
    problem: RString,
    _options: RString,
) -> RResult<RString, RString> {
    match name.as_str() {
        "dfs" => guard(|| {
            let p: MipProblem =
                serde_json::from_str(problem.as_str()).map_err(|e| e.to_string())?;
            dfs_solve(&p).map(|v| v.to_string().into())
        }),
        "panicky" => guard(|| -> Result<RString, String> {
            panic!("this solver always panics (on purpose)")
        }),
        other => unsupported("solver", other),
    }
}

extern "C" fn cost(name: RString, request: RString) -> RResult<RString, RString> {
    if name.as_str() != "flops" {
        return unsupported("cost model", name.as_str());
    }
    guard(|| {
        let r: Value = serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
        let p = &r["parent"];
        let h = p["hidden_size"].as_f64().ok_or("parent.hidden_size")?;
        let heads = p["num_attention_heads"]
            .as_f64()
            .ok_or("num_attention_heads")?;
        let hd = p["head_dim"].as_f64().ok_or("head_dim")?;
        let vocab = p["vocab_size"].as_f64().ok_or("vocab_size")?;
        let batches: Vec<u64> = serde_json::from_value(r["deployment"]["batch_sizes"].clone())
            .map_err(|e| e.to_string())?;
        let prefill = r["deployment"]["prefill_len"]
            .as_f64()
            .ok_or("prefill_len")?;
        // (params, kv elements per token) of each subblock; non-block when `specs` is null.
        let (params, kv) = match r["specs"].as_array() {
            None => (2.0 * vocab * h + h, 0.0),
            Some(specs) => specs
                .iter()
                .fold((0.0, 0.0), |(p, k), s| match s["type"].as_str() {
                    Some("gqa") => {
                        let kvh = s["num_kv_heads"].as_f64().unwrap_or(0.0);
                        (
                            p + h + 2.0 * h * heads * hd + 2.0 * h * kvh * hd,
                            k + 2.0 * kvh * hd,
                        )
                    }
                    Some("swi_glu") => (
                        p + h + 3.0 * h * s["intermediate_size"].as_f64().unwrap_or(0.0),
                        k,
                    ),
                    Some("linear") => (p + h + h * h, k),
                    _ => (p, k),
                }),
        };
        let (rate, bw) = (1e12, 100e9);
        let mut pre = serde_json::Map::new();
        let mut dec = serde_json::Map::new();
        for b in batches {
            let bf = b as f64;
            pre.insert(
                b.to_string(),
                json!(1e3 * (2.0 * params * bf * prefill / rate).max(4.0 * params / bw)),
            );
            dec.insert(
                b.to_string(),
                json!(1e3 * (2.0 * params * bf / rate).max(4.0 * params / bw)),
            );
        }
        let seq = r["deployment"]["prefill_len"].as_f64().unwrap_or(0.0)
            + r["deployment"]["generation_len"].as_f64().unwrap_or(0.0);
        Ok(json!({"params": params as u64, "param_bytes": 2.0 * params, "kv_bytes_per_token": 2.0 * kv,
                  "kv_bytes_per_sequence": 2.0 * kv * seq, "prefill_ms": pre, "decode_ms": dec})
        .to_string()
        .into())
    })
}

extern "C" fn score(
    name: RString,
    parent: RVec<f32>,
    child: RVec<f32>,
) -> RResult<ScorePart, RString> {
    if name.as_str() == "refuses" {
        return RResult::RErr("this scorer always refuses (on purpose)".into());
    }
    if name.as_str() != "nll_gap" {
        return unsupported("scorer", name.as_str());
    }
    guard(|| {
        if parent.len() != child.len() {
            return Err(format!(
                "{} parent vs {} child log-probabilities",
                parent.len(),
                child.len()
            ));
        }
        let sum: f64 = parent
            .iter()
            .zip(child.iter())
            .map(|(p, c)| (p - c).abs() as f64)
            .sum();
        Ok(ScorePart {
            sum,
            count: parent.len() as f64,
        })
    })
}

fn width_of(variant: &str) -> Result<usize, String> {
    variant
        .strip_prefix("ffn:magnitude(")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("`{variant}` is not ffn:magnitude(<width>)"))
}

extern "C" fn catalog_enumerate(name: RString, request: RString) -> RResult<RString, RString> {
    if name.as_str() != "magnitude" {
        return unsupported("catalog", name.as_str());
    }
    guard(|| {
        let r: Value = serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
        let wanted = r["space"]["ffn"]
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h == "magnitude"));
        let layer = r["layer"].as_u64().ok_or("layer")? as usize;
        let ffn = &r["parent"]["layers"][layer]["ffn"];
        if r["kind"] != "ffn" || !wanted || ffn["type"] != "swi_glu" {
            return Ok("[]".to_string().into());
        }
        let full = ffn["intermediate_size"]
            .as_u64()
            .ok_or("intermediate_size")?;
        // Half of the parent's width.
        Ok(json!([format!("ffn:magnitude({})", full / 2)])
            .to_string()
            .into())
    })
}

extern "C" fn catalog_spec(name: RString, request: RString) -> RResult<RString, RString> {
    if name.as_str() != "magnitude" {
        return unsupported("catalog", name.as_str());
    }
    guard(|| {
        let r: Value = serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
        let n = width_of(r["variant"].as_str().ok_or("variant")?)?;
        Ok(
            json!({"subblock": "ffn", "type": "swi_glu", "intermediate_size": n, "bias": false})
                .to_string()
                .into(),
        )
    })
}

extern "C" fn catalog_init(
    name: RString,
    request: RString,
    tensors: RVec<NamedTensor>,
) -> RResult<RVec<NamedTensor>, RString> {
    if name.as_str() != "magnitude" {
        return unsupported("catalog", name.as_str());
    }
    guard(|| {
        let r: Value = serde_json::from_str(request.as_str()).map_err(|e| e.to_string())?;
        let n = width_of(r["variant"].as_str().ok_or("variant")?)?;
        let get = |k: &str| {
            tensors
                .iter()
                .find(|t| t.name.as_str() == k)
                .ok_or(format!("no tensor {k}"))
        };
        let (gate, up, down, norm) = (
            get("mlp.gate_proj.weight")?,
            get("mlp.up_proj.weight")?,
            get("mlp.down_proj.weight")?,
            get("post_attention_layernorm.weight")?,
        );
        let (inter, h) = (gate.shape[0] as usize, gate.shape[1] as usize);
        let row_norm = |t: &NamedTensor, i: usize| {
            t.data[i * h..(i + 1) * h]
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
        };
        let col_norm = |i: usize| {
            (0..h)
                .map(|r| down.data[r * inter + i].powi(2))
                .sum::<f32>()
                .sqrt()
        };
        let mut idx: Vec<usize> = (0..inter).collect();
        let score: Vec<f32> = (0..inter)
            .map(|i| row_norm(gate, i) * row_norm(up, i) * col_norm(i))
            .collect();
        idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        let mut keep = idx[..n.min(inter)].to_vec();
        keep.sort_unstable();
        let rows = |t: &NamedTensor| -> RVec<f32> {
            keep.iter()
                .flat_map(|&i| t.data[i * h..(i + 1) * h].iter().copied())
                .collect()
        };
        let cols: RVec<f32> = (0..h)
            .flat_map(|r| keep.iter().map(move |&i| down.data[r * inter + i]))
            .collect();
        let k = keep.len() as u64;
        Ok(vec![
            NamedTensor {
                name: "post_attention_layernorm.weight".into(),
                shape: norm.shape.clone(),
                data: norm.data.clone(),
            },
            NamedTensor {
                name: "mlp.gate_proj.weight".into(),
                shape: vec![k, h as u64].into(),
                data: rows(gate),
            },
            NamedTensor {
                name: "mlp.up_proj.weight".into(),
                shape: vec![k, h as u64].into(),
                data: rows(up),
            },
            NamedTensor {
                name: "mlp.down_proj.weight".into(),
                shape: vec![h as u64, k].into(),
                data: cols,
            },
        ]
        .into())
    })
}
