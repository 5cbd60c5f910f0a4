//! `image-cache containerd-hosts`: print the hosts.toml for the nodes given, or — in a Kubernetes
//! DaemonSet — keep a node's `certs.d/_default/hosts.toml` listing every replica a headless Service
//! resolves to (`--mirrors-from`, `--write`, `--every`). A failed lookup keeps the last file: containerd
//! then still has the replicas it knew, and the registry itself as the fallback.

use super::CliError;
use crate::config::{Config, ConfigError};
use crate::upstream::NameResolver;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// What the command was asked.
pub struct HostsArgs<'a> {
    pub mirror: &'a [String],
    pub mirrors_from: Option<&'a str>,
    pub registry: Option<&'a str>,
    pub write: Option<&'a Path>,
    pub every: Option<Duration>,
}

fn usage(key: &str, message: impl Into<String>) -> CliError {
    CliError::Config(ConfigError::new(key, message))
}

pub async fn containerd_hosts(args: HostsArgs<'_>) -> Result<(), CliError> {
    if args.mirror.is_empty() && args.mirrors_from.is_none() {
        return Err(usage(
            "--mirror",
            "give --mirror URL (once per node) or --mirrors-from NAME:PORT",
        ));
    }
    if args.every.is_some() && args.write.is_none() {
        return Err(usage("--every", "repeats only with --write FILE"));
    }
    if args.every.is_some() {
        // A long-running job (a DaemonSet): its changes and failed lookups go to the log.
        crate::telemetry::init(&Config::laptop_defaults().log);
    }
    let from = args.mirrors_from.map(parse_from).transpose()?;
    let resolver = match from {
        Some(_) => {
            // The system's resolver (a pod's cluster DNS): `dns.upstreams = []`.
            let mut dns = Config::laptop_defaults().dns;
            dns.upstreams.clear();
            Some(NameResolver::new(&dns).map_err(|e| usage("--mirrors-from", e))?)
        }
        None => None,
    };
    let mut last: Option<String> = None;
    loop {
        let mut mirrors = Vec::new();
        if let (Some((name, port)), Some(resolver)) = (&from, &resolver) {
            match resolver.lookup_ip(name).await {
                Ok(ips) => mirrors = replica_urls(&ips, *port),
                Err(e) if args.every.is_some() => {
                    tracing::warn!(%name, error = %e, "--mirrors-from did not resolve; the file stays as it is");
                }
                Err(e) => return Err(usage("--mirrors-from", e.to_string())),
            }
        }
        if mirrors.is_empty() && last.is_some() {
            // Nothing resolved this round: keep what containerd has.
        } else {
            mirrors.extend(args.mirror.iter().cloned());
            let text = crate::registry::hosts::hosts_toml(&mirrors, args.registry)
                .map_err(|e| usage("--mirror", e))?;
            match args.write {
                None => print!("{text}"),
                Some(path) if last.as_deref() != Some(text.as_str()) => {
                    write_atomically(path, &text)?;
                    tracing::info!(file = %path.display(), mirrors = ?mirrors, "hosts.toml written");
                }
                Some(_) => {}
            }
            last = Some(text);
        }
        let Some(every) = args.every else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminated() => return Ok(()),
        }
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// `NAME:PORT` of `--mirrors-from`.
fn parse_from(text: &str) -> Result<(String, u16), CliError> {
    text.rsplit_once(':')
        .and_then(|(name, port)| {
            let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
            (!name.is_empty()).then(|| (name.to_string(), port))
        })
        .ok_or_else(|| {
            usage(
                "--mirrors-from",
                format!("{text:?} is not NAME:PORT (e.g. image-cache-peers.image-cache.svc.cluster.local:8080)"),
            )
        })
}

/// One `http://` URL per replica, in address order so every node writes the same file.
fn replica_urls(ips: &[IpAddr], port: u16) -> Vec<String> {
    let mut ips = ips.to_vec();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .map(|ip| format!("http://{}", SocketAddr::new(ip, port)))
        .collect()
}

/// A temporary file beside `path`, renamed over it: containerd never reads half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), CliError> {
    let fail = |e: std::io::Error| usage("--write", format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(fail)?;
    #[allow(clippy::disallowed_methods)] // containerd's file, outside the store
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_listed_in_address_order_once() {
        let ips: Vec<IpAddr> = ["10.2.0.9", "10.2.0.10", "fd00::5", "10.2.0.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            replica_urls(&ips, 8080),
            [
                "http://10.2.0.9:8080",
                "http://10.2.0.10:8080",
                "http://[fd00::5]:8080"
            ]
        );
    }

    #[test]
    fn mirrors_from_is_name_and_port() {
        assert_eq!(
            parse_from("image-cache-peers:8080").ok(),
            Some(("image-cache-peers".into(), 8080))
        );
        for bad in ["image-cache-peers", ":8080", "x:0", "x:http"] {
            assert!(parse_from(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs.d/_default/hosts.toml");
        let mirror = vec!["http://10.0.0.1:8080".to_string()];
        containerd_hosts(HostsArgs {
            mirror: &mirror,
            mirrors_from: None,
            registry: None,
            write: Some(&path),
            every: None,
        })
        .await
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[host.\"http://10.0.0.1:8080\"]"), "{text}");
        assert!(!path.with_extension("toml.tmp").exists());
    }
}
