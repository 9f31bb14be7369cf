//! The one place that decides where concurrency primitives come from.
//!
//! Every atomic, lock, cell, thread-local and spin hint in the crate is
//! imported from here, never from `std` directly. Under `--cfg
//! lle_mempool_loom` they are loom's, so the loom models in `loom/` explore
//! every interleaving of the real code; under the `shuttle` feature they are
//! shuttle's, for randomized schedules over many threads; otherwise they are
//! `std`'s, at no cost. This is the shape of sharded-slab's `sync.rs` and
//! crossbeam-epoch's `primitive` module.

#[cfg(lle_mempool_loom)]
mod imp {
    pub(crate) use loom::hint::spin_loop;
    pub(crate) use loom::sync::atomic::{
        fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use loom::thread::yield_now;
    pub(crate) use loom::thread_local;
}

#[cfg(all(feature = "shuttle", not(lle_mempool_loom)))]
mod imp {
    pub(crate) use shuttle::hint::spin_loop;
    pub(crate) use shuttle::sync::atomic::{
        fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use shuttle::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use shuttle::thread::yield_now;
    pub(crate) use shuttle::thread_local;
}

#[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
mod imp {
    pub(crate) use std::hint::spin_loop;
    pub(crate) use std::sync::atomic::{
        fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use std::thread::yield_now;
    pub(crate) use std::thread_local;
}

pub(crate) use imp::*;

/// Locks `mutex`, ignoring poisoning.
///
/// The pool never panics while holding a lock on purpose; if a user's resize
/// listener panics, the state the lock protects is still consistent (it is
/// only ever changed between `seqlock` write brackets that cannot unwind), so
/// recovering the guard is sound and keeps the pool usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A source of process-unique identifiers for pools.
///
/// Identifiers are never reused, so a thread's cache entry for a dropped pool
/// can never be mistaken for a new pool that happens to sit at the same
/// address. This counter only hands out names and orders nothing, so it stays
/// a `std` atomic even under the models (loom atomics cannot live in statics).
pub(crate) fn next_pool_id() -> u64 {
    static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
