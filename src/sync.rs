//! The one place that decides where concurrency primitives come from.
//!
//! Every atomic, lock, cell, thread-local and spin hint in the crate is
//! imported from here, never from `std` directly. Under `--cfg
//! lle_mempool_loom` they are loom's, so the loom models in `loom/` explore
//! every interleaving of the real code; under `--cfg lle_mempool_shuttle`
//! they are shuttle's, for randomized schedules over many threads; otherwise they are
//! `std`'s, at no cost. This is the shape of sharded-slab's `sync.rs` and
//! crossbeam-epoch's `primitive` module: this file only chooses and
//! re-exports. The one helper kept beside it, [`lock`], is how every mutex
//! is taken (poisoning ignored; under ThreadSanitizer, annotated).
//!
//! `compiler_fence` is a signal fence: it costs no instruction and only
//! stops the compiler from moving the thread's own memory accesses across
//! it. The crate uses it where a forked child reads the state of a thread
//! stopped at an arbitrary instruction (see `fork`), which sees the
//! thread's stores in program order only if the compiler kept them so.

#[cfg(lle_mempool_loom)]
mod imp {
    pub(crate) use loom::hint::spin_loop;
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    // loom has no signal fence. std's only keeps this thread's own accesses
    // in program order, which orders nothing between model threads: the
    // models never need it to (see the module docs).
    pub(crate) use loom::thread::yield_now;
    pub(crate) use loom::thread_local;
    pub(crate) use std::sync::atomic::compiler_fence;
}

#[cfg(all(lle_mempool_shuttle, not(lle_mempool_loom)))]
mod imp {
    pub(crate) use shuttle::hint::spin_loop;
    pub(crate) use shuttle::sync::atomic::{
        compiler_fence, fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub(crate) use shuttle::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use shuttle::thread::yield_now;
    pub(crate) use shuttle::thread_local;
}

#[cfg(not(lle_mempool_model))]
mod imp {
    pub(crate) use std::hint::spin_loop;
    pub(crate) use std::sync::atomic::{
        compiler_fence, fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    #[cfg(not(lle_mempool_tsan))]
    pub(crate) use std::sync::MutexGuard;
    pub(crate) use std::sync::{Arc, Mutex};
    pub(crate) use std::thread::yield_now;

    #[cfg(lle_mempool_tsan)]
    pub(crate) use super::mutex::tsan::MutexGuard;
}

mod mutex;
pub(crate) mod zeroed_local;

pub(crate) use imp::*;
pub(crate) use mutex::lock;
pub(crate) use zeroed_local::{zeroed_thread_local, Zeroable};

/// Declares a thread-local whose initial value is a constant expression.
///
/// With `std` this is `thread_local!` with a `const` initialiser, which
/// compiles to a plain TLS access with no lazy-initialisation check: the fast
/// path touches thread-locals on every call. loom's and shuttle's macros have
/// no `const` form, so there the value is built on first use.
macro_rules! const_thread_local {
    ($(#[$attribute:meta])* static $name:ident: $type:ty = $init:expr;) => {
        #[cfg(not(lle_mempool_model))]
        std::thread_local! { $(#[$attribute])* static $name: $type = const { $init }; }
        #[cfg(lle_mempool_model)]
        crate::sync::thread_local! { $(#[$attribute])* static $name: $type = $init; }
    };
}
pub(crate) use const_thread_local;
