//! Shutdown signal, readiness and the registry of named background work, shared by every component.

pub mod progress;
pub mod runs;
pub mod schedule;
pub mod workers;

pub use runs::{Busy, RunStatus, RunTicket, Runs};
pub use workers::{Worker, WorkerInfo, WorkerState, Workers};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Cheap to clone. `ready` turns true once every listener is bound and the store is open.
#[derive(Clone)]
pub struct Lifecycle {
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    workers: Workers,
    progress: Arc<progress::Progress>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let shutdown = CancellationToken::new();
        Lifecycle {
            workers: Workers::new(shutdown.clone()),
            shutdown,
            ready: Arc::default(),
            progress: Arc::new(progress::Progress::for_interval(
                std::time::Duration::from_secs(2),
            )),
        }
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// With the self-check running every `interval` (`nodes.health_interval`).
    pub fn with_check_interval(interval: std::time::Duration) -> Self {
        Lifecycle {
            progress: Arc::new(progress::Progress::for_interval(interval)),
            ..Self::default()
        }
    }

    /// Whether this node makes progress (the self-check's probe completes).
    pub fn progress(&self) -> &progress::Progress {
        &self.progress
    }

    /// The background work of this service; every worker obeys this lifecycle's shutdown.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn request_shutdown(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub fn set_ready(&self) {
        self.progress.record_ok();
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Serving: started, not stopping, and making progress.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.is_shutting_down()
            && self.progress.stalled().is_none()
    }

    /// Resolves on SIGTERM or SIGINT (or when something else requested shutdown).
    pub async fn wait_for_signal(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                    _ = self.shutdown.cancelled() => {}
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with the admin API or kill");
                self.shutdown.cancelled().await;
            }
        }
        self.request_shutdown();
    }
}
