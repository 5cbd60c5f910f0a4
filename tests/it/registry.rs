//! The `/v2/` front's refusals: the API base, and every refusal a pull-through mirror owes before
//! touching an upstream (write methods, hostile names, unknown `ns`), with OCI error bodies. Pulls are
//! in `registry_pull.rs`.

use crate::common;
use crate::common::Fetch as _;

use common::Env;
use image_cache::config::OnMiss;

/// One raw HTTP/1.1 exchange with a non-intercepted Host (a client library would clean `..` away).
async fn raw(base: &str, method: &str, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: cache.local\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn base_refusals_and_namespaces() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    // No default upstream: a request that names no registry is refused like a foreign one.
    c.registry.default_upstream = Some(String::new());
    let svc = env.start(c).await;
    let base = svc.base.clone();

    let (status, head, body) = raw(&base, "GET", "/v2/").await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "{}");
    assert!(
        head.contains("docker-distribution-api-version: registry/2.0"),
        "{head}"
    );

    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let (status, head, body) = raw(&base, method, "/v2/library/nginx/blobs/uploads/").await;
        assert_eq!(status, 405, "{method}");
        assert!(head.contains("allow: get, head"), "{head}");
        assert_eq!(code(&body), "UNSUPPORTED");
    }

    for (path, want) in [
        (
            "/v2/../../etc/passwd/manifests/latest?ns=docker.io",
            "NAME_INVALID",
        ),
        (
            "/v2/library/%2e%2e/manifests/latest?ns=docker.io",
            "NAME_INVALID",
        ),
        (
            "/v2/Library/Nginx/manifests/latest?ns=docker.io",
            "NAME_INVALID",
        ),
        (
            "/v2/library/nginx/manifests/-bad?ns=docker.io",
            "MANIFEST_INVALID",
        ),
        (
            "/v2/library/nginx/blobs/sha256:xyz?ns=docker.io",
            "DIGEST_INVALID",
        ),
    ] {
        let (status, _, body) = raw(&base, "GET", path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(code(&body), want, "{path}");
    }

    // The host to dial only ever comes from registry.upstreams: a canary listener never sees a
    // connection, whatever `ns` says.
    let canary = common::Canary::start().await;
    let canary_port = canary.port;
    let long = format!("?ns={}", "a".repeat(5000));
    for ns in [
        "?ns=evil.example".to_string(),
        format!("?ns=127.0.0.1:{canary_port}"),
        format!("?ns=127.0.0.1%3A{canary_port}"),
        "?ns=169.254.169.254".into(),
        "?ns=localhost:22".into(),
        "?ns=evil.com/x%3F".into(),
        "?ns=a@b".into(),
        "?ns=%E2%9C%93.example".into(),
        long,
        String::new(),
    ] {
        for path in [
            format!("/v2/library/nginx/manifests/1.27{ns}"),
            format!("/v2/library/nginx/blobs/{D}{ns}"),
        ] {
            let (status, _, body) = raw(&base, "GET", &path).await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(code(&body), "NAME_UNKNOWN", "{path}");
        }
    }
    // A registry-like first component that is not configured is no way in either.
    for path in [
        "/v2/evil.example/library/nginx/manifests/1.27".to_string(),
        format!("/v2/127.0.0.1/x/blobs/{D}"),
    ] {
        let (status, _, body) = raw(&base, "GET", &path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(code(&body), "NAME_UNKNOWN", "{path}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(canary.connections(), 0);

    // Nothing above may have reached any upstream.
    let metrics = svc.admin("/metrics").fetch_text().await;
    assert!(
        !metrics.contains("image_cache_upstream_requests_total{"),
        "an upstream was contacted:\n{metrics}"
    );
    svc.stop().await;
}

/// `registry.open`: unlisted registries are admitted by name, but a name that leads inside (loopback,
/// a private IPv6 address) is refused where it is dialled, an address or a denied name is refused at
/// the front, and the per-registry series stay bounded (`other`). A canary on the port the loopback
/// name points at never sees a connection.
#[tokio::test]
async fn an_open_registry_never_dials_an_internal_address() {
    let env = Env::new().await;
    let dns = common::dns::Upstream::start().await;
    let canary = common::Canary::start().await;
    let port = canary.port;
    let mut c = env.config(OnMiss::Fill);
    c.dns.upstreams = vec![dns.addr];
    c.registry.open = true;
    c.registry.open_ports = vec![443, port];
    c.registry.deny = vec!["*.denied.example.org".into()];
    let svc = env.start(c).await;
    let base = svc.base.clone();

    // Admitted by name, refused by address: the answer says where the name leads.
    for path in [
        format!("/v2/library/app/manifests/1.0?ns=reg-loop.example.net:{port}"),
        format!("/v2/reg-loop.example.net:{port}/library/app/manifests/1.0"),
        format!("/v2/library/app/blobs/{D}?ns=reg-loop.example.net%3A{port}"),
        "/v2/library/app/manifests/1.0?ns=reg-ula.example.net".to_string(),
        "/v2/reg-ula.example.net/library/app/manifests/1.0".to_string(),
    ] {
        let (status, _, body) = raw(&base, "GET", &path).await;
        assert!(status >= 500, "{path}: {status} {body}");
        assert!(
            body.contains("loopback") || body.contains("private"),
            "{path}: the refusal names the address class: {body}"
        );
    }
    // Refused by name before any lookup: addresses, special-use names, ports not opened, deny.
    for (ns, why) in [
        (format!("127.0.0.1:{port}"), "address"),
        ("169.254.169.254".to_string(), "address"),
        ("registry.localhost".into(), "special-use"),
        ("quay.io:8443".into(), "open_ports"),
        ("a.denied.example.org".into(), "registry.deny"),
    ] {
        let (status, _, body) = raw(&base, "GET", &format!("/v2/x/manifests/1?ns={ns}")).await;
        assert_eq!(status, 403, "{ns}: {body}");
        assert_eq!(code(&body), "DENIED", "{ns}");
        assert!(body.contains(why), "{ns}: {body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(canary.connections(), 0, "dialled");

    let metrics = svc.admin("/metrics").fetch_text().await;
    assert!(
        metrics.contains("registry=\"other\""),
        "unlisted registries count as other:\n{metrics}"
    );
    assert!(!metrics.contains("reg-loop"), "{metrics}");
    svc.stop().await;
}

#[tokio::test]
async fn registry_off_leaves_v2_to_the_admin_routes() {
    let env = Env::new().await;
    let mut c = env.config(OnMiss::Fill);
    c.registry.enabled = false;
    let svc = env.start(c).await;
    // Not the mirror: the admin surface, which does not answer a Host that does not name the node (421)
    // and has no /v2/ route (404).
    let (status, _, body) = raw(&svc.base, "GET", "/v2/").await;
    assert_eq!(status, 421);
    assert!(!body.contains("errors"), "{body}");
    let r = svc.admin("/v2/").send().await.unwrap();
    assert_eq!(r.status(), 404);
    svc.stop().await;
}
