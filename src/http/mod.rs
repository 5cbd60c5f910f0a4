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

/// A block of the status page contributed by a component the HTTP front does not know (the sync job):
/// a title, a summary line and a table, all plain text (escaped when rendered).
pub struct StatusSection {
    pub title: String,
    pub summary: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub type StatusSource = Box<dyn Fn() -> StatusSection + Send + Sync>;

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
    /// Extra status page sections, registered by `app`.
    pub status_sources: std::sync::RwLock<Vec<StatusSource>>,
}

impl HttpState {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        upstream: Upstream,
        metrics: Metrics,
        lifecycle: Lifecycle,
        peers: Peers,
    ) -> Self {
        let health_probe_key = Key::health_probe();
        HttpState {
            config,
            store,
            upstream,
            metrics,
            lifecycle,
            peers,
            health_probe_key,
            status_sources: std::sync::RwLock::new(Vec::new()),
        }
    }
}

impl HttpState {
    pub fn add_status_source(&self, source: StatusSource) {
        self.status_sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }
}
