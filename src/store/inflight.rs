//! Single-flight fills and the readers that follow them.
//!
//! One fill per key writes the temp file; every client of that key — the first, late joiners, Range
//! readers — reads the growing file through a shared descriptor as bytes arrive. No reader sees the last
//! byte it asked for before the content is verified — the object's last byte for a whole-body reader, the
//! range's last byte for a Range reader — so a fill that fails verification (or breaks) ends every
//! reader's response short: the client sees an aborted transfer, never a complete-looking wrong one.

use super::fs;
use super::index::ObjectRow;
use bytes::Bytes;
use futures_util::Stream;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;

/// Largest read handed to a client in one piece.
const READ_CHUNK: usize = 256 * 1024;

/// What the origin told us about the body before sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMeta {
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The content digest the source vouches for (a registry's `Docker-Content-Digest`): the body must
    /// hash to it, like `Expected::sha256`, or nothing is stored.
    pub digest: Option<super::key::Digest>,
}

/// Why a source did not deliver, by cause, so the fronts can choose their answer (404 relayed, 504 for a
/// timeout, 502 otherwise) and their fallback (the next source, a resume) without reading messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source answered, with a status that carries no body to store (404, 500, 429…).
    #[error("answered {status}: {message}")]
    Status { status: u16, message: String },
    /// No answer, or no body bytes, within the configured time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The source could not be reached (refused, unresolvable, TLS failure).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The body broke off (connection reset, malformed framing).
    #[error("body broken: {0}")]
    Reset(String),
    /// The body ended cleanly before the length the source announced.
    #[error("body ended after {got} of {announced} bytes")]
    Short { got: u64, announced: u64 },
    /// The answer is unusable as it is (an encoding nobody asked for, larger than allowed).
    #[error("{0}")]
    Refused(String),
    /// The fill was stopped before the source's end of body (shutdown, cancellation).
    #[error("abandoned: {0}")]
    Abandoned(String),
}

impl SourceError {
    /// The source's status, when it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SourceError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type SourceBody = Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>>;

/// The answer of whatever feeds a fill (an origin, a peer, a registry), as far as the store cares.
pub enum SourceOutcome {
    Body {
        meta: SourceMeta,
        body: SourceBody,
    },
    /// A conditional request found the stored copy current.
    NotModified,
    /// No body to store: the source answered with another status or could not be reached.
    Unavailable(SourceError),
}

pub type SourceFuture = Pin<Box<dyn Future<Output = SourceOutcome> + Send>>;

/// What a fill's result must match before it is published. Unset fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub size: Option<u64>,
    pub sha256: Option<super::key::Digest>,
    pub md5: Option<[u8; 16]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillFailure {
    /// The source refused or broke; nothing to serve.
    Upstream(SourceError),
    /// The body did not match its length or digest; nothing stored, readers aborted.
    Integrity(String),
    /// The body could not be stored (disk full, too large). The source is fine: a reader may continue
    /// from where it stopped by other means.
    Storage(String),
}

impl std::fmt::Display for FillFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillFailure::Upstream(SourceError::Status { status, message }) => {
                write!(f, "upstream answered {status}: {message}")
            }
            FillFailure::Upstream(e) => write!(f, "upstream failed: {e}"),
            FillFailure::Integrity(m) => write!(f, "integrity check failed: {m}"),
            FillFailure::Storage(m) => write!(f, "cannot store: {m}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Phase {
    Connecting,
    Streaming {
        meta: Arc<SourceMeta>,
        written: u64,
        verified: bool,
    },
    Complete {
        row: ObjectRow,
    },
    NotModified,
    Failed(FillFailure),
}

impl Phase {
    /// Bytes a reader may hand out now: everything once verified, else all but the last byte.
    fn readable(&self) -> Option<u64> {
        match self {
            Phase::Streaming {
                written,
                verified: true,
                ..
            } => Some(*written),
            Phase::Streaming {
                written,
                verified: false,
                ..
            } => Some(written.saturating_sub(1)),
            Phase::Complete { row } => Some(row.size),
            _ => None,
        }
    }

