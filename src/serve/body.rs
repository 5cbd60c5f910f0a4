//! Response bodies: a stored file read in large positioned chunks, a fill followed as it grows (resumed
//! from the origin if the store gives up mid-way), and plain pass-through.

use crate::metrics::Metrics;
use crate::store::{FillFailure, FillReader, ReadError};
use crate::upstream::{self, Upstream};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::fs::File;
use std::sync::Arc;

const FILE_CHUNK: usize = 128 * 1024;

pub type BoxError = Box<dyn std::error::Error>;

/// `[start, end)` of a stored file.
pub fn file_stream(
    file: Arc<File>,
    start: u64,
    end: u64,
    metrics: Metrics,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let served = metrics.served_counter("cache");
    futures_util::stream::try_unfold(start, move |pos| {
        let file = Arc::clone(&file);
        let served = served.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(FILE_CHUNK as u64) as usize;
            let buf = crate::store::fs::read_chunk(&file, pos, len).await?;
            if buf.is_empty() {
                return Err(std::io::Error::other(
                    "stored blob is shorter than its index row",
                ));
            }
            served.inc_by(buf.len() as u64);
            let next = pos + buf.len() as u64;
            Ok(Some((buf.into_bytes(), next)))
        }
    })
}

/// Where to continue when the store cannot keep a fill: the origin URL and what identifies the version
/// being filled. Resuming asks for the rest with `If-Range` and continues only with a 206 of exactly
/// that version and range; anything else cuts the client's transfer — two versions are never spliced.
#[derive(Clone)]
pub struct Resume {
    pub upstream: Upstream,
    pub origin: upstream::Origin,
    /// The origin's entity tag for the version being filled (only a strong one is used).
    pub etag: Option<String>,
    /// The origin's Last-Modified, used when there is no strong entity tag.
    pub last_modified: Option<String>,
    /// The whole object's length, when the origin announced it.
    pub total: Option<u64>,
}

/// Follows a fill. If the store gives up (disk full), the rest of the range comes straight from the
/// origin with a Range request, so the client still gets one complete body.
pub fn fill_stream(
    reader: FillReader,
    end: Option<u64>,
    resume: Option<Resume>,
    metrics: Metrics,
) -> impl Stream<Item = Result<Bytes, BoxError>> + 'static {
    enum State {
        Fill(FillReader),
        Origin(upstream::Body),
        Done,
    }
    let served = metrics.served_counter("upstream");
    futures_util::stream::unfold(State::Fill(reader), move |mut state| {
        let resume = resume.clone();
        let served = served.clone();
        async move {
            loop {
                let item = match &mut state {
                    State::Done => return None,
                    State::Origin(body) => body.next().await.map(|r| r.map_err(BoxError::from)),
                    State::Fill(reader) => match reader.next_chunk().await {
                        Some(Err(ReadError::Failed {
                            failure: FillFailure::Storage(why),
                            delivered_to,
                        })) => {
                            // The store gave up (disk full): continue this client's body from the origin.
                            let Some(resume) = &resume else {
                                return Some((Err(why.into()), State::Done));
                            };
                            tracing::warn!(%why, offset = delivered_to, "store gave up; continuing from the origin");
                            match resume_from(resume, delivered_to, end).await {
                                Ok(body) => {
                                    state = State::Origin(body);
                                    continue;
                                }
                                Err(e) => return Some((Err(e.into()), State::Done)),
                            }
                        }
                        other => other.map(|r| r.map_err(BoxError::from)),
                    },
                };
                return match item {
                    Some(Ok(chunk)) => {
                        served.inc_by(chunk.len() as u64);
                        Some((Ok(chunk), state))
                    }
                    Some(Err(e)) => {
                        // Let the server write out what it holds (the head, the bytes so far) before the
                        // error closes the connection: the client must see a cut body, not no answer.
                        tokio::task::yield_now().await;
                        Some((Err(e), State::Done))
                    }
                    None => None,
                };
            }
        }
    })
}

/// Requests `[from, end)` of the same version from the origin.
async fn resume_from(
    resume: &Resume,
    from: u64,
    end: Option<u64>,
) -> Result<upstream::Body, String> {
    let strong = resume.etag.as_deref().filter(|e| e.starts_with('"'));
    let Some(validator) = strong.or(resume.last_modified.as_deref()) else {
        return Err("the origin gave no validator to resume with; cutting the transfer".into());
    };
    let range = match end {
        Some(e) => format!("bytes={from}-{}", e.saturating_sub(1)),
        None => format!("bytes={from}-"),
    };
    let req = resume
        .origin
        .get("file")
        .header("range", range)
        .header("if-range", validator);
    let resp = resume.upstream.send(req).await.map_err(|e| e.to_string())?;
    match resp.status {
        206 => {
            let same_version = match strong {
                Some(etag) => resp.header("etag") == Some(etag),
                None => resp.header("last-modified") == resume.last_modified.as_deref(),
            };
            if !same_version {
                return Err("the origin's 206 is of another version; cutting the transfer".into());
            }
            let (start, last, total) = resp
                .header("content-range")
                .and_then(content_range)
                .ok_or("the origin's 206 has no usable Content-Range; cutting the transfer")?;
            let want_last = match (end, resume.total.or(total)) {
                (Some(e), _) => e.checked_sub(1),
                (None, Some(t)) => t.checked_sub(1),
                (None, None) => Some(last),
            };
            let total_agrees = match (resume.total, total) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            };
            if start != from || Some(last) != want_last || !total_agrees {
                return Err(format!(
                    "the origin sent bytes {start}-{last} when {from}-{} were asked for; cutting the transfer",
                    want_last.map_or("end".to_string(), |l| l.to_string())
                ));
            }
            Ok(Box::pin(exactly(resp.body, last - start + 1)))
        }
        200 => Err(format!(
            "the origin's content changed while byte {from} was being sent (it answered 200 to If-Range); \
             cutting the transfer rather than splicing two versions"
        )),
        s => Err(format!("origin answered {s} when resuming at byte {from}")),
    }
}

/// `Content-Range: bytes <first>-<last>/<total or *>`.
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let spec = v.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (first <= last).then_some((first, last, total))
}

/// A body that must be exactly `len` bytes: fewer or more is an error, never a clean end.
fn exactly(
    body: upstream::Body,
    len: u64,
) -> impl Stream<Item = Result<Bytes, upstream::BodyError>> {
    futures_util::stream::unfold(
        (body, 0u64, false),
        move |(mut body, got, done)| async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) if got + chunk.len() as u64 <= len => {
                    let got = got + chunk.len() as u64;
                    Some((Ok(chunk), (body, got, false)))
                }
                Some(Ok(_)) => Some((
                    Err(upstream::BodyError::Broken(format!(
                        "the resumed body is longer than {len} bytes"
                    ))),
                    (body, got, true),
                )),
                Some(Err(e)) => Some((Err(e), (body, got, true))),
                None if got < len => Some((
                    Err(upstream::BodyError::Broken(format!(
                        "the resumed body ended after {got} of {len} bytes"
                    ))),
                    (body, got, true),
                )),
                None => None,
            }
        },
    )
}

/// An origin body relayed as is, counted as upstream bytes.
pub fn relay(
    body: upstream::Body,
    metrics: Metrics,
) -> impl Stream<Item = Result<Bytes, BoxError>> + 'static {
    let served = metrics.served_counter("upstream");
    body.map(move |item| {
        item.inspect(|b| {
            served.inc_by(b.len() as u64);
        })
        .map_err(BoxError::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(content_range("bytes 9-5/10"), None);
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }
}
