//! How many fills clients may have running: on the node (`cache.max_fills`) and per client address
//! (`cache.max_fills_per_client`). A fill costs a connection to an upstream, buffers and a temp file for as
//! long as its upstream takes; without a bound, one tenant asking for hundreds of keys from a slow origin
//! holds them all, and without a per-address bound one tenant takes every slot. A request joining a running
//! fill starts none and is never refused. The permit goes with the fill's body and is given back when the
//! fill ends, however it ends.

use crate::metrics::Metrics;
use crate::store::{SourceFuture, SourceOutcome};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a fill was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `cache.max_fills` are running.
    Node,
    /// This address has `cache.max_fills_per_client` running.
    Client,
}

impl Refused {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Node => "node",
            Refused::Client => "client",
        }
    }

    /// What the client is told.
    pub fn message(self, limits: &FillLimits) -> String {
        match self {
            Refused::Node => format!(
                "this cache node runs {} downloads already (cache.max_fills); retry shortly or fetch \
                 from the upstream",
                limits.node
            ),
            Refused::Client => format!(
                "your address has {} downloads running on this cache node (cache.max_fills_per_client); \
                 retry when one ends",
                limits.per_client
            ),
        }
    }
}

/// Seconds a refused client is asked to wait.
pub const RETRY_AFTER_SECS: u64 = 2;

#[derive(Default)]
struct Running {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

pub struct FillLimits {
    node: usize,
    per_client: usize,
    running: Mutex<Running>,
    /// Refusals are counted here (`image_cache_fills_refused_total{reason}`).
    metrics: Metrics,
}

/// One running fill's place; given back when dropped.
pub struct FillPermit {
    limits: Arc<FillLimits>,
    client: Option<IpAddr>,
}

impl Drop for FillPermit {
    fn drop(&mut self) {
        let mut running = self.limits.lock();
        running.total = running.total.saturating_sub(1);
        if let Some(ip) = self.client
            && let Some(n) = running.by_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                running.by_client.remove(&ip);
            }
        }
    }
}

impl FillLimits {
    pub fn new(node: usize, per_client: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(FillLimits {
            node: node.max(1),
            per_client: per_client.max(1),
            running: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more fill, for `client` (`None`: another cache node, counted on the node only).
    pub fn try_start(self: &Arc<Self>, client: Option<IpAddr>) -> Result<FillPermit, Refused> {
        let mut running = self.lock();
        if running.total >= self.node {
            tracing::info!(client = ?client, running = running.total, "download refused: cache.max_fills");
            self.metrics.fill_refused(Refused::Node.label());
            return Err(Refused::Node);
        }
        if let Some(ip) = client {
            let n = running.by_client.entry(ip).or_default();
            if *n >= self.per_client {
                tracing::info!(%ip, running = *n, "download refused: cache.max_fills_per_client");
                self.metrics.fill_refused(Refused::Client.label());
                return Err(Refused::Client);
            }
            *n += 1;
        }
        running.total += 1;
        Ok(FillPermit {
            limits: Arc::clone(self),
            client,
        })
    }

    /// Fills running for clients.
    pub fn running(&self) -> usize {
        self.lock().total
    }
}

/// `source` holding `permit` until the fill is done with it: past the answer's head, the permit goes with
/// the body, so it is given back when the fill stops reading (its end, a failure, a cancellation).
pub fn held(permit: FillPermit, source: SourceFuture) -> SourceFuture {
    Box::pin(async move {
        match source.await {
            SourceOutcome::Body { meta, body } => SourceOutcome::Body {
                meta,
                body: Box::pin(body.map(move |item| {
                    let _held = &permit;
                    item
                })),
            },
            other => other,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_the_node_its_total() {
        let limits = FillLimits::new(5, 2, Metrics::new());
        let a1 = limits.try_start(ip("10.0.0.1")).unwrap();
        let _a2 = limits.try_start(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limits.try_start(ip("10.0.0.1")).err(),
            Some(Refused::Client)
        );
        let _b1 = limits.try_start(ip("10.0.0.2")).unwrap();
        let _n1 = limits.try_start(None).unwrap();
        let _n2 = limits.try_start(None).unwrap();
        assert_eq!(limits.running(), 5);
        assert_eq!(limits.try_start(ip("10.0.0.3")).err(), Some(Refused::Node));
        assert_eq!(limits.try_start(None).err(), Some(Refused::Node));
        drop(a1);
        assert_eq!(limits.running(), 4);
        let _a3 = limits.try_start(ip("10.0.0.1")).unwrap();
        assert!(
            Refused::Client
                .message(&limits)
                .contains("max_fills_per_client")
        );
    }

    #[tokio::test]
    async fn the_permit_is_given_back_when_the_body_is_dropped_not_at_the_head() {
        let limits = FillLimits::new(1, 1, Metrics::new());
        let permit = limits.try_start(ip("10.0.0.1")).unwrap();
        let source: SourceFuture = Box::pin(async {
            SourceOutcome::Body {
                meta: Default::default(),
                body: Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from_static(
                    b"x",
                ))])),
            }
        });
        let outcome = held(permit, source).await;
        assert_eq!(limits.running(), 1, "held while the body is being read");
        drop(outcome);
        assert_eq!(limits.running(), 0);
        let refused: SourceFuture = Box::pin(async {
            SourceOutcome::Unavailable(crate::store::SourceError::Timeout("x".into()))
        });
        let permit = limits.try_start(None).unwrap();
        let _ = held(permit, refused).await;
        assert_eq!(limits.running(), 0);
    }
}
