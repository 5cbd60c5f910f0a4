//! OCI distribution error answers (`{"errors":[{"code","message","detail"}]}`): containerd reads the
//! status to decide whether to fall back to the next host, people read the message. Status and code
//! come from one exhaustive match, so an error can never be sent with a status that contradicts it.

use super::path::PathError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{StatusCode, header::HeaderName};
use actix_web::{HttpResponse, HttpResponseBuilder};

/// Which kind of content an `*_UNKNOWN` error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Manifest,
    Blob,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    /// Not an endpoint a pull-through mirror serves.
    #[error("not a pull endpoint")]
    NotFound,
    #[error("invalid repository name")]
    NameInvalid,
    #[error("invalid tag")]
    TagInvalid,
    #[error("invalid digest")]
    DigestInvalid,
    /// The request names no registry the cache may dial.
    #[error("{0}")]
    NameUnknown(String),
    /// The registry does not have it (or did not a moment ago).
    #[error("{message}")]
    Unknown { object: Object, message: String },
    /// The registry wants credentials the cache does not hold.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Denied(String),
    /// Anything but GET and HEAD.
    #[error("{method} is not supported: image-cache is a read-only pull-through mirror")]
    Unsupported { method: String },
    /// The registry rate-limits the cache: answered 503 with the wait left, so containerd goes to the
    /// next host at once (relaying 429 would make it retry the cache five times first).
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// The registry failed, sent something unusable, or could not be reached.
    #[error("{0}")]
    Upstream(String),
    /// The cache's own store is failing.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<PathError> for OciError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::NotFound => OciError::NotFound,
            PathError::NameInvalid => OciError::NameInvalid,
            PathError::TagInvalid => OciError::TagInvalid,
            PathError::DigestInvalid => OciError::DigestInvalid,
        }
    }
}

impl OciError {
    pub fn status(&self) -> StatusCode {
        match self {
            OciError::NotFound | OciError::NameUnknown(_) | OciError::Unknown { .. } => {
                StatusCode::NOT_FOUND
            }
            OciError::NameInvalid | OciError::TagInvalid | OciError::DigestInvalid => {
                StatusCode::BAD_REQUEST
            }
            OciError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            OciError::Denied(_) => StatusCode::FORBIDDEN,
            OciError::Unsupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
            OciError::RateLimited { .. } | OciError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            OciError::Upstream(_) => StatusCode::BAD_GATEWAY,
            OciError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The distribution spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            OciError::NotFound => "NOT_FOUND",
            OciError::NameInvalid => "NAME_INVALID",
            OciError::TagInvalid => "MANIFEST_INVALID",
            OciError::DigestInvalid => "DIGEST_INVALID",
            OciError::NameUnknown(_) => "NAME_UNKNOWN",
            OciError::Unknown {
                object: Object::Manifest,
                ..
            } => "MANIFEST_UNKNOWN",
            OciError::Unknown {
                object: Object::Blob,
                ..
            } => "BLOB_UNKNOWN",
            OciError::Unauthorized(_) => "UNAUTHORIZED",
            OciError::Denied(_) => "DENIED",
            OciError::Unsupported { .. } => "UNSUPPORTED",
            OciError::RateLimited { .. } => "TOOMANYREQUESTS",
            OciError::Upstream(_) | OciError::Unavailable(_) | OciError::Internal(_) => "UNKNOWN",
        }
    }

    pub fn response(&self) -> HttpResponse {
        let mut b = builder(self.status());
        match self {
            OciError::Unsupported { .. } => {
                b.insert_header((header::ALLOW, "GET, HEAD"));
            }
            OciError::RateLimited { retry_after, .. } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                    b.insert_header((header::RETRY_AFTER, v));
                }
            }
            _ => {}
        }
        b.json(serde_json::json!({
            "errors": [{"code": self.code(), "message": self.to_string(), "detail": null}]
        }))
    }
}

fn builder(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header((
        HeaderName::from_static("docker-distribution-api-version"),
        "registry/2.0",
    ));
    b
}

/// `GET /v2/`: the API base answers 200 `{}`.
pub fn base() -> HttpResponse {
    builder(StatusCode::OK).json(serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_consistent_status_and_code() {
        let cases = [
            (OciError::NotFound, 404, "NOT_FOUND"),
            (OciError::NameInvalid, 400, "NAME_INVALID"),
            (OciError::TagInvalid, 400, "MANIFEST_INVALID"),
            (OciError::DigestInvalid, 400, "DIGEST_INVALID"),
            (OciError::NameUnknown("x".into()), 404, "NAME_UNKNOWN"),
            (
                OciError::Unknown {
                    object: Object::Blob,
                    message: "x".into(),
                },
                404,
                "BLOB_UNKNOWN",
            ),
            (
                OciError::Unknown {
                    object: Object::Manifest,
                    message: "x".into(),
                },
                404,
                "MANIFEST_UNKNOWN",
            ),
            (OciError::Unauthorized("x".into()), 401, "UNAUTHORIZED"),
            (OciError::Denied("x".into()), 403, "DENIED"),
            (
                OciError::Unsupported {
                    method: "PUT".into(),
                },
                405,
                "UNSUPPORTED",
            ),
            (
                OciError::RateLimited {
                    message: "x".into(),
                    retry_after: 7,
                },
                503,
                "TOOMANYREQUESTS",
            ),
            (OciError::Upstream("x".into()), 502, "UNKNOWN"),
            (OciError::Unavailable("x".into()), 503, "UNKNOWN"),
            (OciError::Internal("x".into()), 500, "UNKNOWN"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
            assert_eq!(e.response().status().as_u16(), status);
        }
        let limited = OciError::RateLimited {
            message: "x".into(),
            retry_after: 7,
        }
        .response();
        assert_eq!(limited.headers().get(header::RETRY_AFTER).unwrap(), "7");
        let put = OciError::Unsupported {
            method: "PUT".into(),
        }
        .response();
        assert_eq!(put.headers().get(header::ALLOW).unwrap(), "GET, HEAD");
    }
}
