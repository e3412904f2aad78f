//! `cargo xtask fuzz`: every fuzz target of `fuzz/` under cargo-fuzz (libFuzzer), in turn.
//!
//! Seeds are `fuzz/seeds/<target>/` (committed, made by `fuzz/make_seeds.py` from the
//! fixtures); what libFuzzer adds goes to `fuzz/corpus/<target>/` and crashes to
//! `fuzz/artifacts/<target>/` (both ignored by git). Builds with a nightly toolchain when
//! rustup has one, else with `RUSTC_BOOTSTRAP=1` on the active toolchain (libFuzzer's
//! sanitizer flags are unstable options either way).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The targets, in `fuzz/Cargo.toml`'s order.
pub const TARGETS: &[&str] = &[
    "gguf",
    "dequantize",
    "safetensors",
    "safetensors_index",
    "config_json",
    "tokenizer",
    "block_library",
    "run_toml",
    "plugin_json",
];

const USAGE: &str = "usage: cargo xtask fuzz [--secs N | --runs N] [TARGET...]\n\n\
  --secs N   fuzz each target for N seconds (default 30)\n  \
  --runs N   fuzz each target for N executions instead\n  \
  TARGET     only these targets (default: all of them)\n\n\
  A crash is saved under fuzz/artifacts/TARGET/ and the task fails after the other targets ran;\n  \
  replay one with `cargo xtask fuzz --replay TARGET FILE`.";

struct Options {
    secs: Option<u64>,
    runs: Option<u64>,
    targets: Vec<String>,
    replay: Option<(String, String)>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        secs: None,
        runs: None,
        targets: Vec::new(),
        replay: None,
    };
    let mut it = args.iter();
    let number = |flag: &str, v: Option<&String>| -> Result<u64> {
        v.with_context(|| format!("{flag} needs a number\n\n{USAGE}"))?
            .parse()
            .with_context(|| format!("{flag} needs a whole number\n\n{USAGE}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => o.secs = Some(number("--secs", it.next())?),
            "--runs" => o.runs = Some(number("--runs", it.next())?),
            "--replay" => {
                let (Some(t), Some(f)) = (it.next(), it.next()) else {
                    bail!("--replay needs a target and a file\n\n{USAGE}");
                };
                o.replay = Some((t.clone(), f.clone()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            t if TARGETS.contains(&t) => o.targets.push(t.to_string()),
            other => bail!(
                "unknown fuzz target or flag `{other}` (targets: {})\n\n{USAGE}",
                TARGETS.join(", ")
            ),
        }
    }
    if o.secs.is_some() && o.runs.is_some() {
        bail!("give --secs or --runs, not both\n\n{USAGE}");
    }
    if o.targets.is_empty() {
        o.targets = TARGETS.iter().map(|s| s.to_string()).collect();
    }
    Ok(o)
}

/// Debug assertions on: an arithmetic overflow on a crafted size is a finding, not a wrap.
/// No AddressSanitizer: the parsers are safe Rust over owned bytes, and with it burn's CPU
/// backend (which every target links through puzzle-core) took most of a 20-minute build;
/// memory is bounded by the targets' own counting allocator (`fuzz/src/lib.rs`) instead.
const FLAGS: &[&str] = &["--debug-assertions", "--sanitizer", "none"];

/// Set in the environment of the fuzz build's compiler calls: xtask is then the rustc wrapper
/// ([`wrap_rustc`]) instead of the task runner.
pub const WRAPPER_ENV: &str = "PUZZLE_XTASK_FUZZ_RUSTC";

/// Crates left without libFuzzer's coverage instrumentation: the tensor library and its CPU
/// kernels. Their generic code is much of the fuzz build's time and none of its findings: a
/// parser hands them tensors only after it has parsed. Every other crate, the parsers we call
/// (serde_json, safetensors, tokenizers, toml) and ours, keeps it.
const UNINSTRUMENTED: &[&str] = &["burn", "cubecl", "cubek", "gemm", "pulp", "macerator"];

fn instrumented(crate_name: &str, crate_type: Option<&str>) -> bool {
    if crate_type == Some("bin") && TARGETS.contains(&crate_name) {
        return true;
    }
    !UNINSTRUMENTED
        .iter()
        .any(|p| crate_name == *p || crate_name.starts_with(&format!("{p}_")))
}

/// The arguments of a rustc call with cargo-fuzz's coverage flags (`-Cpasses=sancov-module`,
/// `-Cllvm-args=-sanitizer-coverage-*`) taken out unless the crate is [`instrumented`]; the
/// crates left uninstrumented are also built at `opt-level=1` instead of 3 (their speed does
/// not matter to a parser's fuzzing; their build time does).
fn rustc_args(args: Vec<String>) -> Vec<String> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let name = value("--crate-name").unwrap_or("");
    if instrumented(name, value("--crate-type")) {
        return args;
    }
    let coverage =
        |a: &str| a == "-Cpasses=sancov-module" || a.starts_with("-Cllvm-args=-sanitizer-coverage");
    args.iter()
        .filter(|a| !coverage(a))
        .map(|a| match a.as_str() {
            "opt-level=3" => "opt-level=1".to_string(),
            "-Copt-level=3" => "-Copt-level=1".to_string(),
            _ => a.clone(),
        })
        .collect()
}

/// xtask as the fuzz build's `RUSTC_WRAPPER`: runs the rustc it is given with [`rustc_args`].
pub fn wrap_rustc() -> ! {
    let mut args = std::env::args().skip(1);
    let Some(rustc) = args.next() else {
        eprintln!("{WRAPPER_ENV} is set but no rustc was given to wrap");
        std::process::exit(2);
    };
    let status = Command::new(&rustc)
        .args(rustc_args(args.collect()))
        .status()
        .unwrap_or_else(|e| {
            eprintln!("starting {rustc}: {e}");
            std::process::exit(2)
        });
    std::process::exit(status.code().unwrap_or(1));
}

/// `cargo fuzz` on a toolchain that accepts its unstable flags.
fn cargo_fuzz(root: &Path) -> Command {
    let nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nightly"));
    let mut cmd = Command::new("cargo");
    if nightly {
        cmd.arg("+nightly");
    } else {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    // `cargo xtask` runs under the stable toolchain's cargo; its variables would pin the child
    // to that toolchain.
    for v in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "RUSTDOC"] {
        cmd.env_remove(v);
    }
    if let Ok(me) = std::env::current_exe() {
        cmd.env("RUSTC_WRAPPER", me).env(WRAPPER_ENV, "1");
    }
    cmd.current_dir(root).arg("fuzz");
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        super::run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            "0.13.2",
        ]))?;
    }
    Ok(())
}

