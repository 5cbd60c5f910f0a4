//! Image ids → (os, version) the way metal-image-cache-sync reads them: split on `-`, the last part is the
//! version, the rest the os (`firewall-ubuntu-3.0` → `firewall-ubuntu`, 3.0). Versions are read leniently
//! like Masterminds' semver with coercion: optional `v`, one to three numeric components (missing ones are
//! 0, leading zeros allowed), optional `-pre`/`+meta`. Pure.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Pre-release tag; a version with one sorts before the same version without.
    pub pre: Option<String>,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub fn parse_version(s: &str) -> Option<Version> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let s = s.split_once('+').map_or(s, |(v, _)| v);
    let (nums, pre) = match s.split_once('-') {
        Some((n, p)) if !p.is_empty() => (n, Some(p.to_string())),
        Some(_) => return None,
        None => (s, None),
    };
    let parts: Vec<&str> = nums.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut n = [0u64; 3];
    for (slot, part) in n.iter_mut().zip(&parts) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    Some(Version {
        major: n[0],
        minor: n[1],
        patch: n[2],
        pre,
    })
}

/// (os, version) of an image id; `None` when it has no `-` or its last part is no version.
pub fn parse_image_id(id: &str) -> Option<(String, Version)> {
    let (os, version) = id.rsplit_once('-')?;
    if os.is_empty() {
        return None;
    }
    Some((os.to_string(), parse_version(version)?))
}

/// The group an image competes in: os and major.minor (`ubuntu-20.04.20201026` → `ubuntu-20.4`).
pub fn variant(os: &str, v: &Version) -> String {
    format!("{os}-{}.{}", v.major, v.minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
            pre: None,
        }
    }

    #[test]
    fn ids() {
        let cases: &[(&str, Option<(&str, Version)>)] = &[
            (
                "ubuntu-20.04.20201026",
                Some(("ubuntu", v(20, 4, 20201026))),
            ),
            ("firewall-ubuntu-3.0", Some(("firewall-ubuntu", v(3, 0, 0)))),
            ("debian-13", Some(("debian", v(13, 0, 0)))),
            ("debian-v13.0.1", Some(("debian", v(13, 0, 1)))),
            ("debian-012.003", Some(("debian", v(12, 3, 0)))),
            ("debian", None),
            ("-13.0", None),
            ("debian-13.x", None),
            ("debian-1.2.3.4", None),
            ("debian-", None),
            ("debian-13..1", None),
        ];
        for (id, want) in cases {
            let got = parse_image_id(id);
            let want = want.as_ref().map(|(os, v)| (os.to_string(), v.clone()));
            assert_eq!(got, want, "{id}");
        }
        let (os, ver) = parse_image_id("ubuntu-20.04.20201026").unwrap();
        assert_eq!(variant(&os, &ver), "ubuntu-20.4");
    }

    #[test]
    fn pre_and_meta() {
        let p = parse_version("1.2.3-rc1+build5").unwrap();
        assert_eq!(p.pre.as_deref(), Some("rc1"));
        assert!(p < parse_version("1.2.3").unwrap());
        assert!(parse_version("1.2.3").unwrap() < parse_version("1.2.10").unwrap());
        assert!(parse_version("1.2-").is_none());
    }
}
