//! The admin API and the status page against a real service on 127.0.0.1: every route, the token, the
//! admin-only listener, and hostile query strings.

use crate::common;

use common::{Env, Service};
use image_cache::config::OnMiss;
use serde_json::Value;
use std::time::Duration;

async fn json(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}), status {status}: {body}"));
    (status, value)
}

fn method(svc: &Service, m: &str, path: &str) -> reqwest::RequestBuilder {
    svc.client
        .request(m.parse().unwrap(), format!("{}{path}", svc.base))
}

async fn fill(svc: &Service, path: &str) {
    let r = svc.get(path).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.bytes().await.unwrap();
    svc.settle().await;
}

fn keys(page: &Value) -> Vec<String> {
    page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_page_filter_pin_and_remove() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    for seed in 1..=3 {
        fill(&svc, &format!("/file/{}/{seed}", 1000 * seed)).await;
    }
    fill(&svc, "/file/1000/1").await; // a hit

    let (status, all) = json(svc.admin("/admin/objects")).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&all),
        [
            "file:files.test/file/1000/1",
            "file:files.test/file/2000/2",
            "file:files.test/file/3000/3"
        ]
    );
    let first = &all["objects"][0];
    assert_eq!(first["size"], 1000);
    assert_eq!(first["hits"], 1, "hit counts are flushed before listing");
    assert_eq!(first["pinned"], false);
    assert!(first["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(first["last_access"].as_u64().unwrap() > 0);
    assert!(all["next_cursor"].is_null());

    // Paging: two, then the rest from the cursor.
    let (_, p1) = json(svc.admin("/admin/objects?limit=2")).await;
    assert_eq!(keys(&p1).len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let q = serde_urlencoded::to_string([("cursor", cursor.as_str()), ("limit", "2")]).unwrap();
    let (_, p2) = json(svc.admin(&format!("/admin/objects?{q}"))).await;
    assert_eq!(keys(&p2), ["file:files.test/file/3000/3"]);
    assert!(p2["next_cursor"].is_null());

    // Prefix filter.
    let (_, some) = json(svc.admin("/admin/objects?prefix=file%3Afiles.test%2Ffile%2F2")).await;
    assert_eq!(keys(&some), ["file:files.test/file/2000/2"]);

    // Pin, filter by pin, unpin; unknown and malformed keys.
    let key = "key=file%3Afiles.test%2Ffile%2F2000%2F2";
    let (status, pinned) = json(method(&svc, "POST", &format!("/admin/objects/pin?{key}"))).await;
    assert_eq!((status, &pinned["pinned"]), (200, &Value::Bool(true)));
    let (_, only) = json(svc.admin("/admin/objects?pinned=true")).await;
    assert_eq!(keys(&only), ["file:files.test/file/2000/2"]);
    assert_eq!(only["objects"][0]["pinned_by"], "operator");
    let (_, unpinned) = json(svc.admin("/admin/objects?pinned=false")).await;
    assert_eq!(keys(&unpinned).len(), 2);
    let (status, _) = json(method(&svc, "DELETE", &format!("/admin/objects/pin?{key}"))).await;
    assert_eq!(status, 200);
    let (_, none) = json(svc.admin("/admin/objects?pinned=true")).await;
    assert!(keys(&none).is_empty());
    let (status, e) = json(method(
        &svc,
        "POST",
        "/admin/objects/pin?key=file%3Afiles.test%2Fnope",
    ))
    .await;
    assert_eq!(status, 404, "{e}");
    let (status, e) = json(method(&svc, "POST", "/admin/objects/pin?key=..%2F..%2Fetc")).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("not a store key"));

    // Remove: gone from the listing and fetched from the origin again.
    let (status, _) = json(method(
        &svc,
        "DELETE",
        "/admin/objects?key=file%3Afiles.test%2Ffile%2F1000%2F1",
    ))
    .await;
    assert_eq!(status, 200);
    let (status, _) = json(method(
        &svc,
        "DELETE",
        "/admin/objects?key=file%3Afiles.test%2Ffile%2F1000%2F1",
    ))
    .await;
    assert_eq!(status, 404);
    let (_, after) = json(svc.admin("/admin/objects")).await;
    assert_eq!(keys(&after).len(), 2);
    fill(&svc, "/file/1000/1").await;
    assert_eq!(env.origin.gets("/file/1000/1"), 2);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_get_400_and_change_nothing() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    fill(&svc, "/file/1000/1").await;
    let long = "a".repeat(10_000);
    let cases = [
        ("GET", "/admin/objects?limit=0".to_string()),
        ("GET", "/admin/objects?limit=100000".to_string()),
        ("GET", "/admin/objects?limit=-5".to_string()),
        ("GET", "/admin/objects?limit=1e3".to_string()),
        ("GET", "/admin/objects?prefx=file".to_string()),
        ("GET", "/admin/objects?prefix=a&prefix=b".to_string()),
        ("GET", "/admin/objects?prefix=%00".to_string()),
        (
            "GET",
            "/admin/objects?cursor=%0d%0aX-Injected:%201".to_string(),
        ),
        ("GET", format!("/admin/objects?prefix={long}")),
        ("GET", "/admin/objects?pinned=perhaps".to_string()),
        ("GET", "/admin/objects?%ff%fe=1".to_string()),
        ("POST", "/admin/objects/pin".to_string()),
        ("POST", "/admin/objects/pin?key=".to_string()),
        (
            "POST",
            "/admin/objects/pin?key=file%3Ahost%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        ),
        ("DELETE", "/admin/objects?key=oci%3A%0a".to_string()),
        ("DELETE", "/admin/objects".to_string()),
        ("POST", "/admin/store/gc?force=1".to_string()),
        ("POST", "/admin/store/verify?dry_run=1".to_string()),
        ("POST", "/admin/sync?wait=maybe".to_string()),
        ("GET", "/admin/fills?x=1".to_string()),
        ("GET", "/admin/status?x".to_string()),
    ];
    for (m, path) in &cases {
        let (status, body) = json(method(&svc, m, path)).await;
        assert_eq!(status, 400, "{m} {path}: {body}");
        assert!(body["error"].is_string(), "{m} {path}: {body}");
    }
    // Wrong methods and unknown routes.
    let resp = svc.admin("/admin/store/gc").send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let (status, _) = json(svc.admin("/admin/../admin/objects%2F..")).await;
    assert_eq!(status, 404);
    let (status, _) = json(method(&svc, "PUT", "/admin/objects")).await;
    assert_eq!(status, 405);
    let resp = method(&svc, "POST", "/").send().await.unwrap();
    assert_eq!(resp.status(), 405);
    // Nothing changed, and the service still answers.
    assert_eq!(svc.store().object_count(), 1);
    let (_, all) = json(svc.admin("/admin/objects")).await;
    assert_eq!(keys(&all), ["file:files.test/file/1000/1"]);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_admin_but_not_the_page_or_metrics() {
    let env = Env::new().await;
    let token_file = env.dir.path().join("admin-token");
    std::fs::write(&token_file, "t0ken-123\n").unwrap();
    let mut config = env.config(OnMiss::Fill);
    config.http.admin_token_file = Some(token_file.clone());
    let svc = env.start(config).await;
    for (auth, want) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Basic dDBrZW4tMTIz"), 401),
        (Some("Bearer t0ken-1234"), 401),
        (Some("Bearer t0ken-123"), 200),
    ] {
        let mut r = svc.admin("/admin/objects");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), want, "{auth:?}");
        if want == 401 {
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"image-cache admin\""
            );
        }
    }
    // State-changing routes too: a 401 before anything happens.
    let resp = method(&svc, "POST", "/admin/store/gc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    for open in ["/", "/status/live", "/metrics", "/health", "/ready"] {
        assert_eq!(
            svc.admin(open).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }
    svc.stop().await;

    // An empty token file is a config error naming the key.
    std::fs::write(&token_file, "\n").unwrap();
    let mut config = env.config(OnMiss::Fill);
    config.http.admin_token_file = Some(token_file);
    let err = image_cache::app::start(config).await.err().unwrap();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("http.admin_token_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_keeps_admin_routes_off_the_public_listener() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    config.http.admin_listen = vec!["127.0.0.1:0".parse().unwrap()];
    let svc = env.start(config).await;
    let admin = format!("http://{}", svc.running.as_ref().unwrap().admin_addrs[0]);
    for path in ["/", "/admin/objects", "/metrics", "/status/live"] {
        let public = svc.admin(path).send().await.unwrap();
        assert_eq!(public.status(), 404, "{path} on the public listener");
        let private = svc
            .client
            .get(format!("{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(private.status(), 200, "{path} on the admin listener");
    }
    // The file cache still answers on the public one.
    fill(&svc, "/file/100/1").await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_page_and_status_show_a_download_in_flight() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    fill(&svc, "/file/5000/7").await;
    fill(&svc, "/file/5000/7").await;
    // 4 MB in 50 KB pieces every 20 ms: about 1.6 s.
    let path = "/slow/4000000/9/50000/20";
    let client = svc.get(path).send().await.unwrap();
    let reader = tokio::spawn(async move { client.bytes().await.unwrap().len() });

    let mut seen = None;
    for _ in 0..100 {
        let (status, fills) = json(svc.admin("/admin/fills")).await;
        assert_eq!(status, 200);
        if let Some(f) = fills.as_array().unwrap().first()
            && f["written"].as_u64().unwrap() > 0
        {
            seen = Some(f.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = seen.expect("the fill shows up");
    assert_eq!(f["key"], "file:files.test/slow/4000000/9/50000/20");
    assert_eq!(f["total"], 4_000_000);
    assert_eq!(f["readers"], 1);

    let page = svc.admin("/").send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    let value = |html: &str| -> u64 {
        let at = html
            .find("<progress class=\"fill\" data-key=\"file:files.test/slow/4000000/9/50000/20\" max=\"4000000\" value=\"")
            .unwrap_or_else(|| panic!("no progress bar: {html}"));
        let rest = &html[at..];
        let v = rest.split("value=\"").nth(1).unwrap();
        v[..v.find('"').unwrap()].parse().unwrap()
    };
    let first = value(&html);
    assert!(
        html.contains("file:files.test/file/5000/7"),
        "the object tables list it"
    );
    assert!(html.contains("<section id=\"most-requested\">"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = svc.text("/status/live").await;
    assert!(!live.contains("<html"), "a fragment");
    let second = value(&live);
    assert!(second > first, "progress advances: {first} then {second}");

    // The JSON view agrees with the page: one miss and one hit on files so far, the store's usage.
    let (_, status) = json(svc.admin("/admin/status")).await;
    let files = &status["hit_ratio"]["kinds"][0];
    assert_eq!(files["kind"], "file");
    assert_eq!(files["hits"], 1);
    assert_eq!(files["requests"], 3);
    assert_eq!(status["store"]["max_bytes"], svc.store().max_size());
    assert_eq!(
        status["objects"]["largest"][0]["key"],
        "file:files.test/file/5000/7"
    );

    assert_eq!(reader.await.unwrap(), 4_000_000);
    svc.settle().await;
    let (_, fills) = json(svc.admin("/admin/fills")).await;
    assert!(fills.as_array().unwrap().is_empty());

    let js = svc.admin("/status/script.js").send().await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.text().await.unwrap().contains("data-refreshed"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_gc_and_pins_through_the_api() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    config.cache.max_size = image_cache::config::ByteSize(20000);
    let svc = env.start(config).await;
    fill(&svc, "/file/8000/1").await;
    fill(&svc, "/file/8000/2").await;
    let (status, _) = json(method(
        &svc,
        "POST",
        "/admin/objects/pin?key=file%3Afiles.test%2Ffile%2F8000%2F1",
    ))
    .await;
    assert_eq!(status, 200);
    fill(&svc, "/file/8000/3").await; // 24000 > 20000: eviction is due
    let (status, gc) = json(method(&svc, "POST", "/admin/store/gc")).await;
    assert_eq!(status, 200, "{gc}");
    let (_, all) = json(svc.admin("/admin/objects")).await;
    let left = keys(&all);
    assert!(
        left.contains(&"file:files.test/file/8000/1".to_string()),
        "pinned stays: {left:?}"
    );
    assert!(
        !left.contains(&"file:files.test/file/8000/2".to_string()),
        "LRU goes: {left:?}"
    );
    assert!(svc.store().total_bytes() <= 18000);

    // A clean verify, waited for.
    let (status, report) = json(method(&svc, "POST", "/admin/store/verify?wait=true")).await;
    assert_eq!(status, 200);
    assert_eq!(report["blobs_checked"], 2);
    assert!(report["corrupt_keys"].as_array().unwrap().is_empty());

    // Corrupt a blob on disk, verify in the background and follow it.
    let blobs = env.state_dir().join("blobs");
    let victim = common::files_under(&blobs)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 8000)
        .unwrap();
    let victim_key = all["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| victim.ends_with(o["digest"].as_str().unwrap().trim_start_matches("sha256:")))
        .map(|o| o["key"].as_str().unwrap().to_string())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let (status, started) = json(method(&svc, "POST", "/admin/store/verify")).await;
    assert_eq!(status, 202);
    let run = started["run"].as_u64().unwrap();
    let done = loop {
        let (_, s) = json(svc.admin("/admin/store/verify")).await;
        if s["finished"].as_u64().unwrap() >= run {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["running"], false);
    assert_eq!(
        done["last"]["corrupt_keys"],
        serde_json::json!([victim_key])
    );
    let (_, after) = json(svc.admin("/admin/objects")).await;
    assert!(!keys(&after).contains(&victim_key));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_a_sync_that_cannot_run() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    // A loopback peer nobody listens on.
    let port = common::unused_port("127.0.0.2");
    config.nodes.peers = vec!["127.0.0.2".parse().unwrap()];
    config.nodes.peer_port = port;
    config.nodes.self_addr = Some("127.0.0.1".parse().unwrap());
    let svc = env.start(config).await;
    let (status, peers) = json(svc.admin("/admin/peers")).await;
    assert_eq!(status, 200);
    assert_eq!(peers["node"]["address"], "127.0.0.1");
    assert_eq!(peers["node"]["ready"], true);
    assert_eq!(
        peers["peers"],
        serde_json::json!([{ "address": "127.0.0.2", "up": false, "served": 0, "fallback": 0, "broken": 0 }])
    );
    let html = svc.text("/").await;
    assert!(html.contains(
        "<tr class=\"down\"><td>127.0.0.2</td><td>peer</td><td>down</td><td>0 served · 0 fell back · 0 broken</td></tr>"
    ));

    // No metal-api is configured: the started run ends with an error the status keeps.
    let (status, started) = json(method(&svc, "POST", "/admin/sync")).await;
    assert_eq!(status, 202, "{started}");
    let run = started["run"].as_u64().unwrap();
    let done = loop {
        let (_, s) = json(svc.admin("/admin/sync")).await;
        if s["finished"].as_u64().unwrap() >= run {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["running"], false);
    assert!(done["last_error"].is_string(), "{done}");
    svc.stop().await;
}

/// DNS rebinding and CSRF: a page on another site, or under a name that now points at this node, can
/// neither read nor change anything; the node's own names, and requests without an Origin (curl, the
/// CLI, Prometheus), still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_other_sites_are_refused_on_every_admin_route() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    config.http.admin_hosts = vec!["cache-1.mgmt.test".into()];
    let svc = env.start(config).await;
    fill(&svc, "/file/1000/1").await;
    let key = "file:files.test/file/1000/1";
    let routes: Vec<(&str, String)> = vec![
        ("GET", "/".into()),
        ("GET", "/status/live".into()),
        ("GET", "/metrics".into()),
        ("GET", "/admin/status".into()),
        ("GET", "/admin/objects".into()),
        ("GET", "/admin/fills".into()),
        ("POST", "/admin/store/gc".into()),
        ("POST", "/admin/store/verify".into()),
        ("POST", "/admin/sync".into()),
        ("POST", format!("/admin/objects/pin?key={key}")),
        ("DELETE", format!("/admin/objects?key={key}")),
    ];
    for (m, path) in &routes {
        // A rebinding page: its own name in Host.
        let r = method(&svc, m, path)
            .header("host", "attacker.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "{m} {path} under a foreign Host");
        // A page elsewhere posting to this node's real address (a "simple" request, no preflight).
        for origin in ["http://attacker.example", "null"] {
            let r = method(&svc, m, path)
                .header("origin", origin)
                .header("content-type", "text/plain")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{m} {path} with Origin {origin}");
        }
        let r = method(&svc, m, path)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            403,
            "{m} {path} with Sec-Fetch-Site: cross-site"
        );
    }
    // Nothing changed: the object is still there and unpinned.
    let row = svc
        .store()
        .get(&image_cache::store::Key::parse(key).unwrap())
        .unwrap();
    assert!(
        row.is_some_and(|r| !r.pinned),
        "a refused request changed the store"
    );
    // The node's own names, with or without its own Origin.
    for host in ["localhost", "127.0.0.1", "cache-1.mgmt.test"] {
        let r = svc
            .admin("/admin/status")
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    let r = method(&svc, "POST", &format!("/admin/objects/pin?key={key}"))
        .header("origin", svc.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the status page's own origin");
    // Probes answer under any name.
    let r = svc
        .admin("/health")
        .header("host", "lb.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    svc.stop().await;
}
