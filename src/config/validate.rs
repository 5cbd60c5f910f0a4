//! Cross-field checks that serde cannot express. Runs in `serve` and in `check-config` alike.

use super::{Config, ConfigError, OnMiss};
use std::collections::BTreeSet;
use std::net::IpAddr;

pub(super) fn validate(mut c: Config) -> Result<Config, ConfigError> {
    if c.state_dir.as_os_str().is_empty() {
        return Err(ConfigError::new("state_dir", "must not be empty"));
    }
    if c.cache.max_size.bytes() == 0 {
        return Err(ConfigError::new(
            "cache.max_size",
            "must be greater than zero",
        ));
    }
    if c.cache.max_fills == 0 {
        return Err(ConfigError::new("cache.max_fills", "must be at least 1"));
    }
    if c.cache.max_fills_per_client == 0 || c.cache.max_fills_per_client > c.cache.max_fills {
        return Err(ConfigError::new(
            "cache.max_fills_per_client",
            "must be at least 1 and at most cache.max_fills",
        ));
    }
    if c.http.listen.is_empty() {
        return Err(ConfigError::new(
            "http.listen",
            "needs at least one address",
        ));
    }
    if c.dns.enabled && c.dns.listen.is_empty() {
        return Err(ConfigError::new(
            "dns.listen",
            "needs at least one address when dns.enabled",
        ));
    }
    if c.dns.enabled && c.dns.upstreams.is_empty() {
        return Err(ConfigError::new(
            "dns.upstreams",
            "needs at least one resolver when dns.enabled",
        ));
    }
    if c.passthrough.max_per_client == 0 {
        return Err(ConfigError::new(
            "passthrough.max_per_client",
            "must be at least 1",
        ));
    }
    if c.passthrough.hello_timeout.get().is_zero() {
        return Err(ConfigError::new(
            "passthrough.hello_timeout",
            "must be greater than zero",
        ));
    }
    if c.passthrough.max_connections == 0 {
        return Err(ConfigError::new(
            "passthrough.max_connections",
            "must be at least 1",
        ));
    }
    if c.passthrough.enabled && c.passthrough.listen.is_empty() {
        return Err(ConfigError::new(
            "passthrough.listen",
            "needs at least one address when passthrough.enabled",
        ));
    }
    if c.upstream.connect_timeout.get().is_zero() {
        return Err(ConfigError::new(
            "upstream.connect_timeout",
            "must be greater than zero",
        ));
    }
    if c.upstream.read_timeout.get().is_zero() {
        return Err(ConfigError::new(
            "upstream.read_timeout",
            "must be greater than zero",
        ));
    }
    if c.nodes.health_interval.get().is_zero() {
        return Err(ConfigError::new(
            "nodes.health_interval",
            "must be greater than zero",
        ));
    }

    let mut seen = BTreeSet::new();
    for (i, d) in c.domains.iter_mut().enumerate() {
        let key = |field: &str| format!("domains[{i}].{field}");
        d.name = d.name.trim().trim_end_matches('.').to_ascii_lowercase();
        check_dns_name(&d.name).map_err(|m| ConfigError::new(key("name"), m))?;
        if !seen.insert(d.name.clone()) {
            return Err(ConfigError::new(
                key("name"),
                format!("`{}` is listed twice", d.name),
            ));
        }
        if let Some(origin) = &d.origin {
            check_origin(origin).map_err(|m| ConfigError::new(key("origin"), m))?;
        }
        if d.on_miss == OnMiss::Redirect && d.origin.is_some() {
            // A redirect sends the client to https://<host>; an origin elsewhere would be ignored silently.
            let implied = format!("https://{}", d.name);
            if d.origin_url() != implied {
                return Err(ConfigError::new(
                    key("origin"),
                    format!(
                        "on_miss = \"redirect\" sends clients to {implied}; remove `origin` or use on_miss = \"proxy\"/\"fill\""
                    ),
                ));
            }
        }
    }

    if c.nodes.self_addr.is_none() && c.dns.enabled {
        c.nodes.self_addr = c
            .dns
            .listen
            .iter()
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified());
        if c.nodes.self_addr.is_none() {
            return Err(ConfigError::new(
                "nodes.self",
                "required when dns.listen has only wildcard addresses: set this node's internal IP, handed out in DNS answers",
            ));
        }
    }
    if let Some(name) = &mut c.nodes.peers_from {
        *name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        check_dns_name(name).map_err(|m| ConfigError::new("nodes.peers_from", m))?;
    }
    if c.nodes.self_addr.is_none() && (!c.nodes.peers.is_empty() || c.nodes.peers_from.is_some()) {
        // Every node names the partition's nodes the same way for key ownership: this node needs its
        // own address too. A specific HTTP address is the one peers reach it on.
        c.nodes.self_addr = c
            .http
            .listen
            .iter()
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified());
        if c.nodes.self_addr.is_none() {
            return Err(ConfigError::new(
                "nodes.self",
                "required when nodes.peers or nodes.peers_from is set: this node's internal IP, as the peers list it (in Kubernetes: IMAGE_CACHE_NODES__SELF from status.podIP)",
            ));
        }
    }
    for (i, name) in c.http.admin_hosts.iter_mut().enumerate() {
        *name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        check_dns_name(name).map_err(|m| ConfigError::new(format!("http.admin_hosts[{i}]"), m))?;
    }
    if c.nodes.peer_timeout.get().is_zero() {
        return Err(ConfigError::new(
            "nodes.peer_timeout",
            "must be greater than zero",
        ));
    }
    if let Some(me) = c.nodes.self_addr {
        if me.is_unspecified() {
            return Err(ConfigError::new(
                "nodes.self",
                "must be a specific address, not a wildcard",
            ));
        }
        if c.nodes.peers.contains(&me) {
            return Err(ConfigError::new(
                "nodes.peers",
                format!("contains this node's own address {me}"),
            ));
        }
    }
    if let Some(bad) = c.nodes.peers.iter().find(|p| p.is_unspecified()) {
        return Err(ConfigError::new(
            "nodes.peers",
            format!("{bad} is a wildcard address"),
        ));
    }

    check_sync(&c)?;

    for (name, url) in &c.registry.upstreams {
        let key = format!("registry.upstreams.\"{name}\"");
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch == '/') {
            return Err(ConfigError::new(
                key,
                "registry names are host[:port] without slashes",
            ));
        }
        check_origin(url).map_err(|m| ConfigError::new(key, m))?;
    }
    if let Some(name) = c
        .registry
        .default_upstream
        .as_deref()
        .filter(|n| !n.is_empty())
        && !c.registry.upstreams.contains_key(name)
    {
        return Err(ConfigError::new(
            "registry.default_upstream",
            format!(
                "{name:?} is not a key of registry.upstreams (\"\" refuses requests that name no registry)"
            ),
        ));
    }
    check_open(&c.registry)?;
    check_schedule("registry.prefetch_schedule", &c.registry.prefetch_schedule)?;
    for (i, p) in c.registry.prefetch_platforms.iter().enumerate() {
        let parts: Vec<&str> = p.split('/').collect();
        if !(2..=3).contains(&parts.len())
            || parts
                .iter()
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(ConfigError::new(
                format!("registry.prefetch_platforms[{i}]"),
                format!(
                    "`{p}` is not os/arch or os/arch/variant (like linux/amd64, linux/arm64/v8)"
                ),
            ));
        }
    }
    if let Some(path) = &c.registry.credentials_file {
        super::credentials::load(path, &c.registry.upstreams)
            .map_err(|m| ConfigError::new("registry.credentials_file", m))?;
    }

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return Err(ConfigError::new(
            "log.level",
            format!("`{}` is not a log filter: {e}", c.log.level),
        ));
    }
    Ok(c)
}

