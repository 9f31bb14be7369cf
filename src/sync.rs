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
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use loom::thread::yield_now;
    pub(crate) use loom::thread_local;
}

#[cfg(all(feature = "shuttle", not(lle_mempool_loom)))]
mod imp {
    pub(crate) use shuttle::hint::spin_loop;
    pub(crate) use shuttle::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use shuttle::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use shuttle::thread::yield_now;
    pub(crate) use shuttle::thread_local;
}

#[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
mod imp {
    pub(crate) use std::hint::spin_loop;
    pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    #[cfg(not(lle_mempool_tsan))]
    pub(crate) use std::sync::MutexGuard;
    pub(crate) use std::sync::{Arc, Mutex};
    pub(crate) use std::thread::yield_now;
    pub(crate) use std::thread_local;

    #[cfg(lle_mempool_tsan)]
    pub(crate) use super::tsan::MutexGuard;
}

/// ThreadSanitizer's view of the pool's locks, under `--cfg lle_mempool_tsan`
/// (set by the ThreadSanitizer step of `.ci/run`, next to
/// `-Zsanitizer=thread`).
///
/// TSan orders two critical sections only if it sees the unlock and the
/// lock. `std`'s `Mutex` takes a contended lock inside the precompiled std,
/// which is not instrumented, so TSan misses that acquire and would report
/// every access to the pool's locked state as a race. Each guard therefore
/// tells TSan itself: an acquire on the mutex's address once locked, a
/// release on it just before unlocking. The lock is still `std`'s.
#[cfg(all(lle_mempool_tsan, not(any(lle_mempool_loom, feature = "shuttle"))))]
mod tsan {
    use std::ffi::c_void;
    use std::ops::{Deref, DerefMut};

    extern "C" {
        fn __tsan_acquire(address: *mut c_void);
        fn __tsan_release(address: *mut c_void);
    }

    /// A `std` guard that reports its lock and unlock to TSan.
    pub(crate) struct MutexGuard<'a, T> {
        guard: std::sync::MutexGuard<'a, T>,
        /// The mutex's address, the name TSan knows the lock by.
        address: usize,
    }

    impl<'a, T> MutexGuard<'a, T> {
        pub(super) fn new(mutex: &'a std::sync::Mutex<T>, guard: std::sync::MutexGuard<'a, T>) -> Self {
            let address = mutex as *const std::sync::Mutex<T> as usize;
            // SAFETY: this cfg is only set with -Zsanitizer=thread, which
            // links the TSan runtime; the call only records that this thread
            // synchronised with the last release on `address`.
            unsafe { __tsan_acquire(address as *mut c_void) };
            MutexGuard { guard, address }
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.guard
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            // SAFETY: as in `new`. The std guard, a field, unlocks after this.
            unsafe { __tsan_release(self.address as *mut c_void) };
        }
    }
}

pub(crate) use imp::*;

/// Reads a whole array of atomics that no other thread stores to while this
/// runs, as plain memory, so that the compiler can vectorise what the caller
/// does with it (the free index's writer compares sixteen entries a node at
/// once). Under the models each element is an atomic load, which they track.
///
/// # Safety
///
/// No other thread may store to `array` during the call: the caller is the
/// only writer (it holds the lock that serialises writers), and every store
/// by earlier writers happens-before the call through that lock. Lock-free
/// readers may load the array meanwhile: two reads never race.
#[inline]
pub(crate) unsafe fn read_exclusive<const N: usize>(array: &[AtomicU32; N]) -> [u32; N] {
    #[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
    {
        // SAFETY: `AtomicU32` has the size, alignment and bit validity of
        // `u32`; the caller guarantees that no store races with this read.
        unsafe { std::ptr::read(array.as_ptr().cast::<[u32; N]>()) }
    }
    #[cfg(any(lle_mempool_loom, feature = "shuttle"))]
    {
        std::array::from_fn(|slot| array[slot].load(Ordering::Relaxed))
    }
}

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

#[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
const_thread_local! {
    /// Its address names the current thread while the thread lives.
    static THREAD_TOKEN: u8 = 0;
}

