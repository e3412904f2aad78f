//! `puzzle report RUN`: a self-contained folder (Markdown + SVG) of what a run measured.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use puzzle_core::kinds::SpeedMetric;
use puzzle_core::search::BlockTable;
use puzzle_core::search::mip::SolveOptions;
use puzzle_core::search::run::sweep;
use puzzle_core::search::{BoundValue, Op};
use puzzle_pipeline::evaluate::verdicts;

use crate::runs::{run_constraints, speed_at};
use puzzle_pipeline::pipeline::{ChosenSolution, EvalReport, ModelEval};

/// Short label of a variant id for the architecture map.
fn short(id: &str) -> String {
    let v = id.split_once(':').map_or(id, |x| x.1);
    if let Some(k) = v.strip_prefix("gqa(kv=") {
        format!("kv{}", k.trim_end_matches(')'))
    } else if let Some(w) = v.strip_prefix("width(") {
        format!("w{}", w.trim_end_matches(')'))
    } else if v == "noop" {
        "—".into()
    } else if v == "linear" {
        "lin".into()
    } else {
        v.to_string()
    }
}

fn color(id: &str, parent: &str) -> RGBColor {
    if id == parent {
        RGBColor(40, 70, 140)
    } else if id.ends_with("noop") {
        RGBColor(245, 245, 245)
    } else if id.ends_with("linear") {
        RGBColor(250, 200, 120)
    } else {
        RGBColor(120, 170, 220)
    }
}

fn architecture_svg(path: &Path, child: &ModelEval, parent: &ModelEval) -> Result<()> {
    let layers = child.layers.len();
    let cell = 56;
    let w = (layers as u32 + 2) * cell;
    let root = SVGBackend::new(path, (w.max(400), 190)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(
        "Child architecture (dark: parent's own subblock)",
        (10, 12),
        ("sans-serif", 14),
    ))?;
    for (row, label) in ["attention", "FFN"].iter().enumerate() {
        let y = 40 + row as i32 * 60;
        root.draw(&Text::new(*label, (6, y + 20), ("sans-serif", 12)))?;
        for l in 0..layers {
            let parts: Vec<&str> = child.layers[l].split(" + ").collect();
            let pparts: Vec<&str> = parent.layers[l].split(" + ").collect();
            let (id, pid) = (
                parts[row.min(parts.len() - 1)],
                pparts[row.min(pparts.len() - 1)],
            );
            let x = 70 + l as i32 * cell as i32;
            let c = color(id, pid);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32 - 4, y + 44)],
                c.filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32 - 4, y + 44)],
                BLACK.stroke_width(1),
            ))?;
            let text_color = if id == pid { WHITE } else { BLACK };
            root.draw(&Text::new(
                short(id),
                (x + 6, y + 16),
                ("sans-serif", 12).into_font().color(&text_color),
            ))?;
            if row == 1 {
                root.draw(&Text::new(
                    format!("L{l}"),
                    (x + 14, y + 58),
                    ("sans-serif", 11),
                ))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

#[allow(clippy::type_complexity)]
fn frontier_svg(
    path: &Path,
    frontier: &[(f64, f64)],
    points: &[(String, f64, f64)],
    xlabel: &str,
) -> Result<()> {
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = frontier
        .iter()
        .map(|p| p.0)
        .chain(points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let ymax = frontier
        .iter()
        .map(|p| p.1)
        .chain(points.iter().map(|p| p.2))
        .fold(0.01f64, f64::max)
        // Head room for the legend above the data, a line per series.
        * (1.3 + 0.08 * (points.len() + 1) as f64);
    let mut chart = ChartBuilder::on(&root)
        .caption("Quality vs speed (lower KL is better)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.8f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc("KL(parent || model), nats/token")
        .draw()?;
    if !frontier.is_empty() {
        chart
            .draw_series(LineSeries::new(
                frontier.iter().copied(),
                BLUE.stroke_width(2),
            ))?
            .label("Puzzle frontier (search estimate: predicted speed, sum of block KLs)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        chart.draw_series(
            frontier
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
        )?;
    }
    let colors = [
        RED,
        GREEN,
        MAGENTA,
        BLACK,
        CYAN,
        RGBColor(230, 140, 0),
        RGBColor(120, 60, 20),
        RGBColor(128, 128, 128),
        RGBColor(0, 120, 120),
        RGBColor(150, 0, 200),
    ];
    for (i, (name, x, y)) in points.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(std::iter::once(TriangleMarker::new(
                (*x, *y),
                8,
                c.filled(),
            )))?
            .label(format!("{name} (measured)"))
            .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn speed_svg(path: &Path, bars: &[(String, Option<f64>, f64)], what: &str) -> Result<()> {
    let root = SVGBackend::new(path, (640, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = bars
        .iter()
        .map(|b| b.1.unwrap_or(0.0).max(b.2))
        .fold(1.0f64, f64::max)
        * 1.2;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{what}: predicted vs measured (x parent)"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("speed / parent")
        .draw()?;
    for (i, (name, _, _)) in bars.iter().enumerate() {
        let at = (i as f64 + 0.3, 0.05 * ymax);
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            at,
            ("sans-serif", 13),
        )))?;
    }
    for (i, (_, pred, meas)) in bars.iter().enumerate() {
        let x = i as f64;
        if let Some(p) = pred {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.45, *p)],
                BLUE.mix(0.6).filled(),
            )))?;
        }
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.5, 0.0), (x + 0.8, *meas)],
            RED.mix(0.7).filled(),
        )))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (n as f64, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    root.draw(&Text::new(
        "blue: predicted by the cost tables   red: measured end to end",
        (70, 360),
        ("sans-serif", 12),
    ))?;
    root.present()?;
    Ok(())
}

