//! A metal-api stub on 127.0.0.1: `GET /metal/v1/image` and `/metal/v1/partition`, answering only requests
//! whose HMAC headers verify with its key (metal-api's View user, 30 s lifetime); anything else gets 401.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct MetalApi {
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
}

impl MetalApi {
    pub async fn start(
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
                    let reply = respond(&st, &String::from_utf8_lossy(&head));
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        MetalApi { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/metal", self.addr)
    }

    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::SeqCst)
    }

    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    pub fn set_images(&self, images: serde_json::Value) {
        *self.state.images.lock().unwrap() = images;
    }

    /// Answers 503 to everything from now on.
    pub fn go_down(&self) {
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
