//! A fill's digests, computed beside its writes: SHA-256 and the byte count on one blocking thread, MD5
//! (when wanted) on another, both fed the same reference-counted batches (the received chunks) in order. A fill then costs the
//! slower of the two hashes instead of their sum: on this project's machines SHA-256 (SHA-NI) runs at
//! about 1.56 GB/s per core and MD5 at about 0.63 GB/s, so one thread doing both capped a fill near
//! 0.45 GB/s before any I/O.

use super::fs::Hashes;
use super::key::Digest;
use bytes::Bytes;
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One write's worth of received chunks, shared by the writer and the hashers.
pub(super) type Batch = Arc<[Bytes]>;

/// Batches each hasher may be behind the writer.
const QUEUE: usize = 4;

pub(super) struct HashFeed {
    sha256: mpsc::Sender<Batch>,
    md5: Option<mpsc::Sender<Batch>>,
    sha256_task: JoinHandle<(u64, [u8; 32])>,
    md5_task: Option<JoinHandle<[u8; 16]>>,
}

/// A hashing thread stopped before the fill ended (it panicked, or the runtime is going away).
#[derive(Debug, thiserror::Error)]
#[error("hashing stopped: {0}")]
pub(super) struct HashingStopped(String);

impl HashFeed {
    pub(super) fn start(with_md5: bool) -> Self {
        let (sha256, mut rx) = mpsc::channel::<Batch>(QUEUE);
        let sha256_task = tokio::task::spawn_blocking(move || {
            let (mut hasher, mut size) = (Sha256::new(), 0u64);
            while let Some(batch) = rx.blocking_recv() {
                for chunk in batch.iter() {
                    hasher.update(chunk);
                    size += chunk.len() as u64;
                }
            }
            (size, hasher.finalize().into())
        });
        let (md5, md5_task) = if with_md5 {
            let (tx, mut rx) = mpsc::channel::<Batch>(QUEUE);
            let task = tokio::task::spawn_blocking(move || {
                let mut hasher = Md5::new();
                while let Some(batch) = rx.blocking_recv() {
                    for chunk in batch.iter() {
                        hasher.update(chunk);
                    }
                }
                hasher.finalize().into()
            });
            (Some(tx), Some(task))
        } else {
            (None, None)
        };
        HashFeed {
            sha256,
            md5,
            sha256_task,
            md5_task,
        }
    }

    /// Hands the next batch to every hasher (waits while one is `QUEUE` batches behind).
    pub(super) async fn send(&self, batch: &Batch) -> Result<(), HashingStopped> {
        let gone = |_| HashingStopped("a hasher quit".into());
        self.sha256.send(Arc::clone(batch)).await.map_err(gone)?;
        if let Some(md5) = &self.md5 {
            md5.send(Arc::clone(batch)).await.map_err(gone)?;
        }
        Ok(())
    }

    /// The digests of everything sent.
    pub(super) async fn finish(self) -> Result<Hashes, HashingStopped> {
        let HashFeed {
            sha256,
            md5,
            sha256_task,
            md5_task,
        } = self;
        drop((sha256, md5));
        let (size, sha256) = sha256_task
            .await
            .map_err(|e| HashingStopped(e.to_string()))?;
        let md5 = match md5_task {
            Some(task) => Some(task.await.map_err(|e| HashingStopped(e.to_string()))?),
            None => None,
        };
        Ok(Hashes {
            size,
            sha256: Digest::from_bytes(sha256),
            md5,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_digests_of_the_batches_in_order() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for with_md5 in [true, false] {
            let feed = HashFeed::start(with_md5);
            for batch in data.chunks(200_000) {
                let chunks: Batch = batch.chunks(65_536).map(Bytes::copy_from_slice).collect();
                feed.send(&chunks).await.unwrap();
            }
            let got = feed.finish().await.unwrap();
            let mut whole = super::super::fs::Hasher::new(true);
            whole.update(&data);
            let want = whole.finish();
            assert_eq!(got.size, 1_000_000);
            assert_eq!(got.sha256, want.sha256);
            assert_eq!(got.md5, if with_md5 { want.md5 } else { None });
        }
    }
}
