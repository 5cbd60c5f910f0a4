//! The redb index: key → object row, digest → blob row (size, reference count).
//!
//! redb's transactions are the only source of truth: a crash leaves either the old or the new row. Blob
//! files are published before the row that references them is committed and unlinked after the row that
//! released them is committed, so a crash can only leave an unreferenced file, which recovery removes.

use super::key::Digest;
pub(crate) use super::row::{AccessUpdate, BlobRow};
pub use super::row::{Found, ObjectRow};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
const BLOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blobs");

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(
        "the index {path} is in use by another image-cache process; stop it or use its admin API"
    )]
    Locked { path: String },
    #[error("index database error: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt index row for {key}: {source}")]
    Row {
        key: String,
        source: serde_json::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self { IndexError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

pub(crate) struct Index {
    db: Database,
    bytes: AtomicU64,
    objects: AtomicU64,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|source| IndexError::Row {
        key: key.to_string(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Self, IndexError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(IndexError::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let txn = db.begin_write()?;
        txn.open_table(OBJECTS)?;
        txn.open_table(BLOBS)?;
        txn.commit()?;
        let index = Index {
            db,
            bytes: AtomicU64::new(0),
            objects: AtomicU64::new(0),
        };
        index.recount()?;
        Ok(index)
    }

    /// Recomputes the cached totals from the tables.
    pub(crate) fn recount(&self) -> Result<(), IndexError> {
        let txn = self.db.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        let mut bytes = 0;
        for item in blobs.iter()? {
            let (k, v) = item?;
            let row: BlobRow = decode(k.value(), v.value())?;
            bytes += row.size;
        }
        let objects = txn.open_table(OBJECTS)?.len()?;
        self.bytes.store(bytes, Ordering::Relaxed);
        self.objects.store(objects, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of all blobs (each stored once, however many keys share it).
    pub(crate) fn total_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn object_count(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<ObjectRow>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        match table.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Inserts or replaces a row. A replaced row's pins carry over: a pin is about the key, and new content
    /// under a pinned key (a revalidated image) stays pinned. Returns the digest whose last reference this
    /// removed, for the caller to unlink after the commit.
    pub(crate) fn put(&self, key: &str, row: &ObjectRow) -> Result<Option<Digest>, IndexError> {
        let txn = self.db.begin_write()?;
        let mut orphan = None;
        let (mut bytes_delta, mut objects_delta) = (0i64, 0i64);
        {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let old: Option<ObjectRow> = match objects.get(key)? {
                Some(v) => Some(decode(key, v.value())?),
                None => None,
            };
            if old.as_ref().map(|o| o.digest) != Some(row.digest) {
                let hex = row.digest.hex();
                let current: Option<BlobRow> = match blobs.get(hex.as_str())? {
                    Some(v) => Some(decode(&hex, v.value())?),
                    None => None,
                };
                let next = match current {
                    Some(b) => BlobRow {
                        size: b.size,
                        refs: b.refs + 1,
                    },
                    None => {
                        bytes_delta += row.size as i64;
                        BlobRow {
                            size: row.size,
                            refs: 1,
                        }
                    }
                };
                blobs.insert(hex.as_str(), encode(&next).as_slice())?;
                if let Some(old) = &old {
                    let (freed, gone) = release(&mut blobs, &old.digest)?;
                    bytes_delta -= freed as i64;
                    orphan = gone;
                }
            }
            let row = match &old {
                Some(o) => &ObjectRow {
                    pinned: o.pinned || row.pinned,
                    operator_pin: o.operator_pin,
                    ..row.clone()
                },
                None => {
                    objects_delta += 1;
                    row
                }
            };
            objects.insert(key, encode(row).as_slice())?;
        }
        txn.commit()?;
        self.apply_deltas(bytes_delta, objects_delta);
        Ok(orphan)
    }

    /// Removes rows. Returns the removed rows and the digests no key references any more.
    pub(crate) fn remove(
        &self,
        keys: &[String],
    ) -> Result<(Vec<ObjectRow>, Vec<Digest>), IndexError> {
        self.remove_if(keys, |_| true)
    }

    /// Removes the rows of `keys` that `remove` accepts, decided inside the write transaction (so a pin
    /// set since the caller read the rows is seen). Returns the removed rows and the orphaned digests.
    pub(crate) fn remove_if(
        &self,
        keys: &[String],
        remove: impl Fn(&ObjectRow) -> bool,
    ) -> Result<(Vec<ObjectRow>, Vec<Digest>), IndexError> {
        let txn = self.db.begin_write()?;
        let mut removed = Vec::new();
        let mut orphans = Vec::new();
        let mut bytes_delta = 0i64;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            for key in keys {
                let row: Option<ObjectRow> = match objects.get(key.as_str())? {
                    Some(v) => Some(decode(key, v.value())?),
                    None => None,
                };
                let Some(row) = row.filter(|r| remove(r)) else {
                    continue;
                };
                objects.remove(key.as_str())?;
                let (freed, gone) = release(&mut blobs, &row.digest)?;
                bytes_delta -= freed as i64;
                orphans.extend(gone);
                removed.push(row);
            }
        }
        txn.commit()?;
        self.apply_deltas(bytes_delta, -(removed.len() as i64));
        Ok((removed, orphans))
    }

    /// Changes one row in place; `f` returns false to leave it untouched. Returns whether the key exists.
    pub(crate) fn update(
        &self,
        key: &str,
        f: impl FnOnce(&mut ObjectRow) -> bool,
    ) -> Result<bool, IndexError> {
        let txn = self.db.begin_write()?;
        let found;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            let row: Option<ObjectRow> = match objects.get(key)? {
                Some(v) => Some(decode(key, v.value())?),
                None => None,
            };
            found = row.is_some();
            if let Some(mut row) = row
                && f(&mut row)
            {
                objects.insert(key, encode(&row).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(found)
    }

    /// Adds batched hit counts; keys evicted meanwhile are skipped.
    pub(crate) fn apply_access(&self, updates: &[AccessUpdate]) -> Result<(), IndexError> {
        if updates.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            for u in updates {
                let row: Option<ObjectRow> = match objects.get(u.key.as_str())? {
                    Some(v) => Some(decode(&u.key, v.value())?),
                    None => None,
                };
                if let Some(mut row) = row {
                    row.hits += u.hits;
                    row.last_access = row.last_access.max(u.last_access);
                    objects.insert(u.key.as_str(), encode(&row).as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Rows in key order starting after `cursor`, whose key starts with `prefix`; at most `limit`.
    pub(crate) fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, ObjectRow)>, IndexError> {
        Ok(self.find(prefix, cursor, None, limit, usize::MAX)?.rows)
    }

    /// Like `list`, keeping only rows whose pin matches `pinned` (when set), with the key to go on
    /// from. A sparse filter stops after looking at `scan_budget` rows and answers with what it found,
    /// so one admin request never walks a huge index.
    pub(crate) fn find(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        pinned: Option<bool>,
        limit: usize,
        scan_budget: usize,
    ) -> Result<Found, IndexError> {
        let mut found = Found {
            rows: Vec::new(),
            next_cursor: None,
        };
        if limit == 0 {
            found.next_cursor = cursor.map(String::from);
            return Ok(found);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let start = match cursor {
            Some(c) if c >= prefix => c.to_string(),
            _ => prefix.to_string(),
        };
        let mut scanned = 0;
        for item in table.range(start.as_str()..)? {
            let (k, v) = item?;
            let key = k.value();
            if Some(key) == cursor {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            scanned += 1;
            let row: ObjectRow = decode(key, v.value())?;
            if pinned.is_none_or(|p| p == row.pinned) {
                found.rows.push((key.to_string(), row));
            }
            if found.rows.len() >= limit || scanned >= scan_budget {
                found.next_cursor = Some(key.to_string());
                break;
            }
        }
        Ok(found)
    }

    /// Calls `f` for every row in key order without collecting them (the summary of a large index).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &ObjectRow)) -> Result<(), IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        for item in table.iter()? {
            let (k, v) = item?;
            let row: ObjectRow = decode(k.value(), v.value())?;
            f(k.value(), &row);
        }
        Ok(())
    }

    pub(crate) fn all_objects(&self) -> Result<Vec<(String, ObjectRow)>, IndexError> {
        self.list("", None, usize::MAX)
    }

    pub(crate) fn all_blobs(&self) -> Result<Vec<(Digest, BlobRow)>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            if let Ok(d) = Digest::parse(k.value()) {
                out.push((d, decode(k.value(), v.value())?));
            }
        }
        Ok(out)
    }

    /// Rebuilds the blob table from the object rows: reference counts are derived data, and recovery
    /// recomputes them rather than trusting them. Object rows whose blob is `missing` are dropped.
    pub(crate) fn rebuild_blobs(
        &self,
        missing: impl Fn(&Digest, u64) -> bool,
    ) -> Result<Vec<String>, IndexError> {
        let txn = self.db.begin_write()?;
        let mut dropped = Vec::new();
        {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut rows = Vec::new();
            for item in objects.iter()? {
                let (k, v) = item?;
                let key = k.value().to_string();
                match decode::<ObjectRow>(&key, v.value()) {
                    Ok(row) => rows.push((key, Some(row))),
                    Err(_) => rows.push((key, None)),
                }
            }
            let mut counts: std::collections::BTreeMap<Digest, BlobRow> = Default::default();
            for (key, row) in rows {
                match row {
                    Some(row) if !missing(&row.digest, row.size) => {
                        let e = counts.entry(row.digest).or_insert(BlobRow {
                            size: row.size,
                            refs: 0,
                        });
                        e.refs += 1;
                    }
                    _ => {
                        objects.remove(key.as_str())?;
                        dropped.push(key);
                    }
                }
            }
            blobs.retain(|_, _| false)?;
            for (d, row) in counts {
                blobs.insert(d.hex().as_str(), encode(&row).as_slice())?;
            }
        }
        txn.commit()?;
        self.recount()?;
        Ok(dropped)
    }

    fn apply_deltas(&self, bytes: i64, objects: i64) {
        let apply = |a: &AtomicU64, d: i64| {
            if d >= 0 {
                a.fetch_add(d as u64, Ordering::Relaxed);
            } else {
                let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub((-d) as u64))
                });
            }
        };
        apply(&self.bytes, bytes);
        apply(&self.objects, objects);
    }
}

/// Drops one reference; returns (bytes freed, digest if it was the last reference).
fn release(
    blobs: &mut redb::Table<'_, &str, &[u8]>,
    digest: &Digest,
) -> Result<(u64, Option<Digest>), IndexError> {
    let hex = digest.hex();
    let current: Option<BlobRow> = match blobs.get(hex.as_str())? {
        Some(v) => Some(decode(&hex, v.value())?),
        None => None,
    };
    match current {
        Some(b) if b.refs > 1 => {
            blobs.insert(
                hex.as_str(),
                encode(&BlobRow {
                    size: b.size,
                    refs: b.refs - 1,
                })
                .as_slice(),
            )?;
            Ok((0, None))
        }
        Some(b) => {
            blobs.remove(hex.as_str())?;
            Ok((b.size, Some(*digest)))
        }
        None => Ok((0, Some(*digest))),
    }
}

impl Index {
    pub(crate) fn get_blob(&self, digest: &Digest) -> Result<Option<BlobRow>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let hex = digest.hex();
        match table.get(hex.as_str())? {
            Some(v) => Ok(Some(decode(&hex, v.value())?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(d: u8, size: u64) -> ObjectRow {
        ObjectRow {
            fetched_at: 1,
            validated_ms: 1000,
            last_access: 1,
            ..ObjectRow::sample(d, size)
        }
    }

    #[test]
    fn refcounts_share_blobs_and_report_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.redb")).unwrap();
        assert_eq!(idx.put("file:a/x", &row(1, 100)).unwrap(), None);
        assert_eq!(idx.put("file:a/y", &row(1, 100)).unwrap(), None);
        assert_eq!(
            idx.total_bytes(),
            100,
            "one blob shared by two keys counts once"
        );
        assert_eq!(idx.object_count(), 2);
        // Replacing x's content releases one reference only.
        assert_eq!(idx.put("file:a/x", &row(2, 50)).unwrap(), None);
        assert_eq!(idx.total_bytes(), 150);
        // Removing y releases the last reference of blob 1.
        let (removed, orphans) = idx.remove(&["file:a/y".into()]).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(orphans, vec![Digest::from_bytes([1; 32])]);
        assert_eq!(idx.total_bytes(), 50);
        assert_eq!(idx.object_count(), 1);
    }

    #[test]
    fn find_filters_by_pin_pages_and_stops_at_its_scan_budget() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.redb")).unwrap();
        for i in 0..10u8 {
            let r = ObjectRow {
                pinned: i % 4 == 0, // 0, 4, 8
                ..row(i, 1)
            };
            idx.put(&format!("file:a/{i}"), &r).unwrap();
        }
        idx.put(
            "file:b/0",
            &ObjectRow {
                pinned: true,
                ..row(20, 1)
            },
        )
        .unwrap();
        let keys = |f: &Found| f.rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();

        let first = idx
            .find("file:a/", None, Some(true), 2, usize::MAX)
            .unwrap();
        assert_eq!(keys(&first), ["file:a/0", "file:a/4"]);
        assert_eq!(first.next_cursor.as_deref(), Some("file:a/4"));
        let rest = idx
            .find(
                "file:a/",
                first.next_cursor.as_deref(),
                Some(true),
                2,
                usize::MAX,
            )
            .unwrap();
        assert_eq!(keys(&rest), ["file:a/8"]);
        assert_eq!(rest.next_cursor, None, "the prefix is exhausted");

        let unpinned = idx
            .find("file:a/", None, Some(false), 100, usize::MAX)
            .unwrap();
        assert_eq!(unpinned.rows.len(), 7);

        // Three rows looked at, one matched: answer with it and where to go on.
        let budget = idx.find("file:a/", None, Some(true), 100, 3).unwrap();
        assert_eq!(keys(&budget), ["file:a/0"]);
        assert_eq!(budget.next_cursor.as_deref(), Some("file:a/2"));
        let on = idx
            .find("file:a/", budget.next_cursor.as_deref(), Some(true), 100, 3)
            .unwrap();
        assert_eq!(keys(&on), ["file:a/4"]);

        let none = idx
            .find("file:a/", Some("file:a/3"), None, 0, usize::MAX)
            .unwrap();
        assert!(none.rows.is_empty());
        assert_eq!(none.next_cursor.as_deref(), Some("file:a/3"));
    }

    #[test]
    fn replacing_a_row_keeps_its_pins() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.redb")).unwrap();
        idx.put("k", &row(1, 10)).unwrap();
        idx.update("k", |r| {
            r.pinned = true;
            r.operator_pin = true;
            true
        })
        .unwrap();
        let orphan = idx.put("k", &row(2, 20)).unwrap();
        assert_eq!(orphan, Some(Digest::from_bytes([1; 32])));
        let now = idx.get("k").unwrap().unwrap();
        assert_eq!((now.size, now.pinned, now.operator_pin), (20, true, true));
        let mut seen = Vec::new();
        idx.for_each(|k, r| seen.push((k.to_string(), r.size)))
            .unwrap();
        assert_eq!(seen, [("k".to_string(), 20)]);
    }

    #[test]
    fn list_pages_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.redb")).unwrap();
        for k in ["file:a/1", "file:a/2", "file:a/3", "file:b/1"] {
            idx.put(k, &row(9, 1)).unwrap();
        }
        let page1 = idx.list("file:a/", None, 2).unwrap();
        assert_eq!(
            page1.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["file:a/1", "file:a/2"]
        );
        let page2 = idx.list("file:a/", Some("file:a/2"), 2).unwrap();
        assert_eq!(
            page2.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["file:a/3"]
        );
    }

    #[test]
    fn rebuild_drops_rows_without_blobs_and_recounts() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.redb")).unwrap();
        idx.put("file:a/1", &row(1, 10)).unwrap();
        idx.put("file:a/2", &row(2, 20)).unwrap();
        let gone = Digest::from_bytes([2; 32]);
        let dropped = idx.rebuild_blobs(|d, _| *d == gone).unwrap();
        assert_eq!(dropped, vec!["file:a/2".to_string()]);
        assert_eq!(idx.total_bytes(), 10);
        assert_eq!(idx.object_count(), 1);
    }

    #[test]
    fn second_open_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let _first = Index::open(&path).unwrap();
        assert!(matches!(Index::open(&path), Err(IndexError::Locked { .. })));
    }
}
