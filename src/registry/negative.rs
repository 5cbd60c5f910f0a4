//! Upstream 404s remembered for `registry.negative_ttl`, so a node retrying a missing tag (a typo in a
//! pod spec, a deleted image) does not spend the registry's rate limit on every attempt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; expired ones are dropped first, then the map is cleared.
const CAPACITY: usize = 10_000;

pub struct NegativeCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Instant>>,
}

impl NegativeCache {
    pub fn new(ttl: Duration) -> Self {
        NegativeCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn insert(&self, key: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
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
            Some(until) if *until > Instant::now() => true,
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
        let n = NegativeCache::new(Duration::from_millis(50));
        n.insert("a");
        assert!(n.contains("a") && !n.contains("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!n.contains("a"));
        let off = NegativeCache::new(Duration::ZERO);
        off.insert("a");
        assert!(!off.contains("a"));
    }

    #[test]
    fn stays_bounded() {
        let n = NegativeCache::new(Duration::from_secs(60));
        for i in 0..CAPACITY + 5 {
            n.insert(&i.to_string());
        }
        assert!(n.entries.lock().unwrap().len() <= CAPACITY);
        assert!(n.contains(&(CAPACITY + 4).to_string()));
    }
}
