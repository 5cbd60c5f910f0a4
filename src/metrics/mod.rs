//! Every metric family, in one place, passed around as a handle (no globals). Names are public interface
//! (docs/operations.md, "Metrics"): dashboards and alerts depend on them.

pub mod ratio;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub kind: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerFillLabels {
    pub peer: String,
    pub result: &'static str,
}

/// Results of `image_cache_passthrough_connections_total`.
pub mod passthrough_result {
    pub const SPLICED: &str = "spliced";
    pub const CLIENT: &str = "client";
    pub const PER_CLIENT: &str = "per_client";
    pub const LIMIT: &str = "limit";
    pub const HELLO: &str = "hello";
    pub const NAME: &str = "name";
    pub const TARGET: &str = "target";
    pub const ERROR: &str = "error";
    pub const ALL: [&str; 8] = [
        SPLICED, CLIENT, PER_CLIENT, LIMIT, HELLO, NAME, TARGET, ERROR,
    ];
}

/// Results of `image_cache_peer_fills_total`: what a fill that asked a key's owner got.
pub mod peer_fill {
    /// The owner sent the object.
    pub const SERVED: &str = "served";
    /// The owner confirmed the stored copy (revalidation).
    pub const NOT_MODIFIED: &str = "not_modified";
    /// The owner passed on the origin's refusal (404, 410).
    pub const REFUSED: &str = "refused";
    /// The owner was down, slow, busy or failing: the fill went to the origin.
    pub const FALLBACK: &str = "fallback";
    /// The owner's body broke off mid-way.
    pub const BROKEN: &str = "broken";
    pub const ALL: [&str; 5] = [SERVED, NOT_MODIFIED, REFUSED, FALLBACK, BROKEN];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryRequestLabels {
    pub registry: String,
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryStatusLabels {
    pub registry: String,
    pub status: String,
}

/// Request kinds and results of `image_cache_requests_total`.
pub mod kind {
    pub const FILE: &str = "file";
    pub const MANIFEST: &str = "manifest";
    pub const BLOB: &str = "blob";
    pub const REFERRERS: &str = "referrers";
}

pub mod result {
    pub const HIT: &str = "hit";
    pub const MISS: &str = "miss";
    pub const STALE: &str = "stale";
    pub const ERROR: &str = "error";
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_served: Family<SourceLabels, Counter>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub fills_coalesced: Counter,
    pub fills_refused: Family<ReasonLabels, Counter>,
    pub store_bytes: Gauge,
    pub store_objects: Gauge,
    pub store_max_bytes: Gauge,
    pub store_filling_bytes: Gauge,
    pub store_pinned_bytes: Gauge,
    pub evictions: Counter,
    pub dns_queries: Family<ResultLabels, Counter>,
    pub sync_runs: Family<ResultLabels, Counter>,
    pub sync_last_success: Gauge<f64, AtomicU64>,
    pub sync_images: Family<StateLabels, Gauge>,
    pub peer_up: Family<PeerLabels, Gauge>,
    pub peer_fills: Family<PeerFillLabels, Counter>,
    pub passthrough: Family<ResultLabels, Counter>,
    pub integrity_failures: Counter,
    pub registry_requests: Family<RegistryRequestLabels, Counter>,
    pub registry_bytes: Family<RegistryLabels, Counter>,
    pub registry_upstream: Family<RegistryStatusLabels, Counter>,
    pub registry_ratelimit_remaining: Family<RegistryLabels, Gauge>,
    pub registry_tokens: Gauge,
    pub registry_token_bytes: Gauge,
    pub registry_ratelimit_limit: Family<RegistryLabels, Gauge>,
    pub upstream_auth_failures: Family<RegistryLabels, Counter>,
    /// The status page's hit ratio over the last hour, sampled from `requests`.
    pub hit_ratio: Arc<ratio::HitRatio>,
    /// Registries with series of their own (`registry.upstreams`); any other (an unlisted registry
    /// under `registry.open`) counts as `other`, so clients cannot grow the series without bound.
    listed_registries: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

/// The `registry` label of every registry that is not in `registry.upstreams`.
pub const OTHER_REGISTRY: &str = "other";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("image_cache");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            bytes_served: Family::default(),
            upstream_requests: Family::default(),
            fills_coalesced: Counter::default(),
            fills_refused: Family::default(),
            store_bytes: Gauge::default(),
            store_objects: Gauge::default(),
            store_max_bytes: Gauge::default(),
            store_filling_bytes: Gauge::default(),
            store_pinned_bytes: Gauge::default(),
            evictions: Counter::default(),
            dns_queries: Family::default(),
            sync_runs: Family::default(),
            sync_last_success: Gauge::default(),
            sync_images: Family::default(),
            peer_up: Family::default(),
            peer_fills: Family::default(),
            passthrough: Family::default(),
            integrity_failures: Counter::default(),
            registry_requests: Family::default(),
            registry_bytes: Family::default(),
            registry_upstream: Family::default(),
            registry_tokens: Gauge::default(),
            registry_token_bytes: Gauge::default(),
            registry_ratelimit_remaining: Family::default(),
            registry_ratelimit_limit: Family::default(),
            upstream_auth_failures: Family::default(),
            hit_ratio: Arc::default(),
            listed_registries: Arc::default(),
        };
        r.register(
            "requests",
            "Client requests by kind and cache result",
            m.requests.clone(),
        );
        r.register(
            "bytes_served",
            "Body bytes sent to clients, by where they came from",
            m.bytes_served.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to origins and registries, by status",
            m.upstream_requests.clone(),
        );
        r.register(
            "fills_coalesced",
            "Requests that joined a fill already running",
            m.fills_coalesced.clone(),
        );
        r.register(
            "fills_refused",
            "Fills not started for a client: `node` (cache.max_fills running) or `client` (its address \
             has cache.max_fills_per_client running)",
            m.fills_refused.clone(),
        );
        r.register(
            "store_bytes",
            "Bytes held in the store (each blob once)",
            m.store_bytes.clone(),
        );
        r.register(
            "store_objects",
            "Keys in the store index",
            m.store_objects.clone(),
        );
        r.register(
            "store_max_bytes",
            "cache.max_size: eviction keeps store_bytes under it",
            m.store_max_bytes.clone(),
        );
        r.register(
            "store_filling_bytes",
            "Bytes the running fills hold in tmp/ (announced lengths, or what they wrote past them), \
             counted against cache.max_size",
            m.store_filling_bytes.clone(),
        );
        r.register(
            "store_pinned_bytes",
            "Bytes held by pinned keys (refreshed every minute); eviction cannot free them",
            m.store_pinned_bytes.clone(),
        );
        r.register(
            "evictions",
            "Keys evicted to stay under cache.max_size",
            m.evictions.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries by outcome",
            m.dns_queries.clone(),
        );
        r.register(
            "sync_runs",
            "metal-api sync runs by result",
            m.sync_runs.clone(),
        );
        r.register(
            "sync_last_success_timestamp_seconds",
            "Unix time of the last successful sync run",
            m.sync_last_success.clone(),
        );
        r.register(
            "sync_images",
            "Images known to the last sync plan, by state",
            m.sync_images.clone(),
        );
        r.register(
            "peer_up",
            "1 when the peer's /health answers, after hysteresis",
            m.peer_up.clone(),
        );
        r.register(
            "passthrough_connections",
            "TLS passthrough connections by how they ended: spliced, client (not in passthrough.allow), \
             per_client (max_per_client reached), limit (max_connections reached), hello (no usable \
             ClientHello in time), name (not intercepted), target (resolves to an internal address), error",
            m.passthrough.clone(),
        );
        for result in passthrough_result::ALL {
            let _ = m.passthrough.get_or_create(&ResultLabels { result });
        }
        r.register(
            "peer_fills",
            "Fills that asked the key's owner (another cache node) first, by node and result: served, \
             not_modified, refused, fallback (went to the origin), broken (cut mid-way)",
            m.peer_fills.clone(),
        );
        r.register(
            "integrity_failures",
            "Fills refused because the body did not hash to the digest it was fetched for",
            m.integrity_failures.clone(),
        );
        r.register(
            "registry_requests",
            "Registry mirror requests by upstream registry, kind (manifest|blob) and cache result",
            m.registry_requests.clone(),
        );
        r.register(
            "registry_bytes_served",
            "Body bytes of registry mirror answers, by upstream registry",
            m.registry_bytes.clone(),
        );
        r.register(
            "registry_upstream_responses",
            "Answers of upstream registries (token endpoints included) by status; `error` = no answer",
            m.registry_upstream.clone(),
        );
        r.register(
            "registry_tokens",
            "Registry tokens the cache holds (bounded; expired ones are dropped at every new token)",
            m.registry_tokens.clone(),
        );
        r.register(
            "registry_token_bytes",
            "Bytes of the registry tokens the cache holds (bounded at 8 MiB)",
            m.registry_token_bytes.clone(),
        );
        r.register(
            "registry_ratelimit_remaining",
            "Pulls the registry said are left in its window (ratelimit-remaining), as last seen",
            m.registry_ratelimit_remaining.clone(),
        );
        r.register(
            "registry_ratelimit_limit",
            "Pulls the registry allows per window (ratelimit-limit), as last seen",
            m.registry_ratelimit_limit.clone(),
        );
        r.register(
            "upstream_auth_failures",
            "Registries refusing (401/403) to revalidate content they gave the cache before: an \
             expired, revoked or rate-banned account. Stored content keeps being served",
            m.upstream_auth_failures.clone(),
        );
        let m = Metrics {
            registry: Arc::new(r),
            ..m
        };
        m.initialise();
        m
    }

