//! Requests to the upstream registry, and their answers as fill sources for the store. Every request
//! goes through the cache's own authentication (`upstream::oci_auth`); every non-200 answer is turned
//! into what the store and the front need: a 404 remembered for `negative_ttl`, a 429 backing the
//! registry off, the status kept so the front can answer the client with it. Also: linking a digest the
//! store already holds to another repository once that repository's registry vouches for it (`adopt`).

use super::RegistryState;
use super::accept;
use crate::peers::{Asker, PeerAsk};
use crate::store::{
    Access, Digest, FillFailure, Hit, Key, ObjectRow, PeerWait, Plan, SourceError, SourceFuture,
    SourceMeta, SourceOutcome, StoreError,
};
use crate::upstream::guard::DialGuard;
use crate::upstream::registry_health;
use crate::upstream::{self, Method, Request, Response, UpstreamError};
use std::sync::Arc;

/// containerd refuses manifests above 4·1048·1048 bytes; the cache refuses to store larger ones too.
pub(super) const MANIFEST_MAX: u64 = 4 * 1048 * 1048;

/// A repository on a configured upstream, as the request named it.
pub(super) struct Repo<'a> {
    pub registry: &'a str,
    pub base: &'a str,
    pub name: &'a str,
    /// Asked by another cache node: fill from the registry, never from a node.
    pub from_peer: bool,
    /// The client's address when it is not another cache node: its fills count against its share
    /// (`cache.max_fills_per_client`).
    pub client: Option<std::net::IpAddr>,
    /// An unlisted registry (`registry.open`): dialled under this guard and rate-limited.
    pub guard: Option<DialGuard>,
}

/// One upstream object: which registry, which repository, which URL.
#[derive(Clone)]
pub(super) struct Target {
    pub registry: String,
    pub name: String,
    pub url: url::Url,
    /// The store key whose 404 is remembered.
    pub key: String,
    pub guard: Option<DialGuard>,
}

/// `<base>/v2/<name>/<endpoint>/<reference>`. Name and reference were validated by `path`, so nothing
/// here can change the host or escape the path.
pub(super) fn url(
    base: &str,
    name: &str,
    endpoint: &str,
    reference: &str,
) -> Result<url::Url, String> {
    let base = base.trim_end_matches('/');
    url::Url::parse(&format!("{base}/v2/{name}/{endpoint}/{reference}"))
        .map_err(|e| format!("cannot build the upstream URL from `{base}`: {e}"))
}

/// A request through the cache's registry authentication.
pub(super) async fn send(
    state: &RegistryState,
    target: &Target,
    method: Method,
    accept: Option<String>,
) -> Result<Response, UpstreamError> {
    let kind = if target.url.path().contains("/blobs/") {
        "blob"
    } else {
        "manifest"
    };
    if target.guard.is_some()
        && let Some(unlisted) = &state.unlisted
        && let Err(wait) = unlisted.may_send(&target.registry)
    {
        // Counted like the registry's own 429: the next requests get the stored copy or a 503 with
        // the wait, and none of them dials.
        let secs = wait.as_secs().max(1).to_string();
        state.backoff.rate_limited(&target.registry, Some(&secs));
        return Err(UpstreamError::Forbidden(format!(
            "registry.open_rate_limit: {} is asked at most {} times a second",
            target.registry, state.config.open_rate_limit
        )));
    }
    let mut request = Request::get(target.url.clone(), kind);
    request.method = method;
    request.guard = target.guard.clone();
    if let Some(a) = accept {
        request = request.header("accept", a);
    }
    state
        .auth
        .send(&target.registry, &target.name, request)
        .await
}

/// A manifest GET (by tag or digest) as a fill source. The registry's `Docker-Content-Digest` is checked
/// against the body before anything is stored.
pub(super) fn manifest(
    state: Arc<RegistryState>,
    target: Target,
    client_accept: Option<String>,
) -> SourceFuture {
    Box::pin(async move {
        let accept = accept::upstream_accept(client_accept.as_deref());
        match send(&state, &target, Method::Get, Some(accept)).await {
            Ok(resp) if resp.status == 200 => manifest_body(resp),
            Ok(resp) => refused(&state, &target, resp).await,
            Err(e) => unreachable(e),
        }
    })
}

