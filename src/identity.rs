//! Names that tell threads and pools apart, for slabs' owners, the biased
//! lock's owner and the threads' cache entries.

#[cfg(not(lle_mempool_model))]
use crate::sync::zeroed_thread_local;

#[cfg(not(lle_mempool_model))]
zeroed_thread_local! {
    /// Its address names the current thread while the thread lives.
    static THREAD_TOKEN: u8;
}

/// A non-zero number that no other live thread has: the address of a
/// thread-local. Slabs record their owner's token, so a free can tell "mine"
/// from "another thread's" with one comparison and no table lookup. `0` once
/// the thread's locals are being destroyed (no live thread has it either).
#[cfg(not(lle_mempool_model))]
#[inline]
pub(crate) fn current_thread_token() -> usize {
    THREAD_TOKEN.try_with(|token| token as *const u8 as usize).unwrap_or(0)
}

// Under the models a thread-local is a separate heap value, freed on its own
// while the thread's other locals are still being destroyed, so its address
// could be handed to a new thread while the old thread's heap still flushes
// slabs that carry it (std keeps a thread's locals until the thread is gone);
// and loom destroys a thread's locals in an order that changes from one
// execution to the next. There the token is drawn from a counter instead:
// never reused, and its value never steers the code, only equality does.
#[cfg(lle_mempool_model)]
crate::sync::thread_local! {
    static THREAD_TOKEN: usize = {
        static NEXT_TOKEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

/// A non-zero number that no other live thread has (under the models: that
/// no other thread ever had). `0` once the thread's locals are being
/// destroyed.
#[cfg(lle_mempool_model)]
pub(crate) fn current_thread_token() -> usize {
    THREAD_TOKEN.try_with(|token| *token).unwrap_or(0)
}

/// A number for the current thread that no other thread, live or dead, has
/// had; `0` once the thread's locals are being destroyed. Costs one counter
/// increment per thread, on first use.
#[cfg(not(any(lle_mempool_model, lle_mempool_tsan)))]
#[inline]
pub(crate) fn current_thread_serial() -> u64 {
    crate::sync::const_thread_local! {
        static SERIAL: std::cell::Cell<u64> = std::cell::Cell::new(0);
    }
    static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SERIAL
        .try_with(|serial| {
            if serial.get() == 0 {
                serial.set(NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            }
            serial.get()
        })
        .unwrap_or(0)
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
