//! The partition's cache nodes and which of them are healthy right now.
//!
//! A worker polls every peer's `/health` each `nodes.health_interval`; hysteresis (rise 2, fall 3) decides
//! when a peer counts as up. With `nodes.peers_from` (a Kubernetes headless Service) the same worker
//! resolves that name first on every round: nodes that appear start down and must rise like any peer,
//! nodes that are gone leave the set. This node's own health is set from inside (store answers, listeners bound),
//! never by asking itself over the network. Readers get a cheap snapshot: DNS answers it on every query.

mod fill;
mod hysteresis;
pub mod owner;
mod route;

pub use fill::PeerAsk;
pub use hysteresis::{FALL, Health, RISE};
pub use route::Asker;

/// Marks a request from another cache node: "fill this from the origin yourself, never from a node".
/// A request carrying it is never passed on to a node, so a request crosses at most one hop between
/// nodes; honoured only from the addresses of `nodes.peers`.
pub const PEER_HEADER: &str = "x-image-cache-peer";
/// The origin's own entity tag, sent by the owner to the node it serves (its `ETag` is the content
/// digest), so that node can revalidate with the origin later.
pub const ORIGIN_ETAG_HEADER: &str = "x-image-cache-origin-etag";
/// Set by a node on a 404/410 that is the origin's own answer (`absent`). A node's 404 without it says
/// only that the node does not hold the object (its `on_miss` is not `fill`): never the origin's verdict.
pub const ORIGIN_VERDICT_HEADER: &str = "x-image-cache-origin-verdict";

/// Who fills a key that this node lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This node: from the origin.
    This,
    /// Another node, at this address: this node fills from it (falling back to the origin).
    Peer(SocketAddr),
}

use crate::config::NodesConfig;
use crate::lifecycle::Worker;
use crate::metrics::Metrics;
use crate::upstream::{self, NameResolver, Upstream};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Which nodes may be handed out or asked right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healthy {
    /// This node, when it is healthy itself.
    pub this: Option<IpAddr>,
    /// Healthy peers, in configuration order.
    pub peers: Vec<IpAddr>,
    /// Bumped on every change, so caches of answers built from this set know when to forget them.
    pub generation: u64,
}

impl Healthy {
    pub fn is_empty(&self) -> bool {
        self.this.is_none() && self.peers.is_empty()
    }
}

#[derive(Clone)]
pub struct Peers {
    self_addr: Option<IpAddr>,
    /// `nodes.peers`.
    fixed: Arc<[IpAddr]>,
    /// `nodes.peers_from`.
    peers_from: Option<String>,
    /// `fixed` and what `peers_from` resolved to last, without this node.
    peers: Arc<RwLock<Arc<[IpAddr]>>>,
    peer_port: u16,
    peer_timeout: Duration,
    tx: Arc<watch::Sender<Arc<Healthy>>>,
    rx: watch::Receiver<Arc<Healthy>>,
}

