//! Blobs (layers, configs): immutable, verified against their digest before they are stored, streamed
//! to every client while the single download runs (containerd 2.3 gives up after 30 s without response
//! headers), with Range on hits and on misses. A HEAD on a blob the cache lacks asks the registry with
//! a HEAD; it never starts a download.

use super::RegistryState;
use super::answer::{self, stored, with_digest};
use super::error::oci_error;
use super::fetch::{self, Target};
use super::manifests::{Repo, internal, pass_through, store_error, target};
use super::path::{OciDigest, blob_key};
use crate::metrics::{kind, result};
use crate::serve;
use crate::store::{
    Access, Digest, Expected, FillFailure, FillSpec, Hit, Key, ObjectRow, Phase, Plan, SourceMeta,
    now_secs,
};
use crate::upstream::Method;
use actix_web::http::{Method as HttpMethod, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

pub async fn get(
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
        count(result::MISS);
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            &format!(
                "{} did not have it a moment ago (registry.negative_ttl)",
                repo.registry
            ),
        );
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
    let access = state.store.access(&key, |row| match row {
        Some(_) => Plan::Serve,
        None if head_only || blocked => Plan::Skip,
        None => Plan::Fill(FillSpec {
            expected: Expected {
                sha256: Some(sha256),
                ..Expected::default()
            },
            source: fetch::blob(Arc::clone(state), target.clone()),
            want_md5: false,
        }),
    });
    let fill = match access {
        Ok(Access::Hit(hit)) => {
            count(result::HIT);
            return stored(req, state, hit);
        }
        Ok(Access::Skipped) if blocked => {
            count(result::ERROR);
            return answer::rate_limited(state, repo.registry);
        }
        Ok(Access::Skipped) => return pass_through(req, state, &target, None).await,
        Ok(Access::Fill { fill, .. }) => fill,
        Err(e) => return store_error(state, repo.registry, &e),
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
            return answer::failure(state, repo.registry, "BLOB", &failure);
        }
        Phase::NotModified | Phase::Connecting => return internal("fill ended without an outcome"),
    };
    count(result::MISS);
    // No resume from the registry if the store gives up mid-way: the client sees a cut transfer and
    // retries with a Range, which containerd does.
    with_digest(
        serve::stream_fill(req, &state.metrics, &fill, &meta, None),
        digest.as_str(),
    )
}

/// A digest already stored under another repository or registry (a shared base layer): one HEAD asks
/// the registry whether *this* repository has it (so the cache never serves a repository content it
/// was not given by it), then the key is linked to the stored bytes. `None` → fetch as usual.
pub async fn adopt(
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
        .then(|| super::accept::upstream_accept(None));
    let resp = fetch::send(state, target, Method::Head, accept)
        .await
        .ok()?;
    if resp.status != 200 || resp.content_length().is_some_and(|l| l != size) {
        return None;
    }
    if fetch::content_digest(&resp).is_some_and(|d| d != digest) {
        return None;
    }
    let content_type = content_type
        .map(str::to_string)
        .or_else(|| resp.header("content-type").map(str::to_string));
    let now = now_secs();
    let row = ObjectRow {
        digest,
        size,
        content_type,
        md5: None,
        etag: None,
        last_modified: None,
        fetched_at: now,
        validated_at: now,
        last_access: now,
        hits: 0,
        pinned: false,
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
