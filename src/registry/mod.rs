//! The OCI pull-through mirror for containerd, podman/CRI-O and Docker: `handler.rs` reads a request top
//! to bottom (method, path grammar, configured upstream by `ns`, path prefix or default, endpoint);
//! `manifests.rs`, `blobs.rs` and `referrers.rs` decide between the store and the registry; `fetch.rs`
//! talks to the registry (and links shared content); `answer.rs` writes the OCI answers they share. Pure
//! parts: `path.rs` (names, references, keys), `accept.rs` (content negotiation), `backoff.rs`
//! (Retry-After), `open.rs` (which unlisted registry names `registry.open` admits; `unlisted.rs` holds
//! its guard and rate limit). `hosts.rs` prints the containerd configuration that points at the cache.

pub mod accept;
mod answer;
pub mod backoff;
mod blobs;
pub mod error;
mod fetch;
pub mod handler;
pub mod hosts;
mod manifests;
pub mod negative;
pub mod open;
pub mod path;
pub mod prefetch;
mod referrers;
mod stale;
pub mod unlisted;

use crate::config::RegistryConfig;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::store::Store;
use crate::upstream::Upstream;
use crate::upstream::oci_auth::OciAuth;
use crate::upstream::registry_health::RegistryHealth;
use std::sync::Arc;

/// Everything the mirror needs, shared by all actix workers.
pub struct RegistryState {
    pub config: RegistryConfig,
    pub store: Store,
    pub auth: OciAuth,
    pub metrics: Metrics,
    pub backoff: backoff::Backoff,
    pub negative: negative::NegativeCache,
    /// The partition's nodes: manifests and blobs this node lacks are asked of their owner first.
    pub peers: Peers,
    /// For requests to other nodes (registries are asked through `auth`).
    pub upstream: Upstream,
    /// Registries not in `upstreams`, when `registry.open` admits them.
    pub unlisted: Option<unlisted::Unlisted>,
    /// Each configured registry's announced budget and rejected accounts.
    pub health: Arc<RegistryHealth>,
    /// Fills started for clients, bounded (shared with the file front).
    pub fill_limits: Arc<crate::serve::fill_limits::FillLimits>,
}

impl RegistryState {
    pub fn new(
        config: RegistryConfig,
        store: Store,
        auth: OciAuth,
        metrics: Metrics,
        peers: Peers,
        upstream: Upstream,
        health: Arc<RegistryHealth>,
    ) -> Self {
        let clock = store.clock().clone();
        let negative = negative::NegativeCache::new(config.negative_ttl.get(), clock.clone());
        for registry in config.upstreams.keys() {
            metrics.initialise_registry(registry);
        }
        RegistryState {
            unlisted: unlisted::Unlisted::new(&config),
            config,
            store,
            auth,
            metrics,
            backoff: backoff::Backoff::new(clock),
            negative,
            peers,
            upstream,
            health,
            fill_limits: crate::serve::fill_limits::FillLimits::new(
                usize::MAX,
                usize::MAX,
                Metrics::new(),
            ),
        }
    }

    /// Shares the file front's bounds on fills (`cache.max_fills`), so both fronts count as one node.
    pub fn with_fill_limits(mut self, limits: Arc<crate::serve::fill_limits::FillLimits>) -> Self {
        self.fill_limits = limits;
        self
    }
}
