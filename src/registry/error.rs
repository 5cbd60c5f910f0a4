//! OCI distribution error answers (`{"errors":[{"code","message","detail"}]}`): containerd reads the
//! status to decide whether to fall back to the next host, people read the message.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, HttpResponseBuilder};

fn builder(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header(("docker-distribution-api-version", "registry/2.0"));
    b
}

pub fn oci_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    builder(status).json(serde_json::json!({
        "errors": [{"code": code, "message": message, "detail": null}]
    }))
}

/// Write methods: a pull-through mirror has nothing to push to.
pub fn unsupported(method: &str) -> HttpResponse {
    builder(StatusCode::METHOD_NOT_ALLOWED)
        .insert_header((header::ALLOW, "GET, HEAD"))
        .json(serde_json::json!({
            "errors": [{
                "code": "UNSUPPORTED",
                "message": format!("{method} is not supported: image-cache is a read-only pull-through mirror"),
                "detail": null
            }]
        }))
}

/// `GET /v2/`: the API base answers 200 `{}`.
pub fn base() -> HttpResponse {
    builder(StatusCode::OK).json(serde_json::json!({}))
}
