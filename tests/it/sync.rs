//! metal-api sync against a stub that checks the HMAC headers and an HTTPS origin with `.md5` sidecars:
//! the planned set ends up stored, pinned and servable; a bad md5 is rejected and reported; a second run
//! downloads nothing; a wrong key or a dead metal-api changes nothing; a dry run changes nothing.

use crate::common;
use crate::common::Fetch as _;

use common::metal_api::MetalApi;
use common::origin::content;
use common::{Env, Service};
use image_cache::config::{Config, DomainConfig, OnMiss, Span};
use image_cache::store::{FilePath, Key};
use serde_json::{Value, json};
use std::time::Duration;

pub(crate) const KEY: &str = "view-secret";

pub(crate) fn images(origin: &str) -> Value {
    json!([
        {"id": "debian-13.0.20260101", "url": format!("{origin}/img/300000/1/img.tar.lz4"),
         "expirationDate": "2099-01-01T00:00:00Z"},
        {"id": "debian-13.0.20260201", "url": format!("{origin}/img/200000/2/img.tar.lz4")},
        {"id": "ubuntu-24.04.20260101", "url": format!("{origin}/badimg/100000/3/img.tar.lz4")},
        {"id": "almalinux-10.0.1", "url": format!("{origin}/nomd5/1000/6/img.tar.lz4")},
        {"id": "debian-13.0.20250101", "url": format!("{origin}/img/1000/7/img.tar.lz4"),
         "expirationDate": "2020-01-01T00:00:00Z"},
        {"id": "debian-13.0.20260301", "url": format!("{origin}/pull_requests/img/1000/8/img.tar.lz4")},
    ])
}

pub(crate) fn partitions(origin: &str) -> Value {
    json!([
        {"id": "p1", "bootconfig": {
            "kernelurl": format!("{origin}/img/50000/4/metal-kernel"),
            "imageurl": format!("{origin}/img/60000/5/metal-hammer-initrd.img.lz4"),
            "commandline": "console=ttyS0"}},
        {"id": "p2"}
    ])
}

fn config(env: &Env, api: &MetalApi, key: &str) -> Config {
    let mut c = env.config(OnMiss::Fill);
    configure(env, api, key, &mut c);
    c
}

/// The sync's settings against `api`, and the intercepted domain `localhost` its images live on.
pub(crate) fn configure(env: &Env, api: &MetalApi, key: &str, c: &mut Config) {
    let mut d = DomainConfig::named("localhost");
    d.origin = Some(env.origin.url());
    c.domains.push(d);
    let key_file = env.dir.path().join(format!("hmac-{key}"));
    std::fs::write(&key_file, format!("  {key}\n")).unwrap();
    c.sync.url = api.url();
    c.sync.hmac_file = Some(key_file);
    c.sync.concurrency = 2;
    c.sync.min_images_per_name = 1;
}

fn key(url_path: &str) -> Key {
    Key::file("localhost", &FilePath::from_request(url_path).unwrap()).unwrap()
}