/// A standard 5-field cron expression, parsed exactly as the scheduler will run it (seconds first).
fn check_schedule(key: &str, schedule: &str) -> Result<(), ConfigError> {
    let fields = schedule.split_whitespace().count();
    if fields != 5 {
        return Err(ConfigError::new(
            key,
            format!(
                "`{schedule}` has {fields} fields; use a standard 5-field cron expression like `*/10 * * * *`"
            ),
        ));
    }
    let with_seconds = format!("0 {schedule}");
    if let Err(e) = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&with_seconds)
    {
        return Err(ConfigError::new(
            key,
            format!("`{schedule}` is not a valid cron expression: {e}"),
        ));
    }
    Ok(())
}

fn check_sync(c: &Config) -> Result<(), ConfigError> {
    let s = &c.sync;
    check_schedule("sync.schedule", &s.schedule)?;
    if s.min_images_per_name == 0 {
        return Err(ConfigError::new(
            "sync.min_images_per_name",
            "must be at least 1",
        ));
    }
    if s.concurrency == 0 {
        return Err(ConfigError::new("sync.concurrency", "must be at least 1"));
    }
    if url::Url::parse(&s.url)
        .map(|u| !matches!(u.scheme(), "http" | "https"))
        .unwrap_or(true)
    {
        return Err(ConfigError::new(
            "sync.url",
            format!("`{}` is not an http(s) URL", s.url),
        ));
    }
    if s.enabled {
        match s.api {
            super::MetalApiVersion::V1 if s.hmac_file.is_none() => {
                return Err(ConfigError::new(
                    "sync.hmac_file",
                    "required when sync.enabled with api = \"v1\"",
                ));
            }
            super::MetalApiVersion::V2 if s.token_file.is_none() => {
                return Err(ConfigError::new(
                    "sync.token_file",
                    "required when sync.enabled with api = \"v2\"",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A hostname as it may appear in DNS and a Host header: letters, digits, hyphens, dots.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "`{name}` is not a domain name (1 to 253 characters)"
        ));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "`{name}` is an IP address; intercepted domains are names"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "`{name}` is not a valid domain name (label `{label}`)"
            ));
        }
    }
    Ok(())
}

