//! The index's rows: what the store knows about one object (key → content), one blob (digest → size and
//! references), and the shapes its queries answer in.

use super::key::Digest;
use serde::{Deserialize, Serialize};

/// What the index knows about one cached object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRow {
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Lowercase hex md5 of the content, when a `.md5` sidecar was checked or computed.
    #[serde(default)]
    pub md5: Option<String>,
    /// The origin's validators, replayed on revalidation.
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    pub fetched_at: u64,
    /// When the origin last confirmed this content, in milliseconds since the epoch. Whole seconds made a
    /// freshness window of N seconds last anywhere between N-1 and N (a copy validated at x.99 s was stale
    /// at x+1.01 s under a 1 s window). Rows written before carry `validated_at` in seconds, which is
    /// ignored: they read as 0, are revalidated once with their validators and then carry this field.
    #[serde(default)]
    pub validated_ms: u64,
    pub last_access: u64,
    pub hits: u64,
    /// Eviction never removes a pinned key. Sync pins what its plan keeps and unpins the rest,
    /// except keys an operator pinned (`operator_pin`), which only the admin API unpins.
    pub pinned: bool,
    #[serde(default)]
    pub operator_pin: bool,
    /// When the upstream first answered a revalidation with 404/410 (milliseconds since the epoch): the
    /// copy is still served for the grace (`store::gone`), and the mark goes when the upstream has it
    /// again. Absent from rows the upstream never denied, so they cost nothing more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_deleted_ms: Option<u64>,
}

impl ObjectRow {
    /// Whether the copy is still inside its freshness window `ttl` at `now_ms`, without asking the origin.
    /// A validation later than `now_ms` (the clock was ahead then, and has been set back) proves nothing
    /// about now: the copy is revalidated — and still served if the origin cannot answer — instead of
    /// counting as fresh until the clock catches up, which could be any time.
    pub fn fresh_at(&self, now_ms: u64, ttl: std::time::Duration) -> bool {
        now_ms
            .checked_sub(self.validated_ms)
            .is_some_and(|age| u128::from(age) < ttl.as_millis())
    }

    /// Who holds the pin: `operator` (admin API, kept across syncs), `sync`, or nobody.
    pub fn pinned_by(&self) -> Option<&'static str> {
        match (self.pinned, self.operator_pin) {
            (_, true) => Some("operator"),
            (true, false) => Some("sync"),
            _ => None,
        }
    }

    /// A row with a fake digest (`digest_byte` repeated) and nothing else set, for the decision tests
    /// (eviction, summary, hot set) that only look at sizes, counts and pins.
    #[cfg(test)]
    pub(crate) fn sample(digest_byte: u8, size: u64) -> Self {
        ObjectRow {
            digest: Digest::from_bytes([digest_byte; 32]),
            size,
            content_type: None,
            md5: None,
            etag: None,
            last_modified: None,
            fetched_at: 0,
            validated_ms: 0,
            last_access: 0,
            hits: 0,
            pinned: false,
            operator_pin: false,
            upstream_deleted_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobRow {
    pub size: u64,
    pub refs: u64,
}

/// One page of `Index::find`.
#[derive(Debug)]
pub struct Found {
    pub rows: Vec<(String, ObjectRow)>,
    /// Where the next page starts; `None` once no key under the prefix is left.
    pub next_cursor: Option<String>,
}

/// Pending hit counts, flushed in batches so a hit never waits for a disk commit.
#[derive(Debug, Clone)]
pub(crate) struct AccessUpdate {
    pub key: String,
    pub hits: u64,
    pub last_access: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_window_lasts_its_whole_length_whatever_the_millisecond_of_validation() {
        let row = ObjectRow {
            validated_ms: 100_999,
            ..ObjectRow::sample(1, 1)
        };
        let window = Duration::from_secs(1);
        assert!(row.fresh_at(100_999, window));
        assert!(row.fresh_at(101_001, window), "2 ms old in a 1 s window");
        assert!(row.fresh_at(101_998, window));
        assert!(!row.fresh_at(101_999, window));
        assert!(!row.fresh_at(200_000, window));
        assert!(!row.fresh_at(101_001, Duration::ZERO));
        assert!(
            !row.fresh_at(100_998, window),
            "validated in the future (the clock was ahead): revalidated"
        );
        assert!(!row.fresh_at(0, Duration::from_secs(365 * 86_400)));
    }

    #[test]
    fn a_row_from_the_release_before_reads_and_is_revalidated_once() {
        let old = r#"{"digest":"0101010101010101010101010101010101010101010101010101010101010101",
            "size":5,"fetched_at":1764700000,"validated_at":1764700000,"last_access":1764700000,
            "hits":3,"pinned":false}"#;
        let row: ObjectRow = match serde_json::from_str(old) {
            Ok(r) => r,
            Err(e) => panic!("the previous release's row must still read: {e}"),
        };
        assert_eq!((row.size, row.hits, row.validated_ms), (5, 3, 0));
        assert!(!row.fresh_at(1_764_700_000_500, Duration::from_secs(3600)));
    }
}
