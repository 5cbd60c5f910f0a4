//! Keys whose revalidation just failed and whose stored copy is being served: asked again only after a
//! quiet spell, so an outage costs each request nothing — not a connect timeout per request against a
//! black-holed origin, not one more refused request per pull to a registry that rejects the account.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest quiet spell, whatever the freshness window (a short `tag_ttl` keeps a shorter one).
pub(super) const MAX_QUIET: Duration = Duration::from_secs(30);
/// Keys held at most; past it, expired ones are dropped, and if none are, a new key is not held.
const CAPACITY: usize = 65_536;

#[derive(Default)]
pub(super) struct QuietKeys {
    until: Mutex<HashMap<String, Instant>>,
}

impl QuietKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn hold(&self, key: &str, now: Instant, spell: Duration) {
        let mut until = self.lock();
        if until.len() >= CAPACITY {
            until.retain(|_, t| *t > now);
            if until.len() >= CAPACITY {
                return;
            }
        }
        until.insert(key.to_string(), now + spell.min(MAX_QUIET));
    }

    pub(super) fn is_quiet(&self, key: &str, now: Instant) -> bool {
        let mut until = self.lock();
        match until.get(key) {
            Some(t) if *t > now => true,
            Some(_) => {
                until.remove(key);
                false
            }
            None => false,
        }
    }

    pub(super) fn release(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_quiet_for_its_spell_capped() {
        let q = QuietKeys::default();
        let t = Instant::now();
        q.hold("a", t, Duration::from_secs(5));
        assert!(q.is_quiet("a", t + Duration::from_secs(4)));
        assert!(!q.is_quiet("a", t + Duration::from_secs(5)));
        assert!(!q.is_quiet("b", t));
        q.hold("c", t, Duration::from_secs(3600));
        assert!(!q.is_quiet("c", t + MAX_QUIET));
        q.hold("d", t, Duration::from_secs(9));
        q.release("d");
        assert!(!q.is_quiet("d", t));
    }
}
