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

/// Declares a thread-local whose initial value is a constant expression.
///
/// With `std` this is `thread_local!` with a `const` initialiser, which
/// compiles to a plain TLS access with no lazy-initialisation check: the fast
/// path touches thread-locals on every call. loom's and shuttle's macros have
/// no `const` form, so there the value is built on first use.
macro_rules! const_thread_local {
    ($(#[$attribute:meta])* static $name:ident: $type:ty = $init:expr;) => {
        #[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
        std::thread_local! { $(#[$attribute])* static $name: $type = const { $init }; }
        #[cfg(any(lle_mempool_loom, feature = "shuttle"))]
        crate::sync::thread_local! { $(#[$attribute])* static $name: $type = $init; }
    };
}
pub(crate) use const_thread_local;

const_thread_local! {
    /// Its address names the current thread while the thread lives.
    static THREAD_TOKEN: u8 = 0;
}

/// A non-zero number that no other live thread has: the address of a
/// thread-local. Slabs record their owner's token, so a free can tell "mine"
/// from "another thread's" with one comparison and no table lookup. `0` once
/// the thread's locals are being destroyed (no live thread has it either).
#[inline]
pub(crate) fn current_thread_token() -> usize {
    THREAD_TOKEN.try_with(|token| token as *const u8 as usize).unwrap_or(0)
}

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
