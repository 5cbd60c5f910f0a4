//! Blobs (layers, configs): immutable, verified against their digest before they are stored, streamed
//! to every client while the single download runs (containerd 2.3 gives up after 30 s without response
//! headers), with Range on hits and on misses. A HEAD on a blob the cache lacks asks the registry with
//! a HEAD; it never starts a download.

use super::RegistryState;
use super::answer::{self, internal, pass_through, store_error, stored, with_digest};
use super::error::Object;
use super::fetch::{self, Repo, adopt, target};
use super::path::{OciDigest, blob_key};
use crate::metrics::{kind, result};
use crate::serve;
use crate::serve::fill_limits;
use crate::store::{Access, Expected, FillFailure, FillSpec, Phase, Plan, SourceMeta};
use actix_web::http::Method as HttpMethod;
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

pub(super) async fn get(
    req: &HttpRequest,
    state: &Arc<RegistryState>,
    repo: &Repo<'_>,
    digest: &OciDigest,
) -> HttpResponse {
    let key_text = blob_key(repo.registry, repo.name, digest);
    let (key, target) = match target(repo, "blobs", digest.as_str(), key_text) {
        Ok(kt) => kt,
        Err(why) => return internal(&why),
    };
    let Some(sha256) = digest.sha256() else {
        return pass_through(req, state, &target, None).await;
    };
    let count = |res| {
        state
            .metrics
            .registry_request(repo.registry, kind::BLOB, res)
    };
    if state.negative.contains(key.as_str()) {
        return answer::remembered_missing(state, repo.registry, kind::BLOB);
    }
    if let Some(hit) = adopt(
        state,
        &target,
        &key,
        sha256,
        Some("application/octet-stream"),
    )
    .await
    {
        count(result::HIT);
        return stored(req, state, hit);
    }
    let head_only = req.method() == HttpMethod::HEAD;
    let blocked = state.backoff.remaining(repo.registry).is_some();
    let mut refused = None;
    let decide = |row: Option<&crate::store::ObjectRow>| match row {
        Some(_) => Plan::Serve,
        None if head_only || blocked => Plan::Skip,
        None => {
            let permit = match state.fill_limits.try_start(repo.client) {
                Ok(p) => p,
                Err(why) => {
                    refused = Some(why);
                    return Plan::Skip;
                }
            };
            let fallback = fetch::blob(Arc::clone(state), target.clone());
            let (source, peer_wait) =
                fetch::via_owner(state, repo, &key, "blobs", digest.as_str(), fallback);
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
    };
    let fill = match fetch::store_access(state, repo, &key, decide) {
        Ok(None) => return answer::busy(),
        Ok(Some(Access::Hit(hit))) => {
            count(result::HIT);
            return stored(req, state, hit);
        }
        Ok(Some(Access::Skipped)) if let Some(why) = refused => {
            return answer::fill_refused(state, repo.registry, kind::BLOB, why);
        }
        Ok(Some(Access::Skipped)) if blocked => {
            count(result::ERROR);
            return answer::rate_limited(state, repo.registry);
        }
        Ok(Some(Access::Skipped)) => return pass_through(req, state, &target, None).await,
        Ok(Some(Access::Fill { fill, .. })) => fill,
        Err(e) => return store_error(state, repo.registry, kind::BLOB, &e),
    };
    let meta = match fill.head().await {
        Phase::Streaming { meta, .. } => (*meta).clone(),
        Phase::Complete { row } => SourceMeta {
            content_length: Some(row.size),
            content_type: row.content_type.clone(),
            ..SourceMeta::default()
        },
        Phase::Failed(FillFailure::Storage(why)) => {
            // The store cannot take it (disk full): the client still gets the blob, uncached.
            tracing::warn!(key = %key, %why, "cannot store the blob; relaying it");
            return pass_through(req, state, &target, None).await;
        }
        Phase::Failed(failure) => {
            count(result::ERROR);
            return answer::failure(state, repo.registry, Object::Blob, &failure);
        }
        Phase::NotModified | Phase::Connecting => return internal("fill ended without an outcome"),
    };
    count(result::MISS);
    // The content is verified against the digest it is asked by, so that is its entity tag already.
    // No resume from the registry if the store gives up mid-way: the client sees a cut transfer and
    // retries with a Range, which containerd does.
    let etag = format!("\"{sha256}\"");
    with_digest(
        serve::stream_fill(req, &state.metrics, &fill, &meta, Some(&etag), None).await,
        digest.as_str(),
    )
}
