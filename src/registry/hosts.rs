//! `hosts.toml` for containerd nodes (`image-cache containerd-hosts`). Pure.
//!
//! The file goes to `/etc/containerd/certs.d/<registry>/hosts.toml` (or `_default/hosts.toml` for every
//! registry). It lists the cache as the first host with pull and resolve, and leaves `server` to the
//! real registry, so containerd falls back to the registry by itself when the cache is down. The `[host]`
//! table is always present: containerd 1.6 and 1.7 before 1.7.32 ignore a hosts.toml without one.

/// `mirrors`: the cache nodes' base URLs (`http://10.0.0.1` or `http://cache.local:8080`), in the order
/// containerd should try them; every node of a partition belongs here, so losing one sends containerd to
/// the next cache node instead of to the internet. `registry`: a registry name (`docker.io`, `ghcr.io`,
/// `myreg.io:5000`) for a per-registry file, `None` for `_default`. Returns the file's text, or why a
/// mirror URL is unusable.
pub fn hosts_toml(mirrors: &[String], registry: Option<&str>) -> Result<String, String> {
    if mirrors.is_empty() {
        return Err("--mirror: give at least one cache URL".into());
    }
    let mut seen = Vec::new();
    let mut out = String::new();
    out.push_str("# Written by `image-cache containerd-hosts`: the cache nodes in order, the registry itself as fallback.\n");
    if let Some(registry) = registry {
        let server = match registry {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
                "https://registry-1.docker.io".to_string()
            }
            other => format!("https://{other}"),
        };
        out.push_str(&format!("server = \"{server}\"\n"));
    }
    for mirror in mirrors {
        let url = mirror_url(mirror)?;
        if seen.contains(&url) {
            return Err(format!("--mirror {mirror:?}: given twice"));
        }
        out.push_str(&format!(
            "\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
        if url.starts_with("http://") {
            // containerd 2.x tries TLS first towards a non-80 http host that has TLS settings; we set none.
            out.push_str(
                "  # plain HTTP on a trusted network; use https:// and `ca = \"…\"` otherwise\n",
            );
        }
        out.push_str("  dial_timeout = \"5s\"\n");
        seen.push(url);
    }
    Ok(out)
}

fn mirror_url(mirror: &str) -> Result<String, String> {
    let url = url::Url::parse(mirror).map_err(|e| format!("--mirror {mirror:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "--mirror {mirror:?}: needs http:// or https:// and a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("--mirror {mirror:?}: no query or fragment, please"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_per_registry_files() {
        let one = |m: &str| vec![m.to_string()];
        let d = hosts_toml(&one("http://10.0.0.1/"), None).unwrap();
        assert!(d.contains("[host.\"http://10.0.0.1\"]"), "{d}");
        assert!(d.contains("capabilities = [\"pull\", \"resolve\"]"));
        assert!(
            !d.contains("server ="),
            "_default keeps each image's own registry as fallback"
        );
        let parsed: toml::Value = toml::from_str(&d).unwrap();
        assert!(parsed["host"]["http://10.0.0.1"]["capabilities"].is_array());

        let h = hosts_toml(&one("https://cache.example:8443"), Some("docker.io")).unwrap();
        assert!(
            h.contains("server = \"https://registry-1.docker.io\""),
            "{h}"
        );
        let g = hosts_toml(&one("http://10.0.0.1:8080"), Some("myreg.io:5000")).unwrap();
        assert!(g.contains("server = \"https://myreg.io:5000\""));
        let parsed: toml::Value = toml::from_str(&g).unwrap();
        assert_eq!(
            parsed["host"]["http://10.0.0.1:8080"]["dial_timeout"].as_str(),
            Some("5s")
        );
    }

    #[test]
    fn every_node_of_a_partition_in_order() {
        let nodes: Vec<String> = ["http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3:8080"]
            .map(String::from)
            .to_vec();
        let t = hosts_toml(&nodes, Some("docker.io")).unwrap();
        let order: Vec<usize> = nodes
            .iter()
            .map(|n| t.find(&format!("[host.\"{n}\"]")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{t}");
        let parsed: toml::Table = toml::from_str(&t).unwrap();
        let hosts = parsed["host"].as_table().unwrap();
        assert_eq!(hosts.len(), 3);
        assert!(
            hosts
                .values()
                .all(|h| h["capabilities"].as_array().unwrap().len() == 2)
        );
        assert_eq!(
            parsed["server"].as_str(),
            Some("https://registry-1.docker.io")
        );
    }

    #[test]
    fn bad_mirrors() {
        for m in ["10.0.0.1", "ftp://x", "http://", "http://x/?a=b"] {
            assert!(hosts_toml(&[m.to_string()], None).is_err(), "{m}");
        }
        assert!(hosts_toml(&[], None).is_err());
        let twice = ["http://a", "http://a/"].map(String::from).to_vec();
        assert!(hosts_toml(&twice, None).is_err());
    }
}
