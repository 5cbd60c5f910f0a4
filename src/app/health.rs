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

/// Sets this node healthy for DNS answers while the index answers and we are not shutting down.
pub(super) async fn self_check(
    every: Duration,
    store: Store,
    lifecycle: Lifecycle,
    peers: Peers,
    worker: Worker,
) {
    while !worker.is_stopping() {
        worker.busy();
        let healthy = store_answers(&store).await;
        peers.set_self_healthy(healthy && lifecycle.is_ready() && !worker.is_stopping());
        worker.finished(if healthy {
            Ok(())
        } else {
            Err("the store's index does not answer")
        });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = worker.shutdown().cancelled() => {}
        }
    }
    peers.set_self_healthy(false);
}

/// Pets the systemd watchdog while the store answers; stops petting if it does not, so systemd restarts us.
pub(super) async fn watchdog(every: Duration, store: Store, worker: Worker) {
    while !worker.is_stopping() {
        worker.busy();
        let healthy = store_answers(&store).await;
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
