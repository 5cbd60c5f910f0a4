//! Where a request whose host a client chose may go: an unlisted registry under `registry.open`, or a
//! subdomain of an intercepted domain under `include_subdomains` (dialled by its own name). Over HTTPS, to
//! a port allowed, and to public internet addresses only — for a subdomain, also outside the partition's
//! own networks, unless the operator allowed the address (`passthrough.allow_targets`, the rule the TLS
//! passthrough applies to the same names). Checked for every hop (the first URL and each redirect) and on
//! the addresses each connection is actually made to — the resolver hook checks what it hands the
//! connector, so a name that answers a public address to one lookup and an internal one to the next (DNS
//! rebinding) is refused at the second. Pure.

use super::address;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use url::{Host, Url};

/// Which client-chosen names a guarded request dials, and so which address rule applies to it (each has
/// a connection pool of its own, never shared with requests dialled under another rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// An unlisted registry: public internet addresses only.
    Registry,
    /// A subdomain under `include_subdomains`: [`AddressRule`] of the partition.
    Subdomain,
}

/// Internal addresses a client-chosen name may not lead to beyond the always-internal classes, and those
/// the operator allowed anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRule {
    /// The partition's own networks (its clients), refused like private ones.
    pub own_networks: Vec<IpNet>,
    /// Allowed even though internal.
    pub allowed: Vec<IpNet>,
}

impl AddressRule {
    /// The rule for subdomains dialled by their own name: the same as the TLS passthrough's for the same
    /// names — the partition's clients (`passthrough.allow`, default `dns.allow`) are its own networks,
    /// and `passthrough.allow_targets` are allowed.
    pub fn of_subdomains(config: &crate::config::Config) -> Self {
        AddressRule {
            own_networks: config.passthrough.clients(&config.dns).to_vec(),
            allowed: config.passthrough.allow_targets.clone(),
        }
    }

    pub fn dialable(&self, ip: IpAddr) -> Result<(), String> {
        address::dialable(ip, &self.own_networks, &self.allowed)
    }
}

/// The limits of one guarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialGuard {
    /// Ports a hop may use (`registry.open_ports`; 443 for a subdomain).
    pub ports: Arc<[u16]>,
    pub reach: Reach,
}

impl DialGuard {
    /// A subdomain's origin: `https://<name>`, and where it redirects, on 443.
    pub fn subdomain() -> Self {
        DialGuard {
            ports: Arc::from([443u16]),
            reach: Reach::Subdomain,
        }
    }

    /// A hop's URL: HTTPS, an allowed port, and a host that is a name or an address `rule` admits. Names
    /// are checked again when they resolve ([`addresses`]).
    pub fn url(&self, url: &Url, rule: &AddressRule) -> Result<(), String> {
        if url.scheme() != "https" {
            return Err(format!("{url} is not HTTPS"));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        if !self.ports.contains(&port) {
            let allowed = match self.reach {
                Reach::Registry => "one of registry.open_ports",
                Reach::Subdomain => "443 (a subdomain's origin is dialled by its name on 443)",
            };
            return Err(format!("{url}: port {port} is not {allowed}"));
        }
        let ip = match url.host() {
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(a)) => IpAddr::V4(a),
            Some(Host::Ipv6(a)) => IpAddr::V6(a),
            None => return Err(format!("{url} has no host")),
        };
        rule.dialable(ip).map_err(|why| format!("{url}: {why}"))
    }
}

