//! Shutdown while everything is busy: a sync run waiting on metal-api, a store verify hashing a huge
//! blob, and a fill streaming from a slow origin. The service must stop within its drain deadline with
//! nothing left running: no worker, no fill, no temp file, and no half-done work recorded as done.

use crate::common;

use common::Env;
use image_cache::config::{OnMiss, Span};
use std::time::{Duration, Instant};

/// `app::SHUTDOWN_GRACE` plus a little for the last joins.
const DRAIN_DEADLINE: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_during_a_sync_a_verify_and_a_fill_stops_everything_within_the_deadline() {
    let env = Env::new().await;
    // metal-api that accepts and never answers: the sync run waits on its listing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let mut c = env.config(OnMiss::Fill);
    c.upstream.read_timeout = Span(Duration::from_secs(60));
    c.sync.url = format!("http://{silent_addr}/metal");
    let hmac = env.dir.path().join("hmac");
    std::fs::write(&hmac, "secret").unwrap();
    c.sync.hmac_file = Some(hmac);
    let svc = env.start(c).await;

    // A stored object whose blob is then made huge (sparse): verify reads for a long time.
    let stored = svc.get("/file/1000/1").send().await.unwrap();
    assert_eq!(stored.status(), 200);
    stored.bytes().await.unwrap();
    svc.settle().await;
    let blob = common::files_under(&env.state_dir().join("blobs"))
        .into_iter()
        .next()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();

    // A fill that would take minutes: 100 MB in 64 KiB pieces every 200 ms.
    let slow = svc.get("/slow/100000000/3/65536/200").send().await.unwrap();
    assert_eq!(slow.status(), 200);
    let reader = tokio::spawn(async move { slow.bytes().await });

    let post = |path: &str| svc.client.post(format!("{}{path}", svc.base)).send();
    assert_eq!(post("/admin/store/verify").await.unwrap().status(), 202);
    assert_eq!(post("/admin/sync").await.unwrap().status(), 202);

    let running = svc.running.as_ref().unwrap();
    let workers = running.lifecycle.workers().clone();
    let store = running.store.clone();
    let busy: Vec<String> = workers.running();
    for name in ["store verify, run 1", "sync run 1", "store maintenance"] {
        assert!(busy.iter().any(|n| n == name), "{name} not in {busy:?}");
    }
    assert_eq!(store.fills().len(), 1);
    let page = svc.text("/").await;
    assert!(page.contains("sync run 1"), "the page lists running work");

    let started = Instant::now();
    svc.stop().await;
    let took = started.elapsed();
    assert!(took < DRAIN_DEADLINE, "shutdown took {took:?}");

    assert!(workers.running().is_empty(), "{:?}", workers.running());
    assert!(store.fills().is_empty(), "{:?}", store.fills());
    assert!(
        std::fs::read_dir(env.state_dir().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the aborted fill left its temp file"
    );
    assert!(
        reader.await.unwrap().is_err(),
        "the client of the aborted fill sees a cut transfer, not a complete body"
    );
    let key = image_cache::store::Key::parse("file:files.test/slow/100000000/3/65536/200").unwrap();
    assert!(
        store.get(&key).unwrap().is_none(),
        "nothing half-done is stored"
    );
    held.abort();
}

/// A stopped service lets go of its store: the same state dir opens again at once, even with the sync
/// and prefetch schedulers running (their cron jobs once kept the store open after shutdown).
#[tokio::test]
async fn a_stopped_service_with_schedulers_releases_the_store() {
    let env = Env::new().await;
    let api =
        common::metal_api::MetalApi::start("k3y", serde_json::json!([]), serde_json::json!([]))
            .await;
    let reg = common::oci::FakeRegistry::start().await;
    let mut c = env.config(OnMiss::Fill);
    c.sync.url = api.url();
    c.sync.enabled = true;
    c.sync.jitter = Span(Duration::ZERO);
    let hmac = env.dir.path().join("hmac");
    std::fs::write(&hmac, "k3y").unwrap();
    c.sync.hmac_file = Some(hmac);
    c.registry.upstreams = [("fake.test:5000".to_string(), reg.url.clone())]
        .into_iter()
        .collect();
    c.registry.prefetch = vec!["fake.test:5000/none/here:1".into()];
    for round in 0..3 {
        let svc = env.start(c.clone()).await;
        // Both schedulers got as far as their cron job.
        let mut both = false;
        for _ in 0..500 {
            let sync: serde_json::Value =
                serde_json::from_str(&svc.text("/admin/sync").await).unwrap();
            let prefetch: serde_json::Value =
                serde_json::from_str(&svc.text("/admin/registry/prefetch").await).unwrap();
            both = sync["finished"] == 1 && prefetch["finished"] == 1;
            if both {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(both, "round {round}: the start-up runs did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let workers = svc.running.as_ref().unwrap().lifecycle.workers().running();
        for name in ["sync scheduler", "prefetch scheduler"] {
            assert!(
                workers.iter().any(|w| w == name),
                "round {round}: {workers:?}"
            );
        }
        svc.stop().await;
    }
}
