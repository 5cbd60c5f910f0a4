//! The pull-through mirror against an in-test registry (token endpoint, redirecting CDN, injected
//! faults), driven with containerd's request shapes (HEAD by tag, GET by digest, Accept lists, `ns`).

use crate::common;

use common::oci::{self, DOCKER_V2, FakeRegistry, Fault, INDEX, MANIFEST, RESOLVE_ACCEPT};
use common::{Env, Service, header};
use image_cache::config::{Config, OnMiss, Span};
use std::time::Duration;

const NS: &str = "ns=fake.test%3A5000";

fn config(env: &Env, reg: &FakeRegistry) -> Config {
    let mut c = env.config(OnMiss::Fill);
    c.registry.upstreams = [("fake.test:5000".to_string(), reg.url.clone())]
        .into_iter()
        .collect();
    c
}

fn layers(n: usize, size: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| common::origin::content(seed * 100 + i as u64, size as u64))
        .collect()
}

fn url(svc: &Service, repo: &str, kind: &str, reference: &str) -> String {
    format!("{}/v2/{repo}/{kind}/{reference}?{NS}", svc.base)
}

async fn get(
    svc: &Service,
    repo: &str,
    kind: &str,
    reference: &str,
    accept: &str,
) -> reqwest::Response {
    svc.client
        .get(url(svc, repo, kind, reference))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
}

async fn head(svc: &Service, repo: &str, kind: &str, reference: &str) -> reqwest::Response {
    svc.client
        .head(url(svc, repo, kind, reference))
        .header("accept", RESOLVE_ACCEPT)
        .send()
        .await
        .unwrap()
}

async fn code(r: reqwest::Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// containerd's pull of `fake.test:5000/<repo>:<tag>` for linux/amd64; returns the bytes it got.
async fn pull(svc: &Service, repo: &str, tag: &str, img: &oci::Image) -> Vec<Vec<u8>> {
    let h = head(svc, repo, "manifests", tag).await;
    assert_eq!(h.status(), 200);
    assert_eq!(header(&h, "docker-content-digest"), img.index);
    assert_eq!(header(&h, "content-type"), INDEX);
    assert!(header(&h, "content-length").parse::<u64>().unwrap() > 0);
    assert_eq!(header(&h, "oci-namespace"), "fake.test:5000");
    let mut got = Vec::new();
    for (d, accept) in [(&img.index, INDEX), (&img.amd64, MANIFEST)] {
        let r = get(svc, repo, "manifests", d, &format!("{accept}, */*")).await;
        assert_eq!(r.status(), 200, "{d}");
        assert_eq!(header(&r, "docker-content-digest"), *d);
        let body = r.bytes().await.unwrap().to_vec();
        assert_eq!(oci::digest(&body), *d);
        got.push(body);
    }
    for d in std::iter::once(&img.config).chain(&img.layers) {
        let r = get(svc, repo, "blobs", d, "*/*").await;
        assert_eq!(r.status(), 200, "{d}");
        let body = r.bytes().await.unwrap().to_vec();
        assert_eq!(oci::digest(&body), *d, "blob {d}");
        got.push(body);
    }
    got
}

#[tokio::test]
async fn cold_then_warm_pull_of_a_multi_arch_tag() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("team/app", "1", &layers(3, 300_000, 1));
    let svc = env.start(config(&env, &reg)).await;

    pull(&svc, "team/app", "1", &img).await;
    svc.settle().await;
    // One upstream GET per object; the index came with the tag and was never fetched by digest.
    assert_eq!(reg.count("GET /v2/team/app/manifests/1"), 1);
    assert_eq!(
        reg.count(&format!("GET /v2/team/app/manifests/{}", img.index)),
        0
    );
    assert_eq!(
        reg.count(&format!("GET /v2/team/app/manifests/{}", img.amd64)),
        1
    );
    assert_eq!(
        reg.count(&format!("GET /v2/team/app/manifests/{}", img.arm64)),
        0
    );
    for d in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(reg.cdn_gets(d), 1, "{d}");
    }
    // The tag was asked for with every manifest type; the registry's token never reached the CDN.
    assert!(reg.state.log.lock().unwrap().iter().any(|l| {
        l.starts_with("GET /v2/team/app/manifests/1 ") && l.contains(INDEX) && l.contains(DOCKER_V2)
    }));
    assert!(
        reg.state
            .cdn_log
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.ends_with("auth=false"))
    );
    let tokens = reg
        .state
        .tokens_issued
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(tokens, 1, "one token for the repository, reused");

    let before = reg.state.log.lock().unwrap().len();
    pull(&svc, "team/app", "1", &img).await;
    assert_eq!(
        reg.state.log.lock().unwrap().len(),
        before,
        "a warm pull within tag_ttl asks nothing"
    );
    assert!(svc.metric("image_cache_registry_requests_total{registry=\"fake.test:5000\",kind=\"blob\",result=\"hit\"}").await >= 4.0);
    assert!(
        svc.metric("image_cache_registry_bytes_served_total{registry=\"fake.test:5000\"}")
            .await
            >= 900_000.0
    );
    assert!(svc.metric("image_cache_registry_upstream_responses_total{registry=\"fake.test:5000\",status=\"401\"}").await >= 1.0);
    svc.stop().await;
}

