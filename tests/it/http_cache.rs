//! The file cache against a real HTTPS origin on loopback: hits, misses, coalescing, Range, conditional
//! requests, revalidation, and every way the origin or the client can misbehave.

use crate::common;
use crate::common::Fetch as _;

use common::origin::content;
use common::{DOMAIN, Env, files_under, sha256};
use futures_util::StreamExt;
use image_cache::config::{OnMiss, Span};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Compares bodies by hash so a failure prints two digests, not megabytes.
fn same(a: &[u8], b: &[u8]) -> bool {
    let equal = a == b;
    if !equal {
        eprintln!(
            "body {} ({} bytes) != {} ({} bytes)",
            sha256(a),
            a.len(),
            sha256(b),
            b.len()
        );
    }
    equal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_then_warm_with_one_origin_fetch() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let want = content(7, 300_000);
    for round in 0..3 {
        let resp = svc.get("/file/300000/7").send().await.unwrap();
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.headers()["content-length"], "300000");
        assert_eq!(resp.headers()["content-type"], "application/x-test");
        assert!(
            same(resp.bytes().await.unwrap().as_ref(), want.as_slice()),
            "round {round}"
        );
        svc.settle().await;
    }
    assert_eq!(env.origin.gets("/file/300000/7"), 1);
    assert_eq!(
        svc.metric("image_cache_requests_total{kind=\"file\",result=\"miss\"}")
            .await,
        1.0
    );
    assert_eq!(
        svc.metric("image_cache_requests_total{kind=\"file\",result=\"hit\"}")
            .await,
        2.0
    );
    assert_eq!(svc.metric("image_cache_store_objects").await, 1.0);
    assert_eq!(svc.metric("image_cache_store_bytes").await, 300_000.0);
    assert_eq!(
        svc.metric("image_cache_bytes_served_total{source=\"upstream\"}")
            .await,
        300_000.0,
        "the miss, streamed while it filled"
    );
    assert_eq!(
        svc.metric("image_cache_bytes_served_total{source=\"cache\"}")
            .await,
        600_000.0,
        "two hits"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cold_gets_make_one_origin_get() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    // Fifty readers and the fill share two cores with the origin: the test's 2 s head timeout is about
    // broken origins, not this one, and a busy machine (CI building beside it) can exceed it.
    c.upstream.read_timeout = Span(Duration::from_secs(15));
    let svc = env.start(c).await;
    const SIZE: u64 = 200_000_000;
    let path = format!("/slow/{SIZE}/42/4000000/20");
    let want = sha256(&content(42, SIZE));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let req = svc.get(&path);
        tasks.push(tokio::spawn(async move {
            use sha2::Digest;
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut hasher = sha2::Sha256::new();
            let mut n = 0u64;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap();
                n += chunk.len() as u64;
                hasher.update(&chunk);
            }
            (n, hex::encode(hasher.finalize()))
        }));
    }
    for t in tasks {
        let (n, digest) = t.await.unwrap();
        assert_eq!(n, SIZE);
        assert_eq!(digest, want, "every body byte-identical to the origin's");
    }
    assert_eq!(env.origin.gets(&path), 1, "exactly one origin GET");
    let coalesced = svc.metric("image_cache_fills_coalesced_total").await;
    let misses = svc
        .metric("image_cache_requests_total{kind=\"file\",result=\"miss\"}")
        .await;
    let hits = svc
        .metric("image_cache_requests_total{kind=\"file\",result=\"hit\"}")
        .await;
    assert_eq!(misses + hits, 50.0);
    assert_eq!(
        misses,
        coalesced + 1.0,
        "joiners count as misses and as coalesced"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_a_cold_object_is_served_while_it_fills() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    // 2 MB dripped in 64 KiB pieces every 100 ms: the fill takes over 3 s.
    let path = "/slow/2000000/5/65536/100";
    let want = content(5, 2_000_000);
    let resp = svc
        .get(path)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 1000-1999/2000000");
    assert_eq!(
        svc.store().fills().len(),
        1,
        "the range was answered (headers) while the fill was still running"
    );
    // Its last byte comes only once the whole object is verified.
    assert!(same(
        resp.bytes().await.unwrap().as_ref(),
        &want[1000..2000]
    ));
    // A second range further in joins the same fill.
    let resp = svc
        .get(path)
        .header("range", "bytes=1500000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert!(same(
        resp.bytes().await.unwrap().as_ref(),
        &want[1_500_000..]
    ));
    assert_eq!(env.origin.gets(path), 1);
    assert_eq!(
        env.origin.state.ranged.load(Ordering::SeqCst),
        0,
        "the fill fetches the whole object"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_answer_range_head_and_conditional_requests() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let want = content(9, 10_000);
    svc.get("/file/10000/9").fetch().await;
    svc.settle().await;

    let resp = svc.get("/file/10000/9").send().await.unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = resp.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(etag.starts_with("\"sha256:"), "{etag}");
    assert_eq!(etag, format!("\"sha256:{}\"", sha256(&want)));
    assert_eq!(
        last_modified, "Tue, 14 Nov 2023 22:13:20 GMT",
        "the origin's Last-Modified is kept"
    );

    let r = svc
        .get("/file/10000/9")
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/10000");
    assert!(same(r.bytes().await.unwrap().as_ref(), &want[10..20]));

    let r = svc
        .get("/file/10000/9")
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert!(same(r.bytes().await.unwrap().as_ref(), &want[9995..]));

    let r = svc
        .get("/file/10000/9")
        .header("range", "bytes=20000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10000");

    let r = svc
        .client
        .head(format!("{}/file/10000/9", svc.base))
        .header("host", DOMAIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");

    let r = svc
        .get("/file/10000/9")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = svc
        .get("/file/10000/9")
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = svc
        .get("/file/10000/9")
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = svc
        .get("/file/10000/9")
        .header("range", "bytes=0-0")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a failed If-Range gets the whole body");
    assert_eq!(env.origin.total_gets(), 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_rejected_before_anything_is_touched() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let before: Vec<_> = files_under(env.dir.path());
    let long = format!("/{}", "a".repeat(300));
    let very_long = "/abcdefgh".repeat(600);
    for path in [
        "/file/../../etc/passwd",
        "/file/%2e%2e/%2e%2e/etc/passwd",
        "/file/%2E%2E%2Fetc%2Fpasswd",
        "/file/..%2f..%2fetc",
        "/file/a%5c..%5cb",
        "/file/%00",
        "/file//double",
        "/file/./dot",
        "/file/%0d%0aInjected:1",
        long.as_str(),
        very_long.as_str(),
        "/file/a\\..\\b",
    ] {
        // Raw requests: an HTTP client library would normalise `..` away before sending.
        let raw = common::raw_get(&svc.base, path).await;
        assert!(
            raw.starts_with("HTTP/1.1 400"),
            "{path}: {}",
            raw.lines().next().unwrap_or_default()
        );
    }
    assert_eq!(env.origin.total_gets(), 0, "nothing reached the origin");
    let after: Vec<_> = files_under(env.dir.path());
    assert_eq!(before, after, "no file appeared or vanished");
    assert!(after.iter().all(|p| p.starts_with(env.dir.path())));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_never_reach_the_file_cache() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    for host in [
        "evil.test",
        "127.0.0.1",
        "files.test.evil.test",
        "sub.files.test",
    ] {
        let r = svc
            .client
            .get(format!("{}/file/100/1", svc.base))
            .header("host", host)
            .send()
            .await
            .unwrap();
        // The admin surface: 404 under a name of this node, 421 under any other.
        let want = if host == "127.0.0.1" { 404 } else { 421 };
        assert_eq!(r.status(), want, "{host}");
    }
    assert_eq!(env.origin.total_gets(), 0);
    let r = svc.admin("/health").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "HEALTHY");
    assert_eq!(svc.admin("/ready").send().await.unwrap().status(), 200);
    let html = svc.admin("/").fetch_text().await;
    assert!(html.contains("image-cache") && html.contains("objects"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_failures_give_clear_statuses_and_store_nothing() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let cases = [
        ("/status/404", 404),
        ("/status/410", 410),
        ("/status/500", 502),
        ("/status/403", 502),
        ("/hang", 504),
    ];
    for (path, want) in cases {
        let r = svc.get(path).send().await.unwrap();
        assert_eq!(r.status(), want, "{path}");
    }
    // Wrong length: the origin announces 1 MB and closes after half. The client must not get a complete
    // looking body.
    let r = svc.get("/short/1000000/3").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a broken fill aborts the response"
    );
    assert_eq!(svc.store().object_count(), 0, "nothing stored");
    assert_eq!(
        files_under(&env.state_dir().join("tmp")).len(),
        0,
        "no temp litter"
    );
    assert!(
        svc.metric("image_cache_requests_total{kind=\"file\",result=\"error\"}")
            .await
            >= 5.0
    );

    // A body in a content coding nobody asked for is not the file: refused, never stored.
    for _ in 0..2 {
        let r = svc.get("/gzip/disk.img").send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert!(r.text().await.unwrap().contains("Content-Encoding `gzip`"));
    }
    assert_eq!(env.origin.gets("/gzip/disk.img"), 2, "nothing stored");
    assert!(
        svc.store()
            .get(&image_cache::store::Key::parse("file:files.test/gzip/disk.img").unwrap())
            .unwrap()
            .is_none()
    );

    // Origin gone entirely.
    env.origin.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = svc.get("/file/100/1").send().await.unwrap();
    assert_eq!(r.status(), 502);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_aborts_every_reader() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let req = svc.get("/short/4000000/8");
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            r.bytes().await.map(|b| b.len())
        }));
    }
    for t in tasks {
        assert!(
            t.await.unwrap().is_err(),
            "every reader sees an aborted body"
        );
    }
    assert_eq!(svc.store().object_count(), 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_chunked_origins_are_stored_under_the_requested_key() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let r = svc.get("/redirect/file/5000/11").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(same(
        r.bytes().await.unwrap().as_ref(),
        content(11, 5000).as_slice()
    ));
    let r = svc.get("/chunked/123456/12").send().await.unwrap();
    assert!(same(
        r.bytes().await.unwrap().as_ref(),
        content(12, 123_456).as_slice()
    ));
    svc.settle().await;
    let keys: Vec<String> = svc
        .store()
        .list("", None, 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "file:files.test/chunked/123456/12",
            "file:files.test/redirect/file/5000/11"
        ]
    );
    for p in ["/redirect/file/5000/11", "/chunked/123456/12"] {
        svc.get(p).fetch().await;
    }
    assert_eq!(env.origin.gets("/file/5000/11"), 1);
    assert_eq!(env.origin.gets("/chunked/123456/12"), 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_miss_redirect_and_proxy() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Redirect)).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/metal-os/img.tar.lz4?x=1&y=2", svc.base))
        .header("host", DOMAIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"],
        "https://files.test/metal-os/img.tar.lz4?x=1&y=2"
    );
    svc.stop().await;

    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Proxy)).await;
    for _ in 0..2 {
        let r = svc.get("/file/4096/2").send().await.unwrap();
        assert!(same(
            r.bytes().await.unwrap().as_ref(),
            content(2, 4096).as_slice()
        ));
    }
    assert_eq!(env.origin.gets("/file/4096/2"), 2, "proxy does not store");
    assert_eq!(svc.store().object_count(), 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_keeps_copies_current_and_survives_a_dead_origin() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    config.domains[0].revalidate_after = Span(Duration::from_secs(2));
    let svc = env.start(config).await;
    let clock = svc.store().clock().clone();
    let key = image_cache::store::Key::parse("file:files.test/mutable/a").unwrap();
    let text = |r: reqwest::Response| async move { r.text().await.unwrap() };
    macro_rules! fetch {
        () => {{
            let t = text(svc.get("/mutable/a").send().await.unwrap()).await;
            svc.settle().await;
            t
        }};
    }
    // The service's clock set to `ms` after the copy was last validated.
    let age_to = |ms: u64| {
        let validated = svc.store().get(&key).unwrap().unwrap().validated_ms;
        clock.advance(Duration::from_millis(
            (validated + ms).saturating_sub(clock.now_millis()),
        ));
    };
    assert_eq!(fetch!(), "version 1\n");
    // The window holds to the millisecond: fresh at 1.95 s of a 2 s window (whole-second ages would
    // already call it 2 s old whenever the fill was more than 0.05 s into its second)...
    age_to(1950);
    assert_eq!(fetch!(), "version 1\n");
    assert_eq!(
        env.origin.gets("/mutable/a"),
        1,
        "fresh copies are served without asking"
    );
    // ...and stale just past it: revalidated with If-None-Match, the 304 keeps the copy.
    age_to(2050);
    assert_eq!(fetch!(), "version 1\n");
    assert_eq!(
        env.origin.state.conditional_gets.load(Ordering::SeqCst),
        1,
        "stale copy revalidated with If-None-Match"
    );

    env.origin.state.version.store(2, Ordering::SeqCst);
    age_to(2050);
    assert_eq!(fetch!(), "version 2\n", "changed content replaces the copy");
    assert_eq!(svc.store().object_count(), 1);
    assert_eq!(
        svc.metric("image_cache_store_bytes").await,
        10.0,
        "the old blob is released"
    );

    env.origin.stop();
    age_to(2050);
    assert_eq!(fetch!(), "version 2\n", "origin down: stored copy served");
    assert_eq!(
        svc.metric("image_cache_requests_total{kind=\"file\",result=\"stale\"}")
            .await,
        1.0
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_signed_by_an_unknown_ca_is_refused() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    config.upstream.ca_file = None;
    let svc = env.start(config).await;
    let r = svc.get("/file/100/4").send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(svc.store().object_count(), 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_store_under_its_size_and_spares_pins() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    config.cache.max_size = image_cache::config::ByteSize(1_000_000);
    let svc = env.start(config).await;
    svc.get("/file/300000/1").fetch().await;
    svc.settle().await;
    let pinned = image_cache::store::Key::parse("file:files.test/file/300000/1").unwrap();
    assert!(svc.store().set_pinned(&pinned, true).unwrap());
    for seed in 2..6 {
        svc.get(&format!("/file/300000/{seed}")).fetch().await;
        svc.settle().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = svc.store().clone();
    tokio::task::spawn_blocking(move || store.gc())
        .await
        .unwrap()
        .unwrap();
    assert!(
        svc.store().total_bytes() <= 900_000,
        "down to 90% of max_size: {}",
        svc.store().total_bytes()
    );
    assert!(
        svc.store().get(&pinned).unwrap().is_some(),
        "the pinned key survives"
    );
    assert!(svc.metric("image_cache_evictions_total").await >= 1.0);
    let blobs = files_under(&env.state_dir().join("blobs"));
    assert_eq!(
        blobs.len() as u64,
        svc.store().object_count(),
        "evicted blobs are unlinked"
    );
    svc.stop().await;
}
