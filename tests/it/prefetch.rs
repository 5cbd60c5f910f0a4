//! Container image prefetch: `registry.prefetch` pulled at start-up and on demand through the node's
//! own registry front, pinned while listed, filtered by platform; the admin API and the CLI drive it.

use crate::common;

use common::oci::{self, FakeRegistry, MANIFEST};
use common::{Env, Service};
use image_cache::config::{Config, OnMiss};
use std::time::Duration;

const APP: &str = "fake.test:5000/team/app:1";
const TOOL: &str = "fake.test:5000/other/tool:2";

fn config(env: &Env, reg: &FakeRegistry, prefetch: &[&str]) -> Config {
    let mut c = env.config(OnMiss::Fill);
    c.registry.upstreams = [("fake.test:5000".to_string(), reg.url.clone())]
        .into_iter()
        .collect();
    c.registry.prefetch = prefetch.iter().map(|s| s.to_string()).collect();
    c.registry.prefetch_platforms = vec!["linux/amd64".into()];
    c
}

fn layers(n: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| common::origin::content(seed * 100 + i as u64, size as u64))
        .collect()
}

/// `GET /admin/registry/prefetch`.
async fn status(svc: &Service) -> serde_json::Value {
    serde_json::from_str(&svc.text("/admin/registry/prefetch").await).unwrap()
}

