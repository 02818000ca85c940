//! The layers of `src/` (ARCHITECTURE.md, "Layers") are checked here:
//! `src/` has one folder per layer and nothing else (`src/lib.rs` declares
//! exactly the layers, `src/LAYER/mod.rs` exactly the modules the map
//! lists for it), and code in a layer uses only its own layer and those
//! below it. So the top-level modules of `src/` form no cycle.
//!
//! Edges are read from the source: every `crate::NAME` path and every first
//! segment of a `use crate::{...}` group, outside `//` comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The modules a file (`src/lib.rs`, a layer's `mod.rs`) declares.
fn declared(file: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').trim().to_string())
        .collect()
}

/// The lines of the fenced block ```` ```NAME ```` in ARCHITECTURE.md.
fn block(name: &str) -> Vec<String> {
    let doc =
        std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let fence = format!("```{name}");
    let mut lines = doc.lines().skip_while(|l| l.trim() != fence);
    assert!(
        lines.next().is_some(),
        "ARCHITECTURE.md has no ```{name} block"
    );
    lines
        .take_while(|l| l.trim() != "```")
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Layer name -> (its number, its modules), from lines `N name: a, b, c`.
fn layers() -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for line in block("layers") {
        let (head, mods) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("layer line without ':': {line}"));
        let mut head = head.split_whitespace();
        let n: usize = head
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("layer line must start with its number: {line}"));
        let name = head
            .next()
            .unwrap_or_else(|| panic!("layer line without a name: {line}"))
            .to_string();
        let mods: BTreeSet<String> = mods
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        let before = out.insert(name.clone(), (n, mods));
        assert!(before.is_none(), "layer {name} is listed twice");
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `text` names through `crate::`.
fn uses(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first segment of each
            // item at depth 0.
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                        out.insert(ident_at(&group[j..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(rest).to_string());
        }
    }
    out
}

/// (from, to) for every use of one layer by another.
fn edges(layers: &BTreeSet<String>) -> BTreeSet<(String, String)> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = BTreeSet::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        if !layers.contains(top) {
            continue; // lib.rs, main.rs (the binary sits above everything)
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for used in uses(&text) {
            if used != top && layers.contains(&used) {
                out.insert((top.to_string(), used));
            }
        }
    }
    out
}

#[test]
fn src_has_a_folder_per_layer_and_the_map_lists_every_module() {
    let layers = layers();
    let names: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        declared("src/lib.rs"),
        names,
        "src/lib.rs must declare exactly the layers ARCHITECTURE.md lists"
    );
    let mut numbers: Vec<usize> = layers.values().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..layers.len()).collect::<Vec<_>>(),
        "layers are numbered 0, 1, 2, ... from the bottom"
    );
    for (name, (_, mods)) in &layers {
        assert!(
            root().join("src").join(name).is_dir(),
            "layer {name} has no folder src/{name}"
        );
        let file = format!("src/{name}/mod.rs");
        assert_eq!(
            &declared(&file),
            mods,
            "{file} must declare exactly the modules ARCHITECTURE.md lists for {name}"
        );
    }
}

#[test]
fn no_layer_uses_a_higher_one() {
    let layers = layers();
    let names: BTreeSet<String> = layers.keys().cloned().collect();
    let upward: Vec<String> = edges(&names)
        .into_iter()
        .filter(|(a, b)| layers[b].0 > layers[a].0)
        .map(|(a, b)| format!("{a} ({}) -> {b} ({})", layers[&a].0, layers[&b].0))
        .collect();
    assert!(
        upward.is_empty(),
        "layers that use a higher layer (move the code down, or pass a narrow handle in):\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn the_edge_reader_sees_paths_and_groups() {
    let text = "use crate::xml::Element;\n\
                use crate::{config::Config, route, stream::{a, b}};\n\
                // crate::server is only a comment\n\
                fn f() { crate::state::x(); }";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["config", "route", "state", "stream", "xml"]);
}
