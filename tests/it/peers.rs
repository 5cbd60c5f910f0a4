//! Two cache nodes on loopback (127.0.0.1 and 127.0.0.2): a miss on one is filled from the other before
//! the origin, and a peer's request is answered from its store only, so nodes never loop.

use crate::common;
use crate::common::Fetch as _;

use common::origin::content;
use common::{DOMAIN, Env};
use image_cache::config::{OnMiss, Span};
use std::time::Duration;

#[tokio::test]
async fn a_miss_is_filled_from_a_healthy_peer_before_the_origin() {
    let env = Env::new().await;
    // Node B, the peer, on 127.0.0.2.
    let mut b = env.config(OnMiss::Fill);
    b.state_dir = env.dir.path().join("node-b");
    b.http.listen = vec!["127.0.0.2:0".parse().unwrap()];
    let b = env.start(b).await;
    let b_addr = b.running.as_ref().unwrap().http_addrs[0];

    // Node A knows B as its peer.
    let mut a = env.config(OnMiss::Fill);
    a.state_dir = env.dir.path().join("node-a");
    a.nodes.peers = vec![b_addr.ip()];
    a.nodes.peer_port = b_addr.port();
    a.nodes.health_interval = Span(Duration::from_millis(100));
    let a = env.start(a).await;
    let mut watch = a.running.as_ref().unwrap().peers.watch();
    tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|h| h.peers.len() == 1),
    )
    .await
    .expect("peer B comes up")
    .unwrap();

    // B has the object (one origin GET); A's miss is served from B without touching the origin.
    let path = "/file/400000/11";
    let from_b = b.get(path).fetch().await;
    assert_eq!(from_b.as_ref(), content(11, 400_000).as_slice());
    b.settle().await;
    let from_a = a.get(path).send().await.unwrap();
    assert_eq!(from_a.status(), 200);
    assert_eq!(
        from_a.bytes().await.unwrap().as_ref(),
        content(11, 400_000).as_slice()
    );
    a.settle().await;
    assert_eq!(
        env.origin.gets(path),
        1,
        "the second node filled from its peer"
    );
    assert!(
        a.metric("image_cache_upstream_requests_total{kind=\"peer\",status=\"200\"}")
            .await
            >= 1.0
    );
    // A now holds it itself.
    let again = a.get(path).fetch().await;
    assert_eq!(again.len(), 400_000);
    assert_eq!(env.origin.gets(path), 1);

    // Neither node has this one: A asks B (who answers 404 from its store, without filling), then the
    // origin. Exactly one origin GET, and B stored nothing.
    let path = "/file/5000/12";
    let r = a.get(path).send().await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        content(12, 5000).as_slice()
    );
    a.settle().await;
    assert_eq!(env.origin.gets(path), 1);
    let key = image_cache::store::Key::file(
        DOMAIN,
        &image_cache::store::FilePath::from_request(path).unwrap(),
    )
    .unwrap();
    assert!(
        b.store().get(&key).unwrap().is_none(),
        "a peer request never fills"
    );
    a.stop().await;
    b.stop().await;
}
