//! The `/v2/` front, top to bottom: method, path grammar, the configured upstream (by `ns`, a registry
//! path prefix or the default upstream) or an unlisted one `registry.open` admits, then the endpoint. Everything a mirror must refuse is refused here with an OCI error, before any upstream or
//! store is touched.

use super::answer;
use super::error::{OciError, base};
use super::fetch::{Repo, target};
use super::manifests;
use super::path::{self, Reference, Route};
use super::{RegistryState, blobs, open, referrers};
use crate::peers::Asker;
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

pub async fn handle(req: &HttpRequest, state: &Arc<RegistryState>) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return OciError::Unsupported {
            method: req.method().to_string(),
        }
        .response();
    }
    let route = match path::parse(req.path()) {
        Ok(r) => r,
        Err(e) => return OciError::from(e).response(),
    };
    if route == Route::Base {
        return base();
    }
    let requested = match &route {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::TagsList { name }
        | Route::Referrers { name, .. } => name,
        Route::Base => return base(),
    };
    let ns = path::ns_param(req.query_string());
    let from_peer = crate::serve::asker(&state.peers, req) == Asker::Node;
    let client = (!from_peer)
        .then(|| req.peer_addr().map(|a| a.ip()))
        .flatten();
    let open = state.unlisted.as_ref();
    let admitted;
    let repo = match path::destination(
        ns.as_deref(),
        requested,
        &state.config.upstreams,
        state.config.default_upstream(),
        open.is_some(),
    ) {
        Ok(to) => Repo {
            registry: to.registry,
            base: to.base,
            name: to.name,
            from_peer,
            client,
            guard: None,
        },
        Err(no) => {
            let Some((registry, name)) = no.unlisted else {
                return OciError::NameUnknown(no.why).response();
            };
            // `docker.io:443`, `DOCKER.IO:0443`, `registry-1.docker.io`: another spelling of a configured
            // registry is that registry — its store keys, credentials and back-off — never a second,
            // unlisted one beside it that could replace its tags or be handed its token.
            let configured = open::canonical(&registry)
                .and_then(|name| path::upstream_for(Some(&name), &state.config.upstreams));
            if let Some((registry, base)) = configured {
                Repo {
                    registry,
                    base,
                    name,
                    from_peer,
                    client,
                    guard: None,
                }
            } else {
                let Some(unlisted) = open else {
                    return OciError::NameUnknown(no.why).response();
                };
                admitted = match unlisted.admit(&registry) {
                    Ok(a) => a,
                    Err(why) => return OciError::Denied(why).response(),
                };
                Repo {
                    registry: &admitted.registry,
                    base: &admitted.base,
                    name,
                    from_peer,
                    client,
                    guard: Some(unlisted.guard()),
                }
            }
        }
    };
    let registry = repo.registry;
    let mut response = match &route {
        Route::Manifest { reference, .. } => match reference {
            Reference::Tag(tag) => manifests::by_tag(req, state, &repo, tag).await,
            Reference::Digest(d) => manifests::by_digest(req, state, &repo, d).await,
        },
        Route::Blob { digest, .. } => blobs::get(req, state, &repo, digest).await,
        Route::TagsList { .. } => tags_list(req, state, &repo).await,
        Route::Referrers { digest, .. } => referrers::get(req, state, &repo, digest).await,
        Route::Base => base(),
    };
    if req.method() == Method::GET
        && response.status().is_success()
        && let BodySize::Sized(n) = response.body().size()
    {
        state.metrics.registry_served(registry, n);
    }
    if let Ok(v) = HeaderValue::from_str(registry) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("oci-namespace"), v);
    }
    response
}

/// `tags/list` is relayed uncached (listings change, and containerd never asks for them); only the
/// spec's paging parameters go along, checked.
async fn tags_list(req: &HttpRequest, state: &Arc<RegistryState>, repo: &Repo<'_>) -> HttpResponse {
    let key = path::tag_key(repo.registry, repo.name, "-tags-list");
    let (_, mut target) = match target(repo, "tags", "list", key) {
        Ok(kt) => kt,
        Err(why) => return answer::internal(&why),
    };
    {
        let mut pairs = target.url.query_pairs_mut();
        for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
            let ok = match k.as_ref() {
                "n" => v.len() <= 6 && v.bytes().all(|b| b.is_ascii_digit()),
                "last" => path::tag_ok(&v),
                _ => false,
            };
            if ok {
                pairs.append_pair(&k, &v);
            }
        }
    }
    if target.url.query() == Some("") {
        target.url.set_query(None);
    }
    answer::pass_through(req, state, &target, None).await
}