#[tokio::test]
async fn tags_revalidate_with_head_and_follow_a_moved_tag() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let old = reg.push_image("app", "stable", &layers(1, 1000, 2));
    let mut c = config(&env, &reg);
    c.registry.tag_ttl = Span(Duration::from_secs(1));
    let svc = env.start(c).await;

    assert_eq!(
        header(
            &head(&svc, "app", "manifests", "stable").await,
            "docker-content-digest"
        ),
        old.index
    );
    svc.store().clock().advance(Duration::from_millis(1100));
    // Same digest upstream: one HEAD, no GET (Docker Hub counts GETs as pulls).
    assert_eq!(
        header(
            &head(&svc, "app", "manifests", "stable").await,
            "docker-content-digest"
        ),
        old.index
    );
    assert_eq!(
        reg.count("HEAD /v2/app/manifests/stable"),
        1,
        "{:?}",
        reg.state.log.lock().unwrap()
    );
    assert_eq!(reg.count("GET /v2/app/manifests/stable"), 1);

    let new = reg.push_image("app", "stable", &layers(1, 1000, 3));
    svc.store().clock().advance(Duration::from_millis(1100));
    let r = get(&svc, "app", "manifests", "stable", RESOLVE_ACCEPT).await;
    assert_eq!(header(&r, "docker-content-digest"), new.index);
    assert_eq!(oci::digest(&r.bytes().await.unwrap()), new.index);
    // The old digest stays servable (immutable).
    let r = get(&svc, "app", "manifests", &old.index, INDEX).await;
    assert_eq!(r.status(), 200);
    assert_eq!(oci::digest(&r.bytes().await.unwrap()), old.index);
    svc.stop().await;
}

#[tokio::test]
async fn narrow_accept_is_not_served_the_cached_index() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 1000, 4));
    let svc = env.start(config(&env, &reg)).await;
    assert_eq!(head(&svc, "app", "manifests", "1").await.status(), 200);
    let r = get(&svc, "app", "manifests", "1", MANIFEST).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), MANIFEST);
    assert_eq!(header(&r, "docker-content-digest"), img.amd64);
    assert_eq!(oci::digest(&r.bytes().await.unwrap()), img.amd64);
    // A digest request ignores Accept: the stored index is served to anyone asking for it.
    let r = get(&svc, "app", "manifests", &img.index, DOCKER_V2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(oci::digest(&r.bytes().await.unwrap()), img.index);
    svc.stop().await;
}