/// The `license:` of a model folder's README.md front matter (Hugging Face model cards).
fn parent_licence(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("README.md")).ok()?;
    let front = text.strip_prefix("---")?.split("\n---").next()?;
    front.lines().find_map(|l| {
        let v = l.strip_prefix("license:")?.trim().trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// What the report reads from a run folder, and the speed metric it reports.
struct Report<'a> {
    run: &'a Path,
    eval: EvalReport,
    chosen: ChosenSolution,
    table: BlockTable,
    /// The speed metric of the search's constraint (decode throughput unless it said otherwise).
    metric: SpeedMetric,
    /// Its table key at the report's batch size.
    key: String,
    /// The parent's predicted value of it.
    parent_pred: f64,
    /// This run's child, then each finished `puzzle ablate` row (read once, for the table and
    /// the frontier plot).
    ablations: Vec<crate::runs::Row>,
}

impl<'a> Report<'a> {
    fn load(run: &'a Path) -> Result<Self> {
        let eval: EvalReport = puzzle_core::fsutil::read_json(&run.join("eval/report.json"))
            .with_context(|| {
                format!(
                    "{} has no eval/report.json: run `puzzle run` first",
                    run.display()
                )
            })?;
        let chosen: ChosenSolution =
            puzzle_core::fsutil::read_json(&run.join("search/solution.json"))?;
        let table = BlockTable::load(&run.join("search/table.json"))?;
        let b = eval.batch;
        let metric = chosen
            .spec
            .constraints
            .iter()
            .find_map(|c| SpeedMetric::from_key(&c.key))
            .map_or(SpeedMetric::DecodeThroughput, |(m, _)| m);
        let key = chosen
            .spec
            .constraints
            .iter()
            .map(|c| c.key.clone())
            .find(|k| SpeedMetric::from_key(k).is_some())
            .unwrap_or_else(|| metric.key(b));
        let parent = Self::model_in(&eval, "parent")?;
        speed_at(parent, b).with_context(|| format!("the parent has no speed at batch {b}"))?;
        let parent_pred = puzzle_core::search::problem::parent_total(&table, &key)?;
        Ok(Report {
            run,
            eval,
            chosen,
            table,
            metric,
            key,
            parent_pred,
            ablations: crate::runs::ablation_rows(run)?,
        })
    }

    /// Each relative speed target, decided by the final evaluation's measurement.
    fn targets(&self, md: &mut String) -> Result<()> {
        let vs = verdicts(&run_constraints(self.run)?, &self.eval, "child")?;
        if vs.is_empty() {
            return Ok(());
        }
        writeln!(
            md,
            "## Targets (decided by the final evaluation in {}, not by the search)\n",
            self.engine()
        )?;
        writeln!(
            md,
            "| target | child measured | over rounds | over passes | verdict |\n|---|---|---|---|---|"
        )?;
        for v in vs {
            writeln!(
                md,
                "| `{}` | {:.2}x | {:.2}x-{:.2}x | {} | {} |",
                v.constraint,
                v.measured,
                v.range[0],
                v.range[1],
                v.passes
                    .map_or("-".into(), |p| format!("{:.2}x-{:.2}x", p[0], p[1])),
                v.word()
            )?;
        }
        writeln!(md)?;
        Ok(())
    }

    /// The paper's ablations run beside this run (`puzzle ablate`), when there are any.
    fn ablation_section(&self, md: &mut String) -> Result<()> {
        let rows = &self.ablations;
        if rows.len() < 2 {
            return Ok(());
        }
        writeln!(
            md,
            "## Ablations (`puzzle ablate`: each row a run that changes one switch, searched for the same constraints, each child measured in its own final evaluation in {})\n",
            self.engine()
        )?;
        writeln!(md, "{}", crate::runs::ablation_markdown(rows))?;
        Ok(())
    }

    fn model_in<'e>(eval: &'e EvalReport, name: &str) -> Result<&'e ModelEval> {
        eval.models
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no {name} in the eval report"))
    }

    fn model(&self, name: &str) -> Result<&ModelEval> {
        Self::model_in(&self.eval, name)
    }

    /// The engine the evaluation measured in (reports from before engines: burn).
    fn engine(&self) -> String {
        if self.eval.engine.is_empty() {
            "puzzle's own runtime (burn)".into()
        } else {
            self.eval.engine.clone()
        }
    }

    /// Measured speed of `m` over the parent's (paired round by round, as the verdicts).
    fn ratio(&self, m: &ModelEval) -> Option<f64> {
        let b = self.eval.batch;
        let parent = speed_at(Self::model_in(&self.eval, "parent").ok()?, b)?;
        Some(speed_at(m, b)?.over(parent, self.metric).0)
    }

    /// Predicted speed of any evaluated model whose layers are choices of the table.
    fn predicted(&self, m: &ModelEval) -> Option<f64> {
        let idx: Option<Vec<usize>> = self
            .table
            .groups
            .iter()
            .zip(&m.layers)
            .map(|(g, id)| g.choices.iter().position(|c| &c.id == id))
            .collect();
        Some(self.table.total(&idx?, &self.key).ok()? / self.parent_pred)
    }

    /// The quality-vs-predicted-speed frontier: the speed constraint swept over the table.
    fn frontier(&self) -> Result<Vec<(f64, f64)>> {
        let spec = puzzle_core::search::SearchSpec {
            objective: self.chosen.spec.objective.clone(),
            constraints: vec![],
        };
        let values: Vec<BoundValue> = (0..12)
            .map(|i| BoundValue::Relative(1.0 + 0.25 * i as f64))
            .collect();
        let solvers = &crate::registry::plugins().solvers;
        let solver = solvers.get("bnb").or_else(|_| solvers.get("highs"))?;
        let opts = SolveOptions::default();
        let pts = sweep(
            &self.table,
            &spec,
            solver,
            &opts,
            &self.key,
            Op::Ge,
            &values,
        )?;
        Ok(pts
            .iter()
            .filter_map(|p| {
                let s = p.solution.as_ref()?;
                Some((s.costs[&self.key] / self.parent_pred, s.objective))
            })
            .collect())
    }

    /// (model, predicted, measured) speed of every model but the parent.
    fn speed_bars(&self) -> Vec<(String, Option<f64>, f64)> {
        self.eval
            .models
            .iter()
            .filter(|m| m.name != "parent")
            .filter_map(|m| Some((m.name.clone(), self.predicted(m), self.ratio(m)?)))
            .collect()
    }

    fn decode(&self) -> bool {
        self.metric == SpeedMetric::DecodeThroughput
    }

    fn plots(&self, out: &Path) -> Result<()> {
        let b = self.eval.batch;
        let mut measured: Vec<(String, f64, f64)> = self
            .eval
            .models
            .iter()
            .filter_map(|m| {
                let kl = m.agreement.as_ref().map_or(0.0, |a| a.kl);
                Some((m.name.clone(), self.ratio(m)?, kl))
            })
            .collect();
        // The ablations' children, each from its own final evaluation (`puzzle ablate`).
        for row in self.ablations.iter().skip(1) {
            if let Some(p) = row.point(self.metric) {
                measured.push((format!("ablation {}", row.name), p.0, p.1));
            }
        }
        let unit = if self.decode() {
            "decode tokens/s"
        } else {
            "generated tokens/s"
        };
        let xlabel = format!("{unit} / parent (batch {b})");
        frontier_svg(
            &out.join("frontier.svg"),
            &self.frontier()?,
            &measured,
            &xlabel,
        )?;
        let (child, parent) = (self.model("child")?, self.model("parent")?);
        architecture_svg(&out.join("architecture.svg"), child, parent)?;
        let what = if self.decode() {
            "decode throughput"
        } else {
            "throughput"
        };
        speed_svg(&out.join("speed.svg"), &self.speed_bars(), what)
    }

    fn quality_table(&self, md: &mut String) -> Result<()> {
        let b = self.eval.batch;
        writeln!(
            md,
            "## Quality and speed (batch {b}, measured end to end in {}, round-robin)\n",
            self.engine()
        )?;
        writeln!(
            md,
            "| model | params | weights | KV/token | throughput tok/s | decode tok/s (min-max over rounds) | speed vs parent | latency ms | val loss | ppl | KL vs parent | top-1 | task acc_norm | retention |"
        )?;
        writeln!(
            md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        for m in &self.eval.models {
            let s = speed_at(m, b);
            let acc = m
                .tasks
                .iter()
                .map(|(n, t)| format!("{n} {:.1}%", 100.0 * t.acc_norm))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                md,
                "| {} | {:.2}M | {:.1} MB | {:.0} B | {} | {} | {} | {} | {:.4} | {:.2} | {} | {} | {} | {} |",
                m.name,
                m.params as f64 / 1e6,
                m.param_bytes / 1e6,
                m.kv_bytes_per_token,
                s.map_or("-".into(), |s| format!("{:.1}", s.throughput)),
                s.map_or("-".into(), |s| format!(
                    "{:.1} ({:.1}-{:.1})",
                    s.decode_throughput, s.decode_throughput_range[0], s.decode_throughput_range[1]
                )),
                self.ratio(m).map_or("-".into(), |r| {
                    let passes = s.and_then(|s| s.over_passes(self.metric));
                    match passes {
                        Some(p) => format!("{r:.2}x ({:.2}-{:.2}x over passes)", p[0], p[1]),
                        None => format!("{r:.2}x"),
                    }
                }),
                s.map_or("-".into(), |s| format!("{:.0}", s.total_ms)),
                m.lm.loss,
                m.lm.perplexity,
                m.agreement
                    .as_ref()
                    .map_or("0".into(), |a| format!("{:.4}", a.kl)),
                m.agreement
                    .as_ref()
                    .map_or("100%".into(), |a| format!("{:.1}%", 100.0 * a.top1)),
                if acc.is_empty() { "-".into() } else { acc },
                m.retention
                    .map_or("-".into(), |r| format!("{:.1}%", 100.0 * r)),
            )?;
        }
        writeln!(md, "\n![quality vs speed](frontier.svg)\n")?;
        Ok(())
    }

    fn child_section(&self, md: &mut String) -> Result<()> {
        writeln!(md, "## The child\n")?;
        writeln!(md, "![architecture](architecture.svg)\n")?;
        writeln!(md, "| layer | attention + FFN |\n|---|---|")?;
        for (l, a) in self.model("child")?.layers.iter().enumerate() {
            writeln!(md, "| {l} | {a} |")?;
        }
        Ok(())
    }

    fn speed_section(&self, md: &mut String) -> Result<()> {
        let chosen = &self.chosen;
        writeln!(md, "\n## Predicted vs measured speed\n")?;
        writeln!(
            md,
            "The search sums per-block costs; the child is then measured end to end. A round whose child missed the target (with a {:.0}% margin) tightened the constraint; one more than 10% faster than needed loosened it; a round at its aim was measured again, and the mean of the two decided; the best round that met the target was kept:\n",
            100.0 * puzzle_pipeline::calibrate::AIM_MARGIN
        )?;
        writeln!(
            md,
            "| round | constraint | predicted | measured | kept |\n|---|---|---|---|---|"
        )?;
        for c in &chosen.calibration {
            let kept = if c.round == chosen.chosen_round {
                "yes"
            } else {
                ""
            };
            // A round at its aim is measured twice before it is kept; the mean decides.
            let again = if c.confirmation { " (again)" } else { "" };
            writeln!(
                md,
                "| {}{again} | `{}` | {:.2}x | {:.2}x | {kept} |",
                c.round + 1,
                c.constraint,
                c.predicted_ratio,
                c.measured_ratio,
            )?;
        }
        writeln!(
            md,
            "\nIn the evaluation (all models measured round-robin):\n"
        )?;
        writeln!(md, "| model | predicted | measured |\n|---|---|---|")?;
        for (name, p, m) in &self.speed_bars() {
            let p = p.map_or("-".into(), |p| format!("{p:.2}x"));
            writeln!(md, "| {name} | {p} | {m:.2}x |")?;
        }
        writeln!(md, "\n![speed](speed.svg)\n")?;
        Ok(())
    }

    /// The child's model card (`child/README.md`): what it is, what was measured, its licence.
    fn model_card(&self) -> Result<String> {
        let (child, parent) = (self.model("child")?, self.model("parent")?);
        let parent_dir = Path::new(&parent.path);
        let licence = parent_licence(parent_dir);
        let mut md = String::new();
        writeln!(md, "---")?;
        writeln!(md, "license: {}", licence.as_deref().unwrap_or("other"))?;
        writeln!(md, "tags: [puzzle, nas, nemotron-nas, decilm]")?;
        writeln!(md, "---\n")?;
        writeln!(
            md,
            "# A Puzzle child of `{}`\n",
            parent_dir.file_name().unwrap_or_default().to_string_lossy()
        )?;
        writeln!(
            md,
            "Made by `puzzle` (blockwise local distillation, a mixed-integer search under the run's constraints, global distillation) from the parent at `{}`. The weights are in DeciLM / nemotron-nas format (`config.json` `block_configs`: one entry per layer).\n",
            parent.path
        )?;
        writeln!(md, "## Loading\n")?;
        writeln!(
            md,
            "- llama.cpp: `model.gguf` (f32, arch `deci` or `llama`), which `puzzle run` writes beside these files when llama.cpp can run the child (`puzzle export gguf` says why when it cannot, and writes other types).\n\
             - vLLM serves `DeciLMForCausalLM` natively (not linear subblocks; see the warnings in the run's log).\n\
             - transformers and TensorRT-LLM's converter load it with `trust_remote_code=True`: `config.json`'s `auto_map` names the DeciLM classes in the Hugging Face repository `{}`, which is NVIDIA's code, fetched from there under that repository's terms, not shipped here.\n",
            puzzle_llama::decilm::DECILM_CODE_REPO
        )?;
        writeln!(md, "## Architecture\n")?;
        writeln!(md, "| layer | parent | child |\n|---|---|---|")?;
        for (l, (p, c)) in parent.layers.iter().zip(&child.layers).enumerate() {
            writeln!(md, "| {l} | {p} | {c} |")?;
        }
        writeln!(
            md,
            "\n## Measured (`puzzle run`, `{}`)\n",
            self.run.display()
        )?;
        writeln!(
            md,
            "Speed was measured in {} on the machine that ran the search, at batch {}, parent and child round-robin.\n",
            self.engine(),
            self.eval.batch
        )?;
        writeln!(
            md,
            "| model | params | speed vs parent | val loss | KL vs parent | top-1 agreement | retention |\n|---|---|---|---|---|---|---|"
        )?;
        for m in [parent, child] {
            writeln!(
                md,
                "| {} | {:.2}M | {} | {:.4} | {} | {} | {} |",
                m.name,
                m.params as f64 / 1e6,
                self.ratio(m).map_or("-".into(), |r| format!("{r:.2}x")),
                m.lm.loss,
                m.agreement
                    .as_ref()
                    .map_or("0".into(), |a| format!("{:.4}", a.kl)),
                m.agreement
                    .as_ref()
                    .map_or("100%".into(), |a| format!("{:.1}%", 100.0 * a.top1)),
                m.retention
                    .map_or("-".into(), |r| format!("{:.1}%", 100.0 * r)),
            )?;
        }
        writeln!(md, "\n## Licence\n")?;
        match licence {
            Some(l) => writeln!(
                md,
                "The parent's card states `license: {l}`; this child is a derivative of the parent's weights, so the parent's licence applies to it."
            )?,
            None => writeln!(
                md,
                "The parent folder states no licence (no `license:` in its README.md front matter). This child is a derivative of the parent's weights: the parent's licence applies to it; check it before you publish."
            )?,
        }
        Ok(md)
    }

    fn markdown(&self, config_used: &str) -> Result<String> {
        let mut md = String::new();
        writeln!(md, "# Puzzle report: {}\n", self.run.display())?;
        writeln!(
            md,
            "Every number below was measured by `puzzle run` on this machine; the commands are at the end.\n"
        )?;
        self.quality_table(&mut md)?;
        self.targets(&mut md)?;
        self.ablation_section(&mut md)?;
        self.child_section(&mut md)?;
        self.speed_section(&mut md)?;
        writeln!(md, "## How these numbers were made\n")?;
        writeln!(
            md,
            "```sh\npuzzle run {config_used}\npuzzle report {}\n```\n",
            self.run.display()
        )?;
        writeln!(
            md,
            "Artifacts: `library/` (BLD), `costs.json`, `scores.json`, `search/` (table, solution), `child/` (DeciLM export), `baselines/`, `eval/report.json`."
        )?;
        Ok(md)
    }
}

/// Writes `RUN/report/`.
pub fn write(run: &Path, config_used: &str) -> Result<std::path::PathBuf> {
    let report = Report::load(run)?;
    let out = run.join("report");
    std::fs::create_dir_all(&out)?;
    report.plots(&out)?;
    let md = report.markdown(config_used)?;
    puzzle_core::fsutil::write_atomic(&out.join("README.md"), md.as_bytes())?;
    let child = run.join("child");
    if child.join("config.json").is_file() {
        let card = report.model_card()?;
        puzzle_core::fsutil::write_atomic(&child.join("README.md"), card.as_bytes())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_licence_is_read_from_its_card_front_matter() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(parent_licence(dir.path()), None);
        std::fs::write(
            dir.path().join("README.md"),
            "# no front matter\nlicense: mit\n",
        )
        .unwrap();
        assert_eq!(parent_licence(dir.path()), None);
        std::fs::write(
            dir.path().join("README.md"),
            "---\nlibrary_name: transformers\nlicense: \"apache-2.0\"\n---\n# Card\n",
        )
        .unwrap();
        assert_eq!(parent_licence(dir.path()).as_deref(), Some("apache-2.0"));
    }
}
