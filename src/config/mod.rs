//! The configuration: serde structs that reject unknown keys, typed values (sizes, durations, addresses,
//! enums) parsed once at load time, and the two sets of built-in defaults (production and laptop).
//!
//! Every other module reads this typed [`Config`]; nothing re-parses strings later.

pub mod credentials;
mod load;
pub mod profile;
pub mod units;
mod validate;
pub mod vhost;

pub use load::{ConfigError, ConfigSource, from_toml, load};
pub use units::{ByteSize, Reserve, Span};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Said at start-up and by `check-config` when no admin token is configured.
pub const ADMIN_WITHOUT_TOKEN: &str = "no http.admin_token_file: the admin routes that change state \
     (remove, pin, gc, verify, sync) answer only clients on this node's loopback; reads (status page, \
     /metrics, /admin listings) answer any client whose Host names this node";

/// The default config file path of `serve`, `check-config`, `sync` and `store`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/image-cache/config.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Holds `blobs/`, `tmp/` and `index.redb`; tmp and blobs share it so a fill is published by rename.
    pub state_dir: PathBuf,
    /// The store's size.
    pub cache: CacheConfig,
    /// The HTTP listeners: file cache, registry mirror, admin routes.
    pub http: HttpConfig,
    /// The DNS interceptor and forwarder.
    pub dns: DnsConfig,
    /// TLS passthrough to the real origins of intercepted names.
    pub passthrough: PassthroughConfig,
    /// The intercepted domains (`[[domains]]`): answered in DNS, cached over HTTP, passed through on 443.
    pub domains: Vec<DomainConfig>,
    /// This node and the other cache nodes of the partition.
    pub nodes: NodesConfig,
    /// The outbound HTTP client: trust roots and timeouts for origins, registries, peers and metal-api.
    pub upstream: UpstreamConfig,
    /// The metal-api sync.
    pub sync: SyncConfig,
    /// The OCI pull-through mirror.
    pub registry: RegistryConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Eviction brings the store back to 90% of this when it grows past it.
    pub max_size: ByteSize,
    /// Fills started for clients that may run at once on this node (requests joining a running fill do
    /// not count; sync and prefetch downloads are bounded by their own settings). Beyond: 503 with
    /// `Retry-After`, so a client (containerd) goes to its next host.
    #[serde(default = "default_max_fills")]
    pub max_fills: usize,
    /// Of those, how many one client address may have running: one tenant cannot take every fill.
    /// Other cache nodes of the partition are not counted per address.
    #[serde(default = "default_max_fills_per_client")]
    pub max_fills_per_client: usize,
}

fn default_max_fills() -> usize {
    512
}