/// Revalidates a stored tag with a HEAD (not counted as a pull by Docker Hub): the same digest → not
/// modified; another digest (or none given) → the new manifest is fetched.
pub(super) fn revalidate_tag(
    state: Arc<RegistryState>,
    target: Target,
    stored: Digest,
    client_accept: Option<String>,
) -> SourceFuture {
    Box::pin(async move {
        let accept = accept::upstream_accept(client_accept.as_deref());
        match send(&state, &target, Method::Head, Some(accept)).await {
            Ok(resp) if resp.status == 200 => {
                if content_digest(&resp) == Some(stored) {
                    return SourceOutcome::NotModified;
                }
                manifest(state, target, client_accept).await
            }
            // Not remembered as missing: the stored tag is served through the registry's trouble
            // (`store::gone`), and a remembered 404 would answer before the store is asked.
            Ok(resp) => SourceOutcome::Unavailable(upstream_status(&state, &target, resp).await),
            Err(e) => unreachable(e),
        }
    })
}

/// The OCI image index media type: what a referrers answer is.
pub(super) const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A digest's referrers as a fill source: the registry's referrers API; when it has none (404), the
/// referrers tag schema (`tag`: the manifest tagged `sha256-<hex>`); when that is missing too, an empty
/// index, as the distribution spec tells a registry without referrers to answer.
pub(super) fn referrers(
    state: Arc<RegistryState>,
    api: Target,
    tag: Option<Target>,
) -> SourceFuture {
    Box::pin(async move {
        match send(&state, &api, Method::Get, Some(INDEX.into())).await {
            Ok(resp) if resp.status == 200 => index_body(resp),
            Ok(resp) if resp.status == 404 => {
                let Some(tag) = tag else {
                    return empty_index();
                };
                match send(&state, &tag, Method::Get, Some(INDEX.into())).await {
                    Ok(resp) if resp.status == 200 => index_body(resp),
                    Ok(resp) if resp.status == 404 => empty_index(),
                    Ok(resp) => refused(&state, &tag, resp).await,
                    Err(e) => unreachable(e),
                }
            }
            Ok(resp) => refused(&state, &api, resp).await,
            Err(e) => unreachable(e),
        }
    })
}

/// A referrers answer: an image index, bounded like a manifest. A registry computes it on the fly, so
/// there is no digest to check; the store names it by what it hashes.
fn index_body(resp: Response) -> SourceOutcome {
    match manifest_body(resp) {
        SourceOutcome::Body { mut meta, body } => {
            if meta
                .content_type
                .as_deref()
                .is_some_and(|t| t != INDEX && t != "application/json")
            {
                return refuse(format!(
                    "referrers answer of type {} instead of an image index",
                    meta.content_type.unwrap_or_default()
                ));
            }
            meta.digest = None;
            meta.content_type = Some(INDEX.into());
            SourceOutcome::Body { meta, body }
        }
        other => other,
    }
}

fn empty_index() -> SourceOutcome {
    let bytes = bytes::Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[]}}"#
    ));
    SourceOutcome::Body {
        meta: SourceMeta {
            content_length: Some(bytes.len() as u64),
            content_type: Some(INDEX.into()),
            etag: None,
            last_modified: None,
            digest: None,
        },
        body: Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
    }
}

/// A blob GET as a fill source; redirects to a CDN are followed (without the registry's token).
pub(super) fn blob(state: Arc<RegistryState>, target: Target) -> SourceFuture {
    Box::pin(async move {
        match send(&state, &target, Method::Get, None).await {
            Ok(resp) if resp.status == 200 => match identity(&resp) {
                Ok(()) => {
                    let digest = content_digest(&resp);
                    let mut outcome = upstream::source::body_outcome(resp);
                    if let SourceOutcome::Body { meta, .. } = &mut outcome {
                        meta.digest = digest;
                        meta.etag = None;
                        meta.last_modified = None;
                        meta.content_type = Some("application/octet-stream".into());
                    }
                    outcome
                }
                Err(why) => refuse(why),
            },
            Ok(resp) => refused(&state, &target, resp).await,
            Err(e) => unreachable(e),
        }
    })
}

fn manifest_body(resp: Response) -> SourceOutcome {
    if let Err(why) = identity(&resp) {
        return refuse(why);
    }
    if resp.content_length().is_some_and(|l| l > MANIFEST_MAX) {
        return refuse(format!("manifest larger than {MANIFEST_MAX} bytes refused"));
    }
    if let Some(t) = resp
        .header("content-type")
        .filter(|t| !accept::registry_media_type(t))
    {
        return refuse(format!(
            "a manifest typed {t:?} is not a registry answer; nothing stored"
        ));
    }
    let meta = SourceMeta {
        content_length: resp.content_length(),
        content_type: manifest_type(&resp),
        etag: None,
        last_modified: None,
        digest: content_digest(&resp),
    };
    SourceOutcome::Body {
        meta,
        body: Box::pin(limit(resp.body, MANIFEST_MAX)),
    }
}

