//! What the origin says about each listed URL before planning: its size (HEAD) and, for images and boot
//! images, the md5 of its `.md5` sidecar.

use super::planner::{Kind, Remote};
use crate::upstream::{self, Upstream};

/// A `.md5` sidecar is a line of text; anything bigger is not one.
const MAX_SIDECAR: usize = 4096;

/// Size from a HEAD; md5 from the sidecar (not for kernels). `None`: the origin does not serve it.
pub(super) async fn remote(upstream: &Upstream, kind: Kind, url: &str) -> Option<Remote> {
    let parsed = url::Url::parse(url).ok()?;
    let mut head = upstream::Request::get(parsed.clone(), "sync");
    head.method = upstream::Method::Head;
    let size = match upstream.send(head).await {
        Ok(r) if r.status == 200 => r.content_length().unwrap_or(0),
        Ok(r) if kind == Kind::Kernel => {
            tracing::warn!(%url, status = r.status, "kernel HEAD failed; size unknown");
            0
        }
        Err(e) if kind == Kind::Kernel => {
            tracing::warn!(%url, error = %e, "kernel HEAD failed; size unknown");
            0
        }
        Ok(r) => {
            tracing::warn!(%url, status = r.status, "not on the origin");
            return None;
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "origin unreachable");
            return None;
        }
    };
    let md5 = if kind == Kind::Kernel {
        None
    } else {
        sidecar_md5(upstream, &parsed).await
    };
    Some(Remote { size, md5 })
}

async fn sidecar_md5(upstream: &Upstream, url: &url::Url) -> Option<String> {
    let sidecar = url::Url::parse(&format!("{url}.md5")).ok()?;
    let resp = upstream
        .send(upstream::Request::get(sidecar, "sync"))
        .await
        .ok()?;
    if resp.status != 200 {
        return None;
    }
    let body = upstream::read_body(resp.body, MAX_SIDECAR).await.ok()?;
    parse_md5(&String::from_utf8_lossy(&body))
}

/// The first whitespace-separated token of a `.md5` file, if it is 32 hex digits (lowercased).
pub fn parse_md5(text: &str) -> Option<String> {
    let token = text.split_whitespace().next()?;
    (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| token.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars() {
        assert_eq!(
            parse_md5("D41D8CD98F00B204E9800998ECF8427E  img.tar.lz4\n").as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(parse_md5("not-an-md5 file"), None);
        assert_eq!(parse_md5(""), None);
    }
}