#[tokio::test]
async fn ranges_on_hit_and_on_miss() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(2, 200_000, 5));
    let svc = env.start(config(&env, &reg)).await;
    let (cold, warm) = (&img.layers[0], &img.layers[1]);
    let cold_bytes = reg.blob(cold);

    // Miss with an open-ended range: the right bytes, and the whole object stored.
    let r = svc
        .client
        .get(url(&svc, "app", "blobs", cold))
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes 1000-199999/200000")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &cold_bytes[1000..]);
    svc.settle().await;
    let key =
        image_cache::store::Key::parse(&format!("oci:fake.test:5000/app@blob:{cold}")).unwrap();
    assert_eq!(svc.store().get(&key).unwrap().unwrap().size, 200_000);

    assert_eq!(get(&svc, "app", "blobs", warm, "*/*").await.status(), 200);
    let warm_bytes = reg.blob(warm);
    for (range, status, want) in [
        ("bytes=0-", 206, &warm_bytes[..]),
        ("bytes=150000-", 206, &warm_bytes[150_000..]),
    ] {
        let r = svc
            .client
            .get(url(&svc, "app", "blobs", warm))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{range}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), want, "{range}");
    }
    let r = svc
        .client
        .get(url(&svc, "app", "blobs", warm))
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), "bytes */200000");
    assert_eq!(reg.cdn_gets(cold) + reg.cdn_gets(warm), 2);
    svc.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_cold_pulls_make_one_download() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 2_000_000, 6));
    let layer = img.layers[0].clone();
    reg.fault(
        &format!("/v2/app/blobs/{layer}"),
        Fault::Slow(Duration::from_millis(1500)),
    );
    let svc = env.start(config(&env, &reg)).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = svc.client.clone();
        let u = url(&svc, "app", "blobs", &layer);
        tasks.push(tokio::spawn(async move {
            let mut req = client.get(u);
            if i % 5 == 0 {
                req = req.header("range", format!("bytes={}-", i * 1000));
            }
            let r = req.send().await.unwrap();
            (i, r.status().as_u16(), r.bytes().await.unwrap())
        }));
    }
    let want = reg.blob(&layer);
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        if i % 5 == 0 {
            assert_eq!(status, 206);
            assert_eq!(body.as_ref(), &want[i * 1000..]);
        } else {
            assert_eq!(status, 200);
            assert_eq!(body.as_ref(), &want[..]);
        }
    }
    assert_eq!(reg.cdn_gets(&layer), 1);
    assert_eq!(reg.count(&format!("GET /v2/app/blobs/{layer}")), 1);
    svc.stop().await;
}

#[tokio::test]
async fn a_client_leaving_mid_blob_does_not_stop_the_fill() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 1_000_000, 7));
    let layer = img.layers[0].clone();
    reg.fault(
        &format!("/v2/app/blobs/{layer}"),
        Fault::Slow(Duration::from_millis(800)),
    );
    let svc = env.start(config(&env, &reg)).await;
    let mut r = get(&svc, "app", "blobs", &layer, "*/*").await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
    svc.settle().await;
    let r = get(&svc, "app", "blobs", &layer, "*/*").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &reg.blob(&layer)[..]);
    assert_eq!(reg.cdn_gets(&layer), 1);
    svc.stop().await;
}

#[tokio::test]
async fn upstream_refusals_404_401_429_5xx() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 1000, 8));
    reg.push_image("private/app", "1", &layers(1, 1000, 9));
    let mut c = config(&env, &reg);
    c.registry.tag_ttl = Span(Duration::from_millis(1));
    let svc = env.start(c).await;

    // 404, remembered for negative_ttl.
    let r = get(&svc, "app", "manifests", "nope", RESOLVE_ACCEPT).await;
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "MANIFEST_UNKNOWN");
    assert_eq!(
        get(&svc, "app", "manifests", "nope", RESOLVE_ACCEPT)
            .await
            .status(),
        404
    );
    assert_eq!(
        reg.count("GET /v2/app/manifests/nope"),
        1,
        "the retry was answered from memory"
    );

    // 401 for what the cache has no account for: relayed, nothing stored.
    let r = get(&svc, "private/app", "manifests", "1", RESOLVE_ACCEPT).await;
    assert_eq!(r.status(), 401);
    assert_eq!(code(r).await, "UNAUTHORIZED");
    assert!(
        svc.store()
            .list("oci:fake.test:5000/private/", None, 10)
            .unwrap()
            .is_empty()
    );

    // 500: no store write, 502 to the client.
    reg.fault("/v2/app/manifests/2", Fault::Status(500, None));
    reg.push_image("app", "2", &layers(1, 1000, 10));
    assert_eq!(
        get(&svc, "app", "manifests", "2", RESOLVE_ACCEPT)
            .await
            .status(),
        502
    );

    // A stored tag, then 429: served stale, the registry left alone, uncached objects get 503 + Retry-After.
    assert_eq!(
        get(&svc, "app", "manifests", "1", RESOLVE_ACCEPT)
            .await
            .status(),
        200
    );
    reg.fault("/v2/app/manifests/1", Fault::Status(429, Some("120")));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = head(&svc, "app", "manifests", "1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.index);
    let asked = reg.state.log.lock().unwrap().len();
    let r = get(&svc, "app", "blobs", &img.layers[0], "*/*").await;
    assert_eq!(r.status(), 503);
    let wait: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((100..=120).contains(&wait), "{wait}");
    assert_eq!(code(r).await, "TOOMANYREQUESTS");
    let r = head(&svc, "app", "manifests", "1").await;
    assert_eq!(r.status(), 200, "stale while backed off");
    assert_eq!(
        reg.state.log.lock().unwrap().len(),
        asked,
        "nothing sent while backed off"
    );
    assert!(svc.metric("image_cache_registry_requests_total{registry=\"fake.test:5000\",kind=\"manifest\",result=\"stale\"}").await >= 2.0);
    svc.stop().await;
}

