//! TLS passthrough for intercepted names: clients that speak HTTPS to an intercepted domain (DNS sent them
//! here) are spliced to the real origin, so they keep end-to-end TLS with it. We read the ClientHello's
//! server name and nothing else; a name that is not intercepted gets the connection closed, nothing sent.
//! The origin is resolved through `dns.upstreams` (never through our own interceptor, which would answer
//! with ourselves).
//!
//! As closed as DNS: only clients of `passthrough.allow` (default `dns.allow`) are served; a name the
//! client picked (a subdomain under `include_subdomains`, dialled by its own name) is never spliced to
//! an internal address — loopback, link-local, private, the partition's own networks — unless listed in
//! `passthrough.allow_targets`; one client holds at most `max_per_client` connections, and a connection
//! that has not sent its ClientHello within `hello_timeout` is closed, freeing its slot.

pub mod sni;

use crate::config::{Config, DomainConfig};
use crate::metrics::{Metrics, ResultLabels, passthrough_result};
use crate::upstream::{NameResolver, address};
use ipnet::IpNet;
use sni::Sni;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const SPLICE_BUFFER: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for TLS passthrough on {addr}: {source}{hint}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
    hint: &'static str,
}

struct Ctx {
    domains: Vec<DomainConfig>,
    resolver: NameResolver,
    connect_timeout: Duration,
    idle_timeout: Duration,
    hello_timeout: Duration,
    clients: Vec<IpNet>,
    max_per_client: usize,
    /// Connections held per client address.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Where a client-chosen name must not lead, and the exceptions.
    own_networks: Vec<IpNet>,
    allow_targets: Vec<IpNet>,
    metrics: Metrics,
}

/// A client's slot in `per_client`, given back on drop.
struct ClientSlot {
    ctx: Arc<Ctx>,
    ip: IpAddr,
}

