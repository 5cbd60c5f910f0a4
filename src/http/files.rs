//! The cache front for intercepted domains: stored → serve from disk; missing → `on_miss` (fill while
//! streaming, redirect, or proxy); stale → revalidate with the origin, serving the stored copy if it is
//! unreachable. Reads top to bottom: validate, look up, decide, answer.

use super::HttpState;
use crate::config::{DomainConfig, OnMiss};
use crate::metrics::{kind, result};
use crate::peers::{Asker, ORIGIN_ETAG_HEADER, ORIGIN_VERDICT_HEADER, PEER_HEADER, PeerAsk};
use crate::serve::{self, body::Resume, fill_limits};
use crate::store::{
    Access, Expected, FilePath, Fill, FillFailure, FillSpec, Key, ObjectRow, Phase, Plan,
    SourceError, SourceMeta,
};
use crate::upstream;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

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
    let asker = serve::asker(&state.peers, &req);
    let from_peer = asker == Asker::Node;
    let origin = match url::Url::parse(&format!(
        "{}{}",
        crate::config::vhost::origin_for(domain, &host),
        path.to_url_path()
    )) {
        Ok(url) => upstream::Origin {
            url,
            // A subdomain dialled by its own name leads only where a client may send the cache.
            guard: crate::config::vhost::client_named(domain, &host)
                .then(upstream::guard::DialGuard::subdomain),
        },
        Err(e) => return bad_request(&state, &format!("cannot build origin URL: {e}")),
    };
    let revalidate_after = domain.revalidate_after.get();
    let may_fill = domain.on_miss != OnMiss::Redirect;
    // The partition's rule (`peers::route`): through the key's owner, or from the origin here.
    let source = |etag: Option<String>, last_modified: Option<String>, ours: Option<String>| {
        let from_origin =
            upstream::source::get(state.upstream.clone(), &origin, etag, last_modified);
        state.peers.source(
            &state.upstream,
            &state.metrics,
            asker,
            key.as_str(),
            from_origin,
            |peer, waiting| {
                PeerAsk::file(
                    peer,
                    &host,
                    &path.to_url_path(),
                    ours,
                    state.peers.timeout(),
                    waiting,
                )
            },
        )
    };
    // Fills started for a client count against `cache.max_fills` and, for a client that is not another
    // cache node, against its address's share.
    let fill_client = (!from_peer)
        .then(|| req.peer_addr().map(|a| a.ip()))
        .flatten();
    let mut quiet = false;
    let mut refused = None;
    let decide = |row: Option<&ObjectRow>| {
        match row {
            Some(r)
                if !may_fill || r.fresh_at(state.store.clock().now_millis(), revalidate_after) =>
            {
                return Plan::Serve;
            }
            // Its revalidation failed moments ago: served stale without asking the origin again.
            Some(_) if state.store.is_quiet(&key) => {
                quiet = true;
                return Plan::Serve;
            }
            None if domain.on_miss != OnMiss::Fill => return Plan::Skip,
            _ => {}
        }
        let permit = match state.fill_limits.try_start(fill_client) {
            Ok(permit) => permit,
            Err(why) => {
                // A stored copy is served as it is rather than refused; a miss is refused.
                quiet = row.is_some();
                refused = row.is_none().then_some(why);
                return if row.is_some() {
                    Plan::Serve
                } else {
                    Plan::Skip
                };
            }
        };
        let (source, peer_wait) = match row {
            Some(r) => source(
                r.etag.clone(),
                r.last_modified.clone(),
                Some(format!("\"{}\"", r.digest)),
            ),
            None => source(None, None, None),
        };
        Plan::Fill(FillSpec {
            expected: Expected::default(),
            source: fill_limits::held(permit, source),
            // The sync computes an md5 when it needs one (`Store::ensure_md5`); a client waits for none.
            want_md5: false,
            peer_wait,
            pin: false,
        })
    };
    let access = if from_peer {
        match state.store.access_as_peer(&key, decide) {
            Ok(Some(a)) => Ok(a),
            Ok(None) => return busy(&state),
            Err(e) => Err(e),
        }
    } else {
        state.store.access(&key, decide)
    };
    let access = match access {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(key = %key, error = %e, "store lookup failed; passing through");
            return pass_through(&req, &state, origin, result::ERROR).await;
        }
    };

    if let Some(why) = refused {
        state.metrics.request(kind::FILE, result::ERROR);
        return HttpResponse::ServiceUnavailable()
            .insert_header((
                header::RETRY_AFTER,
                fill_limits::RETRY_AFTER_SECS.to_string(),
            ))
            .body(format!("{}\n", why.message(&state.fill_limits)));
    }
    match access {
        Access::Hit(hit) => {
            let res = if quiet { result::STALE } else { result::HIT };
            state.metrics.request(kind::FILE, res);
            let origin_etag = hit.row.etag.clone();
            with_origin_etag(
                serve::serve_hit(&req, &state.metrics, hit),
                origin_etag.as_deref(),
                from_peer,
            )
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
            _ => pass_through(&req, &state, origin, result::MISS).await,
        },
        Access::Fill { fill, .. } => {
            follow_fill(&req, &state, &key, fill, origin, from_peer, domain).await
        }
    }
}