#[tokio::test]
async fn credentials_file_opens_private_repositories() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("private/app", "1", &layers(1, 5000, 11));
    let creds = reg.credentials_file(env.dir.path(), reg.url.trim_start_matches("http://"));
    let mut c = config(&env, &reg);
    c.registry.credentials_file = Some(creds);
    let svc = env.start(c).await;
    pull(&svc, "private/app", "1", &img).await;
    svc.stop().await;
}

#[tokio::test]
async fn nothing_unverified_is_stored() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(2, 300_000, 12));
    let svc = env.start(config(&env, &reg)).await;
    let (bad, gz) = (&img.layers[0], &img.layers[1]);
    reg.fault(&format!("/v2/app/blobs/{bad}"), Fault::WrongBody);
    reg.fault(&format!("/v2/app/blobs/{gz}"), Fault::Gzip);

    // Wrong bytes: the transfer is cut before its last byte, never a complete-looking wrong body.
    let r = get(&svc, "app", "blobs", bad, "*/*").await;
    let body = r.bytes().await;
    assert!(body.is_err() || body.unwrap().len() < 300_000);
    // An encoding nobody asked for is refused.
    assert_eq!(get(&svc, "app", "blobs", gz, "*/*").await.status(), 502);
    // A manifest that does not hash to the requested digest.
    reg.fault(
        &format!("/v2/app/manifests/{}", img.amd64),
        Fault::WrongBody,
    );
    assert_eq!(
        get(&svc, "app", "manifests", &img.amd64, MANIFEST)
            .await
            .status(),
        502
    );
    svc.settle().await;
    assert!(
        svc.store()
            .list("oci:fake.test:5000/app@", None, 10)
            .unwrap()
            .is_empty()
    );
    assert!(svc.metric("image_cache_integrity_failures_total").await >= 2.0);

    // Fixed upstream → served and stored.
    reg.clear_faults();
    let r = get(&svc, "app", "blobs", bad, "*/*").await;
    assert_eq!(oci::digest(&r.bytes().await.unwrap()), *bad);
    svc.stop().await;
}

#[tokio::test]
async fn missing_digest_header_is_computed() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 1000, 13));
    reg.fault("/v2/app/manifests/1", Fault::NoDigest);
    let svc = env.start(config(&env, &reg)).await;
    let r = head(&svc, "app", "manifests", "1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.index);
    svc.stop().await;
}

#[tokio::test]
async fn registry_down_cached_content_still_served() {
    let env = Env::new().await;
    let mut reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(2, 100_000, 14));
    let mut c = config(&env, &reg);
    c.registry.tag_ttl = Span(Duration::from_millis(1));
    let svc = env.start(c).await;
    let first = pull(&svc, "app", "1", &img).await;
    svc.settle().await;
    reg.stop().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = pull(&svc, "app", "1", &img).await;
    assert_eq!(first, again);
    assert!(svc.metric("image_cache_registry_requests_total{registry=\"fake.test:5000\",kind=\"manifest\",result=\"stale\"}").await >= 1.0);
    // Uncached: a quick error, not a hang or a dropped connection.
    let started = std::time::Instant::now();
    let r = get(&svc, "app", "manifests", "other", RESOLVE_ACCEPT).await;
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(3));
    svc.stop().await;
}

