//! Upstream trouble never throws away what the partition holds: a stored tag or file survives every
//! failure of its revalidation (unreachable, 5xx, 429, 401, 403, and 404/410 through the grace); a
//! deletion upstream is followed only after `deleted_grace`, never for a pinned key; a rejected account
//! is shown with the registry's words; a registry's announced pull budget is spent on live pulls first.

use crate::common;

use common::oci::{self, FakeRegistry, Fault, RESOLVE_ACCEPT};
use common::{Env, Service};
use image_cache::config::{Config, OnMiss, Span};
use image_cache::store::Key;
use std::sync::atomic::Ordering;
use std::time::Duration;

const NS: &str = "ns=fake.test%3A5000";
const REGISTRY: &str = "fake.test:5000";

fn config(env: &Env, reg: &FakeRegistry) -> Config {
    let mut c = env.config(OnMiss::Fill);
    c.registry.upstreams = [(REGISTRY.to_string(), reg.url.clone())]
        .into_iter()
        .collect();
    c.registry.tag_ttl = Span(Duration::from_secs(1));
    c
}

fn layers(seed: u64) -> Vec<Vec<u8>> {
    vec![common::origin::content(seed, 2000)]
}

/// containerd's resolve (`HEAD` of the tag): the status and the digest the answer names.
async fn resolve(svc: &Service, repo: &str, tag: &str) -> (u16, String) {
    let r = ask_tag(svc, reqwest::Method::HEAD, repo, tag).await;
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), digest)
}

/// `GET` of the tag: the status and the digest of the body.
async fn fetch_tag(svc: &Service, repo: &str, tag: &str) -> (u16, String) {
    let r = ask_tag(svc, reqwest::Method::GET, repo, tag).await;
    let status = r.status().as_u16();
    (status, oci::digest(&r.bytes().await.unwrap()))
}

async fn ask_tag(
    svc: &Service,
    method: reqwest::Method,
    repo: &str,
    tag: &str,
) -> reqwest::Response {
    svc.client
        .request(
            method,
            format!("{}/v2/{repo}/manifests/{tag}?{NS}", svc.base),
        )
        .header("accept", RESOLVE_ACCEPT)
        .send()
        .await
        .unwrap()
}

async fn status_json(svc: &Service) -> serde_json::Value {
    serde_json::from_str(&svc.text("/admin/status").await).unwrap()
}

/// The `/admin/objects` entry of `key`.
async fn object(svc: &Service, key: &str) -> Option<serde_json::Value> {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("prefix", key)
        .finish();
    let v: serde_json::Value =
        serde_json::from_str(&svc.text(&format!("/admin/objects?{q}")).await).unwrap();
    v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == key)
        .cloned()
}

