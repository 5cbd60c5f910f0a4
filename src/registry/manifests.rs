//! Manifests. By tag: served from the store while younger than `tag_ttl`, then revalidated with an
//! upstream HEAD, served stale when the registry fails or rate-limits; the tag's manifest is also
//! stored under its digest, so containerd's next request (by digest) is a hit. By digest: immutable,
//! verified before it is stored. Manifests are small: the answer waits for the fill to end, so every
//! answer carries the digest the cache computed.

use super::answer::{self, internal, pass_through, store_error, stored};
use super::error::{Object, OciError};
use super::fetch::{self, Repo, adopt, target};
use super::path::{OciDigest, manifest_key, tag_key};
use super::{RegistryState, accept, stale};
use crate::metrics::{kind, result};
use crate::serve::fill_limits::{self, Refused};
use crate::store::{Access, Expected, FillSpec, Key, ObjectRow, Phase, Plan};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

/// Why a tag request did not go through the store.
enum Skip {
    /// The client does not accept the stored media type.
    Narrow,
    /// Nothing stored and the registry is backed off.
    RateLimited,
    /// Nothing stored and no fill may start now (`cache.max_fills`, `cache.max_fills_per_client`).
    Refused(Refused),
}

pub(super) async fn by_tag(
    req: &HttpRequest,
    state: &Arc<RegistryState>,
    repo: &Repo<'_>,
    tag: &str,
) -> HttpResponse {
    let key_text = tag_key(repo.registry, repo.name, tag);
    let (key, target) = match target(repo, "manifests", tag, key_text) {
        Ok(kt) => kt,
        Err(why) => return internal(&why),
    };
    let client_accept = accept_header(req);
    if state.negative.contains(key.as_str()) {
        return answer::remembered_missing(state, repo.registry, kind::MANIFEST);
    }
    let blocked = state.backoff.remaining(repo.registry).is_some();
    let tag_ttl = state.config.tag_ttl.get();
    let mut skip = None;
    let mut stale = false;
    let permit = |skip: &mut Option<Skip>| match state.fill_limits.try_start(repo.client) {
        Ok(p) => Some(p),
        Err(why) => {
            *skip = Some(Skip::Refused(why));
            None
        }
    };
    let access = fetch::store_access(state, repo, &key, |row| match row {
        Some(r) if !accepted(client_accept.as_deref(), r) => {
            skip = Some(Skip::Narrow);
            Plan::Skip
        }
        Some(r) if r.fresh_at(state.store.clock().now_millis(), tag_ttl) => Plan::Serve,
        // Backed off, or the registry's budget is down to what live pulls need: the stored tag serves,
        // and a later request revalidates.
        Some(_)
            if blocked
                || state.store.is_quiet(&key)
                || state.health.spare(repo.registry).is_err() =>
        {
            stale = true;
            Plan::Serve
        }
        Some(r) => match permit(&mut skip) {
            Some(permit) => Plan::Fill(FillSpec {
                expected: Expected::default(),
                source: fill_limits::held(
                    permit,
                    fetch::revalidate_tag(
                        Arc::clone(state),
                        target.clone(),
                        r.digest,
                        client_accept.clone(),
                    ),
                ),
                want_md5: false,
                peer_wait: None,
                pin: false,
            }),
            // No revalidation can start now: the stored tag serves.
            None => {
                skip = None;
                stale = true;
                Plan::Serve
            }
        },
        None if blocked => {
            skip = Some(Skip::RateLimited);
            Plan::Skip
        }
        None => {
            let Some(permit) = permit(&mut skip) else {
                return Plan::Skip;
            };
            let fallback =
                fetch::manifest(Arc::clone(state), target.clone(), client_accept.clone());
            let (source, peer_wait) =
                fetch::via_owner(state, repo, &key, "manifests", tag, fallback);
            Plan::Fill(FillSpec {
                expected: Expected::default(),
                source: fill_limits::held(permit, source),
                want_md5: false,
                peer_wait,
                pin: false,
            })
        }
    });
    let (fill, started_here) = match access {
        Ok(None) => return answer::busy(),
        Ok(Some(Access::Hit(hit))) => {
            let res = if stale { result::STALE } else { result::HIT };
            state
                .metrics
                .registry_request(repo.registry, kind::MANIFEST, res);
            return stored(req, state, hit);
        }
        Ok(Some(Access::Skipped)) => {
            return match skip {
                Some(Skip::Narrow) => pass_through(req, state, &target, client_accept).await,
                Some(Skip::Refused(why)) => {
                    answer::fill_refused(state, repo.registry, kind::MANIFEST, why)
                }
                _ => {
                    state
                        .metrics
                        .registry_request(repo.registry, kind::MANIFEST, result::ERROR);
                    answer::rate_limited(state, repo.registry)
                }
            };
        }
        Ok(Some(Access::Fill { fill, coalesced })) => (fill, !coalesced),
        Err(e) => return store_error(state, repo.registry, kind::MANIFEST, &e),
    };
    match fill.finished().await {
        Phase::NotModified => serve_again(req, state, repo.registry, &key, result::HIT),
        Phase::Complete { row } => {
            also_by_digest(state, repo, &row);
            if !accepted(client_accept.as_deref(), &row) {
                return pass_through(req, state, &target, client_accept).await;
            }
            serve_again(req, state, repo.registry, &key, result::MISS)
        }
        Phase::Failed(failure) => {
            if let Some(hit) =
                stale::after_failure(state, repo.registry, &key, &failure, started_here)
            {
                state
                    .metrics
                    .registry_request(repo.registry, kind::MANIFEST, result::STALE);
                return stored(req, state, hit);
            }
            state
                .metrics
                .registry_request(repo.registry, kind::MANIFEST, result::ERROR);
            answer::failure(state, repo.registry, Object::Manifest, &failure)
        }
        Phase::Connecting | Phase::Streaming { .. } => internal("fill ended without an outcome"),
    }
}