fn check_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin).map_err(|e| format!("`{origin}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{origin}` must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{origin}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{origin}` must not carry a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{origin}` must not embed credentials"));
    }
    Ok(())
}

/// `registry.open`'s limits: checked whether or not it is on, so turning it on later cannot fail.
fn check_open(r: &super::RegistryConfig) -> Result<(), ConfigError> {
    if r.open && r.open_ports.is_empty() {
        return Err(ConfigError::new(
            "registry.open_ports",
            "registry.open needs at least one port (443 is the registries' own)",
        ));
    }
    if r.open_ports.contains(&0) {
        return Err(ConfigError::new("registry.open_ports", "0 is not a port"));
    }
    if r.open_rate_limit == 0 {
        return Err(ConfigError::new(
            "registry.open_rate_limit",
            "must be at least 1 request per second (turn registry.open off to refuse unlisted registries)",
        ));
    }
    for (i, rule) in r.deny.iter().enumerate() {
        let name = rule.strip_prefix("*.").unwrap_or(rule);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name.split('.').all(label_ok) {
            return Err(ConfigError::new(
                format!("registry.deny[{i}]"),
                format!("`{rule}` is not a lowercase host name or `*.domain`"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        for ok in ["images.metal-stack.io", "github.com", "a", "x_y.test"] {
            assert!(check_dns_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "10.0.0.1",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        for ok in ["https://a.b", "http://127.0.0.1:5000", "https://a.b/prefix"] {
            assert!(check_origin(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://a.b",
            "a.b",
            "https://a.b/?x=1",
            "https://u:p@a.b",
            "https://",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn self_defaults_to_first_specific_dns_address() {
        let mut c = Config::production_defaults();
        c.dns.listen = vec![
            "0.0.0.0:53".parse().unwrap(),
            "10.1.2.3:53".parse().unwrap(),
        ];
        let c = validate(c).unwrap();
        assert_eq!(c.nodes.self_addr, Some("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn self_required_with_only_wildcard_dns() {
        let c = Config::production_defaults();
        let err = validate(c).err().map(|e| e.key);
        assert_eq!(err.as_deref(), Some("nodes.self"));
    }

    #[test]
    fn open_registry_limits_are_checked_and_named() {
        let key = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::laptop_defaults();
            f(&mut c);
            validate(c).err().map(|e| e.key)
        };
        assert_eq!(key(&|c| c.registry.open = true), None);
        assert_eq!(
            key(&|c| {
                c.registry.open = true;
                c.registry.open_ports.clear();
            }),
            Some("registry.open_ports".into())
        );
        assert_eq!(
            key(&|c| c.registry.open_ports = vec![443, 0]),
            Some("registry.open_ports".into())
        );
        assert_eq!(
            key(&|c| c.registry.open_rate_limit = 0),
            Some("registry.open_rate_limit".into())
        );
        assert_eq!(
            key(&|c| c.registry.deny = vec!["*.corp.example".into(), "Bad Name".into()]),
            Some("registry.deny[1]".into())
        );
        assert_eq!(
            key(&|c| c.registry.deny = vec!["*.corp.example".into(), "quay.io".into()]),
            None
        );
    }

    #[test]
    fn laptop_defaults_are_valid() {
        let c = validate(Config::laptop_defaults()).unwrap();
        assert_eq!(c.nodes.self_addr, Some("127.0.0.1".parse().unwrap()));
        assert!(!c.passthrough.enabled);
    }
}