async fn sync(svc: &Service, dry_run: bool) -> (u16, Value) {
    let r = svc
        .client
        .post(format!(
            "{}/admin/sync?wait=true&dry_run={dry_run}",
            svc.base
        ))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

fn outcome<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no outcome for {name}: {report:#}"))
}

#[tokio::test]
async fn a_run_stores_pins_and_serves_the_plan_and_a_second_run_downloads_nothing() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = MetalApi::start(KEY, images(&origin), partitions(&origin)).await;
    let svc = env.start(config(&env, &api, KEY)).await;

    let (status, report) = sync(&svc, false).await;
    assert_eq!(status, 200, "{report:#}");
    // Planned: both debian images, the kernel, the boot image; the bad-md5 ubuntu fails.
    assert_eq!(outcome(&report, "debian-13.0.20260101")["ok"], true);
    assert_eq!(outcome(&report, "debian-13.0.20260201")["ok"], true);
    let bad = outcome(&report, "ubuntu-24.04.20260101");
    assert_eq!(bad["ok"], false);
    assert!(bad["message"].as_str().unwrap().contains("md5"), "{bad}");
    let skipped = report["skipped"].as_array().unwrap();
    let why = |id: &str| {
        skipped
            .iter()
            .find(|s| s["name"] == id)
            .map(|s| s["reason"].as_str().unwrap().to_string())
    };
    assert_eq!(why("debian-13.0.20250101").as_deref(), Some("expired"));
    assert_eq!(why("debian-13.0.20260301").as_deref(), Some("excluded"));
    assert!(why("almalinux-10.0.1").unwrap().contains(".md5"));
    let kinds: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "kernel").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "boot-image").count(), 1);

    // Stored, pinned, sidecars too; the bad one is not stored at all.
    let store = svc.store();
    for path in [
        "/img/300000/1/img.tar.lz4",
        "/img/300000/1/img.tar.lz4.md5",
        "/img/200000/2/img.tar.lz4",
        "/img/50000/4/metal-kernel",
        "/img/60000/5/metal-hammer-initrd.img.lz4",
        "/img/60000/5/metal-hammer-initrd.img.lz4.md5",
    ] {
        let row = store
            .get(&key(path))
            .unwrap()
            .unwrap_or_else(|| panic!("{path} not stored"));
        assert!(row.pinned, "{path} pinned");
    }
    assert!(
        store
            .get(&key("/badimg/100000/3/img.tar.lz4"))
            .unwrap()
            .is_none()
    );

    // Servable at once as hits: the image and its sidecar, byte for byte.
    let before = svc
        .metric("image_cache_requests_total{kind=\"file\",result=\"hit\"}")
        .await;
    let body = svc
        .client
        .get(format!("{}/img/300000/1/img.tar.lz4", svc.base))
        .header("host", "localhost")
        .fetch()
        .await;
    assert_eq!(body.as_ref(), content(1, 300_000).as_slice());
    let sidecar = svc
        .client
        .get(format!("{}/img/300000/1/img.tar.lz4.md5", svc.base))
        .header("host", "localhost")
        .fetch_text()
        .await;
    assert!(sidecar.ends_with("  img.tar.lz4\n"), "{sidecar:?}");
    let after = svc
        .metric("image_cache_requests_total{kind=\"file\",result=\"hit\"}")
        .await;
    assert_eq!(after - before, 2.0);
    let gets = env.origin.gets("/img/300000/1/img.tar.lz4");
    assert_eq!(gets, 1);

    // Second run: everything kept, no content downloaded again.
    let (status, report2) = sync(&svc, false).await;
    assert_eq!(status, 200);
    assert_eq!(env.origin.gets("/img/300000/1/img.tar.lz4"), 1);
    assert_eq!(env.origin.gets("/img/200000/2/img.tar.lz4"), 1);
    assert_eq!(env.origin.gets("/img/50000/4/metal-kernel"), 1);
    let actions: Vec<&str> = report2["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] != "ubuntu-24.04.20260101")
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert!(actions.iter().all(|a| *a == "keep"), "{actions:?}");
    assert!(
        svc.metric("image_cache_sync_runs_total{result=\"partial\"}")
            .await
            >= 2.0
    );
    assert_eq!(
        svc.metric("image_cache_sync_images{state=\"cached\"}")
            .await,
        2.0
    );

    // An image dropped from metal-api is unpinned (eviction may free it now), not deleted.
    let mut fewer = images(&origin);
    fewer.as_array_mut().unwrap().remove(1);
    api.set_images(fewer);
    let (_, report3) = sync(&svc, false).await;
    assert!(report3["unpinned"].as_u64().unwrap() >= 2, "{report3:#}");
    let row = store
        .get(&key("/img/200000/2/img.tar.lz4"))
        .unwrap()
        .unwrap();
    assert!(!row.pinned);
    assert!(
        store
            .get(&key("/img/300000/1/img.tar.lz4"))
            .unwrap()
            .unwrap()
            .pinned
    );

    // GET /admin/sync shows the last report.
    let bytes = svc.admin("/admin/sync").fetch().await;
    let status: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status["running"], false);
    assert!(status["last"]["items"].is_array());
    // The status page shows the last plan and each item's outcome.
    let page = svc.admin("/").fetch_text().await;
    assert!(page.contains("metal-api sync"), "{page}");
    assert!(
        page.contains("debian-13.0.20260101") && page.contains("expected md5"),
        "{page}"
    );
    svc.stop().await;
}