pub(super) async fn by_digest(
    req: &HttpRequest,
    state: &Arc<RegistryState>,
    repo: &Repo<'_>,
    digest: &OciDigest,
) -> HttpResponse {
    let key_text = manifest_key(repo.registry, repo.name, digest);
    let (key, target) = match target(repo, "manifests", digest.as_str(), key_text) {
        Ok(kt) => kt,
        Err(why) => return internal(&why),
    };
    let client_accept = accept_header(req);
    let Some(sha256) = digest.sha256() else {
        // Only sha256 content is stored; other algorithms are relayed.
        return pass_through(req, state, &target, client_accept).await;
    };
    if state.negative.contains(key.as_str()) {
        return answer::remembered_missing(state, repo.registry, kind::MANIFEST);
    }
    if let Some(hit) = adopt(state, &target, &key, sha256, None).await {
        state
            .metrics
            .registry_request(repo.registry, kind::MANIFEST, result::HIT);
        return stored(req, state, hit);
    }
    let blocked = state.backoff.remaining(repo.registry).is_some();
    let mut refused = None;
    let access = fetch::store_access(state, repo, &key, |row| match row {
        Some(_) => Plan::Serve,
        None if blocked => Plan::Skip,
        None => {
            let permit = match state.fill_limits.try_start(repo.client) {
                Ok(p) => p,
                Err(why) => {
                    refused = Some(why);
                    return Plan::Skip;
                }
            };
            let fallback =
                fetch::manifest(Arc::clone(state), target.clone(), client_accept.clone());
            let (source, peer_wait) =
                fetch::via_owner(state, repo, &key, "manifests", digest.as_str(), fallback);
            Plan::Fill(FillSpec {
                expected: Expected {
                    sha256: Some(sha256),
                    ..Expected::default()
                },
                source: fill_limits::held(permit, source),
                want_md5: false,
                peer_wait,
                pin: false,
            })
        }
    });
    let fill = match access {
        Ok(None) => return answer::busy(),
        Ok(Some(Access::Hit(hit))) => {
            state
                .metrics
                .registry_request(repo.registry, kind::MANIFEST, result::HIT);
            return stored(req, state, hit);
        }
        Ok(Some(Access::Skipped)) if let Some(why) = refused => {
            return answer::fill_refused(state, repo.registry, kind::MANIFEST, why);
        }
        Ok(Some(Access::Skipped)) => {
            state
                .metrics
                .registry_request(repo.registry, kind::MANIFEST, result::ERROR);
            return answer::rate_limited(state, repo.registry);
        }
        Ok(Some(Access::Fill { fill, .. })) => fill,
        Err(e) => return store_error(state, repo.registry, kind::MANIFEST, &e),
    };
    match fill.finished().await {
        Phase::Complete { .. } | Phase::NotModified => {
            serve_again(req, state, repo.registry, &key, result::MISS)
        }
        Phase::Failed(failure) => {
            state
                .metrics
                .registry_request(repo.registry, kind::MANIFEST, result::ERROR);
            answer::failure(state, repo.registry, Object::Manifest, &failure)
        }
        Phase::Connecting | Phase::Streaming { .. } => internal("fill ended without an outcome"),
    }
}

/// Every `Accept` line, joined: Docker and podman send one line per media type.
fn accept_header(req: &HttpRequest) -> Option<String> {
    let lines: Vec<&str> = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

fn accepted(client_accept: Option<&str>, row: &ObjectRow) -> bool {
    row.content_type
        .as_deref()
        .is_none_or(|t| accept::accepts(client_accept, t))
}

/// A manifest fetched by tag is also the object of its digest: linking it saves containerd's next GET
/// (by digest) a trip to the registry, and Docker Hub a counted pull.
fn also_by_digest(state: &RegistryState, repo: &Repo<'_>, row: &ObjectRow) {
    let Some(digest) = OciDigest::parse(&row.digest.to_string()) else {
        return;
    };
    let Ok(key) = Key::parse(&manifest_key(repo.registry, repo.name, &digest)) else {
        return;
    };
    if matches!(state.store.get(&key), Ok(Some(r)) if r.digest == row.digest) {
        return;
    }
    let mut linked = row.clone();
    linked.pinned = false;
    linked.hits = 0;
    if let Err(e) = state.store.link(&key, &linked) {
        tracing::warn!(key = %key, error = %e, "cannot store the tag's manifest under its digest");
    }
}

fn serve_again(
    req: &HttpRequest,
    state: &RegistryState,
    registry: &str,
    key: &Key,
    res: &'static str,
) -> HttpResponse {
    match state.store.open_stored(key) {
        Ok(Some(hit)) => {
            state
                .metrics
                .registry_request(registry, kind::MANIFEST, res);
            stored(req, state, hit)
        }
        Ok(None) => {
            state
                .metrics
                .registry_request(registry, kind::MANIFEST, result::ERROR);
            OciError::Unavailable("the manifest was evicted while being served; retry".into())
                .response()
        }
        Err(e) => store_error(state, registry, kind::MANIFEST, &e),
    }
}
