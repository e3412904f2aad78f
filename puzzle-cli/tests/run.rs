//! `puzzle run` end to end on the tiny-llama fixture: killed at least once in every stage and
//! restarted, it ends with the same artifacts as an uninterrupted run; bad configs are refused
//! before any work.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

mod common;
use common::root;

use assert_cmd::cargo::CommandCargoExt;

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    common::write_small_corpus(dir);
    let cfg = format!(
        r#"
[parent]
path = "{}"
[data]
paths = ["corpus.txt"]
validation_fraction = 0.1
test_fraction = 0.1
[space]
granularity = 32
ffn_fractions = [0.5]
[bld]
tokens = 16384
seq_len = 32
batch_size = 4
checkpoint_every = 8
eval_sequences = 4
calibration_sequences = 4
[deployment]
hardware = "h100-sxm"
batch_sizes = [1, 4]
prefill_len = 16
generation_len = 8
[cost]
model = "roofline"
[score]
sequences = 4
seq_len = 32
batch_size = 4
[search]
constraints = ["params<=0.8x"]
[distill]
tokens = 8192
seq_len = 32
batch_size = 4
checkpoint_every = 8
[baselines]
kinds = []
[eval]
sequences = 4
seq_len = 32
batch_size = 4
speed_repeats = 1
{extra}
"#,
        root().join("fixtures/hf/tiny-llama").display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn run(cfg: &Path, dir: &Path) -> std::process::Output {
    Proc::cargo_bin("puzzle")
        .unwrap()
        .arg("run")
        .arg(cfg)
        .arg("--run")
        .arg(dir)
        .output()
        .unwrap()
}

/// The artifacts that must not depend on interruptions (timings excluded).
fn artifacts(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut walk = vec![dir.join("library")];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk.push(p);
            } else if p.file_name().unwrap() == "weights.safetensors" {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    format!("{:?}", std::fs::read(&p).unwrap()),
                ));
            } else if p.file_name().unwrap() == "meta.json" {
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["seconds"] = serde_json::Value::Null;
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    v.to_string(),
                ));
            }
        }
    }
    let mut scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    scores["seconds"] = serde_json::Value::Null;
    out.push(("scores".into(), scores.to_string()));
    out.push((
        "costs".into(),
        std::fs::read_to_string(dir.join("costs.json")).unwrap(),
    ));
    let sol: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("search/solution.json")).unwrap())
            .unwrap();
    out.push(("choices".into(), sol["solution"]["choices"].to_string()));
    out.push(("objective".into(), sol["solution"]["objective"].to_string()));
    out.push((
        "child".into(),
        format!(
            "{:?}",
            std::fs::read(dir.join("child/model.safetensors")).unwrap()
        ),
    ));
    out.push((
        "child config".into(),
        std::fs::read_to_string(dir.join("child/config.json")).unwrap(),
    ));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval/report.json")).unwrap())
            .unwrap();
    for m in eval["models"].as_array().unwrap() {
        out.push((
            format!("eval {}", m["name"]),
            format!("{} {}", m["lm"], m["agreement"]),
        ));
    }
    out.sort();
    out
}

