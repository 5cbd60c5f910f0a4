//! `image-cache store …`: on the state dir when no server runs, else through the server's admin API
//! (redb lets one process open the index; the lock says whether a server holds it).

use super::CliError;
use super::admin_client::{self, AdminClient, Started, query};
use super::progress;
use super::{ConfigArg, StoreAction, load_config};
use crate::config::Config;
use crate::http::admin::fmt;
use crate::http::admin::view::ObjectView;
use crate::lifecycle::RunStatus;
use crate::metrics::Metrics;
use crate::store::index::IndexError;
use crate::store::{GcReport, Key, Store, StoreError, VerifyReport};
use crate::upstream::Method;
use std::io::Write;
use std::time::Duration;

pub(super) enum Opened {
    Store(Store),
    /// A running server holds the index.
    Locked,
}

pub(super) async fn open(config: &Config, metrics: Metrics) -> Result<Opened, CliError> {
    let runtime = tokio::runtime::Handle::current();
    let dir = config.state_dir.clone();
    let max = config.cache.max_size.bytes();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, max, metrics, runtime))
        .await
        .map_err(|e| CliError::Task {
            what: "opening the store",
            reason: e.to_string(),
        })?;
    match opened {
        Ok((store, _)) => Ok(Opened::Store(store)),
        Err(StoreError::Index(IndexError::Locked { .. })) => Ok(Opened::Locked),
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
struct Page {
    objects: Vec<ObjectView>,
    next_cursor: Option<String>,
}

/// Runs a store action. Returns the exit code.
pub async fn store(arg: &ConfigArg, action: &StoreAction) -> Result<i32, CliError> {
    let (config, _) = load_config(arg)?;
    match open(&config, Metrics::new()).await? {
        Opened::Store(store) => local(store, action).await,
        Opened::Locked => {
            let client = admin_client::connect(&config)?;
            eprintln!("a server holds the store; asking it at {}", client.base());
            remote(&client, action).await
        }
    }
}

fn parse_key(key: &str) -> Result<Key, CliError> {
    Key::parse(key).map_err(|reason| CliError::BadKey {
        key: key.to_string(),
        reason,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, CliError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::Task {
            what: "the store command",
            reason: e.to_string(),
        })??)
}

async fn local(store: Store, action: &StoreAction) -> Result<i32, CliError> {
    match action {
        StoreAction::Ls {
            prefix,
            limit,
            pinned,
            json,
        } => {
            let (prefix, limit, pinned) = (prefix.clone(), *limit, *pinned);
            let found =
                blocking(move || store.find(&prefix, None, pinned, limit, usize::MAX)).await?;
            let rows: Vec<ObjectView> = found
                .rows
                .into_iter()
                .map(|(key, row)| ObjectView::new(key, row))
                .collect();
            print_rows(&rows, *json);
            Ok(0)
        }
        StoreAction::Verify => {
            let bar = progress::verify_bar();
            let b = bar.clone();
            let report = blocking(move || {
                store.verify(
                    |done, total| {
                        b.set_length(total);
                        b.set_position(done);
                    },
                    &tokio_util::sync::CancellationToken::new(),
                )
            })
            .await;
            bar.finish_and_clear();
            Ok(print_verify(&report?))
        }
        StoreAction::Gc => {
            let report = blocking(move || store.gc()).await?;
            print_gc(&report);
            Ok(0)
        }
        StoreAction::Pin { key } | StoreAction::Unpin { key } => {
            let pin = matches!(action, StoreAction::Pin { .. });
            let k = parse_key(key)?;
            if blocking(move || store.pin_by_operator(&k, pin)).await? {
                println!("{} {key}", if pin { "pinned" } else { "unpinned" });
                Ok(0)
            } else {
                eprintln!("image-cache: no such key: {key}");
                Ok(1)
            }
        }
        StoreAction::Rm { key } => {
            let k = parse_key(key)?.as_str().to_string();
            if blocking(move || store.remove(&[k])).await? > 0 {
                println!("removed {key}");
                Ok(0)
            } else {
                eprintln!("image-cache: no such key: {key}");
                Ok(1)
            }
        }
    }
}

async fn remote(client: &AdminClient, action: &StoreAction) -> Result<i32, CliError> {
    match action {
        StoreAction::Ls {
            prefix,
            limit,
            pinned,
            json,
        } => {
            let mut rows = Vec::new();
            let mut cursor: Option<String> = None;
            let pinned = pinned.map(|p| p.to_string());
            while rows.len() < *limit {
                let page_limit = (*limit - rows.len()).min(1000).to_string();
                let mut pairs = vec![("prefix", prefix.as_str()), ("limit", page_limit.as_str())];
                if let Some(c) = &cursor {
                    pairs.push(("cursor", c));
                }
                if let Some(p) = &pinned {
                    pairs.push(("pinned", p));
                }
                let page: Page = client
                    .call(Method::Get, &format!("/admin/objects{}", query(&pairs)))
                    .await?;
                rows.extend(page.objects);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            print_rows(&rows, *json);
            Ok(0)
        }
        StoreAction::Verify => {
            let started: Started = client.call(Method::Post, "/admin/store/verify").await?;
            let bar = progress::verify_bar();
            let status = loop {
                let s: RunStatus<VerifyReport> =
                    client.call(Method::Get, "/admin/store/verify").await?;
                bar.set_length(s.total);
                bar.set_position(s.done);
                if s.finished >= started.run {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            bar.finish_and_clear();
            match (status.last, status.last_error) {
                (_, Some(reason)) => Err(CliError::JobFailed {
                    job: "verify",
                    reason,
                }),
                (Some(report), None) => Ok(print_verify(&report)),
                (None, None) => Err(CliError::JobFailed {
                    job: "verify",
                    reason: "the server kept no report".into(),
                }),
            }
        }
        StoreAction::Gc => {
            let report: GcReport = client.call(Method::Post, "/admin/store/gc").await?;
            print_gc(&report);
            Ok(0)
        }
        StoreAction::Pin { key } | StoreAction::Unpin { key } => {
            let pin = matches!(action, StoreAction::Pin { .. });
            parse_key(key)?;
            let method = if pin { Method::Post } else { Method::Delete };
            let _: serde_json::Value = client
                .call(
                    method,
                    &format!("/admin/objects/pin{}", query(&[("key", key)])),
                )
                .await?;
            println!("{} {key}", if pin { "pinned" } else { "unpinned" });
            Ok(0)
        }
        StoreAction::Rm { key } => {
            parse_key(key)?;
            let _: serde_json::Value = client
                .call(
                    Method::Delete,
                    &format!("/admin/objects{}", query(&[("key", key)])),
                )
                .await?;
            println!("removed {key}");
            Ok(0)
        }
    }
}

fn print_rows(rows: &[ObjectView], json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        for r in rows {
            let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
        }
        return;
    }
    let width = rows
        .iter()
        .map(|r| r.key.len())
        .max()
        .unwrap_or(3)
        .clamp(3, 100);
    let _ = writeln!(
        out,
        "{:<width$} {:>10} {:>8} {:<29} PINNED",
        "KEY", "SIZE", "HITS", "LAST ACCESS"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>10} {:>8} {:<29} {}",
            r.key,
            fmt::bytes(r.size),
            r.hits,
            fmt::when(r.last_access),
            r.pinned_by.as_deref().unwrap_or("no")
        );
    }
    let total: u64 = rows.iter().map(|r| r.size).sum();
    let _ = writeln!(out, "{} objects, {}", rows.len(), fmt::bytes(total));
}

/// Exit 1 when corruption was found (and removed).
fn print_verify(r: &VerifyReport) -> i32 {
    println!(
        "checked {} blobs, {} bytes; {} corrupt objects removed",
        r.blobs_checked,
        r.bytes_checked,
        r.corrupt_keys.len()
    );
    for k in &r.corrupt_keys {
        println!("corrupt: {k}");
    }
    i32::from(!r.corrupt_keys.is_empty())
}

fn print_gc(r: &GcReport) {
    println!(
        "evicted {} objects, freed {} bytes; store now holds {} bytes",
        r.evicted_keys, r.freed_bytes, r.bytes_after
    );
}
