//! Command line: `serve`, `check-config`, `sync`, `containerd-hosts`, `store ls|verify|gc`.

use crate::app::{self, AppError};
use crate::config::{self, Config, ConfigSource};
use crate::metrics::Metrics;
use crate::store::Store;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "image-cache",
    version,
    about = "DNS interceptor, PXE image cache and OCI pull-through mirror"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file [default: /etc/image-cache/config.toml; built-in laptop defaults when it does not exist]
    #[arg(long, short = 'c', env = "IMAGE_CACHE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every enabled component until SIGTERM/SIGINT.
    Serve(ConfigArg),
    /// Load and validate the config, print the effective config; exit 2 naming the key on any error.
    CheckConfig(ConfigArg),
    /// One metal-api sync now: print the plan, download what is missing or changed, pin what is kept.
    /// Exit 0 when every planned item is present, 1 when some failed or metal-api could not be listed,
    /// 2 on config errors. Asks the running server when one holds the state dir.
    Sync {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the plan only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a containerd hosts.toml that pulls through this cache and falls back to the registry.
    /// Put it at /etc/containerd/certs.d/_default/hosts.toml (or certs.d/<registry>/hosts.toml).
    ContainerdHosts {
        /// The cache's base URL as nodes reach it, e.g. http://10.0.0.1 or http://cache:8080.
        #[arg(long)]
        mirror: String,
        /// A file for one registry (docker.io, ghcr.io, myreg.io:5000) instead of `_default`.
        #[arg(long)]
        registry: Option<String>,
    },
    /// Inspect and maintain the store (the server must not be running on the same state dir).
    Store {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: StoreAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreAction {
    /// List stored objects: key, size, hits, last access, pinned.
    Ls {
        /// Only keys starting with this (e.g. `file:images.metal-stack.io/`).
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Re-hash every blob; corrupt objects are removed. Exit 1 when any was found.
    Verify,
    /// Evict least-recently-used objects down to 90% of cache.max_size now.
    Gc,
}

/// Loads the config, or the error that `main` turns into exit 2.
pub fn load_config(arg: &ConfigArg) -> Result<(Config, ConfigSource), AppError> {
    Ok(config::load(
        arg.config.as_deref(),
        std::path::Path::new(config::DEFAULT_CONFIG_PATH),
    )?)
}

pub fn check_config(arg: &ConfigArg) -> Result<(), AppError> {
    let (config, source) = load_config(arg)?;
    let text = toml::to_string_pretty(&config)
        .map_err(|e| AppError::Other(format!("cannot print config: {e}")))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "# effective config, from {source}; secrets are read from the files named here and never printed"
    );
    let _ = write!(out, "{text}");
    Ok(())
}

pub async fn serve(arg: &ConfigArg) -> Result<(), AppError> {
    let (config, source) = load_config(arg)?;
    crate::telemetry::init(&config.log);
    tracing::info!(config = %source, version = env!("CARGO_PKG_VERSION"), "starting image-cache");
    app::serve(config).await
}

/// Runs a store action directly on the state dir. Returns the exit code.
pub async fn store(arg: &ConfigArg, action: &StoreAction) -> Result<i32, AppError> {
    let (config, _) = load_config(arg)?;
    let runtime = tokio::runtime::Handle::current();
    let dir = config.state_dir.clone();
    let max = config.cache.max_size.bytes();
    let (store, _) =
        tokio::task::spawn_blocking(move || Store::open(&dir, max, Metrics::new(), runtime))
            .await
            .map_err(|e| AppError::Other(e.to_string()))??;
    let job = match action {
        StoreAction::Ls { prefix, limit } => {
            let rows = store.list(prefix, None, *limit)?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<60} {:>14} {:>8} {:>20} PINNED",
                "KEY", "SIZE", "HITS", "LAST ACCESS"
            );
            for (key, row) in rows {
                let when = httpdate::fmt_http_date(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(row.last_access),
                );
                let _ = writeln!(
                    out,
                    "{key:<60} {:>14} {:>8} {when:>20} {}",
                    row.size,
                    row.hits,
                    if row.pinned { "yes" } else { "no" }
                );
            }
            return Ok(0);
        }
        StoreAction::Verify => tokio::task::spawn_blocking(move || {
            let mut last = 0u64;
            let report = store.verify(|done, total| {
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                if pct != last {
                    last = pct;
                    eprint!("\rverifying: {pct:>3}% ({done} of {total} bytes)");
                }
            });
            eprintln!();
            report.map(|r| {
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
            })
        }),
        StoreAction::Gc => tokio::task::spawn_blocking(move || {
            store.gc().map(|r| {
                println!(
                    "evicted {} objects, freed {} bytes; store now holds {} bytes",
                    r.evicted_keys, r.freed_bytes, r.bytes_after
                );
                0
            })
        }),
    };
    Ok(job.await.map_err(|e| AppError::Other(e.to_string()))??)
}