#[test]
fn killed_in_every_stage_it_finishes_with_the_same_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let reference = dir.path().join("reference");
    let o = run(&cfg, &reference);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(reference.join("report/README.md").is_file());
    // The child for llama.cpp beside the HF folder, or the reason it cannot be there.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        reference.join("child/model.gguf").is_file()
            || err.contains("cannot load a linear FFN")
            || err.contains("sliding window"),
        "{err}"
    );
    // The child's model card: its layers beside the parent's, the measured numbers, the licence.
    let card = std::fs::read_to_string(reference.join("child/README.md")).unwrap();
    assert!(
        card.starts_with("---\nlicense: ")
            && card.contains("| 0 | attn:gqa(kv=")
            && card.contains("| child | ")
            && card.contains("## Licence"),
        "{card}"
    );
    let want = artifacts(&reference);

    // Milestones in pipeline order; each kill lands in the stage after one appears.
    let killed = dir.path().join("killed");
    let milestones: Vec<(&str, Milestone)> = vec![
        (
            "bld",
            Box::new(|d: &Path| has_file(&d.join("library"), "state.json")),
        ),
        (
            "cost",
            Box::new(|d: &Path| {
                d.join("library").exists()
                    && has_file(&d.join("library"), "meta.json")
                    && !has_file(&d.join("library"), "state.json")
            }),
        ),
        ("score", Box::new(|d: &Path| d.join("costs.json").exists())),
        (
            "search",
            Box::new(|d: &Path| d.join("scores.json").exists()),
        ),
        (
            "distill",
            Box::new(|d: &Path| has_file(&d.join("distill"), "state.json")),
        ),
        (
            "eval",
            Box::new(|d: &Path| d.join("child/config.json").exists()),
        ),
    ];
    let mut kills = Vec::new();
    for (stage, reached) in &milestones {
        let mut child = Proc::cargo_bin("puzzle")
            .unwrap()
            .arg("run")
            .arg(&cfg)
            .arg("--run")
            .arg(&killed)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        loop {
            if reached(&killed) {
                child.kill().unwrap();
                child.wait().unwrap();
                kills.push(*stage);
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "stage {stage} never reached"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(kills.len() >= 5, "kills landed in {kills:?}");
    let o = run(&cfg, &killed);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = artifacts(&killed);
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "different artifacts");
    let differ: Vec<&String> = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| &a.0)
        .collect();
    assert!(
        differ.is_empty(),
        "after kills at {kills:?} these differ from an uninterrupted run: {differ:?}"
    );
}

/// A condition on the run folder.
type Milestone = Box<dyn Fn(&Path) -> bool>;
/// A change to a config's text.
type Edit = Box<dyn Fn(&str) -> String>;

fn has_file(dir: &Path, name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_file(&p, name)
        } else {
            p.file_name().is_some_and(|n| n == name)
        }
    })
}

/// A GKD step whose loss is not finite stops the run with the step named, before the
/// optimiser writes anything; the stages before it keep their artifacts, so the rerun with a
/// sane learning rate picks up at distillation.
#[test]
fn a_diverging_distillation_stops_with_an_error_and_a_rerun_reuses_the_earlier_stages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let sane = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, sane.replace("[distill]\n", "[distill]\nlr = 1e30\n")).unwrap();
    let run_dir = dir.path().join("run");
    let o = run(&cfg, &run_dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("distillation diverged at step") && err.contains("lower [distill] lr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !run_dir.join("child/config.json").exists(),
        "no child from a diverged run"
    );
    std::fs::write(&cfg, sane).unwrap();
    let o = run(&cfg, &run_dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("already trained"), "BLD was redone: {err}");
}

