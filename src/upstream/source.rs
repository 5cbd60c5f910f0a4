//! Upstream responses as the store's fill sources. Lives here, next to the client, so every front that
//! fills (file cache, peers, sync) reads an origin the same way: 200 → body, 304 → not modified,
//! anything else → unavailable with the status kept for the client.

use super::{Request, Response, Upstream, UpstreamError};
use crate::store::{SourceFuture, SourceMeta, SourceOutcome};

/// A GET of `url`, conditional when a stored copy is being revalidated (`etag`, `last_modified`).
pub fn get(
    upstream: Upstream,
    url: url::Url,
    etag: Option<String>,
    last_modified: Option<String>,
) -> SourceFuture {
    get_kind(upstream, url, "file", etag, last_modified)
}

/// `get` with the `kind` label of `image_cache_upstream_requests_total`.
pub fn get_kind(
    upstream: Upstream,
    url: url::Url,
    kind: &'static str,
    etag: Option<String>,
    last_modified: Option<String>,
) -> SourceFuture {
    Box::pin(async move {
        let mut request = Request::get(url, kind);
        if let Some(e) = etag {
            request = request.header("if-none-match", e);
        }
        if let Some(lm) = last_modified {
            request = request.header("if-modified-since", lm);
        }
        match upstream.send(request).await {
            Ok(resp) if resp.status == 200 => body_outcome(resp),
            Ok(resp) if resp.status == 304 => SourceOutcome::NotModified,
            Ok(resp) => SourceOutcome::Unavailable {
                status: Some(resp.status),
                message: format!("origin {} answered {}", resp.url, resp.status),
            },
            Err(e) => SourceOutcome::Unavailable {
                status: None,
                message: describe(&e),
            },
        }
    })
}

pub fn body_outcome(resp: Response) -> SourceOutcome {
    SourceOutcome::Body {
        meta: SourceMeta {
            content_length: resp.content_length(),
            content_type: resp.header("content-type").map(str::to_string),
            etag: resp.header("etag").map(str::to_string),
            last_modified: resp.header("last-modified").map(str::to_string),
            digest: None,
        },
        body: resp.body,
    }
}

pub fn describe(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Timeout(m) => format!("timeout: {m}"),
        other => other.to_string(),
    }
}
