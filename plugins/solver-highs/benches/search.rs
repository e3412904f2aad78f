//! Solve time vs problem size for both built-in solvers, side by side with PuLP + CBC (the
//! Python MIP stack of NVIDIA's Puzzle code) on the same instances, in one run.
//!
//! Run: `cargo xtask bench search` (installs PuLP into target/py first), or
//! `PUZZLE_PYTHON=python3 cargo bench -p puzzle-solver-highs --bench search`.

use std::collections::HashMap;
use std::process::Command;

use puzzle_solver_bnb::BnbSolver;
use puzzle_solver_highs::HighsSolver;
use puzzle_types::search::mip::{SolveOptions, Solver};
use puzzle_types::search::synthetic;
use puzzle_types::search::{BlockTable, Objective, SearchSpec, Sense};

fn spec() -> SearchSpec {
    SearchSpec {
        objective: Objective {
            key: "kl_div".into(),
            sense: Sense::Minimize,
        },
        constraints: ["runtime_ms<=0.5x", "memory_mib<=0.6x", "num_params<=0.7x"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
    }
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/search-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases: Vec<(String, BlockTable)> = Vec::new();
    for layers in [10, 20, 40, 80] {
        cases.push((
            format!("decoupled-{layers:02}x6x9"),
            synthetic::decoupled(layers as u64, layers, 6, 9),
        ));
    }
    for layers in [20, 40, 80] {
        cases.push((
            format!("block-{layers:02}x100"),
            synthetic::whole_block(100 + layers as u64, layers, 100),
        ));
    }
    let opts = SolveOptions {
        time_limit_secs: 300.0,
        relative_gap: 1e-9,
    };
    let mut rows = Vec::new();
    for (name, table) in &cases {
        let built = spec().build(table).unwrap();
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec(&built.mip).unwrap(),
        )
        .unwrap();
        let h = HighsSolver.solve(&built.mip, &opts).unwrap();
        let b = BnbSolver.solve(&built.mip, &opts).unwrap();
        rows.push((name.clone(), built.mip.num_vars, h, b));
    }
    // PuLP + CBC on the same files.
    let python = std::env::var("PUZZLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/scripts/pulp_bench.py");
    let mut cbc: HashMap<String, (f64, f64, String)> = HashMap::new();
    match Command::new(&python).arg(&script).arg(&dir).output() {
        Ok(o) if o.status.success() => {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                cbc.insert(
                    v["name"].as_str().unwrap().to_string(),
                    (
                        v["solve_seconds"].as_f64().unwrap(),
                        v["objective"].as_f64().unwrap_or(f64::NAN),
                        v["status"].as_str().unwrap().to_string(),
                    ),
                );
            }
        }
        Ok(o) => eprintln!("PuLP run failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("cannot run {python}: {e} (set PUZZLE_PYTHON to an interpreter with pulp)")
        }
    }
    println!(
        "# search benchmark: minimise KL under runtime <= 0.5x, memory <= 0.6x, params <= 0.7x (1 thread each)"
    );
    println!(
        "\n| instance | binaries | HiGHS s | bnb s | PuLP+CBC s | CBC/HiGHS | CBC/bnb | objectives agree |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, vars, h, b) in rows {
        let c = cbc.get(&name);
        let agree = (h.objective - b.objective).abs() <= 1e-7 * h.objective.abs().max(1.0)
            && c.is_none_or(|c| (c.1 - h.objective).abs() <= 1e-6 * h.objective.abs().max(1.0));
        println!(
            "| {name} | {vars} | {:.3} ({:?}) | {:.3} ({:?}) | {} | {} | {} | {} |",
            h.seconds,
            h.status,
            b.seconds,
            b.status,
            c.map_or("-".into(), |c| format!("{:.3} ({})", c.0, c.2)),
            c.map_or("-".into(), |c| format!("{:.1}x", c.0 / h.seconds)),
            c.map_or("-".into(), |c| format!("{:.1}x", c.0 / b.seconds)),
            if agree { "yes" } else { "NO" }
        );
    }
}
