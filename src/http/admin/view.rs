//! What the status page and `GET /admin/status` show, gathered from the running service in one place so
//! the HTML and the JSON can never disagree.

use crate::http::HttpState;
use crate::lifecycle::{RunStatus, WorkerInfo};
use crate::metrics::{PeerFillLabels, peer_fill, ratio};
use crate::store::summary::Summary;
use crate::store::{FillStatus, ObjectRow};
use crate::upstream::registry_health::RegistryStanding;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub version: &'static str,
    pub node: NodeView,
    pub peers: Vec<PeerView>,
    pub store: StoreView,
    pub hit_ratio: HitRatioView,
    pub fills: Vec<FillView>,
    /// `GET /admin/sync`'s answer.
    pub sync: RunStatus<SyncRunView>,
    /// `GET /admin/registry/prefetch`'s answer.
    pub prefetch: RunStatus<PrefetchRunView>,
    /// Background work: long-lived workers and the runs going on now.
    pub workers: Vec<WorkerInfo>,
    pub objects: Summary,
    /// Each configured registry: its announced pull budget and whether it rejects the cache's account.
    pub registries: Vec<RegistryStanding>,
}

/// One sync run as the admin API publishes it and the page and the CLI show it. `app` builds it from the
/// sync job's report (the HTTP front may not import the sync job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRunView {
    pub run: u64,
    pub started_at: u64,
    pub finished_at: u64,
    pub dry_run: bool,
    /// What the plan keeps, with each item's outcome once the run has dealt with it.
    pub items: Vec<SyncItemView>,
    /// Listed by metal-api but not planned, with the reason.
    pub skipped: Vec<SkippedView>,
    pub total_bytes: u64,
    pub download_bytes: u64,
    /// Set when the size rule could not get under `cache.max_size`.
    pub over_budget: Option<String>,
    pub unpinned: usize,
    pub failed: usize,
}