/// An operator's prefetch of `image`, waited for: its report.
async fn prefetch(svc: &Service, image: &str) -> serde_json::Value {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("wait", "true")
        .append_pair("image", image)
        .finish();
    let r = svc
        .client
        .post(format!("{}/admin/registry/prefetch?{q}", svc.base))
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn tag_key(repo: &str, tag: &str) -> String {
    format!("oci:{REGISTRY}/{repo}:{tag}")
}

#[tokio::test]
async fn a_pulled_tag_survives_every_refusal_of_its_revalidation() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(40));
    let svc = env.start(config(&env, &reg)).await;
    let clock = svc.store().clock().clone();
    assert_eq!(resolve(&svc, "app", "1").await, (200, img.index.clone()));
    let key = tag_key("app", "1");

    let cases: [(u16, Option<&'static str>); 8] = [
        (401, None),
        (403, None),
        (404, None),
        (410, None),
        (429, Some("1")),
        (500, None),
        (503, Some("1")),
        (503, None),
    ];
    for (i, (code, retry)) in cases.into_iter().enumerate() {
        reg.fault("/v2/app/manifests/1", Fault::Status(code, retry));
        // Past tag_ttl and past any back-off the previous answer asked for.
        clock.advance(Duration::from_secs(5));
        let asked = reg.count("HEAD /v2/app/manifests/1");
        assert_eq!(
            resolve(&svc, "app", "1").await,
            (200, img.index.clone()),
            "a {code} revalidation serves the stored tag"
        );
        assert_eq!(
            reg.count("HEAD /v2/app/manifests/1"),
            asked + 1,
            "the {code} was the registry's answer to a revalidation"
        );
        assert_eq!(
            fetch_tag(&svc, "app", "1").await,
            (200, img.index.clone()),
            "after a {code}, the body is the stored index"
        );
        assert_eq!(
            reg.count("HEAD /v2/app/manifests/1"),
            asked + 1,
            "right after a failed revalidation, the next request does not ask again"
        );
        assert!(
            svc.store()
                .get(&Key::parse(&key).unwrap())
                .unwrap()
                .is_some(),
            "still stored after a {code}"
        );
        assert!(
            svc.metric(&format!("image_cache_registry_requests_total{{registry=\"{REGISTRY}\",kind=\"manifest\",result=\"stale\"}}")).await
                >= (2 * (i + 1)) as f64
        );
        if code == 401 {
            let s = status_json(&svc).await;
            let r = &s["registries"][0];
            assert_eq!(r["registry"], REGISTRY, "{s}");
            assert_eq!(r["credentials_rejected"], true, "{s}");
            assert_eq!(r["last_rejection"]["status"], 401);
            assert!(
                r["last_rejection"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("answered 401"),
                "{r}"
            );
        }
        if code == 404 {
            let o = object(&svc, &key).await.unwrap();
            assert!(o["upstream_deleted_at"].as_u64().unwrap() > 0, "{o}");
        }
    }
    assert_eq!(
        svc.metric(&format!(
            "image_cache_upstream_auth_failures_total{{registry=\"{REGISTRY}\"}}"
        ))
        .await,
        2.0,
        "the 401 and the 403"
    );
    // The registry has it again: the deletion mark goes, the rejection is over.
    reg.clear_faults();
    clock.advance(Duration::from_secs(5));
    assert_eq!(resolve(&svc, "app", "1").await, (200, img.index.clone()));
    let o = object(&svc, &key).await.unwrap();
    assert!(o.get("upstream_deleted_at").is_none(), "{o}");
    let s = status_json(&svc).await;
    assert_eq!(s["registries"][0]["credentials_rejected"], false, "{s}");
    svc.stop().await;
}

#[tokio::test]
async fn after_the_grace_a_deleted_tag_goes_and_a_pinned_one_stays() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let gone = reg.push_image("app", "gone", &layers(41));
    let kept = reg.push_image("app", "kept", &layers(42));
    let mut c = config(&env, &reg);
    c.registry.deleted_grace = Span(Duration::from_secs(3600));
    let svc = env.start(c).await;
    let clock = svc.store().clock().clone();
    assert_eq!(resolve(&svc, "app", "gone").await.1, gone.index);
    assert_eq!(resolve(&svc, "app", "kept").await.1, kept.index);
    let pin = svc
        .client
        .post(format!(
            "{}/admin/objects/pin?key={}",
            svc.base,
            url::form_urlencoded::byte_serialize(tag_key("app", "kept").as_bytes())
                .collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(pin.status(), 200);
    reg.fault("/v2/app/manifests/gone", Fault::Status(404, None));
    reg.fault("/v2/app/manifests/kept", Fault::Status(410, None));

    // Within the grace, both are served; the grace counts from the first 404.
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        resolve(&svc, "app", "gone").await,
        (200, gone.index.clone())
    );
    assert_eq!(
        resolve(&svc, "app", "kept").await,
        (200, kept.index.clone())
    );
    let page = svc.text("/").await;
    assert!(
        page.contains("id=\"upstream-deleted\""),
        "the status page lists them"
    );
    assert!(page.contains(&tag_key("app", "gone")) && page.contains("yes, kept"));
    clock.advance(Duration::from_secs(3590));
    assert_eq!(
        resolve(&svc, "app", "gone").await,
        (200, gone.index.clone())
    );
    assert_eq!(
        resolve(&svc, "app", "kept").await,
        (200, kept.index.clone())
    );
    // Past it: the unpinned tag follows the registry, the pinned one stays.
    clock.advance(Duration::from_secs(20));
    assert_eq!(resolve(&svc, "app", "gone").await.0, 404);
    assert!(object(&svc, &tag_key("app", "gone")).await.is_none());
    assert_eq!(
        resolve(&svc, "app", "kept").await,
        (200, kept.index.clone())
    );
    let o = object(&svc, &tag_key("app", "kept")).await.unwrap();
    assert_eq!(o["pinned_by"], "operator");
    assert!(o["upstream_deleted_at"].as_u64().is_some(), "{o}");
    // The manifests by digest (immutable) are untouched.
    let r = svc
        .client
        .get(format!("{}/v2/app/manifests/{}?{NS}", svc.base, gone.index))
        .header("accept", oci::INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    svc.stop().await;
}

#[tokio::test]
async fn a_zero_grace_follows_the_registry_at_once() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(43));
    let mut c = config(&env, &reg);
    c.registry.deleted_grace = Span(Duration::ZERO);
    let svc = env.start(c).await;
    assert_eq!(resolve(&svc, "app", "1").await.1, img.index);
    reg.fault("/v2/app/manifests/1", Fault::Status(404, None));
    svc.store().clock().advance(Duration::from_secs(2));
    assert_eq!(resolve(&svc, "app", "1").await.0, 404);
    assert!(object(&svc, &tag_key("app", "1")).await.is_none());
    svc.stop().await;
}

