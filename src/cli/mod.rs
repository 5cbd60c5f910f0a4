//! Command line: `serve`, `check-config`, `sync`, `containerd-hosts`, `store ls|verify|gc|pin|unpin|rm`,
//! `registry prefetch`.
//! `sync` and `store` work on the state dir directly, or through the running server's admin API when a
//! server holds the store.

mod admin_client;
mod error;
mod hosts;
mod prefetch;
mod progress;
mod store;
mod sync;

pub use admin_client::AdminClientError;
pub use error::CliError;
pub use hosts::{HostsArgs, containerd_hosts};
pub use prefetch::prefetch;
pub use store::store;
pub use sync::sync;

use crate::app;
use crate::config::{self, Config, ConfigSource};
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
    #[arg(long, short = 'c', env = "IMAGE_CACHE_CONFIG", global = true)]
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
        /// A cache node's base URL as containerd reaches it, e.g. http://10.0.0.1 or http://cache:8080.
        /// Give it once per node of the partition, in the order containerd should try them.
        #[arg(long)]
        mirror: Vec<String>,
        /// NAME:PORT whose addresses are the cache's replicas (a Kubernetes headless Service), listed
        /// first, in address order, as http://ADDRESS:PORT; resolved through /etc/resolv.conf.
        #[arg(long)]
        mirrors_from: Option<String>,
        /// A file for one registry (docker.io, ghcr.io, myreg.io:5000) instead of `_default`.
        #[arg(long)]
        registry: Option<String>,
        /// Write the file here (atomically, only when it changes) instead of printing it.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Keep going: resolve and rewrite every this long (`30s`) until SIGTERM. Needs --write.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
    },
    /// Inspect and maintain the store: directly, or through the admin API of the server that holds it.
    Store {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: StoreAction,
    },
    /// The registry mirror's jobs on the running server.
    Registry {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: RegistryAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryAction {
    /// Pull container images into the store and pin them: the ones named (pinned until unpinned), or
    /// `registry.prefetch` (pinned while listed). Runs on the server and follows it there; exit 0 when
    /// every image is stored, 1 when one failed or no server runs.
    Prefetch {
        /// `[registry/]name[:tag][@digest]`, e.g. `nginx:1.27`, `ghcr.io/org/app:1.2`; the registry
        /// must be a key of registry.upstreams. None: the configured list.
        images: Vec<String>,
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
        /// Only pinned (`true`) or only unpinned (`false`) objects.
        #[arg(long)]
        pinned: Option<bool>,
        /// One JSON object per line (the admin API's fields) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every blob; corrupt objects are removed. Exit 1 when any was found.
    Verify,
    /// Evict least-recently-used objects down to 90% of cache.max_size now.
    Gc,
    /// Keep an object whatever eviction and sync decide, until `unpin`.
    Pin { key: String },
    /// Drop an operator's (and sync's) pin; the next sync pins what metal-api still lists.
    Unpin { key: String },
    /// Remove an object now (its blob goes when no other key shares it).
    Rm { key: String },
}

/// Loads the config, or the error that `main` turns into exit 2.
pub fn load_config(arg: &ConfigArg) -> Result<(Config, ConfigSource), CliError> {
    let (config, source) = config::load(
        arg.config.as_deref(),
        std::path::Path::new(config::DEFAULT_CONFIG_PATH),
    )?;
    // What the config layer cannot judge alone: image references, read as the registry reads them.
    crate::registry::prefetch::check(&config)?;
    Ok((config, source))
}

pub fn check_config(arg: &ConfigArg) -> Result<(), CliError> {
    let (config, source) = load_config(arg)?;
    let text = toml::to_string_pretty(&config)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "# effective config, from {source}; secrets are read from the files named here and never printed"
    );
    for line in config::profile::summary(&config, &source) {
        let _ = writeln!(out, "# {line}");
    }
    if config.http.admin_token_file.is_none() {
        let _ = writeln!(out, "# note: {}", config::ADMIN_WITHOUT_TOKEN);
    }
    let _ = write!(out, "{text}");
    Ok(())
}

pub async fn serve(arg: &ConfigArg) -> Result<(), CliError> {
    let (config, source) = load_config(arg)?;
    crate::telemetry::init(&config.log);
    tracing::info!(config = %source, version = env!("CARGO_PKG_VERSION"), "starting image-cache");
    for line in config::profile::summary(&config, &source) {
        tracing::info!("{line}");
    }
    Ok(app::serve(config).await?)
}
