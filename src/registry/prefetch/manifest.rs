//! What a manifest points at: an index (or Docker manifest list) lists one manifest per platform; an
//! image manifest names its config and layers. Pure.

use crate::registry::path::OciDigest;
use serde::Deserialize;

/// A blob or manifest a document refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: OciDigest,
    pub size: u64,
    /// `os/arch[/variant]` of an index entry.
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

fn descriptor(raw: RawDescriptor) -> Result<Descriptor, String> {
    let digest =
        OciDigest::parse(&raw.digest).ok_or_else(|| format!("`{}` is not a digest", raw.digest))?;
    let platform = raw.platform.map(|p| match p.variant {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
        _ => format!("{}/{}", p.os, p.architecture),
    });
    Ok(Descriptor {
        digest,
        size: raw.size,
        platform,
    })
}

/// Reads a manifest or index (the JSON's own `mediaType`, else its shape, decides which).
pub fn parse(body: &[u8]) -> Result<Document, String> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    let is_index = match raw.media_type.as_deref() {
        Some(t) => t.contains("index") || t.contains("manifest.list"),
        None => raw.manifests.is_some(),
    };
    if is_index {
        let entries = raw.manifests.ok_or("an index without `manifests`")?;
        return entries
            .into_iter()
            .map(descriptor)
            .collect::<Result<_, _>>()
            .map(Document::Index);
    }
    let config = descriptor(raw.config.ok_or("a manifest without `config`")?)?;
    let layers = raw
        .layers
        .unwrap_or_default()
        .into_iter()
        .map(descriptor)
        .collect::<Result<_, _>>()?;
    Ok(Document::Image { config, layers })
}

/// Whether an index entry of `platform` is wanted: every entry when `wanted` is empty; else `os/arch`
/// matches every variant and `os/arch/variant` only itself. Entries without a platform (or
/// `unknown/unknown`: build attestations) are taken only when nothing is filtered.
pub fn wanted(platform: Option<&str>, wanted: &[String]) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let Some(platform) = platform else {
        return false;
    };
    wanted.iter().any(|w| {
        platform == w
            || (w.matches('/').count() == 1
                && platform
                    .strip_prefix(w.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn index_and_image() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"digest":"{A}","size":7,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"digest":"{B}","size":9,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let Document::Index(entries) = parse(index.as_bytes()).unwrap() else {
            panic!("an index")
        };
        assert_eq!(entries[0].platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(entries[1].size, 9);
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{A}","size":3}},"layers":[{{"digest":"{B}","size":5}}]}}"#
        );
        assert_eq!(
            parse(image.as_bytes()).unwrap(),
            Document::Image {
                config: Descriptor {
                    digest: OciDigest::parse(A).unwrap(),
                    size: 3,
                    platform: None
                },
                layers: vec![Descriptor {
                    digest: OciDigest::parse(B).unwrap(),
                    size: 5,
                    platform: None
                }],
            }
        );
        assert!(parse(b"{}").is_err());
        assert!(parse(br#"{"manifests":[{"digest":"md5:x"}]}"#).is_err());
    }

    #[test]
    fn platform_filter() {
        let w = |p: Option<&str>, list: &[&str]| {
            wanted(p, &list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert!(w(Some("unknown/unknown"), &[]));
        assert!(w(None, &[]));
        assert!(w(Some("linux/arm64/v8"), &["linux/arm64"]));
        assert!(w(Some("linux/amd64"), &["linux/amd64"]));
        assert!(!w(Some("linux/arm/v7"), &["linux/arm64"]));
        assert!(!w(Some("linux/arm64/v8"), &["linux/arm64/v9"]));
        assert!(!w(Some("unknown/unknown"), &["linux/amd64"]));
        assert!(!w(None, &["linux/amd64"]));
    }
}