fn default_max_fills_per_client() -> usize {
    64
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where HTTP is served: intercepted domains by Host, `/v2/` for the mirror, and (unless
    /// `admin_listen` is set) the admin routes.
    pub listen: Vec<SocketAddr>,
    /// When non-empty, `/health`, `/ready`, `/metrics` and `/admin` are served only on these addresses.
    #[serde(default)]
    pub admin_listen: Vec<SocketAddr>,
    /// Optional bearer token for `/admin`; the file is read at start-up, its content is never logged.
    /// Without one, routes that change state answer only clients on this node's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Host names (besides this node's addresses and `localhost`) under which the status page, `/metrics`
    /// and `/admin` answer, e.g. `cache-1.mgmt.example`. Any other `Host` is refused (DNS rebinding).
    #[serde(default)]
    pub admin_hosts: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Serve DNS. Off, names of origins are still resolved through `upstreams`.
    pub enabled: bool,
    /// UDP and TCP listeners (each address serves both).
    pub listen: Vec<SocketAddr>,
    /// Resolvers every name that is not intercepted is forwarded to, and that the cache itself resolves
    /// origins, registries and peers with (never its own listener). Empty (only with `enabled = false`):
    /// the system's /etc/resolv.conf, as in a container.
    pub upstreams: Vec<SocketAddr>,
    /// Clients that may ask; others get REFUSED. Never an open resolver.
    pub allow: Vec<IpNet>,
    /// TTL of answers for intercepted names, and the minimum of their SOA.
    pub answer_ttl: Span,
    /// How the healthy nodes are ordered in answers for intercepted names: `rotate` (every healthy
    /// node takes the first place in turn, so a rack booting at once spreads over the partition) or
    /// `self-first` (this node first, then the peers in turn: locality over spreading).
    #[serde(default)]
    pub answer_order: AnswerOrder,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerOrder {
    #[default]
    Rotate,
    SelfFirst,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// Accept TLS for intercepted names and splice it to the real origin.
    pub enabled: bool,
    /// Usually `<this node>:443`.
    pub listen: Vec<SocketAddr>,
    /// Connections spliced at once; more are closed at accept.
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Span,
    /// Clients that may use the passthrough; others are closed at accept, nothing sent. `dns.allow` when
    /// absent (whoever may resolve the intercepted names here may connect to them here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<IpNet>>,
    /// Connections one client address may hold at once.
    #[serde(default = "default_max_per_client")]
    pub max_per_client: usize,
    /// A client must have sent its ClientHello within this time, or its connection (and slot) goes.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout: Span,
    /// Addresses a name taken from a client's SNI (a subdomain under `include_subdomains`) may be spliced
    /// to although they are internal (loopback, link-local, private, the partition's own networks):
    /// none unless listed here.
    #[serde(default)]
    pub allow_targets: Vec<IpNet>,
}

fn default_max_per_client() -> usize {
    64
}

fn default_hello_timeout() -> Span {
    Span::from_secs(5)
}

impl PassthroughConfig {
    /// `allow`, or `dns.allow` when absent.
    pub fn clients<'a>(&'a self, dns: &'a DnsConfig) -> &'a [IpNet] {
        self.allow.as_deref().unwrap_or(&dns.allow)
    }
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
    /// The intercepted host name, e.g. `images.metal-stack.io`.
    pub name: String,
    /// `https://<name>` when absent. May carry a path prefix; the request path is appended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// What a request for an object the store lacks gets: `fill`, `redirect` or `proxy`.
    #[serde(default = "default_on_miss")]
    pub on_miss: OnMiss,
    /// Also intercept every name below `name`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// A stored copy older than this is checked with a conditional request before it is served.
    #[serde(default = "default_revalidate_after")]
    pub revalidate_after: Span,
    /// A stored file the origin answers 404/410 for is still served this long (from the first such
    /// answer), then removed; `0s`: follow the origin at once. Pinned files are never removed by it.
    #[serde(default = "default_deleted_grace")]
    pub deleted_grace: Span,
}

/// A week: long enough to notice (the status page lists such objects) and to pin what must stay.
pub fn default_deleted_grace() -> Span {
    Span::from_secs(7 * 86_400)
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
            deleted_grace: default_deleted_grace(),
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
    /// The other cache nodes of the partition, by internal address.
    pub peers: Vec<IpAddr>,
    /// A name whose addresses are the partition's nodes (a Kubernetes headless Service), resolved
    /// again every `health_interval`; this node's own address (`self`) is left out. Adds to `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_from: Option<String>,
    /// The HTTP port the peers serve on (their `/health` and their store).
    pub peer_port: u16,
    /// How often every peer's `/health` is polled (up after 2 good polls, down after 3 bad ones).
    pub health_interval: Span,
    /// How long a fill waits for the owner of a key (another node) to answer with headers before it
    /// goes to the origin itself. Short on purpose: a dead or stuck node must not hold a rack's boot.
    #[serde(default = "default_peer_timeout")]
    pub peer_timeout: Span,
}

fn default_peer_timeout() -> Span {
    Span::from_secs(5)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Extra PEM trust roots for origins, added to the system's and the built-in web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for a TCP connection and TLS handshake.
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
    /// Run the sync on `schedule` inside `serve` (`image-cache sync` runs regardless).
    pub enabled: bool,
    /// Standard 5-field cron, evaluated in UTC.
    pub schedule: String,
    /// Plan only, change nothing (scheduled runs).
    pub dry_run: bool,
    /// `v1` (REST + HMAC) or `v2` (Connect + token).
    pub api: MetalApiVersion,
    /// metal-api's base URL, e.g. `http://metal-api:8080/metal`.
    pub url: String,
    /// v1: the file holding the view HMAC key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_file: Option<PathBuf>,
    /// v1: the HMAC auth type, `Metal-View` for a view key.
    pub auth_type: String,
    /// v2: the file holding the token (rewritten when refreshed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Newest images kept per variant even when the store would be over `cache.max_size`.
    pub min_images_per_name: u32,
    /// Newest images kept per variant at most; 0 = all.
    pub max_images_per_name: u32,
    /// An expired image is still kept this long after its expiration date.
    pub expiration_grace_period: Span,
    /// Images whose URL contains any of these are never synced.
    pub excludes: Vec<String>,
    /// Sync the partitions' kernels.
    pub kernels: bool,
    /// Sync the partitions' boot images (initrds), with their `.md5`.
    pub boot_images: bool,
    /// Downloads at once.
    pub concurrency: u32,
    /// Scheduled runs start after a random delay of up to this much, so the nodes of a partition do not
    /// all ask metal-api in the same second (runs asked for on demand start at once).
    #[serde(default = "default_sync_jitter")]
    pub jitter: Span,
    /// Allow downloads over plain HTTP from hosts that are not intercepted domains (an internal mirror
    /// on a trusted network). Intercepted domains are always fetched from their `origin`.
    #[serde(default)]
    pub allow_http_origins: bool,
}

fn default_sync_jitter() -> Span {
    Span::from_secs(180)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Serve `/v2/` on every Host that is not an intercepted domain.
    pub enabled: bool,
    /// A stored tag is served without asking the registry for this long, then revalidated with a HEAD.
    pub tag_ttl: Span,
    /// A registry's 404 is remembered (and answered without asking it) for this long.
    pub negative_ttl: Span,
    /// A stored tag (or referrers index) the registry answers 404/410 for is still served this long
    /// (from the first such answer), then removed; `0s`: follow the registry at once. Pinned tags
    /// (prefetch, operator) are never removed by it.
    #[serde(default = "default_deleted_grace")]
    pub deleted_grace: Span,
    /// Below this much of a registry's announced pull budget (`ratelimit-remaining` against
    /// `ratelimit-limit`), the cache spends the rest only on live pulls of content it does not hold:
    /// tag revalidations serve the stored tag, prefetch runs defer.
    #[serde(default = "default_ratelimit_reserve")]
    pub ratelimit_reserve: Reserve,
    /// The registries the mirror may dial: `ns` (or a path prefix) name → base URL. The host dialled
    /// never comes from a request.
    pub upstreams: BTreeMap<String, String>,
    /// Accounts for upstream registries (docker `config.json` format). What they fetch is served to
    /// every client of the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Token realm hosts, besides each registry's own host, that may receive an account of
    /// `credentials_file` (over HTTPS): Docker Hub's `auth.docker.io` by default.
    #[serde(default = "default_token_realms")]
    pub token_realms: Vec<String>,
    /// The registry for requests that name none (no `ns`, no registry path prefix): Docker's
    /// `registry-mirrors`. Unset: `docker.io` when it is in `upstreams`; `""`: such requests get 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_upstream: Option<String>,
    /// Images pulled into the store at start-up and on `prefetch_schedule`, pinned while listed
    /// (`ghcr.io/org/app:1.2`, `nginx:1.27`, `registry.k8s.io/pause@sha256:…`).
    #[serde(default)]
    pub prefetch: Vec<String>,
    /// When the prefetch runs again (cron, UTC, 5 fields).
    #[serde(default = "default_prefetch_schedule")]
    pub prefetch_schedule: String,
    /// Platforms of an index to prefetch (`linux/amd64`, `linux/arm64/v8`); empty: every one.
    #[serde(default)]
    pub prefetch_platforms: Vec<String>,
    /// Serve registries that are not in `upstreams` too (`https://<ns>`), when the name is a public
    /// host name on an `open_ports` port, every address it resolves to is public (checked on each
    /// connection and redirect), and it is not on `deny`. Off: such requests get NAME_UNKNOWN.
    #[serde(default)]
    pub open: bool,
    /// Ports an unlisted registry may be dialled on (its name's port, 443 when it names none).
    #[serde(default = "default_open_ports")]
    pub open_ports: Vec<u16>,
    /// Registries never served when unlisted: `host` exactly, or `*.domain` for every name under it.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Requests per second the cache sends to one unlisted registry (bursts of as many).
    #[serde(default = "default_open_rate_limit")]
    pub open_rate_limit: u32,
}

fn default_ratelimit_reserve() -> Reserve {
    Reserve::Percent(20)
}

fn default_open_ports() -> Vec<u16> {
    vec![443]
}

fn default_open_rate_limit() -> u32 {
    20
}

fn default_prefetch_schedule() -> String {
    "0 */6 * * *".into()
}

impl RegistryConfig {
    /// The registry a request without `ns` or path prefix goes to, if any.
    pub fn default_upstream(&self) -> Option<&str> {
        match self.default_upstream.as_deref() {
            None => self
                .upstreams
                .contains_key("docker.io")
                .then_some("docker.io"),
            Some("") => None,
            Some(name) => Some(name),
        }
    }
}

fn default_token_realms() -> Vec<String> {
    vec!["auth.docker.io".into()]
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
    /// `auto`, `text`, `json` or `journald`.
    pub format: LogFormat,
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().filter_map(|a| a.parse().ok()).collect()
}

impl Config {
    /// The partition profile (docs/configuration.md), used when a config file exists.
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
                max_fills: default_max_fills(),
                max_fills_per_client: default_max_fills_per_client(),
            },
            http: HttpConfig {
                listen: addrs(&["0.0.0.0:80"]),
                admin_listen: vec![],
                admin_token_file: None,
                admin_hosts: vec![],
            },
            dns: DnsConfig {
                enabled: true,
                listen: addrs(&["0.0.0.0:53"]),
                upstreams: addrs(&["8.8.8.8:53", "1.1.1.1:53"]),
                allow: nets.iter().filter_map(|n| n.parse().ok()).collect(),
                answer_ttl: Span::from_secs(30),
                answer_order: AnswerOrder::Rotate,
            },
            passthrough: PassthroughConfig {
                enabled: true,
                listen: addrs(&["0.0.0.0:443"]),
                max_connections: 4096,
                idle_timeout: Span::from_secs(300),
                allow: None,
                max_per_client: default_max_per_client(),
                hello_timeout: default_hello_timeout(),
                allow_targets: vec![],
            },
            domains: vec![
                DomainConfig::named("images.metal-stack.io"),
                DomainConfig::named("github.com"),
            ],
            nodes: NodesConfig {
                self_addr: None,
                peers: vec![],
                peers_from: None,
                peer_port: 80,
                health_interval: Span::from_secs(2),
                peer_timeout: default_peer_timeout(),
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
                jitter: default_sync_jitter(),
                allow_http_origins: false,
            },
            registry: RegistryConfig {
                enabled: true,
                tag_ttl: Span::from_secs(60),
                negative_ttl: Span::from_secs(30),
                deleted_grace: default_deleted_grace(),
                ratelimit_reserve: default_ratelimit_reserve(),
                credentials_file: None,
                token_realms: default_token_realms(),
                default_upstream: None,
                prefetch: vec![],
                prefetch_schedule: default_prefetch_schedule(),
                prefetch_platforms: vec![],
                open: false,
                open_ports: default_open_ports(),
                deny: vec![],
                open_rate_limit: default_open_rate_limit(),
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
