//! The DNS interceptor: intercepted names resolve to the healthy cache nodes, everything else is forwarded
//! to `dns.upstreams`, clients outside `dns.allow` are refused. UDP runs on our own receive loops
//! (`udp.rs`), TCP on hickory-server; both share one `Responder`. hickory types stay inside this module.

mod fastpath;
mod forward;
mod handler;
pub mod policy;
mod replay;
mod udp;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::upstream::NameResolver;
use handler::{Responder, TcpHandler};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded queries in flight at once over UDP; beyond this, queries are dropped (clients retry).
const MAX_FORWARDS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr} ({proto}): {source}{hint}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("dns: {0}")]
    Zone(#[from] policy::ZoneError),
    #[error("dns: cannot build a resolver: {0}")]
    Resolver(String),
}

pub struct Dns {
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
    server: hickory_server::Server<TcpHandler>,
    tasks: tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
}

impl Dns {
    /// Binds every `dns.listen` address on UDP (one socket per worker) and TCP, and starts serving.
    pub async fn start(
        config: &Config,
        peers: Peers,
        resolver: NameResolver,
        metrics: Metrics,
        clock: &crate::clock::Clock,
        workers: usize,
    ) -> Result<Self, DnsError> {
        let domains: Vec<(String, bool)> = config
            .domains
            .iter()
            .map(|d| (d.name.clone(), d.include_subdomains))
            .collect();
        let ttl = u32::try_from(config.dns.answer_ttl.get().as_secs()).unwrap_or(u32::MAX);
        // The zone's serial is the start time (it changes when the answers may have).
        let serial = u32::try_from(clock.now_secs() % (1 << 32)).unwrap_or(0);
        let policy = policy::Policy::new(&domains, config.dns.allow.clone(), ttl, serial)?;
        let responder = Arc::new(Responder::new(
            policy,
            peers,
            forward::Forwarder::new(resolver),
            metrics,
            config.dns.answer_order,
        ));
        let shutdown = CancellationToken::new();
        let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
        let mut tasks = tokio::task::JoinSet::new();
        let mut server = hickory_server::Server::with_access(
            TcpHandler(Arc::clone(&responder)),
            [],
            config.dns.allow.iter().copied(),
        );
        let mut udp_addrs = Vec::new();
        let mut tcp_addrs = Vec::new();
        for &addr in &config.dns.listen {
            let (addr, sockets, listener) = bind_pair(addr, workers)?;
            for socket in sockets {
                tasks.spawn(udp::serve(
                    Arc::new(socket),
                    Arc::clone(&responder),
                    Arc::clone(&forwards),
                    shutdown.clone(),
                ));
            }
            udp_addrs.push(addr);
            tcp_addrs.push(
                listener
                    .local_addr()
                    .map_err(|e| bind_error(addr, "tcp", e))?,
            );
            server.register_listener(listener, TCP_IDLE, 65_535);
            tracing::info!("listening dns on {addr} (udp, tcp)");
        }
        Ok(Dns {
            udp_addrs,
            tcp_addrs,
            server,
            tasks,
            shutdown,
        })
    }

    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns tcp server stopped with an error");
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

fn bind_error(addr: SocketAddr, proto: &'static str, source: std::io::Error) -> DnsError {
    let hint = match source.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another DNS server holds this address: systemd-resolved or dnsmasq? set dns.listen to a specific address)"
        }
        _ => crate::listen::hint(
            &source,
            " (port 53 needs root or CAP_NET_BIND_SERVICE; the laptop default is 127.0.0.1:5353)",
        ),
    };
    DnsError::Bind {
        addr,
        proto,
        hint,
        source,
    }
}

/// The UDP sockets (one per worker) and the TCP listener of one `dns.listen` address. With port 0
/// (tests) the first UDP socket picks the port and the rest share it; the same TCP port may be taken
/// by some other connection's local end, and then another port is picked.
fn bind_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<
    (
        SocketAddr,
        Vec<tokio::net::UdpSocket>,
        tokio::net::TcpListener,
    ),
    DnsError,
> {
    const PICKS: usize = 20;
    let mut pick = 0;
    loop {
        pick += 1;
        let first = bind_udp(addr, workers > 1)?;
        let bound = first.local_addr().map_err(|e| bind_error(addr, "udp", e))?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(bind_udp(bound, true)?);
        }
        match crate::listen::tcp(bound).and_then(tokio::net::TcpListener::from_std) {
            Ok(listener) => return Ok((bound, sockets, listener)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && pick < PICKS => {}
            Err(e) => return Err(bind_error(bound, "tcp", e)),
        }
    }
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> Result<tokio::net::UdpSocket, DnsError> {
    crate::listen::udp(addr, reuse_port)
        .and_then(tokio::net::UdpSocket::from_std)
        .map_err(|e| bind_error(addr, "udp", e))
}

/// The UDP path (`udp::process`: replayed answers, parsing, FORMERR, the policy's answer) without
/// sockets, for the fuzz harness: arbitrary bytes in, from an allowed and from a refused client.
#[doc(hidden)]
pub struct FuzzTarget {
    responder: Responder,
    templates: fastpath::Templates,
    healthy: crate::peers::Healthy,
}

impl FuzzTarget {
    /// Must be called inside a tokio runtime (the forwarder's resolver is built, never used).
    pub fn new(config: &Config) -> Result<Self, DnsError> {
        let domains: Vec<(String, bool)> = config
            .domains
            .iter()
            .map(|d| (d.name.clone(), d.include_subdomains))
            .collect();
        let policy = policy::Policy::new(&domains, config.dns.allow.clone(), 30, 1)?;
        let resolver = NameResolver::for_forwarding(&config.dns).map_err(DnsError::Resolver)?;
        let peers = Peers::new(&config.nodes);
        Ok(FuzzTarget {
            responder: Responder::new(
                policy,
                peers,
                forward::Forwarder::new(resolver),
                Metrics::new(),
                config.dns.answer_order,
            ),
            templates: fastpath::Templates::default(),
            healthy: crate::peers::Healthy {
                this: Some(std::net::Ipv4Addr::new(10, 0, 0, 1).into()),
                peers: vec![std::net::Ipv4Addr::new(10, 0, 0, 2).into()],
                generation: 1,
            },
        })
    }

    pub fn packet(&mut self, data: &[u8]) {
        for src in ["127.0.0.1:5000", "203.0.113.9:5000"] {
            let Ok(src) = src.parse::<SocketAddr>() else {
                continue;
            };
            let _ = udp::process(
                data,
                src,
                &self.responder,
                &mut self.templates,
                &self.healthy,
                std::time::Instant::now(),
            );
        }
        // The same bytes as an upstream's answer: what the forwarded-answer table would keep of them.
        if let Some(recorded) = replay::Recorded::new(data.to_vec()) {
            let _ = recorded.at(1);
        }
    }
}
