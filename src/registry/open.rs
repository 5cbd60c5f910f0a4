//! `registry.open`: whether a registry that is not in `registry.upstreams`, named by a client (its `ns`
//! or a host-like first path component), may be served from `https://<name>`. Pure: this decides on
//! the name alone; the addresses it resolves to are checked where they are dialled, on every connection
//! and redirect (`upstream::address::public_only`), so a name that resolves elsewhere by the time the
//! cache connects (DNS rebinding) still never reaches an internal address.

use super::path::host_label_ok;

/// What an operator allows unlisted registries (`registry.open_ports`, `registry.deny`).
#[derive(Debug, Clone)]
pub struct OpenPolicy {
    pub ports: Vec<u16>,
    pub deny: Vec<String>,
}

/// An unlisted registry the cache may dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// `host` (port 443) or `host:port`, lowercase: the registry's part of store keys and its name in logs.
    pub registry: String,
    /// `https://host[:port]`.
    pub base: String,
}

/// Top-level domains that never name a public registry (RFC 6761, 6762, 7686, 8375, and the
/// de-facto private `internal`): refused before any lookup.
const SPECIAL_USE: [&str; 8] = [
    "localhost",
    "local",
    "internal",
    "arpa",
    "test",
    "invalid",
    "example",
    "onion",
];

/// `name` (`host` or `host:port`) split into its lowercase host and port (443 when none is given; `:0443`
/// and `:+443` are 443 too).
fn host_and_port(name: &str) -> Result<(String, u16), String> {
    let name = name.trim().to_ascii_lowercase();
    match name.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name:?} has no valid port"))?;
            Ok((h.to_string(), port))
        }
        None => Ok((name, 443)),
    }
}

/// The one spelling of a registry name: lowercase, `:443` dropped. Every spelling a client may use for a
/// configured registry (`Docker.io:443`, `docker.io:0443`) comes out as its key, so the front finds it
/// before anything is admitted as unlisted. `None` when the port is not a port.
pub fn canonical(name: &str) -> Option<String> {
    let (host, port) = host_and_port(name).ok()?;
    let plausible = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !plausible {
        return None;
    }
    Some(if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    })
}

/// Admits `name` (`host` or `host:port`) as an open registry, or says why not.
pub fn admit(name: &str, policy: &OpenPolicy) -> Result<Admitted, String> {
    let (host, port) = host_and_port(name)?;
    let host = host.as_str();
    host_name_ok(host)?;
    if !policy.ports.contains(&port) {
        return Err(format!(
            "unlisted registries are dialled only on registry.open_ports ({:?}), not on {port}",
            policy.ports
        ));
    }
    if let Some(rule) = policy.deny.iter().find(|rule| denied(host, rule)) {
        return Err(format!("{host:?} is on registry.deny ({rule:?})"));
    }
    let registry = canonical(name).unwrap_or_else(|| host.to_string());
    Ok(Admitted {
        base: format!("https://{registry}"),
        registry,
    })
}

/// A public DNS name: at least two labels of letters, digits and inner hyphens, a top-level domain
/// that starts with a letter (so no IP address in any notation passes), none of the special-use ones.
fn host_name_ok(host: &str) -> Result<(), String> {
    let labels: Vec<&str> = host.split('.').collect();
    if host.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| host_label_ok(l)) {
        return Err(format!("{host:?} is not a registry host name"));
    }
    let tld = labels[labels.len() - 1];
    if !tld.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{host:?} is an address, not a name: unlisted registries are dialled by name only"
        ));
    }
    if SPECIAL_USE.contains(&tld) || host.ends_with(".home.arpa") {
        return Err(format!(
            "{host:?} is a special-use name, not a public registry"
        ));
    }
    Ok(())
}

/// `rule` is `host` (that name only) or `*.domain` (every name under `domain`, and `domain` itself).
fn denied(host: &str, rule: &str) -> bool {
    match rule.strip_prefix("*.") {
        Some(domain) => {
            host == domain
                || host
                    .strip_suffix(domain)
                    .is_some_and(|rest| rest.ends_with('.'))
        }
        None => host == rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OpenPolicy {
        OpenPolicy {
            ports: vec![443, 5000],
            deny: vec!["evil.example.com".into(), "*.corp.example.net".into()],
        }
    }

    #[test]
    fn public_names_are_admitted_with_a_canonical_key() {
        let p = policy();
        assert_eq!(
            admit("Quay.IO", &p),
            Ok(Admitted {
                registry: "quay.io".into(),
                base: "https://quay.io".into()
            })
        );
        assert_eq!(admit("quay.io:443", &p).unwrap().registry, "quay.io");
        let a = admit("registry.gitlab.com:5000", &p).unwrap();
        assert_eq!(a.registry, "registry.gitlab.com:5000");
        assert_eq!(a.base, "https://registry.gitlab.com:5000");
        assert!(admit("xn--bcher-kva.ch", &p).is_ok());
    }

    #[test]
    fn every_spelling_of_port_443_is_one_name() {
        for spelling in [
            "Quay.IO",
            "quay.io:443",
            "QUAY.io:0443",
            "quay.io:+443",
            " quay.io ",
        ] {
            assert_eq!(
                canonical(spelling).as_deref(),
                Some("quay.io"),
                "{spelling}"
            );
        }
        assert_eq!(canonical("quay.io:05000").as_deref(), Some("quay.io:5000"));
        assert_eq!(canonical("quay.io:0"), None);
        assert_eq!(canonical("quay.io:x"), None);
        assert_eq!(canonical("docker.io:44.3:+443"), None);
        assert_eq!(canonical(":443"), None);
        assert_eq!(canonical("quay.\0 :443"), None);
    }

    #[test]
    fn addresses_ports_special_names_and_denied_names_are_refused() {
        let p = policy();
        let refused = [
            ("127.0.0.1", "address"),
            ("127.0.0.1:443", "address"),
            ("10.0.0.1", "address"),
            ("169.254.169.254", "address"),
            ("0x7f.1", "address"),
            ("2130706433", "not a registry host name"),
            ("[::1]", "no valid port"),
            ("[::1]:443", "not a registry host name"),
            ("localhost", "not a registry host name"),
            ("registry.localhost", "special-use"),
            ("nas.local", "special-use"),
            ("metadata.google.internal", "special-use"),
            ("router.home.arpa", "special-use"),
            ("1.0.0.127.in-addr.arpa", "special-use"),
            ("quay.io:8443", "open_ports"),
            ("quay.io:0", "no valid port"),
            ("quay.io:99999", "no valid port"),
            ("evil.example.com", "registry.deny"),
            ("corp.example.net", "registry.deny"),
            ("a.b.corp.example.net", "registry.deny"),
            ("under_score.io", "not a registry host name"),
            ("-bad.io", "not a registry host name"),
            ("a..io", "not a registry host name"),
            ("", "not a registry host name"),
        ];
        for (name, why) in refused {
            let e = admit(name, &p).unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
        // A rule for one name does not cover its neighbours.
        assert!(admit("notevil.example.com", &p).is_ok());
        assert!(admit("xcorp.example.net", &p).is_ok());
    }
}
