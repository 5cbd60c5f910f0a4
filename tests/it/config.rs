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
