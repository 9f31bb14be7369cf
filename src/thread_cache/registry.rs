//! The pool's list of its thread heaps, and who may touch what when a pool
//! is dropped or a thread exits.
//!
//! A heap lives in its thread's table, and the pool keeps a list of its
//! heaps here, in a registry that both share through an `Arc`. The
//! registry's lock and `alive` flag decide who may touch what: a dropped
//! pool marks itself dead under the lock, after which an exiting thread
//! frees its heap without touching the (unmapped) slabs; an exiting thread
//! flushes into a live pool while holding the lock, so the pool cannot be
//! dropped under it. `stats` sums the heaps' counters under the lock, and
//! a retired heap's counts stay with the registry.

use super::heap::ThreadHeap;
#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::sync::{fence, lock, Mutex, Ordering};

/// Counters of the thread caches, as `stats` reports them.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastCounts {
    pub(crate) allocations: u64,
    pub(crate) frees: u64,
    pub(crate) remote_frees: u64,
    pub(crate) alloc_time: (u64, u64),
    pub(crate) free_time: (u64, u64),
}

impl FastCounts {
    pub(super) fn add(&mut self, other: &FastCounts) {
        self.allocations += other.allocations;
        self.frees += other.frees;
        self.remote_frees += other.remote_frees;
        self.alloc_time = (self.alloc_time.0 + other.alloc_time.0, self.alloc_time.1 + other.alloc_time.1);
        self.free_time = (self.free_time.0 + other.free_time.0, self.free_time.1 + other.free_time.1);
    }
}

/// The pool's side of its thread heaps.
pub(super) struct CacheRegistry {
    state: Mutex<RegistryState>,
}

pub(crate) struct RegistryState {
    alive: bool,
    heaps: Vec<*mut ThreadHeap>,
    /// Counts of heaps whose threads exited.
    retired: FastCounts,
}

// SAFETY: the heap pointers are only dereferenced under the lock, while the
// heaps are alive (a heap unlinks itself under the lock before it is freed).
unsafe impl Send for RegistryState {}

impl CacheRegistry {
    pub(super) fn new() -> Self {
        CacheRegistry {
            state: Mutex::new(RegistryState { alive: true, heaps: Vec::new(), retired: FastCounts::default() }),
        }
    }

    /// The pool is being dropped: no heap may touch it from now on.
    pub(super) fn close(&self) {
        let mut state = lock(&self.state);
        state.alive = false;
        state.heaps.clear();
    }

    /// Whether the pool still lives.
    pub(super) fn is_alive(&self) -> bool {
        lock(&self.state).alive
    }

    /// Lists `heap`, just made for a live pool.
    pub(super) fn add(&self, heap: *mut ThreadHeap) {
        lock(&self.state).heaps.push(heap);
    }

    /// Takes `heap` off the list: if the pool still lives, runs `flush`
    /// under the lock, so that the pool outlives it, and keeps the heap's
    /// counts.
    pub(super) fn retire(&self, heap: &ThreadHeap, flush: impl FnOnce()) {
        let mut state = lock(&self.state);
        if state.alive {
            flush();
            state.retired.add(&heap.counters.read());
            let heap: *const ThreadHeap = heap;
            state.heaps.retain(|&listed| listed.cast_const() != heap);
        }
    }

    /// The listed heaps other than `own`.
    #[cfg(not(lle_mempool_model))]
    pub(super) fn heaps_except(&self, own: &[*mut ThreadHeap]) -> Vec<*mut ThreadHeap> {
        lock(&self.state).heaps.iter().copied().filter(|heap| !own.contains(heap)).collect()
    }

    /// Holds the registry across a `fork()`, so that no thread is making,
    /// retiring or counting heaps at the fork.
    #[cfg(not(lle_mempool_model))]
    pub(super) fn hold_for_fork(&self) -> MutexGuard<'_, RegistryState> {
        lock(&self.state)
    }

    /// The counts of every heap, live or retired, such that a snapshot
    /// taken while threads allocate and free still has `remote_frees <=
    /// frees <= allocations`. Each count is read before the counts it
    /// must not exceed: every heap's remote frees, then every heap's
    /// frees, then every heap's allocations, with an `Acquire` fence
    /// between the passes. A heap publishes each count with `Release`
    /// after the counts it must not exceed (a free after its block's
    /// allocation, however the block travelled between threads; a remote
    /// free's count after the free's), so a count seen brings what it
    /// depends on with it.
    pub(super) fn totals(&self) -> FastCounts {
        let state = lock(&self.state);
        // SAFETY: listed heaps are alive (see the type's docs); their
        // counters are atomics.
        let heaps = || state.heaps.iter().map(|&heap| unsafe { &(*heap).counters });
        let mut totals = state.retired;
        totals.remote_frees += heaps().map(|counters| counters.remote_frees.get()).sum::<u64>();
        fence(Ordering::Acquire);
        totals.frees += heaps().map(|counters| counters.frees.operations()).sum::<u64>();
        fence(Ordering::Acquire);
        for counters in heaps() {
            // Allocations and times; the frees are in already.
            totals.add(&FastCounts { frees: 0, remote_frees: 0, ..counters.read() });
        }
        totals
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use crate::MemoryPool;
    use std::sync::Barrier;

    #[test]
    fn totals_count_live_heaps_and_keep_the_counts_of_retired_ones() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let registry = &pool.inner.caches.registry;
        let (ready, done) = (Barrier::new(2), Barrier::new(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let blocks: Vec<_> = (0..5).map(|_| pool.allocate_fast(32).unwrap()).collect();
                // SAFETY: a live block, freed once.
                unsafe { pool.free_fast(blocks[0]).unwrap() };
                ready.wait();
                done.wait();
                for block in &blocks[1..] {
                    // SAFETY: as above.
                    unsafe { pool.free_fast(*block).unwrap() };
                }
            });
            ready.wait();
            let live = registry.totals();
            assert_eq!((live.allocations, live.frees), (5, 1), "a live heap's counts");
            done.wait();
        });
        let retired = registry.totals();
        assert_eq!((retired.allocations, retired.frees), (5, 5), "kept after its thread exited");
        assert!(registry.is_alive());
    }

    #[test]
    fn a_closed_registry_lists_no_heap_and_says_the_pool_is_gone() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let block = pool.allocate_fast(16).unwrap();
        // SAFETY: a live block, freed once.
        unsafe { pool.free_fast(block).unwrap() };
        let registry = crate::sync::Arc::clone(&pool.inner.caches.registry);
        assert_eq!(registry.totals().allocations, 1);
        drop(pool);
        assert!(!registry.is_alive());
        assert_eq!(registry.totals().allocations, 0, "the dropped pool's heaps are off the list");
    }
}
