//! Which manifest representations a client accepts. Pure.
//!
//! A registry answers a tag with different manifests depending on `Accept` (a multi-arch index, or one
//! platform's manifest for an old client). The cache always asks for the most general representation
//! (every manifest type containerd knows) and serves the stored one only to clients that accept its
//! media type; a narrower client is passed through to the registry, uncached.

/// The four manifest types every current client understands, in containerd's order.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// The `Accept` the cache sends for manifests: the four types, then whatever else the client listed
/// (a newer type the cache does not know yet), then `*/*` (containerd's resolve list).
pub fn upstream_accept(client: Option<&str>) -> String {
    let mut types: Vec<String> = MANIFEST_TYPES.iter().map(|t| t.to_string()).collect();
    for t in client.map(media_types).unwrap_or_default() {
        if t != "*/*" && !types.contains(&t) {
            types.push(t);
        }
    }
    types.push("*/*".into());
    types.join(", ")
}

/// Whether `media_type` is one a registry answer may carry to a client: `application/json` or an
/// `application/vnd.…` type in JSON (`+json`) or a signed schema-1 manifest (`+prettyjws`). A registry
/// is an upstream the cache does not trust: with `registry.open` anyone names it, and an answer typed
/// `text/html` (or SVG, or script) served from the cache's address would run with the origin of its
/// status page. Parameters and case do not matter.
pub fn registry_media_type(media_type: &str) -> bool {
    let t = essence(media_type);
    t == "application/json"
        || t.strip_prefix("application/vnd.")
            .and_then(|rest| rest.split_once('+'))
            .is_some_and(|(name, suffix)| {
                (suffix == "json" || suffix == "prettyjws")
                    && !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            })
}

/// True when an `Accept` header admits `media_type`. No header (or an empty one) accepts anything;
/// `*/*` and `type/*` wildcards count; `q=0` refuses.
pub fn accepts(header: Option<&str>, media_type: &str) -> bool {
    let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
        return true;
    };
    let media_type = essence(media_type);
    let major = media_type.split('/').next().unwrap_or("");
    header.split(',').any(|item| {
        let mut parts = item.split(';');
        let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused
            && (range == "*/*"
                || range == media_type
                || range.strip_suffix("/*").is_some_and(|m| m == major))
    })
}

/// The media types an `Accept` header lists, parameters dropped, lowercase.
fn media_types(header: &str) -> Vec<String> {
    header
        .split(',')
        .map(essence)
        .filter(|t| !t.is_empty() && t.contains('/') && !t.contains(char::is_whitespace))
        .collect()
}

/// `type/subtype` without parameters, lowercase.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

    #[test]
    fn acceptance() {
        let containerd = format!("{}, */*", MANIFEST_TYPES.join(", "));
        let cases: [(Option<&str>, &str, bool); 10] = [
            (None, INDEX, true),
            (Some(""), INDEX, true),
            (Some(&containerd), INDEX, true),
            (Some(DOCKER_V2), INDEX, false),
            (Some(DOCKER_V2), DOCKER_V2, true),
            (Some("application/*"), INDEX, true),
            (Some("text/*"), INDEX, false),
            (Some("*/*;q=0, application/json"), INDEX, false),
            (Some("Application/VND.OCI.Image.Index.v1+JSON"), INDEX, true),
            (
                Some(DOCKER_V2),
                "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
                true,
            ),
        ];
        for (header, media, want) in cases {
            assert_eq!(accepts(header, media), want, "{header:?} {media}");
        }
    }

    #[test]
    fn only_registry_media_types_reach_a_client() {
        for t in MANIFEST_TYPES {
            assert!(registry_media_type(t), "{t}");
        }
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/VND.OCI.Image.Index.v1+JSON",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.cncf.helm.config.v1+json",
        ] {
            assert!(registry_media_type(ok), "{ok}");
        }
        for bad in [
            "text/html",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "application/javascript",
            "text/plain",
            "application/vnd.+json",
            "application/vnd.evil<script>+json",
            "application/vnd.example.page+xml",
            "application/vnd.a+xml+json",
            "",
        ] {
            assert!(!registry_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn the_cache_asks_for_everything_and_keeps_new_types() {
        let plain = upstream_accept(None);
        for t in MANIFEST_TYPES {
            assert!(plain.contains(t));
        }
        assert!(plain.ends_with("*/*"));
        let extra = upstream_accept(Some("application/vnd.example.new+json; q=0.9, */*"));
        assert!(
            extra.contains("application/vnd.example.new+json, */*"),
            "{extra}"
        );
        assert_eq!(extra.matches("*/*").count(), 1);
        // Garbage from the client does not reach the registry.
        assert!(!upstream_accept(Some("a\r\nb: c, x y/z")).contains('\n'));
    }
}
