//! Coupled BLD after a decoupled search, end to end on the tiny parent with a narrowed search
//! space (`[bld.couple_prominent]`): the decoupled pass keeps its own artifacts, the pairs of
//! its most chosen variants are trained as whole blocks in every layer under the same BLD
//! provenance as the decoupled entries (so those are not trained again), the final block table
//! offers them, and a restart of the finished run changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;

mod common;
use common::root;

use assert_cmd::cargo::CommandCargoExt;

fn write_config(dir: &Path) -> PathBuf {
    let zoo = root().join("model-zoo");
    let cfg = format!(
        r#"
[parent]
path = "{zoo}/tiny-parent"
[data]
paths = ["{zoo}/corpora/kjv.txt.gz"]
validation_fraction = 0.05
test_fraction = 0.05
[space]
attention = ["gqa", "noop"]
ffn = ["width", "noop"]
ffn_fractions = [0.5, 0.25]
granularity = 256
[bld]
tokens = 2048
seq_len = 32
batch_size = 4
checkpoint_every = 8
eval_sequences = 4
calibration_sequences = 4
[bld.couple_prominent]
attention = 2
ffn = 2
[deployment]
hardware = "h100-sxm"
batch_sizes = [1]
prefill_len = 16
generation_len = 8
[cost]
model = "roofline"
[score]
sequences = 4
seq_len = 32
batch_size = 4
[search]
constraints = ["params<=0.6x"]
[distill]
tokens = 1024
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
"#,
        zoo = zoo.display()
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

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .unwrap()
}

/// Every finished library entry's meta.json.
fn metas(library: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for l in std::fs::read_dir(library).unwrap().flatten() {
        for e in std::fs::read_dir(l.path()).unwrap().flatten() {
            let m = e.path().join("meta.json");
            if m.is_file() {
                out.push(json(&m));
            }
        }
    }
    out.sort_by_key(|m| m["key"].to_string());
    out
}

/// (attention, FFN) variant ids of a solution's layers.
fn chosen(solution: &serde_json::Value) -> Vec<(String, String)> {
    solution["solution"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c[1].as_str().unwrap().trim_start_matches("coupled ");
            let (a, f) = id.split_once(" + ").unwrap();
            (a.to_string(), f.to_string())
        })
        .collect()
}

#[test]
fn coupled_bld_after_a_decoupled_search_trains_the_most_chosen_pairs_and_searches_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let r = dir.path().join("run");
    let o = run(&cfg, &r);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("coupled BLD after the decoupled search"),
        "{err}"
    );

    // The decoupled pass's artifacts are its own.
    for f in [
        "costs.json",
        "scores.json",
        "search/table.json",
        "search/solution.json",
    ] {
        assert!(r.join("decoupled").join(f).is_file(), "decoupled/{f}");
        assert!(r.join(f).is_file(), "{f}");
    }
    let first = json(&r.join("decoupled/search/solution.json"));
    let picked = chosen(&first);
    let (attns, ffns): (BTreeSet<_>, BTreeSet<_>) = (
        picked.iter().map(|p| p.0.clone()).collect(),
        picked.iter().map(|p| p.1.clone()).collect(),
    );

    // Coupled entries: pairs of variants the decoupled search chose, each in every layer,
    // trained, under the same BLD provenance as the decoupled entries.
    let all = metas(&r.join("library"));
    let layers = 6;
    let pairs: BTreeSet<(String, String)> = all
        .iter()
        .filter(|m| m["key"]["variants"].as_array().unwrap().len() == 2)
        .map(|m| {
            let v = m["key"]["variants"].as_array().unwrap();
            (
                v[0].as_str().unwrap().to_string(),
                v[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!pairs.is_empty(), "no coupled entries: {err}");
    assert!(pairs.len() <= 4, "{pairs:?}");
    for (a, f) in &pairs {
        assert!(
            attns.contains(a) && ffns.contains(f),
            "pair {a} + {f} is not of the decoupled search's choices {picked:?}"
        );
        let n = all
            .iter()
            .filter(|m| {
                let v = m["key"]["variants"].as_array().unwrap();
                v.len() == 2 && v[0] == a.as_str() && v[1] == f.as_str()
            })
            .count();
        assert_eq!(n, layers, "{a} + {f} in {n} layers");
    }
    let trained: Vec<&serde_json::Value> = all
        .iter()
        .filter(|m| m["key"]["variants"].as_array().unwrap().len() == 2 && m["source"] == "trained")
        .collect();
    assert!(!trained.is_empty(), "no coupled entry was trained");
    for m in &trained {
        assert!(
            m["nmse_final"].as_f64().unwrap() <= m["nmse_init"].as_f64().unwrap(),
            "{m}"
        );
    }
    let hashes: BTreeSet<&str> = all
        .iter()
        .map(|m| m["config_hash"].as_str().unwrap())
        .collect();
    assert_eq!(
        hashes.len(),
        1,
        "entries under different BLD provenance: {hashes:?}"
    );

    // The final table offers the coupled blocks; the final search is over it.
    let table = std::fs::read_to_string(r.join("search/table.json")).unwrap();
    assert!(
        table.contains("\"coupled "),
        "no coupled block in the final table"
    );
    let first_table = std::fs::read_to_string(r.join("decoupled/search/table.json")).unwrap();
    assert!(!first_table.contains("\"coupled "));
    assert!(r.join("child/config.json").is_file());

    // Restarting the finished run trains, measures and searches nothing again.
    let before: Vec<String> = ["costs.json", "scores.json", "search/solution.json"]
        .iter()
        .chain(&["decoupled/costs.json", "decoupled/search/solution.json"])
        .map(|f| std::fs::read_to_string(r.join(f)).unwrap())
        .collect();
    let o = run(&cfg, &r);
    let again = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{again}");
    assert!(again.contains("already trained"), "{again}");
    let after: Vec<String> = ["costs.json", "scores.json", "search/solution.json"]
        .iter()
        .chain(&["decoupled/costs.json", "decoupled/search/solution.json"])
        .map(|f| std::fs::read_to_string(r.join(f)).unwrap())
        .collect();
    assert!(before == after, "a restart changed the stages' artifacts");
    assert_eq!(metas(&r.join("library")), all);
}
