//! Routes for operators and orchestration on non-intercepted hosts: `/health` (metal-compatible),
//! `/ready`, `/metrics`, and a small status page at `/`.

use super::HttpState;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};

pub fn handle(req: &HttpRequest, state: &HttpState) -> HttpResponse {
    match req.path() {
        "/health" => health(state),
        "/ready" => ready(state),
        "/metrics" => metrics(state),
        "/" => status_page(state),
        _ => HttpResponse::NotFound().body("not found\n"),
    }
}

/// This node's own health: store open and readable, front answering (it is, since this runs).
fn health(state: &HttpState) -> HttpResponse {
    match state.store.get(&state.health_probe_key) {
        Ok(_) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("HEALTHY"),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unreadable");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("UNHEALTHY: store unreadable")
        }
    }
}

fn ready(state: &HttpState) -> HttpResponse {
    if state.lifecycle.is_ready() {
        HttpResponse::Ok().content_type("text/plain").body("READY")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("NOT READY")
    }
}

fn metrics(state: &HttpState) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(state.metrics.encode())
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn status_page(state: &HttpState) -> HttpResponse {
    let bytes = state.store.total_bytes();
    let max = state.store.max_size();
    let fills = state.store.fills();
    let mut rows = String::new();
    for f in &fills {
        let total = f.total.map_or("?".to_string(), |t| t.to_string());
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.key),
            f.written,
            total,
            f.readers
        ));
    }
    let mut sections = String::new();
    for source in state
        .status_sources
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let s = source();
        let cells = |row: &[String], tag: &str| {
            row.iter()
                .map(|c| format!("<{tag}>{}</{tag}>", escape(c)))
                .collect::<String>()
        };
        let body: String = s
            .rows
            .iter()
            .map(|r| format!("<tr>{}</tr>", cells(r, "td")))
            .collect();
        sections.push_str(&format!(
            "<h2>{}</h2><p>{}</p><table><tr>{}</tr>{body}</table>",
            escape(&s.title),
            escape(&s.summary),
            cells(&s.header, "th")
        ));
    }
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>image-cache</title></head><body>\
         <h1>image-cache</h1><p>{} objects, {} of {} bytes ({:.1}%)</p>\
         <h2>Fills in flight</h2><table><tr><th>key</th><th>written</th><th>total</th><th>readers</th></tr>{}</table>\
         {sections}<p><a href=\"/metrics\">metrics</a></p></body></html>",
        state.store.object_count(),
        bytes,
        max,
        if max > 0 {
            bytes as f64 * 100.0 / max as f64
        } else {
            0.0
        },
        rows
    );
    HttpResponse::build(StatusCode::OK)
        .content_type("text/html; charset=utf-8")
        .body(html)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
