//! Upstream 404s remembered for `registry.negative_ttl`, so a node retrying a missing tag (a typo in a
//! pod spec, a deleted image) does not spend the registry's rate limit on every attempt.

use crate::clock::Clock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; expired ones are dropped first, then the map is cleared.
const CAPACITY: usize = 10_000;

pub struct NegativeCache {
    ttl: Duration,
    clock: Clock,
    entries: Mutex<HashMap<String, Instant>>,
}

impl NegativeCache {
    pub fn new(ttl: Duration, clock: Clock) -> Self {
        NegativeCache {
            ttl,
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn insert(&self, key: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.instant();
        if entries.len() >= CAPACITY {
            entries.retain(|_, until| *until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key.to_string(), now + self.ttl);
    }

    pub fn contains(&self, key: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some(until) if *until > self.clock.instant() => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn remove(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_the_ttl_only() {
        let clock = Clock::system();
        let n = NegativeCache::new(Duration::from_secs(30), clock.clone());
        n.insert("a");
        assert!(n.contains("a") && !n.contains("b"));
        clock.advance(Duration::from_secs(29));
        assert!(n.contains("a"));
        clock.advance(Duration::from_secs(2));
        assert!(!n.contains("a"));
        let off = NegativeCache::new(Duration::ZERO, Clock::system());
        off.insert("a");
        assert!(!off.contains("a"));
    }

    #[test]
    fn stays_bounded() {
        let n = NegativeCache::new(Duration::from_secs(60), Clock::system());
        for i in 0..CAPACITY + 5 {
            n.insert(&i.to_string());
        }
        assert!(n.entries.lock().unwrap().len() <= CAPACITY);
        assert!(n.contains(&(CAPACITY + 4).to_string()));
    }
}
