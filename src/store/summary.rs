//! One pass over the index rows for the status page and the gauges: the largest objects, the most
//! requested ones, and the bytes that pins hold. Pure: the store feeds it rows.

use super::index::ObjectRow;
use std::collections::HashSet;

/// One object as the summary lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub hits: u64,
    pub last_access: u64,
    pub pinned: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Largest first; ties by key.
    pub largest: Vec<Entry>,
    /// Most hits first; objects never hit are left out.
    pub most_requested: Vec<Entry>,
    /// Bytes of the distinct blobs held by at least one pinned key: what eviction can never free.
    pub pinned_bytes: u64,
    pub pinned_keys: u64,
    /// Objects their upstream answered 404/410 for, still served through the grace: the longest
    /// deleted first.
    #[serde(default)]
    pub upstream_deleted: Vec<Deleted>,
    #[serde(default)]
    pub upstream_deleted_keys: u64,
}

/// An object the upstream no longer has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deleted {
    pub key: String,
    /// The upstream's first 404/410, milliseconds since the epoch.
    pub since_ms: u64,
    /// Pinned: kept whatever the upstream says.
    pub pinned: bool,
}

/// Collects the summary while rows stream past, keeping at most `n` of each list.
pub struct Collector {
    n: usize,
    summary: Summary,
    pinned_digests: HashSet<super::Digest>,
}

impl Collector {
    pub fn new(n: usize) -> Self {
        Collector {
            n,
            summary: Summary::default(),
            pinned_digests: HashSet::new(),
        }
    }

    pub fn offer(&mut self, key: &str, row: &ObjectRow) {
        if row.pinned {
            self.summary.pinned_keys += 1;
            if self.pinned_digests.insert(row.digest) {
                self.summary.pinned_bytes += row.size;
            }
        }
        let entry = || Entry {
            key: key.to_string(),
            size: row.size,
            hits: row.hits,
            last_access: row.last_access,
            pinned: row.pinned,
        };
        if let Some(since_ms) = row.upstream_deleted_ms {
            self.summary.upstream_deleted_keys += 1;
            let list = &mut self.summary.upstream_deleted;
            let at = list.partition_point(|d| (d.since_ms, d.key.as_str()) < (since_ms, key));
            if at < self.n {
                list.insert(
                    at,
                    Deleted {
                        key: key.to_string(),
                        since_ms,
                        pinned: row.pinned || row.operator_pin,
                    },
                );
                list.truncate(self.n);
            }
        }
        keep_top(&mut self.summary.largest, self.n, entry(), |e| e.size);
        if row.hits > 0 {
            keep_top(&mut self.summary.most_requested, self.n, entry(), |e| {
                e.hits
            });
        }
    }

    pub fn finish(self) -> Summary {
        self.summary
    }
}

/// Inserts `e` into `list` (sorted by `by` descending, then key) if it ranks among the first `n`.
fn keep_top(list: &mut Vec<Entry>, n: usize, e: Entry, by: impl Fn(&Entry) -> u64) {
    if n == 0 {
        return;
    }
    let rank = |a: &Entry| (std::cmp::Reverse(by(a)), a.key.clone());
    if list.len() == n && list.last().is_some_and(|last| rank(last) <= rank(&e)) {
        return;
    }
    let at = list.partition_point(|x| rank(x) < rank(&e));
    list.insert(at, e);
    list.truncate(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: u64, hits: u64, pinned: bool, digest: u8) -> ObjectRow {
        ObjectRow {
            hits,
            pinned,
            ..ObjectRow::sample(digest, size)
        }
    }

    #[test]
    fn keeps_the_top_n_of_each_list_and_counts_pinned_blobs_once() {
        let mut c = Collector::new(2);
        c.offer("a", &row(10, 5, false, 1));
        c.offer("b", &row(30, 0, true, 2));
        c.offer("c", &row(20, 9, true, 2)); // same blob as b: its bytes count once
        c.offer("d", &row(30, 1, false, 3));
        c.offer("e", &row(5, 7, true, 4));
        let s = c.finish();
        let keys = |l: &[Entry]| l.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&s.largest), ["b", "d"]);
        assert_eq!(keys(&s.most_requested), ["c", "e"]);
        assert_eq!(s.pinned_keys, 3);
        assert_eq!(s.pinned_bytes, 30 + 5);
    }

    #[test]
    fn objects_deleted_upstream_are_listed_longest_deleted_first() {
        let mut c = Collector::new(2);
        let deleted = |since, pinned| ObjectRow {
            upstream_deleted_ms: Some(since),
            pinned,
            ..ObjectRow::sample(1, 10)
        };
        c.offer("new", &deleted(300, false));
        c.offer("kept", &row(10, 0, false, 2));
        c.offer("old", &deleted(100, true));
        c.offer("mid", &deleted(200, false));
        let s = c.finish();
        assert_eq!(s.upstream_deleted_keys, 3);
        let listed: Vec<(&str, u64, bool)> = s
            .upstream_deleted
            .iter()
            .map(|d| (d.key.as_str(), d.since_ms, d.pinned))
            .collect();
        assert_eq!(listed, [("old", 100, true), ("mid", 200, false)]);
    }

    #[test]
    fn never_hit_objects_are_not_most_requested_and_zero_keeps_nothing() {
        let mut c = Collector::new(0);
        c.offer("a", &row(10, 5, false, 1));
        assert!(c.finish().largest.is_empty());
        let mut c = Collector::new(3);
        c.offer("a", &row(10, 0, false, 1));
        assert!(c.finish().most_requested.is_empty());
    }
}