/// `puzzle ablate` runs the main run, then each ablation in its own folder with one switch:
/// the library comes from the main run by hard link (not trained again), the no-GKD row reuses
/// the main search, and the report tables every row. An unknown ablation is refused before any
/// work.
#[test]
fn ablations_run_beside_the_main_run_and_reuse_what_their_switch_leaves() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    let ablate = |only: &str| {
        Proc::cargo_bin("puzzle")
            .unwrap()
            .arg("ablate")
            .arg(&cfg)
            .arg("--run")
            .arg(&run_dir)
            .args(["--only", only])
            .output()
            .unwrap()
    };
    let o = ablate("greedy,no-mip");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--only no-mip: no such ablation"), "{err}");
    assert!(!run_dir.exists(), "work before the refusal");
    let o = ablate("greedy,no-gkd");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let greedy = run_dir.join("ablations/greedy");
    let no_gkd = run_dir.join("ablations/no-gkd");
    let g: toml::Value = toml::from_str(&read(greedy.join("config.toml"))).unwrap();
    assert_eq!(g["search"]["solver"].as_str(), Some("greedy"));
    let n: toml::Value = toml::from_str(&read(no_gkd.join("config.toml"))).unwrap();
    assert_eq!(n["distill"]["tokens"].as_integer(), Some(0));
    // Every library file is the main run's, linked into both ablations.
    let meta = walk(&run_dir.join("library"))
        .into_iter()
        .find(|p| p.ends_with("weights.safetensors"))
        .expect("a trained entry");
    assert!(std::fs::metadata(&meta).unwrap().nlink() >= 3, "{meta:?}");
    // No GKD: the main run's search reused (the very file, not a search that came out the
    // same), so the same architecture, and no distillation record.
    let inode = |p: PathBuf| std::fs::metadata(&p).unwrap().ino();
    assert_eq!(
        inode(no_gkd.join("search/solution.json")),
        inode(run_dir.join("search/solution.json"))
    );
    assert_ne!(
        inode(greedy.join("search/solution.json")),
        inode(run_dir.join("search/solution.json")),
        "the greedy row searched again"
    );
    let eval = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&read(d.join("eval/report.json"))).unwrap()
    };
    let (main, ng) = (eval(&run_dir), eval(&no_gkd));
    assert!(main["models"][1]["distill"].is_object(), "{main}");
    assert!(ng["models"][1]["distill"].is_null(), "{ng}");
    assert_eq!(main["models"][1]["layers"], ng["models"][1]["layers"]);
    // The table, on stdout and in the main run's report.
    let out = String::from_utf8_lossy(&o.stdout);
    let md = read(run_dir.join("report/README.md"));
    for text in [&*out, &md] {
        for row in ["| puzzle |", "| greedy |", "| no-gkd |"] {
            assert!(text.contains(row), "{row}: {text}");
        }
    }
    assert!(md.contains("## Ablations"), "{md}");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_configs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown variant",
            Box::new(|c: &str| {
                c.replace(
                    "ffn_fractions = [0.5]",
                    "ffn_fractions = [0.5]\nextra = [\"ffn:lowrank(r=4)\"]",
                )
            }),
            "ffn:lowrank(r=4)",
        ),
        (
            "impossible constraint",
            Box::new(|c: &str| c.replace("params<=0.8x", "params<=0.01x")),
            "cannot be met",
        ),
        (
            "unknown metric",
            Box::new(|c: &str| c.replace("params<=0.8x", "speed>=2x")),
            "unknown metric `speed`",
        ),
        (
            "missing corpus",
            Box::new(|c: &str| c.replace("corpus.txt", "nowhere.txt")),
            "nowhere.txt",
        ),
        (
            "no speed passes",
            Box::new(|c: &str| {
                c.replace("speed_repeats = 1", "speed_repeats = 1\nspeed_passes = 0")
            }),
            "[eval] speed_passes = 0: must be 1 to 50",
        ),
        (
            "not a llama",
            Box::new(|c: &str| c.replace("tiny-llama\"", "not-a-llama\"")),
            "GPT2LMHeadModel",
        ),
    ];
    for (name, edit, why) in cases {
        let sub = dir.path().join(name.replace(' ', "_"));
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = write_config(&sub, "");
        let mut text = edit(&std::fs::read_to_string(&cfg).unwrap());
        if name == "not a llama" {
            let fake = sub.join("not-a-llama");
            std::fs::create_dir_all(&fake).unwrap();
            std::fs::write(
                fake.join("config.json"),
                r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#,
            )
            .unwrap();
            text = text.replace(
                &root().join("fixtures/hf/not-a-llama").display().to_string(),
                &fake.display().to_string(),
            );
        }
        std::fs::write(&cfg, text).unwrap();
        let out = sub.join("run");
        let o = run(&cfg, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{name}: {err}");
        assert!(!out.join("library").exists(), "{name}: work started");
    }
}

