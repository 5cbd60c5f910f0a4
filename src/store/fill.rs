//! The fill writer: one task per running fill takes the source's body, writes it to a temp file in
//! batches that readers see as soon as they are on disk, hashes it beside the writes (`hashing.rs`),
//! checks it against what was expected, and publishes it (rename, then index row). Nothing reaches the
//! index unverified.

use super::fs::TempBlob;
use super::hashing::HashFeed;
use super::index::ObjectRow;
use super::inflight::{
    Expected, Fill, FillFailure, Phase, SourceBody, SourceError, SourceMeta, SourceOutcome,
};
use super::{FillSpec, Inner, Store, StoreError, io_err, lock, stripe_of};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Body bytes gathered before one write to the temp file.
const WRITE_BATCH: usize = 256 * 1024;
/// Received chunks gathered before one write at most (a source sending tiny pieces is written sooner).
const BATCH_CHUNKS: usize = 1024;
/// Longest a partial batch waits before it is written, so readers of a slow source still see progress.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// Ends a fill exactly once: off the in-flight map and into its final phase under the map's lock. Its row
/// (if any) is committed before, so anyone who no longer finds the fill finds the row; and a waiter that
/// learns the ending and asks again starts afresh instead of joining the ended fill and being answered
/// with its failure.
struct FillGuard {
    inner: Arc<Inner>,
    fill: Arc<Fill>,
    done: bool,
}

impl FillGuard {
    fn finish(mut self, phase: Phase) {
        self.end(phase);
    }

    fn end(&mut self, phase: Phase) {
        if self.done {
            return;
        }
        self.done = true;
        let mut inflight = lock(&self.inner.inflight);
        if inflight
            .get(self.fill.key())
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            inflight.remove(self.fill.key());
        }
        self.fill.set_phase(phase);
        drop(inflight);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.end(Phase::Failed(FillFailure::Upstream(
            SourceError::Abandoned("shutting down".into()),
        )));
    }
}

