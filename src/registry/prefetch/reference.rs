//! Image references as operators write them (`nginx:1.27`, `ghcr.io/org/app:1.2`,
//! `registry.k8s.io/pause@sha256:…`), resolved the way Docker and containerd resolve them: no registry
//! means Docker Hub, and a one-component Docker Hub name lives under `library/`. Pure.

use crate::registry::path::{self, OciDigest, Reference};
use std::fmt;

/// A resolved image reference: registry, repository, tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub name: String,
    pub reference: Reference,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.name),
            Reference::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.name, d.as_str()),
        }
    }
}

/// `[registry/]name[:tag][@digest]`; the tag defaults to `latest`; a digest wins over a tag.
pub fn parse(text: &str) -> Result<ImageRef, String> {
    let text = text.trim();
    let (rest, digest) = match text.split_once('@') {
        Some((rest, d)) => (
            rest,
            Some(
                OciDigest::parse(d)
                    .ok_or_else(|| format!("`{d}` is not a sha256 or sha512 digest"))?,
            ),
        ),
        None => (text, None),
    };
    // A tag follows the last `:` after the last `/` (a registry may carry a port).
    let (rest, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (rest, None),
    };
    let (registry, name) = match rest.split_once('/') {
        Some((first, name)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_ascii_lowercase(), name.to_string())
        }
        _ => ("docker.io".to_string(), rest.to_string()),
    };
    if !path::registry_host_ok(&registry) {
        return Err(format!("`{registry}` is not a registry host[:port]"));
    }
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => registry,
    };
    let name = if registry == "docker.io" && !name.contains('/') {
        format!("library/{name}")
    } else {
        name
    };
    path::name_ok(&name).map_err(|_| format!("`{name}` is not a valid repository name"))?;
    let reference = match (digest, tag) {
        (Some(d), _) => Reference::Digest(d),
        (None, Some(t)) if path::tag_ok(t) => Reference::Tag(t.to_string()),
        (None, Some(t)) => return Err(format!("`{t}` is not a valid tag")),
        (None, None) => Reference::Tag("latest".into()),
    };
    Ok(ImageRef {
        registry,
        name,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn resolves_like_docker_and_containerd() {
        let p = |s: &str| parse(s).map(|r| r.to_string());
        assert_eq!(p("nginx").unwrap(), "docker.io/library/nginx:latest");
        assert_eq!(p("nginx:1.27").unwrap(), "docker.io/library/nginx:1.27");
        assert_eq!(p("bitnami/redis:7").unwrap(), "docker.io/bitnami/redis:7");
        assert_eq!(
            p("index.docker.io/nginx:1").unwrap(),
            "docker.io/library/nginx:1"
        );
        assert_eq!(p("ghcr.io/org/app:1.2").unwrap(), "ghcr.io/org/app:1.2");
        assert_eq!(
            p("registry.test:5000/team/app").unwrap(),
            "registry.test:5000/team/app:latest"
        );
        assert_eq!(p("localhost/app:2").unwrap(), "localhost/app:2");
        assert_eq!(
            p(&format!("registry.k8s.io/pause@{D}")).unwrap(),
            format!("registry.k8s.io/pause@{D}")
        );
        assert_eq!(
            p(&format!("app:1@{D}")).unwrap(),
            format!("docker.io/library/app@{D}")
        );
    }

    #[test]
    fn refuses_what_no_registry_would_take() {
        for bad in [
            "",
            "Nginx",
            "a//b",
            "ghcr.io/org/app:-x",
            "app@sha256:12",
            "../x",
            "a b",
            "reg..io/x",
            "reg.io:99999/x",
            "-reg.io/x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