#[tokio::test]
async fn shared_layers_are_linked_after_a_head_and_keys_stay_apart() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let base = layers(1, 500_000, 15);
    let a = reg.push_image("a/b-c", "d", &base);
    let b = reg.push_image("a/b", "c-d", &base);
    let svc = env.start(config(&env, &reg)).await;
    pull(&svc, "a/b-c", "d", &a).await;
    svc.settle().await;
    pull(&svc, "a/b", "c-d", &b).await;
    svc.settle().await;
    let layer = &a.layers[0];
    assert_eq!(
        reg.cdn_gets(layer),
        1,
        "the second repository's copy came from the store"
    );
    assert!(reg.count(&format!("HEAD /v2/a/b/blobs/{layer}")) >= 1);
    // A repository that does not have the layer is not given it, even though the cache holds it.
    let r = get(&svc, "other", "blobs", layer, "*/*").await;
    assert_eq!(r.status(), 404);
    let keys: Vec<String> = svc
        .store()
        .list("oci:", None, 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"oci:fake.test:5000/a/b-c:d".to_string()));
    assert!(keys.contains(&"oci:fake.test:5000/a/b:c-d".to_string()));
    svc.stop().await;
}

#[tokio::test]
async fn blob_head_asks_the_registry_without_downloading() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 100_000, 16));
    let svc = env.start(config(&env, &reg)).await;
    let r = head(&svc, "app", "blobs", &img.layers[0]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "100000");
    assert_eq!(header(&r, "docker-content-digest"), img.layers[0]);
    assert_eq!(reg.cdn_gets(&img.layers[0]), 0);
    let r = svc
        .client
        .get(format!("{}/v2/app/tags/list?{NS}&n=10", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["tags"][0], "1");
    svc.stop().await;
}

/// The account of `registry.credentials_file` stays with its registry: a challenge naming a token realm
/// on another host gets an anonymous token request (no Basic credentials), and a 401 from the CDN a blob
/// redirects to is not answered with anything.
#[tokio::test]
async fn credentials_never_leave_their_registry() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("private/app", "1", &layers(1, 1000, 31));
    // A canary "realm" on another host that records every Authorization it receives.
    let canary = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let canary_addr = canary.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = canary.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_string());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"token\":\"x\"}")
                .await;
        }
    });
    *reg.state.realm.lock().unwrap() = Some(format!("http://{canary_addr}/token"));
    let creds = reg.credentials_file(env.dir.path(), "fake.test:5000");
    let mut c = config(&env, &reg);
    c.registry.credentials_file = Some(creds);
    let svc = env.start(c).await;
    let r = get(&svc, "private/app", "manifests", "1", RESOLVE_ACCEPT).await;
    assert_eq!(r.status(), 401, "the canary's token opens nothing");
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.is_empty(), "the realm was asked");
    for request in &requests {
        assert!(
            !request.to_ascii_lowercase().contains("authorization"),
            "credentials sent to another host: {request}"
        );
    }

    // The registry's own realm again; a blob whose CDN answers 401.
    *reg.state.realm.lock().unwrap() = None;
    let layer = &img.layers[0];
    reg.fault(
        &format!("/v2/private/app/blobs/{layer}"),
        Fault::CdnChallenge,
    );
    let r = get(&svc, "private/app", "blobs", layer, "*/*").await;
    assert_ne!(r.status(), 200);
    let cdn = reg.state.cdn_log.lock().unwrap().clone();
    assert!(!cdn.is_empty(), "the CDN was reached");
    assert!(
        cdn.iter().all(|l| l.ends_with("auth=false")),
        "credentials or tokens went to the CDN: {cdn:?}"
    );
    svc.stop().await;
}

