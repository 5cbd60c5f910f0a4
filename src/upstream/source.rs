//! Upstream responses as the store's fill sources. Lives here, next to the client, so every front that
//! fills (file cache, peers, sync) reads an origin the same way: 200 → body, 304 → not modified,
//! anything else → unavailable with the status kept for the client.

use super::{BodyError, Origin, Request, Response, Upstream, UpstreamError};
use crate::store::{SourceError, SourceFuture, SourceMeta, SourceOutcome};
use futures_util::StreamExt;

/// A GET of a file's origin, conditional when a stored copy is being revalidated (`etag`,
/// `last_modified`).
pub fn get(
    upstream: Upstream,
    origin: &Origin,
    etag: Option<String>,
    last_modified: Option<String>,
) -> SourceFuture {
    conditional(upstream, origin.get("file"), etag, last_modified)
}

/// `get` with the `kind` label of `image_cache_upstream_requests_total`, of a host the operator named.
pub fn get_kind(
    upstream: Upstream,
    url: url::Url,
    kind: &'static str,
    etag: Option<String>,
    last_modified: Option<String>,
) -> SourceFuture {
    conditional(upstream, Request::get(url, kind), etag, last_modified)
}

fn conditional(
    upstream: Upstream,
    mut request: Request,
    etag: Option<String>,
    last_modified: Option<String>,
) -> SourceFuture {
    Box::pin(async move {
        if let Some(e) = etag {
            request = request.header("if-none-match", e);
        }
        if let Some(lm) = last_modified {
            request = request.header("if-modified-since", lm);
        }
        match upstream.send(request).await {
            Ok(resp) if resp.status == 200 => body_outcome(resp),
            Ok(resp) if resp.status == 304 => SourceOutcome::NotModified,
            Ok(resp) => SourceOutcome::Unavailable(SourceError::Status {
                status: resp.status,
                message: format!("origin {} answered {}", resp.url, resp.status),
            }),
            Err(e) => SourceOutcome::Unavailable(source_error(e)),
        }
    })
}

pub fn body_outcome(resp: Response) -> SourceOutcome {
    if let Some(refused) = coding_refusal(&resp) {
        return SourceOutcome::Unavailable(refused);
    }
    let meta = meta_of(&resp);
    SourceOutcome::Body {
        body: body_of(resp.body, meta.content_length),
        meta,
    }
}

/// A body in a content coding (`gzip`, `br`, …) is not the object: the cache asks for none, and an origin
/// or CDN that encodes anyway would have its compressed bytes stored and served as the file. Refused.
pub fn coding_refusal(resp: &Response) -> Option<SourceError> {
    let coding = resp.header("content-encoding");
    (!identity_coding(coding)).then(|| {
        SourceError::Refused(format!(
            "{} sent Content-Encoding `{}` although none was asked for; not stored",
            resp.url,
            coding.unwrap_or_default().trim()
        ))
    })
}

/// Whether a `Content-Encoding` value leaves the body as it is: none, empty, or `identity`.
pub fn identity_coding(value: Option<&str>) -> bool {
    value
        .map(str::trim)
        .is_none_or(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
}

/// What a 200 answer's headers tell the store about its body.
pub fn meta_of(resp: &Response) -> SourceMeta {
    SourceMeta {
        content_length: resp.content_length(),
        content_type: resp.header("content-type").map(str::to_string),
        etag: resp.header("etag").map(str::to_string),
        last_modified: resp.header("last-modified").map(str::to_string),
        digest: None,
    }
}

/// A response body as a fill's body, its errors by cause. With a known length, a body that ends before
/// it is an error here (`Short`), not a clean end: whoever reads it (a fill, a resume) learns at the
/// point of the cut, and more bytes than announced are refused.
pub fn body_of(body: super::Body, announced: Option<u64>) -> crate::store::SourceBody {
    let body = body.map(|item| item.map_err(body_error));
    let Some(announced) = announced else {
        return Box::pin(body);
    };
    Box::pin(futures_util::stream::unfold(
        (body, 0u64, false),
        move |(mut body, got, done)| async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) => {
                    let got = got + chunk.len() as u64;
                    if got > announced {
                        let e = SourceError::Refused(format!(
                            "the body is longer than the {announced} bytes announced"
                        ));
                        return Some((Err(e), (body, got, true)));
                    }
                    Some((Ok(chunk), (body, got, false)))
                }
                Some(Err(e)) => Some((Err(e), (body, got, true))),
                None if got < announced => Some((
                    Err(SourceError::Short { got, announced }),
                    (body, got, true),
                )),
                None => None,
            }
        },
    ))
}

/// A request that got no response, by cause.
pub fn source_error(e: UpstreamError) -> SourceError {
    match e {
        UpstreamError::Timeout(m) => SourceError::Timeout(m),
        UpstreamError::Connect(m) => SourceError::Unreachable(m),
        UpstreamError::Closed => SourceError::Abandoned("the upstream client is shut down".into()),
        e @ (UpstreamError::Protocol(_)
        | UpstreamError::Redirect(_)
        | UpstreamError::Forbidden(_)) => SourceError::Refused(e.to_string()),
    }
}

/// A body that stopped early, by cause.
pub fn body_error(e: BodyError) -> SourceError {
    match e {
        BodyError::Idle(secs) => SourceError::Timeout(format!("no body bytes for {secs}s")),
        BodyError::Broken(m) => SourceError::Reset(m),
        e @ BodyError::TooLarge(_) => SourceError::Refused(e.to_string()),
    }
}