/// `sync`: on the state dir directly, or through the running server's admin API when it holds the store.
pub async fn sync(arg: &ConfigArg, dry_run: bool) -> Result<i32, AppError> {
    use crate::store::{StoreError, index::IndexError};
    use crate::sync::{SyncError, Syncer, metal_api::ApiError};
    use crate::upstream::{NameResolver, Upstream};
    let (config, _) = load_config(arg)?;
    let runtime = tokio::runtime::Handle::current();
    let dir = config.state_dir.clone();
    let max = config.cache.max_size.bytes();
    let metrics = Metrics::new();
    let m = metrics.clone();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, max, m, runtime))
        .await
        .map_err(|e| AppError::Other(e.to_string()))?;
    let resolver = NameResolver::new(&config.dns).map_err(|e| {
        AppError::Config(config::ConfigError::new(
            "dns.upstreams",
            format!("cannot build a resolver: {e}"),
        ))
    })?;
    let upstream = Upstream::start(&config.upstream, resolver, metrics.clone(), 2)?;
    let store = match opened {
        Ok((store, _)) => store,
        Err(StoreError::Index(IndexError::Locked { .. })) => {
            return sync_via_server(&config, &upstream, dry_run).await;
        }
        Err(e) => return Err(e.into()),
    };
    let syncer = Syncer::new(std::sync::Arc::new(config), store, upstream, metrics);
    match syncer.run(dry_run, &TerminalProgress).await {
        Ok(report) => Ok(print_report(&report)),
        Err(SyncError::Api(
            e @ (ApiError::KeyFile { .. } | ApiError::EmptyKey(_) | ApiError::EmptyToken(_)),
        )) => Err(AppError::Config(config::ConfigError::new(
            "sync",
            e.to_string(),
        ))),
        Err(e) => {
            eprintln!("image-cache: sync failed, nothing was changed: {e}");
            Ok(1)
        }
    }
}

