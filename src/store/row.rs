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
    pub validated_at: u64,
    pub last_access: u64,
    pub hits: u64,
    /// Eviction never removes a pinned key. Sync pins what its plan keeps and unpins the rest,
    /// except keys an operator pinned (`operator_pin`), which only the admin API unpins.
    pub pinned: bool,
    #[serde(default)]
    pub operator_pin: bool,
}

impl ObjectRow {
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
            validated_at: 0,
            last_access: 0,
            hits: 0,
            pinned: false,
            operator_pin: false,
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
