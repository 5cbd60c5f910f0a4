//! Shared harness: a test CA and HTTPS origin, the service started in-process on 127.0.0.1:0, a client.

pub(crate) mod dns;
pub(crate) mod metal_api;
pub(crate) mod oci;
pub(crate) mod origin;
pub(crate) mod partition;

use image_cache::app::{self, Running};
use image_cache::config::{Config, DomainConfig, OnMiss, Span};
use origin::{Origin, TestCa};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const DOMAIN: &str = "files.test";

pub(crate) struct Env {
    pub ca: TestCa,
    pub origin: Origin,
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
}

impl Env {
    pub(crate) async fn new() -> Self {
        let ca = TestCa::new();
        let origin = Origin::start(&ca).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        Env {
            ca,
            origin,
            dir,
            ca_file,
        }
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A config with one intercepted domain whose origin is the test origin.
    pub(crate) fn config(&self, on_miss: OnMiss) -> Config {
        let mut c = Config::laptop_defaults();
        c.state_dir = self.state_dir();
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.dns.enabled = false;
        // Names are resolved through dns.upstreams even with DNS off: keep every lookup on loopback
        // (/etc/hosts answers `localhost`; anything else gets a quick refusal from this unused port).
        c.dns.upstreams = vec!["127.0.0.1:9".parse().unwrap()];
        c.upstream.ca_file = Some(self.ca_file.clone());
        c.upstream.read_timeout = Span(Duration::from_secs(2));
        c.upstream.connect_timeout = Span(Duration::from_secs(2));
        let mut d = DomainConfig::named(DOMAIN);
        d.origin = Some(self.origin.url());
        d.on_miss = on_miss;
        c.domains = vec![d];
        c
    }

    pub(crate) async fn start(&self, config: Config) -> Service {
        let running = app::start(config).await.expect("service starts");
        let base = format!("http://{}", running.http_addrs[0]);
        Service {
            running: Some(running),
            base,
            client: client(),
        }
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub(crate) struct Service {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
}

impl Service {
    pub(crate) fn store(&self) -> &image_cache::store::Store {
        &self.running.as_ref().unwrap().store
    }

    /// A request for `path` with the intercepted Host.
    pub(crate) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{}", self.base, path))
            .header("host", DOMAIN)
    }

    pub(crate) fn admin(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{}", self.base, path))
    }

    /// The body of an admin route.
    pub(crate) async fn text(&self, path: &str) -> String {
        self.admin(path).send().await.unwrap().text().await.unwrap()
    }

    pub(crate) async fn metric(&self, needle: &str) -> f64 {
        let text = self.text("/metrics").await;
        text.lines()
            .find(|l| l.starts_with(needle) && l[needle.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of every series of `family` whose labels contain `labels` (e.g. `result="fallback"`).
    pub(crate) async fn metric_sum(&self, family: &str, labels: &str) -> f64 {
        let text = self.text("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .sum()
    }

    /// Waits until no fill is running (a client has its last byte slightly before the index commit).
    pub(crate) async fn settle(&self) {
        for _ in 0..200 {
            if self.store().fills().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fills still running: {:?}", self.store().fills());
    }

    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Stops at once: connections closed, fills aborted, nothing drained (a node dying).
    pub(crate) async fn stop_now(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_now().await;
        }
    }
}

/// A port on `ip` that nothing listens on (bound, read back and released): a peer or registry that is down.
pub(crate) fn unused_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The files under `dir`, recursively (to check that nothing was written outside the state dir).
/// A listener that only counts the connections made to it: the proof that nothing was dialled.
pub(crate) struct Canary {
    pub(crate) port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Canary {
    pub(crate) async fn start() -> Self {
        Self::start_on("127.0.0.1:0")
            .await
            .expect("a loopback port")
    }

    /// On a given address (a privileged port needs root: the error says so).
    pub(crate) async fn start_on(addr: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = connections.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Ok(Canary { port, connections })
    }

    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub(crate) fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub(crate) fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A request sent byte for byte (client libraries normalise `..` away). Returns the whole response.
pub(crate) async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Sends a request and reads its whole answer, panicking on transport errors (the status is the
/// caller's to check where it matters).
pub(crate) trait Fetch {
    async fn fetch(self) -> bytes::Bytes;
    async fn fetch_text(self) -> String;
}

impl Fetch for reqwest::RequestBuilder {
    async fn fetch(self) -> bytes::Bytes {
        self.send().await.unwrap().bytes().await.unwrap()
    }

    async fn fetch_text(self) -> String {
        self.send().await.unwrap().text().await.unwrap()
    }
}

/// A response header as text ("" when absent or not text).
pub(crate) fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
