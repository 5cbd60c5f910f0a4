//! The only code that writes into the state dir's `blobs/` and `tmp/`.
//!
//! A blob is born in `tmp/` under a random name, hashed while written, checked, fsynced, renamed to
//! `blobs/sha256/<2>/<64>` and its directory fsynced. A `TempBlob` that is dropped before `publish`
//! removes its file, so an aborted fill leaves nothing behind; a crash leaves only `tmp/` litter, which
//! start-up recovery empties.

use super::key::Digest;
use super::read_buffers::ReadBuffer;
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(crate) struct BlobFs {
    root: PathBuf,
    /// Tests make unlinks slow to prove no lock requests take is held across them.
    #[cfg(test)]
    pub(super) unlink_delay: Arc<std::sync::atomic::AtomicU64>,
}

impl BlobFs {
    /// Creates `blobs/` and `tmp/` below `root` if needed.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join("blobs/sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(BlobFs {
            root: root.to_path_buf(),
            #[cfg(test)]
            unlink_delay: Arc::default(),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.relative_path())
    }

    pub(crate) fn open_blob(&self, digest: &Digest) -> io::Result<File> {
        File::open(self.blob_path(digest))
    }

    /// A new temp file, opened read-write so readers of a growing fill can share its descriptor.
    pub(crate) fn create_temp(&self) -> io::Result<TempBlob> {
        let name = format!(
            "fill-{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let path = self.tmp_dir().join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempBlob {
            path: Some(path),
            file: Arc::new(file),
            written: 0,
        })
    }

    /// Moves a verified temp file to its content address. If the blob already exists (same content under
    /// another key), the temp file is dropped and the existing blob kept.
    /// Returns whether this call created the blob (`false`: it was already there), so a caller whose
    /// index commit then fails knows whether the file is its own to take back.
    pub(crate) fn publish(&self, mut temp: TempBlob, digest: &Digest) -> io::Result<bool> {
        let Some(from) = temp.path.take() else {
            return Err(io::Error::other("temp blob already published"));
        };
        let target = self.blob_path(digest);
        if target.is_file() {
            let _ = fs::remove_file(&from);
            return Ok(false);
        }
        let result = (|| {
            temp.file.sync_all()?;
            let dir = target
                .parent()
                .ok_or_else(|| io::Error::other("blob path has no parent"))?;
            if !dir.is_dir() {
                // A new fan directory must itself survive a crash: fsync its parent after creating it.
                fs::create_dir_all(dir)?;
                let fans = dir
                    .parent()
                    .ok_or_else(|| io::Error::other("fan directory has no parent"))?;
                File::open(fans)?.sync_all()?;
            }
            #[allow(clippy::disallowed_methods)] // the one sanctioned rename into the store
            fs::rename(&from, &target)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&from);
        }
        result.map(|()| true)
    }

    /// Unlinks a blob. Readers that hold it open keep reading (Linux keeps the inode alive).
    pub(crate) fn remove_blob(&self, digest: &Digest) -> io::Result<()> {
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_millis(
            self.unlink_delay.load(std::sync::atomic::Ordering::SeqCst),
        ));
        match fs::remove_file(self.blob_path(digest)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Empties `tmp/`: fills that were running when the process died can never complete.
    pub(crate) fn clear_tmp(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Every file under `blobs/sha256`, as (digest or None for a stray name, path, size).
    pub(crate) fn list_blobs(&self) -> io::Result<Vec<(Option<Digest>, PathBuf, u64)>> {
        let mut out = Vec::new();
        for fan in fs::read_dir(self.root.join("blobs/sha256"))? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                out.push((None, fan.path(), 0));
                continue;
            }
            for entry in fs::read_dir(fan.path())? {
                let entry = entry?;
                let name = entry.file_name();
                let digest = name.to_str().and_then(|n| Digest::parse(n).ok());
                let digest = digest.filter(|d| d.hex()[..2] == *fan.file_name().to_string_lossy());
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((digest, entry.path(), size));
            }
        }
        Ok(out)
    }

    /// Removes a stray file found by `list_blobs` (not named by a digest, or not in the index).
    pub(crate) fn remove_stray(&self, path: &Path) -> io::Result<()> {
        if path.starts_with(self.root.join("blobs")) {
            if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            }
        } else {
            Err(io::Error::other("refusing to remove a path outside blobs/"))
        }
    }
}

/// Hashes of a finished temp blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hashes {
    pub size: u64,
    pub sha256: Digest,
    pub md5: Option<[u8; 16]>,
}

/// The digests of a byte stream, fed in order. Separate from the file write so a fill can hash one batch
/// on one core while the next is written (and read by clients) on another.
#[derive(Debug, Clone)]
pub(crate) struct Hasher {
    size: u64,
    sha256: Sha256,
    md5: Option<Md5>,
}

