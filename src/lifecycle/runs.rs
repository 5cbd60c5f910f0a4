//! Numbered runs of a job that runs one at a time (a sync, a store verify): who may start one, its
//! progress, and the outcome of the last, as the admin API shows them. A client that started run `n`
//! polls until `finished >= n`, then reads `last` (when `last.run == n`) or `last_error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The status of a job's runs, for `GET /admin/sync` and `GET /admin/store/verify`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunStatus<R> {
    pub running: bool,
    /// Runs started since the service started; the number of the current or latest run.
    pub started: u64,
    /// The number of the latest run that ended, successfully or not.
    pub finished: u64,
    /// Progress of the current run (bytes for both jobs), or of the last one once it ended.
    pub done: u64,
    pub total: u64,
    /// The report of the latest run that produced one.
    pub last: Option<R>,
    /// Why the latest run failed; cleared by a run that produced a report.
    pub last_error: Option<String>,
}

impl<R> Default for RunStatus<R> {
    fn default() -> Self {
        RunStatus {
            running: false,
            started: 0,
            finished: 0,
            done: 0,
            total: 0,
            last: None,
            last_error: None,
        }
    }
}

impl<R> RunStatus<R> {
    /// The same status with another report type (the admin API's view of a job's report).
    pub fn map<T>(self, f: impl FnOnce(R) -> T) -> RunStatus<T> {
        RunStatus {
            running: self.running,
            started: self.started,
            finished: self.finished,
            done: self.done,
            total: self.total,
            last: self.last.map(f),
            last_error: self.last_error,
        }
    }
}

/// Another run holds the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a run is already in progress")]
pub struct Busy;

/// Runs of one job. Shared by the job and its readers.
pub struct Runs<R> {
    status: Mutex<RunStatus<R>>,
    done: AtomicU64,
    total: AtomicU64,
}

impl<R> Default for Runs<R> {
    fn default() -> Self {
        Runs {
            status: Mutex::new(RunStatus::default()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl<R: Clone> Runs<R> {
    fn lock(&self) -> MutexGuard<'_, RunStatus<R>> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the job for a new run, or `Busy`. The claim is released when the ticket is finished or
    /// dropped (a dropped ticket records the run as abandoned), so a run can never be left "running".
    pub fn begin(self: &Arc<Self>) -> Result<RunTicket<R>, Busy> {
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
        Ok(RunTicket {
            runs: Arc::clone(self),
            run,
            ended: false,
        })
    }

    pub fn status(&self) -> RunStatus<R> {
        let mut s = self.lock().clone();
        s.done = self.done.load(Ordering::Relaxed);
        s.total = self.total.load(Ordering::Relaxed);
        s
    }

    fn end(&self, run: u64, outcome: Result<R, String>) {
        let mut s = self.lock();
        s.running = false;
        s.finished = run;
        match outcome {
            Ok(r) => {
                s.last = Some(r);
                s.last_error = None;
            }
            Err(e) => s.last_error = Some(e),
        }
    }
}

/// The right to run, numbered. Report progress through it; finish it with the outcome.
pub struct RunTicket<R: Clone> {
    runs: Arc<Runs<R>>,
    run: u64,
    ended: bool,
}

impl<R: Clone> RunTicket<R> {
    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn progress(&self, done: u64, total: u64) {
        self.runs.done.store(done, Ordering::Relaxed);
        self.runs.total.store(total, Ordering::Relaxed);
    }

    /// A handle for progress from another thread (the verify loop runs on the blocking pool).
    pub fn progress_fn(&self) -> impl Fn(u64, u64) + Send + Sync + 'static
    where
        R: Send + 'static,
    {
        let runs = Arc::clone(&self.runs);
        move |done, total| {
            runs.done.store(done, Ordering::Relaxed);
            runs.total.store(total, Ordering::Relaxed);
        }
    }

    pub fn finish(mut self, outcome: Result<R, String>) {
        self.ended = true;
        self.runs.end(self.run, outcome);
    }
}

impl<R: Clone> Drop for RunTicket<R> {
    fn drop(&mut self) {
        if !self.ended {
            self.runs.end(
                self.run,
                Err("the run was abandoned (shutting down)".into()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_at_a_time_numbered_with_outcomes() {
        let runs: Arc<Runs<&'static str>> = Arc::default();
        let first = runs.begin().unwrap();
        assert_eq!(first.run(), 1);
        assert!(matches!(runs.begin(), Err(Busy)));
        first.progress(5, 10);
        let s = runs.status();
        assert!(s.running);
        assert_eq!((s.started, s.finished, s.done, s.total), (1, 0, 5, 10));
        first.finish(Ok("report 1"));
        let s = runs.status();
        assert!(!s.running);
        assert_eq!(
            (s.finished, s.last, s.last_error),
            (1, Some("report 1"), None)
        );

        let second = runs.begin().unwrap();
        second.finish(Err("listing failed".into()));
        let s = runs.status();
        assert_eq!(s.finished, 2);
        assert_eq!(s.last, Some("report 1"), "the last report stays");
        assert_eq!(s.last_error.as_deref(), Some("listing failed"));
        assert_eq!(s.map(str::len).last, Some(8));
    }

    #[test]
    fn a_dropped_ticket_ends_its_run() {
        let runs: Arc<Runs<u8>> = Arc::default();
        drop(runs.begin().unwrap());
        let s = runs.status();
        assert!(!s.running);
        assert_eq!(s.finished, 1);
        assert!(s.last_error.unwrap().contains("abandoned"));
        assert!(runs.begin().is_ok());
    }
}
