//! A worker that calls `tick` on every tick of a cron schedule (UTC) until shutdown: the sync's and the
//! prefetch's scheduler. The job holds its target weakly: tokio-cron-scheduler's own tasks may outlive
//! its shutdown, and a strong handle there kept the service (and its store) alive after it stopped.

use super::Worker;
use std::sync::{Arc, Weak};

/// Runs `tick(&target)` on `schedule` (5 cron fields) until the worker is told to stop; a schedule that
/// cannot be started ends the worker failed, naming `what`.
pub async fn on_schedule<T: Send + Sync + 'static>(
    worker: Worker,
    what: &str,
    schedule: &str,
    target: &Arc<T>,
    tick: impl Fn(&Arc<T>) + Send + Sync + 'static,
) {
    let spec = format!("0 {schedule}");
    let scheduler = match tokio_cron_scheduler::JobScheduler::new().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the {what} scheduler");
            worker.finished(Err(format!("cannot start the {what} scheduler: {e}")));
            return;
        }
    };
    let weak: Weak<T> = Arc::downgrade(target);
    let job = move |_, _| {
        if let Some(target) = weak.upgrade() {
            tick(&target);
        }
    };
    let added = match tokio_cron_scheduler::Job::new(spec.as_str(), job) {
        Ok(job) => scheduler.add(job).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = added.and(scheduler.start().await) {
        tracing::error!(error = %e, %schedule, "cannot schedule the {what}");
        worker.finished(Err(format!("cannot schedule the {what}: {e}")));
        return;
    }
    worker.shutdown().cancelled().await;
    let mut scheduler = scheduler;
    let _ = scheduler.shutdown().await;
}
