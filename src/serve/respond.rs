//! Responses: a hit, a growing fill, an upstream answer relayed. Every body is streamed (or, for small
//! hot objects, sent from memory) and announces its exact length, so a client can tell a cut transfer
//! from a complete one.

use super::body::{self, Resume};
use super::conditional::{self, Decision};
use crate::metrics::Metrics;
use crate::store::{Fill, FillFailure, FillReader, Hit, ReadError, SourceMeta};
use crate::upstream;
use actix_web::body::SizedStream;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// A stored object: conditionals (ETag = content digest), Range, HEAD.
pub fn serve_hit(req: &HttpRequest, metrics: &Metrics, hit: Hit) -> HttpResponse {
    let row = &hit.row;
    let etag = format!("\"{}\"", row.digest);
    let last_modified = row
        .last_modified
        .as_deref()
        .and_then(|lm| httpdate::parse_http_date(lm).ok())
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(row.fetched_at));
    let last_modified_text = httpdate::fmt_http_date(last_modified);
    let decision = conditional::decide(
        &conditions(req),
        &conditional::Object {
            etag: Some(&etag),
            last_modified: Some(last_modified),
            size: Some(row.size),
        },
    );
    let mut builder = HttpResponse::Ok();
    builder
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    content_headers(
        &mut builder,
        row.content_type.as_deref(),
        Some(&last_modified_text),
    );
    let (start, end) = match decision {
        Decision::NotModified => {
            builder.status(StatusCode::NOT_MODIFIED);
            return builder.finish();
        }
        Decision::Unsatisfiable => return unsatisfiable(row.size),
        Decision::Full => (0, row.size),
        Decision::Partial { start, end } => {
            builder.status(StatusCode::PARTIAL_CONTENT);
            builder.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", row.size),
            ));
            (start, end + 1)
        }
    };
    if req.method() == Method::HEAD {
        return head_response(builder, end - start);
    }
    if let Some(bytes) = hit.body {
        metrics.served("cache", end - start);
        return builder.body(bytes.slice(start as usize..end as usize));
    }
    let stream = body::file_stream(hit.file, start, end, metrics.clone());
    builder.body(SizedStream::new(end - start, stream))
}

/// The request's conditional and Range headers.
fn conditions(req: &HttpRequest) -> conditional::Request<'_> {
    let h = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    conditional::Request {
        if_none_match: h(header::IF_NONE_MATCH),
        if_modified_since: h(header::IF_MODIFIED_SINCE),
        if_range: h(header::IF_RANGE),
        range: h(header::RANGE),
    }
}

/// A fill in progress (or just complete), from the first byte or a Range, as its bytes arrive.
/// Conditionals are answered against the version being filled: its `Last-Modified`, and its entity tag
/// (`etag`, the content digest) only once it is known — a client resuming another version with
/// `If-Range` gets the whole new body, never a 206 of it. `resume` continues from the origin when the
/// store gives up mid-way (disk full).
pub async fn stream_fill(
    req: &HttpRequest,
    metrics: &Metrics,
    fill: &Arc<Fill>,
    meta: &SourceMeta,
    etag: Option<&str>,
    resume: Option<Resume>,
) -> HttpResponse {
    let last_modified = meta
        .last_modified
        .as_deref()
        .and_then(|lm| httpdate::parse_http_date(lm).ok());
    let decision = conditional::decide(
        &conditions(req),
        &conditional::Object {
            etag,
            last_modified,
            size: meta.content_length,
        },
    );
    let mut builder = HttpResponse::Ok();
    builder.insert_header((header::ACCEPT_RANGES, "bytes"));
    if let Some(e) = etag {
        builder.insert_header((header::ETAG, e));
    }
    content_headers(
        &mut builder,
        meta.content_type.as_deref(),
        meta.last_modified.as_deref(),
    );
    let Some(total) = meta.content_length else {
        if decision == Decision::NotModified {
            builder.status(StatusCode::NOT_MODIFIED);
            return builder.finish();
        }
        // Unknown length: the whole body, chunked. A HEAD says nothing of a length it does not know
        // (no `Content-Length: 0`).
        if req.method() == Method::HEAD {
            return builder.body(actix_web::body::None::new());
        }
        let (reader, first) = match first_chunk(fill, 0, None, resume.is_some(), metrics).await {
            Ok(r) => r,
            Err(failed) => return failed,
        };
        let rest = body::fill_stream(reader, None, resume, metrics.clone());
        return builder.streaming(futures_util::stream::iter(first.map(Ok)).chain(rest));
    };
    let (start, end) = match decision {
        Decision::NotModified => {
            builder.status(StatusCode::NOT_MODIFIED);
            return builder.finish();
        }
        Decision::Unsatisfiable => return unsatisfiable(total),
        Decision::Full => (0, total),
        Decision::Partial { start, end } => {
            builder.status(StatusCode::PARTIAL_CONTENT);
            builder.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            ));
            (start, end + 1)
        }
    };
    if req.method() == Method::HEAD {
        return head_response(builder, end - start);
    }
    let (reader, first) = match first_chunk(fill, start, Some(end), resume.is_some(), metrics).await
    {
        Ok(r) => r,
        Err(failed) => return failed,
    };
    let rest = body::fill_stream(reader, Some(end), resume, metrics.clone());
    let stream = futures_util::stream::iter(first.map(Ok)).chain(rest);
    builder.body(SizedStream::new(end - start, stream))
}

