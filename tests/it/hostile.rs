//! Hostile tenants and hostile upstreams (issue 29): another spelling of a configured registry is that
//! registry; a registry's answer reaches a client only in a registry media type; every answer of the
//! registry and file fronts forbids sniffing and runs sandboxed.

use crate::common;

use common::oci::{self, FakeRegistry, Fault, RESOLVE_ACCEPT};
use common::{Env, Service, header};
use image_cache::config::{Config, OnMiss};
use image_cache::store::Key;

/// A configured registry under a public-looking name, so that `registry.open` would admit the name as an
/// unlisted registry if the cache let it.
const CONFIGURED: &str = "mirror.example.net";

fn open_config(env: &Env, reg: &FakeRegistry) -> Config {
    let mut c = env.config(OnMiss::Fill);
    c.registry.upstreams = [(CONFIGURED.to_string(), reg.url.clone())]
        .into_iter()
        .collect();
    c.registry.open = true;
    c.registry.open_ports = vec![443];
    c
}

async fn get(svc: &Service, path: &str) -> reqwest::Response {
    svc.client
        .get(format!("{}{path}", svc.base))
        .header("accept", RESOLVE_ACCEPT)
        .send()
        .await
        .unwrap()
}

/// The headers every registry and file answer carries, whatever its status.
fn assert_untrusted_headers(r: &reqwest::Response, what: &str) {
    assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
    let csp = header(r, "content-security-policy");
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{what}: {csp:?}"
    );
}

