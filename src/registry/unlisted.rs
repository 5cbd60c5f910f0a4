//! `registry.open` at run time: which unlisted registries are admitted (`open.rs` decides on the name),
//! the guard their requests are dialled under, and the per-registry rate limit that keeps a client from
//! turning the cache into a scanner or an amplifier against one host.

use super::open::{self, Admitted, OpenPolicy};
use crate::config::RegistryConfig;
use crate::upstream::guard::{DialGuard, Reach};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Registries whose rate state is kept before idle ones are dropped: bounds the memory a client
/// naming ever new registries can take.
const TRACKED: usize = 4096;

pub struct Unlisted {
    policy: OpenPolicy,
    guard: DialGuard,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Unlisted {
    /// `None` unless `registry.open` is on.
    pub fn new(config: &RegistryConfig) -> Option<Self> {
        if !config.open {
            return None;
        }
        let rate = NonZeroU32::new(config.open_rate_limit).unwrap_or(NonZeroU32::MIN);
        Some(Unlisted {
            policy: OpenPolicy {
                ports: config.open_ports.clone(),
                deny: config.deny.clone(),
            },
            guard: DialGuard {
                ports: Arc::from(config.open_ports.as_slice()),
                reach: Reach::Registry,
            },
            limiter: RateLimiter::keyed(Quota::per_second(rate)),
        })
    }

    pub fn admit(&self, name: &str) -> Result<Admitted, String> {
        open::admit(name, &self.policy)
    }

    pub fn guard(&self) -> DialGuard {
        self.guard.clone()
    }

    /// Whether one more request may go to `registry` now; else how long until one may.
    pub fn may_send(&self, registry: &str) -> Result<(), Duration> {
        if self.limiter.len() > TRACKED {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&registry.to_string())
            .map_err(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(self.limiter.clock()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(open: bool, rate: u32) -> RegistryConfig {
        let mut c = crate::config::Config::production_defaults().registry;
        c.open = open;
        c.open_rate_limit = rate;
        c
    }

    #[test]
    fn closed_by_default() {
        assert!(Unlisted::new(&crate::config::Config::production_defaults().registry).is_none());
        assert!(Unlisted::new(&config(false, 5)).is_none());
    }

    #[test]
    fn each_registry_has_its_own_budget_per_second() {
        let u = Unlisted::new(&config(true, 3)).unwrap();
        for _ in 0..3 {
            assert!(u.may_send("quay.io").is_ok());
        }
        let wait = u.may_send("quay.io").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another registry is not held up by the first one's burst.
        assert!(u.may_send("registry.gitlab.com").is_ok());
    }
}