    /// Creates every series whose labels are known up front at zero, so dashboards and alerts (rates,
    /// `absent`, ratios) see them from the first scrape instead of after the first event.
    fn initialise(&self) {
        for reason in ["node", "client"] {
            let _ = self.fills_refused.get_or_create(&ReasonLabels { reason });
        }
        for kind in [kind::FILE, kind::MANIFEST, kind::BLOB] {
            for result in [result::HIT, result::MISS, result::STALE, result::ERROR] {
                let _ = self.requests.get_or_create(&RequestLabels { kind, result });
            }
        }
        for source in ["cache", "upstream"] {
            let _ = self.bytes_served.get_or_create(&SourceLabels { source });
        }
        for result in ["intercepted", "forwarded", "refused", "error"] {
            let _ = self.dns_queries.get_or_create(&ResultLabels { result });
        }
        for result in ["success", "partial", "failure"] {
            let _ = self.sync_runs.get_or_create(&ResultLabels { result });
        }
        for state in ["cached", "missing", "unsynced"] {
            let _ = self.sync_images.get_or_create(&StateLabels { state });
        }
    }

    /// The per-node fill series of one peer, at zero.
    pub fn initialise_peer(&self, peer: &str) {
        for result in peer_fill::ALL {
            let _ = self.peer_fills.get_or_create(&PeerFillLabels {
                peer: peer.to_string(),
                result,
            });
        }
    }

