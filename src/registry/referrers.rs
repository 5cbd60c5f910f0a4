//! The referrers API (OCI distribution 1.1): the index of the artifacts — signatures, SBOMs,
//! attestations — that refer to a manifest. Cached like a tag: served for `tag_ttl`, then asked again,
//! and served stale when the registry fails. A registry without the API is answered from the referrers
//! tag schema or with an empty index (`fetch::referrers`). `artifactType` filters what is served, and
//! `OCI-Filters-Applied` says so; the stored index is always the whole one.

use super::answer::{self, internal};
use super::error::Object;
use super::fetch::{self, INDEX, Repo, target};
use super::path::{OciDigest, referrers_key, referrers_tag};
use super::{RegistryState, stale};
use crate::metrics::{kind, result};
use crate::store::{Access, Expected, FillSpec, Hit, Phase, Plan};
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

pub(super) async fn get(
    req: &HttpRequest,
    state: &Arc<RegistryState>,
    repo: &Repo<'_>,
    digest: &OciDigest,
) -> HttpResponse {
    let key_text = referrers_key(repo.registry, repo.name, digest);
    let (key, api) = match target(repo, "referrers", digest.as_str(), key_text.clone()) {
        Ok(kt) => kt,
        Err(why) => return internal(&why),
    };
    let tag = referrers_tag(digest)
        .and_then(|tag| target(repo, "manifests", &tag, key_text).ok())
        .map(|(_, t)| t);
    let filter = artifact_type(req.query_string());
    let count = |res| {
        state
            .metrics
            .registry_request(repo.registry, kind::REFERRERS, res)
    };
    let tag_ttl = state.config.tag_ttl.get();
    let blocked = state.backoff.remaining(repo.registry).is_some()
        || state.health.spare(repo.registry).is_err();
    let mut stale = false;
    let access = state.store.access(&key, |row| match row {
        Some(r) if r.fresh_at(state.store.clock().now_millis(), tag_ttl) => Plan::Serve,
        Some(_) if blocked || state.store.is_quiet(&key) => {
            stale = true;
            Plan::Serve
        }
        _ => Plan::Fill(FillSpec {
            expected: Expected::default(),
            source: fetch::referrers(Arc::clone(state), api, tag),
            want_md5: false,
            peer_wait: None,
            pin: false,
        }),
    });
    let (hit, res) = match access {
        Ok(Access::Hit(hit)) if stale => (hit, result::STALE),
        Ok(Access::Hit(hit)) => (hit, result::HIT),
        Ok(Access::Fill { fill, coalesced }) => match fill.finished().await {
            Phase::Complete { .. } | Phase::NotModified => match state.store.open_stored(&key) {
                Ok(Some(hit)) => (hit, result::MISS),
                _ => return internal("the referrers index vanished after its fill"),
            },
            Phase::Failed(failure) => {
                match stale::after_failure(state, repo.registry, &key, &failure, !coalesced) {
                    Some(hit) => (hit, result::STALE),
                    None => {
                        count(result::ERROR);
                        return answer::failure(state, repo.registry, Object::Manifest, &failure);
                    }
                }
            }
            Phase::Connecting | Phase::Streaming { .. } => {
                return internal("fill ended without an outcome");
            }
        },
        Ok(Access::Skipped) => return internal("the store skipped a referrers fill"),
        Err(e) => return answer::store_error(state, repo.registry, kind::REFERRERS, &e),
    };
    count(res);
    let bytes = match read_all(hit).await {
        Ok(b) => b,
        Err(why) => return internal(&why),
    };
    respond(req, bytes, filter.as_deref())
}

/// The whole stored index (at most a manifest's size).
async fn read_all(hit: Hit) -> Result<bytes::Bytes, String> {
    if let Some(body) = hit.body {
        return Ok(body);
    }
    let size = usize::try_from(hit.row.size).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; size];
        hit.file
            .read_exact_at(&mut buf, 0)
            .map(|()| bytes::Bytes::from(buf))
            .map_err(|e| format!("reading the stored referrers index: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn respond(req: &HttpRequest, index: bytes::Bytes, filter: Option<&str>) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response.content_type(INDEX);
    let body = match filter.and_then(|t| filtered(&index, t)) {
        Some(body) => {
            response.insert_header(("OCI-Filters-Applied", "artifactType"));
            bytes::Bytes::from(body)
        }
        None => index,
    };
    if req.method() == Method::HEAD {
        return response.no_chunking(body.len() as u64).finish();
    }
    response.body(body)
}

/// The `artifactType` query parameter.
fn artifact_type(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The index with only the descriptors of `artifact_type`; `None` when it is not an index (then it is
/// served unfiltered, without claiming a filter).
fn filtered(index: &[u8], artifact_type: &str) -> Option<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(index).ok()?;
    let manifests = doc.get_mut("manifests")?.as_array_mut()?;
    manifests.retain(|m| m.get("artifactType").and_then(|t| t.as_str()) == Some(artifact_type));
    serde_json::to_vec(&doc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_artifact_type() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"digest":"sha256:a","artifactType":"application/vnd.dev.sigstore.bundle+json"},
            {"digest":"sha256:b","artifactType":"application/spdx+json"},
            {"digest":"sha256:c"}]}"#;
        let out = filtered(index, "application/spdx+json").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let digests: Vec<&str> = doc["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, ["sha256:b"]);
        assert_eq!(doc["schemaVersion"], 2);
        assert_eq!(
            filtered(index, "none/such").map(|b| b.len() > 10),
            Some(true)
        );
        assert_eq!(filtered(b"not json", "a/b"), None);
        assert_eq!(filtered(br#"{"manifests": 3}"#, "a/b"), None);
    }

    #[test]
    fn artifact_type_parameter() {
        assert_eq!(
            artifact_type("artifactType=application%2Fspdx%2Bjson&n=1").as_deref(),
            Some("application/spdx+json")
        );
        assert_eq!(artifact_type("ns=docker.io"), None);
        assert_eq!(artifact_type("artifactType="), None);
    }
}
