//! Fuzz targets: one function of arbitrary bytes per parser that reads what clients, origins and
//! operators send — DNS packets (the UDP path: replayed answers, parsing, the policy), TLS ClientHellos,
//! file paths and their keys, OCI paths and `ns`, config files. None may panic or hang, whatever the
//! input; where a parser promises something (a path survives its own re-encoding), the target checks it.
//! `fuzz/main.rs` (the `fuzz` example) drives them on stable Rust; see docs/security.md, "Fuzzing".

#![allow(clippy::expect_used)] // a broken promise must panic: that is how the harness finds it

use crate::config::{self, Config};
use crate::store::{FilePath, Key};

/// The targets the fuzz driver (`fuzz/main.rs`) knows, by name.
pub const TARGETS: [&str; 6] = [
    "dns",
    "sni",
    "file-path",
    "oci-path",
    "answer-headers",
    "config",
];

/// A TLS ClientHello's server name: any answer but a panic; a name found is a plausible host name
/// (letters, digits, `-`, `.`, and `_` as some real names carry; never a byte that could smuggle anything
/// into a log line or a lookup).
pub fn sni(data: &[u8]) {
    if let crate::passthrough::sni::Sni::Found(name) = crate::passthrough::sni::server_name(data) {
        assert!(
            !name.is_empty() && name.len() <= 253,
            "implausible name {name:?}"
        );
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "unexpected bytes in {name:?}"
        );
    }
}

/// A request path: a path that is accepted makes a key, and survives its own re-encoding for the
/// origin URL unchanged (what the origin is asked is exactly what was validated).
pub fn file_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(path) = FilePath::from_request(&text) else {
        return;
    };
    let key = Key::file("files.test", &path).expect("a valid path makes a key");
    assert!(key.as_str().starts_with("file:files.test/"));
    let again = FilePath::from_request(&path.to_url_path())
        .unwrap_or_else(|e| panic!("{:?} does not survive re-encoding: {e}", path.as_str()));
    assert_eq!(again, path, "re-encoding changed the path");
    assert!(!path.as_str().split('/').any(|s| s == ".." || s == "."));
}

/// An OCI path and its query's `ns`: what is accepted can become an upstream URL's path as it is — no
/// segment that a URL would resolve (`.`, `..`), nothing to percent-encode, no empty segment.
pub fn oci_path(data: &[u8]) {
    use crate::registry::path::{Reference, Route};
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    if let Ok(route) = crate::registry::path::parse(path) {
        let (name, reference) = match &route {
            Route::Base => return,
            Route::Manifest { name, reference } => (
                name,
                match reference {
                    Reference::Tag(t) => t.clone(),
                    Reference::Digest(d) => d.as_str().to_string(),
                },
            ),
            Route::Blob { name, digest } | Route::Referrers { name, digest } => {
                (name, digest.as_str().to_string())
            }
            Route::TagsList { name } => (name, "list".to_string()),
        };
        // Routed by a path prefix, what is left is still a whole, non-empty repository name.
        let upstreams: std::collections::BTreeMap<String, String> = [
            ("docker.io", "https://r.test"),
            ("ghcr.io", "https://g.test"),
            ("registry.test:5000", "https://p.test"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ns = crate::registry::path::ns_param(query);
        match crate::registry::path::destination(
            ns.as_deref(),
            name,
            &upstreams,
            Some("docker.io"),
            true,
        ) {
            Ok(to) => assert!(
                crate::registry::path::name_ok(to.name).is_ok() && name.ends_with(to.name),
                "{name:?} routed to {:?}",
                to.name
            ),
            Err(no) => {
                if let Some((registry, _)) = no.unlisted {
                    unlisted_registry(&registry);
                }
            }
        }
        for segment in name.split('/').chain([reference.as_str()]) {
            assert!(
                !segment.is_empty() && segment != "." && segment != "..",
                "segment {segment:?} in {route:?}"
            );
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)),
                "segment {segment:?} needs encoding in {route:?}"
            );
        }
    }
    let _ = crate::registry::path::ns_param(query);
}

/// A registry name `registry.open` may admit (`ns`, a path prefix): an admitted name is canonical — admitting
/// it again gives itself — so every spelling of one registry (`:443`, `:0443`, `:+443`, any case) makes one
/// set of store keys, and the front can tell it is a configured registry (`upstream_for`) by that key.
fn unlisted_registry(name: &str) {
    if let Some(one) = crate::registry::open::canonical(name) {
        assert_eq!(
            crate::registry::open::canonical(&one).as_deref(),
            Some(one.as_str()),
            "{name:?}: the canonical spelling is not its own"
        );
        assert!(!one.ends_with(":443"), "{name:?} → {one:?}");
    }
    let policy = crate::registry::open::OpenPolicy {
        ports: vec![443, 5000],
        deny: vec!["*.denied.test".into()],
    };
    let Ok(admitted) = crate::registry::open::admit(name, &policy) else {
        return;
    };
    let again = crate::registry::open::admit(&admitted.registry, &policy)
        .unwrap_or_else(|e| panic!("{name:?} admitted as {admitted:?}, which is refused: {e}"));
    assert_eq!(again, admitted, "{name:?}: admitting is not idempotent");
    assert!(
        !admitted.registry.ends_with(":443")
            && admitted.registry == admitted.registry.to_ascii_lowercase(),
        "{name:?} admitted under a second name {:?}",
        admitted.registry
    );
    assert_eq!(admitted.base, format!("https://{}", admitted.registry));
}

/// An upstream answer's `Content-Type` (first line) and `Content-Encoding` (second): only registry media
/// types reach a client from a registry — never a type a browser runs — and only an identity body is stored.
pub fn answer_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (content_type, coding) = text.split_once('\n').unwrap_or((&text, ""));
    if crate::registry::accept::registry_media_type(content_type) {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let json = essence == "application/json"
            || (essence.starts_with("application/vnd.")
                && essence.matches('+').count() == 1
                && (essence.ends_with("+json") || essence.ends_with("+prettyjws")));
        assert!(
            json && !essence.contains(['<', '>', '"', ' ', '\\', '\'']),
            "{content_type:?} passed as a registry type"
        );
    }
    if crate::upstream::source::identity_coding(Some(coding)) {
        let c = coding.trim();
        assert!(
            c.is_empty() || c.eq_ignore_ascii_case("identity"),
            "{coding:?} taken as identity"
        );
    }
}

/// A config file: loads or names the key it refuses; what loads prints and loads again.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match config::from_toml(&text) {
        Ok(c) => {
            let printed = toml::to_string(&c).expect("a loaded config prints");
            let again: Config = config::from_toml(&printed)
                .unwrap_or_else(|e| panic!("printed config does not load again: {e}\n{printed}"));
            assert_eq!(toml::to_string(&again).ok(), Some(printed));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// The DNS UDP path with its state (replayed answers accumulate across inputs, as in the server).
pub struct Dns(crate::dns::FuzzTarget);

impl Dns {
    /// Inside a tokio runtime; intercepts `files.test`, allows 127.0.0.0/8.
    pub fn new() -> Result<Self, crate::dns::DnsError> {
        let mut c = Config::laptop_defaults();
        c.domains[0].name = "files.test".into();
        c.domains[0].include_subdomains = true;
        c.dns.allow = vec!["127.0.0.0/8".parse().expect("a literal network")];
        c.dns.upstreams = vec!["127.0.0.1:9".parse().expect("a literal address")];
        crate::dns::FuzzTarget::new(&c).map(Dns)
    }

    pub fn packet(&mut self, data: &[u8]) {
        self.0.packet(data);
    }
}
