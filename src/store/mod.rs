//! The content store: content-addressed blobs on disk, a redb index of keys, single-flight fills that
//! stream to every reader while they are written, LRU eviction with pins, start-up recovery.
//!
//! Everything else is a client of this module. It knows nothing of HTTP: sources of bytes are futures
//! handed in by the fronts.

mod evict;
mod fill;
pub(crate) mod fs;
pub mod gone;
mod hashing;
mod hot;
pub(crate) mod index;
pub mod inflight;
pub mod key;
mod maintenance;
mod quiet;
mod read_buffers;
mod recover;
mod row;
pub mod summary;
#[cfg(test)]
mod tests;
mod verify;

pub use index::{Found, ObjectRow};
pub use inflight::{
    Expected, Fill, FillFailure, FillReader, FillStatus, PeerWait, Phase, ReadError, SourceBody,
    SourceError, SourceFuture, SourceMeta, SourceOutcome,
};
pub use key::{Digest, FilePath, Key, KeyError};
pub use recover::RecoveryReport;
pub use verify::VerifyJob;

use crate::clock::Clock;
use crate::metrics::Metrics;
use fs::BlobFs;
use hot::{HotEntry, HotSet};
use index::{AccessUpdate, Index, IndexError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

const STRIPES: usize = 64;
/// Rows removed per index transaction while the in-flight lock is held.
const REMOVE_BATCH: usize = 256;
/// Open descriptors kept for repeated hits; small against the file-descriptor limit raised at start.
const HOT_ENTRIES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(512) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
/// Blobs up to this size are kept in memory while hot (manifests, checksums, boot scripts, small files)…
const HOT_BODY_MAX: u64 = 256 * 1024;
/// …within this many bytes in total.
const HOT_BODY_BUDGET: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Index(#[from] IndexError),
    #[error("store I/O on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("start-up recovery failed: {0}")]
    Recover(#[from] recover::RecoverError),
    #[error("a blocking store task failed: {0}")]
    Join(String),
    #[error("stopped: the service is shutting down")]
    Stopped,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A stored object opened for reading.
pub struct Hit {
    pub row: ObjectRow,
    pub file: Arc<std::fs::File>,
    /// The whole content, when it is small and hot enough to be kept in memory.
    pub body: Option<bytes::Bytes>,
}

/// What the caller wants done with a key, decided from its current row (if any).
pub enum Plan {
    /// Serve the stored row (when there is none: `Access::Skipped`).
    Serve,
    /// Do nothing here (e.g. a peer asking for a key we lack, or `on_miss = redirect`).
    Skip,
    Fill(FillSpec),
}

pub struct FillSpec {
    pub expected: Expected,
    pub source: SourceFuture,
    /// Compute md5 while writing (kept in the row, for comparing with `.md5` sidecars). Fills that
    /// skip it get one from `ensure_md5` when the sync needs it.
    pub want_md5: bool,
    /// Set while the source waits on another cache node (the key's owner; `peers::Peers::source`).
    pub peer_wait: Option<PeerWait>,
    /// Commit the row pinned: the sync's downloads are pinned from their first moment, so eviction can
    /// never take them between the commit and the end of the run.
    pub pin: bool,
}

// Returned once per request and matched at once: moving 200 bytes is cheaper than boxing a hit.
#[allow(clippy::large_enum_variant)]
pub enum Access {
    Hit(Hit),
    Fill { fill: Arc<Fill>, coalesced: bool },
    Skipped,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub corrupt_keys: Vec<String>,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub evicted_keys: u64,
    pub freed_bytes: u64,
    pub bytes_after: u64,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    fs: BlobFs,
    index: Index,
    max_size: u64,
    metrics: Metrics,
    /// Running fills by key. Hits also take this lock while opening their blob, and eviction while
    /// removing, so a blob is never unlinked between a row lookup and its open.
    inflight: Mutex<HashMap<String, Arc<Fill>>>,
    /// Serialises publish and unlink per digest, so dedup never links a row to a blob being unlinked.
    stripes: Vec<Mutex<()>>,
    access: Mutex<HashMap<String, (u64, u64)>>,
    /// Open blobs of recent hits. Every row change below `forget`s its key here.
    hot: HotSet,
    evict_wake: Notify,
    /// Bytes the running fills hold in `tmp/` (their announced length, or what they wrote past it):
    /// counted against `max_size` with the stored bytes.
    filling: std::sync::atomic::AtomicU64,
    runtime: tokio::runtime::Handle,
    /// The service's clock: rows' fetch, validation and access times.
    clock: Clock,
    /// Keys served stale after a failed revalidation, not asked again for a while.
    quiet: quiet::QuietKeys,
    /// Tests make index commits fail, as on a full disk.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir` and recovers from any crash. Blocking.
    pub fn open(
        state_dir: &Path,
        max_size: u64,
        metrics: Metrics,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Self, RecoveryReport), StoreError> {
        let fs = BlobFs::open(state_dir)
            .map_err(io_err(format!("state dir {}", state_dir.display())))?;
        let index = Index::open(&state_dir.join("index.redb"))?;
        let report = recover::recover(&fs, &index)?;
        let inner = Inner {
            fs,
            index,
            max_size,
            metrics,
            inflight: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            access: Mutex::new(HashMap::new()),
            hot: HotSet::new(HOT_ENTRIES, HOT_BODY_MAX, HOT_BODY_BUDGET),
            evict_wake: Notify::new(),
            filling: std::sync::atomic::AtomicU64::new(0),
            runtime,
            clock: Clock::system(),
            quiet: quiet::QuietKeys::default(),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        store.inner.metrics.store_max_bytes.set(max_size as i64);
        store.refresh_gauges();
        if let Err(e) = store.summary(0) {
            tracing::warn!(error = %e, "cannot count pinned bytes");
        }
        Ok((store, report))
    }

    pub fn max_size(&self) -> u64 {
        self.inner.max_size
    }

    /// The service's clock (`crate::clock`): every part that ages things reads this one.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn total_bytes(&self) -> u64 {
        self.inner.index.total_bytes()
    }

    /// Bytes the running fills hold in `tmp/`, counted against `cache.max_size`.
    pub fn filling_bytes(&self) -> u64 {
        self.inner.filling.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn object_count(&self) -> u64 {
        self.inner.index.object_count()
    }

    pub fn state_dir(&self) -> &Path {
        self.inner.fs.root()
    }

    /// Looks a key up and, as `decide` says, serves it, joins its running fill or starts one.
    pub fn access(
        &self,
        key: &Key,
        decide: impl FnOnce(Option<&ObjectRow>) -> Plan,
    ) -> Result<Access, StoreError> {
        self.lookup(key, false, decide)
            .map(|a| a.unwrap_or(Access::Skipped))
    }

    /// `access` for a request from another cache node: `None` when the fill running for the key is
    /// itself waiting on a node (joining it could close a circle of nodes waiting on each other; the
    /// asking node goes to the origin instead).
    pub fn access_as_peer(
        &self,
        key: &Key,
        decide: impl FnOnce(Option<&ObjectRow>) -> Plan,
    ) -> Result<Option<Access>, StoreError> {
        self.lookup(key, true, decide)
    }

    fn lookup(
        &self,
        key: &Key,
        for_peer: bool,
        decide: impl FnOnce(Option<&ObjectRow>) -> Plan,
    ) -> Result<Option<Access>, StoreError> {
        let inflight = lock(&self.inner.inflight);
        if let Some(fill) = inflight.get(key.as_str()) {
            if for_peer && fill.waits_on_peer() {
                return Ok(None);
            }
            self.inner.metrics.fills_coalesced.inc();
            return Ok(Some(Access::Fill {
                fill: Arc::clone(fill),
                coalesced: true,
            }));
        }
        self.open_or_fill(inflight, key, decide).map(Some)
    }

    /// The key has no fill running (the caller holds the in-flight lock): serve its row, skip, or start
    /// a fill, as `decide` says.
    fn open_or_fill(
        &self,
        mut inflight: MutexGuard<'_, HashMap<String, Arc<Fill>>>,
        key: &Key,
        decide: impl FnOnce(Option<&ObjectRow>) -> Plan,
    ) -> Result<Access, StoreError> {
        let (row, open) = match self.inner.hot.get(key.as_str()) {
            Some(entry) => (Some(entry.row.clone()), Some(entry)),
            None => (self.inner.index.get(key.as_str())?, None),
        };
        match decide(row.as_ref()) {
            Plan::Skip => Ok(Access::Skipped),
            Plan::Serve => {
                let Some(row) = row else {
                    return Ok(Access::Skipped);
                };
                if let Some(entry) = open {
                    drop(inflight);
                    self.record_hit(key.as_str());
                    return Ok(Access::Hit(Hit {
                        row,
                        file: entry.file,
                        body: entry.body,
                    }));
                }
                match self.inner.fs.open_blob(&row.digest) {
                    Ok(file) => {
                        let file = Arc::new(file);
                        // A small blob is read once here (on the caller's thread, like the open above)
                        // and then served from memory; a short read just means no body is kept.
                        let body = self
                            .inner
                            .hot
                            .wants_body(row.size)
                            .then(|| fs::read_at(&file, 0, row.size as usize).ok())
                            .flatten()
                            .filter(|b| b.len() as u64 == row.size)
                            .map(bytes::Bytes::from);
                        self.inner.hot.insert(
                            key.as_str(),
                            HotEntry {
                                row: row.clone(),
                                file: Arc::clone(&file),
                                body: body.clone(),
                            },
                        );
                        drop(inflight);
                        self.record_hit(key.as_str());
                        Ok(Access::Hit(Hit { row, file, body }))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // The index promised a blob that is gone (removed by hand?): forget the row.
                        drop(inflight);
                        tracing::warn!(key = %key, digest = %row.digest, "blob missing on disk; dropping the row");
                        self.inner.index.remove(&[key.as_str().to_string()])?;
                        self.refresh_gauges();
                        Ok(Access::Skipped)
                    }
                    Err(e) => Err(StoreError::Io {
                        what: format!("blob {}", row.digest),
                        source: e,
                    }),
                }
            }
            Plan::Fill(spec) => {
                let fill = Fill::new(key.as_str().to_string(), spec.peer_wait.clone());
                inflight.insert(key.as_str().to_string(), Arc::clone(&fill));
                drop(inflight);
                let inner = Arc::clone(&self.inner);
                let task_fill = Arc::clone(&fill);
                let task = self
                    .inner
                    .runtime
                    .spawn(fill::run(inner, task_fill, spec, row));
                fill.set_task(task.abort_handle());
                Ok(Access::Fill {
                    fill,
                    coalesced: false,
                })
            }
        }
    }

    /// Opens the stored copy of a key, ignoring any fill running for it (a failed revalidation serves the
    /// old copy; a 304 serves the same copy). `None` when nothing is stored.
    pub fn open_stored(&self, key: &Key) -> Result<Option<Hit>, StoreError> {
        let inflight = lock(&self.inner.inflight);
        let Some(row) = self.inner.index.get(key.as_str())? else {
            return Ok(None);
        };
        let file = match self.inner.fs.open_blob(&row.digest) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Io {
                    what: format!("blob {}", row.digest),
                    source: e,
                });
            }
        };
        drop(inflight);
        self.record_hit(key.as_str());
        Ok(Some(Hit {
            row,
            file: Arc::new(file),
            body: None,
        }))
    }

    /// After a revalidation of `key` failed with `status` (`None`: no answer): the stored copy to serve
    /// instead, marked as deleted upstream when the upstream said 404/410 — or `None` when nothing is
    /// stored or the upstream's deletion is followed now (`gone`: past `grace`, never for a pinned key).
    /// The copy served is not revalidated again for `quiet` (at most `quiet::MAX_QUIET`; `is_quiet`).
    pub fn after_failed_revalidation(
        &self,
        key: &Key,
        status: Option<u16>,
        grace: std::time::Duration,
        quiet: std::time::Duration,
    ) -> Result<Option<Hit>, StoreError> {
        let Some(row) = self.get(key)? else {
            return Ok(None);
        };
        let now_ms = self.inner.clock.now_millis();
        match gone::after_failure(&row, status, now_ms, grace) {
            gone::Verdict::Stale => {}
            gone::Verdict::Deleted { since_ms } => {
                if row.upstream_deleted_ms.is_none() {
                    tracing::warn!(key = %key, "the upstream says it no longer has this; serving the stored copy through the grace");
                    self.inner.index.update(key.as_str(), |r| {
                        let first = r.upstream_deleted_ms.is_none();
                        r.upstream_deleted_ms.get_or_insert(since_ms);
                        first
                    })?;
                    self.inner.hot.forget(key.as_str());
                }
            }
            gone::Verdict::Drop => {
                let removed =
                    self.remove_rows(&[key.as_str().to_string()], gone::may_drop, false)?;
                self.refresh_gauges();
                if removed > 0 {
                    tracing::warn!(key = %key, "deleted upstream for longer than the grace; removed");
                    return Ok(None);
                }
            }
        }
        let hit = self.open_stored(key)?;
        if hit.is_some() {
            self.inner
                .quiet
                .hold(key.as_str(), self.inner.clock.instant(), quiet);
        }
        Ok(hit)
    }

    /// Whether `key`'s last revalidation failed so recently that its stored copy is served without
    /// asking again (`after_failed_revalidation`).
    pub fn is_quiet(&self, key: &Key) -> bool {
        self.inner
            .quiet
            .is_quiet(key.as_str(), self.inner.clock.instant())
    }

    /// Reads a row without side effects.
    pub fn get(&self, key: &Key) -> Result<Option<ObjectRow>, StoreError> {
        Ok(self.inner.index.get(key.as_str())?)
    }

    pub fn fills(&self) -> Vec<FillStatus> {
        lock(&self.inner.inflight)
            .values()
            .map(|f| f.status())
            .collect()
    }

    /// The largest and most requested `n` objects and the bytes pins hold (also set as a gauge). One pass
    /// over the index: blocking, and proportional to its size, so callers cache the answer.
    pub fn summary(&self, n: usize) -> Result<summary::Summary, StoreError> {
        self.flush_access()?;
        let mut c = summary::Collector::new(n);
        self.inner.index.for_each(|k, row| c.offer(k, row))?;
        let s = c.finish();
        self.inner
            .metrics
            .store_pinned_bytes
            .set(s.pinned_bytes as i64);
        Ok(s)
    }

    pub fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ObjectRow)>, StoreError> {
        Ok(self.inner.index.list(prefix, cursor, limit)?)
    }

    /// `Index::find`: a page of `list` filtered by pin, for the admin API and `store ls`.
    pub fn find(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        pinned: Option<bool>,
        limit: usize,
        scan_budget: usize,
    ) -> Result<Found, StoreError> {
        Ok(self
            .inner
            .index
            .find(prefix, cursor, pinned, limit, scan_budget)?)
    }

    /// The size of the blob with this digest, when it is stored (under any key).
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.index.get_blob(digest)?.map(|b| b.size))
    }

    /// Gives `key` the row `row`, whose blob must already be stored (a manifest fetched by tag is also
    /// its own digest's object; a layer another repository already brought). Returns false, changing
    /// nothing, when the blob is not stored.
    pub fn link(&self, key: &Key, row: &ObjectRow) -> Result<bool, StoreError> {
        let orphan = {
            let _stripe = lock(&self.inner.stripes[stripe_of(&row.digest)]);
            match self.inner.index.get_blob(&row.digest)? {
                Some(blob) if blob.size == row.size => {}
                _ => return Ok(false),
            }
            let orphan = self.inner.index.put(key.as_str(), row)?;
            self.inner.hot.forget(key.as_str());
            orphan
        };
        if let Some(old) = orphan.filter(|o| *o != row.digest) {
            self.unlink_if_unreferenced(&old)?;
        }
        self.refresh_gauges();
        Ok(true)
    }

    /// Pins or unpins a key; returns false when the key is not stored.
    pub fn set_pinned(&self, key: &Key, pinned: bool) -> Result<bool, StoreError> {
        self.inner.hot.forget(key.as_str());
        Ok(self.inner.index.update(key.as_str(), |row| {
            let changed = row.pinned != pinned;
            row.pinned = pinned;
            changed
        })?)
    }

    /// The admin API's pin: kept until an operator unpins it, whatever sync plans. Unpinning also drops
    /// a sync pin (the next sync run pins the key again if metal-api still lists it). Returns false when
    /// the key is not stored.
    pub fn pin_by_operator(&self, key: &Key, pinned: bool) -> Result<bool, StoreError> {
        self.inner.hot.forget(key.as_str());
        Ok(self.inner.index.update(key.as_str(), |row| {
            let changed = row.pinned != pinned || row.operator_pin != pinned;
            row.pinned = pinned;
            row.operator_pin = pinned;
            changed
        })?)
    }

    fn record_hit(&self, key: &str) {
        let mut access = lock(&self.inner.access);
        let entry = access.entry(key.to_string()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = self.inner.clock.now_secs();
    }

    /// Writes batched hit counts to the index.
    pub fn flush_access(&self) -> Result<(), StoreError> {
        let batch: Vec<AccessUpdate> = lock(&self.inner.access)
            .drain()
            .map(|(key, (hits, last_access))| AccessUpdate {
                key,
                hits,
                last_access,
            })
            .collect();
        Ok(self.inner.index.apply_access(&batch)?)
    }

    fn refresh_gauges(&self) {
        let m = &self.inner.metrics;
        m.store_bytes.set(self.inner.index.total_bytes() as i64);
        m.store_objects.set(self.inner.index.object_count() as i64);
    }

    /// Removes keys outright (admin API, sync unpinning is separate). Returns how many existed.
    pub fn remove(&self, keys: &[String]) -> Result<usize, StoreError> {
        let removed = self.remove_rows(keys, |_| true, false)?;
        self.refresh_gauges();
        Ok(removed)
    }

    /// Drops the rows of `keys` that `remove` accepts and unlinks the blobs they were the last users of.
    /// The rows go under the in-flight lock — so no hit is between its row lookup and its open, and with
    /// `spare_busy` no key with a fill running is touched — in batches, so requests wait for one small
    /// index transaction at most; the unlinks (slow for large files) happen outside every lock requests
    /// take. An open blob stays readable after its unlink.
    pub(super) fn remove_rows(
        &self,
        keys: &[String],
        remove: impl Fn(&ObjectRow) -> bool,
        spare_busy: bool,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for batch in keys.chunks(REMOVE_BATCH) {
            let orphans = {
                let inflight = lock(&self.inner.inflight);
                let batch: Vec<String> = batch
                    .iter()
                    .filter(|k| !(spare_busy && inflight.contains_key(k.as_str())))
                    .cloned()
                    .collect();
                let (rows, orphans) = self.inner.index.remove_if(&batch, &remove)?;
                for key in &batch {
                    self.inner.hot.forget(key);
                }
                removed += rows.len();
                orphans
            };
            for digest in orphans {
                self.unlink_if_unreferenced(&digest)?;
            }
        }
        Ok(removed)
    }

    fn unlink_if_unreferenced(&self, digest: &Digest) -> Result<(), StoreError> {
        let _stripe = lock(&self.inner.stripes[stripe_of(digest)]);
        if self.inner.index.get_blob(digest)?.is_none() {
            self.inner
                .fs
                .remove_blob(digest)
                .map_err(io_err(format!("unlink {digest}")))?;
        }
        Ok(())
    }
}

fn stripe_of(digest: &Digest) -> usize {
    digest
        .hex()
        .as_bytes()
        .iter()
        .take(4)
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(*b as usize))
        % STRIPES
}
