//! What the origin says about each listed URL before planning: its size (HEAD) and, for images and boot
//! images, the md5 of its `.md5` sidecar.

use super::planner::{Kind, Remote};
use crate::upstream::{self, Upstream};

/// A `.md5` sidecar is a line of text; anything bigger is not one.
const MAX_SIDECAR: usize = 4096;

/// Why the origin told us nothing about a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unprobed {
    /// The origin answered, and does not serve it (404, 403…): the item is skipped.
    Missing,
    /// The origin could not be asked (down, unresolvable, timing out): the item fails the run.
    Unreachable(String),
    /// The cache will not download it that way (`origin::Refused`): the item fails the run.
    Refused(String),
}

/// Size from a HEAD; md5 from the sidecar (not for kernels).
pub(super) async fn remote(
    upstream: &Upstream,
    kind: Kind,
    url: &url::Url,
) -> Result<Remote, Unprobed> {
    let mut head = upstream::Request::get(url.clone(), "sync");
    head.method = upstream::Method::Head;
    let size = match upstream.send(head).await {
        Ok(r) if r.status == 200 => r.content_length().unwrap_or(0),
        Ok(r) if kind == Kind::Kernel && r.status != 404 => {
            tracing::warn!(%url, status = r.status, "kernel HEAD failed; size unknown");
            0
        }
        Ok(r) if r.status >= 500 => {
            tracing::warn!(%url, status = r.status, "origin failing");
            return Err(Unprobed::Unreachable(format!(
                "the origin answered {} to {url}",
                r.status
            )));
        }
        Ok(r) => {
            tracing::warn!(%url, status = r.status, "not on the origin");
            return Err(Unprobed::Missing);
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "origin unreachable");
            return Err(Unprobed::Unreachable(format!(
                "the origin of {url} is unreachable: {e}"
            )));
        }
    };
    let md5 = if kind == Kind::Kernel {
        None
    } else {
        sidecar_md5(upstream, url).await
    };
    Ok(Remote { size, md5 })
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