/// Waits for run `n` to finish and returns its report.
async fn finished(svc: &Service, n: u64) -> serde_json::Value {
    for _ in 0..500 {
        let s = status(svc).await;
        if s["finished"].as_u64().unwrap_or(0) >= n {
            return s["last"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("prefetch run {n} did not finish: {}", status(svc).await);
}

/// `POST /admin/registry/prefetch?wait=true[&image=…]`: status and answer.
async fn run(svc: &Service, images: &[&str]) -> (u16, serde_json::Value) {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("wait", "true");
    for i in images {
        q.append_pair("image", i);
    }
    let r = svc
        .client
        .post(format!(
            "{}/admin/registry/prefetch?{}",
            svc.base,
            q.finish()
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

/// Every stored `oci:` key under `repo`, with whether it is pinned.
fn stored(svc: &Service, repo: &str) -> Vec<(String, bool)> {
    svc.store()
        .list(&format!("oci:fake.test:5000/{repo}"), None, 1000)
        .unwrap()
        .into_iter()
        .map(|(k, row)| (k, row.pinned))
        .collect()
}

fn blob_key(repo: &str, digest: &str) -> String {
    format!("oci:fake.test:5000/{repo}@blob:{digest}")
}

#[tokio::test]
async fn configured_images_are_stored_pinned_and_filtered_by_platform_and_a_second_run_fetches_nothing()
 {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("team/app", "1", &layers(3, 200_000, 7));
    let svc = env.start(config(&env, &reg, &[APP])).await;

    // The start-up run: the tag's index, the amd64 manifest, its config and layers; arm64 left out.
    let report = finished(&svc, 1).await;
    assert_eq!(report["configured"], true, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let image = &report["images"][0];
    assert_eq!(image["image"], APP);
    assert_eq!(image["manifests"], 2, "{report}");
    assert_eq!(image["blobs"], 4, "{report}");
    assert!(image["bytes"].as_u64().unwrap() >= 600_000, "{report}");
    assert_eq!(
        reg.count(&format!("GET /v2/team/app/manifests/{}", img.amd64)),
        1
    );
    assert_eq!(
        reg.count(&format!("GET /v2/team/app/manifests/{}", img.arm64)),
        0,
        "registry.prefetch_platforms leaves arm64 out"
    );
    for d in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(reg.cdn_gets(d), 1, "{d}");
    }
    // Stored and pinned: the tag, both manifests, the config and every layer.
    let keys = stored(&svc, "team/app");
    let pinned: Vec<&str> = keys
        .iter()
        .filter(|(_, p)| *p)
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        pinned.contains(&"oci:fake.test:5000/team/app:1"),
        "{keys:?}"
    );
    assert!(
        pinned.contains(&format!("oci:fake.test:5000/team/app@{}", img.amd64).as_str()),
        "{keys:?}"
    );
    for d in std::iter::once(&img.config).chain(&img.layers) {
        assert!(
            pinned.contains(&blob_key("team/app", d).as_str()),
            "{d}: {keys:?}"
        );
    }
    assert!(
        pinned.contains(&format!("oci:fake.test:5000/team/app@{}", img.index).as_str()),
        "the tag's index is pinned under its digest too: {keys:?}"
    );
    assert_eq!(pinned.len(), 7, "{keys:?}");
    let page = svc.text("/").await;
    assert!(
        page.contains(APP),
        "the status page names the prefetched image"
    );

    // A second run asks the registry for nothing (the tag is fresh for tag_ttl, the rest is stored).
    let before = reg.state.log.lock().unwrap().len();
    let before_cdn = reg.state.cdn_log.lock().unwrap().len();
    let (code, report) = run(&svc, &[]).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["images"][0]["blobs"], 4);
    assert_eq!(
        reg.state.log.lock().unwrap().len(),
        before,
        "no registry request"
    );
    assert_eq!(
        reg.state.cdn_log.lock().unwrap().len(),
        before_cdn,
        "no blob download"
    );

    // A runtime's pull afterwards is served from the store: nothing asked upstream either.
    for d in std::iter::once(&img.config).chain(&img.layers) {
        let r = svc
            .client
            .get(format!(
                "{}/v2/team/app/blobs/{d}?ns=fake.test%3A5000",
                svc.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(oci::digest(&r.bytes().await.unwrap()), *d);
    }
    assert_eq!(reg.state.cdn_log.lock().unwrap().len(), before_cdn);
    svc.stop().await;
}

#[tokio::test]
async fn pinned_while_listed_operator_images_stay_and_a_failed_run_unpins_nothing() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let app = reg.push_image("team/app", "1", &layers(2, 50_000, 11));
    let tool = reg.push_image("other/tool", "2", &layers(1, 50_000, 12));
    let svc = env.start(config(&env, &reg, &[APP])).await;
    assert_eq!(finished(&svc, 1).await["failed"], 0);

    // An operator names an image: pinned as `store pin` pins, kept whatever the list says.
    let (code, report) = run(&svc, &[TOOL]).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["configured"], false);
    assert_eq!(report["failed"], 0, "{report}");
    let tool_layer = blob_key("other/tool", &tool.layers[0]);
    let row = |svc: &Service, key: &str| {
        svc.store()
            .list(key, None, 1)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("{key} is not stored"))
    };
    assert!(row(&svc, &tool_layer).operator_pin);
    svc.stop().await;

    // The list now names the tool and an image the registry does not have: that run fails, so
    // nothing is unpinned (an outage must not cost the pins).
    let svc = env
        .start(config(&env, &reg, &[TOOL, "fake.test:5000/gone/x:1"]))
        .await;
    let report = finished(&svc, 1).await;
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["unpinned"], 0, "{report}");
    assert!(
        report["images"][1]["message"]
            .as_str()
            .unwrap()
            .contains("404"),
        "{report}"
    );
    let app_keys = stored(&svc, "team/app");
    assert!(app_keys.iter().all(|(_, p)| *p), "{app_keys:?}");
    svc.stop().await;

    // The list without team/app and every image there: team/app's pins go, the operator's stay.
    let svc = env.start(config(&env, &reg, &[TOOL])).await;
    let report = finished(&svc, 1).await;
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["unpinned"], 6, "{report}");
    let app_keys = stored(&svc, "team/app");
    assert_eq!(app_keys.len(), 6, "unpinned, still stored: {app_keys:?}");
    assert!(app_keys.iter().all(|(_, p)| !*p), "{app_keys:?}");
    assert!(row(&svc, &tool_layer).pinned);
    assert!(!row(&svc, &blob_key("team/app", &app.layers[0])).pinned);
    svc.stop().await;
}

#[tokio::test]
async fn bad_images_are_refused_and_one_run_at_a_time() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("team/app", "1", &layers(1, 10_000, 3));
    let svc = env.start(config(&env, &reg, &[])).await;
    // Nothing listed: no scheduler, no run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&svc).await["started"], 0);

    for (image, why) in [
        ("Not/Valid", "not a valid repository name"),
        ("ghcr.io/org/app:1", "not in registry.upstreams"),
        ("../x", "registry host"),
    ] {
        let (code, body) = run(&svc, &[image]).await;
        assert_eq!(code, 400, "{image}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(why),
            "{image}: {body}"
        );
    }
    // A digest reference to a single-platform manifest works too.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"digest":"{}","size":2}},"layers":[]}}"#,
        reg.put_blob("solo/one", b"{}".to_vec())
    );
    let d = reg.put_manifest("solo/one", None, MANIFEST, manifest.into_bytes());
    let (code, report) = run(&svc, &[&format!("fake.test:5000/solo/one@{d}")]).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["images"][0]["manifests"], 1, "{report}");
    assert_eq!(report["images"][0]["blobs"], 1, "{report}");

    // While a run waits on a slow registry, another is refused with 409.
    reg.fault(
        &format!("/v2/team/app/blobs/{}", img.layers[0]),
        oci::Fault::Slow(Duration::from_millis(1500)),
    );
    let slow = {
        let svc_base = svc.base.clone();
        let client = svc.client.clone();
        tokio::spawn(async move {
            client
                .post(format!(
                    "{svc_base}/admin/registry/prefetch?wait=true&image=fake.test%3A5000%2Fteam%2Fapp%3A1"
                ))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, body) = run(&svc, &[APP]).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(slow.await.unwrap(), 200);
    svc.stop().await;
}