    pub fn peer_fill(&self, peer: std::net::IpAddr, result: &'static str) {
        self.peer_fills
            .get_or_create(&PeerFillLabels {
                peer: peer.to_string(),
                result,
            })
            .inc();
    }

    /// The per-registry series of one configured upstream registry, at zero.
    pub fn initialise_registry(&self, registry: &str) {
        self.listed_registries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry.to_string());
        for kind in [kind::MANIFEST, kind::BLOB] {
            for result in [result::HIT, result::MISS, result::STALE, result::ERROR] {
                let _ = self
                    .registry_requests
                    .get_or_create(&RegistryRequestLabels {
                        registry: registry.to_string(),
                        kind,
                        result,
                    });
            }
        }
        let _ = self.registry_bytes.get_or_create(&RegistryLabels {
            registry: registry.to_string(),
        });
    }

    /// The auth-failure series of one configured registry, at zero (an alert on its increase sees it).
    pub fn initialise_registry_health(&self, registry: &str) {
        let _ = self.upstream_auth_failures.get_or_create(&RegistryLabels {
            registry: registry.to_string(),
        });
    }

    /// A configured registry's announced budget (`remaining` of `limit`).
    pub fn registry_ratelimit(&self, registry: &str, remaining: u64, limit: Option<u64>) {
        let labels = RegistryLabels {
            registry: registry.to_string(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.registry_ratelimit_remaining
            .get_or_create(&labels)
            .set(gauge(remaining));
        if let Some(l) = limit {
            self.registry_ratelimit_limit
                .get_or_create(&labels)
                .set(gauge(l));
        }
    }

    pub fn upstream_auth_failure(&self, registry: &str) {
        self.upstream_auth_failures
            .get_or_create(&RegistryLabels {
                registry: registry.to_string(),
            })
            .inc();
    }

    pub fn request(&self, kind: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { kind, result })
            .inc();
    }

    /// The counter of bytes served from `source`, for a body stream to bump per chunk: one atomic add,
    /// where `served` also takes the family's lock (and a cloned `Metrics` costs an `Arc` per family).
    pub fn served_counter(&self, source: &'static str) -> Counter {
        self.bytes_served
            .get_or_create(&SourceLabels { source })
            .clone()
    }

    pub fn served(&self, source: &'static str, bytes: u64) {
        self.bytes_served
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    pub fn upstream(&self, kind: &'static str, status: impl Into<String>) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                kind,
                status: status.into(),
            })
            .inc();
    }

    /// `registry` when it has series of its own, else [`OTHER_REGISTRY`].
    fn registry_label(&self, registry: &str) -> String {
        let listed = self
            .listed_registries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(registry);
        if listed {
            registry.to_string()
        } else {
            OTHER_REGISTRY.to_string()
        }
    }

    /// A registry mirror request: counted in `requests_total` and per registry.
    pub fn registry_request(&self, registry: &str, kind: &'static str, result: &'static str) {
        self.request(kind, result);
        self.registry_requests
            .get_or_create(&RegistryRequestLabels {
                registry: self.registry_label(registry),
                kind,
                result,
            })
            .inc();
    }

    pub fn fill_refused(&self, reason: &'static str) {
        self.fills_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn registry_served(&self, registry: &str, bytes: u64) {
        self.registry_bytes
            .get_or_create(&RegistryLabels {
                registry: self.registry_label(registry),
            })
            .inc_by(bytes);
    }

    pub fn registry_upstream(&self, registry: &str, status: impl Into<String>) {
        self.registry_upstream
            .get_or_create(&RegistryStatusLabels {
                registry: self.registry_label(registry),
                status: status.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_suffixes() {
        let m = Metrics::new();
        m.request(kind::FILE, result::HIT);
        m.served("cache", 10);
        m.fills_coalesced.inc();
        m.store_bytes.set(5);
        let text = m.encode();
        for needle in [
            "image_cache_requests_total{kind=\"file\",result=\"hit\"} 1",
            "image_cache_bytes_served_total{source=\"cache\"} 10",
            "image_cache_fills_coalesced_total 1",
            "image_cache_store_bytes 5",
            "# TYPE image_cache_sync_last_success_timestamp_seconds gauge",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
