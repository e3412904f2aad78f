//! How far a measured speed-up wanders between independent measurements of the same models,
//! measured the way the pipeline measures (the parent and the models round-robin, one warm-up
//! round, then `--rounds` rounds; llama.cpp, every core). This is the noise that a search
//! round's check, the baselines' matching and the final evaluation each carry, and that the
//! search's aim margin has to cover.
//!
//! For each of `--repeats` measurements it prints, per model, two estimators of its decode
//! speed-up over the parent: the ratio of the medians and the median of the per-round ratios
//! (each round's model time over the same round's parent time, so that a machine slowing down
//! for a while hits both sides of a ratio); then each estimator's spread over the repeats.
//!
//! Run: `cargo bench -p puzzle-llama-ops --features llamacpp --bench repeat -- PARENT.gguf
//! MODEL.gguf... [--batch 1] [--rounds 9] [--repeats 8]`, e.g. a run's `child/model.gguf`
//! against the parent exported with `puzzle export gguf model-zoo/tiny-parent parent.gguf
//! --type f32`.

use std::path::PathBuf;

use puzzle_core::eval::speed::median;
use puzzle_llamacpp::LlamaCpp;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut paths, mut batch, mut rounds, mut repeats) = (Vec::new(), 1, 9, 8);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a whole number"))
        };
        match a.as_str() {
            "--batch" => batch = num("--batch"),
            "--rounds" => rounds = num("--rounds"),
            "--repeats" => repeats = num("--repeats"),
            _ => paths.push(a),
        }
    }
    if paths.len() < 2 {
        eprintln!("usage: repeat PARENT.gguf MODEL.gguf... [--batch B] [--rounds R] [--repeats N]");
        std::process::exit(2);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let models: Vec<LlamaCpp> = paths
        .iter()
        .map(|p| LlamaCpp::load(&PathBuf::from(p), threads).expect("llama.cpp loads it"))
        .collect();
    let (prefill, steps) = (128, 63);
    println!(
        "# decode speed-ups over {}: batch {batch}, {threads} threads, {rounds} rounds per measurement, {repeats} measurements, {} models round-robin\n",
        paths[0],
        models.len()
    );
    println!(
        "| measurement | model | parent tok/s | model tok/s | ratio of medians | median of per-round ratios |\n|---|---|---|---|---|---|"
    );
    // Per model after the parent: per estimator, one value per measurement.
    let mut est = vec![[Vec::new(), Vec::new()]; models.len() - 1];
    for rep in 0..repeats {
        // Decode tokens/s per model, per round.
        let mut d = vec![Vec::new(); models.len()];
        for round in 0..=rounds {
            for (i, m) in models.iter().enumerate() {
                let (p, total) = m.request(batch, prefill, steps).expect("a request");
                if round > 0 {
                    d[i].push((batch * steps) as f64 / ((total - p) / 1e3));
                }
            }
        }
        for (k, e) in est.iter_mut().enumerate() {
            let m = &d[k + 1];
            let paired: Vec<f64> = m.iter().zip(&d[0]).map(|(m, p)| m / p).collect();
            let r = [median(m.clone()) / median(d[0].clone()), median(paired)];
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.3}x | {:.3}x |",
                rep + 1,
                paths[k + 1],
                median(d[0].clone()),
                median(m.clone()),
                r[0],
                r[1]
            );
            e[0].push(r[0]);
            e[1].push(r[1]);
        }
    }
    println!(
        "\n| model | estimator | min | median | max | (max - min) / median |\n|---|---|---|---|---|---|"
    );
    for (k, e) in est.into_iter().enumerate() {
        for (name, v) in ["ratio of medians", "median of per-round ratios"]
            .iter()
            .zip(e)
        {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            let mid = median(v);
            println!(
                "| {} | {name} | {lo:.3}x | {mid:.3}x | {hi:.3}x | {:.1}% |",
                paths[k + 1],
                (hi - lo) / mid * 100.0
            );
        }
    }
}
