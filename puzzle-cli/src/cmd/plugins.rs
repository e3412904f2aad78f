//! `puzzle plugins`: everything registered, static and dynamic.

use anyhow::Result;
use clap::Args;
use puzzle_core::variant::SubblockKind;

use crate::ui;

/// List every plugin: parent families, variant catalogs (with their variant heads), cost
/// models, scorers and solvers, where each comes from (a linked crate, or a shared library
/// loaded with --plugin or a run config's `plugins`).
#[derive(Args, Debug)]
pub struct PluginsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PluginsArgs) -> Result<()> {
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    for r in puzzle_core::family::families() {
        rows.push((
            "family".into(),
            r.family.name().into(),
            r.family.architectures().join(", "),
            r.provider.into(),
        ));
    }
    for r in puzzle_core::variants::catalogs() {
        let heads: Vec<String> = SubblockKind::ALL
            .into_iter()
            .flat_map(|k| {
                r.catalog
                    .heads(k)
                    .into_iter()
                    .map(move |h| format!("{k}:{h}"))
            })
            .collect();
        rows.push((
            "variant catalog".into(),
            r.catalog.name().into(),
            heads.join(", "),
            r.provider.into(),
        ));
    }
    for r in puzzle_core::cost::cost_models() {
        rows.push((
            "cost model".into(),
            r.model.name().into(),
            r.description.into(),
            r.provider.into(),
        ));
    }
    for r in puzzle_core::score::scorers() {
        rows.push((
            "scorer".into(),
            r.scorer.name().into(),
            r.description.into(),
            r.provider.into(),
        ));
    }
    for r in puzzle_core::search::mip::solvers() {
        rows.push((
            "solver".into(),
            r.solver.name().into(),
            r.description.into(),
            r.provider.into(),
        ));
    }
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(k, n, p, f)| serde_json::json!({"kind": k, "name": n, "provides": p, "from": f}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = ui::table(&["kind", "name", "provides", "from"]);
    for (k, n, p, f) in rows {
        t.add_row(vec![k, n, p, f]);
    }
    println!("{t}");
    Ok(())
}
