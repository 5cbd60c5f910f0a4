//! Who may use the admin surface (status page, `/metrics`, `/admin/…`). Pure.
//!
//! Tenant machines share the network with every listener, and browsers on operators' desks visit other
//! sites, so three rules hold for every request that reaches the admin routes:
//! - its `Host` names this node (an address it listens on or was reached on, `nodes.self`, `localhost`,
//!   or a name in `http.admin_hosts`): a page of attacker.example whose name now resolves to this node
//!   (DNS rebinding) reads nothing;
//! - it does not come from another site: an `Origin` that is not this node (`null` included), or
//!   `Sec-Fetch-Site: cross-site`/`same-site`, is refused, so a page elsewhere cannot make a browser post
//!   to the admin API (CSRF);
//! - it changes state only with the admin token (when one is configured) or, without one, from a
//!   loopback address of this node.
//!
//! `/health` and `/ready` only say "up" and are exempt from the first two rules: load balancers and
//! probes reach them by any name.

use std::net::IpAddr;

/// Why a request was refused; `None` from `check` means it may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` does not name this node.
    ForeignHost,
    /// The request comes from another site's page.
    CrossSite,
    /// A token is configured and the request does not carry it.
    Token,
    /// No token is configured and the request changes state from another address.
    LoopbackOnly,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ForeignHost => {
                "this host name does not name this node; use its address, or list the name in http.admin_hosts"
            }
            Refusal::CrossSite => "refused: the request comes from another site",
            Refusal::Token => {
                "this route needs `Authorization: Bearer <token>`, the token in http.admin_token_file"
            }
            Refusal::LoopbackOnly => {
                "without http.admin_token_file, routes that change state answer only on this node's \
                 loopback; set a token to use them from elsewhere"
            }
        }
    }
}

/// The names this node answers the admin surface for, lowercase, without ports.
#[derive(Debug, Clone, Default)]
pub struct NodeNames(Vec<String>);

impl NodeNames {
    /// Loopback names, the given addresses and names.
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>, names: &[String]) -> Self {
        let mut all: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(
            addresses
                .into_iter()
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| ip.to_string()),
        );
        all.extend(
            names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
        );
        all.sort();
        all.dedup();
        NodeNames(all)
    }

    fn names(&self, host: &str, reached_on: IpAddr) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return ip == reached_on
                || ip.is_loopback()
                || self.0.iter().any(|n| n.parse::<IpAddr>().ok() == Some(ip));
        }
        self.0.contains(&host)
    }
}

/// What `check` looks at.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// The address the connection arrived on.
    pub local: IpAddr,
    /// `/health`, `/ready`.
    pub probe: bool,
    /// Under `/admin/`.
    pub api: bool,
    /// POST, DELETE (everything but GET and HEAD).
    pub changes_state: bool,
    /// `None`: no token configured; `Some(valid)`: whether the request carries it.
    pub token: Option<bool>,
}

