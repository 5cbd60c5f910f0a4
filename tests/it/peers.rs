//! A partition of cache nodes on 127.0.0.1/.2/.3: every key has one owner among the healthy nodes, a miss
//! anywhere is filled through the owner, so the origin sees one download per object however many nodes
//! and clients ask at once; nodes never wait on each other; a node that dies mid-way costs a cut
//! transfer at worst, never a wrong byte.

use crate::common;
use crate::common::Fetch as _;

use common::origin::content;
use common::partition::{Partition, node_ip};
use common::{DOMAIN, Env};
use image_cache::config::Span;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn key(path: &str) -> String {
    format!("file:{DOMAIN}{path}")
}

/// The body, or the transport error of a cut transfer.
async fn get_from(node: &common::Service, path: &str) -> Result<bytes::Bytes, reqwest::Error> {
    node.get(path)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_clients_released_together_on_three_nodes_cause_one_origin_get() {
    let env = Env::new().await;
    // A generous node timeout: if anything waited on it, the elapsed time would show.
    let p = Partition::start(&env, 3, |_, c| {
        c.nodes.peer_timeout = Span(Duration::from_secs(30))
    })
    .await;
    // 3 MB in 64 KiB pieces every 20 ms: about a second from the origin.
    let path = "/slow/3000000/21/65536/20";
    let want = Arc::new(content(21, 3_000_000));
    let gate = Arc::new(tokio::sync::Barrier::new(30));
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..30 {
        let req = p.nodes[i % 3].get(path);
        let (gate, want) = (Arc::clone(&gate), Arc::clone(&want));
        clients.push(tokio::spawn(async move {
            gate.wait().await;
            let body = req.fetch().await;
            assert!(
                body.as_ref() == want.as_slice(),
                "client {i} got wrong bytes"
            );
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let took = started.elapsed();
    assert_eq!(env.origin.gets(path), 1, "one origin GET for the partition");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: something waited on a timeout"
    );
    let owner = p.owner_of(&key(path));
    for (i, node) in p.nodes.iter().enumerate() {
        let served = node
            .metric_sum("image_cache_peer_fills_total", "result=\"served\"")
            .await;
        let fallback = node
            .metric_sum("image_cache_peer_fills_total", "result=\"fallback\"")
            .await;
        assert_eq!(fallback, 0.0, "node {i} fell back to the origin");
        assert_eq!(served, if i == owner { 0.0 } else { 1.0 }, "node {i}");
    }
    for node in &p.nodes {
        node.settle().await;
    }
    // Every node now holds it: the next request anywhere is a hit.
    for node in &p.nodes {
        assert_eq!(node.get(path).fetch().await.len(), 3_000_000);
    }
    assert_eq!(env.origin.gets(path), 1);
    p.stop().await;
}

/// Two nodes get the same cold request in the same instant, over connections opened beforehand: each
/// completes promptly, and the origin sees one GET per object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_missing_the_same_object_at_once_never_wait_on_each_other() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let p = Partition::start(&env, 3, |_, c| {
        c.nodes.peer_timeout = Span(Duration::from_secs(30))
    })
    .await;
    for seed in 0..6u64 {
        let path = format!("/slow/400000/{}/65536/10", 40 + seed);
        let (a, b) = ((seed % 3) as usize, ((seed + 1) % 3) as usize);
        let mut conns = Vec::new();
        for n in [a, b] {
            conns.push(
                tokio::net::TcpStream::connect((node_ip(n), p.port))
                    .await
                    .unwrap(),
            );
        }
        let request = format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n");
        let started = Instant::now();
        for c in &mut conns {
            c.write_all(request.as_bytes()).await.unwrap();
        }
        let want = content(40 + seed, 400_000);
        let reads = conns.into_iter().map(|mut c| async move {
            let mut out = Vec::new();
            c.read_to_end(&mut out).await.unwrap();
            out
        });
        for answer in futures_util::future::join_all(reads).await {
            let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer[..head_end])
            );
            assert!(answer[head_end..] == want[..], "wrong body for {path}");
        }
        let took = started.elapsed();
        // 400 kB from the origin take well under a second; waiting on each other would take the
        // node timeout (30 s) or the read timeout (2 s).
        assert!(took < Duration::from_millis(1500), "{path}: {took:?}");
        assert_eq!(env.origin.gets(&path), 1, "{path}");
    }
    p.stop().await;
}

