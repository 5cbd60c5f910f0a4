//! The registry tokens the cache holds, per (registry, repository), bounded in count and bytes. A
//! client names repositories (and, with `registry.open`, registries), and a token endpoint chooses its
//! tokens' size: without bounds, a flood of pulls of new repositories from an endpoint handing out large
//! tokens would keep memory that is never given back. Expired tokens go at every insert, not only when
//! their key is asked again; past a bound, the tokens closest to expiry go first (they are worth least).
//! Pure: time is passed in.

use std::collections::HashMap;
use std::time::Instant;

/// Most tokens held.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes of tokens (with their keys) held.
pub const MAX_BYTES: usize = 8 << 20;

type Key = (String, String);

#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<Key, (String, Instant)>,
    bytes: usize,
}

fn size(key: &Key, auth: &str) -> usize {
    key.0.len() + key.1.len() + auth.len()
}

impl TokenCache {
    /// The `Authorization` value for `key`, if it is still valid at `now`.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<String> {
        match self.entries.get(key) {
            Some((auth, until)) if *until > now => Some(auth.clone()),
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `auth` for `key` until `until`; expired tokens go, then the soonest to expire until the
    /// bounds hold. A single value larger than the byte bound is not kept.
    pub fn insert(&mut self, key: Key, auth: String, until: Instant, now: Instant) {
        self.remove(&key);
        let needed = size(&key, &auth);
        if needed > MAX_BYTES {
            return;
        }
        self.expire(now);
        while !self.entries.is_empty()
            && (self.entries.len() >= MAX_ENTRIES || self.bytes + needed > MAX_BYTES)
        {
            let Some(soonest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&soonest);
        }
        self.bytes += needed;
        self.entries.insert(key, (auth, until));
    }

    pub fn remove(&mut self, key: &Key) {
        if let Some((auth, _)) = self.entries.remove(key) {
            self.bytes -= size(key, &auth);
        }
    }

    /// Drops every token expired at `now`.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (tokens and their keys).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(i: usize) -> Key {
        ("registry.example.net".into(), format!("team/app-{i}"))
    }

    #[test]
    fn a_flood_of_large_tokens_stays_within_the_byte_bound() {
        let mut c = TokenCache::default();
        let now = Instant::now();
        let token = format!("Bearer {}", "x".repeat(60 * 1024));
        for i in 0..300 {
            c.insert(
                key(i),
                token.clone(),
                now + Duration::from_secs(300 + i as u64),
                now,
            );
            assert!(c.bytes() <= MAX_BYTES);
        }
        assert!(c.len() < 300 && c.len() > 100, "{}", c.len());
        // The newest (latest to expire) are the ones kept.
        assert!(c.get(&key(299), now).is_some());
        assert!(c.get(&key(0), now).is_none());
    }

    #[test]
    fn the_count_is_bounded_and_expired_tokens_go_without_being_asked_for() {
        let mut c = TokenCache::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES + 100 {
            c.insert(
                key(i),
                "Bearer t".into(),
                now + Duration::from_secs(60),
                now,
            );
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        let later = now + Duration::from_secs(61);
        c.insert(
            key(0),
            "Bearer new".into(),
            later + Duration::from_secs(60),
            later,
        );
        assert_eq!(c.len(), 1, "every expired token went at the insert");
        assert_eq!(c.bytes(), size(&key(0), "Bearer new"));
        c.remove(&key(0));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn replacing_a_token_keeps_the_byte_count_exact() {
        let mut c = TokenCache::default();
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        c.insert(key(1), "Bearer aaaa".into(), until, now);
        c.insert(key(1), "Bearer b".into(), until, now);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), size(&key(1), "Bearer b"));
        assert_eq!(c.get(&key(1), now).as_deref(), Some("Bearer b"));
        assert!(c.get(&key(1), until).is_none());
        assert_eq!(c.bytes(), 0);
        c.insert(key(2), "x".repeat(MAX_BYTES + 1), until, now);
        assert!(c.is_empty(), "a value beyond the bound is not kept");
    }
}
