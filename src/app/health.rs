//! This node's view of its own health: the self-check that decides whether DNS hands this node out, and
//! the systemd watchdog. Internal on purpose: asking our own /health over the network would test the
//! loopback, not the service.

use crate::lifecycle::{Lifecycle, Worker};
use crate::peers::Peers;
use crate::store::Store;
use crate::systemd;
use std::time::Duration;

/// Whether the index answers, on the blocking pool.
async fn store_answers(store: &Store) -> bool {
    let s = store.clone();
    let probe = crate::store::Key::health_probe();
    tokio::task::spawn_blocking(move || s.get(&probe).is_ok())
        .await
        .unwrap_or(false)
}

/// Sets this node healthy for DNS answers while the index answers, the node makes progress (its probe
/// completes within `Progress::stalled_after`), and we are not shutting down. One probe at a time: a
/// probe that waits for a blocking thread is waited for again, never queued a second time.
pub(super) async fn self_check(
    every: Duration,
    store: Store,
    lifecycle: Lifecycle,
    peers: Peers,
    worker: Worker,
) {
    let mut probe: Option<tokio::task::JoinHandle<bool>> = None;
    while !worker.is_stopping() {
        worker.busy();
        let mut running = match probe.take() {
            Some(p) => p,
            None => {
                let s = store.clone();
                tokio::spawn(async move { store_answers(&s).await })
            }
        };
        let answered =
            match tokio::time::timeout(lifecycle.progress().stalled_after(), &mut running).await {
                Ok(done) => done.unwrap_or(false),
                Err(_) => {
                    probe = Some(running);
                    false
                }
            };
        if answered {
            lifecycle.progress().record_ok();
        }
        let stalled = lifecycle.progress().stalled();
        let healthy = answered && stalled.is_none();
        peers.set_self_healthy(healthy && lifecycle.is_ready() && !worker.is_stopping());
        worker.finished(match (answered, stalled) {
            (true, _) => Ok(()),
            (false, Some(_)) => {
                Err("no progress: blocking work does not run (pool exhausted or disk hung)")
            }
            (false, None) => Err("the store's index does not answer"),
        });
        if let Some(since) = stalled {
            tracing::error!(
                stalled_for = ?since,
                "this node makes no progress: its self-check has not completed; out of DNS answers, /health 503"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = worker.shutdown().cancelled() => {}
        }
    }
    peers.set_self_healthy(false);
}

/// Pets the systemd watchdog while the node makes progress (the self-check's probe completes) and the
/// index answers; stops petting otherwise, so systemd restarts us.
pub(super) async fn watchdog(every: Duration, store: Store, lifecycle: Lifecycle, worker: Worker) {
    while !worker.is_stopping() {
        worker.busy();
        let healthy = lifecycle.progress().stalled().is_none()
            && store.get(&crate::store::Key::health_probe()).is_ok();
        if healthy {
            systemd::watchdog();
            systemd::status(&format!(
                "{} objects, {} bytes, {} fills",
                store.object_count(),
                store.total_bytes(),
                store.fills().len()
            ));
            worker.finished::<&str>(Ok(()));
        } else {
            tracing::error!("watchdog: store does not answer");
            worker.finished(Err("the store does not answer; not petting the watchdog"));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = worker.shutdown().cancelled() => {}
        }
    }
}