/// A node whose own fill of a key waits on another node answers a node asking for that key "busy" at
/// once, so the asker goes to the origin: nodes can never wait on each other in a circle, whatever
/// each believes about the others' health.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_waiting_on_a_node_sends_an_asking_node_to_the_origin() {
    let env = Env::new().await;
    // Node 2 is a stand-in that is healthy but never answers anything else: whoever asks it waits.
    let port = common::partition::shared_port(3);
    let fake = tokio::net::TcpListener::bind((node_ip(2), port))
        .await
        .unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = Vec::new();
        while let Ok((mut s, _)) = fake.accept().await {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            if buf[..n].starts_with(b"GET /health") {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nHEALTHY")
                    .await;
            } else {
                held.push(s);
            }
        }
    });
    let mut c = env.config(image_cache::config::OnMiss::Fill);
    c.state_dir = env.dir.path().join("node-a");
    c.http.listen = vec![std::net::SocketAddr::new(node_ip(0), port)];
    c.nodes.self_addr = Some(node_ip(0));
    c.nodes.peers = vec![node_ip(1), node_ip(2)];
    c.nodes.peer_port = port;
    c.nodes.health_interval = Span(Duration::from_millis(100));
    c.nodes.peer_timeout = Span(Duration::from_secs(30));
    let a = env.start(c).await;
    let mut watch = a.running.as_ref().unwrap().peers.watch();
    // Node 1 is not running: only the stand-in comes up.
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|h| h.peers == [node_ip(2)]),
    )
    .await
    .unwrap()
    .unwrap();
    let nodes = [node_ip(0), node_ip(2)];
    let path = (1000..)
        .map(|s| format!("/file/5000/{s}"))
        .find(|p| image_cache::peers::owner::owner(&key(p), &nodes) == Some(node_ip(2)))
        .unwrap();
    // A client's miss on A: A asks the stand-in, which never answers.
    let client = a.get(&path).send();
    let waiting = tokio::spawn(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.store().fills().is_empty() {
        assert!(Instant::now() < deadline, "no fill started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Node 1 (by its address) asks A for the same key: "busy", at once.
    let from_node_1 = reqwest::Client::builder()
        .local_address(node_ip(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = from_node_1
        .get(format!("{}{path}", a.base))
        .header("host", DOMAIN)
        .header("x-image-cache-peer", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-image-cache-peer"], "busy");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The same header from an address that is not a node is an ordinary client: it joins the fill.
    let from_client = common::client()
        .get(format!("{}{path}", a.base))
        .header("host", DOMAIN)
        .header("x-image-cache-peer", "1")
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        from_client.is_err(),
        "an ordinary client waits with the fill"
    );
    waiting.abort();
    a.stop().await;
}

/// The owner dies in the middle of a fill that clients on the other nodes follow: each client gets the
/// whole right body or a cut transfer, never wrong bytes, and a retry succeeds from the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_dying_mid_fill_costs_a_retry_never_a_wrong_byte() {
    let env = Env::new().await;
    let mut p = Partition::start(&env, 3, |_, c| {
        c.nodes.peer_timeout = Span(Duration::from_secs(2));
    })
    .await;
    // 4 MB in 64 KiB pieces every 50 ms: over three seconds.
    let path = (1000..)
        .map(|s| format!("/slow/4000000/{s}/65536/50"))
        .find(|path| p.owner_of(&key(path)) == 0)
        .unwrap();
    let seed: u64 = path.split('/').nth(3).unwrap().parse().unwrap();
    let want = Arc::new(content(seed, 4_000_000));
    let mut clients = Vec::new();
    for i in [1usize, 2, 1, 2] {
        let req = p.nodes[i].get(&path);
        let want = Arc::clone(&want);
        clients.push(tokio::spawn(async move {
            match req.send().await {
                Ok(r) => match r.bytes().await {
                    Ok(body) => {
                        assert!(
                            body.as_ref() == want.as_slice(),
                            "a complete body must be right"
                        );
                        true
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The owner goes away abruptly: connections closed, fills dropped, nothing drained.
    let owner = p.nodes.remove(0);
    let owner_stopped = tokio::spawn(owner.stop_now());
    let mut complete = 0;
    for c in clients {
        if c.await.unwrap() {
            complete += 1;
        }
    }
    owner_stopped.await.unwrap();
    // A retry on either surviving node succeeds (from the origin, or from each other).
    for node in &p.nodes {
        let body = get_from(node, &path).await.expect("a retry succeeds");
        assert!(body.as_ref() == want.as_slice());
    }
    eprintln!("{complete} of 4 clients got the whole body before the owner died");
    let broken = p
        .metric_sum("image_cache_peer_fills_total", "result=\"broken\"")
        .await;
    assert!(
        complete == 4 || broken >= 1.0,
        "cut transfers without a broken peer fill counted"
    );
    p.stop().await;
}

/// A blob asked of three nodes at once is fetched from the registry once: the non-owners fill from
/// the owner and verify its digest like anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_blob_asked_on_three_nodes_at_once_is_fetched_once() {
    use common::oci::FakeRegistry;
    let env = Env::new().await;
    let reg = FakeRegistry::start().await;
    let url = reg.url.clone();
    let p = Partition::start(&env, 3, move |_, c| {
        c.registry.upstreams = [("fake.test:5000".to_string(), url.clone())]
            .into_iter()
            .collect();
    })
    .await;
    let layer = content(77, 2_000_000);
    let digest = reg.put_blob("team/app", layer.clone());
    let gate = Arc::new(tokio::sync::Barrier::new(9));
    let mut clients = Vec::new();
    for i in 0..9 {
        let node = &p.nodes[i % 3];
        let req = node.client.get(format!(
            "{}/v2/team/app/blobs/{digest}?ns=fake.test%3A5000",
            node.base
        ));
        let (gate, want) = (Arc::clone(&gate), layer.clone());
        clients.push(tokio::spawn(async move {
            gate.wait().await;
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.bytes().await.unwrap() == want, "client {i}: wrong bytes");
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let downloads = reg
        .state
        .cdn_log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET ") && l.contains(&digest))
        .count();
    assert_eq!(downloads, 1, "one registry download for the partition");
    let served = p
        .metric_sum("image_cache_peer_fills_total", "result=\"served\"")
        .await;
    assert_eq!(served, 2.0, "the two other nodes filled from the owner");
    p.stop().await;
}

/// Three nodes syncing at once download every image from the origin once: each node's sync fills
/// through the key's owner, like a client miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_syncing_at_once_fetch_each_image_once() {
    use crate::sync::{KEY, configure, images, partitions};
    use common::metal_api::MetalApi;
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = MetalApi::start(KEY, images(&origin), partitions(&origin)).await;
    let p = Partition::start(&env, 3, |_, c| configure(&env, &api, KEY, c)).await;
    let runs = p.nodes.iter().map(|node| {
        node.client
            .post(format!("{}/admin/sync?wait=true", node.base))
            .send()
    });
    for r in futures_util::future::join_all(runs).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        let report: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let ok = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["ok"] == true)
            .count();
        assert!(ok >= 4, "{report:#}");
    }
    for path in [
        "/img/300000/1/img.tar.lz4",
        "/img/200000/2/img.tar.lz4",
        "/img/50000/4/metal-kernel",
        "/img/60000/5/metal-hammer-initrd.img.lz4",
    ] {
        assert_eq!(
            env.origin.gets(path),
            1,
            "{path} downloaded once for the partition"
        );
    }
    p.stop().await;
}

/// `nodes.peers_from`: nodes that know each other only by a name (a Kubernetes headless Service whose
/// addresses include their own) find each other, leave themselves out, and partition keys among
/// themselves: a miss on one node is filled through the key's owner, one origin GET in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_found_through_a_headless_service_name_form_one_partition() {
    let env = Env::new().await;
    let dns = common::dns::Upstream::start().await;
    let p = Partition::start(&env, 3, |_, c| {
        c.dns.upstreams = vec![dns.addr];
        c.nodes.peers = vec![];
        c.nodes.peers_from = Some("nodes.partition.test".into());
    })
    .await;
    for (i, node) in p.nodes.iter().enumerate() {
        let healthy = node.running.as_ref().unwrap().peers.healthy();
        assert!(
            !healthy.peers.contains(&node_ip(i)),
            "node {i} lists itself"
        );
        assert_eq!(healthy.peers.len(), 2, "node {i}: {healthy:?}");
    }
    let path = "/file/70000/5";
    let owner = p.owner_of(&key(path));
    let asker = (owner + 1) % 3;
    let body = get_from(&p.nodes[asker], path).await.unwrap();
    assert_eq!(body.as_ref(), content(5, 70_000).as_slice());
    assert_eq!(env.origin.gets(path), 1);
    assert_eq!(
        p.nodes[owner]
            .metric("image_cache_requests_total{kind=\"file\",result=\"miss\"}")
            .await,
        1.0,
        "the owner filled it"
    );
}

/// A node's 404 about its own store is not the origin's: an owner that does not fill on a miss
/// (`on_miss = proxy`) answers a node "not in my cache", and the asking node goes to the origin instead
/// of telling its client the file does not exist. A 404 the origin gave (through an owner that fills) is
/// passed on without asking the origin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_does_not_hold_a_file_is_not_taken_for_the_origin() {
    let env = Env::new().await;
    let p = Partition::start(&env, 3, |i, c| {
        if i == 1 {
            c.domains[0].on_miss = image_cache::config::OnMiss::Proxy;
        }
    })
    .await;
    let owned_by = |owner: usize, prefix: &str| {
        (0..256)
            .map(|n| format!("{prefix}{n}"))
            .find(|path| p.owner_of(&key(path)) == owner)
            .unwrap()
    };
    let path = owned_by(1, "/file/2000/");
    let seed: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
    let body = get_from(&p.nodes[0], &path)
        .await
        .expect("served from the origin");
    assert_eq!(body.as_ref(), content(seed, 2000).as_slice());
    assert_eq!(env.origin.gets(&path), 1);
    assert_eq!(
        p.nodes[0]
            .metric_sum("image_cache_peer_fills_total", "result=\"fallback\"")
            .await,
        1.0
    );

    // The origin's own 404, relayed by an owner that fills: final, one origin GET in all.
    let missing = owned_by(2, "/status/404/");
    let r = p.nodes[0].get(&missing).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(env.origin.gets(&missing), 1);
    assert_eq!(
        p.nodes[0]
            .metric_sum("image_cache_peer_fills_total", "result=\"refused\"")
            .await,
        1.0
    );
    p.stop().await;
}

/// Peer traffic is plain HTTP: a stored copy an owner serves carries its content digest (the ETag), and the
/// asking node checks the body against it. Here the owner's blob rotted on disk after it was stored: the
/// asking node's client gets a cut transfer and the asking node stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_an_owner_is_checked_against_the_owners_digest() {
    let env = Env::new().await;
    let p = Partition::start(&env, 2, |_, _| {}).await;
    let path = (0..256)
        .map(|n| format!("/file/3000000/{n}"))
        .find(|path| p.owner_of(&key(path)) == 1)
        .unwrap();
    assert_eq!(p.nodes[1].get(&path).fetch().await.len(), 3_000_000);
    p.nodes[1].settle().await;
    let blobs: Vec<_> = common::files_under(&env.dir.path().join("node-1"))
        .into_iter()
        .filter(|f| f.metadata().map(|m| m.len()).ok() == Some(3_000_000))
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&blobs[0])
            .unwrap();
        f.write_all_at(b"rot", 1_000_000).unwrap();
    }
    assert!(
        get_from(&p.nodes[0], &path).await.is_err(),
        "a body that does not hash to the owner's digest is cut"
    );
    p.nodes[0].settle().await;
    let k = image_cache::store::Key::parse(&key(&path)).unwrap();
    assert!(p.nodes[0].store().get(&k).unwrap().is_none(), "stored");
    p.stop().await;
}
