//! TLS passthrough with a real TLS client against the in-test origin: end-to-end TLS verified by the
//! client, unknown and missing SNI closed, idle connections closed, the connection limit enforced.

use crate::common;

use common::Env;
use common::origin::content;
use image_cache::config::{Config, DomainConfig, OnMiss, Span};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Intercepts `localhost` (the name in the origin's certificate) with the test origin behind it.
fn config(env: &Env) -> Config {
    let mut c = env.config(OnMiss::Fill);
    let mut d = DomainConfig::named("localhost");
    d.origin = Some(env.origin.url());
    c.domains.push(d);
    c.passthrough.enabled = true;
    c.passthrough.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c
}

fn connector(env: &Env) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut env.ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls(
    env: &Env,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector(env).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One request; reads the head, then exactly Content-Length bytes (the origin keeps connections alive).
async fn get(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> Vec<u8> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let split = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = buf[split + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    body
}

#[tokio::test]
async fn intercepted_sni_reaches_the_origin_with_end_to_end_tls() {
    let env = Env::new().await;
    let svc = env.start(config(&env)).await;
    let addr = svc.running.as_ref().unwrap().passthrough_addrs[0];

    // The client verifies the origin's certificate (issued by the test CA for `localhost`): the TLS
    // session is with the origin, image-cache only moved bytes.
    let mut s = tls(&env, addr, "localhost")
        .await
        .expect("handshake through passthrough");
    let body = get(&mut s, "/file/300000/7").await;
    assert_eq!(body, content(7, 300_000));
    assert_eq!(env.origin.gets("/file/300000/7"), 1);
    svc.stop().await;
}

#[tokio::test]
async fn unknown_or_missing_sni_is_closed_without_a_byte() {
    let env = Env::new().await;
    let svc = env.start(config(&env)).await;
    let addr = svc.running.as_ref().unwrap().passthrough_addrs[0];

    assert!(tls(&env, addr, "not-intercepted.test").await.is_err());
    // An IP as server name: rustls sends no SNI at all.
    assert!(tls(&env, addr, "127.0.0.1").await.is_err());
    // Not TLS: closed, nothing written back.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(env.origin.total_gets(), 0);
    svc.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_limit_holds() {
    let env = Env::new().await;
    let mut c = config(&env);
    c.passthrough.idle_timeout = Span(Duration::from_secs(1));
    c.passthrough.max_connections = 1;
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().passthrough_addrs[0];

    let mut first = tls(&env, addr, "localhost")
        .await
        .expect("first connection");
    // The limit is 1: a second connection is closed while the first is open.
    assert!(tls(&env, addr, "localhost").await.is_err());
    // Quiet for longer than idle_timeout: closed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection must be closed"
    );
    drop(first);
    // The slot is free again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = tls(&env, addr, "localhost").await.expect("slot freed");
    assert_eq!(get(&mut again, "/file/1000/1").await, content(1, 1000));
    svc.stop().await;
}

/// A client outside `passthrough.allow` is closed at accept: nothing sent, no origin connection.
#[tokio::test]
async fn clients_outside_passthrough_allow_are_closed_before_anything_is_dialled() {
    use std::sync::atomic::Ordering;
    let env = Env::new().await;
    let mut c = config(&env);
    c.passthrough.allow = Some(vec!["10.0.0.0/8".parse().unwrap()]);
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().passthrough_addrs[0];
    assert!(tls(&env, addr, "localhost").await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.origin.state.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(
        svc.metric("image_cache_passthrough_connections_total{result=\"client\"}")
            .await,
        1.0
    );
    svc.stop().await;
}

/// Under `include_subdomains` the client picks the name: one that resolves to an internal address
/// (here 127.0.0.1) is refused, never spliced.
#[tokio::test]
async fn a_client_picked_subdomain_that_leads_inside_is_refused() {
    let env = Env::new().await;
    let up = common::dns::Upstream::start().await;
    let mut c = config(&env);
    c.dns.upstreams = vec![up.addr];
    let mut d = DomainConfig::named("loop.test");
    d.include_subdomains = true;
    c.domains.push(d);
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().passthrough_addrs[0];
    assert!(tls(&env, addr, "internal.loop.test").await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        svc.metric("image_cache_passthrough_connections_total{result=\"target\"}")
            .await,
        1.0,
        "refused for where it leads, not for failing to connect"
    );
    svc.stop().await;
}

/// Slowloris: one client opening many connections and never finishing a ClientHello holds at most
/// `max_per_client` of them, each only until `hello_timeout`; other clients are served meanwhile.
#[tokio::test]
async fn slow_client_hellos_cannot_exhaust_the_slots() {
    let env = Env::new().await;
    let mut c = config(&env);
    c.passthrough.max_per_client = 4;
    c.passthrough.hello_timeout = Span(Duration::from_secs(1));
    let svc = env.start(c).await;
    let addr = svc.running.as_ref().unwrap().passthrough_addrs[0];
    let mut slow = Vec::new();
    for _ in 0..12 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0x16]).await.unwrap(); // the first byte of a TLS record, then nothing
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        svc.metric("image_cache_passthrough_connections_total{result=\"per_client\"}")
            .await,
        8.0
    );
    // Another machine is served while the slow one holds its four slots.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = other.connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost".to_string()).unwrap();
    let mut s = connector(&env)
        .connect(name, tcp)
        .await
        .expect("another client is served");
    assert_eq!(get(&mut s, "/file/1000/2").await, content(2, 1000));
    // The slow client's connections are closed at the hello deadline, freeing its slots.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        svc.metric("image_cache_passthrough_connections_total{result=\"hello\"}")
            .await
            >= 4.0
    );
    let mut again = tls(&env, addr, "localhost").await.expect("slots freed");
    assert_eq!(get(&mut again, "/file/1000/3").await, content(3, 1000));
    drop(slow);
    svc.stop().await;
}
