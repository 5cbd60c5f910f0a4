//! Where a redirect may lead. Pure.

use url::Url;

pub const MAX_REDIRECTS: usize = 10;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Follow {
    /// Request this URL next; `same_origin` false means credentials must not travel along.
    To {
        url: Url,
        same_origin: bool,
    },
    Refuse(String),
}

pub(super) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Resolves `location` against `current`; refuses non-HTTP schemes and HTTPS→HTTP downgrades.
pub(super) fn follow(current: &Url, location: &str) -> Follow {
    let next = match current.join(location) {
        Ok(u) => u,
        Err(e) => {
            return Follow::Refuse(format!("redirect to unparsable location `{location}`: {e}"));
        }
    };
    if !matches!(next.scheme(), "http" | "https") {
        return Follow::Refuse(format!(
            "redirect to unsupported scheme `{}`",
            next.scheme()
        ));
    }
    if current.scheme() == "https" && next.scheme() == "http" {
        return Follow::Refuse(format!(
            "redirect from https to plain http ({next}) refused"
        ));
    }
    let same_origin = next.origin() == current.origin();
    Follow::To {
        url: next,
        same_origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_rules() {
        let cur = Url::parse("https://github.com/o/r/releases/download/v1/k").unwrap();
        let cases = [
            (
                "https://objects.githubusercontent.com/x?sig=1",
                Some(("https://objects.githubusercontent.com/x?sig=1", false)),
            ),
            ("/o/r/other", Some(("https://github.com/o/r/other", true))),
            (
                "../v2/k",
                Some(("https://github.com/o/r/releases/download/v2/k", true)),
            ),
            ("http://github.com/plain", None),
            ("ftp://x/y", None),
            ("file:///etc/passwd", None),
        ];
        for (loc, want) in cases {
            match (follow(&cur, loc), want) {
                (Follow::To { url, same_origin }, Some((u, s))) => {
                    assert_eq!(url.as_str(), u, "{loc}");
                    assert_eq!(same_origin, s, "{loc}");
                }
                (Follow::Refuse(_), None) => {}
                (got, want) => panic!("{loc}: got {got:?}, want {want:?}"),
            }
        }
        let plain = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert!(matches!(
            follow(&plain, "https://cdn.test/b"),
            Follow::To {
                same_origin: false,
                ..
            }
        ));
        assert!(is_redirect(307) && !is_redirect(304) && !is_redirect(200));
    }
}
