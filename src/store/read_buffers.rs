//! Buffers for reading stored files into response bodies, reused instead of allocated per chunk.
//!
//! A fresh `vec![0u8; len]` per 128 KiB chunk made zeroing memory 6.5% of a 1 GiB hit's CPU (the
//! profile of `bench/profile-hits.sh` before this module; docs/performance.md, "Hits"):
//! `preadv2` takes initialised slices only, and `unsafe` is forbidden. A buffer handed out here is
//! initialised once and then refilled by every read; when the body's `Bytes` is dropped (actix-web
//! copies it into its write buffer and drops it at once) the buffer goes back to the free list of the
//! thread that dropped it. Hits are read and written on the same worker thread,
//! so a worker keeps reusing the same few buffers; reads on the blocking pool take a buffer with them
//! and hand it back to the worker.
//!
//! Only the first `filled` bytes are ever exposed: whatever an earlier read left past them stays inside.

use bytes::Bytes;
use std::cell::RefCell;

/// Every pooled buffer has this length: the largest chunk a reader asks for (fills follow in 256 KiB
/// chunks, hits in 128 KiB ones). Larger requests get a buffer of their own that is not kept.
const BUFFER: usize = 256 * 1024;

/// Free buffers a thread keeps (1 MiB): actix-web copies each chunk into its write buffer and drops it
/// before it polls the next body, so a worker rarely has more than one out; more would sit idle on
/// every thread of a large machine.
const KEEP_PER_THREAD: usize = 4;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with room for one read, and how much of it the read filled.
pub(crate) struct ReadBuffer {
    buf: Vec<u8>,
    filled: usize,
    want: usize,
}

impl ReadBuffer {
    /// Room for `len` bytes, from this thread's free list when it has a buffer.
    pub(crate) fn take(len: usize) -> Self {
        let reused = if len <= BUFFER {
            FREE.try_with(|free| free.borrow_mut().pop()).ok().flatten()
        } else {
            None
        };
        let buf = reused.unwrap_or_else(|| vec![0u8; len.max(BUFFER)]);
        ReadBuffer {
            buf,
            filled: 0,
            want: len,
        }
    }

    /// Where the read goes: exactly the length asked for.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        &mut self.buf[..self.want]
    }

    /// Records how many bytes the read put into `space()` (capped at its length).
    pub(crate) fn set_filled(&mut self, n: usize) {
        self.filled = n.min(self.want);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.filled == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.filled
    }

    /// The filled bytes as a body chunk; the buffer returns to a free list when the chunk is dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.filled]
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        if self.buf.len() != BUFFER {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        // A thread that is exiting has no free list any more: the buffer is simply freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP_PER_THREAD {
                free.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_here() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    #[test]
    fn a_dropped_chunk_gives_its_buffer_back_and_the_next_read_reuses_it() {
        std::thread::spawn(|| {
            let mut first = ReadBuffer::take(128 * 1024);
            first.space()[..3].copy_from_slice(b"abc");
            first.set_filled(3);
            let ptr = first.as_ref().as_ptr();
            let chunk = first.into_bytes();
            assert_eq!(&chunk[..], b"abc");
            assert_eq!(free_here(), 0, "held while the chunk lives");
            drop(chunk);
            assert_eq!(free_here(), 1);
            let second = ReadBuffer::take(4096);
            assert_eq!(second.as_ref().as_ptr(), ptr, "the same memory again");
            assert_eq!(free_here(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn only_the_filled_bytes_are_visible_never_an_earlier_read() {
        std::thread::spawn(|| {
            let mut a = ReadBuffer::take(8);
            a.space().copy_from_slice(b"secret!!");
            a.set_filled(8);
            drop(a.into_bytes());
            let mut b = ReadBuffer::take(8);
            assert!(b.is_empty());
            assert_eq!(b.as_ref(), b"");
            b.space()[..2].copy_from_slice(b"ok");
            b.set_filled(2);
            assert_eq!(b.len(), 2);
            assert_eq!(&b.into_bytes()[..], b"ok");
            let mut c = ReadBuffer::take(4);
            c.set_filled(100);
            assert_eq!(c.len(), 4, "never more than was asked for");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_free_list_is_bounded_and_odd_sizes_are_not_kept() {
        std::thread::spawn(|| {
            let held: Vec<_> = (0..KEEP_PER_THREAD + 5)
                .map(|_| ReadBuffer::take(BUFFER))
                .collect();
            drop(held);
            assert_eq!(free_here(), KEEP_PER_THREAD);
            let big = ReadBuffer::take(BUFFER + 1);
            assert_eq!(big.buf.len(), BUFFER + 1);
            assert_eq!(
                free_here(),
                KEEP_PER_THREAD,
                "a large request takes no pooled buffer"
            );
            drop(big);
            assert_eq!(free_here(), KEEP_PER_THREAD);
        })
        .join()
        .unwrap();
    }
}
