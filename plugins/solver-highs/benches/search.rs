//! Solve time of both built-in solvers side by side with PuLP + CBC (the Python MIP stack of
//! NVIDIA's Puzzle code) on the same instances, in one run: the median of `REPEATS` solves each,
//! and the same optimum checked.
//!
//! Run: `cargo xtask bench search` (installs PuLP into target/py first), or
//! `PUZZLE_PYTHON=python3 cargo bench -p puzzle-solver-highs --bench search`.
//! `PUZZLE_NVIDIA_LIBRARY=.../block_library.json` adds NVIDIA's published Llama-3.3-70B library
//! (NVlabs/puzzle `examples/data/Llama-3.3-70B-Instruct/`, not redistributable here: its licence
//! is non-commercial) at the three budgets of NVIDIA's own notebook.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use puzzle_solver_bnb::BnbSolver;
use puzzle_solver_highs::HighsSolver;
use puzzle_types::search::mip::{MipProblem, MipSolution, SolveOptions, Solver};
use puzzle_types::search::run::{diverse, solve_excluding, sweep};
use puzzle_types::search::{BlockTable, BoundValue, Objective, Op, SearchSpec, Sense, synthetic};

const REPEATS: usize = 5;

fn spec(objective: &str, constraints: &[&str]) -> SearchSpec {
    SearchSpec {
        objective: Objective {
            key: objective.into(),
            sense: Sense::Minimize,
        },
        constraints: constraints.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median wall seconds of `REPEATS` cold solves (a new solver each: bnb remembers its last
/// problem), and the last solution.
fn timed(
    solver: &dyn Fn() -> Box<dyn Solver>,
    p: &MipProblem,
    opts: &SolveOptions,
) -> (f64, MipSolution) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..REPEATS {
        let solver = solver();
        let t = Instant::now();
        let s = solver.solve(p, opts).unwrap();
        times.push(t.elapsed().as_secs_f64());
        last = Some(s);
    }
    (median(times), last.unwrap())
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench --bench search -- sharing` runs one section (`instances`, `sharing`); cargo
    // passes its own `--bench` too.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let opts = SolveOptions {
        time_limit_secs: 300.0,
        relative_gap: 1e-9,
        ..Default::default()
    };
    if run("instances") {
        instances(&opts);
    }
    if run("sharing") {
        sharing(&opts);
    }
}

/// Every solver on every instance, with PuLP + CBC.
fn instances(opts: &SolveOptions) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/search-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let synthetic_spec = || {
        spec(
            "kl_div",
            &["runtime_ms<=0.5x", "memory_mib<=0.6x", "num_params<=0.7x"],
        )
    };
    let mut cases: Vec<(String, BlockTable, SearchSpec)> = Vec::new();
    for layers in [10, 20, 40, 80] {
        cases.push((
            format!("decoupled-{layers:02}x6x9"),
            synthetic::decoupled(layers as u64, layers, 6, 9),
            synthetic_spec(),
        ));
    }
    for layers in [20, 40, 80] {
        cases.push((
            format!("block-{layers:02}x100"),
            synthetic::whole_block(100 + layers as u64, layers, 100),
            synthetic_spec(),
        ));
    }
    if let Some(lib) = std::env::var_os("PUZZLE_NVIDIA_LIBRARY") {
        let table = BlockTable::load(Path::new(&lib)).unwrap();
        // NVIDIA's notebook: an H100's 80 GB at 6000 tokens/s (batch 256 x 1200 tokens), an
        // edge device's 40 GB, and 85% of the parent in both.
        for (name, cs) in [
            (
                "nvidia70b-h100",
                vec!["stats.memory_mib<=80000", "stats.runtime_ms<=51200"],
            ),
            ("nvidia70b-edge", vec!["stats.memory_mib<=40000"]),
            (
                "nvidia70b-85pct",
                vec!["stats.memory_mib<=0.85x", "stats.runtime_ms<=0.85x"],
            ),
        ] {
            cases.push((name.into(), table.clone(), spec("metrics.kl_div", &cs)));
        }
    }
    let mut rows = Vec::new();
    for (name, table, spec) in &cases {
        let built = spec.build(table).unwrap();
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec(&built.mip).unwrap(),
        )
        .unwrap();
        let h = timed(&|| Box::new(HighsSolver), &built.mip, opts);
        let b = timed(&|| Box::new(BnbSolver::new()), &built.mip, opts);
        rows.push((name.clone(), built.mip.num_vars, h, b));
    }
    // PuLP + CBC on the same files, the same number of times.
    let python = std::env::var("PUZZLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/scripts/pulp_bench.py");
    let mut cbc: HashMap<String, (f64, f64, String)> = HashMap::new();
    match Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .arg(REPEATS.to_string())
        .output()
    {
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
        "# search benchmark: median of {REPEATS} solves each, 1 thread; synthetic instances minimise KL under runtime <= 0.5x, memory <= 0.6x, params <= 0.7x"
    );
    println!(
        "\n| instance | binaries | HiGHS s | bnb s | PuLP+CBC s | CBC/HiGHS | CBC/bnb | HiGHS/bnb | same optimum |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut paper_ratios = Vec::new();
    for (name, vars, (ht, h), (bt, b)) in &rows {
        let c = cbc.get(name);
        let rel = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs().max(1.0);
        let agree = rel(b.objective, h.objective) && c.is_none_or(|c| rel(c.1, h.objective));
        let paper = name.contains("80") || name.starts_with("nvidia");
        if paper && let Some(c) = c {
            paper_ratios.push((name.clone(), c.0 / bt));
        }
        println!(
            "| {name} | {vars} | {ht:.4} | {bt:.4} | {} | {} | {} | {:.1}x | {} |",
            c.map_or("-".into(), |c| format!("{:.4} ({})", c.0, c.2)),
            c.map_or("-".into(), |c| format!("{:.1}x", c.0 / ht)),
            c.map_or("-".into(), |c| format!("{:.1}x", c.0 / bt)),
            ht / bt,
            if agree { "yes" } else { "NO" }
        );
    }
    if !paper_ratios.is_empty() {
        let worst = paper_ratios
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        println!(
            "\nCBC/bnb on the paper-scale instances: median {:.1}x, worst {:.1}x ({})",
            median(paper_ratios.iter().map(|r| r.1).collect()),
            worst.1,
            worst.0
        );
    }
}

/// Work shared across related solves: a 20-point sweep and 10 diverse solutions on the
/// 80 x 100 instance, against the same solves made independently.
fn sharing(opts: &SolveOptions) {
    let table = synthetic::whole_block(180, 80, 100);
    let base = spec("kl_div", &["memory_mib<=0.6x", "num_params<=0.7x"]);
    let values: Vec<BoundValue> = (0..20)
        .map(|i| BoundValue::Relative(0.3 + 0.03 * i as f64))
        .collect();
    println!("\n| series | solver | together s | independent s | ratio |\n|---|---|---|---|---|");
    // "Independent": a new solver for each point (bnb reuses its last problem's pruning).
    let fresh: [&dyn Fn() -> Box<dyn Solver>; 2] =
        [&|| Box::new(BnbSolver::new()), &|| Box::new(HighsSolver)];
    for make in fresh {
        let solver = make();
        let solver = solver.as_ref();
        let together = seconds(|| {
            sweep(&table, &base, solver, opts, "runtime_ms", Op::Le, &values).unwrap();
        });
        let alone = seconds(|| {
            for v in &values {
                let cold = make();
                sweep(
                    &table,
                    &base,
                    cold.as_ref(),
                    opts,
                    "runtime_ms",
                    Op::Le,
                    &[*v],
                )
                .unwrap();
            }
        });
        println!(
            "| 20-point sweep of runtime_ms <= 0.30x..0.87x | {} | {together:.3} | {alone:.3} | {:.2}x |",
            solver.name(),
            alone / together
        );
    }
    let tight = spec(
        "kl_div",
        &["runtime_ms<=0.5x", "memory_mib<=0.6x", "num_params<=0.7x"],
    );
    for make in fresh {
        let solver = make();
        let solver = solver.as_ref();
        let mut found = Vec::new();
        let together = seconds(|| {
            found = diverse(&table, &tight, solver, opts, 10, 5)
                .unwrap()
                .unwrap();
            assert_eq!(found.len(), 10);
        });
        // The same ten problems (the k-th excludes the first k-1 solutions), each solved by a
        // new solver; and the first problem solved ten times, for scale.
        let cuts: Vec<Vec<usize>> = found.iter().map(|s| s.choice_index.clone()).collect();
        let alone = seconds(|| {
            for k in 0..found.len() {
                let cold = make();
                let s = solve_excluding(&table, &tight, cold.as_ref(), opts, &cuts[..k], 5)
                    .unwrap()
                    .unwrap();
                assert!(
                    (s.objective - found[k].objective).abs() <= 1e-9 * (1.0 + s.objective.abs())
                );
            }
        });
        let first = found[0].seconds;
        println!(
            "| 10 solutions, >= 5 layers apart | {} | {together:.3} | {alone:.3} (10 x the first: {:.3}) | {:.2}x |",
            solver.name(),
            10.0 * first,
            alone / together
        );
    }
}
