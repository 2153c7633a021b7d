//! The library's shape, checked from its source: the layers import each other without
//! circles, and files and functions stay small (the issue that reshaped the library asked for
//! both; a circle or a 300-line function creeping back in fails here).
//!
//! A *unit* is a module together with the private children that implement it and say so by
//! reaching into it with `super::` (the `impl Node` blocks of `connection::node::sentinel`,
//! the watchdog's `renew` and `verify`): Rust's privacy is built for such splits. Between
//! units, `crate::` imports must form no circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 500;
const MAX_FN_LINES: usize = 60;

fn source_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `src/engine/watchdog/mod.rs` → `engine::watchdog`; `src/lib.rs` → `` (the crate root).
fn module_of(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let relative = path.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The source without comments (so a doc comment's `crate::` link is no import) and without
/// its unit-test module (whose `use super::*` is no split of the module).
fn code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tests = (1..lines.len()).find(|&i| {
        lines[i - 1].trim() == "#[cfg(test)]"
            && lines[i].contains("mod ")
            && lines[i].ends_with('{')
    });
    lines[..tests.map_or(lines.len(), |i| i - 1)]
        .iter()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b…` path in `text`, and every `use child::…` of a child of `module`,
/// resolved to the longest known module prefix.
fn references(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        let path = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|start| line.strip_prefix(start));
        let Some(first) = path.and_then(|p| p.split("::").next()) else {
            continue;
        };
        let child = match module {
            "" => first.to_owned(),
            parent => format!("{parent}::{first}"),
        };
        if modules.contains(&child) {
            found.insert(child);
        }
    }
    for (at, _) in text.match_indices("crate::") {
        let path: String = text[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let resolved = (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|candidate| modules.contains(candidate));
        if let Some(module) = resolved {
            found.insert(module);
        }
    }
    found
}

/// Each module's unit: itself, or (for a child that reaches into its parent with `super::`)
/// its parent's unit.
fn units(sources: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut unit: BTreeMap<String, String> = BTreeMap::new();
    for module in sources.keys() {
        let mut current = module.clone();
        while let Some((parent, _)) = current.rsplit_once("::") {
            if !sources[&current].contains("super::") || !sources.contains_key(parent) {
                break;
            }
            current = parent.to_owned();
        }
        unit.insert(module.clone(), current);
    }
    unit
}

#[test]
fn the_modules_import_each_other_without_circles() {
    let sources: BTreeMap<String, String> = source_files()
        .iter()
        .map(|path| {
            (
                module_of(path),
                code(&std::fs::read_to_string(path).unwrap()),
            )
        })
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let unit = units(&sources);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &sources {
        for target in references(module, text, &modules) {
            let (from, to) = (&unit[module], &unit[&target]);
            // The crate root only declares and re-exports.
            if from != to && !from.is_empty() && !to.is_empty() {
                edges.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    let circles = find_circles(&edges);
    assert!(
        circles.is_empty(),
        "import circles between modules:\n{}",
        circles.join("\n")
    );
    // The layers point down only.
    for (from, targets) in &edges {
        for to in targets {
            let rank = |m: &str| match m.split("::").next() {
                Some("client" | "blocking" | "fencing") => 3,
                Some("primitive") => 2,
                Some("engine") => 1,
                Some("connection") => 0,
                _ => -1, // shared leaves: error, options, key, units, …
            };
            assert!(
                rank(to) <= rank(from) || rank(to) < 0,
                "{from} imports {to}, a higher layer"
            );
        }
    }
}

/// Every circle, as `a → b → a`, found by depth-first search.
fn find_circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_owned());
            circles.push(circle.join(" → "));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut circles);
    }
    circles
}

#[test]
fn files_and_functions_stay_small() {
    let mut too_long = Vec::new();
    for path in source_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > MAX_FILE_LINES {
            too_long.push(format!("{name}: {} lines", lines.len()));
        }
        for (start, length) in functions(&lines) {
            if length > MAX_FN_LINES {
                too_long.push(format!("{name}:{}: a {length}-line function", start + 1));
            }
        }
    }
    assert!(too_long.is_empty(), "{}", too_long.join("\n"));
}

/// `(first line, length)` of every function body outside test modules, by brace depth.
fn functions(lines: &[&str]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if line.starts_with("#[cfg(test)]") {
            break; // test modules close the file
        }
        let is_fn = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
        ]
        .iter()
        .chain(&[
            "pub(crate) async fn ",
            "pub(super) fn ",
            "pub(super) async fn ",
        ])
        .any(|start| line.starts_with(start));
        if !is_fn {
            i += 1;
            continue;
        }
        let (mut depth, mut opened, mut j) = (0i32, false, i);
        while j < lines.len() {
            let code = lines[j].split("//").next().unwrap_or("");
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        found.push((i, j - i + 1));
        i = j + 1;
    }
    found
}
