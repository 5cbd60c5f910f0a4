//! Where a request whose host a client chose (an unlisted registry under `registry.open`) may go: over
//! HTTPS, to a port the operator allowed, and to public internet addresses only. Checked for every hop
//! (the first URL and each redirect) and on the addresses each connection is actually made to — the
//! resolver hook checks what it hands the connector, so a name that answers a public address to one
//! lookup and an internal one to the next (DNS rebinding) is refused at the second. Pure.

use super::address;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use url::{Host, Url};

/// The limits of one guarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialGuard {
    /// Ports a hop may use (`registry.open_ports`).
    pub ports: Arc<[u16]>,
}

impl DialGuard {
    /// A hop's URL: HTTPS, an allowed port, and a host that is a name or a public address. Names are
    /// checked again when they resolve ([`addresses`]).
    pub fn url(&self, url: &Url) -> Result<(), String> {
        if url.scheme() != "https" {
            return Err(format!("{url} is not HTTPS"));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        if !self.ports.contains(&port) {
            return Err(format!(
                "{url}: port {port} is not one of registry.open_ports"
            ));
        }
        let ip = match url.host() {
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(a)) => IpAddr::V4(a),
            Some(Host::Ipv6(a)) => IpAddr::V6(a),
            None => return Err(format!("{url} has no host")),
        };
        address::dialable(ip, &[], &[]).map_err(|why| format!("{url}: {why}"))
    }
}

/// What a guarded name resolved to, right before the connection: every address must be public, or
/// none is dialled.
pub fn addresses(host: &str, addrs: &[SocketAddr]) -> Result<(), String> {
    for a in addrs {
        address::dialable(a.ip(), &[], &[]).map_err(|why| format!("{host} resolves to {why}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> DialGuard {
        DialGuard {
            ports: Arc::from([443u16, 5000]),
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn hops_must_be_https_on_an_allowed_port_and_not_an_internal_literal() {
        let g = guard();
        assert!(g.url(&url("https://quay.io/v2/")).is_ok());
        assert!(g.url(&url("https://quay.io:5000/v2/")).is_ok());
        assert!(g.url(&url("https://140.82.112.3/v2/")).is_ok());
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
            let e = g.url(&url(bad)).unwrap_err();
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
                &[sa("140.82.112.3:443"), sa("[2606:4700::1]:443")]
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
            let e = addresses("r.example.com", &set).unwrap_err();
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
            .map(|a| addresses("rebind.example.com", a).is_ok())
            .collect();
        assert_eq!(verdicts, [true, false, true]);
    }
}
