//! `puzzle plugins`: everything registered, static and dynamic.

use anyhow::Result;
use clap::Args;
use puzzle_core::kinds::EngineKind;
use puzzle_core::variant::SubblockKind;

use crate::ui;

/// List every plugin: parent families, variant catalogs (with their variant heads), cost
/// models, scorers, solvers and engines, where each comes from (a linked crate, or a shared library
/// loaded with --plugin or a run config's `plugins`), and each engine's capability table (what
/// the search may use when `[deployment] engine` names it).
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
    for r in p.engines.iter() {
        rows.push(row(
            "engine",
            r.item.kind().as_str(),
            &r.description,
            &r.provider,
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
    // What each engine can run: the search leaves out what the deployment's engine cannot.
    let kinds = EngineKind::ALL;
    let mut header = vec!["capability".to_string()];
    header.extend(kinds.iter().map(|k| {
        let linked = p.engines.get(k.as_str()).is_ok();
        format!("{k}{}", if linked { "" } else { " (not measurable here)" })
    }));
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = ui::table(&hdr);
    let rows: Vec<Vec<(&str, String)>> = kinds.iter().map(|k| k.capabilities().rows()).collect();
    for i in 0..rows[0].len() {
        let mut r = vec![rows[0][i].0.to_string()];
        r.extend(rows.iter().map(|c| c[i].1.clone()));
        t.add_row(r);
    }
    println!("engines (`[deployment] engine`): what each can run\n{t}");
    Ok(())
}