#[tokio::test]
async fn wrong_key_dead_api_and_dry_run_change_nothing() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = MetalApi::start(KEY, images(&origin), partitions(&origin)).await;

    // Wrong key: metal-api answers 401, the run fails with a message naming the key, nothing stored.
    let svc = env.start(config(&env, &api, "not-the-key")).await;
    let (status, body) = sync(&svc, false).await;
    assert_eq!(status, 502);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("HMAC key rejected"),
        "{body}"
    );
    assert!(api.rejected() >= 1);
    assert_eq!(svc.store().object_count(), 0);
    svc.stop().await;

    // Dry run with the right key: a plan with downloads, nothing fetched or stored.
    let mut c = config(&env, &api, KEY);
    c.state_dir = env.dir.path().join("state-2");
    let svc = env.start(c).await;
    let (status, report) = sync(&svc, true).await;
    assert_eq!(status, 200);
    assert_eq!(report["dry_run"], true);
    assert!(report["items"].as_array().unwrap().len() >= 4);
    assert_eq!(env.origin.gets("/img/300000/1/img.tar.lz4"), 0);
    assert_eq!(svc.store().object_count(), 0);

    // A real run, then metal-api goes down: the next run fails and keeps every object and pin.
    let (status, _) = sync(&svc, false).await;
    assert_eq!(status, 200);
    let objects = svc.store().object_count();
    assert!(objects >= 6);
    api.go_down();
    let (status, body) = sync(&svc, false).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(svc.store().object_count(), objects);
    assert!(
        svc.store()
            .get(&key("/img/300000/1/img.tar.lz4"))
            .unwrap()
            .unwrap()
            .pinned
    );
    assert!(
        svc.metric("image_cache_sync_runs_total{result=\"failure\"}")
            .await
            >= 1.0
    );
    svc.stop().await;
}

#[tokio::test]
async fn runs_never_overlap() {
    let env = Env::new().await;
    let origin = env.origin.url();
    // One slow image keeps the first run busy.
    let api = MetalApi::start(
        KEY,
        json!([{"id": "debian-13.0.1", "url": format!("{origin}/img/3000000/9/img.tar.lz4")}]),
        json!([]),
    )
    .await;
    let mut c = config(&env, &api, KEY);
    c.upstream.read_timeout = Span(Duration::from_secs(5));
    let svc = env.start(c).await;
    let first = sync(&svc, false);
    let second = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        svc.client
            .post(format!("{}/admin/sync", svc.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let ((s1, _), s2) = tokio::join!(first, second);
    assert_eq!(s1, 200);
    assert_eq!(s2, 409, "a second run while one is going is refused");
    svc.stop().await;
}

#[tokio::test]
async fn v2_lists_with_a_bearer_token_and_refreshes_it_before_it_ages_out() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = MetalApi::start(KEY, images(&origin), partitions(&origin)).await;
    let now = image_cache::clock::Clock::system().now_secs();
    // 1000 s old, 100 s left of 1100: past three quarters, so the first call refreshes it.
    let old = common::metal_api::jwt(now - 1000, now + 100);
    api.issue(&old);
    let token_file = env.dir.path().join("metal-token");
    std::fs::write(&token_file, format!("{old}\n")).unwrap();
    let mut c = config(&env, &api, KEY);
    c.sync.api = image_cache::config::MetalApiVersion::V2;
    c.sync.hmac_file = None;
    c.sync.token_file = Some(token_file.clone());
    let svc = env.start(c).await;

    let (status, report) = sync(&svc, false).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(outcome(&report, "debian-13.0.20260101")["ok"], true);
    assert_eq!(api.refreshes(), 1);
    let written = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(written.trim(), old, "the refreshed token is written back");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        svc.store()
            .get(&key("/img/60000/5/metal-hammer-initrd.img.lz4"))
            .unwrap()
            .is_some()
    );

    // The fresh token has its whole lifetime ahead: no second refresh.
    let (status, _) = sync(&svc, false).await;
    assert_eq!(status, 200);
    assert_eq!(api.refreshes(), 1);
    svc.stop().await;

    // A token the server does not know: a clear message, nothing changed.
    std::fs::write(&token_file, common::metal_api::jwt(now, now + 100_000)).unwrap();
    let mut c = config(&env, &api, KEY);
    c.state_dir = env.dir.path().join("state-v2b");
    c.sync.api = image_cache::config::MetalApiVersion::V2;
    c.sync.token_file = Some(token_file);
    let svc = env.start(c).await;
    let (status, body) = sync(&svc, false).await;
    assert_eq!(status, 502);
    assert!(
        body["error"].as_str().unwrap().contains("token rejected"),
        "{body}"
    );
    assert_eq!(svc.store().object_count(), 0);
    svc.stop().await;
}

