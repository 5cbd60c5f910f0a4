//! The hottest keys' rows with their blobs already open, so a repeated hit costs neither a redb
//! transaction nor an `open()` (nginx's `open_file_cache`, for the same reason). Small blobs also keep
//! their bytes, under a byte budget: a hit on them is a reference-counted slice, no read at all. Bounded
//! by entries (each holds a descriptor) and by body bytes. Whoever changes or removes a key's row must
//! `forget` it; an entry whose blob was unlinked in between still holds the same immutable, verified bytes,
//! so a racing hit is harmless.

use super::index::ObjectRow;
use bytes::Bytes;
use lru::LruCache;
use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub(super) struct HotEntry {
    pub row: ObjectRow,
    pub file: Arc<File>,
    /// The whole blob, for blobs of at most `body_max` bytes while the budget allows.
    pub body: Option<Bytes>,
}

pub(super) struct HotSet {
    inner: Mutex<Inner>,
    body_max: u64,
    body_budget: u64,
}

struct Inner {
    entries: LruCache<String, HotEntry>,
    body_bytes: u64,
}

impl HotSet {
    pub(super) fn new(capacity: NonZeroUsize, body_max: u64, body_budget: u64) -> Self {
        HotSet {
            inner: Mutex::new(Inner {
                entries: LruCache::new(capacity),
                body_bytes: 0,
            }),
            body_max,
            body_budget,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<HotEntry> {
        super::lock(&self.inner).entries.get(key).cloned()
    }

    /// Whether a blob of `size` bytes would be kept in memory if inserted now.
    pub(super) fn wants_body(&self, size: u64) -> bool {
        size <= self.body_max && super::lock(&self.inner).body_bytes + size <= self.body_budget
    }

    pub(super) fn insert(&self, key: &str, entry: HotEntry) {
        let mut inner = super::lock(&self.inner);
        let mut entry = entry;
        let size = entry.body.as_ref().map_or(0, |b| b.len() as u64);
        if inner.body_bytes + size > self.body_budget {
            entry.body = None;
        }
        inner.body_bytes += entry.body.as_ref().map_or(0, |b| b.len() as u64);
        if let Some((_, old)) = inner.entries.push(key.to_string(), entry) {
            inner.body_bytes -= old.body.map_or(0, |b| b.len() as u64);
        }
    }

    pub(super) fn forget(&self, key: &str) {
        let mut inner = super::lock(&self.inner);
        if let Some(old) = inner.entries.pop(key) {
            inner.body_bytes -= old.body.map_or(0, |b| b.len() as u64);
        }
    }

    #[cfg(test)]
    fn usage(&self) -> (usize, u64) {
        let inner = super::lock(&self.inner);
        (inner.entries.len(), inner.body_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u64, body: bool) -> HotEntry {
        HotEntry {
            row: ObjectRow::sample(7, size),
            file: Arc::new(tempfile::tempfile().unwrap()),
            body: body.then(|| Bytes::from(vec![1u8; size as usize])),
        }
    }

    #[test]
    fn bounded_by_entries_and_forgets() {
        let hot = HotSet::new(NonZeroUsize::new(2).unwrap(), 100, 1000);
        hot.insert("a", entry(1, false));
        hot.insert("b", entry(2, false));
        assert_eq!(hot.get("a").unwrap().row.size, 1); // a is now most recent
        hot.insert("c", entry(3, false));
        assert!(
            hot.get("b").is_none(),
            "least recently used entry goes first"
        );
        assert_eq!(hot.usage().0, 2);
        hot.forget("a");
        assert!(hot.get("a").is_none());
        assert_eq!(hot.get("c").unwrap().row.size, 3);
    }

    #[test]
    fn body_bytes_stay_within_budget_and_are_given_back() {
        let hot = HotSet::new(NonZeroUsize::new(3).unwrap(), 100, 150);
        assert!(hot.wants_body(100));
        assert!(!hot.wants_body(101), "larger than body_max");
        hot.insert("a", entry(100, true));
        assert!(!hot.wants_body(60));
        hot.insert("b", entry(60, true)); // over budget: kept without its body
        assert!(hot.get("b").unwrap().body.is_none());
        assert_eq!(hot.usage().1, 100);
        hot.insert("c", entry(10, true));
        hot.insert("d", entry(10, true)); // evicts "a", the least recently used
        assert!(hot.get("a").is_none());
        assert_eq!(hot.usage(), (3, 20));
        hot.forget("c");
        assert_eq!(hot.usage(), (2, 10));
        hot.insert("d", entry(10, true)); // replacing an entry does not count it twice
        assert_eq!(hot.usage(), (2, 10));
    }
}
