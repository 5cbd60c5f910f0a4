//! The layer table of ARCHITECTURE.md, held: every `crate::` import of `src/**/*.rs` must go to a lower layer,
//! or be one of the edges within a layer that ARCHITECTURE.md names (the list under the table). An import that
//! goes up, or sideways without being named there, fails this test with the file that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Layer of each module, and the named edges within a layer, read from ARCHITECTURE.md.
struct Table {
    layer: BTreeMap<String, f32>,
    allowed: BTreeSet<(String, String)>,
}

fn table() -> Table {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md is part of the package's source");
    let section = text
        .split("\n## Layers\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("ARCHITECTURE.md has a Layers section");
    let mut layer = BTreeMap::new();
    let mut allowed = BTreeSet::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| 1b core | `store`, `upstream` | … |`: the number (b = half a layer up), then the modules.
        if cells.len() >= 4
            && let Some(number) = cells[1].split_whitespace().next()
            && let Ok(n) = number.trim_end_matches('b').parse::<f32>()
        {
            let n = if number.ends_with('b') { n + 0.5 } else { n };
            for module in backticked(cells[2]) {
                layer.insert(module, n);
            }
        }
        // `- `a` → `b`: why` (an edge within a layer).
        if let Some(rest) = line.trim_start().strip_prefix("- ")
            && let Some((from, to)) = rest.split_once(" → ")
        {
            let from = backticked(from);
            let to = backticked(to.split(':').next().unwrap_or(""));
            if from.len() == 1 && !to.is_empty() {
                for t in to {
                    allowed.insert((from[0].clone(), t));
                }
            }
        }
    }
    assert!(
        layer.len() > 10,
        "the layer table of ARCHITECTURE.md was not found"
    );
    Table { layer, allowed }
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.split("::").next().unwrap_or(s).to_string())
        .collect()
}

/// The top-level module a file of `src/` belongs to (`src/store/fill.rs` → `store`, `src/listen.rs` → `listen`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(Path::new(ROOT).join("src")).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Without comments, string literals (raw ones too) and char literals, so `crate::` in prose or text does not
/// count.
fn code_of(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if matches!(c.get(i + 1), Some('"' | '#'))
                && (i == 0 || !c[i - 1].is_alphanumeric()) =>
            {
                let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
                if c.get(i + 1 + hashes) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                i += 2 + hashes;
                while i < c.len()
                    && !(c[i] == '"'
                        && c[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&h| h == '#')
                            .count()
                            == hashes)
                {
                    i += 1;
                }
                i += 1 + hashes;
                out.push_str("\"\"");
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('"', '\'', 'x'), not a lifetime ('a).
            '\'' if c.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if c.get(i + 2) == Some(&'\'') => i += 3,
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// The modules a piece of code names through `crate::`: `crate::store::Key`, `use crate::{config, store::Key}`.
fn imported(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A use tree: the first segment of each top-level item.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || !item.contains("::") {
                    item.push(c);
                }
            }
            found.insert(first_segment(&item));
        } else {
            found.insert(first_segment(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn first_segment(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_import_follows_the_layer_table_of_architecture_md() {
    let table = table();
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    for file in files {
        let Some(from) = module_of(&file) else {
            continue;
        };
        if from == "lib" {
            continue; // the module list
        }
        let Some(&from_layer) = table.layer.get(&from) else {
            wrong.push(format!(
                "{}: module `{from}` is in no row of the layer table",
                file.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for to in imported(&code) {
            if to == from {
                continue;
            }
            let Some(&to_layer) = table.layer.get(&to) else {
                wrong.push(format!(
                    "{}: imports `{to}`, which is in no row of the layer table",
                    file.display()
                ));
                continue;
            };
            if to_layer < from_layer {
                continue;
            }
            if table.allowed.contains(&(from.clone(), to.clone())) {
                used.insert((from.clone(), to.clone()));
                continue;
            }
            wrong.push(format!(
                "{}: `{from}` (layer {from_layer}) imports `{to}` (layer {to_layer}), an edge ARCHITECTURE.md does not name",
                file.display()
            ));
        }
    }
    let unused: Vec<_> = table.allowed.difference(&used).collect();
    assert!(
        wrong.is_empty(),
        "layer violations:\n  {}",
        wrong.join("\n  ")
    );
    assert!(
        unused.is_empty(),
        "ARCHITECTURE.md names edges within a layer that no code uses (drop them): {unused:?}"
    );
}

#[test]
fn the_import_reader_sees_use_trees_paths_and_not_comments() {
    let code = code_of(concat!(
        "use crate::{config::Config, store::{Key, Store}};\n// crate::app in a comment\n",
        "let s = \"crate::cli\"; let q = '\"'; let r = r#\"crate::dns \" still\"#; /* crate::sync */\n",
        "x = crate::metrics::Metrics::new(); fn f<'a>(x: &'a str) -> crate::peers::Owner { todo!() }\n",
    ));
    let got: Vec<String> = imported(&code).into_iter().collect();
    assert_eq!(got, ["config", "metrics", "peers", "store"]);
}
