//! A fill source that asks the key's owner — another cache node of the partition — before the origin.
//!
//! The owner fills from the origin (once for the whole partition) and streams to the asking node as to
//! any client. The request carries `X-Image-Cache-Peer: 1`, so the owner never passes it on: a request
//! crosses at most one hop between nodes. The owner must answer with headers within `nodes.peer_timeout`;
//! if it does not, or it is down, busy (its own fill of the key waits on a node) or failing, the fill
//! goes to the origin. What the owner sends is verified like any fill (length, digest, md5). The owner's
//! 404 is the origin's verdict only when the owner says so: a 404 about its own store (it does not fill
//! on a miss) sends the asking node to the origin.

use super::{ORIGIN_ETAG_HEADER, ORIGIN_VERDICT_HEADER, PEER_HEADER};
use crate::metrics::{Metrics, peer_fill};
use crate::store::{Digest, PeerWait, SourceError, SourceFuture, SourceMeta, SourceOutcome};
use crate::upstream::{Request, Response, Upstream, source};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;

/// What to ask the owner, and how to read its answer.
pub struct PeerAsk {
    pub peer: SocketAddr,
    /// `http://<peer>/<path>[?query]`.
    pub url: url::Url,
    /// Extra headers: `host` for files, `accept` for manifests, `if-none-match` for revalidation.
    pub headers: Vec<(String, String)>,
    /// How long the owner may take to answer with headers.
    pub timeout: Duration,
    /// Statuses that are the origin's verdict when the owner marks them so (`ORIGIN_VERDICT_HEADER`),
    /// passed on instead of asking the origin again (a file the origin does not have: 404, 410).
    pub final_statuses: &'static [u16],
    /// Cleared when the fill stops waiting on the owner (see `store::PeerWait`).
    pub waiting: PeerWait,
    /// Fills in what a body from the owner tells (its `Docker-Content-Digest`, the origin's validators).
    pub adapt: fn(&Response, &mut SourceMeta),
}

impl PeerAsk {
    /// A file of an intercepted domain: the same path with the domain as Host, conditional on our copy's
    /// digest when revalidating (the owner's `ETag` is its content digest). `None` when `url_path` does
    /// not make a URL.
    pub fn file(
        peer: SocketAddr,
        host: &str,
        url_path: &str,
        ours: Option<String>,
        timeout: Duration,
        waiting: PeerWait,
    ) -> Option<Self> {
        let url = url::Url::parse(&format!("http://{peer}{url_path}")).ok()?;
        let mut headers = vec![("host".to_string(), host.to_string())];
        if let Some(etag) = ours {
            headers.push(("if-none-match".into(), etag));
        }
        Some(PeerAsk {
            peer,
            url,
            headers,
            timeout,
            final_statuses: &[404, 410],
            waiting,
            adapt: |resp, meta| {
                meta.etag = resp.header(ORIGIN_ETAG_HEADER).map(str::to_string);
                // A stored copy's ETag is its content digest: what the body must hash to here too
                // (peer traffic is plain HTTP). A copy the owner is still filling has none yet.
                meta.digest = resp
                    .header("etag")
                    .and_then(|e| Digest::parse(e.trim_matches('"')).ok());
            },
        })
    }
}

/// The owner's answer if it has a usable one, else `fallback` (the origin).
pub(super) fn peer_first(
    upstream: Upstream,
    metrics: Metrics,
    ask: PeerAsk,
    fallback: SourceFuture,
) -> SourceFuture {
    Box::pin(async move {
        let peer = ask.peer.ip();
        let mut request = Request::get(ask.url.clone(), "peer").header(PEER_HEADER, "1");
        request.follow_redirects = false;
        for (name, value) in &ask.headers {
            request = request.header(name, value.clone());
        }
        let answer = tokio::time::timeout(ask.timeout, upstream.send(request)).await;
        let why = match answer {
            Ok(Ok(resp)) if resp.status == 200 && source::coding_refusal(&resp).is_some() => {
                "answered in a content coding".to_string()
            }
            Ok(Ok(resp)) if resp.status == 200 => {
                metrics.peer_fill(peer, peer_fill::SERVED);
                // The owner's ETag is its content digest, not the origin's validator.
                let mut meta = SourceMeta {
                    etag: None,
                    ..source::meta_of(&resp)
                };
                (ask.adapt)(&resp, &mut meta);
                let body = source::body_of(resp.body, meta.content_length).map(move |item| {
                    if item.is_err() {
                        metrics.peer_fill(peer, peer_fill::BROKEN);
                    }
                    item
                });
                return SourceOutcome::Body {
                    meta,
                    body: Box::pin(body),
                };
            }
            Ok(Ok(resp)) if resp.status == 304 => {
                metrics.peer_fill(peer, peer_fill::NOT_MODIFIED);
                return SourceOutcome::NotModified;
            }
            Ok(Ok(resp))
                if ask.final_statuses.contains(&resp.status)
                    && resp.header(ORIGIN_VERDICT_HEADER).is_some() =>
            {
                metrics.peer_fill(peer, peer_fill::REFUSED);
                return SourceOutcome::Unavailable(SourceError::Status {
                    status: resp.status,
                    message: format!("the origin does not have it (said node {peer})"),
                });
            }
            Ok(Ok(resp)) => format!("answered {}", resp.status),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", ask.timeout.as_secs_f32()),
        };
        tracing::info!(%peer, url = %ask.url, %why, "owner node unusable; filling from the origin");
        metrics.peer_fill(peer, peer_fill::FALLBACK);
        ask.waiting.stop();
        fallback.await
    })
}