/// One container image prefetch run, as the API, the page and the CLI show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchRunView {
    pub run: u64,
    pub started_at: u64,
    pub finished_at: u64,
    /// A run of `registry.prefetch` (pins follow the list), not of images an operator named.
    pub configured: bool,
    pub images: Vec<PrefetchImageView>,
    pub unpinned: usize,
    pub failed: usize,
    /// Images not attempted because their registry's budget is down to the reserve.
    #[serde(default)]
    pub deferred: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchImageView {
    pub image: String,
    pub ok: bool,
    #[serde(default)]
    pub deferred: bool,
    pub message: String,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncItemView {
    pub name: String,
    /// `image`, `kernel` or `boot-image`.
    pub kind: String,
    pub url: String,
    pub size: u64,
    /// `keep` or `download`.
    pub action: String,
    /// `None` until the run has dealt with the item (and always in a dry run).
    pub ok: Option<bool>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedView {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// `nodes.self`: the address DNS hands out for this node.
    pub address: Option<String>,
    pub healthy: bool,
    pub ready: bool,
    pub uptime_secs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub address: String,
    pub up: bool,
    /// Fills of keys this peer owns, by result (`image_cache_peer_fills_total`): served by it,
    /// fallback to the origin, broken mid-way.
    pub served: u64,
    pub fallback: u64,
    pub broken: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreView {
    pub objects: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub pinned_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HitRatioView {
    /// Seconds the counts cover: an hour once the service has run that long.
    pub window_secs: u64,
    pub kinds: Vec<KindRatio>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindRatio {
    pub kind: &'static str,
    /// Requests answered from the store (`hit` and `stale`).
    pub hits: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FillView {
    pub key: String,
    pub written: u64,
    pub total: Option<u64>,
    /// Clients reading this fill as it grows.
    pub readers: usize,
    pub elapsed_ms: u64,
    /// Average since the fill started, bytes per second.
    pub rate: u64,
    pub eta_secs: Option<u64>,
}

impl FillView {
    pub fn from_status(f: FillStatus) -> Self {
        let rate = (f.written.saturating_mul(1000))
            .checked_div(f.elapsed_ms)
            .unwrap_or(0);
        let eta_secs = match f.total {
            Some(total) if rate > 0 => Some(total.saturating_sub(f.written).div_ceil(rate)),
            _ => None,
        };
        FillView {
            key: f.key,
            written: f.written,
            total: f.total,
            readers: f.readers,
            elapsed_ms: f.elapsed_ms,
            rate,
            eta_secs,
        }
    }
}

/// The fills in flight, longest-running first (the order does not jump between refreshes).
pub fn fills(state: &HttpState) -> Vec<FillView> {
    let mut fills: Vec<FillView> = state
        .store
        .fills()
        .into_iter()
        .map(FillView::from_status)
        .collect();
    fills.sort_by(|a, b| b.elapsed_ms.cmp(&a.elapsed_ms).then(a.key.cmp(&b.key)));
    fills
}

pub fn peers(state: &HttpState) -> (NodeView, Vec<PeerView>) {
    let healthy = state.peers.healthy();
    let ready = state.lifecycle.is_ready();
    let node = NodeView {
        address: state.config.nodes.self_addr.map(|a| a.to_string()),
        // The self-check's verdict, which DNS acts on; without `nodes.self` there is none to hand out.
        healthy: match state.config.nodes.self_addr {
            Some(_) => healthy.this.is_some(),
            None => ready && !state.lifecycle.is_shutting_down(),
        },
        ready,
        uptime_secs: state.metrics.hit_ratio.uptime_secs(),
    };
    let peers = state
        .peers
        .configured()
        .iter()
        .map(|ip| {
            let count = |result| {
                state
                    .metrics
                    .peer_fills
                    .get_or_create(&PeerFillLabels {
                        peer: ip.to_string(),
                        result,
                    })
                    .get()
            };
            PeerView {
                address: ip.to_string(),
                up: healthy.peers.contains(ip),
                served: count(peer_fill::SERVED),
                fallback: count(peer_fill::FALLBACK),
                broken: count(peer_fill::BROKEN),
            }
        })
        .collect();
    (node, peers)
}

pub async fn gather(state: &HttpState) -> StatusView {
    let (node, peers) = peers(state);
    let (delta, window_secs) = state.metrics.hit_ratio.over(&state.metrics);
    let objects = state.admin.summary(&state.store).await;
    StatusView {
        version: env!("CARGO_PKG_VERSION"),
        node,
        peers,
        store: StoreView {
            objects: state.store.object_count(),
            bytes: state.store.total_bytes(),
            max_bytes: state.store.max_size(),
            pinned_bytes: objects.pinned_bytes,
        },
        hit_ratio: HitRatioView {
            window_secs,
            kinds: ratio::KINDS
                .iter()
                .enumerate()
                .map(|(i, kind)| KindRatio {
                    kind,
                    hits: delta.hits[i],
                    requests: delta.total[i],
                })
                .collect(),
        },
        fills: fills(state),
        sync: state.admin.sync.status(),
        prefetch: state.admin.prefetch.status(),
        workers: state.admin.workers.list(),
        objects,
        registries: state.admin.registries.standings(),
    }
}

/// One object as the API shows it (and as `image-cache store ls` reads it back).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ObjectView {
    pub key: String,
    pub digest: String,
    pub size: u64,
    pub hits: u64,
    pub last_access: u64,
    pub fetched_at: u64,
    pub pinned: bool,
    /// `operator` (admin API; sync leaves it), `sync` (metal-api lists it), or null.
    pub pinned_by: Option<String>,
    pub content_type: Option<String>,
    /// When the upstream first answered 404/410 for it (seconds since the epoch): served through
    /// `deleted_grace`, then removed unless pinned. Absent while the upstream has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_deleted_at: Option<u64>,
}

impl ObjectView {
    pub fn new(key: String, row: ObjectRow) -> Self {
        ObjectView {
            key,
            digest: row.digest.to_string(),
            size: row.size,
            hits: row.hits,
            last_access: row.last_access,
            fetched_at: row.fetched_at,
            pinned: row.pinned,
            pinned_by: row.pinned_by().map(String::from),
            content_type: row.content_type,
            upstream_deleted_at: row.upstream_deleted_ms.map(|ms| ms / 1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_from_a_fill() {
        let f = FillView::from_status(FillStatus {
            key: "k".into(),
            written: 3_000_000,
            total: Some(10_000_000),
            readers: 2,
            elapsed_ms: 3000,
        });
        assert_eq!((f.rate, f.eta_secs), (1_000_000, Some(7)));
        let unknown = FillView::from_status(FillStatus {
            key: "k".into(),
            written: 10,
            total: None,
            readers: 1,
            elapsed_ms: 0,
        });
        assert_eq!((unknown.rate, unknown.eta_secs), (0, None));
    }
}
