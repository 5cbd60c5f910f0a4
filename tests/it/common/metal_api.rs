//! A metal-api stub on 127.0.0.1. v1: `GET /metal/v1/image` and `/metal/v1/partition`, answering only
//! requests whose HMAC headers verify with its key (metal-api's View user, 30 s lifetime). v2: Connect JSON
//! `POST /metal/metalstack.api.v2.{ImageService,PartitionService}/List` and `TokenService/Refresh` with a
//! bearer token it issued. Anything else gets 401.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(crate) struct MetalApi {
    pub addr: std::net::SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    key: Vec<u8>,
    images: Mutex<serde_json::Value>,
    partitions: Mutex<serde_json::Value>,
    rejected: AtomicU64,
    served: AtomicU64,
    down: AtomicBool,
    tokens: Mutex<Vec<String>>,
    refreshes: AtomicU64,
    pings: Mutex<Vec<serde_json::Value>>,
}

/// An unsigned JWT with these times (the client reads them without verifying).
pub(crate) fn jwt(iat: u64, exp: u64) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let nonce: u64 = rand::random();
    format!(
        "{}.{}.sig",
        e.encode(r#"{"alg":"none","typ":"JWT"}"#),
        e.encode(format!(r#"{{"iat":{iat},"exp":{exp},"jti":"{nonce}"}}"#))
    )
}

impl MetalApi {
    pub(crate) async fn start(
        key: &str,
        images: serde_json::Value,
        partitions: serde_json::Value,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            key: key.as_bytes().to_vec(),
            images: Mutex::new(images),
            partitions: Mutex::new(partitions),
            rejected: AtomicU64::new(0),
            served: AtomicU64::new(0),
            down: AtomicBool::new(false),
            tokens: Mutex::new(Vec::new()),
            refreshes: AtomicU64::new(0),
            pings: Mutex::new(Vec::new()),
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let len: usize = text
                        .split("\r\n")
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len.min(1 << 20)];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if text.starts_with("POST /metal/metalstack.infra.v2.ComponentService/Ping ")
                        && let Ok(v) = serde_json::from_slice(&body)
                    {
                        st.pings.lock().unwrap().push(v);
                    }
                    let reply = respond(&st, &text);
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        MetalApi { addr, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/metal", self.addr)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::SeqCst)
    }

    pub(crate) fn set_images(&self, images: serde_json::Value) {
        *self.state.images.lock().unwrap() = images;
    }

    /// Accepts `token` as a v2 bearer token.
    pub(crate) fn issue(&self, token: &str) {
        self.state.tokens.lock().unwrap().push(token.to_string());
    }

    /// Bodies of the v2 pings received so far.
    pub(crate) fn pings(&self) -> Vec<serde_json::Value> {
        self.state.pings.lock().unwrap().clone()
    }

    pub(crate) fn refreshes(&self) -> u64 {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Answers 503 to everything from now on.
    pub(crate) fn go_down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
    }
}

impl Drop for MetalApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(st: &State, head: &str) -> String {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    if st.down.load(Ordering::SeqCst) {
        return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into();
    }
    if path.starts_with("/metal/metalstack.") {
        return respond_v2(st, method, path, &header("authorization"));
    }
    let date = header("x-date");
    let fresh = humantime::parse_rfc3339(&date)
        .ok()
        .and_then(|d| {
            std::time::SystemTime::now()
                .duration_since(d)
                .ok()
                .or(Some(std::time::Duration::ZERO))
        })
        .is_some_and(|age| age.as_secs() <= 30);
    let ok = fresh
        && image_cache::sync::hmac::verify(
            &st.key,
            "Metal-View",
            &header("authorization"),
            method,
            &date,
            &header("x-data-salt"),
        );
    if !ok {
        st.rejected.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"message":"unknown authtype or invalid signature"}"#;
        return format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let body = match path {
        "/metal/v1/image" => st.images.lock().unwrap().to_string(),
        "/metal/v1/partition" => st.partitions.lock().unwrap().to_string(),
        _ => {
            return "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .into();
        }
    };
    st.served.fetch_add(1, Ordering::SeqCst);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn json_reply(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn respond_v2(st: &State, method: &str, path: &str, authorization: &str) -> String {
    let token = authorization.strip_prefix("Bearer ").unwrap_or_default();
    if method != "POST" || !st.tokens.lock().unwrap().iter().any(|t| t == token) {
        st.rejected.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"code":"unauthenticated","message":"invalid token"}"#;
        return format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    st.served.fetch_add(1, Ordering::SeqCst);
    match path {
        "/metal/metalstack.api.v2.ImageService/List" => {
            let images: Vec<serde_json::Value> = st
                .images
                .lock()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let mut v = serde_json::json!({"id": i["id"], "url": i["url"]});
                    if let Some(e) = i.get("expirationDate") {
                        v["expiresAt"] = e.clone();
                    }
                    v
                })
                .collect();
            json_reply(&serde_json::json!({"images": images}).to_string())
        }
        "/metal/metalstack.api.v2.PartitionService/List" => {
            let parts: Vec<serde_json::Value> = st
                .partitions
                .lock()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let b = &p["bootconfig"];
                    serde_json::json!({"id": p["id"], "bootConfiguration": {
                        "imageUrl": b["imageurl"], "kernelUrl": b["kernelurl"]}})
                })
                .collect();
            json_reply(&serde_json::json!({"partitions": parts}).to_string())
        }
        "/metal/metalstack.infra.v2.ComponentService/Ping" => json_reply("{}"),
        "/metal/metalstack.api.v2.TokenService/Refresh" => {
            st.refreshes.fetch_add(1, Ordering::SeqCst);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let fresh = jwt(now, now + 144 * 3600);
            st.tokens.lock().unwrap().push(fresh.clone());
            json_reply(&serde_json::json!({"token": {"uuid": "t"}, "secret": fresh}).to_string())
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    }
}
