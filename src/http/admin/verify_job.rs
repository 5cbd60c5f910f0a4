//! `store verify` as a background job of the running server: one at a time, with progress a client can
//! poll (`GET /admin/store/verify`) while it runs, and the last report kept for whoever asks later.

use crate::store::{Store, VerifyReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VerifyStatus {
    pub running: bool,
    /// Runs started since the service started; the number of the current or latest one.
    pub started: u64,
    /// The number of the latest run that ended.
    pub finished: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub last: Option<VerifyReport>,
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct VerifyJob {
    status: Mutex<VerifyStatus>,
    done: AtomicU64,
    total: AtomicU64,
}

pub struct Busy;

impl VerifyJob {
    pub fn status(&self) -> VerifyStatus {
        let mut s = self.lock().clone();
        if s.running {
            s.done_bytes = self.done.load(Ordering::Relaxed);
            s.total_bytes = self.total.load(Ordering::Relaxed);
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VerifyStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a run; returns its number and a handle that resolves to its outcome (dropping the handle
    /// leaves the run going).
    pub fn start(
        self: &Arc<Self>,
        store: Store,
    ) -> Result<(u64, tokio::task::JoinHandle<Result<VerifyReport, String>>), Busy> {
        let run = {
            let mut s = self.lock();
            if s.running {
                return Err(Busy);
            }
            s.running = true;
            s.started += 1;
            s.started
        };
        self.done.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
        let me = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let progress = Arc::clone(&me);
            let outcome = tokio::task::spawn_blocking(move || {
                store.verify(|done, total| {
                    progress.done.store(done, Ordering::Relaxed);
                    progress.total.store(total, Ordering::Relaxed);
                })
            })
            .await;
            let outcome = match outcome {
                Ok(Ok(report)) => Ok(report),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the verify task failed: {e}")),
            };
            let mut s = me.lock();
            s.running = false;
            s.finished = run;
            s.done_bytes = me.done.load(Ordering::Relaxed);
            s.total_bytes = me.total.load(Ordering::Relaxed);
            match &outcome {
                Ok(r) => {
                    s.last = Some(r.clone());
                    s.last_error = None;
                }
                Err(e) => s.last_error = Some(e.clone()),
            }
            outcome
        });
        Ok((run, handle))
    }
}
