//! The partition's routing rule, in one place: a request crosses at most one node, never loops, and a node's
//! request is filled where it lands.
//!
//! A client's request for a key this node lacks is filled through the key's owner (another node), which fills
//! from the origin once for the whole partition. A node's request (`X-Image-Cache-Peer: 1`, honoured only
//! from the partition's own addresses) is filled here from the origin whoever owns the key, and is answered
//! "busy" while this node's own fill of the key waits on a node: so two nodes never wait on each other.

use super::fill::{PeerAsk, peer_first};
use super::{Owner, Peers};
use crate::metrics::Metrics;
use crate::store::{PeerWait, SourceFuture};
use crate::upstream::Upstream;
use std::net::{IpAddr, SocketAddr};

/// Who sent a request, for the partition's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// A machine, a runtime, an operator, or this node's own jobs (sync, prefetch).
    Client,
    /// Another cache node of the partition, filling a key it asked us for as its owner.
    Node,
}

impl Peers {
    /// A node only when the request says so (`X-Image-Cache-Peer: 1`) *and* comes from one of the
    /// partition's addresses: a tenant machine sending the header is an ordinary client.
    pub fn asker(&self, peer_header: Option<&[u8]>, remote: Option<IpAddr>) -> Asker {
        if peer_header == Some(b"1".as_slice()) && remote.is_some_and(|ip| self.is_peer(ip)) {
            Asker::Node
        } else {
            Asker::Client
        }
    }

    /// Where a fill of `key` comes from: the origin when a node asked or this node owns the key; else the
    /// owner first (`ask` says what to request of it, with the wait flag the fill then carries) and the
    /// origin when the owner cannot help. The flag is for `store::FillSpec::peer_wait`.
    pub fn source(
        &self,
        upstream: &Upstream,
        metrics: &Metrics,
        asker: Asker,
        key: &str,
        origin: SourceFuture,
        ask: impl FnOnce(SocketAddr, PeerWait) -> Option<PeerAsk>,
    ) -> (SourceFuture, Option<PeerWait>) {
        if asker == Asker::Node {
            return (origin, None);
        }
        let Owner::Peer(peer) = self.owner(key) else {
            return (origin, None);
        };
        let waiting = PeerWait::new();
        match ask(peer, waiting.clone()) {
            Some(ask) => (
                peer_first(upstream.clone(), metrics.clone(), ask, origin),
                Some(waiting),
            ),
            None => (origin, None),
        }
    }
}
