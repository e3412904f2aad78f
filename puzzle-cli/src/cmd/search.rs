//! `puzzle search SOURCE`: pick one block per layer with a mixed-integer program.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use puzzle_core::search::mip::{SolveOptions, Solver};
use puzzle_core::search::run::{Infeasibility, SearchSolution, diverse, sweep};
use puzzle_core::search::{BlockTable, BoundValue, Constraint, Objective, Op, SearchSpec, Sense};
use serde_json::json;

use crate::ui;

/// Search the block library for the best architecture under deployment constraints
/// (Puzzle stage 6): one choice per group (layer, or layer subblock), maximising quality (or
/// minimising a loss) subject to linear budgets, solved as a mixed-integer program.
///
/// SOURCE is a run folder (its cost and score tables) or a block-table JSON file: NVIDIA's
/// published Puzzle block-library format (`{"layer_0": {"<block>": {"stats": {...},
/// "metrics": {...}}}}`; every stats/metrics key is a metric) or our own.
///
/// Constraints are `KEY<=VALUE` or `KEY>=VALUE`; VALUE is absolute (`5e9`), a multiple of the
/// parent's total (`0.46x`) or a percentage of it (`60%`).
///
/// Examples:
///   puzzle search library.json --objective kl_div --constraint 'runtime_ms<=0.46x'
///   puzzle search library.json --objective kl_div --constraint 'memory_mib<=60%' \
///       --constraint 'runtime_ms<=0.5x' --solutions 5 --min-diversity 8 --json
///   puzzle search library.json --objective kl_div --sweep 'runtime_ms<=0.3x..1x:8'
#[derive(Args, Debug)]
// Verbatim: clap would otherwise join the example lines into one paragraph.
#[command(
    verbatim_doc_comment,
    about = "Search the block library for the best architecture under deployment constraints (Puzzle stage 6): one choice per group (layer, or layer subblock), maximising quality (or minimising a loss) subject to linear budgets, solved as a mixed-integer program"
)]
pub struct SearchArgs {
    /// Run folder or block-table JSON.
    pub source: PathBuf,
    /// Metric to optimise (e.g. kl_div, lm_loss).
    #[arg(long)]
    pub objective: String,
    /// Minimise the objective (the default: scores are losses).
    #[arg(long, conflicts_with = "maximize")]
    pub minimize: bool,
    /// Maximise the objective (e.g. an accuracy).
    #[arg(long)]
    pub maximize: bool,
    /// A budget: KEY<=VALUE or KEY>=VALUE (repeatable).
    #[arg(long = "constraint", value_name = "KEY<=VALUE")]
    pub constraints: Vec<String>,
    /// How many alternative architectures to return.
    #[arg(long, default_value_t = 1)]
    pub solutions: usize,
    /// Each alternative differs from all earlier ones in at least this many groups.
    #[arg(long, default_value_t = 1)]
    pub min_diversity: usize,
    /// Solve across a range of one constraint: 'KEY<=FROM..TO:POINTS' (values as for
    /// --constraint; both ends absolute or both relative), printing the frontier.
    #[arg(long, value_name = "KEY<=FROM..TO:N")]
    pub sweep: Option<String>,
    /// MIP backend: `bnb` (our exact solver for Puzzle's multiple-choice programs; the fastest on
    /// them, see the README's search benchmark) or `highs` (HiGHS, the general-purpose check);
    /// `greedy` and `random` are the paper's ablations of the MIP (a per-layer greedy choice, a
    /// random architecture meeting the constraints): feasible answers, never proofs.
    #[arg(long, default_value = "bnb")]
    pub solver: String,
    /// Seconds per solve before returning the best found (with its gap).
    #[arg(long, default_value_t = 60.0)]
    pub time_limit: f64,
    /// Print {"solutions": [...]} as JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn parse_sweep(s: &str) -> Result<(String, Op, Vec<BoundValue>)> {
    let c_err = || format!("--sweep `{s}`: expected KEY<=FROM..TO:N, e.g. runtime_ms<=0.3x..1x:8");
    let (head, n) = s.rsplit_once(':').with_context(c_err)?;
    let n: usize = n
        .trim()
        .parse()
        .ok()
        .filter(|&n| n >= 2)
        .with_context(c_err)?;
    let (key, op, range) = if let Some((k, r)) = head.split_once("<=") {
        (k, Op::Le, r)
    } else if let Some((k, r)) = head.split_once(">=") {
        (k, Op::Ge, r)
    } else {
        bail!(c_err());
    };
    let (a, b) = range.split_once("..").with_context(c_err)?;
    let (a, b): (BoundValue, BoundValue) = (a.parse()?, b.parse()?);
    let values = match (a, b) {
        (BoundValue::Relative(x), BoundValue::Relative(y)) => (0..n)
            .map(|i| BoundValue::Relative(x + (y - x) * i as f64 / (n - 1) as f64))
            .collect(),
        (BoundValue::Absolute(x), BoundValue::Absolute(y)) => (0..n)
            .map(|i| BoundValue::Absolute(x + (y - x) * i as f64 / (n - 1) as f64))
            .collect(),
        _ => bail!("--sweep `{s}`: both ends must be absolute or both relative"),
    };
    Ok((key.trim().to_string(), op, values))
}

