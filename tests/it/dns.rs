//! The DNS interceptor against real sockets on loopback: intercepted answers, NODATA, forwarding to an
//! in-test upstream (cache, NXDOMAIN, TCP fallback), truncation, REFUSED, garbage, peer failover.

use crate::common;

use common::dns::{self, Upstream, a_records, query};
use common::{DOMAIN, Env};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use image_cache::config::{Config, OnMiss, Span};
use std::net::SocketAddr;
use std::time::Duration;

fn dns_config(env: &Env, upstream: SocketAddr) -> Config {
    let mut c = env.config(OnMiss::Fill);
    c.dns.enabled = true;
    c.dns.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.dns.upstreams = vec![upstream];
    c.dns.allow = vec!["127.0.0.1/32".parse().unwrap()];
    c.dns.answer_ttl = Span(Duration::from_secs(42));
    c.nodes.self_addr = Some("127.0.0.1".parse().unwrap());
    c
}

fn name() -> String {
    format!("{DOMAIN}.")
}

#[tokio::test]
async fn intercepted_names_answer_with_this_node_over_udp_and_tcp() {
    let env = Env::new().await;
    let up = Upstream::start().await;
    let svc = env.start(dns_config(&env, up.addr)).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];

    for m in [
        dns::udp(addr, &query(&name(), RecordType::A, true)).await,
        dns::tcp(addr, &query(&name(), RecordType::A, false)).await,
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(a_records(&m), ["127.0.0.1"]);
        assert_eq!(m.answers[0].ttl, 42);
    }
    // Repeats are replayed from the first answer's bytes: each keeps its own ID and spelling.
    for spelling in ["FILES.test.", "files.TEST.", "Files.Test."] {
        let q = query(spelling, RecordType::A, false);
        let m = dns::udp(addr, &q).await;
        assert_eq!(m.metadata.id, q.metadata.id);
        assert_eq!(m.queries[0].name().to_ascii(), spelling);
        assert_eq!(m.answers[0].name.to_ascii(), spelling);
        assert_eq!(a_records(&m), ["127.0.0.1"]);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
    }
    // EDNS answered with our payload size
    let m = dns::udp(addr, &query(&name(), RecordType::A, true)).await;
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);

    // AAAA (no v6 node) and MX: NODATA with the zone's SOA, TTL = answer_ttl
    for t in [RecordType::AAAA, RecordType::MX] {
        let m = dns::udp(addr, &query(&name(), t, false)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty());
        let RData::SOA(soa) = &m.authorities[0].data else {
            panic!("no SOA for {t}");
        };
        assert_eq!(soa.mname.to_string(), format!("ns.{DOMAIN}."));
        assert_eq!(soa.minimum, 42);
    }
    // Nothing reached the upstream for our own names.
    assert_eq!(up.count(&name(), "udp") + up.count(&name(), "tcp"), 0);
    assert!(
        svc.metric("image_cache_dns_queries_total{result=\"intercepted\"}")
            .await
            >= 5.0
    );
    svc.stop().await;
}

#[tokio::test]
async fn other_names_are_forwarded_cached_and_keep_their_rcode() {
    let env = Env::new().await;
    let up = Upstream::start().await;
    let svc = env.start(dns_config(&env, up.addr)).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];

    for _ in 0..3 {
        let m = dns::udp(addr, &query("forwarded.test.", RecordType::A, true)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative);
        assert_eq!(a_records(&m), ["192.0.2.1"]);
        assert!(m.answers[0].ttl <= 300);
    }
    assert_eq!(
        up.count("forwarded.test.", "udp"),
        1,
        "answers come from the cache"
    );

    let m = dns::udp(addr, &query("missing.test.", RecordType::A, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));

    // The upstream truncates this name over UDP: the resolver must have retried over TCP.
    let m = dns::udp(addr, &query("tcponly.test.", RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["192.0.2.9"]);
    assert!(up.count("tcponly.test.", "tcp") >= 1);
    assert!(
        svc.metric("image_cache_dns_queries_total{result=\"forwarded\"}")
            .await
            >= 5.0
    );
    svc.stop().await;
}

