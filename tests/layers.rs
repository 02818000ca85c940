//! The layers of `src/` (ARCHITECTURE.md, "Layers") are checked here: every
//! top-level module of the library is in exactly one layer, and a module
//! uses only modules of its own layer or those below. The upward edges the
//! code still has are listed in ARCHITECTURE.md ("Upward edges left"); the
//! list may only shrink: an edge that is not listed fails, and so does a
//! listed edge that no longer exists (take it off the list).
//!
//! Edges are read from the source: every `crate::NAME` path and every first
//! segment of a `use crate::{...}` group, outside `//` comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level modules `src/lib.rs` declares.
fn modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("read src/lib.rs");
    lib.lines()
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

/// module -> (layer index, layer name), from lines `N name: a, b, c`.
fn layers() -> BTreeMap<String, (usize, String)> {
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
        let name = head.next().unwrap_or("?").to_string();
        for m in mods.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let before = out.insert(m.to_string(), (n, name.clone()));
            assert!(before.is_none(), "module {m} is in two layers");
        }
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

/// (from, to) for every use of one top-level module by another.
fn edges(mods: &BTreeSet<String>) -> BTreeSet<(String, String)> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = BTreeSet::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        let top = first.trim_end_matches(".rs");
        if !mods.contains(top) {
            continue; // lib.rs, main.rs (the binary sits above everything)
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for used in uses(&text) {
            if used != top && mods.contains(&used) {
                out.insert((top.to_string(), used));
            }
        }
    }
    out
}

#[test]
fn every_module_has_a_layer() {
    let mods = modules();
    let layers = layers();
    let missing: Vec<_> = mods.iter().filter(|m| !layers.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "modules in src/lib.rs with no layer in ARCHITECTURE.md: {missing:?}"
    );
    let stale: Vec<_> = layers.keys().filter(|m| !mods.contains(*m)).collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md names modules src/lib.rs does not have: {stale:?}"
    );
}

#[test]
fn no_module_uses_a_higher_layer_beyond_the_known_list() {
    let mods = modules();
    let layers = layers();
    let known: BTreeSet<(String, String)> = block("upward-edges")
        .iter()
        .map(|l| {
            let (a, b) = l
                .split_once("->")
                .unwrap_or_else(|| panic!("edge line must be `from -> to`: {l}"));
            (a.trim().to_string(), b.trim().to_string())
        })
        .collect();
    let upward: BTreeSet<(String, String)> = edges(&mods)
        .into_iter()
        .filter(|(a, b)| match (layers.get(a), layers.get(b)) {
            (Some((la, _)), Some((lb, _))) => lb > la,
            _ => false,
        })
        .collect();
    let new: Vec<String> = upward
        .difference(&known)
        .map(|(a, b)| format!("{a} ({}) -> {b} ({})", layers[a].1, layers[b].1))
        .collect();
    assert!(
        new.is_empty(),
        "modules that use a higher layer (move the code down, or pass a narrow handle in):\n  {}",
        new.join("\n  ")
    );
    let gone: Vec<String> = known
        .difference(&upward)
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md lists upward edges the code no longer has; take them off:\n  {}",
        gone.join("\n  ")
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
