//! Config files as operators write them: every shipped example loads, and every table of every example
//! refuses a key it does not know, naming that key exactly once (hickory-dns's config tests do the same).

use image_cache::config;
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "examples/ holds the shipped configs");
    files
}

fn load(path: &Path) -> Result<config::Config, config::ConfigError> {
    config::load(Some(path), Path::new("/nonexistent")).map(|(c, _)| c)
}

#[test]
fn every_example_loads() {
    for path in examples() {
        if let Err(e) = load(&path) {
            panic!("{}: {e}", path.display());
        }
    }
}

/// The dotted path of every table in `value`: the root (""), sub-tables, tables inside arrays (by
/// index). Maps keyed by the operator (`registry.upstreams`) take any key by design and are left out.
fn table_paths(value: &toml::Table, path: &str, out: &mut Vec<String>) {
    if !path.ends_with("upstreams") {
        out.push(path.to_string());
    }
    for (k, v) in value {
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            toml::Value::Table(t) => table_paths(t, &child, out),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        table_paths(t, &format!("{child}.{i}"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The table at a path of `table_paths` (array elements by index).
fn table_at<'a>(root: &'a mut toml::Table, path: &str) -> &'a mut toml::Table {
    let mut parts = path.split('.').filter(|p| !p.is_empty()).peekable();
    let mut table = root;
    while let Some(part) = parts.next() {
        let mut value = table.get_mut(part).unwrap();
        if let toml::Value::Array(items) = value {
            let i: usize = parts.next().unwrap().parse().unwrap();
            value = &mut items[i];
        }
        table = value.as_table_mut().unwrap();
    }
    table
}

#[test]
fn every_table_of_every_example_rejects_an_unknown_key_and_names_it_once() {
    let dir = tempfile::tempdir().unwrap();
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let root: toml::Table = text.parse().unwrap();
        let mut paths = Vec::new();
        table_paths(&root, "", &mut paths);
        assert!(paths.len() > 3, "{}: {paths:?}", path.display());
        for table in paths {
            let mut doc: toml::Table = text.parse().unwrap();
            table_at(&mut doc, &table).insert("bogus_key".into(), toml::Value::Integer(1));
            let file = dir.path().join("typo.toml");
            std::fs::write(&file, toml::to_string(&doc).unwrap()).unwrap();
            let Err(err) = load(&file) else {
                panic!("{} accepted `bogus_key` in [{table}]", path.display());
            };
            let want = if table.is_empty() {
                "bogus_key".to_string()
            } else {
                format!("{table}.bogus_key")
            };
            assert_eq!(err.key, want, "{}: {err}", path.display());
            assert_eq!(
                err.to_string().matches("bogus_key").count(),
                1,
                "the key is named once: {err}"
            );
            assert!(err.message.contains("unknown key"), "{err}");
        }
    }
}

/// docs/configuration.md's table and the code's partition defaults are one source: every key the code has
/// is in the table, and every default the table states as a literal is the code's.
#[test]
fn the_configuration_table_states_the_code_s_defaults() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .expect("docs/configuration.md is part of the package's source");
    let code = toml::Value::try_from(config::Config::production_defaults()).unwrap();
    // Every dotted key of the defaults (tables of tables flattened; `domains` is an array of tables).
    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(v, toml::Value::Table(_)) && path != "registry.upstreams" {
                    keys(&path, v, out);
                } else {
                    out.push((path, v.clone()));
                }
            }
        }
    }
    let mut defaults = Vec::new();
    keys("", &code, &mut defaults);
    // The table's rows: `| `key` | default | meaning |`; `a` / `b` rows name two keys.
    let mut rows = std::collections::BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let names: Vec<&str> = cells[1].split(" / ").map(|n| n.trim_matches('`')).collect();
        let values: Vec<&str> = cells[2].split(" / ").collect();
        for (i, name) in names.iter().enumerate() {
            let name = if i > 0 && !name.contains('.') {
                // `sync.min_images_per_name` / `max_images_per_name`
                let section = names[0].rsplit_once('.').map_or("", |(s, _)| s);
                format!("{section}.{name}")
            } else {
                name.to_string()
            };
            rows.insert(name, values.get(i).copied().unwrap_or(cells[2]).to_string());
        }
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (key, value) in &defaults {
        if key == "domains" {
            continue; // the `[[domains]] …` rows
        }
        let Some(cell) = rows.get(key) else {
            missing.push(key.clone());
            continue;
        };
        // A cell that is one backticked literal (before any "(laptop: …)" or "(…)" remark) is checked.
        let Some(literal) = cell
            .strip_prefix('`')
            .and_then(|c| c.split_once('`'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        if !cell
            .trim_start_matches('`')
            .split_once('`')
            .is_some_and(|(_, rest)| rest.trim().is_empty() || rest.trim().starts_with('('))
        {
            continue;
        }
        let stated: toml::Value = format!("v = {literal}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(literal.to_string()));
        let same = match (&stated, value) {
            // Durations and sizes print as the code prints them ("10m", "1m 30s"): compare parsed.
            (toml::Value::String(a), toml::Value::String(b)) => {
                a == b
                    || humantime::parse_duration(a)
                        .ok()
                        .zip(humantime::parse_duration(b).ok())
                        .is_some_and(|(x, y)| x == y)
            }
            (a, b) => a == b,
        };
        if same {
            checked += 1;
        } else {
            wrong.push(format!("{key}: the table says {literal}, the code {value}"));
        }
    }
    assert!(
        missing.is_empty(),
        "keys the code has and docs/configuration.md does not list: {missing:?}"
    );
    assert!(
        wrong.is_empty(),
        "docs/configuration.md disagrees with the code:\n  {}",
        wrong.join("\n  ")
    );
    assert!(
        checked >= 40,
        "only {checked} defaults were compared: the table's format changed"
    );
}