#[tokio::test]
async fn another_spelling_of_a_configured_registry_is_that_registry() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let svc = env.start(open_config(&env, &reg)).await;

    // Each spelling asks for a tag of its own, so each must reach a registry: the configured one.
    let spellings = [
        format!("ns={CONFIGURED}:443"),
        "ns=MIRROR.Example.NET%3A0443".to_string(),
        format!("ns={CONFIGURED}:%2B443"),
        format!("ns=registry-1.{CONFIGURED}:443"),
        String::new(),
        format!("ns={CONFIGURED}"),
    ];
    for (i, ns) in spellings.iter().enumerate() {
        let tag = format!("v{i}");
        let image = reg.push_image(
            "library/app",
            &tag,
            &[common::origin::content(i as u64, 300)],
        );
        let path = if ns.is_empty() {
            format!("/v2/{CONFIGURED}:443/library/app/manifests/{tag}")
        } else {
            format!("/v2/library/app/manifests/{tag}?{ns}")
        };
        let r = get(&svc, &path).await;
        let unlisted = i == 3;
        if unlisted {
            // Another host under the configured name is not the configured registry: refused by the
            // dialler (no DNS here), never served from the configured one.
            assert!(r.status().as_u16() >= 500, "{path}: {}", r.status());
            continue;
        }
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "oci-namespace"), CONFIGURED, "{path}");
        assert_eq!(
            oci::digest(&r.bytes().await.unwrap()),
            image.index,
            "{path}"
        );
    }
    // Every spelling reached the configured registry; none was dialled as `https://mirror.example.net`,
    // whose failure would have been a 502 above.
    assert!(reg.count("GET /v2/library/app/manifests/v0") >= 1);
    let keys: Vec<String> = svc
        .store()
        .list("", None, 1000)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert!(
        keys.iter().all(|k| !k.contains(":443")),
        "one registry, one set of keys: {keys:?}"
    );
    svc.stop().await;

    // Without registry.open, the same: a spelling of a configured registry is that registry.
    let mut c = open_config(&env, &reg);
    c.registry.open = false;
    let svc = env.start(c).await;
    let r = get(
        &svc,
        &format!("/v2/library/app/manifests/v0?ns={CONFIGURED}:0443"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = get(
        &svc,
        "/v2/library/app/manifests/v0?ns=elsewhere.example.net",
    )
    .await;
    assert_eq!(r.status(), 404, "an unlisted registry stays unknown");
    svc.stop().await;
}

#[tokio::test]
async fn a_registry_answer_reaches_a_client_only_in_a_registry_media_type() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    reg.push_image("library/app", "1.0", &[common::origin::content(2, 3000)]);
    let page = b"<html><script>fetch('/admin/status')</script></html>".to_vec();
    reg.put_manifest("library/app", Some("page"), "text/html", page.clone());
    reg.fault(
        "/v2/library/app/tags/list",
        Fault::ContentType("text/html; charset=utf-8"),
    );
    let svc = env.start(open_config(&env, &reg)).await;

    // A manifest typed text/html is refused and never stored; the same for the by-digest path.
    let by_tag = format!("/v2/library/app/manifests/page?ns={CONFIGURED}");
    let by_digest = format!(
        "/v2/library/app/manifests/{}?ns={CONFIGURED}",
        oci::digest(&page)
    );
    for path in [&by_tag, &by_digest] {
        let r = get(&svc, path).await;
        assert_eq!(r.status(), 502, "{path}");
        assert_untrusted_headers(&r, path);
        assert_ne!(header(&r, "content-type"), "text/html", "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("text/html"), "{path}: {body}");
    }
    for key in [
        format!("oci:{CONFIGURED}/library/app:page"),
        format!("oci:{CONFIGURED}/library/app@{}", oci::digest(&page)),
    ] {
        assert!(
            svc.store()
                .get(&Key::parse(&key).unwrap())
                .unwrap()
                .is_none(),
            "{key} stored"
        );
    }
    // A listing relayed uncached keeps to the rule too.
    let r = get(&svc, &format!("/v2/library/app/tags/list?ns={CONFIGURED}")).await;
    assert_eq!(r.status(), 502);
    assert_untrusted_headers(&r, "tags/list");
    reg.clear_faults();
    let r = get(&svc, &format!("/v2/library/app/tags/list?ns={CONFIGURED}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    assert_untrusted_headers(&r, "tags/list");

    // A good manifest and the base carry the same headers.
    let r = get(
        &svc,
        &format!("/v2/library/app/manifests/1.0?ns={CONFIGURED}"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_untrusted_headers(&r, "manifest");
    assert_untrusted_headers(&get(&svc, "/v2/").await, "base");
    // So does the file front.
    let r = svc.get("/file/100/1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_untrusted_headers(&r, "file");
    svc.stop().await;
}

/// `include_subdomains` without an `origin`: the client picks the name the cache dials. One that resolves
/// inside (here 127.0.0.43, where an "internal server" listens on 443) is refused for where it leads —
/// the rule of the TLS passthrough — and nothing is stored; `passthrough.allow_targets` lets it through.
#[tokio::test]
async fn a_client_picked_subdomain_never_leads_the_file_front_inside() {
    let env = Env::new().await;
    let dns = common::dns::Upstream::start().await;
    // Root (CI) can listen on 443 and prove no connection is made; elsewhere the refusal's words do.
    let internal = common::Canary::start_on("127.0.0.43:443").await.ok();
    let mut c = env.config(OnMiss::Fill);
    c.dns.upstreams = vec![dns.addr];
    let mut d = image_cache::config::DomainConfig::named("inside.test");
    d.include_subdomains = true;
    c.domains.push(d.clone());
    d.name = "proxied.inside.test".into();
    d.on_miss = OnMiss::Proxy;
    c.domains.push(d);
    let svc = env.start(c.clone()).await;
    for host in ["filled.inside.test", "x.proxied.inside.test"] {
        let r = svc
            .client
            .get(format!("{}/secret/config.json", svc.base))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_untrusted_headers(&r, host);
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(status >= 500, "{host}: {status} {body}");
        assert!(
            body.contains("loopback"),
            "{host}: refused for where it leads: {body}"
        );
    }
    if let Some(canary) = &internal {
        assert_eq!(canary.connections(), 0, "the internal server was dialled");
    }
    assert_eq!(svc.store().object_count(), 0);
    svc.stop().await;

    // Allowed by the operator: dialled (the canary answers nothing, so the fill fails another way).
    c.passthrough.allow_targets = vec!["127.0.0.43/32".parse().unwrap()];
    let svc = env.start(c).await;
    let r = svc
        .client
        .get(format!("{}/secret/config.json", svc.base))
        .header("host", "allowed.inside.test")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains("loopback"), "{body}");
    if let Some(canary) = &internal {
        assert!(canary.connections() >= 1, "an allowed target is dialled");
    }
    svc.stop().await;
}

/// A token endpoint handing out 60 KB tokens and a client pulling 300 repositories: the tokens the cache
/// holds stay within their bound (8 MiB) instead of growing by every repository asked for.
#[tokio::test]
async fn the_token_cache_is_bounded_in_bytes() {
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    reg.state
        .token_padding
        .store(60 * 1024, std::sync::atomic::Ordering::SeqCst);
    let layers = [common::origin::content(3, 100)];
    for i in 0..300 {
        reg.push_image(&format!("team/app-{i}"), "1.0", &layers);
    }
    let svc = env.start(open_config(&env, &reg)).await;
    for i in 0..300 {
        let r = get(
            &svc,
            &format!("/v2/team/app-{i}/manifests/1.0?ns={CONFIGURED}"),
        )
        .await;
        assert_eq!(r.status(), 200, "team/app-{i}");
    }
    assert_eq!(
        reg.state
            .tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst),
        300
    );
    let bytes = svc.metric("image_cache_registry_token_bytes").await;
    let tokens = svc.metric("image_cache_registry_tokens").await;
    assert!(bytes <= (8 << 20) as f64, "{bytes} bytes of tokens held");
    assert!(
        tokens > 50.0 && tokens < 300.0,
        "{tokens} tokens held: bounded, but the recent ones kept"
    );
    svc.stop().await;
}

/// A runtime like the service's, with a small blocking pool: the reproduction of a tenant stopping every
/// fill (hundreds of slow fills against tokio's 512 threads) at a scale a test can run.
fn small_pool_runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// 450 fills whose origins send 1 KiB and then pause (56 times the blocking pool, and more than the upstream
/// client's old 100 connections per thread on a 4-core machine): every client gets its first bytes, and a
/// new file is served meanwhile — a fill holds no thread, and no connection slot others wait for.
#[test]
fn fills_waiting_on_slow_origins_hold_no_thread() {
    small_pool_runtime(8).block_on(async {
        let env = Env::new().await;
        let mut c = env.config(OnMiss::Fill);
        c.upstream.read_timeout = image_cache::config::Span(std::time::Duration::from_secs(30));
        // One test client asks for all of them.
        c.cache.max_fills_per_client = c.cache.max_fills;
        let svc = env.start(c).await;
        let mut slow = Vec::new();
        for i in 0..450 {
            slow.push(tokio::spawn(
                svc.get(&format!("/slow/1000000/{i}/1024/30000")).send(),
            ));
        }
        let mut first_bytes = Vec::new();
        for s in slow {
            let mut r = tokio::time::timeout(std::time::Duration::from_secs(10), s)
                .await
                .expect("every slow fill answers with its head")
                .unwrap()
                .unwrap();
            assert_eq!(r.status(), 200);
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
                .await
                .expect("and its first bytes")
                .unwrap()
                .unwrap();
            assert!(!chunk.is_empty());
            first_bytes.push(r);
        }
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            svc.get("/file/100/1").send(),
        )
        .await
        .expect("a new file is served while 450 fills wait on their origins")
        .unwrap();
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            common::origin::content(1, 100).as_slice()
        );
        assert_eq!(svc.text("/health").await, "HEALTHY");
        drop(first_bytes);
        svc.stop_now().await;
    });
}

/// A node whose blocking work cannot run (here: every blocking thread held) says so: `/health` and
/// `/ready` answer 503 naming the stall, and recover when the threads come back.
#[test]
fn a_node_that_cannot_make_progress_says_so() {
    small_pool_runtime(4).block_on(async {
        let env = Env::new().await;
        let mut c = env.config(OnMiss::Fill);
        c.nodes.health_interval = image_cache::config::Span(std::time::Duration::from_millis(100));
        let svc = env.start(c).await;
        assert_eq!(svc.text("/health").await, "HEALTHY");
        let held: Vec<_> = (0..4)
            .map(|_| {
                tokio::task::spawn_blocking(|| {
                    std::thread::sleep(std::time::Duration::from_secs(3))
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut seen = None;
        while std::time::Instant::now() < deadline {
            let r = svc.admin("/health").send().await.unwrap();
            if r.status() == 503 {
                seen = Some(r.text().await.unwrap());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let said = seen.expect("/health reports the stall within its window");
        assert!(said.contains("no progress"), "{said}");
        let ready = svc.admin("/ready").send().await.unwrap();
        assert_eq!(ready.status(), 503);
        for h in held {
            h.await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(svc.text("/health").await, "HEALTHY");
        assert_eq!(svc.admin("/ready").send().await.unwrap().status(), 200);
        svc.stop().await;
    });
}

/// `cache.max_fills_per_client` and `cache.max_fills`: one address cannot start more fills than its
/// share (503 with Retry-After, counted), another address still can until the node's total; joining a
/// running fill is never refused, and a place comes back when a fill ends.
#[tokio::test]
async fn one_client_cannot_take_every_fill() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    c.upstream.read_timeout = image_cache::config::Span(std::time::Duration::from_secs(30));
    c.cache.max_fills = 6;
    c.cache.max_fills_per_client = 4;
    let svc = env.start(c).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (from("127.0.0.1"), from("127.0.0.2"));
    let ask = |client: &reqwest::Client, path: String| {
        client
            .get(format!("{}{path}", svc.base))
            .header("host", common::DOMAIN)
            .send()
    };
    // The first ends by itself after about two seconds; the others hold their place.
    let mut held = vec![ask(&a, "/slow/3072/0/1024/1000".into()).await.unwrap()];
    for i in 1..4 {
        let r = ask(&a, format!("/slow/100000/{i}/1024/30000"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let refused = ask(&a, "/slow/100000/9/1024/30000".into()).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(header(&refused, "retry-after"), "2");
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("max_fills_per_client")
    );
    // Joining a running fill starts none.
    let joined = ask(&a, "/slow/100000/1/1024/30000".into()).await.unwrap();
    assert_eq!(joined.status(), 200);
    for i in 10..12 {
        let r = ask(&b, format!("/slow/100000/{i}/1024/30000"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "another address has its own share");
        held.push(r);
    }
    let full = ask(&b, "/slow/100000/19/1024/30000".into()).await.unwrap();
    assert_eq!(full.status(), 503);
    assert!(full.text().await.unwrap().contains("cache.max_fills"));
    assert_eq!(
        svc.metric("image_cache_fills_refused_total{reason=\"client\"}")
            .await,
        1.0
    );
    assert_eq!(
        svc.metric("image_cache_fills_refused_total{reason=\"node\"}")
            .await,
        1.0
    );
    // A client that hangs up does not give its place back (the fill runs on: its retry joins it); a fill
    // that ends does.
    drop(joined);
    drop(held.remove(1));
    let r = ask(&a, "/file/100/2".into()).await.unwrap();
    assert_eq!(r.status(), 503);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = ask(&a, "/file/100/2".into()).await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.bytes().await.unwrap().len(), 100);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place came back");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(held);
    svc.stop_now().await;
}

/// Fills in flight count against `cache.max_size`: six clients asking at once for different 8 MB files
/// under a 10 MB cap (and hanging up) cannot fill `tmp/` with 48 MB. The first fill holds its 8 MB; the
/// others are passed through uncached, and every client that stays gets its whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_in_flight_count_against_the_cache_size() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    c.cache.max_size = image_cache::config::ByteSize(10_000_000);
    c.upstream.read_timeout = image_cache::config::Span(std::time::Duration::from_secs(30));
    let svc = env.start(c).await;
    // 8 MB in 1 MiB pieces every 300 ms: about 2.4 s each.
    let paths: Vec<String> = (0..6)
        .map(|i| format!("/slow/8000000/{i}/1048576/300"))
        .collect();
    let mut clients = Vec::new();
    for path in &paths {
        let req = svc.get(path);
        clients.push(tokio::spawn(async move {
            req.send().await.unwrap().bytes().await
        }));
    }
    let tmp = env.state_dir().join("tmp");
    let mut most = 0u64;
    for _ in 0..30 {
        let held: u64 = common::files_under(&tmp)
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        most = most.max(held);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        most <= 10_000_000,
        "tmp/ held {most} bytes under a 10 MB cap"
    );
    for (i, c) in clients.into_iter().enumerate() {
        let body = c.await.unwrap().unwrap();
        assert_eq!(
            body.as_ref(),
            common::origin::content(i as u64, 8_000_000).as_slice()
        );
    }
    assert!(svc.store().total_bytes() <= 10_000_000);
    assert_eq!(svc.metric("image_cache_store_filling_bytes").await, 0.0);
    svc.stop().await;
}
