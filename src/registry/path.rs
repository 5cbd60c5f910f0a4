//! OCI distribution request paths, validated before anything else happens: which endpoint, which
//! repository name, which tag or digest (distribution-spec §3.2 grammar and limits), and which upstream
//! registry the `ns` query parameter names. Pure.
//!
//! A repository name may itself contain `/manifests/` or `/blobs/` segments, so the endpoint is found
//! from the end of the path, and the name must then match the grammar as a whole.

use std::collections::BTreeMap;

/// `host[:port]/name` must stay within what clients accept.
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(OciDigest),
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciDigest(String);

impl OciDigest {
    pub fn parse(s: &str) -> Option<Self> {
        let (alg, hex) = s.split_once(':')?;
        let len = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return None,
        };
        let ok = hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| OciDigest(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store verifies and names blobs by sha256; other algorithms are passed through, not stored.
    pub fn sha256(&self) -> Option<crate::store::Digest> {
        self.0
            .strip_prefix("sha256:")
            .and_then(|_| crate::store::Digest::parse(&self.0).ok())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API base.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: OciDigest,
    },
    TagsList {
        name: String,
    },
    /// `/v2/<name>/referrers/<digest>`: the artifacts that refer to a manifest (OCI distribution 1.1).
    Referrers {
        name: String,
        digest: OciDigest,
    },
}

/// Why a path was refused, as an OCI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an endpoint a pull-through mirror serves.
    NotFound,
    NameInvalid,
    TagInvalid,
    DigestInvalid,
}

pub fn parse(path: &str) -> Result<Route, PathError> {
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(PathError::NotFound)?;
    // Percent-encoding has no place in a valid name, tag or digest; refuse rather than decode.
    if rest.contains('%') {
        return Err(PathError::NameInvalid);
    }
    // A referrers path ends in a digest; a name may itself hold `referrers` (or `manifests`) segments,
    // so this is taken only when both halves are valid.
    if let Some((name, digest)) = rest.rsplit_once("/referrers/")
        && let Some(digest) = OciDigest::parse(digest)
        && let Ok(name) = request_name_ok(name)
    {
        return Ok(Route::Referrers { name, digest });
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagsList {
            name: request_name_ok(name)?,
        });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let reference = if reference.contains(':') {
            Reference::Digest(OciDigest::parse(reference).ok_or(PathError::DigestInvalid)?)
        } else if tag_ok(reference) {
            Reference::Tag(reference.to_string())
        } else {
            return Err(PathError::TagInvalid);
        };
        return Ok(Route::Manifest {
            name: request_name_ok(name)?,
            reference,
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let digest = OciDigest::parse(digest).ok_or(PathError::DigestInvalid)?;
        return Ok(Route::Blob {
            name: request_name_ok(name)?,
            digest,
        });
    }
    Err(PathError::NotFound)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
/// A name as a request may carry it: a repository name, or one behind a registry `host:port` component
/// (a path-prefix mirror of a registry with a port: `/v2/registry.example:5000/team/app/...`). Only
/// `destination` gives such a prefix a meaning; anywhere else it is refused.
fn request_name_ok(name: &str) -> Result<String, PathError> {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(':') => {
            if !registry_host_ok(first) {
                return Err(PathError::NameInvalid);
            }
            name_ok(rest)?;
            Ok(name.to_string())
        }
        _ => name_ok(name),
    }
}

/// `host[:port]` as a registry is named: dot-separated labels of lowercase letters, digits and inner hyphens, and
/// a port from 1 to 65535 in digits (the reference grammar's `[0-9]+`: no sign, which `u16` parsing takes).
pub fn registry_host_ok(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    host.len() <= 253
        && host.split('.').all(host_label_ok)
        && port.is_none_or(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
        })
}

/// One label of a host name: lowercase letters, digits and inner hyphens, 1 to 63 of them.
pub fn host_label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

