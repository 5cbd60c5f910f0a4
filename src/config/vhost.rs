//! Which intercepted domain a Host header names. Pure.

use super::DomainConfig;

/// The host part of a Host header, lowercase, without port or trailing dot. `None` for garbage.
pub fn normalize_host(header: &str) -> Option<String> {
    let h = header.trim();
    let host = if let Some(rest) = h.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        rest.split(']').next()?
    } else {
        h.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(h, |(host, _)| host)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    valid.then_some(host)
}

/// The domain serving `host`: an exact name, or a parent with `include_subdomains`.
pub fn find<'a>(domains: &'a [DomainConfig], host: &str) -> Option<&'a DomainConfig> {
    if let Some(d) = domains.iter().find(|d| d.name == host) {
        return Some(d);
    }
    let mut rest = host;
    while let Some((_, parent)) = rest.split_once('.') {
        if let Some(d) = domains
            .iter()
            .find(|d| d.name == parent && d.include_subdomains)
        {
            return Some(d);
        }
        rest = parent;
    }
    None
}

/// The origin base URL for a request to `host` served by `domain`: an explicit `origin`, else
/// `https://<host>` (so a subdomain goes to its own name).
pub fn origin_for(domain: &DomainConfig, host: &str) -> String {
    match &domain.origin {
        Some(_) => domain.origin_url(),
        None => format!("https://{host}"),
    }
}

/// Whether the client picked the name dialled for `host`: a subdomain under `include_subdomains` without
/// an `origin`, reached by its own name. Such a name may lead only where a client may send the cache
/// (`upstream::guard`), never to an internal address.
pub fn client_named(domain: &DomainConfig, host: &str) -> bool {
    domain.origin.is_none() && host != domain.name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let cases = [
            ("images.metal-stack.io", Some("images.metal-stack.io")),
            ("Images.Metal-Stack.IO:80", Some("images.metal-stack.io")),
            ("github.com.", Some("github.com")),
            ("[::1]:8080", Some("::1")),
            ("127.0.0.1:8080", Some("127.0.0.1")),
            ("", None),
            ("a b", None),
            ("evil/../x", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn domain_matching() {
        let mut sub = DomainConfig::named("example.test");
        sub.include_subdomains = true;
        let domains = vec![DomainConfig::named("images.metal-stack.io"), sub];
        assert_eq!(
            find(&domains, "images.metal-stack.io").map(|d| d.name.as_str()),
            Some("images.metal-stack.io")
        );
        assert!(
            find(&domains, "x.images.metal-stack.io").is_none(),
            "no subdomains unless asked"
        );
        assert_eq!(
            find(&domains, "a.b.example.test").map(|d| d.name.as_str()),
            Some("example.test")
        );
        assert!(find(&domains, "notexample.test").is_none());
        assert!(find(&domains, "127.0.0.1").is_none());
        assert_eq!(
            origin_for(&domains[1], "cdn.example.test"),
            "https://cdn.example.test"
        );
    }
}
