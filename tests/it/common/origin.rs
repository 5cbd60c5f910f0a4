//! An HTTPS origin on 127.0.0.1 with a CA made in the test. Behaviour is chosen by path, every request is
//! counted, and the server can be stopped to play "the internet is gone".

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

pub(crate) struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "image-cache test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// Deterministic bytes for (seed, offset): what `/file/<size>/<seed>` serves.
pub(crate) fn content(seed: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

#[derive(Default)]
pub(crate) struct OriginState {
    pub gets: Mutex<HashMap<String, u64>>,
    pub conditional_gets: AtomicU64,
    /// Version served at `/mutable/*`; bump it to change the content.
    pub version: AtomicU64,
    /// Requests seen with a Range header.
    pub ranged: AtomicU64,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Set by `stop`: open keep-alive connections answer nothing more.
    pub stopped: std::sync::atomic::AtomicBool,
    /// Path → the status every request for it is answered with (429 and 503 with `Retry-After: 1`).
    pub statuses: Mutex<HashMap<String, u16>>,
}

pub(crate) struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub(crate) async fn start(ca: &TestCa) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(ca.server_config());
        let state = Arc::new(OriginState::default());
        state.version.store(1, Ordering::SeqCst);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve_conn(tls, st).await;
                    }
                });
            }
        });
        Origin { addr, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub(crate) fn gets(&self, path: &str) -> u64 {
        self.state
            .gets
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn total_gets(&self) -> u64 {
        self.state.gets.lock().unwrap().values().sum()
    }

    pub(crate) fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    st: Arc<OriginState>,
) -> std::io::Result<()> {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if io.read(&mut byte).await? == 0 {
                return Ok(());
            }
            head.push(byte[0]);
            if head.len() > 65536 {
                return Ok(());
            }
        }
        if st.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or_default().to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        if method == "GET" {
            *st.gets.lock().unwrap().entry(path.clone()).or_default() += 1;
        }
        if headers.contains_key("if-none-match") || headers.contains_key("if-modified-since") {
            st.conditional_gets.fetch_add(1, Ordering::SeqCst);
        }
        if headers.contains_key("range") {
            st.ranged.fetch_add(1, Ordering::SeqCst);
        }
        let keep = respond(&mut io, &method, &path, &headers, &st).await?;
        if !keep {
            return Ok(());
        }
    }
}