#[tokio::test]
async fn an_expired_account_is_shown_with_the_token_endpoints_words_and_stored_tags_still_serve() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("private/app", "1", &layers(44));
    let creds = reg.credentials_file(env.dir.path(), reg.url.trim_start_matches("http://"));
    let mut c = config(&env, &reg);
    c.registry.credentials_file = Some(creds);
    let svc = env.start(c).await;
    assert_eq!(
        resolve(&svc, "private/app", "1").await,
        (200, img.index.clone())
    );

    reg.state.account_revoked.store(true, Ordering::SeqCst);
    svc.store().clock().advance(Duration::from_secs(2));
    assert_eq!(
        resolve(&svc, "private/app", "1").await,
        (200, img.index.clone()),
        "served from the store while the account is refused"
    );
    let s = status_json(&svc).await;
    let r = &s["registries"][0];
    assert_eq!(r["credentials_rejected"], true, "{s}");
    let message = r["last_rejection"]["message"].as_str().unwrap();
    assert!(
        message.contains("incorrect username or password")
            && message.contains("registry.credentials_file"),
        "{message}"
    );
    let page = svc.text("/").await;
    assert!(page.contains("id=\"registries\""));
    assert!(page.contains("REJECTED"), "the status page says so");
    assert!(page.contains("incorrect username or password"));
    svc.stop().await;
}

