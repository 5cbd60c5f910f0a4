//! The cache front for intercepted domains: stored → serve from disk; missing → `on_miss` (fill while
//! streaming, redirect, or proxy); stale → revalidate with the origin, serving the stored copy if it is
//! unreachable. Reads top to bottom: validate, look up, decide, answer.

use super::HttpState;
use crate::config::{DomainConfig, OnMiss};
use crate::metrics::{kind, result};
use crate::serve::{self, body::Resume};
use crate::store::{
    Access, Expected, FilePath, Fill, FillFailure, FillSpec, Key, Phase, Plan, SourceError,
    SourceFuture, SourceMeta, SourceOutcome, now_secs,
};
use crate::upstream;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

/// Marks a request from another cache node: answer from the local store only, never fill (no loops).
pub const PEER_HEADER: &str = "x-image-cache-peer";

pub async fn handle(
    req: HttpRequest,
    state: Arc<HttpState>,
    domain: &DomainConfig,
    host: String,
) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .body("read-only cache\n");
    }
    let path = match FilePath::from_request(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return bad_request(&state, &e.to_string()),
    };
    let key = match Key::file(&host, &path) {
        Ok(k) => k,
        Err(e) => return bad_request(&state, &e.to_string()),
    };
    let from_peer = req
        .headers()
        .get(PEER_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let origin_url = match url::Url::parse(&format!(
        "{}{}",
        crate::config::vhost::origin_for(domain, &host),
        path.to_url_path()
    )) {
        Ok(u) => u,
        Err(e) => return bad_request(&state, &format!("cannot build origin URL: {e}")),
    };
    let revalidate_after = domain.revalidate_after.get().as_secs();
    let may_fill = domain.on_miss != OnMiss::Redirect;

    let upstream = state.upstream.clone();
    let url_for_fill = origin_url.clone();
    let access = state.store.access(&key, |row| match row {
        Some(_) if from_peer => Plan::Serve,
        Some(r) if !may_fill || now_secs().saturating_sub(r.validated_at) < revalidate_after => {
            Plan::Serve
        }
        Some(r) => Plan::Fill(FillSpec {
            expected: Expected::default(),
            source: upstream::source::get(
                upstream,
                url_for_fill,
                r.etag.clone(),
                r.last_modified.clone(),
            ),
            want_md5: true,
        }),
        None if from_peer || domain.on_miss != OnMiss::Fill => Plan::Skip,
        None => Plan::Fill(FillSpec {
            expected: Expected::default(),
            source: peer_then_origin_source(
                upstream,
                state.peers.healthy_peer_addrs(),
                host.clone(),
                path.to_url_path(),
                url_for_fill,
            ),
            want_md5: true,
        }),
    });
    let access = match access {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(key = %key, error = %e, "store lookup failed; passing through");
            return pass_through(&req, &state, origin_url, result::ERROR).await;
        }
    };

    match access {
        Access::Hit(hit) => {
            state.metrics.request(kind::FILE, result::HIT);
            serve::serve_hit(&req, &state.metrics, hit)
        }
        Access::Skipped if from_peer => {
            state.metrics.request(kind::FILE, result::MISS);
            HttpResponse::NotFound().body("not in this node's cache\n")
        }
        Access::Skipped => match domain.on_miss {
            OnMiss::Redirect => {
                state.metrics.request(kind::FILE, result::MISS);
                redirect(&req, &host)
            }
            _ => pass_through(&req, &state, origin_url, result::MISS).await,
        },
        Access::Fill { fill, .. } => follow_fill(&req, &state, &key, fill, origin_url).await,
    }
}

fn bad_request(state: &HttpState, why: &str) -> HttpResponse {
    state.metrics.request(kind::FILE, result::ERROR);
    HttpResponse::BadRequest().body(format!("invalid path: {why}\n"))
}

/// 307 to the same path over HTTPS, query kept, as metal-stack's cache answers a miss.
fn redirect(req: &HttpRequest, host: &str) -> HttpResponse {
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    HttpResponse::TemporaryRedirect()
        .insert_header((header::LOCATION, format!("https://{host}{pq}")))
        .finish()
}

/// A miss asks the healthy peers first (the partition's second-level cache: one internet download per
/// partition, not per node), then the origin. Peers answer from their store only (`X-Image-Cache-Peer`),
/// so two nodes missing the same object never ask each other in a loop. What a peer sends is still
/// hashed and length-checked here like any fill.
fn peer_then_origin_source(
    upstream: upstream::Upstream,
    peers: Vec<std::net::SocketAddr>,
    host: String,
    path: String,
    origin: url::Url,
) -> SourceFuture {
    Box::pin(async move {
        for peer in peers {
            let Ok(url) = url::Url::parse(&format!("http://{peer}{path}")) else {
                continue;
            };
            let mut request = upstream::Request::get(url, "peer")
                .header("host", host.clone())
                .header(PEER_HEADER, "1");
            request.follow_redirects = false;
            match upstream.send(request).await {
                Ok(resp) if resp.status == 200 => {
                    tracing::debug!(%peer, %host, %path, "filling from a peer");
                    let mut outcome = upstream::source::body_outcome(resp);
                    // A peer's ETag is its content digest, not the origin's validator: revalidating
                    // with it would never match. Last-Modified is the origin's and stays.
                    if let SourceOutcome::Body { meta, .. } = &mut outcome {
                        meta.etag = None;
                    }
                    return outcome;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "peer fill failed; trying the next"),
            }
        }
        upstream::source::get(upstream, origin, None, None).await
    })
}