/// Docker and podman send one `Accept` line per media type. Every line counts; and a registry's 404 to a
/// narrow client (content negotiation) is that client's answer only: it is not remembered as "no such tag"
/// for the clients after it.
#[tokio::test]
async fn accept_on_several_lines_counts_and_a_negotiation_404_is_not_remembered() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 1000, 4));
    reg.state
        .strict_accept
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c = config(&env, &reg);
    c.registry.negative_ttl = Span(Duration::from_secs(600));
    let svc = env.start(c).await;

    // The index on the second line: the stored index is what this client asked for.
    let r = svc
        .client
        .get(url(&svc, "app", "manifests", "1"))
        .header("accept", DOCKER_V2)
        .header("accept", INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.index);

    // A client that accepts only a type this registry will not convert to: its 404, not remembered.
    let r = get(&svc, "app", "manifests", "1", DOCKER_V2).await;
    assert_eq!(r.status(), 404);
    for accept in [RESOLVE_ACCEPT, INDEX] {
        let r = get(&svc, "app", "manifests", "1", accept).await;
        assert_eq!(r.status(), 200, "{accept}: the tag is not gone");
        assert_eq!(header(&r, "docker-content-digest"), img.index);
    }
    svc.stop().await;
}

/// One store for every runtime: containerd names the registry with `ns`, podman and CRI-O with a path
/// prefix (`/v2/<registry>/<name>/...`), Docker with nothing (its `registry-mirrors` mirror the default
/// upstream). All three reach the same objects: the registry sees each blob once.
#[tokio::test]
async fn ns_path_prefix_and_default_upstream_share_one_store() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("team/app", "1", &layers(2, 50_000, 6));
    let mut c = config(&env, &reg);
    c.registry
        .upstreams
        .insert("reg.test".to_string(), reg.url.clone());
    c.registry.default_upstream = Some("reg.test".into());
    let svc = env.start(c).await;
    let at = |path: &str| format!("{}{path}", svc.base);
    let fetch = |path: String, accept: &'static str| {
        let req = svc.client.get(at(&path)).header("accept", accept);
        async move { req.send().await.unwrap() }
    };
    let pulls = [
        ("containerd", "/v2/team/app/{kind}/{reference}?ns=reg.test"),
        ("podman", "/v2/reg.test/team/app/{kind}/{reference}"),
        ("docker", "/v2/team/app/{kind}/{reference}"),
    ];
    for (runtime, pattern) in pulls {
        let path = |kind: &str, reference: &str| {
            pattern
                .replace("{kind}", kind)
                .replace("{reference}", reference)
        };
        let r = fetch(path("manifests", "1"), RESOLVE_ACCEPT).await;
        assert_eq!(r.status(), 200, "{runtime}");
        assert_eq!(header(&r, "docker-content-digest"), img.index, "{runtime}");
        assert_eq!(header(&r, "oci-namespace"), "reg.test", "{runtime}");
        for layer in &img.layers {
            let r = fetch(path("blobs", layer), "*/*").await;
            assert_eq!(r.status(), 200, "{runtime}");
            assert_eq!(oci::digest(&r.bytes().await.unwrap()), *layer, "{runtime}");
        }
        svc.settle().await;
    }
    let log = reg.state.log.lock().unwrap().clone();
    for layer in &img.layers {
        let gets = log
            .iter()
            .filter(|l| l.starts_with("GET ") && l.contains(layer.as_str()))
            .count();
        assert_eq!(gets, 1, "{layer} fetched {gets} times: {log:#?}");
    }
    // `ns` wins over a prefix: this asks fake.test:5000 for a repository named `reg.test/team/app`.
    let r = fetch(
        "/v2/reg.test/team/app/manifests/1?ns=fake.test%3A5000".into(),
        RESOLVE_ACCEPT,
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "oci-namespace"), "fake.test:5000");
    // A registry with a port as the prefix (podman's `location = "cache:80/fake.test:5000"`).
    let r = fetch(
        format!("/v2/fake.test:5000/team/app/blobs/{}", img.layers[0]),
        "*/*",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "oci-namespace"), "fake.test:5000");
    assert_eq!(oci::digest(&r.bytes().await.unwrap()), img.layers[0]);
    // A port prefix that names no configured registry, or comes with ns, is no repository name.
    for path in [
        "/v2/other.test:5000/team/app/manifests/1".to_string(),
        "/v2/fake.test:5000/team/app/manifests/1?ns=reg.test".to_string(),
    ] {
        let r = fetch(path.clone(), RESOLVE_ACCEPT).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(code(r).await, "NAME_UNKNOWN", "{path}");
    }
    svc.stop().await;
}