#[tokio::test]
async fn scheduled_v2_sync_runs_at_start_and_pings_metal_apiserver() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = MetalApi::start(KEY, images(&origin), partitions(&origin)).await;
    let now = image_cache::clock::Clock::system().now_secs();
    let token = common::metal_api::jwt(now, now + 144 * 3600);
    api.issue(&token);
    let token_file = env.dir.path().join("metal-token");
    std::fs::write(&token_file, &token).unwrap();
    let mut c = config(&env, &api, KEY);
    c.sync.enabled = true;
    c.sync.jitter = Span(Duration::from_millis(500));
    c.sync.api = image_cache::config::MetalApiVersion::V2;
    c.sync.token_file = Some(token_file);
    let svc = env.start(c).await;
    // The first run starts with the service; its files appear without anyone asking.
    let wanted = key("/img/300000/1/img.tar.lz4");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while svc.store().get(&wanted).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the start-up sync did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while api.pings().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no ping");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pings = api.pings();
    assert_eq!(pings[0]["type"], "COMPONENT_TYPE_METAL_IMAGE_CACHE_SYNC");
    assert!(!pings[0]["identifier"].as_str().unwrap().is_empty());
    assert_eq!(pings[0]["interval"], "300s");
    svc.stop().await;
}

/// A store mostly held by the previous run's pins: the new images the plan downloads are pinned from
/// their commit, so eviction cannot take them; the old ones are unpinned only once the run is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_downloads_survive_a_store_full_of_the_previous_runs_pins() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let list = |a: u64, b: u64| {
        json!([
            {"id": "debian-13.0.20260101", "url": format!("{origin}/img/300000/{a}/img.tar.lz4")},
            {"id": "debian-13.0.20260201", "url": format!("{origin}/img/200000/{b}/img.tar.lz4")},
        ])
    };
    let api = MetalApi::start(KEY, list(31, 32), json!([])).await;
    let mut c = config(&env, &api, KEY);
    c.cache.max_size = image_cache::config::ByteSize(700_000);
    let svc = env.start(c).await;
    let (status, _) = sync(&svc, false).await;
    assert_eq!(status, 200);
    // New builds of both images: the store cannot hold old and new at once.
    api.set_images(list(33, 34));
    let (status, report) = sync(&svc, false).await;
    assert_eq!(status, 200, "{report:#}");
    for id in ["debian-13.0.20260101", "debian-13.0.20260201"] {
        assert_eq!(outcome(&report, id)["ok"], true, "{report:#}");
    }
    // Give eviction every chance to run, then everything the last plan keeps must be there.
    let s = svc.store().clone();
    tokio::task::spawn_blocking(move || s.gc())
        .await
        .unwrap()
        .unwrap();
    for path in [
        "/img/300000/33/img.tar.lz4",
        "/img/300000/33/img.tar.lz4.md5",
        "/img/200000/34/img.tar.lz4",
    ] {
        let row = svc.store().get(&key(path)).unwrap();
        assert!(
            row.is_some_and(|r| r.pinned),
            "{path} was evicted or is not pinned"
        );
    }
    // The previous run's images are unpinned now, so gc could free them.
    assert!(
        svc.store()
            .get(&key("/img/300000/31/img.tar.lz4"))
            .unwrap()
            .is_none_or(|r| !r.pinned)
    );
    svc.stop().await;
}