/// A body cut off (with an error) past `max` bytes: a manifest without Content-Length cannot grow
/// without bound.
fn limit(
    body: upstream::Body,
    max: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, SourceError>> {
    use futures_util::StreamExt;
    let mut seen = 0u64;
    body.map(move |item| {
        let chunk = item.map_err(upstream::source::body_error)?;
        seen += chunk.len() as u64;
        if seen > max {
            return Err(SourceError::Refused(format!(
                "manifest larger than {max} bytes refused"
            )));
        }
        Ok(chunk)
    })
}

/// The cache asks for no encoding, so stored bytes are the bytes the digest names; a registry that
/// encodes anyway is refused rather than stored wrong.
fn identity(resp: &Response) -> Result<(), String> {
    match resp.header("content-encoding").map(str::trim) {
        None | Some("") => Ok(()),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(()),
        Some(e) => Err(format!(
            "registry sent Content-Encoding `{e}` although none was asked for"
        )),
    }
}

/// `Docker-Content-Digest` when it is a sha256 digest (others are not checked by the store).
pub(super) fn content_digest(resp: &Response) -> Option<Digest> {
    resp.header("docker-content-digest")
        .filter(|d| d.starts_with("sha256:"))
        .and_then(|d| Digest::parse(d.trim()).ok())
}

/// A registry's non-200 answer as a fill source's outcome: a 404 or 410 is remembered as missing for
/// `negative_ttl` (see `refusal_to_this_request` for the rest).
pub(super) async fn refused(
    state: &RegistryState,
    target: &Target,
    resp: Response,
) -> SourceOutcome {
    if matches!(resp.status, 404 | 410) {
        state.negative.insert(&target.key);
    }
    SourceOutcome::Unavailable(upstream_status(state, target, resp).await)
}

/// A registry's non-200 answer with its status and, for a 401/403, the registry's own words (its
/// error body, bounded, or its challenge's `error`), which the credentials state shows the operator.
async fn upstream_status(state: &RegistryState, target: &Target, resp: Response) -> SourceError {
    let FillFailure::Upstream(SourceError::Status { status, message }) =
        refusal_to_this_request(state, target, &resp)
    else {
        return SourceError::Status {
            status: resp.status,
            message: format!("{} answered {}", target.registry, resp.status),
        };
    };
    if !matches!(status, 401 | 403) {
        return SourceError::Status { status, message };
    }
    let token_error = resp
        .header(upstream::oci_auth::TOKEN_ERROR_HEADER)
        .map(str::to_string);
    let challenge = resp
        .header("www-authenticate")
        .and_then(upstream::challenge::error_of);
    let body = upstream::read_body(resp.body, 4096)
        .await
        .unwrap_or_default();
    let said = token_error
        .or_else(|| registry_health::message_of(&body))
        .or(challenge);
    SourceError::Status {
        status,
        message: match said {
            Some(said) => format!("{message}: {said}"),
            None => message,
        },
    }
}

/// A registry's non-200 answer to one client's own request (a pass-through with its `Accept`): a 429
/// (or a 503 naming a `Retry-After`) backs the registry off, but a 404 may be content negotiation — no
/// representation this client accepts — and says nothing about whether the tag exists, so it is not
/// remembered.
pub(super) fn refusal_to_this_request(
    state: &RegistryState,
    target: &Target,
    resp: &Response,
) -> FillFailure {
    let retry_after = resp.header("retry-after");
    if resp.status == 429 || (resp.status == 503 && retry_after.is_some()) {
        let wait = state.backoff.rate_limited(&target.registry, retry_after);
        tracing::warn!(
            registry = %target.registry,
            status = resp.status,
            wait_s = wait.as_secs(),
            remaining = resp.header("ratelimit-remaining").unwrap_or("?"),
            "registry rate limit hit or registry unavailable; leaving it alone"
        );
    }
    FillFailure::Upstream(SourceError::Status {
        status: resp.status,
        message: format!("{} answered {}", target.registry, resp.status),
    })
}

fn unreachable(e: UpstreamError) -> SourceOutcome {
    SourceOutcome::Unavailable(upstream::source::source_error(e))
}

/// An answer the cache will not store (an encoding nobody asked for, too large).
fn refuse(why: String) -> SourceOutcome {
    SourceOutcome::Unavailable(SourceError::Refused(why))
}

/// The store key and the upstream target of one object.
pub(super) fn target(
    repo: &Repo<'_>,
    endpoint: &str,
    reference: &str,
    key_text: String,
) -> Result<(Key, Target), String> {
    let key = Key::parse(&key_text).map_err(|e| format!("store key: {e}"))?;
    let url = url(repo.base, repo.name, endpoint, reference)?;
    Ok((
        key,
        Target {
            registry: repo.registry.to_string(),
            name: repo.name.to_string(),
            url,
            key: key_text,
            guard: repo.guard.clone(),
        },
    ))
}

/// A digest already stored under another repository or registry (a shared base layer): one HEAD asks
/// the registry whether *this* repository has it (so the cache never serves a repository content it
/// was not given by it), then the key is linked to the stored bytes. `None` → fetch as usual.
pub(super) async fn adopt(
    state: &RegistryState,
    target: &Target,
    key: &Key,
    digest: Digest,
    content_type: Option<&str>,
) -> Option<Hit> {
    if !matches!(state.store.get(key), Ok(None)) {
        return None;
    }
    let size = state.store.blob_size(&digest).ok().flatten()?;
    let accept = content_type
        .is_none()
        .then(|| accept::upstream_accept(None));
    let resp = send(state, target, Method::Head, accept).await.ok()?;
    if resp.status != 200 || resp.content_length().is_some_and(|l| l != size) {
        return None;
    }
    if content_digest(&resp).is_some_and(|d| d != digest) {
        return None;
    }
    let content_type = content_type
        .map(str::to_string)
        .or_else(|| resp.header("content-type").map(str::to_string));
    let now_ms = state.store.clock().now_millis();
    let now = now_ms / 1000;
    let row = ObjectRow {
        digest,
        size,
        content_type,
        md5: None,
        etag: None,
        last_modified: None,
        fetched_at: now,
        validated_ms: now_ms,
        last_access: now,
        hits: 0,
        pinned: false,
        operator_pin: false,
        upstream_deleted_ms: None,
    };
    match state.store.link(key, &row) {
        Ok(true) => {
            tracing::debug!(key = %key, "linked to content already stored");
            state.store.open_stored(key).ok().flatten()
        }
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "cannot link to stored content");
            None
        }
    }
}

