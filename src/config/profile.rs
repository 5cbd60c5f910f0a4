//! Which defaults apply, said out loud. Without a config file the service runs on the laptop defaults
//! (loopback, unprivileged ports, no passthrough); the mere presence of a file switches to the partition
//! defaults (DNS on :53, HTTP on :80, passthrough on :443, images.metal-stack.io and github.com
//! intercepted). Both are right for their users; neither may surprise: the start-up log and `check-config`
//! print this summary.

use super::{Config, ConfigSource};
use std::net::SocketAddr;

/// The defaults under the values: `laptop` without a config file, `partition` with one.
pub fn name(source: &ConfigSource) -> &'static str {
    match source {
        ConfigSource::BuiltIn => "laptop",
        ConfigSource::File(_) => "partition",
    }
}

/// One line per fact: the profile and where it came from, what is intercepted and where, what is passed
/// through, which registries are mirrored.
pub fn summary(config: &Config, source: &ConfigSource) -> Vec<String> {
    let list = |addrs: &[SocketAddr]| {
        let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        if v.is_empty() {
            "nowhere".to_string()
        } else {
            v.join(", ")
        }
    };
    let domains: Vec<&str> = config.domains.iter().map(|d| d.name.as_str()).collect();
    let domains = if domains.is_empty() {
        "no domain".to_string()
    } else {
        domains.join(", ")
    };
    let why = match source {
        ConfigSource::BuiltIn => "no config file".to_string(),
        ConfigSource::File(p) => format!("config file {}", p.display()),
    };
    let mut lines = vec![format!("profile: {} defaults ({why})", name(source))];
    lines.push(if config.dns.enabled {
        format!(
            "intercepts {domains}: DNS on {}, files on {}",
            list(&config.dns.listen),
            list(&config.http.listen)
        )
    } else {
        format!(
            "caches files of {domains} on {} (DNS off: clients must resolve them here themselves)",
            list(&config.http.listen)
        )
    });
    lines.push(if config.passthrough.enabled {
        format!(
            "passes TLS for {domains} through to their origins on {}",
            list(&config.passthrough.listen)
        )
    } else {
        "no TLS passthrough".to_string()
    });
    let registries: Vec<&str> = config
        .registry
        .upstreams
        .keys()
        .map(String::as_str)
        .collect();
    lines.push(if !config.registry.enabled {
        "no registry mirror".to_string()
    } else if config.registry.open {
        format!(
            "mirrors {} and any public registry (registry.open)",
            registries.join(", ")
        )
    } else {
        format!("mirrors {}", registries.join(", "))
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_which_profile_and_what_it_intercepts_and_passes_through() {
        let laptop = summary(&Config::laptop_defaults(), &ConfigSource::BuiltIn);
        assert_eq!(laptop[0], "profile: laptop defaults (no config file)");
        assert_eq!(
            laptop[1],
            "intercepts images.metal-stack.io, github.com: DNS on 127.0.0.1:5353, files on 127.0.0.1:8080"
        );
        assert_eq!(laptop[2], "no TLS passthrough");
        let file = ConfigSource::File("/etc/image-cache/config.toml".into());
        let partition = summary(&Config::production_defaults(), &file);
        assert_eq!(
            partition[0],
            "profile: partition defaults (config file /etc/image-cache/config.toml)"
        );
        assert!(partition[1].contains("DNS on 0.0.0.0:53"), "{partition:?}");
        assert_eq!(
            partition[2],
            "passes TLS for images.metal-stack.io, github.com through to their origins on 0.0.0.0:443"
        );
        assert!(partition[3].starts_with("mirrors ") && partition[3].contains("docker.io"));
        let mut off = Config::production_defaults();
        off.dns.enabled = false;
        off.registry.enabled = false;
        let lines = summary(&off, &file);
        assert!(lines[1].contains("DNS off"), "{lines:?}");
        assert_eq!(lines[3], "no registry mirror");
    }
}