/// metal-api lists the URLs machines use (`http://<intercepted domain>/…`): the sync downloads them from
/// the domain's HTTPS origin, under the key a client's miss uses; a cleartext URL on a host that is not
/// intercepted is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_http_urls_are_fetched_from_the_https_origin_and_cleartext_elsewhere_is_refused() {
    let env = Env::new().await;
    let images = json!([
        {"id": "debian-13.0.20260101", "url": "http://localhost/img/300000/1/img.tar.lz4"},
        {"id": "ubuntu-24.04.20260101", "url": "http://elsewhere.test/img/1000/2/img.tar.lz4"},
    ]);
    let api = MetalApi::start(KEY, images, json!([])).await;
    let svc = env.start(config(&env, &api, KEY)).await;
    let (status, report) = sync(&svc, false).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(
        outcome(&report, "debian-13.0.20260101")["ok"],
        true,
        "{report:#}"
    );
    assert_eq!(
        env.origin.gets("/img/300000/1/img.tar.lz4"),
        1,
        "fetched from the HTTPS origin"
    );
    assert!(
        svc.store()
            .get(&key("/img/300000/1/img.tar.lz4"))
            .unwrap()
            .is_some()
    );
    let refused = outcome(&report, "ubuntu-24.04.20260101");
    assert_eq!(refused["ok"], false);
    assert!(
        refused["message"].as_str().unwrap().contains("cleartext"),
        "{refused}"
    );
    svc.stop().await;
}

/// An origin that cannot be reached at all is an outage: the run fails (and says why), it is not an
/// empty plan that "succeeded", and nothing stored or pinned changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_fails_the_run() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = MetalApi::start(KEY, images(&origin), partitions(&origin)).await;
    let svc = env.start(config(&env, &api, KEY)).await;
    let (status, _) = sync(&svc, false).await;
    assert_eq!(status, 200);
    let before = svc.store().object_count();
    env.origin.stop();
    let (status, answer) = sync(&svc, false).await;
    assert_eq!(status, 502, "{answer:#}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{answer:#}"
    );
    assert_eq!(
        svc.metric("image_cache_sync_runs_total{result=\"failure\"}")
            .await,
        1.0
    );
    assert_eq!(svc.store().object_count(), before);
    assert!(
        svc.store()
            .get(&key("/img/300000/1/img.tar.lz4"))
            .unwrap()
            .unwrap()
            .pinned
    );
    let page = svc.text("/").await;
    assert!(
        page.contains("could not be reached"),
        "the status page says why"
    );
    svc.stop().await;
}

/// A file the plan downloads, filled by a client while the run is busy with another item, is not
/// downloaded a second time: the run finds it stored, checks it and pins it.
#[tokio::test]
async fn a_file_a_client_filled_during_the_run_is_kept_not_downloaded_again() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let slow = "/slowimg/300000/1/1500/img.tar.lz4";
    let kernel = "/img/50000/4/metal-kernel";
    let api = MetalApi::start(
        KEY,
        json!([{"id": "debian-13.0.20260101", "url": format!("{origin}{slow}")}]),
        partitions(&origin),
    )
    .await;
    let mut c = config(&env, &api, KEY);
    c.sync.concurrency = 1; // the plan's order: the image, then the kernel and the boot image
    let svc = env.start(c).await;
    let run = sync(&svc, false);
    let client = async {
        // The run is inside the slow image's download: the kernel is planned, not yet fetched.
        while env.origin.gets(slow) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let body = svc
            .client
            .get(format!("{}{kernel}", svc.base))
            .header("host", "localhost")
            .fetch()
            .await;
        assert_eq!(body.as_ref(), content(4, 50_000).as_slice());
        assert!(env.origin.gets(slow) == 1 && env.origin.gets(kernel) == 1);
    };
    let ((status, report), ()) = tokio::join!(run, client);
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(
        env.origin.gets(kernel),
        1,
        "the kernel was downloaded again"
    );
    let row = svc
        .store()
        .get(&key(kernel))
        .unwrap()
        .expect("kernel stored");
    assert!(row.pinned, "the run keeps what a client filled");
    let kept = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["url"].as_str().is_some_and(|u| u.ends_with(kernel)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(kept["ok"], true, "{report:#}");
    svc.stop().await;
}
