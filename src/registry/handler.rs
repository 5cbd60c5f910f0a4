//! The `/v2/` front, top to bottom: method, path grammar, `ns` → configured upstream, then the
//! endpoint. Everything a mirror must refuse is refused here with an OCI error, before any upstream or
//! store is touched. Fetching and caching manifests and blobs is not built yet: valid requests get
//! `404 MANIFEST_UNKNOWN` / `BLOB_UNKNOWN`, which makes containerd fall back to the registry itself.

use super::error::{base, oci_error, unsupported};
use super::path::{self, PathError, Route};
use crate::config::RegistryConfig;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};

pub fn handle(req: &HttpRequest, config: &RegistryConfig) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return unsupported(req.method().as_str());
    }
    let route = match path::parse(req.path()) {
        Ok(r) => r,
        Err(PathError::NotFound) => {
            return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "not a pull endpoint");
        }
        Err(e) => {
            return oci_error(
                StatusCode::BAD_REQUEST,
                e.code(),
                "invalid repository name, tag or digest",
            );
        }
    };
    if route == Route::Base {
        return base();
    }
    let ns = path::ns_param(req.query_string());
    let Some((registry, _upstream)) = path::upstream_for(ns.as_deref(), &config.upstreams) else {
        let why = match ns {
            Some(ns) => format!("registry {ns:?} is not in registry.upstreams"),
            None => "no ns parameter: configure containerd with a hosts.toml (image-cache containerd-hosts)".into(),
        };
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &why);
    };
    let mut response = match route {
        Route::Manifest { .. } => oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "the pull-through cache is not enabled yet; fetch from the registry",
        ),
        Route::Blob { .. } => oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "the pull-through cache is not enabled yet; fetch from the registry",
        ),
        Route::TagsList { .. } | Route::Base => oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "tag listing is not served by this mirror",
        ),
    };
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(registry) {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("oci-namespace"),
            v,
        );
    }
    response
}