/// Referrers (signatures, SBOMs, attestations): relayed and kept for `tag_ttl`, filtered by
/// `artifactType`; a registry without the referrers API is answered from the referrers tag schema, or
/// with an empty index when there is nothing.
#[tokio::test]
async fn referrers_relayed_filtered_from_the_tag_schema_or_empty() {
    const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    const SBOM: &str = "application/spdx+json";
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let img = reg.push_image("app", "1", &layers(1, 1000, 7));
    let sig = reg.add_referrer("app", &img.index, SIG);
    let sbom = reg.add_referrer("app", &img.index, SBOM);
    let mut c = config(&env, &reg);
    c.registry.tag_ttl = Span(Duration::from_secs(600));
    let svc = env.start(c).await;
    let referrers = |subject: &str, query: &str| {
        let req = svc
            .client
            .get(format!(
                "{}/v2/app/referrers/{subject}?{NS}{query}",
                svc.base
            ))
            .header("accept", INDEX);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let filters = header(&r, "oci-filters-applied");
            let kind = header(&r, "content-type");
            let doc: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            let digests: Vec<String> = doc["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["digest"].as_str().unwrap().to_string())
                .collect();
            (status, kind, filters, digests)
        }
    };
    let api_calls = || {
        reg.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("/referrers/"))
            .count()
    };

    let (status, kind, filters, digests) = referrers(&img.index, "").await;
    assert_eq!((status, kind.as_str(), filters.as_str()), (200, INDEX, ""));
    assert_eq!(digests, [sig.clone(), sbom.clone()]);
    let (_, _, filters, digests) =
        referrers(&img.index, "&artifactType=application%2Fspdx%2Bjson").await;
    assert_eq!(filters, "artifactType");
    assert_eq!(digests, std::slice::from_ref(&sbom));
    assert_eq!(api_calls(), 1, "the index was kept, and filtered here");

    // A registry without the API: the referrers tag schema, then nothing at all.
    reg.state
        .no_referrers_api
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let att = reg.add_referrer("app", &img.amd64, SIG);
    let (status, _, _, digests) = referrers(&img.amd64, "").await;
    assert_eq!((status, digests), (200, vec![att]));
    let (status, kind, _, digests) = referrers(&img.arm64, "").await;
    assert_eq!((status, kind.as_str()), (200, INDEX));
    assert!(digests.is_empty());
    let hits = svc
        .metric("image_cache_registry_requests_total{registry=\"fake.test:5000\",kind=\"referrers\",result=\"hit\"}")
        .await;
    assert_eq!(hits, 1.0);
    svc.stop().await;
}

/// A blob whose fill fails before its first byte reaches the client (wrong bytes, found at once for a
/// small blob) gets a clean 502, never a connection dropped before any response head (which clients
/// report as `IncompleteMessage`, a broken server).
#[tokio::test]
async fn a_fill_that_fails_before_its_first_byte_is_a_clean_502() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let svc = env.start(config(&env, &reg)).await;
    let blobs: Vec<String> = (0..30u8)
        .map(|i| reg.put_blob("app", vec![i; 16]))
        .collect();
    for d in &blobs {
        reg.fault(&format!("/v2/app/blobs/{d}"), Fault::WrongBody);
    }
    for d in &blobs {
        let r = svc
            .client
            .get(url(&svc, "app", "blobs", d))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{d}: no response head: {e:?}"));
        if r.status() == 200 {
            // The head went out with the first bytes: the body must then be cut short.
            assert!(
                r.bytes().await.is_err(),
                "{d}: a complete-looking wrong body"
            );
        } else {
            assert_eq!(r.status(), 502, "{d}");
        }
    }
    svc.settle().await;
    assert!(
        svc.store()
            .list("oci:fake.test:5000/app@", None, 50)
            .unwrap()
            .is_empty()
    );
    svc.stop().await;
}
