//! Named background work: every task the service runs besides answering requests (health poller, store
//! maintenance, sync scheduler and runs, verify runs, hit-ratio sampler, watchdog) is spawned here under
//! a name, so the status page can say what each is doing and shutdown can join all of them with a
//! deadline instead of leaving detached tasks behind.
//!
//! Two shapes: a *worker* lives as long as the service and reports each unit of work it does (a poll, a
//! maintenance pass, a scheduled run) through its [`Worker`] handle; a *task* is one piece of work (a
//! sync run started from the admin API) and leaves the list when it ends.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a worker is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Waiting for its next unit of work.
    Idle,
    /// Doing a unit of work.
    Busy,
    /// Ended normally (a task that finished, a worker that saw shutdown).
    Done,
    /// Ended because it panicked.
    Failed,
}

/// One line of the status page's worker table (and of `GET /admin/status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub state: WorkerState,
    /// Units of work finished (polls, passes, runs).
    pub runs: u64,
    /// Units of work that ended in an error.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Unix seconds of the last state change.
    pub since: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks is a status record; a panic elsewhere must not hide it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker's handle on its own status line, and the shutdown signal it must obey.
#[derive(Clone)]
pub struct Worker {
    info: Arc<Mutex<WorkerInfo>>,
    shutdown: CancellationToken,
}

impl Worker {
    /// Cancelled when the service stops: leave the loop, finish or abandon the current unit.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    fn set(&self, f: impl FnOnce(&mut WorkerInfo)) {
        let mut info = lock(&self.info);
        f(&mut info);
        info.since = now_secs();
    }

    /// A unit of work begins.
    pub fn busy(&self) {
        self.set(|i| i.state = WorkerState::Busy);
    }

    /// A unit of work ended; an error is kept as `last_error` until the next success.
    pub fn finished<E: std::fmt::Display>(&self, outcome: Result<(), E>) {
        self.set(|i| {
            i.state = WorkerState::Idle;
            i.runs += 1;
            match outcome {
                Ok(()) => i.last_error = None,
                Err(e) => {
                    i.failures += 1;
                    i.last_error = Some(e.to_string());
                }
            }
        });
    }

    pub fn info(&self) -> WorkerInfo {
        lock(&self.info).clone()
    }
}

struct Entry {
    info: Arc<Mutex<WorkerInfo>>,
    /// The watcher that records how the work ended; finished once the work has.
    handle: JoinHandle<()>,
    /// The work itself, for aborting stragglers.
    abort: tokio::task::AbortHandle,
    /// Tasks leave the list once finished; workers stay (a dead worker is worth seeing).
    transient: bool,
}

/// The registry. Cheap to clone; every clone sees the same workers.
#[derive(Clone, Default)]
pub struct Workers {
    entries: Arc<Mutex<Vec<Entry>>>,
    shutdown: CancellationToken,
}

impl Workers {
    /// Workers whose shutdown signal is `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Workers {
            entries: Arc::default(),
            shutdown,
        }
    }

    /// The signal every worker obeys (for work that checks it from a blocking thread).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a long-lived worker. `body` gets its handle and should return once `shutdown` fires.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, body: F) -> Worker
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name.into(), body, false)
    }

    /// Starts one piece of work (a run), listed while it runs.
    pub fn spawn_task<Fut>(&self, name: impl Into<String>, work: Fut) -> Worker
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(
            name.into(),
            |w: Worker| async move {
                w.busy();
                work.await;
            },
            true,
        )
    }

    fn start<F, Fut>(&self, name: String, body: F, transient: bool) -> Worker
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let info = Arc::new(Mutex::new(WorkerInfo {
            name,
            state: WorkerState::Idle,
            runs: 0,
            failures: 0,
            last_error: None,
            since: now_secs(),
        }));
        let worker = Worker {
            info: Arc::clone(&info),
            shutdown: self.shutdown.clone(),
        };
        let work = body(worker.clone());
        let watcher = worker.clone();
        // A panic inside `work` ends that task only; the watcher records it.
        let inner = tokio::spawn(work);
        let abort = inner.abort_handle();
        let handle = tokio::spawn(async move {
            let outcome = inner.await;
            watcher.set(|i| match outcome {
                Ok(()) => i.state = WorkerState::Done,
                Err(e) => {
                    i.state = WorkerState::Failed;
                    i.failures += 1;
                    i.last_error = Some(if e.is_panic() {
                        "panicked".to_string()
                    } else {
                        "cancelled".to_string()
                    });
                }
            });
        });
        let mut entries = lock(&self.entries);
        entries.retain(|e| !(e.transient && e.handle.is_finished()));
        entries.push(Entry {
            info,
            handle,
            abort,
            transient,
        });
        worker
    }

    /// Every worker and running task, in the order they started.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let mut entries = lock(&self.entries);
        entries.retain(|e| !(e.transient && e.handle.is_finished()));
        entries.iter().map(|e| lock(&e.info).clone()).collect()
    }

    /// Names of everything that has not ended yet.
    pub fn running(&self) -> Vec<String> {
        lock(&self.entries)
            .iter()
            .filter(|e| !e.handle.is_finished())
            .map(|e| lock(&e.info).name.clone())
            .collect()
    }

    /// Waits (after shutdown was signalled) for every worker and task to end, at most `deadline`; what
    /// is still running then is aborted. Returns the names of the aborted ones.
    pub async fn join(&self, deadline: Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let running = self.running();
            if running.is_empty() {
                return running;
            }
            if tokio::time::Instant::now() >= until {
                let entries = lock(&self.entries);
                for e in entries.iter().filter(|e| !e.handle.is_finished()) {
                    e.abort.abort();
                }
                return running;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_report_runs_and_join_at_shutdown() {
        let stop = CancellationToken::new();
        let workers = Workers::new(stop.clone());
        workers.spawn("poller", |w| async move {
            for i in 0..3 {
                w.busy();
                w.finished(if i == 1 { Err("boom") } else { Ok(()) });
            }
            w.shutdown().cancelled().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let list = workers.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "poller");
        assert_eq!(list[0].state, WorkerState::Idle);
        assert_eq!((list[0].runs, list[0].failures), (3, 1));
        assert_eq!(list[0].last_error, None, "a success clears the last error");
        assert_eq!(workers.running(), ["poller"]);

        stop.cancel();
        assert!(workers.join(Duration::from_secs(5)).await.is_empty());
        assert_eq!(workers.list()[0].state, WorkerState::Done);
    }

    #[tokio::test]
    async fn stragglers_are_aborted_at_the_deadline_and_panics_recorded() {
        let workers = Workers::new(CancellationToken::new());
        workers.spawn("stubborn", |_w| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        workers.spawn("broken", |_w| async move { panic!("on purpose") });
        workers.spawn_task("run 1", async {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        let names: Vec<String> = workers.list().into_iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            ["stubborn", "broken"],
            "finished tasks leave the list"
        );
        let broken = workers.list().into_iter().find(|i| i.name == "broken");
        assert_eq!(broken.map(|b| b.state), Some(WorkerState::Failed));

        let aborted = workers.join(Duration::from_millis(100)).await;
        assert_eq!(aborted, ["stubborn"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(workers.running().is_empty());
    }
}
