//! What kind of address a name resolved to, for the places where a client's input picks the host the
//! cache dials (a passthrough SNI under `include_subdomains`, an open registry): only public internet
//! addresses may be reached that way. Pure.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not a public internet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    Unspecified,
    Loopback,
    LinkLocal,
    /// RFC 1918, IPv6 unique local.
    Private,
    /// 100.64.0.0/10.
    SharedCgnat,
    Multicast,
    /// Cloud metadata services (169.254.169.254 is link-local too; fd00:ec2::254).
    Metadata,
    /// Documentation, benchmarking, reserved, broadcast, 6to4/Teredo/NAT64 wrappers of the above.
    Reserved,
}

impl std::fmt::Display for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Internal::Unspecified => "an unspecified address",
            Internal::Loopback => "a loopback address",
            Internal::LinkLocal => "a link-local address",
            Internal::Private => "a private address",
            Internal::SharedCgnat => "a shared (CGNAT) address",
            Internal::Multicast => "a multicast address",
            Internal::Metadata => "a cloud metadata address",
            Internal::Reserved => "a reserved address",
        })
    }
}

fn v4(ip: Ipv4Addr) -> Option<Internal> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => Internal::Unspecified,
        [127, ..] => Internal::Loopback,
        [169, 254, 169, 254] => Internal::Metadata,
        [169, 254, ..] => Internal::LinkLocal,
        [10, ..] | [192, 168, ..] => Internal::Private,
        [172, b, ..] if (16..32).contains(&b) => Internal::Private,
        [100, b, ..] if (64..128).contains(&b) => Internal::SharedCgnat,
        [224..=239, ..] => Internal::Multicast,
        [192, 0, 0, _] | [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => {
            Internal::Reserved
        }
        [198, 18 | 19, ..] | [240..=255, ..] => Internal::Reserved,
        _ => return None,
    })
}

fn v6(ip: Ipv6Addr) -> Option<Internal> {
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return v4(mapped);
    }
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => Internal::Unspecified,
        [0, 0, 0, 0, 0, 0, 0, 1] => Internal::Loopback,
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] => Internal::Metadata,
        [a, ..] if a & 0xffc0 == 0xfe80 => Internal::LinkLocal,
        [a, ..] if a & 0xfe00 == 0xfc00 => Internal::Private,
        [a, ..] if a & 0xff00 == 0xff00 => Internal::Multicast,
        // Documentation, and wrappers that can carry an internal IPv4 address (6to4, Teredo, NAT64).
        [0x2001, 0xdb8, ..] | [0x2002, ..] | [0x2001, 0, ..] | [0x64, 0xff9b, ..] => {
            Internal::Reserved
        }
        // Everything outside 2000::/3 (global unicast) is not the public internet.
        [a, ..] if a & 0xe000 != 0x2000 => Internal::Reserved,
        _ => return None,
    })
}

/// IPv4-mapped IPv6 as IPv4, so one rule covers both spellings.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `None` for a public internet address; else what kind of internal address it is.
pub fn internal(ip: IpAddr) -> Option<Internal> {
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => v6(a),
    }
}

/// Whether a client-chosen name may be dialled at `ip`: a public address outside the partition's own
/// networks, or an address the operator allowed explicitly. The reason otherwise.
/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) counts as the IPv4 address it is.
pub fn dialable(ip: IpAddr, own_networks: &[IpNet], allowed: &[IpNet]) -> Result<(), String> {
    let ip = canonical(ip);
    if allowed.iter().any(|n| n.contains(&ip)) {
        return Ok(());
    }
    if let Some(kind) = internal(ip) {
        return Err(format!("{ip} is {kind}"));
    }
    if own_networks.iter().any(|n| n.contains(&ip)) {
        return Err(format!("{ip} is in one of the partition's own networks"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_classes() {
        let cases = [
            ("8.8.8.8", None),
            ("140.82.112.3", None),
            ("2606:4700::1111", None),
            ("0.0.0.0", Some(Internal::Unspecified)),
            ("127.0.0.1", Some(Internal::Loopback)),
            ("127.255.1.2", Some(Internal::Loopback)),
            ("::1", Some(Internal::Loopback)),
            ("::ffff:127.0.0.1", Some(Internal::Loopback)),
            ("169.254.169.254", Some(Internal::Metadata)),
            ("fd00:ec2::254", Some(Internal::Metadata)),
            ("169.254.1.1", Some(Internal::LinkLocal)),
            ("fe80::1", Some(Internal::LinkLocal)),
            ("10.1.2.3", Some(Internal::Private)),
            ("172.16.0.1", Some(Internal::Private)),
            ("172.31.255.255", Some(Internal::Private)),
            ("192.168.1.1", Some(Internal::Private)),
            ("::ffff:10.0.0.1", Some(Internal::Private)),
            ("fd12:3456::1", Some(Internal::Private)),
            ("100.64.0.1", Some(Internal::SharedCgnat)),
            ("224.0.0.1", Some(Internal::Multicast)),
            ("ff02::1", Some(Internal::Multicast)),
            ("192.0.2.1", Some(Internal::Reserved)),
            ("255.255.255.255", Some(Internal::Reserved)),
            ("2001:db8::1", Some(Internal::Reserved)),
            ("2002:7f00:1::", Some(Internal::Reserved)),
            ("64:ff9b::7f00:1", Some(Internal::Reserved)),
        ];
        for (a, want) in cases {
            assert_eq!(internal(ip(a)), want, "{a}");
        }
        assert_eq!(internal(ip("172.32.0.1")), None);
        assert_eq!(internal(ip("100.128.0.1")), None);
    }

    #[test]
    fn own_networks_and_explicit_allows() {
        let own: Vec<IpNet> = vec![
            "203.0.113.0/24".parse().unwrap(),
            "185.1.2.0/24".parse().unwrap(),
        ];
        assert!(dialable(ip("8.8.8.8"), &own, &[]).is_ok());
        assert!(
            dialable(ip("185.1.2.9"), &own, &[])
                .unwrap_err()
                .contains("own networks")
        );
        assert!(
            dialable(ip("127.0.0.1"), &own, &[])
                .unwrap_err()
                .contains("loopback")
        );
        let allowed: Vec<IpNet> = vec!["10.9.0.0/16".parse().unwrap()];
        assert!(dialable(ip("10.9.1.1"), &own, &allowed).is_ok());
        assert!(dialable(ip("10.8.1.1"), &own, &allowed).is_err());
    }
}
