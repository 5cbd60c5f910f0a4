//! Where the sync downloads a URL that metal-api lists. Pure.
//!
//! metal-api lists the URLs machines use: `http://images.metal-stack.io/...`, which the cache intercepts.
//! Downloading exactly that URL would fetch over cleartext from wherever it points and store the result
//! as if it came from the domain's HTTPS origin. Instead, a URL whose host is an intercepted domain is
//! fetched from that domain's `origin` — the same URL a client's miss fills from, under the same key, so
//! a sync download and a client miss coalesce into one. Any other host is fetched as listed over HTTPS;
//! cleartext only when the operator allows it (`sync.allow_http_origins`).

use crate::config::DomainConfig;
use crate::config::vhost;
use crate::store::{FilePath, Key};

/// What to download for one listed URL, and under which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// `file:<host><path>`: scheme-independent, the key a client's request for it looks up.
    pub key: Key,
    /// The host as listed (the Host header a node asks another node with).
    pub host: String,
    pub path: FilePath,
    /// Where the bytes come from.
    pub url: url::Url,
    /// The host is an intercepted domain: clients are served this key, and the partition's nodes
    /// share its download through its owner.
    pub intercepted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("`{0}` is not a usable http(s) URL")]
    Invalid(String),
    #[error(
        "refusing to download {0} over cleartext from the internet: its host is not an intercepted \
         domain (add it to [[domains]] to fetch it from its HTTPS origin, or set \
         sync.allow_http_origins = true)"
    )]
    Cleartext(String),
}

pub fn download(
    listed: &str,
    domains: &[DomainConfig],
    allow_http: bool,
) -> Result<Download, Refused> {
    let invalid = || Refused::Invalid(listed.to_string());
    let url = url::Url::parse(listed).map_err(|_| invalid())?;
    let host = url.host_str().ok_or_else(invalid)?.to_ascii_lowercase();
    let path = FilePath::from_request(url.path()).map_err(|_| invalid())?;
    let key = Key::file(&host, &path).map_err(|_| invalid())?;
    if let Some(domain) = vhost::find(domains, &host) {
        let from = format!("{}{}", vhost::origin_for(domain, &host), path.to_url_path());
        let url = url::Url::parse(&from).map_err(|_| invalid())?;
        return Ok(Download {
            key,
            host,
            path,
            url,
            intercepted: true,
        });
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(Refused::Cleartext(listed.to_string())),
        _ => return Err(invalid()),
    }
    Ok(Download {
        key,
        host,
        path,
        url,
        intercepted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<DomainConfig> {
        let mut own = DomainConfig::named("images.internal.test");
        own.origin = Some("https://mirror.internal.test:8443/base".into());
        vec![DomainConfig::named("images.metal-stack.io"), own]
    }

    #[test]
    fn intercepted_hosts_come_from_their_https_origin_under_the_clients_key() {
        let d = download(
            "http://images.metal-stack.io/metal-os/stable/debian/13/img.tar.lz4",
            &domains(),
            false,
        )
        .unwrap();
        assert_eq!(
            d.url.as_str(),
            "https://images.metal-stack.io/metal-os/stable/debian/13/img.tar.lz4"
        );
        assert_eq!(
            d.key.as_str(),
            "file:images.metal-stack.io/metal-os/stable/debian/13/img.tar.lz4"
        );
        assert!(d.intercepted);
        // Scheme and case do not change the key.
        let https = download(
            "HTTPS://Images.Metal-Stack.io/metal-os/stable/debian/13/img.tar.lz4",
            &domains(),
            false,
        )
        .unwrap();
        assert_eq!(https.key, d.key);
        // An explicit origin (with a path prefix) is used as a client miss would use it.
        let own = download("http://images.internal.test/a/b.img", &domains(), false).unwrap();
        assert_eq!(
            own.url.as_str(),
            "https://mirror.internal.test:8443/base/a/b.img"
        );
        assert_eq!(own.key.as_str(), "file:images.internal.test/a/b.img");
    }

    #[test]
    fn other_hosts_over_https_only_unless_allowed() {
        let https = download("https://other.test/x.img", &domains(), false).unwrap();
        assert_eq!(https.url.as_str(), "https://other.test/x.img");
        assert!(!https.intercepted);
        assert!(matches!(
            download("http://other.test/x.img", &domains(), false),
            Err(Refused::Cleartext(_))
        ));
        let allowed = download("http://other.test/x.img", &domains(), true).unwrap();
        assert_eq!(allowed.url.scheme(), "http");
        for bad in [
            "ftp://other.test/x",
            "not a url",
            "http://other.test/a%2Fb",
            "https:///nohost",
        ] {
            assert!(
                matches!(download(bad, &domains(), true), Err(Refused::Invalid(_))),
                "{bad}"
            );
        }
    }
}
