//! `cargo xtask layers`: the layering rules of ARCHITECTURE.md, checked.
//!
//! - **No module cycles** inside any workspace crate: sibling modules (children of the same
//!   parent) must not reach each other in a cycle through `crate::`, `super::` or `self::` paths
//!   (`use` trees and paths in expressions alike). A child naming its ancestors' items is fine;
//!   `#[cfg(test)] mod tests` blocks are skipped (they sit at the bottom of a file and see it all).
//! - **No crate cycles** and **no forbidden crate edges** over normal and build dependencies
//!   (from `cargo metadata`): the tensor-free crates never reach burn, the tensor crates or the
//!   embedded data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Crates that must stay tensor-free and data-free, and what they must never depend on, even
/// transitively.
pub const RULES: &[(&str, &[&str])] = &[
    ("puzzle-types", FORBIDDEN_BELOW_CORE),
    ("puzzle-solver-bnb", FORBIDDEN_BELOW_CORE),
    ("puzzle-solver-highs", FORBIDDEN_BELOW_CORE),
    ("puzzle-llama", FORBIDDEN_BELOW_CORE),
    ("puzzle-qwen2", FORBIDDEN_BELOW_CORE),
    ("puzzle-example-plugin", FORBIDDEN_BELOW_CORE),
    ("puzzle-llamacpp", FORBIDDEN_BELOW_CORE),
    (
        "puzzle-core",
        &[
            "puzzle-pipeline",
            "puzzle-cli",
            "puzzle-plugin-abi",
            "abi_stable",
        ],
    ),
];

const FORBIDDEN_BELOW_CORE: &[&str] = &[
    "burn",
    "tokenizers",
    "safetensors",
    "puzzle-core",
    "puzzle-pipeline",
    "puzzle-zoo",
];

/// A directed graph by node name.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Hash,
    Other,
}

