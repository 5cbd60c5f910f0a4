//! The only outbound HTTP client: origins, peers, registries and the metal-api all go through here.
//!
//! awc is single-threaded (`!Send`), so the client lives on its own actix threads and this handle talks to
//! them over channels. That keeps fronts, workers and the sync job free to run anywhere, and puts every
//! timeout, redirect rule and metric for outbound traffic in one file.

pub mod address;
pub mod challenge;
pub mod guard;
pub mod oci_auth;
pub mod ratelimit;
mod redirect;
pub mod registry_health;
pub mod resolve;
pub mod source;
pub mod tls;
pub mod token_cache;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use url::Url;

pub use redirect::MAX_REDIRECTS;
pub use resolve::{NameResolver, ResolveError};

/// Batches of body chunks in flight between the client thread and the consumer: with `BATCH_BYTES`,
/// about 1 MiB per response at most, however slow the consumer.
const BODY_CHANNEL: usize = 4;
/// A batch closes at this many bytes: chunks already decoded travel together, so a fast body costs one
/// cross-thread wake-up per batch instead of one per TLS record (the scheduler was a sixth of a fill's
/// CPU samples, bench/out/fill-512m.txt).
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Without a body: triggers such as the CLI asking a running server to sync.
    Post,
    /// The CLI unpinning or removing an object through the admin API.
    Delete,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    /// Extra request headers (lowercase names). `authorization` is dropped on cross-origin redirects.
    pub headers: Vec<(String, String)>,
    /// Label for `image_cache_upstream_requests_total{kind}`.
    pub kind: &'static str,
    pub follow_redirects: bool,
    /// A request body (small JSON for API calls; never streamed).
    pub body: Option<Bytes>,
    /// Set when a client chose the host (an unlisted registry, an intercepted domain's subdomain): every
    /// hop is checked, and connections go through a client of their own that dials only the addresses
    /// the guard's rule admits.
    pub guard: Option<guard::DialGuard>,
}

/// An origin a file is asked from: its URL, and the guard its hops and connections are checked under
/// when a client chose its host.
#[derive(Debug, Clone)]
pub struct Origin {
    pub url: Url,
    pub guard: Option<guard::DialGuard>,
}

impl Origin {
    /// A GET of the origin's URL under its guard.
    pub fn get(&self, kind: &'static str) -> Request {
        let mut request = Request::get(self.url.clone(), kind);
        request.guard = self.guard.clone();
        request
    }
}

impl Request {
    pub fn get(url: Url, kind: &'static str) -> Self {
        Request {
            method: Method::Get,
            url,
            headers: Vec::new(),
            kind,
            follow_redirects: true,
            body: None,
            guard: None,
        }
    }