/// Asks the server on the first HTTP listener to run the sync and prints its report.
async fn sync_via_server(
    config: &Config,
    upstream: &crate::upstream::Upstream,
    dry_run: bool,
) -> Result<i32, AppError> {
    use crate::upstream::{Method, Request};
    let addr = config
        .http
        .admin_listen
        .first()
        .or(config.http.listen.first())
        .ok_or_else(|| {
            AppError::Other("the store is locked and no http.listen is configured".into())
        })?;
    if addr.port() == 0 {
        return Err(AppError::Other(
            "the store is locked by a server listening on an ephemeral port (http.listen …:0); \
             use POST /admin/sync on its actual address"
                .into(),
        ));
    }
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let url = format!(
        "http://{host}:{}/admin/sync?wait=true&dry_run={dry_run}",
        addr.port()
    );
    eprintln!("a server holds the store; asking it: POST {url}");
    let parsed = url::Url::parse(&url).map_err(|e| AppError::Other(e.to_string()))?;
    let mut request = Request::get(parsed, "admin");
    request.method = Method::Post;
    request.follow_redirects = false;
    let resp = upstream
        .send(request)
        .await
        .map_err(|e| AppError::Other(format!("cannot reach the running server: {e}")))?;
    let status = resp.status;
    let body = crate::upstream::read_body(resp.body, 64 << 20)
        .await
        .map_err(AppError::Other)?;
    if status != 200 {
        eprintln!(
            "image-cache: the server answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        return Ok(1);
    }
    let report: crate::sync::Report = serde_json::from_slice(&body)
        .map_err(|e| AppError::Other(format!("unreadable report from the server: {e}")))?;
    print_plan(&report.plan);
    Ok(print_report(&report))
}

struct TerminalProgress;

impl crate::sync::Progress for TerminalProgress {
    fn planned(&self, plan: &crate::sync::planner::Plan) {
        print_plan(plan);
    }
    fn started(&self, item: &crate::sync::planner::Item) {
        if item.action == crate::sync::planner::Action::Download {
            eprintln!(
                "downloading {} ({} bytes) from {}",
                item.name, item.size, item.url
            );
        }
    }
    fn finished(&self, o: &crate::sync::Outcome) {
        let mark = if o.ok { "ok" } else { "FAILED" };
        let clear = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            "\r\x1b[2K"
        } else {
            ""
        };
        eprintln!("{clear}{mark:>6} {}: {}", o.name, o.message);
    }
    /// On a terminal: one status line with a bar per running download, redrawn in place.
    fn tick(&self, fills: &[crate::store::FillStatus]) {
        if fills.is_empty() || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let line: Vec<String> = fills
            .iter()
            .map(|f| {
                let name = f.key.rsplit('/').next().unwrap_or(&f.key);
                match f.total {
                    Some(total) if total > 0 => {
                        let done = (f.written * 20 / total).min(20) as usize;
                        format!(
                            "{name} [{}{}] {:>3}%",
                            "#".repeat(done),
                            "-".repeat(20 - done),
                            f.written * 100 / total
                        )
                    }
                    _ => format!("{name} {} bytes", f.written),
                }
            })
            .collect();
        eprint!("\r\x1b[2K{}", line.join("  "));
    }
}

fn print_plan(plan: &crate::sync::planner::Plan) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:>14} {:<9} PATH",
        "ID", "KIND", "SIZE", "ACTION"
    );
    for i in &plan.items {
        let path = url::Url::parse(&i.url).map_or(i.url.clone(), |u| u.path().to_string());
        let kind = match i.kind {
            crate::sync::planner::Kind::Image => "image",
            crate::sync::planner::Kind::Kernel => "kernel",
            crate::sync::planner::Kind::BootImage => "boot-image",
        };
        let action = match i.action {
            crate::sync::planner::Action::Keep => "keep",
            crate::sync::planner::Action::Download => "download",
        };
        let _ = writeln!(
            out,
            "{:<28} {kind:<10} {:>14} {action:<9} {path}",
            i.name, i.size
        );
    }
    for (name, why) in &plan.skipped {
        let _ = writeln!(
            out,
            "{name:<28} {:<10} {:>14} {:<9} ({why})",
            "-", "-", "skip"
        );
    }
    let _ = writeln!(
        out,
        "{} items, {} bytes; {} bytes to download",
        plan.items.len(),
        plan.total_bytes(),
        plan.download_bytes()
    );
    if let Some(why) = &plan.over_budget {
        let _ = writeln!(out, "warning: cannot get under cache.max_size: {why}");
    }
}

/// Prints the outcome; the exit code: 0 when every item is present, 1 otherwise.
fn print_report(report: &crate::sync::Report) -> i32 {
    if report.dry_run {
        println!("dry run: nothing changed");
        return 0;
    }
    let failed = report.failed();
    println!(
        "{} of {} items present, {failed} failed, {} keys unpinned",
        report.outcomes.len() - failed,
        report.outcomes.len(),
        report.unpinned
    );
    i32::from(failed > 0)
}

/// `containerd-hosts`: prints the file; a bad `--mirror` is a usage error (exit 2).
pub fn containerd_hosts(mirror: &str, registry: Option<&str>) -> Result<(), AppError> {
    let text = crate::registry::hosts::hosts_toml(mirror, registry)
        .map_err(|e| AppError::Config(config::ConfigError::new("--mirror", e)))?;
    print!("{text}");
    Ok(())
}
