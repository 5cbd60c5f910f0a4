//! The configuration: serde structs that reject unknown keys, typed values (sizes, durations, addresses,
//! enums) parsed once at load time, and the two sets of built-in defaults (production and laptop).
//!
//! Every other module reads this typed [`Config`]; nothing re-parses strings later.

pub mod credentials;
mod load;
pub mod units;
mod validate;
pub mod vhost;

pub use load::{ConfigError, ConfigSource, load};
pub use units::{ByteSize, Span};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The default config file path of `serve`, `check-config`, `sync` and `store`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/image-cache/config.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Holds `blobs/`, `tmp/` and `index.redb`; tmp and blobs share it so a fill is published by rename.
    pub state_dir: PathBuf,
    pub cache: CacheConfig,
    pub http: HttpConfig,
    pub dns: DnsConfig,
    pub passthrough: PassthroughConfig,
    pub domains: Vec<DomainConfig>,
    pub nodes: NodesConfig,
    pub upstream: UpstreamConfig,
    pub sync: SyncConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Eviction brings the store back to 90% of this when it grows past it.
    pub max_size: ByteSize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: Vec<SocketAddr>,
    /// When non-empty, `/health`, `/ready`, `/metrics` and `/admin` are served only on these addresses.
    #[serde(default)]
    pub admin_listen: Vec<SocketAddr>,
    /// Optional bearer token for `/admin`; the file is read at start-up, its content is never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    pub enabled: bool,
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub allow: Vec<IpNet>,
    pub answer_ttl: Span,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    pub enabled: bool,
    pub listen: Vec<SocketAddr>,
    /// Connections spliced at once; more are closed at accept.
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    /// Fetch from the origin, stream to the client while storing.
    Fill,
    /// 307 to `https://<host><path>?<query>`, as metal-stack's cache does.
    Redirect,
    /// Stream from the origin without storing.
    Proxy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// `https://<name>` when absent. May carry a path prefix; the request path is appended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default = "default_on_miss")]
    pub on_miss: OnMiss,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default = "default_revalidate_after")]
    pub revalidate_after: Span,
}

fn default_on_miss() -> OnMiss {
    OnMiss::Fill
}

fn default_revalidate_after() -> Span {
    Span::from_secs(600)
}

impl DomainConfig {
    pub fn named(name: &str) -> Self {
        DomainConfig {
            name: name.to_string(),
            origin: None,
            on_miss: default_on_miss(),
            include_subdomains: false,
            revalidate_after: default_revalidate_after(),
        }
    }

    /// The origin URL without a trailing slash.
    pub fn origin_url(&self) -> String {
        match &self.origin {
            Some(o) => o.trim_end_matches('/').to_string(),
            None => format!("https://{}", self.name),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    /// This node's internal address, handed out in DNS answers. Defaults to the first specific
    /// `dns.listen` address.
    #[serde(default, rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_addr: Option<IpAddr>,
    pub peers: Vec<IpAddr>,
    pub peer_port: u16,
    pub health_interval: Span,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Extra PEM trust roots for origins, added to the system's and the built-in web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Span,
    /// Longest silence allowed while waiting for response headers or the next body bytes.
    pub read_timeout: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetalApiVersion {
    V1,
    V2,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub enabled: bool,
    pub schedule: String,
    pub dry_run: bool,
    pub api: MetalApiVersion,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_file: Option<PathBuf>,
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    pub min_images_per_name: u32,
    pub max_images_per_name: u32,
    pub expiration_grace_period: Span,
    pub excludes: Vec<String>,
    pub kernels: bool,
    pub boot_images: bool,
    pub concurrency: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub enabled: bool,
    pub tag_ttl: Span,
    pub negative_ttl: Span,
    pub upstreams: BTreeMap<String, String>,
    /// Accounts for upstream registries (docker `config.json` format). What they fetch is served to
    /// every client of the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd, text otherwise.
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An env-filter directive: `info`, `debug`, `image_cache=debug,actix_web=warn`.
    pub level: String,
    pub format: LogFormat,
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().filter_map(|a| a.parse().ok()).collect()
}

impl Config {
    /// The production defaults of DESIGN.md §3, used when a config file exists.
    pub fn production_defaults() -> Self {
        let nets = [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "::1/128",
            "fc00::/7",
        ];
        let upstreams = [
            ("docker.io", "https://registry-1.docker.io"),
            ("ghcr.io", "https://ghcr.io"),
            ("quay.io", "https://quay.io"),
            ("registry.k8s.io", "https://registry.k8s.io"),
        ];
        Config {
            state_dir: PathBuf::from("/var/lib/image-cache"),
            cache: CacheConfig {
                max_size: ByteSize(100_000_000_000),
            },
            http: HttpConfig {
                listen: addrs(&["0.0.0.0:80"]),
                admin_listen: vec![],
                admin_token_file: None,
            },
            dns: DnsConfig {
                enabled: true,
                listen: addrs(&["0.0.0.0:53"]),
                upstreams: addrs(&["8.8.8.8:53", "1.1.1.1:53"]),
                allow: nets.iter().filter_map(|n| n.parse().ok()).collect(),
                answer_ttl: Span::from_secs(30),
            },
            passthrough: PassthroughConfig {
                enabled: true,
                listen: addrs(&["0.0.0.0:443"]),
                max_connections: 4096,
                idle_timeout: Span::from_secs(300),
            },
            domains: vec![
                DomainConfig::named("images.metal-stack.io"),
                DomainConfig::named("github.com"),
            ],
            nodes: NodesConfig {
                self_addr: None,
                peers: vec![],
                peer_port: 80,
                health_interval: Span::from_secs(2),
            },
            upstream: UpstreamConfig {
                ca_file: None,
                connect_timeout: Span::from_secs(5),
                read_timeout: Span::from_secs(60),
            },
            sync: SyncConfig {
                enabled: false,
                schedule: "*/10 * * * *".into(),
                dry_run: false,
                api: MetalApiVersion::V1,
                url: "http://metal-api:8080/metal".into(),
                hmac_file: None,
                auth_type: "Metal-View".into(),
                token_file: None,
                min_images_per_name: 3,
                max_images_per_name: 0,
                expiration_grace_period: Span::from_secs(0),
                excludes: vec!["/pull_requests/".into()],
                kernels: true,
                boot_images: true,
                concurrency: 2,
            },
            registry: RegistryConfig {
                enabled: true,
                tag_ttl: Span::from_secs(60),
                negative_ttl: Span::from_secs(30),
                credentials_file: None,
                upstreams: upstreams
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Auto,
            },
        }
    }

    /// Defaults without any config file: everything a laptop can run unprivileged.
    pub fn laptop_defaults() -> Self {
        let mut c = Self::production_defaults();
        c.state_dir = PathBuf::from("./image-cache-state");
        c.http.listen = addrs(&["127.0.0.1:8080"]);
        c.dns.listen = addrs(&["127.0.0.1:5353"]);
        c.passthrough.enabled = false;
        c
    }

    pub fn domain(&self, name: &str) -> Option<&DomainConfig> {
        self.domains.iter().find(|d| d.name == name)
    }
}