/// The host part of a `Host` or `Origin` authority: without port or brackets.
fn host_part(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

pub fn check(f: &Facts<'_>, names: &NodeNames) -> Option<Refusal> {
    let loopback_peer = f.peer.is_some_and(|p| match p {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    });
    if !f.probe {
        if let Some(host) = f.host
            && !names.names(host_part(host), f.local)
        {
            return Some(Refusal::ForeignHost);
        }
        match f.origin {
            Some(origin) => {
                let authority = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                let ours = authority.is_some_and(|a| {
                    let a = a.trim_end_matches('/');
                    !a.contains('/') && names.names(host_part(a), f.local)
                });
                if !ours {
                    return Some(Refusal::CrossSite);
                }
            }
            None => {
                if matches!(f.fetch_site, Some("cross-site" | "same-site")) {
                    return Some(Refusal::CrossSite);
                }
            }
        }
    }
    match f.token {
        Some(false) if f.api => Some(Refusal::Token),
        None if f.changes_state && !loopback_peer => Some(Refusal::LoopbackOnly),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn names() -> NodeNames {
        NodeNames::new(
            [ip("10.0.0.1"), ip("0.0.0.0")],
            &["cache-1.mgmt.example".to_string()],
        )
    }

    fn facts<'a>(host: Option<&'a str>, origin: Option<&'a str>) -> Facts<'a> {
        Facts {
            host,
            origin,
            fetch_site: None,
            peer: Some(ip("10.0.0.99")),
            local: ip("10.0.0.1"),
            probe: false,
            api: true,
            changes_state: false,
            token: None,
        }
    }

    #[test]
    fn only_hosts_that_name_this_node() {
        let n = names();
        for host in [
            "10.0.0.1",
            "10.0.0.1:9100",
            "localhost:8080",
            "LOCALHOST",
            "127.0.0.1",
            "[::1]:80",
            "cache-1.mgmt.example",
            "cache-1.mgmt.example.:80",
        ] {
            assert_eq!(check(&facts(Some(host), None), &n), None, "{host}");
        }
        // Reached on an address the config does not list (a wildcard listener): that address names it.
        let mut f = facts(Some("192.168.7.7:80"), None);
        f.local = ip("192.168.7.7");
        assert_eq!(check(&f, &n), None);
        for host in [
            "attacker.example",
            "10.0.0.2",
            "10.0.0.1.attacker.example",
            "",
            "[::2]",
        ] {
            assert_eq!(
                check(&facts(Some(host), None), &n),
                Some(Refusal::ForeignHost),
                "{host}"
            );
        }
        // Probes answer whatever the name.
        let mut f = facts(Some("attacker.example"), Some("null"));
        f.probe = true;
        assert_eq!(check(&f, &n), None);
    }

    #[test]
    fn other_sites_are_refused() {
        let n = names();
        for origin in [
            "null",
            "http://attacker.example",
            "https://10.0.0.2",
            "http://10.0.0.1.evil",
            "file://",
            "http://10.0.0.1/x",
        ] {
            assert_eq!(
                check(&facts(Some("10.0.0.1"), Some(origin)), &n),
                Some(Refusal::CrossSite),
                "{origin}"
            );
        }
        for origin in [
            "http://10.0.0.1",
            "http://10.0.0.1:9100",
            "https://cache-1.mgmt.example",
        ] {
            assert_eq!(
                check(&facts(Some("10.0.0.1"), Some(origin)), &n),
                None,
                "{origin}"
            );
        }
        for site in ["cross-site", "same-site"] {
            let mut f = facts(Some("10.0.0.1"), None);
            f.fetch_site = Some(site);
            assert_eq!(check(&f, &n), Some(Refusal::CrossSite), "{site}");
        }
        let mut f = facts(Some("10.0.0.1"), None);
        f.fetch_site = Some("same-origin");
        assert_eq!(check(&f, &n), None);
    }

    #[test]
    fn changes_need_the_token_or_the_loopback() {
        let n = names();
        let mut f = facts(Some("10.0.0.1"), None);
        f.changes_state = true;
        assert_eq!(check(&f, &n), Some(Refusal::LoopbackOnly));
        f.peer = Some(ip("127.0.0.1"));
        assert_eq!(check(&f, &n), None, "loopback without a token");
        f.peer = Some(ip("::ffff:127.0.0.1"));
        assert_eq!(check(&f, &n), None, "v4-mapped loopback");
        f.peer = Some(ip("10.0.0.99"));
        f.token = Some(true);
        assert_eq!(check(&f, &n), None, "the token from anywhere");
        f.token = Some(false);
        assert_eq!(check(&f, &n), Some(Refusal::Token));
        f.peer = Some(ip("127.0.0.1"));
        assert_eq!(
            check(&f, &n),
            Some(Refusal::Token),
            "a configured token is needed on loopback too"
        );
        // Reads: anyone who passes the name checks, unless a token is configured for the API.
        let mut r = facts(Some("10.0.0.1"), None);
        assert_eq!(check(&r, &n), None);
        r.token = Some(false);
        assert_eq!(check(&r, &n), Some(Refusal::Token));
        r.api = false;
        assert_eq!(check(&r, &n), None, "the page needs no token");
    }
}