async fn follow_fill(
    req: &HttpRequest,
    state: &Arc<HttpState>,
    key: &Key,
    fill: Arc<Fill>,
    origin_url: url::Url,
) -> HttpResponse {
    match fill.head().await {
        Phase::NotModified => serve_stored_again(req, state, key, result::HIT),
        Phase::Failed(FillFailure::Storage(why)) => {
            tracing::warn!(key = %key, %why, "cannot store; passing through");
            pass_through(req, state, origin_url, result::MISS).await
        }
        Phase::Failed(failure) => {
            // Revalidation failed: the stored copy (if any) is better than an error.
            if let Ok(Some(hit)) = state.store.open_stored(key) {
                tracing::warn!(key = %key, %failure, "origin unavailable; serving the stored copy");
                state.metrics.request(kind::FILE, result::STALE);
                return serve::serve_hit(req, &state.metrics, hit);
            }
            state.metrics.request(kind::FILE, result::ERROR);
            failure_response(&failure)
        }
        Phase::Complete { row } => {
            state.metrics.request(kind::FILE, result::MISS);
            let meta = SourceMeta {
                content_length: Some(row.size),
                content_type: row.content_type.clone(),
                etag: row.etag.clone(),
                last_modified: row.last_modified.clone(),
                digest: None,
            };
            stream_fill(req, state, &fill, &meta, origin_url)
        }
        Phase::Streaming { meta, .. } => {
            state.metrics.request(kind::FILE, result::MISS);
            stream_fill(req, state, &fill, &meta, origin_url)
        }
        Phase::Connecting => HttpResponse::ServiceUnavailable().body("fill did not start\n"),
    }
}

fn serve_stored_again(
    req: &HttpRequest,
    state: &HttpState,
    key: &Key,
    res: &'static str,
) -> HttpResponse {
    match state.store.open_stored(key) {
        Ok(Some(hit)) => {
            state.metrics.request(kind::FILE, res);
            serve::serve_hit(req, &state.metrics, hit)
        }
        _ => {
            state.metrics.request(kind::FILE, result::ERROR);
            HttpResponse::BadGateway().body("origin unavailable and nothing stored\n")
        }
    }
}

fn stream_fill(
    req: &HttpRequest,
    state: &HttpState,
    fill: &Arc<Fill>,
    meta: &SourceMeta,
    origin_url: url::Url,
) -> HttpResponse {
    let resume = Resume {
        upstream: state.upstream.clone(),
        url: origin_url,
        etag: meta.etag.clone(),
    };
    serve::stream_fill(req, &state.metrics, fill, meta, Some(resume))
}

fn failure_response(failure: &FillFailure) -> HttpResponse {
    match failure {
        FillFailure::Upstream(SourceError::Status {
            status: s @ (404 | 410),
            ..
        }) => HttpResponse::build(StatusCode::from_u16(*s).unwrap_or(StatusCode::NOT_FOUND))
            .body("not found at the origin\n"),
        FillFailure::Upstream(SourceError::Timeout(message)) => {
            HttpResponse::GatewayTimeout().body(format!("origin timed out: {message}\n"))
        }
        other => HttpResponse::BadGateway().body(format!("{other}\n")),
    }
}

/// Streams from the origin without storing (`on_miss = proxy`, or when the store cannot take the object).
async fn pass_through(
    req: &HttpRequest,
    state: &HttpState,
    url: url::Url,
    res: &'static str,
) -> HttpResponse {
    let mut request = upstream::Request::get(url, "file");
    if req.method() == Method::HEAD {
        request.method = upstream::Method::Head;
    }
    for name in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ] {
        if let Some(v) = req.headers().get(&name).and_then(|v| v.to_str().ok()) {
            request = request.header(name.as_str(), v);
        }
    }
    let resp = match state.upstream.send(request).await {
        Ok(r) => r,
        Err(e) => {
            state.metrics.request(kind::FILE, result::ERROR);
            let failure = FillFailure::Upstream(upstream::source::source_error(e));
            return failure_response(&failure);
        }
    };
    state.metrics.request(kind::FILE, res);
    serve::relay(
        req,
        &state.metrics,
        resp,
        &[
            "content-type",
            "etag",
            "last-modified",
            "content-range",
            "accept-ranges",
        ],
    )
}
