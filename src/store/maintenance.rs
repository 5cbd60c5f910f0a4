//! The store's upkeep: eviction down to the target size (the choice of keys is `evict.rs`, pure),
//! batched hit counts, the pinned-bytes gauge, and waiting for fills at shutdown.

use super::{GcReport, Store, StoreError, evict, lock};
use crate::lifecycle::Worker;
use std::collections::HashSet;
use std::time::Duration;

impl Store {
    /// Evicts least-recently-used keys until the store is at `target` bytes or only pins remain. Blocking.
    pub fn evict_to(&self, target: u64) -> Result<GcReport, StoreError> {
        self.flush_access()?;
        let rows = self.inner.index.all_objects()?;
        let before = self.inner.index.total_bytes();
        let busy: HashSet<String> = lock(&self.inner.inflight).keys().cloned().collect();
        let plan = evict::plan(&rows, before, target, &busy);
        // The rows were read without a lock: a key pinned or filled since is spared at removal.
        let evicted = self.remove_rows(&plan.keys, |row| !row.pinned, true)?;
        let after = self.inner.index.total_bytes();
        let report = GcReport {
            evicted_keys: evicted as u64,
            freed_bytes: before.saturating_sub(after),
            bytes_after: after,
        };
        self.inner.metrics.evictions.inc_by(report.evicted_keys);
        self.refresh_gauges();
        if report.evicted_keys > 0 {
            tracing::info!(
                keys = report.evicted_keys,
                freed = report.freed_bytes,
                now = after,
                "evicted"
            );
        }
        Ok(report)
    }

    /// `store gc`: evicts down to 90% of `cache.max_size` now, less what the running fills hold.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        self.evict_to(evict::target_bytes(self.inner.max_size).saturating_sub(self.filling_bytes()))
    }

    /// Runs the background duties: batched hit counts and eviction when the store outgrows its size.
    pub async fn run_maintenance(self, worker: Worker) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = worker.shutdown().cancelled() => break,
                _ = tick.tick() => {}
                _ = self.inner.evict_wake.notified() => {}
            }
            worker.busy();
            let store = self.clone();
            ticks += 1;
            let count_pins = ticks.is_multiple_of(12);
            let result = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                store.flush_access()?;
                if store.total_bytes() + store.filling_bytes() > store.max_size() {
                    store.gc()?;
                }
                if count_pins {
                    // Pins change rarely (sync, admin); a minute-old gauge is fresh enough for alerts.
                    store.summary(0)?;
                }
                Ok(())
            })
            .await;
            let outcome = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("store maintenance failed: {e}")),
                Err(e) => Err(format!("store maintenance task panicked: {e}")),
            };
            if let Err(e) = &outcome {
                tracing::error!("{e}");
            }
            worker.finished(outcome);
        }
        if let Err(e) = self.flush_access() {
            tracing::warn!(error = %e, "could not save hit counts at shutdown");
        }
    }

    /// Waits up to `grace` until this handle is the last one, so the index is closed (and a new
    /// service may open it) when the caller drops it. Handles held by request handlers and connection
    /// tasks go a moment after the server stopped. Returns how many other handles are left.
    pub async fn wait_last_handle(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let others = std::sync::Arc::strong_count(&self.inner) - 1;
            if others == 0 || tokio::time::Instant::now() >= deadline {
                return others;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `grace` for running fills to finish; what remains is discarded (temp files are
    /// removed now or by recovery at the next start).
    pub async fn drain_fills(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let n = lock(&self.inner.inflight).len();
            if n == 0 {
                return 0;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stop what is left: an aborted fill commits nothing, its temp file goes with it, and its
        // readers end short.
        let left: Vec<_> = lock(&self.inner.inflight).values().cloned().collect();
        for fill in &left {
            fill.abort();
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while !lock(&self.inner.inflight).is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        left.len()
    }
}