/// Rust source as the few tokens the checks need; comments, strings and chars removed.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == 'r' && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#')) {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(Tok::Ident("r".into()));
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[s..i].iter().collect()));
        } else {
            out.push(match ch {
                ':' if c.get(i + 1) == Some(&':') => {
                    i += 1;
                    Tok::PathSep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '*' => Tok::Star,
                '#' => Tok::Hash,
                c if c.is_whitespace() => {
                    i += 1;
                    continue;
                }
                _ => Tok::Other,
            });
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// Parses a path tree starting at `t[i]` (after a leading `crate`/`super`/`self` has been
/// resolved into `prefix`), pushing every full path; returns the index after it.
fn path_tree(t: &[Tok], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut p = prefix;
    loop {
        if t.get(i) != Some(&Tok::PathSep) {
            out.push(p);
            return i;
        }
        i += 1;
        match t.get(i) {
            Some(Tok::Ident(s)) => {
                if s == "super" {
                    p.pop();
                } else if s != "self" {
                    p.push(s.clone());
                }
                i += 1;
            }
            Some(Tok::Open) => {
                i += 1;
                while i < t.len() && t[i] != Tok::Close {
                    match &t[i] {
                        Tok::Ident(s) if s == "self" => {
                            out.push(p.clone());
                            i += 1;
                        }
                        Tok::Ident(s) => {
                            let mut q = p.clone();
                            q.push(s.clone());
                            i = path_tree(t, i + 1, q, out);
                        }
                        Tok::Open => {
                            // `::{{a, b}}` does not occur; skip defensively.
                            i += 1;
                        }
                        _ => i += 1,
                    }
                }
                return i + 1;
            }
            _ => {
                // `::*` or `::<`: the prefix is the path.
                out.push(p);
                return i;
            }
        }
    }
}

/// One source file's module declarations and references.
#[derive(Default, Debug)]
struct FileScan {
    /// `mod x;` declarations: (module path relative to the file's module, name).
    children: Vec<(Vec<String>, String)>,
    /// Inline `mod x { .. }` modules (not tests): paths relative to the file's module.
    inline: Vec<Vec<String>>,
    /// Absolute referenced paths, with the (relative) inline module they occur in.
    refs: Vec<(Vec<String>, Vec<String>)>,
}

fn scan_file(src: &str, module: &[String]) -> FileScan {
    let t = tokens(src);
    let mut f = FileScan::default();
    // Inline module stack: (name, brace depth at which it opened).
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        let rel: Vec<String> = stack.iter().map(|(n, _)| n.clone()).collect();
        match &t[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let Some(name) = ident(t.get(i + 1)) {
                    match t.get(i + 2) {
                        Some(Tok::Semi) => f.children.push((rel.clone(), name.to_string())),
                        Some(Tok::Open) if name == "tests" => {
                            // Skip the test module entirely.
                            let mut d = 0;
                            let mut j = i + 2;
                            while j < t.len() {
                                match t[j] {
                                    Tok::Open => d += 1,
                                    Tok::Close => {
                                        d -= 1;
                                        if d == 0 {
                                            break;
                                        }
                                    }
                                    _ => {}
                                }
                                j += 1;
                            }
                            i = j + 1;
                            continue;
                        }
                        Some(Tok::Open) => {
                            let mut p = rel.clone();
                            p.push(name.to_string());
                            f.inline.push(p);
                            stack.push((name.to_string(), depth));
                            depth += 1;
                            i += 3;
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            Tok::Ident(k)
                if (k == "crate" || k == "super" || k == "self")
                    && t.get(i + 1) == Some(&Tok::PathSep) =>
            {
                let here: Vec<String> = module.iter().cloned().chain(rel.clone()).collect();
                let prefix = match k.as_str() {
                    "crate" => vec![],
                    "super" => here[..here.len().saturating_sub(1)].to_vec(),
                    _ => here.clone(),
                };
                let mut paths = Vec::new();
                i = path_tree(&t, i + 1, prefix, &mut paths);
                for p in paths {
                    f.refs.push((rel.clone(), p));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    f
}

/// A crate's modules and the sibling edges between them.
#[derive(Default, Debug)]
pub struct ModuleGraph {
    /// Every module path (the root is `[]`).
    pub modules: BTreeSet<Vec<String>>,
    /// `(parent, from child, to child)` -> an example reference (file and path).
    pub edges: BTreeMap<(Vec<String>, String, String), String>,
}

/// Reads a crate's module tree from its root file (`src/lib.rs` or `src/main.rs`).
pub fn module_graph(root_file: &Path) -> Result<ModuleGraph> {
    let mut g = ModuleGraph::default();
    let mut refs: Vec<(Vec<String>, Vec<String>, PathBuf)> = Vec::new();
    // (file, module path, directory its `mod x;` children live in)
    let src_dir = root_file.parent().context("root file has no folder")?;
    let mut todo = vec![(
        root_file.to_path_buf(),
        Vec::<String>::new(),
        src_dir.to_path_buf(),
    )];
    g.modules.insert(vec![]);
    while let Some((file, module, dir)) = todo.pop() {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let scan = scan_file(&text, &module);
        for p in &scan.inline {
            g.modules
                .insert(module.iter().cloned().chain(p.iter().cloned()).collect());
        }
        for (rel, name) in &scan.children {
            let mut m = module.clone();
            m.extend(rel.iter().cloned());
            m.push(name.clone());
            let mut d = dir.clone();
            for r in rel {
                d.push(r);
            }
            let (a, b) = (d.join(format!("{name}.rs")), d.join(name).join("mod.rs"));
            let child = if a.is_file() { a } else { b };
            if !child.is_file() {
                bail!("{}: module `{name}` has no file", file.display());
            }
            g.modules.insert(m.clone());
            todo.push((child, m, d.join(name)));
        }
        for (rel, r) in scan.refs {
            let from: Vec<String> = module.iter().cloned().chain(rel).collect();
            refs.push((from, r, file.clone()));
        }
    }
    for (from, r, file) in refs {
        // The longest prefix of the path that is a module.
        let target = (0..=r.len())
            .rev()
            .map(|k| r[..k].to_vec())
            .find(|p| g.modules.contains(p))
            .unwrap_or_default();
        if from.starts_with(&target) {
            continue; // Own module or an ancestor's items.
        }
        let c = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
        if from.len() <= c {
            continue; // A parent naming its descendants.
        }
        let key = (from[..c].to_vec(), from[c].clone(), target[c].clone());
        g.edges
            .entry(key)
            .or_insert_with(|| format!("{}: {}", file.display(), r.join("::")));
    }
    Ok(g)
}

/// A cycle in a directed graph, as the nodes along it (first repeated at the end).
pub fn find_cycle(edges: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| p == m).expect("on the path");
                    let mut cyc = path[start..].to_vec();
                    cyc.push(m.clone());
                    return Some(cyc);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut path = Vec::new();
            if let Some(c) = visit(n, edges, &mut state, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

/// Module cycles of one crate, as readable lines.
pub fn module_cycles(crate_name: &str, g: &ModuleGraph) -> Vec<String> {
    let mut by_parent: BTreeMap<&Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, a, b) in g.edges.keys() {
        by_parent
            .entry(parent)
            .or_default()
            .entry(a.clone())
            .or_default()
            .insert(b.clone());
    }
    let mut out = Vec::new();
    for (parent, edges) in by_parent {
        if let Some(cyc) = find_cycle(&edges) {
            let why: Vec<String> = cyc
                .windows(2)
                .map(|w| g.edges[&(parent.clone(), w[0].clone(), w[1].clone())].clone())
                .collect();
            let under = if parent.is_empty() {
                "crate".to_string()
            } else {
                parent.join("::")
            };
            out.push(format!(
                "{crate_name}: module cycle under {under}: {} (via {})",
                cyc.join(" -> "),
                why.join("; ")
            ));
        }
    }
    out
}

/// Forbidden edges: for each rule, a dependency path from the crate to a forbidden one.
pub fn forbidden_edges(
    deps: &BTreeMap<String, BTreeSet<String>>,
    rules: &[(&str, &[&str])],
) -> Vec<String> {
    let mut out = Vec::new();
    for (from, forbidden) in rules {
        // Breadth-first, remembering how each crate was reached.
        let mut came: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.to_string()]);
        came.insert(from.to_string(), String::new());
        while let Some(n) = queue.pop_front() {
            if forbidden.contains(&n.as_str()) {
                let mut path = vec![n.clone()];
                let mut cur = n;
                while let Some(p) = came.get(&cur).filter(|p| !p.is_empty()) {
                    path.push(p.clone());
                    cur = p.clone();
                }
                path.reverse();
                out.push(format!(
                    "forbidden dependency: {} (`{from}` must not depend on `{}`)",
                    path.join(" -> "),
                    path.last().expect("non-empty")
                ));
                continue;
            }
            for m in deps.get(&n).into_iter().flatten() {
                if !came.contains_key(m) {
                    came.insert(m.clone(), n.clone());
                    queue.push_back(m.clone());
                }
            }
        }
    }
    out
}

/// Normal and build dependency edges between package names, from `cargo metadata`, and the
/// workspace members with their root source files.
pub fn crate_graph(root: &Path) -> Result<(Graph, Vec<(String, PathBuf)>)> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .current_dir(root)
        .args(["metadata", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names: BTreeMap<&str, &str> = v["packages"]
        .as_array()
        .context("metadata packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in v["resolve"]["nodes"]
        .as_array()
        .context("metadata resolve")?
    {
        let from = names[node["id"].as_str().context("node id")?].to_string();
        for d in node["deps"].as_array().into_iter().flatten() {
            let runtime = d["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if runtime {
                let to = names[d["pkg"].as_str().context("dep pkg")?].to_string();
                deps.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    let members: BTreeSet<&str> = v["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .collect();
    let mut roots = Vec::new();
    for p in v["packages"].as_array().into_iter().flatten() {
        if !members.contains(p["id"].as_str().unwrap_or("")) {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            if kinds
                .iter()
                .any(|k| matches!(*k, "lib" | "bin" | "cdylib" | "rlib" | "proc-macro"))
            {
                let name = format!(
                    "{} ({})",
                    p["name"].as_str().unwrap_or("?"),
                    kinds.join(",")
                );
                roots.push((name, PathBuf::from(t["src_path"].as_str().unwrap_or(""))));
            }
        }
    }
    Ok((deps, roots))
}

/// Every check; `Err` lists every violation.
pub fn check(root: &Path) -> Result<()> {
    let (deps, roots) = crate_graph(root)?;
    let mut bad = Vec::new();
    let workspace: BTreeSet<String> = roots
        .iter()
        .map(|(n, _)| n.split(' ').next().unwrap_or("").to_string())
        .collect();
    let inner: BTreeMap<String, BTreeSet<String>> = deps
        .iter()
        .filter(|(k, _)| workspace.contains(*k))
        .map(|(k, v)| {
            (
                k.clone(),
                v.iter()
                    .filter(|d| workspace.contains(*d))
                    .cloned()
                    .collect(),
            )
        })
        .collect();
    if let Some(c) = find_cycle(&inner) {
        bad.push(format!("crate cycle: {}", c.join(" -> ")));
    }
    bad.extend(forbidden_edges(&deps, RULES));
    for (name, file) in &roots {
        let g = module_graph(file)?;
        bad.extend(module_cycles(name, &g));
    }
    if !bad.is_empty() {
        bail!("layering violations:\n  {}", bad.join("\n  "));
    }
    eprintln!(
        "layers: {} crate targets, no module or crate cycles, no forbidden edges",
        roots.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (p, text) in files {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    fn graph(deps: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in deps {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        g
    }

    #[test]
    fn a_planted_module_cycle_is_found_and_named_and_its_removal_passes() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "src/lib.rs",
                "pub mod cost;\npub mod plugin;\npub mod search;\npub use cost::X;\n",
            ),
            (
                "src/cost.rs",
                "use crate::search::mip::Row;\npub struct X;\n// crate::plugin::y() in a comment\nconst S: &str = \"crate::plugin::y\";\n#[cfg(test)]\nmod tests { use crate::plugin::y; }\n",
            ),
            ("src/plugin.rs", "pub fn y() { let _ = crate::cost::X; }\n"),
            (
                "src/search/mod.rs",
                "pub mod mip;\npub mod problem;\npub use mip::Row;\n",
            ),
            (
                "src/search/mip.rs",
                "pub struct Row;\nuse super::{problem::P, *};\n",
            ),
            ("src/search/problem.rs", "pub struct P;\nuse super::Row;\n"),
        ];
        write(dir.path(), &files);
        let g = module_graph(&dir.path().join("src/lib.rs")).unwrap();
        // Comments, strings and tests are not edges; a child naming its parent's items is not.
        assert!(module_cycles("demo", &g).is_empty(), "{:?}", g.edges);
        // The planted edge: the registry calls the plugin host.
        write(
            dir.path(),
            &[(
                "src/cost.rs",
                "pub struct X;\npub fn all() { crate::plugin::y(); }\n",
            )],
        );
        let g = module_graph(&dir.path().join("src/lib.rs")).unwrap();
        let c = module_cycles("demo", &g);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].contains("module cycle under crate: cost -> plugin -> cost")
                && c[0].contains("cost.rs: plugin::y"),
            "{}",
            c[0]
        );
        // A sibling cycle one level down, through a use group.
        write(
            dir.path(),
            &[
                ("src/cost.rs", "pub struct X;\n"),
                (
                    "src/search/problem.rs",
                    "use crate::search::{mip::Row};\npub struct P;\n",
                ),
            ],
        );
        let g = module_graph(&dir.path().join("src/lib.rs")).unwrap();
        let c = module_cycles("demo", &g);
        assert!(
            c.len() == 1 && c[0].contains("under search: mip -> problem -> mip"),
            "{c:?}"
        );
    }

    #[test]
    fn a_planted_forbidden_crate_edge_is_found_with_its_path() {
        let mut deps = graph(&[
            ("puzzle-solver-bnb", "puzzle-types"),
            ("puzzle-types", "serde"),
            ("puzzle-core", "burn"),
            ("puzzle-core", "puzzle-types"),
        ]);
        assert!(forbidden_edges(&deps, RULES).is_empty());
        deps.get_mut("puzzle-types")
            .unwrap()
            .insert("puzzle-core".into());
        let v = forbidden_edges(&deps, RULES);
        assert!(
            v.iter().any(|l| l.contains(
                "puzzle-solver-bnb -> puzzle-types -> puzzle-core (`puzzle-solver-bnb` must not depend on `puzzle-core`)"
            )),
            "{v:?}"
        );
        assert!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).is_some());
        assert!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_none());
    }

    #[test]
    fn the_workspace_crates_have_no_module_cycles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for krate in ["puzzle-types", "puzzle-core", "puzzle-pipeline"] {
            let g = module_graph(&root.join(krate).join("src/lib.rs")).unwrap();
            assert!(g.modules.len() > 5, "{krate}: {:?}", g.modules);
            let c = module_cycles(krate, &g);
            assert!(c.is_empty(), "{c:?}");
        }
        let g = module_graph(&root.join("puzzle-cli/src/main.rs")).unwrap();
        assert!(module_cycles("puzzle-cli", &g).is_empty());
    }
}