impl Peers {
    pub fn new(config: &NodesConfig) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Healthy::default()));
        let fixed: Arc<[IpAddr]> = config.peers.clone().into();
        Peers {
            self_addr: config.self_addr,
            peers: Arc::new(RwLock::new(Arc::clone(&fixed))),
            fixed,
            peers_from: config.peers_from.clone(),
            peer_port: config.peer_port,
            peer_timeout: config.peer_timeout.get(),
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn healthy(&self) -> Arc<Healthy> {
        Arc::clone(&self.rx.borrow())
    }

    /// A receiver that sees every change (tests and the status page wait on it).
    pub fn watch(&self) -> watch::Receiver<Arc<Healthy>> {
        self.rx.clone()
    }

    /// Where a healthy peer answers HTTP, for second-level fills.
    pub fn healthy_peer_addrs(&self) -> Vec<SocketAddr> {
        self.healthy()
            .peers
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.peer_port))
            .collect()
    }

    /// The partition's other nodes as known now (configured, and discovered through `peers_from`).
    pub fn configured(&self) -> Arc<[IpAddr]> {
        Arc::clone(&self.peers.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether this node has, or may discover, other nodes (the health worker runs then).
    pub fn is_partition(&self) -> bool {
        !self.fixed.is_empty() || self.peers_from.is_some()
    }

    /// How long a fill waits for an owner's headers before going to the origin.
    pub fn timeout(&self) -> Duration {
        self.peer_timeout
    }

    /// Whether a request comes from one of the partition's other nodes (IPv4-mapped IPv6 counts).
    pub fn is_peer(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.configured().contains(&addr)
    }

    /// The owner of `key` among this node and the healthy peers (`owner.rs`). This node always counts
    /// itself: it is the one about to fill.
    pub fn owner(&self, key: &str) -> Owner {
        let Some(me) = self.self_addr else {
            return Owner::This;
        };
        let healthy = self.healthy();
        if healthy.peers.is_empty() {
            return Owner::This;
        }
        let mut nodes = healthy.peers.clone();
        nodes.push(me);
        match owner::owner(key, &nodes) {
            Some(ip) if ip != me => Owner::Peer(SocketAddr::new(ip, self.peer_port)),
            _ => Owner::This,
        }
    }

    /// Marks this node healthy or not (from the app's self-check).
    pub fn set_self_healthy(&self, healthy: bool) {
        let this = if healthy { self.self_addr } else { None };
        self.tx.send_if_modified(|h| {
            if h.this == this {
                return false;
            }
            *h = Arc::new(Healthy {
                this,
                peers: h.peers.clone(),
                generation: h.generation + 1,
            });
            true
        });
    }

    fn set_peers(&self, peers: Vec<IpAddr>) {
        self.tx.send_if_modified(|h| {
            if h.peers == peers {
                return false;
            }
            *h = Arc::new(Healthy {
                this: h.this,
                peers,
                generation: h.generation + 1,
            });
            true
        });
    }

    /// The peers for this round: `nodes.peers` and the addresses `peers_from` resolves to now, without
    /// this node. A failed lookup keeps the last set (a DNS hiccup must not empty the partition).
    async fn discover(&self, resolver: &NameResolver) -> Arc<[IpAddr]> {
        let current = self.configured();
        let Some(name) = &self.peers_from else {
            return current;
        };
        let found = match resolver.lookup_ip(name).await {
            Ok(ips) => ips,
            Err(e) => {
                tracing::warn!(%name, error = %e, "nodes.peers_from did not resolve; keeping the last peers");
                return current;
            }
        };
        let mut all: Vec<IpAddr> = self.fixed.to_vec();
        for ip in found {
            if Some(ip) != self.self_addr && !all.contains(&ip) {
                all.push(ip);
            }
        }
        all.sort();
        let all: Arc<[IpAddr]> = all.into();
        if all != current {
            tracing::info!(peers = ?all, "partition nodes changed");
            *self.peers.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&all);
        }
        all
    }

    /// Polls every peer until `shutdown`. Each probe is bounded by the interval (at least one second).
    pub async fn run(
        self,
        upstream: Upstream,
        resolver: NameResolver,
        interval: Duration,
        metrics: Metrics,
        worker: Worker,
    ) {
        if !self.is_partition() {
            return;
        }
        let mut states: HashMap<IpAddr, Health> = HashMap::new();
        let probe_timeout = interval.max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = worker.shutdown().cancelled() => return,
            }
            worker.busy();
            let peers = self.discover(&resolver).await;
            states.retain(|ip, _| {
                let kept = peers.contains(ip);
                if !kept {
                    metrics.peer_up.get_or_create(&peer_label(*ip)).set(0);
                }
                kept
            });
            for ip in peers.iter() {
                states.entry(*ip).or_insert_with(|| {
                    metrics.peer_up.get_or_create(&peer_label(*ip)).set(0);
                    metrics.initialise_peer(&ip.to_string());
                    Health::default()
                });
            }
            let probes = peers.iter().map(|ip| {
                probe(
                    &upstream,
                    SocketAddr::new(*ip, self.peer_port),
                    probe_timeout,
                )
            });
            let results = futures_util::future::join_all(probes).await;
            for (ip, ok) in peers.iter().zip(results) {
                let Some(state) = states.get_mut(ip) else {
                    continue;
                };
                if let Some(up) = state.observe(ok) {
                    tracing::info!(peer = %ip, up, "peer health changed");
                    metrics
                        .peer_up
                        .get_or_create(&peer_label(*ip))
                        .set(i64::from(up));
                }
            }
            let up = peers
                .iter()
                .filter(|ip| states.get(ip).is_some_and(Health::is_up))
                .copied()
                .collect();
            let down = peers.len() - states.values().filter(|s| s.is_up()).count();
            self.set_peers(up);
            worker.finished(if down == 0 {
                Ok(())
            } else {
                Err(format!("{down} of {} peers down", peers.len()))
            });
        }
    }
}

fn peer_label(ip: IpAddr) -> crate::metrics::PeerLabels {
    crate::metrics::PeerLabels {
        peer: ip.to_string(),
    }
}

/// `GET /health` answered 200 within the timeout.
async fn probe(upstream: &Upstream, addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(url) = url::Url::parse(&format!("http://{addr}/health")) else {
        return false;
    };
    let mut request = upstream::Request::get(url, "peer");
    request.follow_redirects = false;
    match tokio::time::timeout(timeout, upstream.send(request)).await {
        Ok(Ok(resp)) => resp.status == 200,
        _ => false,
    }
}