/// Repeated forwarded questions are answered from the receive loop's table: each client's own ID and
/// spelling, TTLs counting down from the upstream's, and asked upstream again once a record expired.
#[tokio::test]
async fn forwarded_answers_replay_with_ttls_counting_down_until_they_expire() {
    let env = Env::new().await;
    let up = Upstream::start().await;
    let svc = env.start(dns_config(&env, up.addr)).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];

    let first = dns::udp(addr, &query("short.test.", RecordType::A, true)).await;
    assert_eq!(a_records(&first), ["192.0.2.2"]);
    assert!(first.answers[0].ttl <= 2);
    let mut seen_ttls = Vec::new();
    for spelling in ["SHORT.test.", "short.TEST.", "ShOrT.test."] {
        let q = query(spelling, RecordType::A, true);
        let m = dns::udp(addr, &q).await;
        assert_eq!(m.metadata.id, q.metadata.id);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            spelling,
            "0x20 spelling echoed"
        );
        assert_eq!(a_records(&m), ["192.0.2.2"]);
        assert!(m.answers[0].ttl <= 2, "never longer than the upstream said");
        seen_ttls.push(m.answers[0].ttl);
    }
    assert_eq!(up.count("short.test.", "udp"), 1, "{seen_ttls:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = dns::udp(addr, &query("short.test.", RecordType::A, true)).await;
    assert!(
        m.answers[0].ttl <= 1,
        "a second later: {:?}",
        m.answers[0].ttl
    );
    // Past the record's TTL the upstream is asked again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let m = dns::udp(addr, &query("short.test.", RecordType::A, true)).await;
    assert_eq!(a_records(&m), ["192.0.2.2"]);
    assert_eq!(up.count("short.test.", "udp"), 2);
    svc.stop().await;
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let env = Env::new().await;
    let up = Upstream::start().await;
    let svc = env.start(dns_config(&env, up.addr)).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];

    let m = dns::udp(addr, &query("big.test.", RecordType::TXT, false)).await;
    assert!(m.metadata.truncation, "3 KB do not fit 512 bytes: {m:?}");
    assert!(m.answers.is_empty());
    let m = dns::udp(addr, &query("big.test.", RecordType::TXT, true)).await;
    assert!(m.metadata.truncation, "3 KB do not fit 1232 bytes either");
    let m = dns::tcp(addr, &query("big.test.", RecordType::TXT, false)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 30);
    svc.stop().await;
}

#[tokio::test]
async fn clients_outside_allow_are_refused_on_udp_and_tcp() {
    let env = Env::new().await;
    let up = Upstream::start().await;
    let svc = env.start(dns_config(&env, up.addr)).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];

    for q in [
        query(&name(), RecordType::A, false),
        query("forwarded.test.", RecordType::A, false),
    ] {
        let m = dns::udp_from("127.0.0.2", addr, &q)
            .await
            .expect("udp answer");
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty());
        let m = dns::tcp_from("127.0.0.2", addr, &q)
            .await
            .expect("tcp answer");
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty());
    }
    assert_eq!(
        up.count("forwarded.test.", "udp"),
        0,
        "never an open resolver"
    );
    svc.stop().await;
}

