//! `store verify`: re-hash every blob and drop the keys of any whose content no longer matches its name;
//! as a function for the CLI on a stopped server, and as a background job of the running server (one run
//! at a time, progress for `GET /admin/store/verify`, stopped by shutdown).

use super::{Store, StoreError, VerifyReport, fs};
use crate::lifecycle::{Busy, RunStatus, Runs, Workers};
use std::collections::HashSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Store {
    /// The md5 of a stored key's content, computed from its blob and recorded in its row when the fill
    /// that stored it did not compute one: a client's fill hashes SHA-256 only (MD5 alone cost a cold
    /// fill a fifth of its time), and the sync needs md5 only to compare with metal-api's `.md5`
    /// sidecars, once per object. The blob is checked against its name on the way: a blob that no longer
    /// matches gives an error, never an md5. `None` when the key is not stored.
    pub async fn ensure_md5(&self, key: &super::Key) -> Result<Option<String>, StoreError> {
        let Some(row) = self.get(key)? else {
            return Ok(None);
        };
        if let Some(md5) = row.md5 {
            return Ok(Some(md5));
        }
        let digest = row.digest;
        let store = self.clone();
        let hashes = tokio::task::spawn_blocking(move || {
            let file = store.inner.fs.open_blob(&digest)?;
            fs::hash_file(&file, &|| false)
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
        .map_err(super::io_err(format!("blob {digest}")))?;
        let md5 = match hashes.md5 {
            Some(m) if hashes.sha256 == digest && hashes.size == row.size => hex::encode(m),
            _ => {
                return Err(StoreError::Io {
                    what: format!("blob {digest}"),
                    source: std::io::Error::other(
                        "its content no longer matches its digest; `image-cache store verify` removes it",
                    ),
                });
            }
        };
        self.inner.hot.forget(key.as_str());
        self.inner.index.update(key.as_str(), |r| {
            let fill_in = r.digest == digest && r.md5.is_none();
            if fill_in {
                r.md5 = Some(md5.clone());
            }
            fill_in
        })?;
        Ok(Some(md5))
    }

    /// Re-hashes every blob; rows of a blob whose content no longer matches its name are removed.
    /// Blocking. `progress` gets (bytes done, bytes total); once `stop` is cancelled the run ends with
    /// `StoreError::Stopped` before the next blob (what was found so far is not acted on).
    pub fn verify(
        &self,
        mut progress: impl FnMut(u64, u64),
        stop: &CancellationToken,
    ) -> Result<VerifyReport, StoreError> {
        let blobs = self.inner.index.all_blobs()?;
        let total: u64 = blobs.iter().map(|(_, b)| b.size).sum();
        let mut report = VerifyReport::default();
        let mut bad = HashSet::new();
        progress(0, total);
        for (digest, blob) in blobs {
            if stop.is_cancelled() {
                return Err(StoreError::Stopped);
            }
            let ok = match self.inner.fs.open_blob(&digest) {
                Ok(file) => fs::hash_file(&file, &|| stop.is_cancelled())
                    .map(|h| h.sha256 == digest && h.size == blob.size)
                    .unwrap_or(false),
                Err(_) => false,
            };
            if stop.is_cancelled() {
                return Err(StoreError::Stopped);
            }
            if !ok {
                bad.insert(digest);
            }
            report.blobs_checked += 1;
            report.bytes_checked += blob.size;
            progress(report.bytes_checked, total);
        }
        if !bad.is_empty() {
            let keys: Vec<String> = self
                .inner
                .index
                .all_objects()?
                .into_iter()
                .filter(|(_, r)| bad.contains(&r.digest))
                .map(|(k, _)| k)
                .collect();
            tracing::error!(
                keys = keys.len(),
                blobs = bad.len(),
                "corrupt blobs found; their keys are removed"
            );
            self.remove(&keys)?;
            for digest in &bad {
                self.unlink_if_unreferenced(digest)?;
            }
            report.corrupt_keys = keys;
        }
        Ok(report)
    }
}

/// `store verify` as a job of the running server.
#[derive(Clone)]
pub struct VerifyJob {
    store: Store,
    workers: Workers,
    runs: Arc<Runs<VerifyReport>>,
}

impl VerifyJob {
    pub fn new(store: Store, workers: Workers) -> Self {
        VerifyJob {
            store,
            workers,
            runs: Arc::default(),
        }
    }

    pub fn status(&self) -> RunStatus<VerifyReport> {
        self.runs.status()
    }

    /// Starts a run as a named task; returns its number and a receiver of its outcome (dropping the
    /// receiver leaves the run going).
    pub fn start(
        &self,
    ) -> Result<
        (
            u64,
            tokio::sync::oneshot::Receiver<Result<VerifyReport, String>>,
        ),
        Busy,
    > {
        let ticket = self.runs.begin()?;
        let run = ticket.run();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = self.store.clone();
        let stop = self.workers.shutdown_token();
        self.workers
            .spawn_task(format!("store verify, run {run}"), async move {
                let progress = ticket.progress_fn();
                let outcome = tokio::task::spawn_blocking(move || store.verify(progress, &stop))
                    .await
                    .map_err(|e| format!("the verify task failed: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string()));
                ticket.finish(outcome.clone());
                let _ = tx.send(outcome);
            });
        Ok((run, rx))
    }
}