impl Hasher {
    pub(crate) fn new(with_md5: bool) -> Self {
        Hasher {
            size: 0,
            sha256: Sha256::new(),
            md5: with_md5.then(Md5::new),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(m) = &mut self.md5 {
            m.update(data);
        }
        self.size += data.len() as u64;
    }

    pub(crate) fn finish(self) -> Hashes {
        Hashes {
            size: self.size,
            sha256: Digest::from_bytes(self.sha256.finalize().into()),
            md5: self.md5.map(|m| m.finalize().into()),
        }
    }
}

/// A blob being written; dropping it unpublished deletes the file. Its bytes are hashed by a `Hasher`
/// fed alongside, and published only under the digest that hasher computed.
#[derive(Debug)]
pub(crate) struct TempBlob {
    path: Option<PathBuf>,
    file: Arc<File>,
    written: u64,
}

impl TempBlob {
    /// The descriptor readers of a growing fill share (positioned reads, so no shared cursor).
    pub(crate) fn shared_file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends the chunks in order with vectored writes. Blocking: call from a blocking thread.
    pub(crate) fn append_chunks(&mut self, chunks: &[bytes::Bytes]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        let mut file: &File = &self.file;
        while !rest.is_empty() {
            // writev takes at most IOV_MAX (1024 on Linux) slices per call.
            let n = file.write_vectored(&rest[..rest.len().min(1024)])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote no bytes"));
            }
            self.written += n as u64;
            io::IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Reads up to `len` bytes at `offset` without blocking the async worker: straight from the page cache
/// when the bytes are there (`preadv2(RWF_NOWAIT)`, the common case for a hot cache and for a fill's
/// fresh bytes), otherwise on the blocking pool. Returns an empty buffer only at end of file.
pub(crate) async fn read_chunk(
    file: &Arc<File>,
    offset: u64,
    len: usize,
) -> io::Result<ReadBuffer> {
    let mut buf = ReadBuffer::take(len);
    if read_cached(file, offset, &mut buf)? {
        return Ok(buf);
    }
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let n = fill_at(&file, offset, buf.space())?;
        buf.set_filled(n);
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

/// `Ok(false)` when reading would wait for the disk (or the kernel cannot tell us).
fn read_cached(file: &File, offset: u64, buf: &mut ReadBuffer) -> io::Result<bool> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    loop {
        let mut slices = [io::IoSliceMut::new(buf.space())];
        return match preadv2(file, &mut slices, offset, ReadWriteFlags::NOWAIT) {
            Ok(0) if !slices[0].is_empty() => {
                // EOF, or a buffered-read NOWAIT that found nothing cached on some filesystems:
                // let the blocking read decide.
                Ok(false)
            }
            Ok(n) => {
                buf.set_filled(n);
                Ok(true)
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
}

/// Reads `len` bytes at `offset` (fewer at end of file). Blocking.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let filled = fill_at(file, offset, &mut buf)?;
    buf.truncate(filled);
    Ok(buf)
}

/// Fills `buf` from `offset` (less at end of file) and says how much. Blocking.
fn fill_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Streams a whole file through sha256 (and md5). Blocking; used by `store verify`, which may `stop`
/// it between reads (a multi-GB image takes seconds).
pub(crate) fn hash_file(file: &File, stop: &dyn Fn() -> bool) -> io::Result<Hashes> {
    let mut hasher = Hasher::new(true);
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_atomic_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let fs_ = BlobFs::open(dir.path()).unwrap();
        let mut t = fs_.create_temp().unwrap();
        let mut hasher = Hasher::new(true);
        for part in [&b"hello "[..], b"world"] {
            t.append_chunks(&[bytes::Bytes::copy_from_slice(part)])
                .unwrap();
            hasher.update(part);
        }
        assert_eq!(t.written(), 11);
        let h = hasher.finish();
        assert_eq!(h.size, 11);
        assert_eq!(
            h.sha256.hex(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(
            hex::encode(h.md5.unwrap()),
            "5eb63bbbe01eeed093cb22bb8f5acdc3"
        );
        fs_.publish(t, &h.sha256).unwrap();
        assert_eq!(fs::read(fs_.blob_path(&h.sha256)).unwrap(), b"hello world");
        assert_eq!(fs::read_dir(fs_.tmp_dir()).unwrap().count(), 0);

        let mut again = fs_.create_temp().unwrap();
        again
            .append_chunks(&[
                bytes::Bytes::from_static(b"hello "),
                bytes::Bytes::from_static(b"world"),
            ])
            .unwrap();
        fs_.publish(again, &h.sha256).unwrap();
        assert_eq!(fs::read_dir(fs_.tmp_dir()).unwrap().count(), 0);
        let listed = fs_.list_blobs().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, Some(h.sha256));
    }

    #[test]
    fn more_chunks_than_one_writev_takes_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let fs_ = BlobFs::open(dir.path()).unwrap();
        let mut t = fs_.create_temp().unwrap();
        let chunks: Vec<bytes::Bytes> = (0..3000u32)
            .map(|i| bytes::Bytes::from(i.to_be_bytes()[1..].to_vec()))
            .collect();
        t.append_chunks(&chunks).unwrap();
        assert_eq!(t.written(), 9000);
        let mut hasher = Hasher::new(false);
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        hasher.update(&whole);
        let digest = hasher.finish().sha256;
        fs_.publish(t, &digest).unwrap();
        assert_eq!(fs::read(fs_.blob_path(&digest)).unwrap(), whole);
    }

    #[test]
    fn dropped_temp_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fs_ = BlobFs::open(dir.path()).unwrap();
        let mut t = fs_.create_temp().unwrap();
        t.append_chunks(&[bytes::Bytes::from_static(b"partial")])
            .unwrap();
        assert_eq!(fs::read_dir(fs_.tmp_dir()).unwrap().count(), 1);
        drop(t);
        assert_eq!(fs::read_dir(fs_.tmp_dir()).unwrap().count(), 0);
    }
}
