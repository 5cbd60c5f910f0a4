//! Command line: `serve`, `check-config`, `store ls|verify|gc`.

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
