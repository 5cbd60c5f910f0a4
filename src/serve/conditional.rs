//! What to answer for an object, given the request's conditional and Range headers: a stored one (its
//! entity tag is its digest) or one being filled (no entity tag yet: only its Last-Modified can match).
//! Pure.

use actix_web::http::header::{ByteRangeSpec, Range};
use std::str::FromStr;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    NotModified,
    Full,
    /// Inclusive byte range.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

pub struct Request<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub range: Option<&'a str>,
}

pub struct Object<'a> {
    /// Quoted strong entity tag, e.g. `"sha256:ab…"`; `None` while the content is not known yet.
    pub etag: Option<&'a str>,
    pub last_modified: Option<SystemTime>,
    /// `None`: the length is not known yet (a Range cannot be answered).
    pub size: Option<u64>,
}

fn etag_listed(list: &str, etag: Option<&str>) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || Some(t.trim_start_matches("W/")) == etag)
}

pub fn decide(req: &Request<'_>, obj: &Object<'_>) -> Decision {
    if let Some(inm) = req.if_none_match {
        if etag_listed(inm, obj.etag) {
            return Decision::NotModified;
        }
    } else if let (Some(ims), Some(lm)) = (req.if_modified_since, obj.last_modified)
        && let Ok(since) = httpdate::parse_http_date(ims)
        && lm <= since
    {
        return Decision::NotModified;
    }
    let (Some(range), Some(size)) = (req.range, obj.size) else {
        return Decision::Full;
    };
    if let Some(if_range) = req.if_range {
        // RFC 9110 13.1.5: a strong entity tag, or the exact Last-Modified date, of this very version;
        // anything else (a weak tag, an older date, a tag not known yet) gets the whole body.
        let matches = if if_range.starts_with('"') || if_range.starts_with("W/") {
            Some(if_range) == obj.etag
        } else {
            httpdate::parse_http_date(if_range)
                .ok()
                .zip(obj.last_modified)
                .is_some_and(|(d, lm)| lm == d)
        };
        if !matches {
            return Decision::Full;
        }
    }
    partial(range, size)
}

/// A single satisfiable range → Partial; several ranges are answered with the whole body (allowed by RFC
/// 9110 and what most clients expect); a malformed header is ignored.
pub fn partial(range: &str, size: u64) -> Decision {
    let Ok(Range::Bytes(specs)) = Range::from_str(range) else {
        return Decision::Full;
    };
    match specs.as_slice() {
        [one] => match spec_range(one, size) {
            Some((start, end)) => Decision::Partial { start, end },
            None => Decision::Unsatisfiable,
        },
        _ => Decision::Full,
    }
}

fn spec_range(spec: &ByteRangeSpec, size: u64) -> Option<(u64, u64)> {
    spec.to_satisfiable_range(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const ETAG: &str = "\"sha256:abc\"";

    fn obj(size: u64) -> Object<'static> {
        Object {
            etag: Some(ETAG),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            size: Some(size),
        }
    }

    fn req<'a>(
        inm: Option<&'a str>,
        ims: Option<&'a str>,
        if_range: Option<&'a str>,
        range: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            if_none_match: inm,
            if_modified_since: ims,
            if_range,
            range,
        }
    }

    #[test]
    fn table() {
        let later = "Wed, 15 Nov 2023 00:00:00 GMT";
        let earlier = "Mon, 01 Jan 2001 00:00:00 GMT";
        let exact = "Tue, 14 Nov 2023 22:13:20 GMT";
        let cases: Vec<(Request<'_>, Decision)> = vec![
            (req(None, None, None, None), Decision::Full),
            (req(Some(ETAG), None, None, None), Decision::NotModified),
            (
                req(Some("\"other\", W/\"sha256:abc\""), None, None, None),
                Decision::NotModified,
            ),
            (req(Some("*"), None, None, None), Decision::NotModified),
            (
                req(Some("\"other\""), Some(later), None, None),
                Decision::Full,
            ),
            (req(None, Some(later), None, None), Decision::NotModified),
            (req(None, Some(earlier), None, None), Decision::Full),
            (req(None, Some("garbage"), None, None), Decision::Full),
            (
                req(None, None, None, Some("bytes=0-9")),
                Decision::Partial { start: 0, end: 9 },
            ),
            (
                req(None, None, None, Some("bytes=90-")),
                Decision::Partial { start: 90, end: 99 },
            ),
            (
                req(None, None, None, Some("bytes=-10")),
                Decision::Partial { start: 90, end: 99 },
            ),
            (
                req(None, None, None, Some("bytes=50-500")),
                Decision::Partial { start: 50, end: 99 },
            ),
            (
                req(None, None, None, Some("bytes=100-")),
                Decision::Unsatisfiable,
            ),
            (req(None, None, None, Some("bytes=0-1,5-6")), Decision::Full),
            (req(None, None, None, Some("lines=1-2")), Decision::Full),
            (
                req(None, None, Some(ETAG), Some("bytes=0-0")),
                Decision::Partial { start: 0, end: 0 },
            ),
            (
                req(None, None, Some("\"old\""), Some("bytes=0-0")),
                Decision::Full,
            ),
            (
                req(None, None, Some(earlier), Some("bytes=0-0")),
                Decision::Full,
            ),
            (
                req(None, None, Some(later), Some("bytes=0-0")),
                Decision::Full,
            ),
            (
                req(None, None, Some(exact), Some("bytes=0-0")),
                Decision::Partial { start: 0, end: 0 },
            ),
            (
                req(None, None, Some("W/\"sha256:abc\""), Some("bytes=0-0")),
                Decision::Full,
            ),
        ];
        for (i, (r, want)) in cases.iter().enumerate() {
            assert_eq!(decide(r, &obj(100)), *want, "case {i}");
        }
    }

    #[test]
    fn an_object_being_filled_has_no_entity_tag_yet() {
        let filling = |size| Object {
            etag: None,
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            size,
        };
        let exact = "Tue, 14 Nov 2023 22:13:20 GMT";
        let cases: Vec<(Request<'_>, Option<u64>, Decision)> = vec![
            // A client resuming another version (its tag from an earlier hit) gets the whole body.
            (
                req(None, None, Some(ETAG), Some("bytes=10-")),
                Some(100),
                Decision::Full,
            ),
            (
                req(None, None, Some(exact), Some("bytes=10-")),
                Some(100),
                Decision::Partial { start: 10, end: 99 },
            ),
            (req(Some(ETAG), None, None, None), Some(100), Decision::Full),
            (
                req(Some("*"), None, None, None),
                Some(100),
                Decision::NotModified,
            ),
            (
                req(None, Some(exact), None, None),
                Some(100),
                Decision::NotModified,
            ),
            // Unknown length: no Range can be answered.
            (
                req(None, None, None, Some("bytes=10-")),
                None,
                Decision::Full,
            ),
        ];
        for (i, (r, size, want)) in cases.iter().enumerate() {
            assert_eq!(decide(r, &filling(*size)), *want, "case {i}");
        }
    }
}