fn load_source(path: &std::path::Path) -> Result<BlockTable> {
    if path.is_dir() {
        let (c, s) = (path.join("costs.json"), path.join("scores.json"));
        if c.is_file() && s.is_file() {
            let spec = puzzle_pipeline::recorded_spec(path)?;
            let costs = puzzle_core::cost::CostTable::load(&c)?;
            let scores = puzzle_core::score::ScoreTable::load(&s)?;
            let out = path.join("search/table.json");
            let t = puzzle_core::search::from_run::block_table(
                &spec,
                &costs,
                &scores,
                &out.display().to_string(),
            )?;
            puzzle_core::fsutil::write_json(&out, &t)?;
            return Ok(t);
        }
        let t = path.join("search/table.json");
        if t.is_file() {
            return Ok(BlockTable::load(&t)?);
        }
        bail!(
            "{} is a run folder without costs.json and scores.json: run `puzzle cost` and `puzzle score` first, or pass a block-table JSON file",
            path.display()
        );
    }
    Ok(BlockTable::load(path)?)
}

/// The spec with batch-less keys (`throughput`) bound to batch size `b` when the table only
/// has `throughput@b<N>` forms.
fn at_batch(spec: &SearchSpec, table: &BlockTable, b: Option<usize>) -> SearchSpec {
    let Some(b) = b else { return spec.clone() };
    let k = |key: &str| puzzle_core::search::from_run::at_batch(table, key, b);
    SearchSpec {
        objective: Objective {
            key: k(&spec.objective.key),
            sense: spec.objective.sense,
        },
        constraints: spec
            .constraints
            .iter()
            .map(|c| Constraint {
                key: k(&c.key),
                ..c.clone()
            })
            .collect(),
    }
}

/// Batch sizes to solve for: those of the table when some key needs binding, else one pass.
fn batch_plan(spec: &SearchSpec, table: &BlockTable) -> Vec<Option<usize>> {
    let keys = table.common_keys();
    let needs = std::iter::once(&spec.objective.key)
        .chain(spec.constraints.iter().map(|c| &c.key))
        .any(|k| !keys.contains(k));
    let bs = puzzle_core::search::from_run::batch_sizes(table);
    if needs && !bs.is_empty() {
        bs.into_iter().map(Some).collect()
    } else {
        vec![None]
    }
}

fn solution_json(s: &SearchSolution) -> serde_json::Value {
    let choices: serde_json::Map<String, serde_json::Value> = s
        .choices
        .iter()
        .map(|(g, c)| (g.clone(), json!(c)))
        .collect();
    json!({
        "objective": s.objective,
        "choices": choices,
        "costs": s.costs,
        "status": s.status,
        "gap": s.gap,
        "solver": s.solver,
        "seconds": s.seconds,
    })
}

fn print_solution(
    i: usize,
    s: &SearchSolution,
    table: &BlockTable,
    spec: &SearchSpec,
) -> Result<()> {
    println!(
        "solution {}: {} = {:.6} ({:?}, gap {:.2e}, {} in {:.3} s)",
        i + 1,
        spec.objective.key,
        s.objective,
        s.status,
        s.gap,
        s.solver,
        s.seconds
    );
    let mut t = ui::table(&["group", "choice"]);
    for (g, c) in &s.choices {
        t.add_row(vec![g.clone(), c.clone()]);
    }
    println!("{t}");
    let parent = table.parent_choice();
    let mut keys: Vec<String> = spec.constraints.iter().map(|c| c.key.clone()).collect();
    keys.push(spec.objective.key.clone());
    keys.dedup();
    let mut t = ui::table(&["metric", "child", "parent", "child/parent"]);
    for k in keys {
        let child = s.costs.get(&k).copied().unwrap_or(f64::NAN);
        let p = parent.as_ref().map(|p| table.total(p, &k)).transpose()?;
        t.add_row(vec![
            k,
            format!("{child:.6}"),
            p.map_or("-".into(), |p| format!("{p:.6}")),
            p.map_or("-".into(), |p| format!("{:.4}", child / p)),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn run(a: SearchArgs) -> Result<()> {
    let table = load_source(&a.source)?;
    let plugins = crate::registry::plugins();
    let solver = plugins
        .solver(&a.solver)
        .with_context(|| format!("solvers available: {}", plugins.solvers.known()))?;
    let spec = search_spec(&a)?;
    let opts = SolveOptions {
        time_limit_secs: a.time_limit,
        ..Default::default()
    };
    if a.solutions == 0 {
        bail!("--solutions must be at least 1");
    }
    if let Some(sw) = &a.sweep {
        return run_sweep(&a, sw, &table, &spec, solver, &opts);
    }
    match best_over_batches(&a, &table, &spec, solver, &opts)? {
        Ok((b, sols, spec)) => {
            if let Some(b) = b
                && !a.json
            {
                println!("best at batch size {b}");
            }
            print_solutions(&a, &sols, &table, &spec)
        }
        Err(why) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "solutions": [], "infeasible": why }))?
                );
            }
            bail!("{why}")
        }
    }
}

