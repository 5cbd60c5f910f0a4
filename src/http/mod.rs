//! The HTTP front for intercepted domains (file cache) and the admin routes. `app` mounts it, with the
//! registry, on one actix server and decides by Host which of them answers.

pub mod admin;
pub mod files;

use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::store::{Key, Store};
use crate::upstream::Upstream;
use std::sync::Arc;

/// Everything a request handler needs, shared by all actix workers.
pub struct HttpState {
    pub config: Arc<Config>,
    pub store: Store,
    pub upstream: Upstream,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    /// Healthy peers are asked before the origin on a miss.
    pub peers: Peers,
    /// A key looked up by `/health` to prove the index answers.
    pub health_probe_key: Key,
    /// The admin routes' state: token, sync control, hit ratio window, verify job.
    pub admin: admin::Admin,
    /// Fills started for clients, bounded (shared with the registry front).
    pub fill_limits: Arc<crate::serve::fill_limits::FillLimits>,
}

impl HttpState {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        upstream: Upstream,
        metrics: Metrics,
        lifecycle: Lifecycle,
        peers: Peers,
        admin: admin::Admin,
    ) -> Self {
        let health_probe_key = Key::health_probe();
        let fill_limits = crate::serve::fill_limits::FillLimits::new(
            config.cache.max_fills,
            config.cache.max_fills_per_client,
            metrics.clone(),
        );
        HttpState {
            config,
            store,
            upstream,
            metrics,
            lifecycle,
            peers,
            health_probe_key,
            admin,
            fill_limits,
        }
    }
}