#[tokio::test]
async fn below_the_reserve_only_live_pulls_of_new_content_spend_the_budget() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let held = reg.push_image("team/held", "1", &layers(45));
    reg.push_image("team/later", "1", &layers(46));
    let new = reg.push_image("team/new", "1", &layers(47));
    *reg.state.ratelimit.lock().unwrap() = Some((100, 50));
    let mut c = config(&env, &reg);
    c.registry.prefetch_platforms = vec!["linux/amd64".into()];
    let svc = env.start(c).await;
    let clock = svc.store().clock().clone();
    assert_eq!(resolve(&svc, "team/held", "1").await.1, held.index);
    let gauge =
        |name: &str| format!("image_cache_registry_ratelimit_{name}{{registry=\"{REGISTRY}\"}}");
    assert_eq!(svc.metric(&gauge("remaining")).await, 50.0);
    assert_eq!(svc.metric(&gauge("limit")).await, 100.0);

    // The registry's next answer says 10 of 100 are left: under the 20% reserve.
    *reg.state.ratelimit.lock().unwrap() = Some((100, 10));
    clock.advance(Duration::from_secs(2));
    assert_eq!(resolve(&svc, "team/held", "1").await.1, held.index);
    assert_eq!(svc.metric(&gauge("remaining")).await, 10.0);
    let s = status_json(&svc).await;
    assert_eq!(s["registries"][0]["budget"]["low"], true, "{s}");
    assert_eq!(s["registries"][0]["budget"]["reserve"], 20, "{s}");

    // A revalidation waits: the stored tag is served without asking.
    let asked = reg.state.log.lock().unwrap().len();
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        resolve(&svc, "team/held", "1").await,
        (200, held.index.clone())
    );
    assert_eq!(
        reg.state.log.lock().unwrap().len(),
        asked,
        "no request spent"
    );

    // A prefetch run defers and says why, sending nothing.
    let report = prefetch(&svc, &format!("{REGISTRY}/team/later:1")).await;
    let image = &report["images"][0];
    assert_eq!(image["deferred"], true, "{report}");
    assert_eq!(image["ok"], false);
    assert!(
        image["message"]
            .as_str()
            .unwrap()
            .contains("registry.ratelimit_reserve"),
        "{report}"
    );
    assert_eq!(report["deferred"], 1);
    assert_eq!(report["failed"], 0);
    assert_eq!(
        reg.state.log.lock().unwrap().len(),
        asked,
        "no manifest or blob request"
    );
    assert!(svc.text("/").await.contains("1 deferred"));

    // A machine pulling an image the cache does not hold still gets it.
    assert_eq!(
        resolve(&svc, "team/new", "1").await,
        (200, new.index.clone())
    );
    let blob = svc
        .client
        .get(format!(
            "{}/v2/team/new/blobs/{}?{NS}",
            svc.base, new.layers[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(oci::digest(&blob.bytes().await.unwrap()), new.layers[0]);
    assert!(reg.state.log.lock().unwrap().len() > asked);

    // Once the reading is old, a revalidation asks again (a HEAD), and a recovered budget lets the
    // prefetch through.
    *reg.state.ratelimit.lock().unwrap() = Some((100, 90));
    clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(resolve(&svc, "team/held", "1").await.1, held.index);
    assert_eq!(svc.metric(&gauge("remaining")).await, 90.0);
    let report = prefetch(&svc, &format!("{REGISTRY}/team/later:1")).await;
    assert_eq!(report["images"][0]["ok"], true, "{report}");
    svc.stop().await;
}

/// The file side: a stored file survives every refusal of its revalidation; 404/410 only until the
/// domain's `deleted_grace`, and never for a pinned file.
#[tokio::test]
async fn a_stored_file_survives_every_refusal_and_follows_a_deletion_after_its_grace() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    c.domains[0].revalidate_after = Span(Duration::from_secs(1));
    c.domains[0].deleted_grace = Span(Duration::from_secs(3600));
    let svc = env.start(c).await;
    let clock = svc.store().clock().clone();
    let get = |path: &'static str| {
        let svc = &svc;
        async move {
            let r = svc.get(path).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            svc.settle().await;
            (status, body)
        }
    };
    assert_eq!(get("/mutable/a").await, (200, "version 1\n".into()));
    assert_eq!(get("/mutable/b").await, (200, "version 1\n".into()));
    let pin = svc
        .client
        .post(format!(
            "{}/admin/objects/pin?key=file%3Afiles.test%2Fmutable%2Fb",
            svc.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(pin.status(), 200);
    for code in [401, 403, 429, 500, 502, 503, 404, 410] {
        env.origin
            .state
            .statuses
            .lock()
            .unwrap()
            .insert("/mutable/a".into(), code);
        clock.advance(Duration::from_secs(2));
        let asked = env.origin.gets("/mutable/a");
        assert_eq!(
            get("/mutable/a").await,
            (200, "version 1\n".into()),
            "a {code} keeps the file"
        );
        assert_eq!(env.origin.gets("/mutable/a"), asked + 1, "{code}: asked");
    }
    let o = object(&svc, "file:files.test/mutable/a").await.unwrap();
    assert!(o["upstream_deleted_at"].as_u64().is_some(), "{o}");
    env.origin
        .state
        .statuses
        .lock()
        .unwrap()
        .insert("/mutable/b".into(), 404);
    clock.advance(Duration::from_secs(2));
    assert_eq!(get("/mutable/b").await.0, 200);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        get("/mutable/a").await.0,
        410,
        "past the grace: gone, as the origin says"
    );
    assert!(object(&svc, "file:files.test/mutable/a").await.is_none());
    assert_eq!(
        get("/mutable/b").await,
        (200, "version 1\n".into()),
        "pinned: kept"
    );
    assert!(
        svc.metric("image_cache_requests_total{kind=\"file\",result=\"stale\"}")
            .await
            >= 9.0
    );
    svc.stop().await;
}