#[tokio::test]
async fn garbage_never_stops_the_server() {
    let env = Env::new().await;
    let up = Upstream::start().await;
    let svc = env.start(dns_config(&env, up.addr)).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let valid = query(&name(), RecordType::A, true).to_vec().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000 {
        let packet: Vec<u8> = match i % 3 {
            // random bytes of random length
            0 => (0..(next() % 600)).map(|_| next() as u8).collect(),
            // a valid query with bytes flipped
            1 => {
                let mut p = valid.clone();
                let at = (next() as usize) % p.len();
                p[at] ^= next() as u8 | 1;
                p
            }
            // a valid query cut short
            _ => valid[..(next() as usize) % valid.len()].to_vec(),
        };
        let _ = sock.send_to(&packet, addr).await;
        if i % 500 == 0 {
            // Let the receive loops keep up: a flood the kernel drops proves nothing.
            tokio::task::yield_now().await;
        }
    }
    // A header-only packet whose body is broken gets FORMERR with its id.
    let mut broken = valid.clone();
    broken.truncate(14);
    sock.send_to(&broken, addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let want_id = u16::from_be_bytes([valid[0], valid[1]]);
    let mut saw_formerr = false;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        if let Ok(m) = Message::from_vec(&buf[..n])
            && m.metadata.id == want_id
            && m.metadata.response_code == ResponseCode::FormErr
        {
            saw_formerr = true;
            break;
        }
    }
    assert!(saw_formerr, "a truncated query gets FORMERR");
    // Still answering, over both transports.
    let m = dns::udp(addr, &query(&name(), RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["127.0.0.1"]);
    let m = dns::tcp(addr, &query(&name(), RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["127.0.0.1"]);
    // 2000 TCP streams of garbage: length prefixes with nonsense, lies about the length, hang-ups
    // mid-frame, a valid query cut short; 50 at a time.
    use tokio::io::AsyncWriteExt;
    let mut streams = Vec::new();
    for i in 0..2000u32 {
        let mut frame: Vec<u8> = match i % 4 {
            0 => {
                let body: Vec<u8> = (0..(next() % 300)).map(|_| next() as u8).collect();
                let mut f = (body.len() as u16).to_be_bytes().to_vec();
                f.extend(body);
                f
            }
            1 => vec![0xff, 0xff, 1, 2, 3],
            2 => {
                let mut f = (valid.len() as u16).to_be_bytes().to_vec();
                f.extend(&valid[..(next() as usize) % valid.len()]);
                f
            }
            _ => (0..(next() % 64)).map(|_| next() as u8).collect(),
        };
        if frame.is_empty() {
            frame.push(0);
        }
        streams.push(tokio::spawn(async move {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let _ = s.write_all(&frame).await;
            }
        }));
        if streams.len() == 50 {
            for t in streams.drain(..) {
                let _ = t.await;
            }
        }
    }
    for t in streams {
        let _ = t.await;
    }
    let m = dns::tcp(addr, &query(&name(), RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["127.0.0.1"]);
    let m = dns::udp(addr, &query(&name(), RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["127.0.0.1"]);
    svc.stop().await;
}

/// A peer's `/health`, switchable between 200 and 503.
/// A peer that only answers `/health` (200 while the flag is up), on `ip` and `port` (0: any).
async fn health_server(
    ip: &str,
    port: u16,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(format!("{ip}:{port}"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let up = std::sync::Arc::new(AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&up);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let flag = std::sync::Arc::clone(&flag);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply: &[u8] = if flag.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nHEALTHY\n"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(reply).await;
            });
        }
    });
    (addr, up)
}

#[tokio::test]
async fn peers_join_answers_after_rising_and_leave_after_falling() {
    use std::sync::atomic::Ordering;
    let env = Env::new().await;
    let up = Upstream::start().await;
    let (peer, peer_up) = health_server("127.0.0.2", 0).await;
    let mut c = dns_config(&env, up.addr);
    c.nodes.peers = vec![peer.ip()];
    c.nodes.peer_port = peer.port();
    c.nodes.health_interval = Span(Duration::from_millis(100));
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];
    let mut watch = svc.running.as_ref().unwrap().peers.watch();

    // Rises after two good polls.
    tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|h| h.peers.len() == 1),
    )
    .await
    .expect("peer rises")
    .unwrap();
    // This node first; peers follow (one peer, so no rotation to see here).
    let m = dns::udp(addr, &query(&name(), RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["127.0.0.1", "127.0.0.2"]);
    assert_eq!(
        svc.metric("image_cache_peer_up{peer=\"127.0.0.2\"}").await,
        1.0
    );

    // Falls after three bad polls, and not before two.
    let t0 = std::time::Instant::now();
    peer_up.store(false, Ordering::SeqCst);
    tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|h| h.peers.is_empty()),
    )
    .await
    .expect("peer falls")
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "hysteresis: one bad poll must not remove a peer"
    );
    let m = dns::udp(addr, &query(&name(), RecordType::A, false)).await;
    assert_eq!(a_records(&m), ["127.0.0.1"]);
    assert_eq!(
        svc.metric("image_cache_peer_up{peer=\"127.0.0.2\"}").await,
        0.0
    );
    svc.stop().await;
}