/// The first bytes of a growing fill's range, read before the response head is written: a fill that fails
/// before them (a wrong digest found at once, a small body cut) gets a clean 502 instead of a connection
/// dropped before any head, which clients report as a broken server rather than a failed upstream. A store
/// that gives up (disk full) while a `resume` can continue from the origin is left to `body::fill_stream`.
async fn first_chunk(
    fill: &Arc<Fill>,
    start: u64,
    end: Option<u64>,
    resumable: bool,
    metrics: &Metrics,
) -> Result<(FillReader, Option<bytes::Bytes>), HttpResponse> {
    if end == Some(start) {
        return Ok((fill.reader(start, end), None));
    }
    let mut reader = fill.reader(start, end);
    match reader.next_chunk().await {
        Some(Ok(chunk)) => {
            metrics.served("upstream", chunk.len() as u64);
            Ok((reader, Some(chunk)))
        }
        None => Ok((reader, None)),
        Some(Err(ReadError::Failed {
            failure: FillFailure::Storage(_),
            ..
        })) if resumable => Ok((fill.reader(start, end), None)),
        Some(Err(e)) => Err(HttpResponse::BadGateway()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(format!("the upstream transfer failed: {e}\n"))),
    }
}

/// A HEAD answer announcing `len` bytes: actix writes the Content-Length of the body and sends none.
pub fn head_response(mut builder: HttpResponseBuilder, len: u64) -> HttpResponse {
    builder.body(SizedStream::new(
        len,
        futures_util::stream::empty::<Result<bytes::Bytes, body::BoxError>>(),
    ))
}

pub fn unsatisfiable(total: u64) -> HttpResponse {
    HttpResponse::RangeNotSatisfiable()
        .insert_header((header::CONTENT_RANGE, format!("bytes */{total}")))
        .finish()
}

pub fn content_headers(
    builder: &mut HttpResponseBuilder,
    content_type: Option<&str>,
    last_modified: Option<&str>,
) {
    builder.insert_header((
        header::CONTENT_TYPE,
        content_type.unwrap_or("application/octet-stream"),
    ));
    if let Some(lm) = last_modified {
        builder.insert_header((header::LAST_MODIFIED, lm));
    }
}

/// Sets the headers every answer of the file and registry fronts carries. Their bodies come from upstreams
/// the cache does not vouch for (with `registry.open`, from any registry a client names) and are served
/// from the same origin as the status page: a browser must never sniff one into a type that runs, and one
/// it renders anyway runs sandboxed, allowed nothing.
pub fn untrusted_content(mut resp: HttpResponse) -> HttpResponse {
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    resp
}

/// An upstream answer passed on uncached: its status, the named headers, and its body as it arrives.
pub fn relay(
    req: &HttpRequest,
    metrics: &Metrics,
    resp: upstream::Response,
    headers: &[&str],
) -> HttpResponse {
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = HttpResponse::build(status);
    for name in headers {
        if let Some(v) = resp.header(name) {
            builder.insert_header((*name, v));
        }
    }
    let length = resp.content_length();
    if req.method() == Method::HEAD || matches!(resp.status, 204 | 304) {
        return match length {
            Some(l) if req.method() == Method::HEAD => head_response(builder, l),
            _ => builder.finish(),
        };
    }
    let stream = body::relay(resp.body, metrics.clone());
    match length {
        Some(l) => builder.body(SizedStream::new(l, stream)),
        None => builder.streaming(stream),
    }
}