/// What libFuzzer's `-print_final_stats=1` reported.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    execs: u64,
    per_sec: u64,
    peak_rss_mb: u64,
}

fn stats(log: &str) -> Stats {
    let get = |key: &str| {
        log.lines()
            .rev()
            .filter_map(|l| l.strip_prefix(key))
            .find_map(|v| v.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0)
    };
    Stats {
        execs: get("stat::number_of_executed_units"),
        per_sec: get("stat::average_exec_per_sec"),
        peak_rss_mb: get("stat::peak_rss_mb"),
    }
}

pub fn fuzz(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let root = super::root();
    ensure_cargo_fuzz()?;
    super::run(cargo_fuzz(&root).arg("build").args(FLAGS))?;
    if let Some((target, file)) = &o.replay {
        return super::run(
            cargo_fuzz(&root)
                .arg("run")
                .args(FLAGS)
                .args([target, file])
                .args(["--", "-runs=1"]),
        );
    }
    let logs = root.join("fuzz/logs");
    std::fs::create_dir_all(&logs)?;
    let limit = match (o.secs, o.runs) {
        (_, Some(n)) => format!("-runs={n}"),
        (s, None) => format!("-max_total_time={}", s.unwrap_or(30)),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut crashed = Vec::new();
    for (i, t) in o.targets.iter().enumerate() {
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let log_path = logs.join(format!("{t}.log"));
        let log = std::fs::File::create(&log_path)?;
        let eta = match o.runs {
            None => format!(
                ", about {} s left",
                (o.targets.len() - i) as u64 * o.secs.unwrap_or(30)
            ),
            Some(_) => String::new(),
        };
        eprintln!(
            "[{}/{}] fuzzing `{t}` ({limit}){eta}; log: {}",
            i + 1,
            o.targets.len(),
            log_path.display()
        );
        let t0 = Instant::now();
        let status = cargo_fuzz(&root)
            .arg("run")
            .args(FLAGS)
            .arg(t)
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(t))
            .args([
                "--",
                &limit,
                // A hang is a finding too.
                "-timeout=10",
                "-print_final_stats=1",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting cargo fuzz run {t}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let s = stats(&text);
        if !status.success() {
            let artifact = text
                .lines()
                .find_map(|l| l.split("Test unit written to ").nth(1))
                .unwrap_or("(see the log)")
                .to_string();
            crashed.push(format!("{t}: {artifact} (log {})", log_path.display()));
        }
        rows.push((t.clone(), s, t0.elapsed().as_secs(), status.success()));
    }
    println!(
        "\n| target | executions | exec/s | peak RSS MB | seconds | result |\n|---|---:|---:|---:|---:|---|"
    );
    for (t, s, secs, ok) in &rows {
        println!(
            "| {t} | {} | {} | {} | {secs} | {} |",
            s.execs,
            s.per_sec,
            s.peak_rss_mb,
            if *ok { "0 crashes" } else { "CRASH" }
        );
    }
    println!("(total {} s)", started.elapsed().as_secs());
    if !crashed.is_empty() {
        bail!(
            "fuzzing found {} crash(es):\n  {}\nreplay with `cargo xtask fuzz --replay TARGET FILE`",
            crashed.len(),
            crashed.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_crates_and_the_targets_get_coverage_instrumentation() {
        let call = |name: &str, ty: &str| -> Vec<String> {
            [
                "--crate-name",
                name,
                "--crate-type",
                ty,
                "-Cpasses=sancov-module",
                "-Cllvm-args=-sanitizer-coverage-level=4",
                "-Cllvm-args=-sanitizer-coverage-trace-compares",
                "--cfg",
                "fuzzing",
                "-Cdebug-assertions",
                "-C",
                "opt-level=3",
            ]
            .map(String::from)
            .to_vec()
        };
        for (name, ty) in [
            ("puzzle_core", "lib"),
            ("gguf", "bin"),
            ("safetensors", "lib"),
            ("serde_json", "lib"),
            ("burnish", "lib"),
        ] {
            assert_eq!(rustc_args(call(name, ty)), call(name, ty), "{name}");
        }
        for (name, ty) in [
            ("burn_flex", "lib"),
            ("gemm", "lib"),
            ("cubecl_common", "lib"),
        ] {
            let kept = rustc_args(call(name, ty));
            assert!(
                !kept
                    .iter()
                    .any(|a| a.contains("sancov") || a.contains("sanitizer-coverage")),
                "{kept:?}"
            );
            assert!(
                kept.contains(&"fuzzing".to_string())
                    && kept.contains(&"-Cdebug-assertions".to_string())
            );
            assert!(
                kept.contains(&"opt-level=1".to_string())
                    && !kept.contains(&"opt-level=3".to_string())
            );
        }
    }

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#1024 pulse cov: 10\nstat::number_of_executed_units: 123456\n\
                   stat::average_exec_per_sec:     4115\nstat::new_units_added:          3\n\
                   stat::peak_rss_mb:              87\n";
        assert_eq!(
            stats(log),
            Stats {
                execs: 123456,
                per_sec: 4115,
                peak_rss_mb: 87
            }
        );
        assert_eq!(stats("no stats here"), Stats::default());
    }

    #[test]
    fn flags_are_checked() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&a(&["--secs", "5", "gguf"])).unwrap();
        assert_eq!((o.secs, o.targets), (Some(5), vec!["gguf".to_string()]));
        assert_eq!(parse(&a(&[])).unwrap().targets.len(), TARGETS.len());
        assert!(parse(&a(&["--secs", "x"])).is_err());
        assert!(parse(&a(&["--secs", "1", "--runs", "2"])).is_err());
        let e = parse(&a(&["nope"])).err().unwrap().to_string();
        assert!(
            e.contains("unknown fuzz target") && e.contains("gguf"),
            "{e}"
        );
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        let root = super::super::root();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} not in fuzz/Cargo.toml"
            );
            assert!(root.join(format!("fuzz/fuzz_targets/{t}.rs")).is_file());
            let seeds = std::fs::read_dir(root.join("fuzz/seeds").join(t)).unwrap();
            assert!(seeds.count() > 0, "{t} has no seeds");
        }
    }
}