/// A non-zero number that no other live thread has: the address of a
/// thread-local. Slabs record their owner's token, so a free can tell "mine"
/// from "another thread's" with one comparison and no table lookup. `0` once
/// the thread's locals are being destroyed (no live thread has it either).
#[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
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
#[cfg(any(lle_mempool_loom, feature = "shuttle"))]
imp::thread_local! {
    static THREAD_TOKEN: usize = {
        static NEXT_TOKEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

/// A non-zero number that no other live thread has (under the models: that
/// no other thread ever had). `0` once the thread's locals are being
/// destroyed.
#[cfg(any(lle_mempool_loom, feature = "shuttle"))]
pub(crate) fn current_thread_token() -> usize {
    THREAD_TOKEN.try_with(|token| *token).unwrap_or(0)
}

/// A number for the current thread that no other thread, live or dead, has
/// had; `0` once the thread's locals are being destroyed. Costs one counter
/// increment per thread, on first use.
#[cfg(not(any(lle_mempool_loom, feature = "shuttle", lle_mempool_tsan)))]
#[inline]
pub(crate) fn current_thread_serial() -> u64 {
    const_thread_local! {
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

/// Starts loading the cache line at `address` ahead of a use that is some
/// work away, so that its miss overlaps that work. A hint only: it never
/// faults, reads nothing a program can observe and may be dropped by the
/// CPU; any address is allowed.
#[inline(always)]
pub(crate) fn prefetch<T>(address: *const T) {
    #[cfg(all(target_arch = "x86_64", not(any(lle_mempool_loom, feature = "shuttle"))))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch does
        // not dereference: it neither faults nor has observable effects.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(any(lle_mempool_loom, feature = "shuttle")))))]
    let _ = address;
}

/// Locks `mutex`, ignoring poisoning.
///
/// The pool never panics while holding a lock on purpose; if a user's resize
/// listener panics, the state the lock protects is still consistent (it is
/// only ever changed between `seqlock` write brackets that cannot unwind), so
/// recovering the guard is sound and keeps the pool usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    let guard = match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    #[cfg(all(lle_mempool_tsan, not(any(lle_mempool_loom, feature = "shuttle"))))]
    let guard = tsan::MutexGuard::new(mutex, guard);
    guard
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

/// Marks memory that lock-free readers reach through the epoch-protected
/// region table (a table, a region's description and index), so that the
/// loom models can see a use after free.
///
/// loom checks accesses to its `UnsafeCell` for causality: under
/// `--cfg lle_mempool_loom` a reader records a read of the witness each time
/// it reaches the memory, and dropping the memory records a write. If the
/// epoch scheme ever let the memory go while a reader could still be looking
/// at it, the drop would not happen after that read and loom would report
/// it. Elsewhere the witness is empty and its methods compile to nothing.
#[cfg(lle_mempool_loom)]
pub(crate) struct ReclaimWitness(loom::cell::UnsafeCell<()>);

#[cfg(lle_mempool_loom)]
impl ReclaimWitness {
    pub(crate) fn new() -> Self {
        ReclaimWitness(loom::cell::UnsafeCell::new(()))
    }

    /// A lock-free reader is looking at the memory.
    pub(crate) fn reading(&self) {
        self.0.with(|_| ());
    }
}

#[cfg(lle_mempool_loom)]
impl Drop for ReclaimWitness {
    fn drop(&mut self) {
        self.0.with_mut(|_| ());
    }
}

#[cfg(not(lle_mempool_loom))]
pub(crate) struct ReclaimWitness;

#[cfg(not(lle_mempool_loom))]
impl ReclaimWitness {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        ReclaimWitness
    }

    #[inline(always)]
    pub(crate) fn reading(&self) {}
}

/// Reads the link a free block keeps in its first word: the next block on a
/// list that threads hand to one another through the pool's atomics (a
/// slab's thread-free list).
///
/// Such a link is plain memory, so a model cannot see it by itself: an
/// ordering too weak to publish it would pass. Under `--cfg lle_mempool_loom`
/// every link therefore has a loom `UnsafeCell` beside it (see
/// `block_links`), and each read and write of the link is also a read and
/// write of that cell, which loom checks for causality. shuttle checks no
/// causality, so there, as with `std`, a link is only the word in the block.
///
/// # Safety
///
/// `link` must point to the first word of a free block whose link was
/// written (with [`write_block_link`]) since its slab was created, and that
/// word must not be written during the call.
#[inline(always)]
pub(crate) unsafe fn read_block_link<T>(link: *const *mut T) -> *mut T {
    // SAFETY: the caller guarantees that the word is a written link that
    // nothing writes meanwhile.
    let value = unsafe { link.read() };
    #[cfg(lle_mempool_loom)]
    block_links::read(link as usize, value as usize);
    value
}

/// Writes the link in a free block's first word: the next block on its
/// list. Under loom also a write of the link's cell (see
/// [`read_block_link`]).
///
/// # Safety
///
/// `link` must point to the first word of a block inside a slab that the
/// caller alone holds (freed, not on any list yet, or on a list only the
/// caller reaches).
#[inline(always)]
pub(crate) unsafe fn write_block_link<T>(link: *mut *mut T, next: *mut T) {
    #[cfg(lle_mempool_loom)]
    block_links::write(link as usize, next as usize);
    // SAFETY: the caller holds the block, which is at least a word long and
    // aligned.
    unsafe { link.write(next) };
}

/// Forgets every link kept in `start..end`, the memory of a slab being
/// created: its blocks begin with no link. Nothing without loom.
#[inline(always)]
pub(crate) fn forget_block_links(start: usize, end: usize) {
    #[cfg(lle_mempool_loom)]
    block_links::forget(start, end);
    #[cfg(not(lle_mempool_loom))]
    let _ = (start, end);
}

/// The loom cells that stand beside free blocks' links, by the link's
/// address.
///
/// The table belongs to the OS thread, like the models' memory arena in
/// `os.rs`: a loom model runs all its threads on the test's own thread, so
/// they all see one table, and accessing it adds no ordering between them
/// (a loom static would order every thread after its initialisation). Its
/// cells are loom objects of the execution that made them; each execution
/// makes its slabs anew, and making a slab forgets the cells of its memory,
/// so a link never meets a cell from an earlier execution, or from a slab
/// that its memory held before (whose hand-over to the new slab the shared
/// pool orders, not the links).
#[cfg(lle_mempool_loom)]
mod block_links {
    use loom::cell::UnsafeCell;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    std::thread_local! {
        static CELLS: RefCell<BTreeMap<usize, UnsafeCell<usize>>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// A read of the link at `address`, which holds `value`.
    pub(super) fn read(address: usize, value: usize) {
        CELLS.with(|cells| {
            let cells = cells.borrow();
            let cell = cells.get(&address);
            debug_assert!(cell.is_some(), "a free block's link is read before it was written");
            if let Some(cell) = cell {
                // SAFETY: only this module reaches the cell's value, and loom
                // checks the access's causality as it starts.
                let kept = cell.with(|kept| unsafe { *kept });
                debug_assert_eq!(kept, value, "a free block's link was overwritten outside the free lists");
            }
        });
    }

    /// A write of `value` to the link at `address`.
    pub(super) fn write(address: usize, value: usize) {
        CELLS.with(|cells| {
            let mut cells = cells.borrow_mut();
            let cell = cells.entry(address).or_insert_with(|| UnsafeCell::new(0));
            // SAFETY: only this module reaches the cell's value, and loom
            // checks the access's causality as it starts.
            cell.with_mut(|kept| unsafe { *kept = value });
        });
    }

    /// Drops the cells of the links in `start..end`.
    pub(super) fn forget(start: usize, end: usize) {
        CELLS.with(|cells| {
            let mut cells = cells.borrow_mut();
            let mut from_start = cells.split_off(&start);
            let mut from_end = from_start.split_off(&end);
            cells.append(&mut from_end);
        });
    }
}