#[test]
fn baselines_matched_to_an_old_child_are_rebuilt_for_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("kinds = []", "kinds = [\"layer_removal\"]");
    std::fs::write(&cfg, &text).unwrap();
    let out = dir.path().join("run");
    let record = out.join("baselines/layer_removal/baseline.json");
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let o = run(&cfg, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = read(&record);
    let first_choices = read(&out.join("search/solution.json"))["solution"]["choices"].clone();
    // A different [search] gives a different child; its baseline must be matched to it.
    std::fs::write(&cfg, text.replace("params<=0.8x", "params<=0.55x")).unwrap();
    let o = run(&cfg, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let choices = read(&out.join("search/solution.json"))["solution"]["choices"].clone();
    assert_ne!(
        choices, first_choices,
        "the new constraint must change the child"
    );
    // Rebuilt, not reused: the old code kept any baseline whose files existed.
    assert!(
        !err.lines()
            .any(|l| l.starts_with("baseline layer_removal:") && l.ends_with("is up to date")),
        "{err}"
    );
    let second = read(&record);
    assert_ne!(first["provenance"], second["provenance"], "{err}");
}

#[test]
fn a_llamacpp_run_measures_there_leaves_out_what_it_cannot_run_and_its_gguf_generates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "[deployment]\n",
            "[deployment]\nengine = \"llamacpp\"\nweight_dtype = \"fp32\"\nkv_dtype = \"fp32\"\n",
        )
        .replace("model = \"roofline\"", "model = \"measured\"");
    std::fs::write(&cfg, text).unwrap();
    let run_dir = dir.path().join("run");
    let o = run(&cfg, &run_dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("not in the search space: ffn:linear: llamacpp cannot run a linear FFN"),
        "{err}"
    );
    let costs = std::fs::read_to_string(run_dir.join("costs.json")).unwrap();
    assert!(!costs.contains("\"ffn:linear\""));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("eval/report.json")).unwrap())
            .unwrap();
    assert!(
        eval["engine"].as_str().unwrap().starts_with("llamacpp ("),
        "{eval}"
    );
    let speed = &eval["models"][1]["speed"][0];
    assert!(speed["rounds"].as_u64().unwrap() >= 5, "{speed}");
    let [lo, hi] = [0, 1].map(|i| speed["decode_throughput_range"][i].as_f64().unwrap());
    let median = speed["decode_throughput"].as_f64().unwrap();
    assert!(lo <= median && median <= hi, "{speed}");
    // Speed-ups are paired round by round with the parent, which has no pairing of its own.
    let paired = &speed["paired"];
    let [lo, hi] = [0, 1].map(|i| paired["decode_throughput_range"][i].as_f64().unwrap());
    let ratio = paired["decode_throughput"].as_f64().unwrap();
    assert!(0.0 < lo && lo <= ratio && ratio <= hi, "{speed}");
    // The example's rounds come in 3 passes spread over the quality scoring, each pass with its
    // own median ratio inside the rounds' range, and the verdict gives their spread.
    let passes = paired["passes"].as_array().expect("per-pass ratios");
    assert_eq!(passes.len(), 3, "{speed}");
    // 5 rounds in 3 passes: 2 each.
    assert_eq!(speed["rounds"].as_u64(), Some(6), "{speed}");
    let report = std::fs::read_to_string(run_dir.join("report/README.md")).unwrap();
    assert!(report.contains("over passes)"), "{report}");
    assert!(
        eval["models"][0]["speed"][0].get("paired").is_none(),
        "{eval}"
    );
    // Nothing llama.cpp cannot load was searched, so the child is there as a GGUF, and a
    // llama-simple-like greedy generation runs it with the GGUF's own tokenizer.
    let gguf = run_dir.join("child/model.gguf");
    assert!(gguf.is_file(), "{err}");
    // The run's child in llama.cpp computes the logits our forward does (f32 everywhere).
    puzzle_llama_ops::link();
    let device = puzzle_core::burn::tensor::Device::flex();
    let ours = puzzle_core::model::load_model(&run_dir.join("child"), &device).unwrap();
    let cpp = puzzle_llamacpp::LlamaCpp::load(&gguf, 2).unwrap();
    let ids: Vec<u32> = (0..24)
        .map(|i| (i * 37 + 3) % ours.spec.vocab_size as u32)
        .collect();
    let theirs = cpp.logits(&ids).unwrap();
    let mine = puzzle_core::weights::HostTensor::from_tensor(&ours.decoder.forward(
        puzzle_core::nn::ids_tensor(std::slice::from_ref(&ids), &device),
    ));
    let v = ours.spec.vocab_size;
    let worst = theirs
        .iter()
        .enumerate()
        .flat_map(|(t, row)| {
            row.iter()
                .zip(&mine.data[t * v..(t + 1) * v])
                .map(|(a, b)| (a - b).abs())
        })
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-4,
        "child logits: llama.cpp vs ours differ by {worst}"
    );
    let g = Proc::cargo_bin("puzzle")
        .unwrap()
        .args([
            "generate",
            gguf.to_str().unwrap(),
            "--prompt",
            "the",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
        ])
        .output()
        .unwrap();
    let gerr = String::from_utf8_lossy(&g.stderr);
    assert!(g.status.success(), "{gerr}");
    assert!(String::from_utf8_lossy(&g.stdout).starts_with("the"));
    assert!(
        gerr.contains("6 new tokens") && gerr.contains("llama.cpp"),
        "{gerr}"
    );
}