/// The origin's entity tag for the node being served, so it can revalidate with the origin later.
fn with_origin_etag(mut resp: HttpResponse, etag: Option<&str>, to_peer: bool) -> HttpResponse {
    if to_peer && let Some(v) = etag.and_then(|e| header::HeaderValue::from_str(e).ok()) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static(ORIGIN_ETAG_HEADER), v);
    }
    resp
}

/// A node asked for a key whose fill here waits on a node itself: it must go to the origin.
fn busy(state: &HttpState) -> HttpResponse {
    state.metrics.request(kind::FILE, result::MISS);
    HttpResponse::ServiceUnavailable()
        .insert_header((PEER_HEADER, "busy"))
        .body("this node's own fill of it waits on a node; fetch it from the origin\n")
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

async fn follow_fill(
    req: &HttpRequest,
    state: &Arc<HttpState>,
    key: &Key,
    fill: Arc<Fill>,
    origin: upstream::Origin,
    to_peer: bool,
    domain: &DomainConfig,
) -> HttpResponse {
    match fill.head().await {
        Phase::NotModified => serve_stored_again(req, state, key, result::HIT),
        Phase::Failed(FillFailure::Storage(why)) => {
            tracing::warn!(key = %key, %why, "cannot store; passing through");
            pass_through(req, state, origin, result::MISS).await
        }
        Phase::Failed(failure) => {
            // Revalidation failed: the stored copy (if any) is better than an error, whatever the
            // origin said — unless it has said 404/410 for longer than `deleted_grace` (`store::gone`).
            let status = match &failure {
                FillFailure::Upstream(SourceError::Status { status, .. }) => Some(*status),
                _ => None,
            };
            let stored = state.store.after_failed_revalidation(
                key,
                status,
                domain.deleted_grace.get(),
                domain.revalidate_after.get(),
            );
            if let Ok(Some(hit)) = stored {
                tracing::warn!(key = %key, %failure, "origin unavailable; serving the stored copy");
                state.metrics.request(kind::FILE, result::STALE);
                return serve::serve_hit(req, &state.metrics, hit);
            }
            state.metrics.request(kind::FILE, result::ERROR);
            let mut resp = failure_response(&failure);
            if to_peer && matches!(resp.status().as_u16(), 404 | 410) {
                resp.headers_mut().insert(
                    header::HeaderName::from_static(ORIGIN_VERDICT_HEADER),
                    header::HeaderValue::from_static("absent"),
                );
            }
            resp
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
            let etag = format!("\"{}\"", row.digest);
            let resp = stream_fill(req, state, &fill, &meta, Some(etag), origin).await;
            with_origin_etag(resp, meta.etag.as_deref(), to_peer)
        }
        Phase::Streaming { meta, .. } => {
            state.metrics.request(kind::FILE, result::MISS);
            let resp = stream_fill(req, state, &fill, &meta, None, origin).await;
            with_origin_etag(resp, meta.etag.as_deref(), to_peer)
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

/// `etag`: the content digest as an entity tag, once the fill is complete.
async fn stream_fill(
    req: &HttpRequest,
    state: &HttpState,
    fill: &Arc<Fill>,
    meta: &SourceMeta,
    etag: Option<String>,
    origin: upstream::Origin,
) -> HttpResponse {
    let resume = Resume {
        upstream: state.upstream.clone(),
        origin,
        etag: meta.etag.clone(),
        last_modified: meta.last_modified.clone(),
        total: meta.content_length,
    };
    serve::stream_fill(
        req,
        &state.metrics,
        fill,
        meta,
        etag.as_deref(),
        Some(resume),
    )
    .await
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
    origin: upstream::Origin,
    res: &'static str,
) -> HttpResponse {
    let mut request = origin.get("file");
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
