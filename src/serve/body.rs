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
    futures_util::stream::try_unfold(start, move |pos| {
        let file = Arc::clone(&file);
        let metrics = metrics.clone();
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
            metrics.served("cache", buf.len() as u64);
            let next = pos + buf.len() as u64;
            Ok(Some((Bytes::from(buf), next)))
        }
    })
}

/// Where to continue when the store cannot keep a fill: the origin URL and its validator.
#[derive(Clone)]
pub struct Resume {
    pub upstream: Upstream,
    pub url: url::Url,
    pub etag: Option<String>,
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
    futures_util::stream::unfold(State::Fill(reader), move |mut state| {
        let resume = resume.clone();
        let metrics = metrics.clone();
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
                        metrics.served("upstream", chunk.len() as u64);
                        Some((Ok(chunk), state))
                    }
                    Some(Err(e)) => Some((Err(e), State::Done)),
                    None => None,
                };
            }
        }
    })
}

/// Requests `[from, end)` from the origin. A 206 continues the body as is; a 200 (origin ignores Range)
/// is skipped forward to `from`; anything else aborts.
async fn resume_from(
    resume: &Resume,
    from: u64,
    end: Option<u64>,
) -> Result<upstream::Body, String> {
    let range = match end {
        Some(e) => format!("bytes={from}-{}", e.saturating_sub(1)),
        None => format!("bytes={from}-"),
    };
    let mut req = upstream::Request::get(resume.url.clone(), "file").header("range", range);
    if let Some(etag) = &resume.etag {
        req = req.header("if-range", etag.clone());
    }
    let resp = resume.upstream.send(req).await.map_err(|e| e.to_string())?;
    match resp.status {
        206 => Ok(resp.body),
        200 => Ok(Box::pin(skip_bytes(resp.body, from, end))),
        s => Err(format!("origin answered {s} when resuming at byte {from}")),
    }
}

fn skip_bytes(
    body: upstream::Body,
    skip: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, upstream::BodyError>> {
    let limit = end.map(|e| e - skip);
    futures_util::stream::unfold(
        (body, skip, limit),
        |(mut body, mut skip, mut left)| async move {
            loop {
                if left == Some(0) {
                    return None;
                }
                let mut chunk = match body.next().await? {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (body, 0, Some(0)))),
                };
                if skip > 0 {
                    let n = (chunk.len() as u64).min(skip) as usize;
                    skip -= n as u64;
                    chunk = chunk.slice(n..);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                if let Some(l) = left.as_mut() {
                    if (chunk.len() as u64) > *l {
                        chunk = chunk.slice(..*l as usize);
                    }
                    *l -= chunk.len() as u64;
                }
                return Some((Ok(chunk), (body, skip, left)));
            }
        },
    )
}

/// An origin body relayed as is, counted as upstream bytes.
pub fn relay(
    body: upstream::Body,
    metrics: Metrics,
) -> impl Stream<Item = Result<Bytes, BoxError>> + 'static {
    body.map(move |item| {
        item.inspect(|b| metrics.served("upstream", b.len() as u64))
            .map_err(BoxError::from)
    })
}