    /// A POST with a JSON body, not redirected (API calls).
    pub fn post_json(url: Url, kind: &'static str, body: Bytes) -> Self {
        Request {
            method: Method::Post,
            url,
            headers: vec![("content-type".into(), "application/json".into())],
            kind,
            follow_redirects: false,
            body: Some(body),
            guard: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// Why a response body stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// No byte arrived for `upstream.read_timeout`.
    #[error("no body bytes for {0}s")]
    Idle(u64),
    /// The connection or the framing broke.
    #[error("body broken: {0}")]
    Broken(String),
    /// `read_body` refused to gather more than its limit.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

pub struct Response {
    pub status: u16,
    /// Response headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The URL that answered, after redirects.
    pub url: Url,
    pub body: Body,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Protocol(String),
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// A guarded request's target is not one the cache may dial.
    #[error("refused to dial: {0}")]
    Forbidden(String),
    #[error("upstream client is shut down")]
    Closed,
}

/// Upstream connections one client thread may hold at once (well above `cache.max_fills`).
const CONNECTIONS_PER_THREAD: usize = 4096;

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Response, UpstreamError>>,
}

/// Cheap to clone; every clone talks to the same client threads.
#[derive(Clone)]
pub struct Upstream {
    workers: Arc<Vec<mpsc::UnboundedSender<Job>>>,
    next: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Settings {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    read_timeout: Duration,
    metrics: Metrics,
    resolver: NameResolver,
    /// The address rule of subdomains dialled by their own name (`guard::Reach::Subdomain`).
    subdomains: Arc<guard::AddressRule>,
}

impl Settings {
    fn rule(&self, reach: guard::Reach) -> Arc<guard::AddressRule> {
        match reach {
            guard::Reach::Registry => Arc::new(guard::AddressRule::default()),
            guard::Reach::Subdomain => Arc::clone(&self.subdomains),
        }
    }
}

impl Upstream {
    /// Starts `threads` client threads. Fails when `upstream.ca_file` cannot be used. `subdomains` is
    /// the address rule of requests guarded as `Reach::Subdomain`.
    pub fn start(
        config: &UpstreamConfig,
        resolver: NameResolver,
        metrics: Metrics,
        threads: usize,
        subdomains: guard::AddressRule,
    ) -> Result<Self, tls::TlsSetupError> {
        let settings = Settings {
            tls: tls::client_config(config.ca_file.as_deref())?,
            connect_timeout: config.connect_timeout.get(),
            read_timeout: config.read_timeout.get(),
            metrics,
            resolver,
            subdomains: Arc::new(subdomains),
        };
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let settings = settings.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("upstream-{i}"))
                .spawn(move || actix_rt::System::new().block_on(serve_jobs(rx, settings)));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an upstream client thread");
                continue;
            }
            workers.push(tx);
        }
        Ok(Upstream {
            workers: Arc::new(workers),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Sends a request; resolves when the response head has arrived (the body streams afterwards).
    pub async fn send(&self, request: Request) -> Result<Response, UpstreamError> {
        if self.workers.is_empty() {
            return Err(UpstreamError::Closed);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let (reply, answer) = oneshot::channel();
        self.workers[i]
            .send(Job { request, reply })
            .map_err(|_| UpstreamError::Closed)?;
        answer.await.map_err(|_| UpstreamError::Closed)?
    }
}

/// A whole (small) body, refused beyond `limit` bytes: API answers and sidecars, never content.
pub async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn serve_jobs(mut rx: mpsc::UnboundedReceiver<Job>, settings: Settings) {
    let open = build_client(&settings, None);
    // One client per rule, so a pool never hands a guarded request a connection made without its check.
    let registries = build_client(&settings, Some(settings.rule(guard::Reach::Registry)));
    let subdomains = build_client(&settings, Some(settings.rule(guard::Reach::Subdomain)));
    while let Some(job) = rx.recv().await {
        let client = match job.request.guard.as_ref().map(|g| g.reach) {
            Some(guard::Reach::Registry) => registries.clone(),
            Some(guard::Reach::Subdomain) => subdomains.clone(),
            None => open.clone(),
        };
        let settings = settings.clone();
        actix_rt::spawn(async move {
            let kind = job.request.kind;
            let result = execute(&client, job.request, &settings).await;
            let label = match &result {
                Ok(r) => r.status.to_string(),
                Err(UpstreamError::Timeout(_)) => "timeout".into(),
                Err(_) => "error".into(),
            };
            settings.metrics.upstream(kind, label);
            let _ = job.reply.send(result);
        });
    }
}

fn build_client(settings: &Settings, rule: Option<Arc<guard::AddressRule>>) -> awc::Client {
    let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(
        resolve::AwcResolve {
            resolver: settings.resolver.clone(),
            rule,
        },
    ))
    .service();
    let connector = awc::Connector::new()
        .connector(tcp)
        .rustls_0_23(Arc::clone(&settings.tls))
        .timeout(settings.connect_timeout)
        // awc's default of 100 connections per client thread made every request beyond them wait for a
        // slot: 200 fills of slow origins held every upstream connection of a two-core node, and a new file
        // waited behind them. What bounds upstream work is `cache.max_fills` and the clients themselves.
        .limit(CONNECTIONS_PER_THREAD);
    // HTTP/1.1 only: the ALPN list in the TLS config says so. (Connector::max_http_version would rebuild the
    // TLS connector and drop our trust roots.)
    #[allow(clippy::disallowed_methods)] // the one place that builds an outbound client
    awc::Client::builder()
        .connector(connector)
        .timeout(settings.read_timeout)
        .disable_redirects()
        .no_default_headers()
        .add_default_header((
            "user-agent",
            concat!("image-cache/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}

async fn execute(
    client: &awc::Client,
    mut request: Request,
    settings: &Settings,
) -> Result<Response, UpstreamError> {
    let mut hops = 0;
    loop {
        if let Some(guard) = &request.guard {
            guard
                .url(&request.url, &settings.rule(guard.reach))
                .map_err(UpstreamError::Forbidden)?;
        }
        let method = match request.method {
            Method::Get => awc::http::Method::GET,
            Method::Head => awc::http::Method::HEAD,
            Method::Post => awc::http::Method::POST,
            Method::Delete => awc::http::Method::DELETE,
        };
        let mut req = client.request(method, request.url.as_str());
        for (name, value) in &request.headers {
            req = req.insert_header((name.as_str(), value.as_str()));
        }
        let sent = match &request.body {
            Some(body) => req.send_body(body.clone()).await,
            None => req.send().await,
        };
        let response = sent.map_err(|e| classify(&request.url, e))?;
        let status = response.status().as_u16();
        if request.follow_redirects && redirect::is_redirect(status) {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(location) = location else {
                return Err(UpstreamError::Protocol(format!(
                    "{} answered {status} without Location",
                    request.url
                )));
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(UpstreamError::Redirect(format!(
                    "more than {MAX_REDIRECTS} redirects from {}",
                    request.url
                )));
            }
            match redirect::follow(&request.url, &location) {
                redirect::Follow::To { url, same_origin } => {
                    if !same_origin {
                        request.headers.retain(|(n, _)| n != "authorization");
                    }
                    request.url = url;
                    continue;
                }
                redirect::Follow::Refuse(why) => return Err(UpstreamError::Redirect(why)),
            }
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_string(), v.to_string()))
            })
            .collect();
        let body = if request.method == Method::Head {
            Box::pin(futures_util::stream::empty()) as Body
        } else {
            pump_body(response, settings.read_timeout)
        };
        return Ok(Response {
            status,
            headers,
            url: request.url,
            body,
        });
    }
}

/// What the client thread hands the consumer: the end of the body is said explicitly, so a channel
/// that closes without it (the client thread stopped, at shutdown or in a panic) reads as a broken body,
/// never as a complete one — a fill must not commit a body whose end it did not see.
enum Piece {
    /// Chunks in order, never empty.
    Data(Vec<Bytes>),
    End,
    Failed(BodyError),
}

/// Moves body chunks from the client thread to the consumer, enforcing the idle timeout per chunk.
/// Dropping the consumer's end stops the transfer (and closes the connection).
fn pump_body<S>(mut response: awc::ClientResponse<S>, idle: Duration) -> Body
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel::<Piece>(BODY_CHANNEL);
    actix_rt::spawn(async move {
        // What ended the body, seen while a batch was still being gathered: sent right after it.
        let mut ending: Option<Piece> = None;
        loop {
            if let Some(end) = ending.take() {
                let _ = tokio::time::timeout(idle, tx.send(end)).await;
                break;
            }
            let end = match tokio::time::timeout(idle, response.next()).await {
                Ok(Some(Ok(chunk))) => Err(chunk),
                Ok(Some(Err(e))) => Ok(Piece::Failed(BodyError::Broken(e.to_string()))),
                Ok(None) => Ok(Piece::End),
                Err(_) => Ok(Piece::Failed(BodyError::Idle(idle.as_secs()))),
            };
            let first = match end {
                Err(chunk) => chunk,
                Ok(end) => {
                    let _ = tokio::time::timeout(idle, tx.send(end)).await;
                    break;
                }
            };
            let mut size = first.len();
            let mut batch = vec![first];
            // Whatever is decoded already joins the batch, without waiting for more.
            while size < BATCH_BYTES {
                match response.next().now_or_never() {
                    Some(Some(Ok(chunk))) => {
                        size += chunk.len();
                        batch.push(chunk);
                    }
                    Some(Some(Err(e))) => {
                        ending = Some(Piece::Failed(BodyError::Broken(e.to_string())));
                        break;
                    }
                    Some(None) => {
                        ending = Some(Piece::End);
                        break;
                    }
                    None => break,
                }
            }
            // A consumer that stops taking the body (a fill that cannot write) is given up on like an
            // origin that stops sending: the transfer ends, the connection closes, the consumer reads
            // a broken body when it comes back.
            match tokio::time::timeout(idle, tx.send(Piece::Data(batch))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!(
                        "a body's reader took nothing for {}s; transfer dropped",
                        idle.as_secs()
                    );
                    break;
                }
            }
        }
    });
    Box::pin(pieces(rx))
}

fn pieces(rx: mpsc::Receiver<Piece>) -> impl Stream<Item = Result<Bytes, BodyError>> {
    let start = (Some(rx), std::collections::VecDeque::<Bytes>::new());
    futures_util::stream::unfold(start, |(rx, mut ready)| async move {
        if let Some(chunk) = ready.pop_front() {
            return Some((Ok(chunk), (rx, ready)));
        }
        let mut rx = rx?;
        loop {
            return match rx.recv().await {
                Some(Piece::Data(batch)) => {
                    ready.extend(batch);
                    match ready.pop_front() {
                        Some(chunk) => Some((Ok(chunk), (Some(rx), ready))),
                        None => continue,
                    }
                }
                Some(Piece::End) => None,
                Some(Piece::Failed(e)) => Some((Err(e), (None, ready))),
                None => Some((
                    Err(BodyError::Broken(
                        "the upstream client stopped before the end of the body".into(),
                    )),
                    (None, ready),
                )),
            };
        }
    })
}

fn classify(url: &Url, e: awc::error::SendRequestError) -> UpstreamError {
    use awc::error::{ConnectError, SendRequestError as E};
    match e {
        E::Timeout => UpstreamError::Timeout(format!("no response from {url}")),
        E::Connect(ConnectError::Timeout) => UpstreamError::Timeout(format!("connecting to {url}")),
        E::Connect(c) => UpstreamError::Connect(format!("{url}: {c}")),
        other => UpstreamError::Protocol(format!("{url}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(pieces_sent: Vec<Piece>, close: bool) -> Vec<Result<Bytes, BodyError>> {
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        for p in pieces_sent {
            tx.send(p).await.unwrap();
        }
        if close {
            drop(tx);
        } else {
            // Keep the sender alive until the consumer is done: the end must come from a Piece.
            std::mem::forget(tx);
        }
        pieces(rx).collect().await
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// Batches come apart in order, and a failure after data is reported after that data.
    #[tokio::test]
    async fn batches_are_delivered_in_order_and_end_as_they_were_told() {
        let got = collect(
            vec![
                Piece::Data(vec![b("a"), b("b")]),
                Piece::Data(vec![b("c")]),
                Piece::Failed(BodyError::Idle(3)),
            ],
            false,
        )
        .await;
        assert_eq!(
            got,
            vec![Ok(b("a")), Ok(b("b")), Ok(b("c")), Err(BodyError::Idle(3))]
        );
        let got = collect(vec![Piece::Data(vec![b("a")]), Piece::End], false).await;
        assert_eq!(got, vec![Ok(b("a"))]);
    }

    /// A client thread that goes away without saying "end" leaves a broken body, never a complete one.
    #[tokio::test]
    async fn a_channel_closed_without_an_end_is_a_broken_body() {
        let got = collect(vec![Piece::Data(vec![b("a"), b("b")])], true).await;
        assert_eq!(got.len(), 3);
        assert!(matches!(got[2], Err(BodyError::Broken(_))), "{got:?}");
    }
}
