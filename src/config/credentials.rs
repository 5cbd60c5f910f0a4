//! `registry.credentials_file`: the accounts the cache uses towards upstream registries, in the
//! format operators already have (`~/.docker/config.json`, a kubelet pull secret's
//! `.dockerconfigjson`). Read at start-up; the secrets are never logged or printed.
//!
//! Anything fetched with these credentials is served to every client of the cache: that is the
//! security model, and the README says so.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

/// Registry name (a key of `registry.upstreams`) → account.
pub type RegistryCredentials = BTreeMap<String, Credential>;

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

pub fn load(
    path: &Path,
    upstreams: &BTreeMap<String, String>,
) -> Result<RegistryCredentials, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, upstreams).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a docker `config.json`; every entry must name a configured registry (by its key, its
/// upstream URL's host, or a Docker Hub spelling), so a typo cannot silently leave pulls anonymous.
pub fn parse(
    text: &str,
    upstreams: &BTreeMap<String, String>,
) -> Result<RegistryCredentials, String> {
    let config: DockerConfig =
        serde_json::from_str(text).map_err(|e| format!("not a docker config.json: {e}"))?;
    let mut out = RegistryCredentials::new();
    for (server, entry) in config.auths {
        let registry = registry_of(&server, upstreams)
            .ok_or_else(|| format!("`{server}` is not a registry of registry.upstreams"))?;
        let credential = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) => decode_auth(&auth)
                .ok_or_else(|| format!("`{server}`: `auth` is not base64 of user:password"))?,
            (None, Some(username), Some(password)) => Credential { username, password },
            _ => {
                return Err(format!(
                    "`{server}`: give `auth` or `username` and `password`"
                ));
            }
        };
        out.insert(registry, credential);
    }
    Ok(out)
}

fn decode_auth(auth: &str) -> Option<Credential> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential {
        username: username.to_string(),
        password: password.to_string(),
    })
}

fn registry_of(server: &str, upstreams: &BTreeMap<String, String>) -> Option<String> {
    let host = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()?
        .to_ascii_lowercase();
    let host = match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    };
    if upstreams.contains_key(&host) {
        return Some(host);
    }
    upstreams.iter().find_map(|(name, url)| {
        let u = url::Url::parse(url).ok()?;
        let authority = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str()?),
            None => u.host_str()?.to_string(),
        };
        (authority == host).then(|| name.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> BTreeMap<String, String> {
        [
            ("docker.io", "https://registry-1.docker.io"),
            ("registry.test:5000", "http://127.0.0.1:5000"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn docker_config_forms() {
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000": {"username": "u", "password": "p"}
        }}"#;
        let creds = parse(text, &upstreams()).unwrap();
        assert_eq!(creds["docker.io"].username, "user");
        assert_eq!(creds["docker.io"].password, "pa:ss");
        assert_eq!(creds["registry.test:5000"].password, "p");
        assert!(!format!("{creds:?}").contains("pa:ss"));
    }

    #[test]
    fn refusals_name_the_entry() {
        for (text, needle) in [
            (r#"{"auths": {"ghcr.io": {"auth": "dTpw"}}}"#, "ghcr.io"),
            (r#"{"auths": {"docker.io": {"auth": "!!"}}}"#, "base64"),
            (r#"{"auths": {"docker.io": {"username": "u"}}}"#, "password"),
            ("not json", "config.json"),
        ] {
            let e = parse(text, &upstreams()).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
