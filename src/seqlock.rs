//! A sequence lock whose readers never block writers and never race.
//!
//! Writers are serialised by the pool's mutex and bracket every change with
//! [`SeqLock::write`], which takes the seqlock's [`WriterToken`] as proof
//! that the caller holds that mutex; readers run a closure over the
//! protected words and retry if a write overlapped. The words themselves
//! are atomics, read and written `Relaxed`: a plain read racing a write
//! would be undefined behaviour even if its value were thrown away (Boehm,
//! "Can seqlocks get along with programming language memory models?"). The
//! fences follow that paper's recipe, which loom checks in
//! `loom/seqlock.rs`.

use crate::sync::{fence, spin_loop, yield_now, AtomicU64, Ordering};

pub(crate) struct SeqLock {
    /// Even while no write is under way; odd during one.
    sequence: AtomicU64,
}

/// The right to write behind one seqlock, made with it and never copied:
/// [`SeqLock::write`] takes it, so a write bracket cannot be opened without
/// reaching the token. Its owner keeps it in the data of the lock that
/// serialises writers (the pool keeps it in the state its lock guards), so
/// reaching it proves that lock is held, as crossbeam-epoch's `Guard`
/// proves a thread is pinned. Nothing but where it is kept ties a token to
/// its seqlock: each pool keeps its own beside its own seqlock.
pub(crate) struct WriterToken {
    _private: (),
}

/// An open write bracket; closing it (on drop) publishes the write.
pub(crate) struct SeqWriteGuard<'a> {
    lock: &'a SeqLock,
}

impl SeqLock {
    /// A seqlock and the one token that writes behind it.
    pub(crate) fn new() -> (Self, WriterToken) {
        (SeqLock { sequence: AtomicU64::new(0) }, WriterToken { _private: () })
    }

    /// Opens a write bracket. `_writer` is this seqlock's token, which only
    /// the holder of the lock that serialises writers can reach: two open
    /// brackets would leave the sequence even mid-write. The bracket
    /// borrows the seqlock alone, not the token, so that the writer keeps
    /// changing the state that holds the token while the bracket is open;
    /// it closes before that lock is let go, since every bracket is a local
    /// of a function that holds the lock's guard.
    pub(crate) fn write(&self, _writer: &WriterToken) -> SeqWriteGuard<'_> {
        let sequence = self.sequence.load(Ordering::Relaxed);
        debug_assert!(sequence % 2 == 0, "nested seqlock write");
        self.sequence.store(sequence.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd sequence before every protected store that follows,
        // so a reader that sees any of them also sees the sequence move.
        fence(Ordering::Release);
        SeqWriteGuard { lock: self }
    }

    /// Runs `read` until it completes without a write overlapping it, and
    /// returns its result. `read` may see torn values on the attempts that
    /// are thrown away, so it must not trust them for anything but reading:
    /// no indexing that could go out of bounds, no panics.
    ///
    /// Unbounded: meant for reads short enough that a write rarely overlaps
    /// them. A long read under steady writes may never complete; it takes
    /// [`try_read`](Self::try_read) and a fallback instead.
    pub(crate) fn read<T>(&self, mut read: impl FnMut() -> T) -> T {
        loop {
            if let Some(value) = self.try_read(u32::MAX, &mut read) {
                return value;
            }
        }
    }

    /// As [`read`](Self::read), but gives up after `attempts` attempts
    /// (at least one) that a write overlapped, and returns `None`.
    pub(crate) fn try_read<T>(&self, attempts: u32, mut read: impl FnMut() -> T) -> Option<T> {
        debug_assert!(attempts > 0);
        let mut failed = 0u32;
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before % 2 == 0 {
                let value = read();
                // Orders the protected loads before the check below, so a
                // write that overlapped them has moved the sequence by then.
                fence(Ordering::Acquire);
                if self.sequence.load(Ordering::Relaxed) == before {
                    return Some(value);
                }
            }
            failed += 1;
            if failed >= attempts {
                return None;
            }
            if cfg!(lle_mempool_model) || failed > 64 {
                yield_now();
            } else {
                spin_loop();
            }
        }
    }

    /// The current sequence; even between writes. For the unit tests, which
    /// are not built under the models.
    #[cfg(all(test, not(lle_mempool_model)))]
    pub(crate) fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }
}

impl Drop for SeqWriteGuard<'_> {
    fn drop(&mut self) {
        let sequence = self.lock.sequence.load(Ordering::Relaxed);
        debug_assert!(sequence % 2 == 1, "seqlock write closed twice");
        // Release: every protected store above happens-before a reader's
        // Acquire load of this even value.
        self.lock.sequence.store(sequence.wrapping_add(1), Ordering::Release);
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn reader_sees_only_whole_writes() {
        struct Shared {
            lock: SeqLock,
            low: AtomicU64,
            high: AtomicU64,
        }
        let (lock, token) = SeqLock::new();
        let shared = Arc::new(Shared { lock, low: AtomicU64::new(0), high: AtomicU64::new(0) });
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            // The writer thread owns the token: no other thread can write.
            std::thread::spawn(move || {
                let mut value = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    value += 1;
                    let _bracket = shared.lock.write(&token);
                    shared.low.store(value, Ordering::Relaxed);
                    shared.high.store(value * 3, Ordering::Relaxed);
                }
            })
        };
        for _ in 0..20_000 {
            let (low, high) =
                shared.lock.read(|| (shared.low.load(Ordering::Relaxed), shared.high.load(Ordering::Relaxed)));
            assert_eq!(high, low * 3, "torn snapshot");
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(shared.lock.sequence() % 2, 0);
    }

    #[test]
    fn a_bounded_read_gives_up_while_a_write_is_open() {
        let (lock, token) = SeqLock::new();
        let value = AtomicU64::new(7);
        let mut attempts = 0;
        {
            let _bracket = lock.write(&token);
            let read = lock.try_read(3, || {
                attempts += 1;
                value.load(Ordering::Relaxed)
            });
            assert_eq!(read, None, "a read overlapping an open write was accepted");
        }
        assert_eq!(lock.try_read(3, || value.load(Ordering::Relaxed)), Some(7));
        // A read that sees the sequence odd does not even start.
        assert_eq!(attempts, 0);

        // A write inside every attempt: each is thrown away, and the read
        // gives up after exactly the attempts it was given.
        let mut attempts = 0;
        let read = lock.try_read(4, || {
            attempts += 1;
            drop(lock.write(&token));
            value.load(Ordering::Relaxed)
        });
        assert_eq!((read, attempts), (None, 4));
    }
}