pub(super) async fn run(
    inner: Arc<Inner>,
    fill: Arc<Fill>,
    spec: FillSpec,
    prior: Option<ObjectRow>,
) {
    let guard = FillGuard {
        inner: Arc::clone(&inner),
        fill: Arc::clone(&fill),
        done: false,
    };
    let key = fill.key().to_string();
    let phase = match spec.source.await {
        SourceOutcome::NotModified => {
            let now = inner.clock.now_millis();
            let index_inner = Arc::clone(&inner);
            let k = key.clone();
            let updated = tokio::task::spawn_blocking(move || {
                let updated = index_inner.index.update(&k, |row| {
                    row.validated_ms = now;
                    // The upstream has it again: no longer deleted there.
                    row.upstream_deleted_ms = None;
                    true
                });
                index_inner.hot.forget(&k);
                updated
            })
            .await;
            match (prior, updated) {
                (Some(_), Ok(Ok(true))) => Phase::NotModified,
                _ => Phase::Failed(FillFailure::Upstream(SourceError::Status {
                    status: 304,
                    message: "origin answered 304 but nothing is stored".into(),
                })),
            }
        }
        SourceOutcome::Unavailable(e) => Phase::Failed(FillFailure::Upstream(e)),
        SourceOutcome::Body { meta, body } => {
            let rules = Rules {
                expected: spec.expected,
                want_md5: spec.want_md5,
                pin: spec.pin,
            };
            match write_body(&inner, &fill, &key, meta, body, rules).await {
                Ok(row) => {
                    inner
                        .metrics
                        .store_bytes
                        .set(inner.index.total_bytes() as i64);
                    inner
                        .metrics
                        .store_objects
                        .set(inner.index.object_count() as i64);
                    if inner.index.total_bytes() > inner.max_size {
                        inner.evict_wake.notify_one();
                    }
                    Phase::Complete { row }
                }
                Err(failure) => {
                    tracing::warn!(key = %key, %failure, "fill failed; nothing stored");
                    Phase::Failed(failure)
                }
            }
        }
    };
    if matches!(phase, Phase::NotModified | Phase::Complete { .. }) {
        inner.quiet.release(&key);
    }
    guard.finish(phase);
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

/// The bytes a running fill holds in `tmp/`, counted with the stored bytes against `cache.max_size`:
/// temp files of fills nobody waits for any more must not fill the disk past the cap. Given back when the
/// fill ends (its bytes are then stored, or gone).
struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Reservation {
    /// `bytes` for a fill about to start; refused when the object alone, or the fills in flight, would
    /// outgrow the cap. When they and the stored bytes would, eviction is woken to make room.
    fn take(inner: &Arc<Inner>, bytes: u64) -> Result<Self, FillFailure> {
        let mut r = Reservation {
            inner: Arc::clone(inner),
            bytes: 0,
        };
        r.grow_to(bytes)?;
        Ok(r)
    }

    fn grow_to(&mut self, bytes: u64) -> Result<(), FillFailure> {
        use std::sync::atomic::Ordering;
        if bytes <= self.bytes {
            return Ok(());
        }
        if bytes > self.inner.max_size {
            return Err(FillFailure::Storage(format!(
                "object is larger than cache.max_size ({} bytes)",
                self.inner.max_size
            )));
        }
        let more = bytes - self.bytes;
        let filling = self.inner.filling.fetch_add(more, Ordering::SeqCst) + more;
        self.bytes = bytes;
        self.inner.metrics.store_filling_bytes.set(filling as i64);
        if filling > self.inner.max_size {
            return Err(FillFailure::Storage(format!(
                "the fills in flight would hold {filling} bytes, more than cache.max_size ({} bytes)",
                self.inner.max_size
            )));
        }
        if self.inner.index.total_bytes() + filling > self.inner.max_size {
            self.inner.evict_wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let left = self
            .inner
            .filling
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::SeqCst)
            - self.bytes;
        self.inner.metrics.store_filling_bytes.set(left as i64);
    }
}

/// What a fill's body must match, and how its row is committed (from its `FillSpec`).
struct Rules {
    expected: Expected,
    want_md5: bool,
    pin: bool,
}

async fn write_body(
    inner: &Arc<Inner>,
    fill: &Arc<Fill>,
    key: &str,
    meta: SourceMeta,
    mut body: SourceBody,
    rules: Rules,
) -> Result<ObjectRow, FillFailure> {
    let Rules {
        expected,
        want_md5,
        pin,
    } = rules;
    let integrity = |m: String| Err(FillFailure::Integrity(m));
    if let (Some(cl), Some(size)) = (meta.content_length, expected.size)
        && cl != size
    {
        return integrity(format!("source announces {cl} bytes, expected {size}"));
    }
    let mut reserved = Reservation::take(inner, meta.content_length.unwrap_or(0))?;
    let fs_ = inner.fs.clone();
    let with_md5 = want_md5 || expected.md5.is_some();
    let mut temp: TempBlob = blocking(move || fs_.create_temp())
        .await
        .map_err(FillFailure::Storage)?
        .map_err(|e| FillFailure::Storage(format!("creating temp file: {e}")))?;
    // Hashing runs beside the writes, in order: a batch is hashed while it is written and the next one
    // received, and readers get each batch as soon as it is on disk. No thread is held between batches.
    let mut hash_tx = HashFeed::start(with_md5);
    fill.set_file(temp.shared_file());
    fill.set_phase(Phase::Streaming {
        meta: Arc::new(meta.clone()),
        written: 0,
        verified: false,
    });

    // The received chunks themselves, not a copy: written with one vectored write and hashed in place.
    let mut buf = Batch::default();
    loop {
        let next = if buf.is_empty() {
            body.next().await
        } else {
            match tokio::time::timeout(FLUSH_AFTER, body.next()).await {
                Ok(next) => next,
                Err(_) => {
                    (temp, buf) = flush(fill, temp, buf, &mut hash_tx).await?;
                    continue;
                }
            }
        };
        match next {
            Some(Ok(bytes)) => {
                buf.push(bytes);
                reserved.grow_to(temp.written() + buf.len() as u64)?;
                if buf.len() >= WRITE_BATCH || buf.chunks.len() >= BATCH_CHUNKS {
                    (temp, buf) = flush(fill, temp, buf, &mut hash_tx).await?;
                }
            }
            Some(Err(e)) => return Err(FillFailure::Upstream(e)),
            None => break,
        }
    }
    if !buf.is_empty() {
        (temp, _) = flush(fill, temp, buf, &mut hash_tx).await?;
    }

    let hashes = hash_tx
        .finish()
        .await
        .map_err(|e| FillFailure::Storage(e.to_string()))?;
    if hashes.size != temp.written() {
        return Err(FillFailure::Storage(format!(
            "hashed {} bytes but wrote {}",
            hashes.size,
            temp.written()
        )));
    }
    if let Some(cl) = meta.content_length
        && cl != hashes.size
    {
        if hashes.size < cl {
            return Err(FillFailure::Upstream(SourceError::Short {
                got: hashes.size,
                announced: cl,
            }));
        }
        return integrity(format!(
            "source announced {cl} bytes and sent {}",
            hashes.size
        ));
    }
    if let Some(size) = expected.size
        && size != hashes.size
    {
        return integrity(format!("expected {size} bytes, got {}", hashes.size));
    }
    for want in [expected.sha256, meta.digest].into_iter().flatten() {
        if want != hashes.sha256 {
            inner.metrics.integrity_failures.inc();
            return integrity(format!("expected {want}, got {}", hashes.sha256));
        }
    }
    if let (Some(want), Some(got)) = (expected.md5, hashes.md5)
        && want != got
    {
        return integrity(format!(
            "expected md5 {}, got {}",
            hex::encode(want),
            hex::encode(got)
        ));
    }
    fill.advance(hashes.size, true);

    let now_ms = inner.clock.now_millis();
    let now = now_ms / 1000;
    let row = ObjectRow {
        digest: hashes.sha256,
        size: hashes.size,
        content_type: meta.content_type.clone(),
        md5: hashes.md5.map(hex::encode),
        etag: meta.etag.clone(),
        last_modified: meta.last_modified.clone(),
        fetched_at: now,
        validated_ms: now_ms,
        last_access: now,
        hits: 0,
        pinned: pin,
        operator_pin: false,
        upstream_deleted_ms: None,
    };
    let inner2 = Arc::clone(inner);
    let key2 = key.to_string();
    let row2 = row.clone();
    let committed = blocking(move || -> Result<(), StoreError> {
        let digest = row2.digest;
        let orphan = {
            let _stripe = lock(&inner2.stripes[stripe_of(&digest)]);
            let created = inner2
                .fs
                .publish(temp, &digest)
                .map_err(io_err(format!("publishing {digest}")))?;
            match commit_row(&inner2, &key2, &row2) {
                Ok(orphan) => {
                    inner2.hot.forget(&key2);
                    orphan
                }
                Err(e) => {
                    // The row never made it (a full disk refuses redb's commit too): take back the blob
                    // this fill published, unless another row already uses that content.
                    if created && matches!(inner2.index.get_blob(&digest), Ok(None)) {
                        let _ = inner2.fs.remove_blob(&digest);
                    }
                    return Err(e);
                }
            }
        };
        if let Some(old) = orphan.filter(|o| *o != digest) {
            Store {
                inner: Arc::clone(&inner2),
            }
            .unlink_if_unreferenced(&old)?;
        }
        Ok(())
    })
    .await
    .map_err(FillFailure::Storage)?;
    committed.map_err(|e| FillFailure::Storage(e.to_string()))?;
    Ok(row)
}

/// The index row of a verified, published fill.
fn commit_row(
    inner: &Inner,
    key: &str,
    row: &ObjectRow,
) -> Result<Option<super::Digest>, StoreError> {
    #[cfg(test)]
    if inner.fail_commits.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(StoreError::Io {
            what: "index commit (injected by a test)".into(),
            source: std::io::Error::other("No space left on device"),
        });
    }
    Ok(inner.index.put(key, row)?)
}

/// Hands a batch to the hasher, writes it, and lets readers see it. Returns a fresh batch buffer.
async fn flush(
    fill: &Arc<Fill>,
    mut temp: TempBlob,
    buf: Batch,
    hash_tx: &mut HashFeed,
) -> Result<(TempBlob, Batch), FillFailure> {
    let batch: Arc<[bytes::Bytes]> = buf.chunks.into();
    hash_tx
        .send(&batch)
        .await
        .map_err(|e| FillFailure::Storage(e.to_string()))?;
    let (temp, result) = blocking(move || {
        let r = temp.append_chunks(&batch);
        (temp, r)
    })
    .await
    .map_err(FillFailure::Storage)?;
    result.map_err(|e| FillFailure::Storage(format!("writing temp file: {e}")))?;
    fill.advance(temp.written(), false);
    Ok((temp, Batch::default()))
}

/// Received chunks waiting for one write.
#[derive(Default)]
struct Batch {
    chunks: Vec<bytes::Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, chunk: bytes::Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
}