/// What a guarded name resolved to, right before the connection: every address must be one `rule`
/// admits, or none is dialled.
pub fn addresses(host: &str, addrs: &[SocketAddr], rule: &AddressRule) -> Result<(), String> {
    for a in addrs {
        rule.dialable(a.ip())
            .map_err(|why| format!("{host} resolves to {why}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> DialGuard {
        DialGuard {
            ports: Arc::from([443u16, 5000]),
            reach: Reach::Registry,
        }
    }

    fn public() -> AddressRule {
        AddressRule::default()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn hops_must_be_https_on_an_allowed_port_and_not_an_internal_literal() {
        let g = guard();
        assert!(g.url(&url("https://quay.io/v2/"), &public()).is_ok());
        assert!(g.url(&url("https://quay.io:5000/v2/"), &public()).is_ok());
        assert!(g.url(&url("https://140.82.112.3/v2/"), &public()).is_ok());
        for (bad, why) in [
            ("http://quay.io/v2/", "not HTTPS"),
            ("https://quay.io:8443/v2/", "port 8443"),
            ("https://127.0.0.1/v2/", "loopback"),
            ("https://[::1]/v2/", "loopback"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://10.1.2.3:5000/", "private"),
            ("https://0x7f000001/", "loopback"),
        ] {
            let e = g.url(&url(bad), &public()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_resolved_address_must_be_public() {
        assert!(
            addresses(
                "quay.io",
                &[sa("140.82.112.3:443"), sa("[2606:4700::1]:443")],
                &public()
            )
            .is_ok()
        );
        for (set, why) in [
            (vec![sa("127.0.0.1:443")], "loopback"),
            (vec![sa("140.82.112.3:443"), sa("10.0.0.5:443")], "private"),
            (vec![sa("100.64.1.1:443")], "CGNAT"),
            (vec![sa("[fe80::1]:443")], "link-local"),
            (vec![sa("224.0.0.1:443")], "multicast"),
            (vec![sa("169.254.169.254:443")], "metadata"),
            (vec![sa("[fd00:ec2::254]:443")], "metadata"),
            (vec![sa("0.0.0.0:443")], "unspecified"),
        ] {
            let e = addresses("r.example.com", &set, &public()).unwrap_err();
            assert!(e.contains(why), "{set:?}: {e}");
        }
    }

    /// DNS rebinding: the name answered a public address when the front admitted it and answers an
    /// internal one when the connection is made. The check runs on the second answer, the one dialled.
    #[test]
    fn a_name_that_rebinds_between_lookups_is_refused_at_the_connection() {
        let answers = [
            vec![sa("140.82.112.3:443")],
            vec![sa("127.0.0.1:443")],
            vec![sa("140.82.112.3:443")],
        ];
        let verdicts: Vec<bool> = answers
            .iter()
            .map(|a| addresses("rebind.example.com", a, &public()).is_ok())
            .collect();
        assert_eq!(verdicts, [true, false, true]);
    }

    /// A subdomain's name: besides the internal classes, the partition's own networks are refused, and an
    /// address the operator allowed is dialled. A mapped IPv6 address counts as the IPv4 address it is.
    #[test]
    fn a_subdomain_keeps_out_of_the_partition_unless_allowed() {
        let rule = AddressRule {
            own_networks: vec!["45.67.89.0/24".parse().unwrap()],
            allowed: vec!["10.9.0.0/16".parse().unwrap()],
        };
        let g = DialGuard::subdomain();
        assert!(addresses("a.images.test", &[sa("140.82.112.3:443")], &rule).is_ok());
        assert!(addresses("a.images.test", &[sa("10.9.1.2:443")], &rule).is_ok());
        for (set, why) in [
            (vec![sa("45.67.89.7:443")], "own networks"),
            (vec![sa("127.0.0.1:443")], "loopback"),
            (vec![sa("[::ffff:127.0.0.1]:443")], "loopback"),
            (vec![sa("10.0.0.1:443")], "private"),
        ] {
            let e = addresses("a.images.test", &set, &rule).unwrap_err();
            assert!(e.contains(why), "{set:?}: {e}");
        }
        assert!(g.url(&url("https://a.images.test/x"), &rule).is_ok());
        let e = g
            .url(&url("https://a.images.test:8443/x"), &rule)
            .unwrap_err();
        assert!(e.contains("443"), "{e}");
        assert!(g.url(&url("https://127.0.0.1/x"), &rule).is_err());
    }
}
