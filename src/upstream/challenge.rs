//! `WWW-Authenticate` challenges of registries (RFC 9110 §11.6.1, distribution's token spec). Pure.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// The first Bearer or Basic challenge of a header value; `None` for anything else.
pub fn parse(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = params(rest);
    let get = |name| param(&params, name);
    Some(Challenge::Bearer {
        realm: get("realm").filter(|r| !r.is_empty())?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// A Bearer challenge's `error` (RFC 6750 §3: `invalid_token`, `insufficient_scope`), with its
/// `error_description` when given: why a registry refused a token it was sent.
pub fn error_of(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = params(rest);
    let get = |name| param(&params, name).filter(|v| !v.is_empty());
    match (get("error"), get("error_description")) {
        (Some(e), Some(d)) => Some(format!("{e}: {d}")),
        (e, d) => e.or(d),
    }
}

/// A parameter's value by name (names are case-insensitive).
fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// `k=v` and `k="quoted, with \"escapes\""` pairs separated by commas.
fn params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(e) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_a_token_was_refused() {
        assert_eq!(
            error_of(r#"Bearer realm="https://a/token",error="invalid_token",error_description="expired""#)
                .as_deref(),
            Some("invalid_token: expired")
        );
        assert_eq!(
            error_of(r#"Bearer realm="https://a/token",error="insufficient_scope""#).as_deref(),
            Some("insufficient_scope")
        );
        assert_eq!(error_of(r#"Bearer realm="https://a/token""#), None);
        assert_eq!(error_of(r#"Basic realm="x",error="y""#), None);
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        assert_eq!(
            parse(r#"bearer  scope="a:b" , realm=http://127.0.0.1:1/t"#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: Some("a:b".into()),
            })
        );
        assert_eq!(
            parse(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(parse(r#"Basic realm="registry""#), Some(Challenge::Basic));
        for bad in [
            "",
            "Bearer",
            "Bearer service=x",
            "Negotiate abc",
            "Bearer realm=\"\"",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