pub fn name_ok(name: &str) -> Result<String, PathError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(PathError::NameInvalid);
    }
    for component in name.split('/') {
        if !component_ok(component) {
            return Err(PathError::NameInvalid);
        }
    }
    Ok(name.to_string())
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`, always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn tag_ok(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

/// Docker Hub's other names, as containerd or people write them.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// The configured upstream for `ns`: `(registry, base URL)`. Only keys of `registry.upstreams` (and the
/// Docker Hub aliases) are accepted: the host to dial never comes from the request.
pub fn upstream_for<'a>(
    ns: Option<&str>,
    upstreams: &'a BTreeMap<String, String>,
) -> Option<(&'a str, &'a str)> {
    let ns = ns?.trim().to_ascii_lowercase();
    let ns = if DOCKER_HUB_ALIASES.contains(&ns.as_str()) {
        "docker.io".to_string()
    } else {
        ns
    };
    upstreams
        .get_key_value(&ns)
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Where a request goes: a configured registry (its key and base URL) and the repository name there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination<'a, 'n> {
    pub registry: &'a str,
    pub base: &'a str,
    pub name: &'n str,
}

/// Why a request has no configured registry; `unlisted` is the registry it named, with the repository
/// there, when it named one (what `registry.open` may admit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoUpstream<'n> {
    pub why: String,
    pub unlisted: Option<(String, &'n str)>,
}

impl std::fmt::Display for NoUpstream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// The registry a request is for: `ns` when it is given (containerd's hosts.toml mirrors); else the
/// first component of the name when it names a configured registry (podman, CRI-O and Harbor-style
/// path-prefix mirrors: `/v2/ghcr.io/org/app/...`), the rest being the repository; else `default`
/// (Docker's `registry-mirrors`, which mirror Docker Hub only and send no `ns`). The keys in the store
/// are the same whichever way a request came, so every runtime shares one copy. With `open`, a first
/// component that looks like a registry host (a `.` or a `:` in it, as in Docker's reference grammar)
/// is a registry prefix even when it is not configured, never a repository of the default registry.
pub fn destination<'a, 'n>(
    ns: Option<&str>,
    name: &'n str,
    upstreams: &'a BTreeMap<String, String>,
    default: Option<&str>,
    open: bool,
) -> Result<Destination<'a, 'n>, NoUpstream<'n>> {
    let to = |(registry, base): (&'a str, &'a str), name: &'n str| Destination {
        registry,
        base,
        name,
    };
    let refuse = |why: String, unlisted: Option<(String, &'n str)>| NoUpstream { why, unlisted };
    // A `host:port` first component is a registry path prefix or nothing: never part of a repository.
    let port_prefix = name
        .split_once('/')
        .map(|(first, _)| first)
        .filter(|first| first.contains(':'));
    if let Some(ns) = ns {
        if let Some(first) = port_prefix {
            return Err(refuse(
                format!("{first:?} is not a repository name component (with ns={ns:?})"),
                None,
            ));
        }
        return upstream_for(Some(ns), upstreams)
            .map(|up| to(up, name))
            .ok_or_else(|| {
                refuse(
                    format!("registry {ns:?} is not in registry.upstreams"),
                    Some((ns.trim().to_ascii_lowercase(), name)),
                )
            });
    }
    if let Some((first, rest)) = name.split_once('/') {
        if let Some(up) = upstream_for(Some(first), upstreams) {
            return Ok(to(up, rest));
        }
        if first.contains(':') || (open && first.contains('.')) {
            return Err(refuse(
                format!("registry {first:?} is not in registry.upstreams"),
                Some((first.to_string(), rest)),
            ));
        }
    }
    match default.and_then(|d| upstream_for(Some(d), upstreams)) {
        Some(up) => Ok(to(up, name)),
        None => Err(refuse(
            "no ns parameter, no configured registry as the name's first component, and no \
             registry.default_upstream: point containerd at a hosts.toml (image-cache containerd-hosts) \
             or prefix the name with a registry of registry.upstreams"
                .into(),
            None,
        )),
    }
}

/// The `ns` parameter of a query string (URL-decoded; containerd encodes `:` in `host:port`).
pub fn ns_param(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "ns")
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// Store key of a tag: `oci:<registry>/<name>:<tag>`. Names cannot contain `:` or `@` and tags cannot
/// contain `/`, `:` or `@`, so `a/b-c:d` and `a/b:c-d` cannot collide, and no tag key looks like one of
/// the digest keys below.
pub fn tag_key(registry: &str, name: &str, tag: &str) -> String {
    format!("oci:{registry}/{name}:{tag}")
}

/// Store key of a manifest fetched by digest: `oci:<registry>/<name>@<digest>`, as a reference is written.
/// Kept per repository (not per digest alone): a digest is served for a repository only once that
/// repository's registry has answered for it.
pub fn manifest_key(registry: &str, name: &str, digest: &OciDigest) -> String {
    format!("oci:{registry}/{name}@{}", digest.as_str())
}

/// Store key of a referrers index: `oci:<registry>/<name>@referrers:<digest>`.
pub fn referrers_key(registry: &str, name: &str, digest: &OciDigest) -> String {
    format!("oci:{registry}/{name}@referrers:{}", digest.as_str())
}

/// The tag the OCI referrers tag schema keeps a digest's referrers under, for registries without the
/// referrers API: `sha256-<hex>`. `None` for digests whose tag would exceed the tag grammar (sha512).
pub fn referrers_tag(digest: &OciDigest) -> Option<String> {
    let tag = digest.as_str().replacen(':', "-", 1);
    tag_ok(&tag).then_some(tag)
}

/// Store key of a blob: `oci:<registry>/<name>@blob:<digest>`. The bytes are one file whatever the key.
pub fn blob_key(registry: &str, name: &str, digest: &OciDigest) -> String {
    format!("oci:{registry}/{name}@blob:{}", digest.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn destinations() {
        let up: BTreeMap<String, String> = [
            ("docker.io", "https://registry-1.docker.io"),
            ("ghcr.io", "https://ghcr.io"),
            ("registry.test:5000", "http://10.0.0.9:5000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = |ns: Option<&str>, name, default| {
            destination(ns, name, &up, default, false).map(|d| (d.registry, d.name))
        };
        // ns wins, name untouched, whatever its first component.
        assert_eq!(
            d(Some("ghcr.io"), "docker.io/x", Some("docker.io")),
            Ok(("ghcr.io", "docker.io/x"))
        );
        assert_eq!(
            d(Some("index.docker.io"), "library/a", None),
            Ok(("docker.io", "library/a"))
        );
        assert!(d(Some("evil.example"), "library/a", Some("docker.io")).is_err());
        // A configured registry as the first component (aliases too), the rest is the repository.
        assert_eq!(
            d(None, "ghcr.io/org/app", Some("docker.io")),
            Ok(("ghcr.io", "org/app"))
        );
        assert_eq!(
            d(None, "docker.io/library/nginx", None),
            Ok(("docker.io", "library/nginx"))
        );
        assert_eq!(
            d(None, "registry-1.docker.io/library/nginx", None),
            Ok(("docker.io", "library/nginx"))
        );
        // Otherwise the default upstream, name untouched; an unknown host-like prefix is a Hub name then.
        assert_eq!(
            d(None, "library/nginx", Some("docker.io")),
            Ok(("docker.io", "library/nginx"))
        );
        assert_eq!(
            d(None, "quay.io/org/app", Some("docker.io")),
            Ok(("docker.io", "quay.io/org/app"))
        );
        assert_eq!(
            d(None, "ghcr.io", Some("docker.io")),
            Ok(("docker.io", "ghcr.io"))
        );
        assert!(d(None, "library/nginx", None).is_err());
        assert!(
            d(None, "library/nginx", Some("quay.io")).is_err(),
            "an unconfigured default dials nothing"
        );
        // A registry with a port as the prefix; a port prefix that is not configured, or comes with ns,
        // is no repository name.
        assert_eq!(
            d(None, "registry.test:5000/team/app", Some("docker.io")),
            Ok(("registry.test:5000", "team/app"))
        );
        assert!(d(None, "other.test:5000/team/app", Some("docker.io")).is_err());
        assert!(d(Some("ghcr.io"), "registry.test:5000/team/app", None).is_err());
    }

    /// What `registry.open` is offered: the registry a request named that is not configured, and the
    /// repository there; a dotted first component is such a registry only when the cache is open.
    #[test]
    fn unlisted_registries_are_named_for_the_open_mirror() {
        let up: BTreeMap<String, String> = [("docker.io", "https://registry-1.docker.io")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let unlisted = |ns: Option<&str>, name, open| {
            destination(ns, name, &up, Some("docker.io"), open)
                .err()
                .and_then(|e| e.unlisted)
        };
        assert_eq!(
            unlisted(Some("Quay.io"), "org/app", false),
            Some(("quay.io".into(), "org/app"))
        );
        assert_eq!(
            unlisted(None, "quay.io/org/app", true),
            Some(("quay.io".into(), "org/app"))
        );
        assert_eq!(
            unlisted(None, "quay.io:5000/org/app", false),
            Some(("quay.io:5000".into(), "org/app"))
        );
        // Closed, a dotted component is a Docker Hub repository as before.
        assert_eq!(
            destination(None, "quay.io/org/app", &up, Some("docker.io"), false)
                .map(|d| (d.registry, d.name)),
            Ok(("docker.io", "quay.io/org/app"))
        );
        // An undotted first component is a Docker Hub namespace either way.
        assert_eq!(
            destination(None, "library/nginx", &up, Some("docker.io"), true)
                .map(|d| (d.registry, d.name)),
            Ok(("docker.io", "library/nginx"))
        );
    }

    #[test]
    fn a_registry_port_is_taken_only_as_the_first_component() {
        let name = |p: &str| match parse(p) {
            Ok(Route::Manifest { name, .. }) => Some(name),
            _ => None,
        };
        assert_eq!(
            name("/v2/registry.test:5000/team/app/manifests/1").as_deref(),
            Some("registry.test:5000/team/app")
        );
        for bad in [
            "/v2/registry.test:5000/manifests/1",
            "/v2/team/registry.test:5000/app/manifests/1",
            "/v2/registry.test:0/team/manifests/1",
            "/v2/registry.test:x/team/manifests/1",
            "/v2/Registry.test:5000/team/manifests/1",
            "/v2/-r.test:5000/team/manifests/1",
            "/v2/registry.test:+5000/team/manifests/1",
        ] {
            assert_eq!(name(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(
            parse("/v2/library/nginx/manifests/1.27"),
            Ok(Route::Manifest {
                name: "library/nginx".into(),
                reference: Reference::Tag("1.27".into())
            })
        );
        assert_eq!(
            parse(&format!("/v2/library/nginx/manifests/{D}")),
            Ok(Route::Manifest {
                name: "library/nginx".into(),
                reference: Reference::Digest(OciDigest::parse(D).unwrap())
            })
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/b/blobs/{D}")),
            Ok(Route::Blob {
                name: "a/blobs/b".into(),
                digest: OciDigest::parse(D).unwrap()
            }),
            "a name may contain an endpoint word"
        );
        assert_eq!(
            parse("/v2/a/b/tags/list"),
            Ok(Route::TagsList { name: "a/b".into() })
        );
        let d = OciDigest::parse(D).unwrap();
        assert_eq!(
            parse(&format!("/v2/org/app/referrers/{D}")),
            Ok(Route::Referrers {
                name: "org/app".into(),
                digest: d.clone()
            })
        );
        assert_eq!(
            parse(&format!("/v2/a/referrers/b/manifests/{D}")),
            Ok(Route::Manifest {
                name: "a/referrers/b".into(),
                reference: Reference::Digest(d.clone())
            }),
            "a name may contain `referrers`"
        );
        assert_eq!(
            parse(&format!("/v2/a/manifests/b/referrers/{D}")),
            Ok(Route::Referrers {
                name: "a/manifests/b".into(),
                digest: d.clone()
            })
        );
        assert_eq!(
            parse("/v2/a/referrers/sha256:xyz"),
            Err(PathError::NotFound),
            "not a digest: no endpoint"
        );
        assert_eq!(referrers_tag(&d).unwrap(), D.replace(':', "-"));
        let long = OciDigest::parse(&format!("sha512:{}", "a".repeat(128))).unwrap();
        assert_eq!(referrers_tag(&long), None);
    }

    #[test]
    fn refusals() {
        let cases = [
            ("/v2/../etc/manifests/latest", PathError::NameInvalid),
            ("/v2/a/../b/manifests/latest", PathError::NameInvalid),
            ("/v2/a%2fb/manifests/latest", PathError::NameInvalid),
            ("/v2/UPPER/manifests/latest", PathError::NameInvalid),
            ("/v2//a/manifests/latest", PathError::NameInvalid),
            ("/v2/a-/manifests/latest", PathError::NameInvalid),
            ("/v2/a___b/manifests/latest", PathError::NameInvalid),
            ("/v2/a/manifests/-latest", PathError::TagInvalid),
            ("/v2/a/manifests/", PathError::TagInvalid),
            ("/v2/a/manifests/sha256:abc", PathError::DigestInvalid),
            (
                "/v2/a/manifests/md5:0123456789abcdef0123456789abcdef",
                PathError::DigestInvalid,
            ),
            ("/v2/a/blobs/latest", PathError::DigestInvalid),
            ("/v2/a/blobs/uploads/", PathError::DigestInvalid),
            ("/v2/a/referrers/x", PathError::NotFound),
            ("/v3/a/manifests/latest", PathError::NotFound),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path), Err(want), "{path}");
        }
        let long = format!("/v2/{}/manifests/latest", "a".repeat(256));
        assert_eq!(parse(&long), Err(PathError::NameInvalid));
        let long_tag = format!("/v2/a/manifests/{}", "t".repeat(129));
        assert_eq!(parse(&long_tag), Err(PathError::TagInvalid));
        assert!(tag_ok(&"t".repeat(128)));
        assert!(name_ok("a.b_c__d---e/f0").is_ok());
        let upper = D.to_uppercase().replace("SHA256", "sha256");
        assert!(OciDigest::parse(&upper).is_none(), "digests are lowercase");
    }

    #[test]
    fn namespaces_come_only_from_the_config() {
        let mut up = BTreeMap::new();
        up.insert(
            "docker.io".to_string(),
            "https://registry-1.docker.io".to_string(),
        );
        up.insert(
            "myreg.io:5000".to_string(),
            "https://myreg.io:5000".to_string(),
        );
        assert_eq!(upstream_for(Some("docker.io"), &up).unwrap().0, "docker.io");
        assert_eq!(
            upstream_for(Some("registry-1.docker.io"), &up).unwrap().0,
            "docker.io"
        );
        assert_eq!(
            upstream_for(Some("Index.Docker.IO"), &up).unwrap().0,
            "docker.io"
        );
        assert_eq!(
            upstream_for(Some("myreg.io:5000"), &up).unwrap().1,
            "https://myreg.io:5000"
        );
        assert!(upstream_for(Some("evil.example"), &up).is_none());
        assert!(upstream_for(None, &up).is_none());
        assert_eq!(
            ns_param("ns=myreg.io%3A5000").as_deref(),
            Some("myreg.io:5000")
        );
        assert_eq!(ns_param("x=1&ns=docker.io").as_deref(), Some("docker.io"));
        assert_eq!(ns_param("x=1"), None);
    }

    #[test]
    fn tag_keys_do_not_collide() {
        assert_ne!(
            tag_key("docker.io", "a/b-c", "d"),
            tag_key("docker.io", "a/b", "c-d")
        );
        // Neither side can smuggle the separator of the other.
        assert!(name_ok("a/b:c").is_err());
        assert!(name_ok("a/b@c").is_err());
        assert!(!tag_ok("c/d"));
        assert!(!tag_ok("c@d") && !tag_ok("c:d"));
        let d = OciDigest::parse(D).unwrap();
        let keys = [
            tag_key("docker.io", "foo/bar", "x"),
            tag_key("docker.io", "foo_bar", "x"),
            tag_key("ghcr.io", "foo/bar", "x"),
            manifest_key("docker.io", "foo/bar", &d),
            blob_key("docker.io", "foo/bar", &d),
            blob_key("docker.io", "foo_bar", &d),
            blob_key("quay.io", "foo/bar", &d),
            // A tag spelled like a digest's hex stays a tag.
            tag_key("docker.io", "foo/bar", &D[7..]),
        ];
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        for k in &keys {
            assert!(crate::store::Key::parse(k).is_ok(), "{k}");
        }
    }
}