impl Ctx {
    fn count(&self, result: &'static str) {
        self.metrics
            .passthrough
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut held = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_default();
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            ctx: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self
            .ctx
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

pub struct Passthrough {
    pub addrs: Vec<SocketAddr>,
    tasks: tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
}

impl Passthrough {
    pub async fn start(
        config: &Config,
        resolver: NameResolver,
        metrics: Metrics,
    ) -> Result<Self, BindError> {
        let clients = config.passthrough.clients(&config.dns).to_vec();
        let ctx = Arc::new(Ctx {
            domains: config.domains.clone(),
            resolver,
            connect_timeout: config.upstream.connect_timeout.get(),
            idle_timeout: config.passthrough.idle_timeout.get(),
            hello_timeout: config.passthrough.hello_timeout.get(),
            own_networks: clients.clone(),
            clients,
            max_per_client: config.passthrough.max_per_client,
            per_client: Mutex::default(),
            allow_targets: config.passthrough.allow_targets.clone(),
            metrics,
        });
        let limit = Arc::new(Semaphore::new(config.passthrough.max_connections));
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut addrs = Vec::new();
        for &addr in &config.passthrough.listen {
            let listener = bind(addr)?;
            let local = listener.local_addr().map_err(|source| BindError {
                addr,
                source,
                hint: "",
            })?;
            tracing::info!("listening tls passthrough on {local}");
            addrs.push(local);
            tasks.spawn(accept(
                listener,
                Arc::clone(&ctx),
                Arc::clone(&limit),
                shutdown.clone(),
            ));
        }
        Ok(Passthrough {
            addrs,
            tasks,
            shutdown,
        })
    }

    /// Stops accepting and closes every spliced connection.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    crate::listen::tcp(addr)
        .and_then(TcpListener::from_std)
        .map_err(|source| BindError {
            addr,
            hint: crate::listen::hint(&source, " (port 443 needs root or CAP_NET_BIND_SERVICE)"),
            source,
        })
}

async fn accept(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "passthrough accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let ip = address::canonical(peer.ip());
        if !ctx.clients.iter().any(|n| n.contains(&ip)) {
            tracing::debug!(%peer, "passthrough client not in passthrough.allow; closing");
            ctx.count(passthrough_result::CLIENT);
            continue;
        }
        let Some(slot) = ctx.claim(ip) else {
            tracing::warn!(%peer, "passthrough.max_per_client reached for this client; closing");
            ctx.count(passthrough_result::PER_CLIENT);
            continue;
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, "passthrough connection limit reached; closing");
            ctx.count(passthrough_result::LIMIT);
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                r = handle(client, &ctx) => match r {
                    Ok(()) => ctx.count(passthrough_result::SPLICED),
                    Err((result, why)) => {
                        tracing::debug!(%peer, %why, "passthrough connection ended");
                        ctx.count(result);
                    }
                },
                _ = shutdown.cancelled() => {}
            }
            drop(permit);
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// How a connection ended badly: the `result` label of `image_cache_passthrough_connections_total` and
/// why.
type Ended = (&'static str, String);

async fn handle(mut client: TcpStream, ctx: &Ctx) -> Result<(), Ended> {
    let _ = client.set_nodelay(true);
    let (hello, name) = tokio::time::timeout(ctx.hello_timeout, read_hello(&mut client))
        .await
        .map_err(|_| {
            (
                passthrough_result::HELLO,
                "no ClientHello in time".to_string(),
            )
        })?
        .map_err(|why| (passthrough_result::HELLO, why))?;
    let Some(domain) = crate::config::vhost::find(&ctx.domains, &name) else {
        return Err((
            passthrough_result::NAME,
            format!("{name} is not intercepted; closed"),
        ));
    };
    let error = |why: String| (passthrough_result::ERROR, why);
    let origin = crate::config::vhost::origin_for(domain, &name);
    let url = url::Url::parse(&origin).map_err(|e| error(format!("origin {origin}: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| error(format!("origin {origin} has no host")))?;
    let port = url.port().unwrap_or(443);
    let mut addrs = ctx
        .resolver
        .lookup_socket_addrs(host, port)
        .await
        .map_err(|e| error(e.to_string()))?;
    if crate::config::vhost::client_named(domain, &name) {
        // The client picked this name (a subdomain under `include_subdomains`, dialled by its own name):
        // it may lead only to the public internet.
        let before = addrs.len();
        let mut why = String::new();
        addrs.retain(|a| {
            address::dialable(a.ip(), &ctx.own_networks, &ctx.allow_targets)
                .map_err(|e| why = e)
                .is_ok()
        });
        if addrs.is_empty() && before > 0 {
            return Err((
                passthrough_result::TARGET,
                format!("{name} resolves to {why}; refused"),
            ));
        }
    }
    let mut server = dial(&addrs, ctx.connect_timeout).await.map_err(error)?;
    server
        .write_all(&hello)
        .await
        .map_err(|e| error(format!("writing to {host}: {e}")))?;
    // Spliced: however it ends afterwards, it counts as spliced.
    if let Err(why) = splice(client, server, ctx.idle_timeout).await {
        tracing::debug!(%why, "spliced connection ended");
    }
    Ok(())
}

/// Reads until the ClientHello's server name is known.
async fn read_hello(client: &mut TcpStream) -> Result<(Vec<u8>, String), String> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading ClientHello: {e}"))?;
        if n == 0 {
            return Err("client closed before its ClientHello".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match sni::server_name(&buf) {
            Sni::NeedMore => continue,
            Sni::Found(name) => return Ok((buf, name)),
            Sni::Missing => return Err("ClientHello without a server name".into()),
            Sni::NotTls => return Err("not a TLS ClientHello".into()),
        }
    }
}

async fn dial(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out"),
        }
    }
    Err(format!("cannot reach the origin: {last}"))
}

/// Copies both ways until both sides are done, or until nothing moved in either direction for `idle`.
async fn splice(client: TcpStream, server: TcpStream, idle: Duration) -> Result<(), String> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let both = async {
        tokio::try_join!(pump(cr, sw, start, &last), pump(sr, cw, start, &last))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle.min(Duration::from_secs(1))).await;
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    tokio::select! {
        r = both => r,
        _ = watchdog => Err(format!("idle for {}s; closed", idle.as_secs())),
    }
}

/// One direction; `last` is when any direction last moved a byte (ms since `start`).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    start: Instant,
    last: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; SPLICE_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close: the other side may still be sending.
            let _ = to.shutdown().await;
            return Ok(());
        }
        last.store(
            u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        to.write_all(&buf[..n]).await?;
    }
}