fn search_spec(a: &SearchArgs) -> Result<SearchSpec> {
    let constraints: Vec<Constraint> = a
        .constraints
        .iter()
        .map(|c| c.parse())
        .collect::<puzzle_core::Result<_>>()?;
    let sense = if a.maximize {
        Sense::Maximize
    } else {
        Sense::Minimize
    };
    Ok(SearchSpec {
        objective: Objective {
            key: a.objective.clone(),
            sense,
        },
        constraints,
    })
}

/// `--sweep KEY OP V1,V2,...`: one solve per limit, the Pareto points marked.
fn run_sweep(
    a: &SearchArgs,
    sw: &str,
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
) -> Result<()> {
    let (key, op, values) = parse_sweep(sw)?;
    let pts = sweep(table, spec, solver, opts, &key, op, &values)?;
    if a.json {
        let v: Vec<serde_json::Value> = pts
            .iter()
            .map(|p| {
                json!({"constraint": p.constraint, "limit": p.limit, "pareto": p.pareto,
                       "solution": p.solution.as_ref().map(solution_json)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "sweep": v }))?);
        return Ok(());
    }
    let mut t = ui::table(&["constraint", "limit", &spec.objective.key, &key, "frontier"]);
    for p in &pts {
        match &p.solution {
            Some(s) => t.add_row(vec![
                p.constraint.clone(),
                format!("{:.6}", p.limit),
                format!("{:.6}", s.objective),
                format!("{:.6}", s.costs[&key]),
                if p.pareto { "*".into() } else { String::new() },
            ]),
            None => t.add_row(vec![
                p.constraint.clone(),
                format!("{:.6}", p.limit),
                "infeasible".into(),
                "-".into(),
                String::new(),
            ]),
        };
    }
    println!("{t}");
    Ok(())
}

/// What a search found at its best batch size: the batch, the solutions, the bound spec.
type Found = (Option<usize>, Vec<SearchSolution>, SearchSpec);

/// Solves for every batch size the keys need binding to and keeps the best first solution; the
/// first infeasibility otherwise.
fn best_over_batches(
    a: &SearchArgs,
    table: &BlockTable,
    spec: &SearchSpec,
    solver: &dyn Solver,
    opts: &SolveOptions,
) -> Result<std::result::Result<Found, Infeasibility>> {
    let mut best: Option<Found> = None;
    let mut why = None;
    for b in batch_plan(spec, table) {
        let s = at_batch(spec, table, b);
        match diverse(table, &s, solver, opts, a.solutions, a.min_diversity)? {
            Ok(sols) => {
                let better = best
                    .as_ref()
                    .is_none_or(|(_, cur, _)| match spec.objective.sense {
                        Sense::Minimize => sols[0].objective < cur[0].objective,
                        Sense::Maximize => sols[0].objective > cur[0].objective,
                    });
                if better {
                    best = Some((b, sols, s));
                }
            }
            Err(w) => {
                why.get_or_insert(w);
            }
        }
    }
    match (best, why) {
        (Some(f), _) => Ok(Ok(f)),
        (None, Some(w)) => Ok(Err(w)),
        (None, None) => bail!("nothing was searched"),
    }
}

fn print_solutions(
    a: &SearchArgs,
    sols: &[SearchSolution],
    table: &BlockTable,
    spec: &SearchSpec,
) -> Result<()> {
    if a.json {
        let v: Vec<_> = sols.iter().map(solution_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "solutions": v }))?
        );
        return Ok(());
    }
    for (i, s) in sols.iter().enumerate() {
        print_solution(i, s, table, spec)?;
    }
    if sols.len() < a.solutions {
        eprintln!(
            "only {} solutions differ from each other in at least {} groups",
            sols.len(),
            a.min_diversity
        );
    }
    Ok(())
}
