//! "Never an unverified byte" at the edges around a fill: a resumed body never splices two versions,
//! conditionals are answered against the version being filled, a HEAD never invents a length.

use crate::common;

use common::origin::content;
use common::{Env, sha256};
use image_cache::config::{ByteSize, OnMiss, Span};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The store cannot keep an object (it grows past `cache.max_size`): the client's body continues from
/// the origin with `Range` + `If-Range`. Same version: one complete, right body. A version that changed
/// meanwhile (the origin answers 200 to If-Range): the transfer is cut, never completed with the new
/// version's tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_continues_the_same_version_or_cuts_the_transfer() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    c.cache.max_size = ByteSize(1_000_000);
    let svc = env.start(c).await;

    // Unchanged: chunked (no length), 3 MB, so the store gives up at 1 MB and the rest is resumed.
    let body = svc
        .get("/versioned/3000000/0/1")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .expect("the same version resumes into one complete body");
    let want = content(1001, 3_000_000);
    assert_eq!(body.len(), want.len());
    let first_diff = body.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "bodies differ");
    assert_eq!(
        env.origin.state.ranged.load(Ordering::SeqCst),
        1,
        "resumed with a Range"
    );
    svc.settle().await;

    // Changed mid-download: the resume is refused by the origin (200 to If-Range) and the client's
    // transfer ends short.
    let got = svc
        .get("/versioned/3000000/1/1")
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    match got {
        Err(_) => {}
        Ok(b) => panic!(
            "a complete-looking body of {} bytes spliced from two versions (v0 head, v1 tail)",
            b.len()
        ),
    }
    svc.stop().await;
}

/// A client resuming the version it had (its entity tag from an earlier hit) while the cache fills a new
/// version gets the whole new body, not a 206 of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_is_answered_against_the_version_being_filled() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    c.domains[0].revalidate_after = Span(Duration::from_secs(1));
    let svc = env.start(c).await;
    let path = "/versioned/2000000/0/0";
    let first = svc.get(path).send().await.unwrap();
    assert_eq!(first.bytes().await.unwrap().len(), 2_000_000);
    svc.settle().await;
    let hit = svc.get(path).send().await.unwrap();
    let old_etag = hit.headers()["etag"].to_str().unwrap().to_string();
    hit.bytes().await.unwrap();
    // The origin moves to a new version; the stored copy goes stale.
    env.origin.state.version.fetch_add(1, Ordering::SeqCst);
    svc.store().clock().advance(Duration::from_millis(1100));
    let resumed = svc
        .get(path)
        .header("range", "bytes=1000000-")
        .header("if-range", &old_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resumed.status(),
        200,
        "If-Range names another version: the whole body"
    );
    let body = resumed.bytes().await.unwrap();
    assert_eq!(sha256(&body), sha256(&content(1002, 2_000_000)));
    svc.settle().await;
    // A hit of the new version answers If-Range with its own entity tag as a 206.
    let hit = svc.get(path).send().await.unwrap();
    let new_etag = hit.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, old_etag);
    let part = svc
        .get(path)
        .header("range", "bytes=1999990-")
        .header("if-range", &new_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    svc.stop().await;
}

/// HEAD on an object the cache lacks, from an origin that sends no length: no `Content-Length: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_a_cold_object_of_unknown_length_claims_no_length() {
    let env = Env::new().await;
    let svc = env.start(env.config(OnMiss::Fill)).await;
    let r = svc
        .client
        .head(format!("{}/chunked/50000/3", svc.base))
        .header("host", common::DOMAIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let length = r
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        length.is_none() || length.as_deref() == Some("50000"),
        "HEAD claimed Content-Length {length:?}"
    );
    svc.settle().await;
    // Once stored, HEAD tells the real length.
    let r = svc
        .client
        .head(format!("{}/chunked/50000/3", svc.base))
        .header("host", common::DOMAIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-length"], "50000");
    svc.stop().await;
}