    fn finished_at(&self) -> Option<u64> {
        match self {
            Phase::Streaming {
                written,
                verified: true,
                ..
            } => Some(*written),
            Phase::Complete { row } => Some(row.size),
            _ => None,
        }
    }
}

/// One running fill.
pub struct Fill {
    key: String,
    phase: watch::Sender<Phase>,
    file: OnceLock<Arc<File>>,
    started: Instant,
    readers: AtomicUsize,
    /// The task writing it, so shutdown can stop it once the drain deadline has passed.
    task: OnceLock<tokio::task::AbortHandle>,
    /// Set while its source waits on another cache node (see `FillSpec::peer_wait`).
    peer_wait: Option<PeerWait>,
}

/// "This fill waits on another cache node": set while a fill's source waits on the key's owner, cleared by
/// the source when it gives up on the node. A node asking about the key meanwhile is told "busy" instead of
/// joining the fill, so two nodes can never wait on each other.
#[derive(Debug, Clone)]
pub struct PeerWait(Arc<std::sync::atomic::AtomicBool>);

impl PeerWait {
    /// Waiting, from the start.
    pub fn new() -> Self {
        PeerWait(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    /// The source stopped waiting on the node (it goes to the origin).
    pub fn stop(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn waiting(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for PeerWait {
    fn default() -> Self {
        Self::new()
    }
}

/// A snapshot for the admin API and status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FillStatus {
    pub key: String,
    pub written: u64,
    pub total: Option<u64>,
    pub readers: usize,
    pub elapsed_ms: u64,
}

impl Fill {
    pub(super) fn new(key: String, peer_wait: Option<PeerWait>) -> Arc<Self> {
        let (tx, _) = watch::channel(Phase::Connecting);
        Arc::new(Fill {
            key,
            phase: tx,
            file: OnceLock::new(),
            started: Instant::now(),
            readers: AtomicUsize::new(0),
            task: OnceLock::new(),
            peer_wait,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn set_file(&self, file: Arc<File>) {
        let _ = self.file.set(file);
    }

    /// Whether the source is waiting on another cache node right now.
    pub fn waits_on_peer(&self) -> bool {
        self.peer_wait.as_ref().is_some_and(PeerWait::waiting)
    }

    pub(super) fn set_task(&self, task: tokio::task::AbortHandle) {
        let _ = self.task.set(task);
    }

    /// Stops the fill: nothing is committed, readers end short.
    pub(super) fn abort(&self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    pub(super) fn advance(&self, written_now: u64, verified_now: bool) {
        self.phase.send_modify(|p| {
            if let Phase::Streaming {
                written, verified, ..
            } = p
            {
                *written = written_now;
                *verified = verified_now;
            }
        });
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub fn status(&self) -> FillStatus {
        let (written, total) = match &*self.phase.borrow() {
            Phase::Streaming { meta, written, .. } => (*written, meta.content_length),
            Phase::Complete { row } => (row.size, Some(row.size)),
            _ => (0, None),
        };
        FillStatus {
            key: self.key.clone(),
            written,
            total,
            readers: self.readers.load(Ordering::Relaxed),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    /// Waits until the source has answered: returns `Streaming`, `Complete`, `NotModified` or `Failed`.
    pub async fn head(&self) -> Phase {
        let mut rx = self.phase.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            if !matches!(current, Phase::Connecting) {
                return current;
            }
            if rx.changed().await.is_err() {
                return self.phase();
            }
        }
    }

    /// Waits until the fill has ended: `Complete`, `NotModified` or `Failed`.
    pub async fn finished(&self) -> Phase {
        let mut rx = self.phase.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            if matches!(
                current,
                Phase::Complete { .. } | Phase::NotModified | Phase::Failed(_)
            ) {
                return current;
            }
            if rx.changed().await.is_err() {
                return self.phase();
            }
        }
    }

    /// A stream of the bytes `[start, end)` (`end = None`: to the end of the content), delivered as the
    /// fill writes them.
    pub fn reader(self: &Arc<Self>, start: u64, end: Option<u64>) -> FillReader {
        self.readers.fetch_add(1, Ordering::Relaxed);
        FillReader {
            fill: Arc::clone(self),
            rx: self.phase.subscribe(),
            pos: start,
            end,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The fill failed after `delivered` bytes of this reader's range had been handed out.
    #[error("{failure}")]
    Failed {
        failure: FillFailure,
        delivered_to: u64,
    },
    #[error("reading the fill's temp file: {0}")]
    Io(#[from] std::io::Error),
}

pub struct FillReader {
    fill: Arc<Fill>,
    rx: watch::Receiver<Phase>,
    pos: u64,
    end: Option<u64>,
}

impl Drop for FillReader {
    fn drop(&mut self) {
        self.fill.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FillReader {
    /// The next piece, `None` at the end of the range.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ReadError>> {
        loop {
            if self.end.is_some_and(|e| self.pos >= e) {
                return None;
            }
            let phase = self.rx.borrow_and_update().clone();
            if let Phase::Failed(failure) = &phase {
                return Some(Err(ReadError::Failed {
                    failure: failure.clone(),
                    delivered_to: self.pos,
                }));
            }
            if let Some(readable) = phase.readable() {
                let mut limit = self.end.map_or(readable, |e| e.min(readable));
                if let Some(end) = self.end
                    && phase.finished_at().is_none()
                {
                    // A range that ends before the object does waits for verification with its own
                    // last byte: a fill that fails later must cut this reader short too.
                    limit = limit.min(end.saturating_sub(1));
                }
                if self.pos < limit {
                    let Some(file) = self.fill.file.get().cloned() else {
                        return Some(Err(ReadError::Io(std::io::Error::other(
                            "fill has no file",
                        ))));
                    };
                    let len = (limit - self.pos).min(READ_CHUNK as u64) as usize;
                    let pos = self.pos;
                    return match fs::read_chunk(&file, pos, len).await {
                        Ok(buf) if !buf.is_empty() => {
                            self.pos += buf.len() as u64;
                            Some(Ok(buf.into_bytes()))
                        }
                        Ok(_) => Some(Err(ReadError::Io(std::io::Error::other(
                            "temp file shorter than written",
                        )))),
                        Err(e) => Some(Err(ReadError::Io(e))),
                    };
                }
                if phase.finished_at().is_some_and(|f| self.pos >= f) {
                    return None;
                }
            }
            if matches!(phase, Phase::NotModified) {
                return None;
            }
            if self.rx.changed().await.is_err() {
                // The fill task is gone without a final phase (runtime shutting down).
                let failure =
                    FillFailure::Upstream(SourceError::Abandoned("the fill task is gone".into()));
                return Some(Err(ReadError::Failed {
                    failure,
                    delivered_to: self.pos,
                }));
            }
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut r| async move {
            r.next_chunk().await.map(|item| (item, r))
        })
    }
}
