//! Start-up recovery: whatever a crash left behind is reconciled before the first request.
//!
//! `tmp/` is emptied (an interrupted fill can never complete), index rows whose blob is missing or has the
//! wrong size are dropped, reference counts are recomputed from the rows, and blob files no row references
//! are deleted.

use super::fs::BlobFs;
use super::index::{Index, IndexError};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    pub tmp_removed: usize,
    pub rows_dropped: Vec<String>,
    pub orphan_blobs_removed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{0}")]
    Index(#[from] IndexError),
    #[error("scanning {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

pub(super) fn recover(fs: &BlobFs, index: &Index) -> Result<RecoveryReport, RecoverError> {
    let tmp_removed = fs.clear_tmp().map_err(|source| RecoverError::Io {
        what: "tmp/",
        source,
    })?;
    let files = fs.list_blobs().map_err(|source| RecoverError::Io {
        what: "blobs/",
        source,
    })?;
    let present: HashMap<_, u64> = files
        .iter()
        .filter_map(|(d, _, size)| d.map(|d| (d, *size)))
        .collect();

    let rows_dropped = index.rebuild_blobs(|digest, size| present.get(digest) != Some(&size))?;

    let referenced: HashSet<_> = index.all_blobs()?.into_iter().map(|(d, _)| d).collect();
    let mut orphan_blobs_removed = 0;
    for (digest, path, _) in files {
        if digest.is_none_or(|d| !referenced.contains(&d)) && fs.remove_stray(&path).is_ok() {
            orphan_blobs_removed += 1;
        }
    }
    Ok(RecoveryReport {
        tmp_removed,
        rows_dropped,
        orphan_blobs_removed,
    })
}
