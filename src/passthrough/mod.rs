//! TLS passthrough for intercepted names: clients that speak HTTPS to an intercepted domain (DNS sent them
//! here) are spliced to the real origin, so they keep end-to-end TLS with it. We read the ClientHello's
//! server name and nothing else; a name that is not intercepted gets the connection closed, nothing sent.
//! The origin is resolved through `dns.upstreams` (never through our own interceptor, which would answer
//! with ourselves).

pub mod sni;

use crate::config::{Config, DomainConfig};
use crate::upstream::NameResolver;
use sni::Sni;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A client must have sent its ClientHello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
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
}

pub struct Passthrough {
    pub addrs: Vec<SocketAddr>,
    tasks: tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
}

impl Passthrough {
    pub async fn start(config: &Config, resolver: NameResolver) -> Result<Self, BindError> {
        let ctx = Arc::new(Ctx {
            domains: config.domains.clone(),
            resolver,
            connect_timeout: config.upstream.connect_timeout.get(),
            idle_timeout: config.passthrough.idle_timeout.get(),
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
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, "passthrough connection limit reached; closing");
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                r = handle(client, &ctx) => if let Err(why) = r {
                    tracing::debug!(%peer, %why, "passthrough connection ended");
                },
                _ = shutdown.cancelled() => {}
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

async fn handle(mut client: TcpStream, ctx: &Ctx) -> Result<(), String> {
    let _ = client.set_nodelay(true);
    let (hello, name) = tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut client))
        .await
        .map_err(|_| "no ClientHello in time".to_string())??;
    let Some(domain) = crate::config::vhost::find(&ctx.domains, &name) else {
        return Err(format!("{name} is not intercepted; closed"));
    };
    let origin = crate::config::vhost::origin_for(domain, &name);
    let url = url::Url::parse(&origin).map_err(|e| format!("origin {origin}: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("origin {origin} has no host"))?;
    let port = url.port().unwrap_or(443);
    let addrs = ctx
        .resolver
        .lookup_socket_addrs(host, port)
        .await
        .map_err(|e| e.to_string())?;
    let mut server = dial(&addrs, ctx.connect_timeout).await?;
    server
        .write_all(&hello)
        .await
        .map_err(|e| format!("writing to {host}: {e}"))?;
    splice(client, server, ctx.idle_timeout).await
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
