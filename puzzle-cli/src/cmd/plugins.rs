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

fn row(kind: &str, name: &str, what: &str, provider: &str) -> (String, String, String, String) {
    (kind.into(), name.into(), what.into(), provider.into())
}

pub fn run(a: PluginsArgs) -> Result<()> {
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let p = crate::registry::plugins();
    for r in p.families.iter() {
        rows.push((
            "family".into(),
            r.item.name().into(),
            r.item.architectures().join(", "),
            r.provider.clone(),
        ));
    }
    for r in p.catalogs.iter() {
        let heads: Vec<String> = SubblockKind::ALL
            .into_iter()
            .flat_map(|k| r.item.heads(k).into_iter().map(move |h| format!("{k}:{h}")))
            .collect();
        rows.push((
            "variant catalog".into(),
            r.item.name().into(),
            heads.join(", "),
            r.provider.clone(),
        ));
    }
    for r in p.cost_models.iter() {
        rows.push(row(
            "cost model",
            r.item.name(),
            &r.description,
            &r.provider,
        ));
    }
    for r in p.scorers.iter() {
        rows.push(row("scorer", r.item.name(), &r.description, &r.provider));
    }
    for r in p.solvers.iter() {
        rows.push(row("solver", r.item.name(), &r.description, &r.provider));
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