fn seg(path: &str, i: usize) -> u64 {
    path.split('/')
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Writes one response; returns whether the connection may be reused.
async fn respond<S: tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    st: &OriginState,
) -> std::io::Result<bool> {
    let head_only = method == "HEAD";
    let forced = st.statuses.lock().unwrap().get(path).copied();
    if let Some(code) = forced {
        let retry = if matches!(code, 429 | 503) {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        io.write_all(
            format!("HTTP/1.1 {code} Forced\r\n{retry}Content-Length: 0\r\n\r\n").as_bytes(),
        )
        .await?;
        return Ok(true);
    }
    let kind = path.split('/').nth(1).unwrap_or_default();
    match kind {
        // /img/<size>/<seed>/<name> with `<name>.md5` (md5sum format) next to it; /badimg/… has a sidecar
        // that does not match; /nomd5/… has none; /slowimg/<size>/<seed>/<delay ms>/<name> is an /img/
        // whose body starts `delay` after its headers.
        "img" | "badimg" | "nomd5" | "slowimg" if path.ends_with(".md5") => {
            use md5::Digest as _;
            let (size, seed) = (seg(path, 2), seg(path, 3));
            if kind == "nomd5" {
                io.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await?;
                return Ok(true);
            }
            let mut sum = hex::encode(md5::Md5::digest(content(seed, size)));
            if kind == "badimg" {
                sum = "0123456789abcdef0123456789abcdef".into();
            }
            let name = path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".md5");
            let body = format!("{sum}  {name}\n");
            io.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            )
            .await?;
            if !head_only {
                io.write_all(body.as_bytes()).await?;
            }
            Ok(true)
        }
        "img" | "badimg" | "nomd5" | "slowimg" => {
            let (size, seed) = (seg(path, 2), seg(path, 3));
            io.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            if kind == "slowimg" && !head_only {
                io.flush().await?;
                tokio::time::sleep(Duration::from_millis(seg(path, 4))).await;
            }
            if !head_only {
                io.write_all(&content(seed, size)).await?;
            }
            Ok(true)
        }
        // /file/<size>/<seed>, /slow/<size>/<seed>/<chunk>/<delay ms>
        "file" | "slow" => {
            let (size, seed) = (seg(path, 2), seg(path, 3));
            let etag = format!("\"{seed}-{size}\"");
            if headers.get("if-none-match") == Some(&etag) {
                return not_modified(io, &etag).await;
            }
            let body = content(seed, size);
            let (status, start, end) = match headers.get("range").and_then(|r| parse_range(r, size))
            {
                Some((s, e)) => ("206 Partial Content", s, e),
                None => ("200 OK", 0, size),
            };
            let mut h = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/x-test\r\nETag: {etag}\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nAccept-Ranges: bytes\r\n",
                end - start
            );
            if status.starts_with("206") {
                h.push_str(&format!(
                    "Content-Range: bytes {start}-{}/{size}\r\n",
                    end - 1
                ));
            }
            h.push_str("\r\n");
            io.write_all(h.as_bytes()).await?;
            if head_only {
                return Ok(true);
            }
            let data = &body[start as usize..end as usize];
            if kind == "slow" {
                let chunk = seg(path, 4).max(1) as usize;
                let delay = Duration::from_millis(seg(path, 5));
                for piece in data.chunks(chunk) {
                    io.write_all(piece).await?;
                    io.flush().await?;
                    tokio::time::sleep(delay).await;
                }
            } else {
                io.write_all(data).await?;
            }
            io.flush().await?;
            Ok(true)
        }
        // /chunked/<size>/<seed>[/<delay ms>]: no Content-Length; 10 000-byte chunks, `delay` apart
        "chunked" => {
            let body = content(seg(path, 3), seg(path, 2));
            let delay = Duration::from_millis(seg(path, 4));
            io.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            for piece in body.chunks(10_000) {
                io.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                io.write_all(piece).await?;
                io.write_all(b"\r\n").await?;
                if !delay.is_zero() {
                    io.flush().await?;
                    tokio::time::sleep(delay).await;
                }
            }
            io.write_all(b"0\r\n\r\n").await?;
            io.flush().await?;
            Ok(true)
        }
        // /status/<code>
        "status" => {
            let code = seg(path, 2);
            io.write_all(
                format!("HTTP/1.1 {code} Test\r\nContent-Length: 4\r\n\r\nnope").as_bytes(),
            )
            .await?;
            Ok(true)
        }
        // /hang: never answers
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(false)
        }
        // /short/<size>/<seed>: announces <size>, sends half after a pause, then closes.
        "short" => {
            let size = seg(path, 2);
            let body = content(seg(path, 3), size);
            io.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes())
                .await?;
            io.write_all(&body[..(size / 2) as usize]).await?;
            io.flush().await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(false)
        }
        // /redirect/<rest>: 302 to /<rest>
        "redirect" => {
            let rest = path.trim_start_matches("/redirect");
            io.write_all(
                format!("HTTP/1.1 302 Found\r\nLocation: {rest}\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            Ok(true)
        }
        // /versioned/<size>/<bump>/<chunked>: content and strong ETag of the version counter
        // (content(1000 + version, size); the counter starts at 1); If-None-Match of the current version
        // is a 304 (bump = 0); Range honoured when If-Range names the current version, else
        // the whole current version with 200; with bump = 1 a whole-body GET moves the version on once its
        // headers are sent (the content changes mid-download); chunked = 1 sends no Content-Length.
        "versioned" => {
            let (size, bump, chunked) = (seg(path, 2), seg(path, 3), seg(path, 4));
            let v = st.version.load(Ordering::SeqCst);
            let etag = format!("\"v{v}\"");
            // A revalidation of the current version is a 304, as real origins answer.
            if bump == 0 && headers.get("if-none-match") == Some(&etag) {
                return not_modified(io, &etag).await;
            }
            let body = content(1000 + v, size);
            let ranged = headers
                .get("range")
                .filter(|_| headers.get("if-range") == Some(&etag))
                .and_then(|r| parse_range(r, size));
            let (head, part) = match ranged {
                Some((start, end)) => (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{size}\r\nETag: {etag}\r\n\r\n",
                        end - start,
                        end - 1
                    ),
                    &body[start as usize..end as usize],
                ),
                None if chunked == 1 => (
                    format!(
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: {etag}\r\n\r\n"
                    ),
                    &body[..],
                ),
                None => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: {etag}\r\n\r\n"),
                    &body[..],
                ),
            };
            io.write_all(head.as_bytes()).await?;
            if ranged.is_none() && bump == 1 {
                st.version.fetch_add(1, Ordering::SeqCst);
            }
            if head_only {
                return Ok(true);
            }
            if ranged.is_none() && chunked == 1 {
                for piece in part.chunks(64 * 1024) {
                    io.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                    io.write_all(piece).await?;
                    io.write_all(b"\r\n").await?;
                    io.flush().await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                io.write_all(b"0\r\n\r\n").await?;
            } else {
                io.write_all(part).await?;
            }
            io.flush().await?;
            Ok(true)
        }
        // /mutable/<name>: content depends on the version counter; ETag too.
        // /gzip/<name>: an origin that encodes although nobody asked.
        "gzip" => {
            let body = b"\x1f\x8b\x08\x00compressed bytes, not the file";
            io.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
            if !head_only {
                io.write_all(body).await?;
            }
            Ok(true)
        }
        "mutable" => {
            let v = st.version.load(Ordering::SeqCst);
            let etag = format!("\"v{v}\"");
            if headers.get("if-none-match") == Some(&etag) {
                return not_modified(io, &etag).await;
            }
            let body = format!("version {v}\n");
            io.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
            Ok(true)
        }
        _ => {
            io.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await?;
            Ok(true)
        }
    }
}

fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()? + 1
    };
    (start < end && end <= size).then_some((start, end))
}

/// `304 Not Modified` with the entity tag the client already holds.
async fn not_modified<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    etag: &str,
) -> std::io::Result<bool> {
    io.write_all(format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n").as_bytes())
        .await?;
    Ok(true)
}
