//! `cargo xtask bench vs-torch [--runs N] [--repeats N]`: puzzle's training, scoring and BLD
//! steps against PyTorch's on the same shapes, in one command, alternating the two libraries
//! run by run so that a drift of this shared machine hits both. PyTorch and transformers are
//! installed from PyPI into a virtualenv this task owns (`~/.cache/puzzle/vs-torch`, kept
//! between runs). Prints a table of each side's median and range over the runs, the ratio
//! (puzzle / torch, per run, then median and range) and the MFU of each against the faster
//! GEMM either library measured in that run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::tools;

/// The versions the README's table was measured with.
const TORCH: &str = "torch==2.15.0";
const TRANSFORMERS: &str = "transformers==5.24.0";

/// The cases both sides report, with the table's words.
const CASES: [(&str, &str); 3] = [
    (
        "tiny_train_tok_s",
        "training step, tiny parent, 16 x 256, CE + AdamW (tok/s)",
    ),
    (
        "smollm2_block_train_tok_s",
        "BLD step, one SmolLM2-135M layer, 8 x 256, MSE + AdamW (tok/s)",
    ),
    (
        "tiny_forward_tok_s",
        "forward only (scoring), tiny parent, 16 x 256 (tok/s)",
    ),
];

fn venv() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let dir = PathBuf::from(home).join(".cache/puzzle/vs-torch");
    let py = dir.join("bin/python");
    if !py.is_file() {
        crate::run(Command::new(tools::python()).args(["-m", "venv"]).arg(&dir))?;
    }
    let have = Command::new(&py)
        .args([
            "-c",
            "import torch, transformers; print(f'torch=={torch.__version__} transformers=={transformers.__version__}')",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if have.as_deref() != Some(&format!("{TORCH} {TRANSFORMERS}")) {
        eprintln!(
            "installing {TORCH} and {TRANSFORMERS} from PyPI into {} (once; torch's wheels are several GB)",
            dir.display()
        );
        crate::run(Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            TORCH,
            TRANSFORMERS,
        ]))?;
    }
    Ok(py)
}

/// The last line of a command's stdout that parses as a JSON object.
fn json_of(cmd: &mut Command, what: &str) -> Result<Value> {
    let o = cmd.output().with_context(|| format!("starting {what}"))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
        .with_context(|| format!("{what} printed no JSON result"))
}

fn num(v: &Value, key: &str, what: &str) -> Result<f64> {
    v["results"][key]
        .as_f64()
        .with_context(|| format!("{what} did not report `{key}`"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.digits$} ({lo:.digits$}-{hi:.digits$})",
        median(v.to_vec())
    )
}

fn flag(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .with_context(|| format!("{name} takes a positive number")),
    }
}

pub fn bench(tools: &tools::BuildEnv, args: &[String]) -> Result<()> {
    let runs = flag(args, "--runs", 3)?;
    let repeats = flag(args, "--repeats", 4)?;
    let py = venv()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let root = crate::root();
    let ours = |extra: &[&str]| {
        let mut c = crate::cargo(tools);
        c.args(["bench", "-p", "puzzle-core", "--bench", "vs_torch"])
            .args(extra)
            .env("RAYON_NUM_THREADS", threads.to_string());
        c
    };
    // Built before the clock matters (and a build error shows here, not as a missing result).
    crate::run(&mut ours(&["--no-run"]))?;
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for r in 0..runs {
        eprintln!(
            "run {} of {runs}: puzzle, then torch ({threads} threads)",
            r + 1
        );
        let rep = repeats.to_string();
        mine.push(json_of(
            &mut ours(&["--", "--repeats", &rep]),
            "puzzle's vs_torch bench",
        )?);
        theirs.push(json_of(
            Command::new(&py)
                .arg(root.join("xtask/scripts/vs_torch.py"))
                .arg("--config")
                .arg(root.join("model-zoo/tiny-parent/config.json"))
                .args(["--threads", &threads.to_string(), "--repeats", &rep]),
            "xtask/scripts/vs_torch.py",
        )?);
    }
    println!(
        "\n{} vs {}, f32, {threads} threads, {runs} runs alternating (median of {repeats} timed repeats each); median (min-max) over runs\n",
        mine[0]["version"].as_str().unwrap_or("puzzle"),
        theirs[0]["version"].as_str().unwrap_or("torch")
    );
    println!("| case | puzzle | PyTorch | puzzle / PyTorch | MFU puzzle | MFU PyTorch |");
    println!("|---|---:|---:|---:|---:|---:|");
    let gemm = |v: &Value, w: &str| num(v, "gemm_gflops", w);
    // Per run, the better of the two GEMM rates: the ceiling both MFUs are stated against.
    let best: Vec<f64> = mine
        .iter()
        .zip(&theirs)
        .map(|(m, t)| Ok(gemm(m, "puzzle")?.max(gemm(t, "torch")?)))
        .collect::<Result<_>>()?;
    for (key, words) in CASES {
        let a: Vec<f64> = mine
            .iter()
            .map(|m| num(m, key, "puzzle"))
            .collect::<Result<_>>()?;
        let b: Vec<f64> = theirs
            .iter()
            .map(|t| num(t, key, "torch"))
            .collect::<Result<_>>()?;
        let ratio: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        let flops = mine[0]["flops_per_token"][key]
            .as_f64()
            .with_context(|| format!("puzzle's bench did not report FLOPs for `{key}`"))?;
        let mfu = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(&best)
                .map(|(tok, g)| 100.0 * tok * flops / 1e9 / g)
                .collect()
        };
        println!(
            "| {words} | {} | {} | {}x | {}% | {}% |",
            spread(&a, 0),
            spread(&b, 0),
            spread(&ratio, 2),
            spread(&mfu(&a), 1),
            spread(&mfu(&b), 1)
        );
    }
    let g_ours: Vec<f64> = mine
        .iter()
        .map(|m| gemm(m, "puzzle"))
        .collect::<Result<_>>()?;
    let g_torch: Vec<f64> = theirs
        .iter()
        .map(|t| gemm(t, "torch"))
        .collect::<Result<_>>()?;
    let g_ratio: Vec<f64> = g_ours.iter().zip(&g_torch).map(|(a, b)| a / b).collect();
    println!(
        "| f32 GEMM 1024^3 (GFLOP/s) | {} | {} | {}x | | |",
        spread(&g_ours, 1),
        spread(&g_torch, 1),
        spread(&g_ratio, 2)
    );
    Ok(())
}