/// A source that asks the key's owner (another cache node) before the registry, and the flag that says
/// whether the fill still waits on that node: the partition's rule is `peers::route`'s. What the owner sends
/// is verified against the digest like anything from the registry.
pub(super) fn via_owner(
    state: &Arc<RegistryState>,
    repo: &Repo<'_>,
    key: &Key,
    endpoint: &str,
    reference: &str,
    fallback: SourceFuture,
) -> (SourceFuture, Option<PeerWait>) {
    let asker = if repo.from_peer {
        Asker::Node
    } else {
        Asker::Client
    };
    state.peers.source(
        &state.upstream,
        &state.metrics,
        asker,
        key.as_str(),
        fallback,
        |peer, waiting| {
            let mut url = url::Url::parse(&format!(
                "http://{peer}/v2/{}/{endpoint}/{reference}",
                repo.name
            ))
            .ok()?;
            url.query_pairs_mut().append_pair("ns", repo.registry);
            let manifest = endpoint == "manifests";
            let headers = if manifest {
                vec![("accept".to_string(), accept::upstream_accept(None))]
            } else {
                Vec::new()
            };
            Some(PeerAsk {
                peer,
                url,
                headers,
                timeout: state.peers.timeout(),
                final_statuses: &[],
                waiting,
                adapt: if manifest {
                    |resp, meta| {
                        meta.content_type = manifest_type(resp);
                        meta.digest = content_digest(resp);
                        meta.last_modified = None;
                    }
                } else {
                    |resp, meta| {
                        meta.content_type = Some("application/octet-stream".into());
                        meta.digest = content_digest(resp);
                        meta.last_modified = None;
                    }
                },
            })
        },
    )
}

/// A manifest's media type, without parameters; none when it is not a registry media type (a peer's
/// answer is not refused for it, its manifest is checked by digest, but the type is not kept).
fn manifest_type(resp: &Response) -> Option<String> {
    resp.header("content-type")
        .filter(|t| accept::registry_media_type(t))
        .map(|t| t.split(';').next().unwrap_or(t).trim().to_string())
}

/// The store's `access` for this request; for a request from another node, `None` when the fill
/// running here itself waits on a node (the asking node must go to the registry).
pub(super) fn store_access(
    state: &RegistryState,
    repo: &Repo<'_>,
    key: &Key,
    decide: impl FnOnce(Option<&ObjectRow>) -> Plan,
) -> Result<Option<Access>, StoreError> {
    if repo.from_peer {
        state.store.access_as_peer(key, decide)
    } else {
        state.store.access(key, decide).map(Some)
    }
}
