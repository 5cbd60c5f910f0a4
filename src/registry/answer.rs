//! OCI answers shared by the manifest and blob paths: a stored object with its digest, a fill's failure
//! as the status containerd needs to decide whether to try the next host, a remembered 404, and the
//! uncached relay of what the store does not keep.

use super::RegistryState;
use super::accept;
use super::backoff::retry_after_secs;
use super::error::{Object, OciError};
use super::fetch::{self, Target};
use crate::metrics::{kind, result};
use crate::serve;
use crate::serve::fill_limits::{self, Refused};
use crate::store::{FillFailure, Hit, SourceError};
use crate::upstream::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

pub(super) const DIGEST_HEADER: &str = "docker-content-digest";

/// Sets `Docker-Content-Digest` (containerd needs it, with Content-Length, to trust a HEAD).
pub(super) fn with_digest(mut resp: HttpResponse, digest: &str) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(digest) {
        resp.headers_mut()
            .insert(HeaderName::from_static(DIGEST_HEADER), v);
    }
    resp
}

/// A stored object, with Range, conditionals and its digest.
pub(super) fn stored(req: &HttpRequest, state: &RegistryState, hit: Hit) -> HttpResponse {
    let digest = hit.row.digest.to_string();
    with_digest(serve::serve_hit(req, &state.metrics, hit), &digest)
}

/// A fill's failure as the OCI error containerd acts on.
pub(super) fn failure(
    state: &RegistryState,
    registry: &str,
    object: Object,
    f: &FillFailure,
) -> HttpResponse {
    let error = match f {
        FillFailure::Upstream(SourceError::Status {
            status: 404 | 410, ..
        }) => OciError::Unknown {
            object,
            message: format!("{registry} does not have it"),
        },
        FillFailure::Upstream(SourceError::Status { status: 401, .. }) => {
            OciError::Unauthorized(format!(
                "{registry} requires credentials the cache does not hold for this repository \
                 (registry.credentials_file); pull it from the registry directly"
            ))
        }
        FillFailure::Upstream(SourceError::Status { status: 403, .. }) => OciError::Denied(
            format!("{registry} denied the cache access to this repository"),
        ),
        FillFailure::Upstream(SourceError::Status { status: 429, .. }) => {
            return rate_limited(state, registry);
        }
        FillFailure::Integrity(why) => OciError::Upstream(format!(
            "{registry} sent content that does not match its digest: {why}"
        )),
        other => OciError::Upstream(format!("upstream {registry} unavailable: {other}")),
    };
    error.response()
}

/// `503` with the wait left: containerd goes to the next host (the registry) at once.
pub(super) fn rate_limited(state: &RegistryState, registry: &str) -> HttpResponse {
    let wait = state
        .backoff
        .remaining(registry)
        .unwrap_or(super::backoff::DEFAULT_WAIT);
    OciError::RateLimited {
        message: format!(
            "{registry} rate-limits this cache; it is left alone for now and nothing is cached for this request"
        ),
        retry_after: retry_after_secs(wait),
    }
    .response()
}

/// A fill this node would not start for the client (`cache.max_fills`, `cache.max_fills_per_client`): 503
/// with `Retry-After`, so containerd goes to its next host (the registry itself) at once.
pub(super) fn fill_refused(
    state: &RegistryState,
    registry: &str,
    what: &'static str,
    why: Refused,
) -> HttpResponse {
    state
        .metrics
        .registry_request(registry, what, result::ERROR);
    OciError::RateLimited {
        message: why.message(&state.fill_limits),
        retry_after: fill_limits::RETRY_AFTER_SECS,
    }
    .response()
}

/// Asks the registry on the client's behalf, uncached: a client whose `Accept` the stored manifest
/// does not satisfy, a digest algorithm the store does not verify.
pub(super) async fn pass_through(
    req: &HttpRequest,
    state: &RegistryState,
    target: &Target,
    client_accept: Option<String>,
) -> HttpResponse {
    let method = if req.method() == actix_web::http::Method::HEAD {
        Method::Head
    } else {
        Method::Get
    };
    let what = if target.url.path().contains("/blobs/") {
        kind::BLOB
    } else {
        kind::MANIFEST
    };
    match fetch::send(state, target, method, client_accept).await {
        Ok(resp) if resp.status == 200 => {
            let typed = resp.header("content-type").map(str::to_string);
            if what != kind::BLOB
                && let Some(t) = typed.filter(|t| !accept::registry_media_type(t))
            {
                state
                    .metrics
                    .registry_request(&target.registry, what, result::ERROR);
                return OciError::Upstream(format!(
                    "{} answered with {t:?}, not a registry media type; refused",
                    target.registry
                ))
                .response();
            }
            state
                .metrics
                .registry_request(&target.registry, what, result::MISS);
            if what == kind::BLOB {
                // A blob is bytes: whatever type the registry claims, the client gets octet-stream.
                let mut relayed = serve::relay(req, &state.metrics, resp, &[DIGEST_HEADER]);
                relayed.headers_mut().insert(
                    actix_web::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                relayed
            } else {
                serve::relay(req, &state.metrics, resp, &["content-type", DIGEST_HEADER])
            }
        }
        Ok(resp) => {
            state
                .metrics
                .registry_request(&target.registry, what, result::ERROR);
            let object = if what == kind::BLOB {
                Object::Blob
            } else {
                Object::Manifest
            };
            failure(
                state,
                &target.registry,
                object,
                &fetch::refusal_to_this_request(state, target, &resp),
            )
        }
        Err(e) => {
            state
                .metrics
                .registry_request(&target.registry, what, result::ERROR);
            OciError::Upstream(format!("upstream {} unavailable: {e}", target.registry)).response()
        }
    }
}

pub(super) fn store_error(
    state: &RegistryState,
    registry: &str,
    what: &'static str,
    e: &crate::store::StoreError,
) -> HttpResponse {
    tracing::error!(error = %e, "store lookup failed");
    state
        .metrics
        .registry_request(registry, what, result::ERROR);
    OciError::Unavailable("the cache's store is failing; fetch from the registry".into()).response()
}

/// A node asked for something this node's own fill of waits on a node: it must go to the registry.
pub(super) fn busy() -> HttpResponse {
    let mut resp = OciError::Unavailable(
        "this node's own fill of it waits on a node; fetch it from the registry".into(),
    )
    .response();
    resp.headers_mut().insert(
        HeaderName::from_static(crate::peers::PEER_HEADER),
        HeaderValue::from_static("busy"),
    );
    resp
}

pub(super) fn internal(why: &str) -> HttpResponse {
    OciError::Internal(why.to_string()).response()
}

/// A 404 the registry gave a moment ago (`registry.negative_ttl`), answered without asking it again.
/// `what` is a metrics kind: `manifest` or `blob`.
pub(super) fn remembered_missing(
    state: &RegistryState,
    registry: &str,
    what: &'static str,
) -> HttpResponse {
    state.metrics.registry_request(registry, what, result::MISS);
    let object = if what == kind::BLOB {
        Object::Blob
    } else {
        Object::Manifest
    };
    OciError::Unknown {
        object,
        message: format!("{registry} did not have it a moment ago (registry.negative_ttl)"),
    }
    .response()
}