/// Successive answers on one node put every healthy node first in turn (`rotate`, the default), over
/// UDP (replayed answers included) and TCP; `self-first` keeps this node first and rotates the peers.
#[tokio::test]
async fn answers_rotate_over_every_healthy_node_or_keep_this_node_first() {
    use image_cache::config::AnswerOrder;
    use std::collections::BTreeSet;
    let env = Env::new().await;
    let up = Upstream::start().await;
    let port = common::partition::shared_port(3);
    let _peers = [
        health_server("127.0.0.2", port).await,
        health_server("127.0.0.3", port).await,
    ];
    for order in [AnswerOrder::Rotate, AnswerOrder::SelfFirst] {
        let mut c = dns_config(&env, up.addr);
        c.state_dir = env.dir.path().join(format!("{order:?}"));
        c.nodes.peers = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        c.nodes.peer_port = port;
        c.nodes.health_interval = Span(Duration::from_millis(100));
        c.dns.answer_order = order;
        let svc = env.start(c).await;
        let addr = svc.running.as_ref().unwrap().dns_addrs[0];
        let mut watch = svc.running.as_ref().unwrap().peers.watch();
        tokio::time::timeout(
            Duration::from_secs(5),
            watch.wait_for(|h| h.peers.len() == 2),
        )
        .await
        .expect("peers rise")
        .unwrap();
        let mut answers = Vec::new();
        for i in 0..6 {
            let q = query(&name(), RecordType::A, false);
            let m = if i % 2 == 0 {
                dns::udp(addr, &q).await
            } else {
                dns::tcp(addr, &q).await
            };
            let records = a_records(&m);
            assert_eq!(
                records.len(),
                3,
                "{order:?}: every healthy node: {records:?}"
            );
            answers.push(records);
        }
        let firsts: BTreeSet<&str> = answers.iter().map(|a| a[0].as_str()).collect();
        let seconds: BTreeSet<&str> = answers.iter().map(|a| a[1].as_str()).collect();
        match order {
            AnswerOrder::Rotate => {
                assert_eq!(firsts.len(), 3, "each node leads in turn: {answers:?}");
                for pair in answers.windows(2) {
                    assert_ne!(
                        pair[0][0], pair[1][0],
                        "the lead moves on every answer: {answers:?}"
                    );
                }
            }
            AnswerOrder::SelfFirst => {
                assert_eq!(firsts, BTreeSet::from(["127.0.0.1"]), "{answers:?}");
                assert_eq!(seconds.len(), 2, "the peers still rotate: {answers:?}");
            }
        }
        svc.stop().await;
    }
}

/// An upstream that answers REFUSED is that upstream's problem, not the client's: the next upstream is
/// asked, and when every one refuses the client gets SERVFAIL (as a recursive resolver answers), never a
/// REFUSED that would read as "this server will not serve you".
#[tokio::test]
async fn an_upstream_that_refuses_is_skipped_and_never_relayed() {
    let env = Env::new().await;
    let refusing = Upstream::start_refusing().await;
    let good = Upstream::start().await;
    let mut c = dns_config(&env, refusing.addr);
    c.dns.upstreams = vec![refusing.addr, good.addr];
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];
    let m = dns::udp(addr, &query("forwarded.test.", RecordType::A, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), ["192.0.2.1"], "the second upstream answered");
    let m = dns::udp(addr, &query("nosuch.test.", RecordType::A, false)).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "the good upstream's verdict"
    );
    svc.stop().await;

    // The node's own lookups (origins, peers by name) go the same way.
    let mut c = dns_config(&env, refusing.addr);
    c.dns.upstreams = vec![refusing.addr, good.addr];
    let own = image_cache::upstream::NameResolver::new(&c.dns).unwrap();
    let ips = own.lookup_ip("forwarded.test").await.unwrap();
    assert_eq!(ips, ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]);

    let mut c = dns_config(&env, refusing.addr);
    c.state_dir = env.dir.path().join("only-refusing");
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().dns_addrs[0];
    let m = dns::udp(addr, &query("forwarded.test.", RecordType::A, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = dns::tcp(addr, &query("forwarded.test.", RecordType::A, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    svc.stop().await;
}
