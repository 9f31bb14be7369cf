//! Per-thread caches: the lock-free fast path behind `allocate_fast` and
//! `free_fast`.
//!
//! Each thread has, for each pool it uses, a heap ([`heap`]): per size
//! class a ring of slabs it owns ([`slab_ring`]), one of them current.
//! Allocation pops the current slab's local free list; a free by the owning
//! thread pushes onto it. Neither touches a lock, an atomic read-modify-write,
//! a clock or a shared counter. Blocks freed by another thread are batched
//! per slab by the freeing thread ([`remote_batch`]) and go onto the slab's
//! thread-free list with one compare-and-swap per batch; they return to the
//! owner when the owner's lists run dry, so producer/consumer pipelines
//! reuse their memory instead of growing (as mimalloc, rpmalloc and
//! snmalloc do).
//!
//! An owner's free finds its slab through the heap's filter of owned slabs
//! ([`owned_filter`]), from thread-local memory alone; anything the filter
//! does not vouch for takes the full path through the pool's slab map,
//! which validates every pointer.
//!
//! The layers, each in its own file:
//!
//! - [`heap_table`]: a thread's heaps, one per pool, and the guard that
//!   retires them when the thread exits;
//! - [`heap`]: one heap; [`slab_ring`], [`remote_batch`] and
//!   [`owned_filter`] are its parts;
//! - [`registry`]: the pool's list of its heaps, which decides what a
//!   retiring heap may touch;
//! - [`abandoned`]: slabs left by exited threads, adopted by others or
//!   reclaimed by `compact`;
//! - this module: the pool's side ([`PoolCaches`]), a slab's making and
//!   release, and the entry points the pool calls.

mod abandoned;
mod heap;
mod heap_table;
mod owned_filter;
mod registry;
mod remote_batch;
mod slab_ring;

#[cfg(not(lle_mempool_model))]
pub(crate) use abandoned::AbandonedHold;
pub(crate) use heap_table::with_inside_global_pool;
#[cfg(not(lle_mempool_model))]
pub(crate) use registry::RegistryState;

use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::guard;
use crate::size_class::class_size;
use crate::slab::{OwnedSlab, Slab, SlabOwner, SLAB_SIZE};
use crate::stats::Counter;
use crate::sync::Arc;
#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::wipe::wipe;
use crate::PoolInner;
use abandoned::AbandonedSlabs;
use heap::ThreadHeap;
use heap_table::{arm_exit_guard, with_thread_heaps, HeapTable};
use registry::{CacheRegistry, FastCounts};
use std::ptr::NonNull;

/// The inline key of a pool whose operations take the full paths (see
/// `PoolConfig::takes_full_paths`): no heap is filed under it.
const NO_INLINE_KEY: u64 = u64::MAX;

/// What a pool's inline fast paths look for at the front of a thread's
/// table (see `PoolCaches::inline_key`); the pool's handle keeps a copy, so
/// that those paths read it through the caller's pointer alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InlineKey(u64);

impl InlineKey {
    /// The key of no heap: the inline paths never pass with it.
    pub(crate) const NONE: InlineKey = InlineKey(NO_INLINE_KEY);

    /// The key as a word, to keep in an atomic.
    pub(crate) const fn to_bits(self) -> u64 {
        self.0
    }

    /// The key that [`to_bits`](Self::to_bits) made `bits`.
    pub(crate) const fn from_bits(bits: u64) -> InlineKey {
        InlineKey(bits)
    }
}

/// The pool's side of its thread caches.
pub(crate) struct PoolCaches {
    /// The key the inline fast paths look for at the front of a thread's
    /// table: the pool's id, under which its heaps are filed; for a checked
    /// pool a key no heap has, so that its operations always take the full
    /// path, which marks and checks blocks. Pool ids count up from 1 and
    /// never reach [`NO_INLINE_KEY`].
    inline_key: u64,
    registry: Arc<CacheRegistry>,
    abandoned: AbandonedSlabs,
    /// Blocks in all registered slabs: changed only when a slab is made or
    /// released. (The shared pool counts the slabs themselves.)
    slab_blocks: Counter<usize>,
    /// Cache blocks freed without a heap (see [`free_without_heap`]).
    orphan_frees: Counter<u64>,
}

impl PoolCaches {
    pub(crate) fn new(pool_id: u64, full_paths: bool) -> Self {
        debug_assert!(pool_id != 0 && pool_id != NO_INLINE_KEY);
        PoolCaches {
            inline_key: if full_paths { NO_INLINE_KEY } else { pool_id },
            registry: Arc::new(CacheRegistry::new()),
            abandoned: AbandonedSlabs::new(),
            slab_blocks: Counter::new(0),
            orphan_frees: Counter::new(0),
        }
    }

    /// The key the inline fast paths compare.
    pub(crate) fn inline_key(&self) -> InlineKey {
        InlineKey(self.inline_key)
    }

    /// The counts of every heap, live or retired; `frees` includes the
    /// frees made without a heap.
    pub(crate) fn totals(&self) -> FastCounts {
        // Read before the heaps' allocations, as the heaps' frees are (see
        // `CacheRegistry::totals`).
        let orphan_frees = self.orphan_frees.get();
        let mut totals = self.registry.totals();
        totals.frees += orphan_frees;
        totals
    }

    /// Blocks in all registered slabs, free or not.
    pub(crate) fn slab_blocks(&self) -> usize {
        self.slab_blocks.get()
    }

    /// The pool is being dropped: no heap may touch it from now on. A heap
    /// flushing into it right now holds the registry's lock, so this waits
    /// for it.
    pub(crate) fn close(&self) {
        self.registry.close();
    }

    /// Holds the registry across a `fork()`, so that no thread is making,
    /// retiring or counting heaps at the fork.
    #[cfg(not(lle_mempool_model))]
    pub(crate) fn hold_registry_for_fork(&self) -> MutexGuard<'_, RegistryState> {
        self.registry.hold_for_fork()
    }

    /// Holds the abandoned slabs across a `fork()`.
    #[cfg(not(lle_mempool_model))]
    pub(crate) fn hold_abandoned_for_fork(&self) -> AbandonedHold<'_> {
        self.abandoned.hold_for_fork()
    }
}

/// A new slab of `class` for `owner` on the calling thread: a block of the
/// shared pool, registered in the pool's map, with room reserved to abandon
/// it.
fn new_slab(pool: &PoolInner, class: usize, owner: SlabOwner) -> Result<OwnedSlab<'_>, PoolError> {
    let memory = pool.shared.allocate_slab(SLAB_SIZE, SLAB_SIZE, pool)?;
    // SAFETY: a fresh SLAB_SIZE block of the pool, aligned to SLAB_SIZE and
    // ours alone until released, which the pool outlives.
    let slab = unsafe { Slab::create(memory, class, Some(owner), pool.config.block_records()) };
    if pool.config.checked {
        guard::poison_new_slab(&slab);
    }
    // SAFETY: the header is written in the block, which fills
    // its chunk (SLAB_SIZE, aligned to it) and stays live until
    // `release_slab` unregisters it.
    if let Err(error) = unsafe { pool.shared.map.register(slab.as_ptr()) } {
        // Nothing refers to the slab yet: its memory goes straight back.
        let released = pool.shared.free_slab(memory.as_ptr() as usize);
        debug_assert!(released.is_ok(), "a fresh slab was not a live block: {released:?}");
        return Err(error);
    }
    pool.caches.slab_blocks.add_concurrent(slab.capacity());
    // Room in the abandoned list for every slab there is, reserved while
    // the caller can still be told: abandoning a slab when its thread exits
    // must not need memory. The count read here includes this slab and
    // every slab made before it, so the last slab reserved for all of them.
    if pool.caches.abandoned.reserve(pool.shared.counters.slabs.get()).is_err() {
        // SAFETY: nothing but this function knows of the slab yet.
        unsafe { release_slab(pool, slab) };
        return Err(out_of_memory(SLAB_SIZE));
    }
    Ok(slab)
}

/// Gives an empty slab back to the shared pool.
///
/// # Safety
/// The caller gives the slab up: it is in no ring, list or filter, and no
/// view of it is used afterwards.
unsafe fn release_slab(pool: &PoolInner, slab: OwnedSlab<'_>) {
    debug_assert_eq!(slab.used(), 0, "releasing a slab with live blocks");
    let release = || {
        // Before the block is freed: the shared pool may trim its memory
        // once it is free, which requires it unmarked as a slab.
        pool.shared.map.unregister(slab.as_ptr());
        pool.caches.slab_blocks.subtract_concurrent(slab.capacity());
        let address = slab.base();
        if pool.config.checked {
            // SAFETY: the caller gives the slab up, and it is unregistered.
            unsafe { guard::poison_released_slab(address) };
        }
        let released = pool.shared.free_slab(address);
        debug_assert!(released.is_ok(), "slab was not a live block: {released:?}");
    };
    if pool.config.checked {
        // A walk of a checked pool's live blocks reads the headers of the
        // slabs it finds registered: none may go while one runs.
        guard::apart_from_walks(pool, release);
    } else {
        release();
    }
}

/// Releases the abandoned slabs whose blocks have all come home, and purges
/// the free pages inside the rest.
pub(crate) fn reclaim_abandoned(pool: &PoolInner) {
    // SAFETY: `reclaim` hands over slabs it has taken off its list, which
    // nothing else refers to.
    pool.caches.abandoned.reclaim(|slab| unsafe { release_slab(pool, slab) });
}

/// Takes a block of `class` from this thread's heap for `pool` if that is
/// the thread's most recently used heap and its current slab has one ready
/// (not in a parked page). `None` sends the caller to the full path, which
/// also handles the sampled timing, checked mode and parked pages, so that
/// this one stays a handful of instructions.
#[inline]
pub(crate) fn try_allocate_cached(key: InlineKey, class: usize) -> Option<NonNull<u8>> {
    with_thread_heaps(|heaps| {
        // A checked or wiping pool's inline key is no heap's: its heap never
        // passes.
        let heap = heaps.front(key.0)?;
        // SAFETY: the front entry is this thread's live heap for `pool`.
        let heap = unsafe { &*heap };
        debug_assert!(!heap.checked);
        // The timed allocations take the full path.
        let number = heap.counters.allocations.next_untimed()?;
        // SAFETY: callers pass `class_of` of a size the fast path serves,
        // which is below CLASS_COUNT.
        let block = unsafe { heap.current_slab(class) }?.pop_ready()?;
        heap.counters.allocations.count_untimed(number);
        Some(block)
    })
    .flatten()
}

/// What [`try_free_cached`] did.
#[must_use]
pub(crate) enum InlineFree {
    /// The block is free.
    Freed,
    /// The block is free, and its slab, which is not its heap's current
    /// one, is empty: the caller finishes with [`EmptiedSlab::retire`].
    /// The call is left to the caller so that it is the last thing the
    /// caller does, and the inline path keeps no register across it.
    SlabEmptied(EmptiedSlab),
    /// Nothing was done: the caller takes the full path.
    NotInline,
}

impl InlineFree {
    /// Finishes what the inline free left, for a caller with nothing to do
    /// after it: retires an emptied slab; returns whether the block was
    /// freed (`false`: take the full path). The C API does the same in its
    /// own way, the retirement under its unwinding guard.
    #[inline(always)]
    pub(crate) fn finish(self) -> bool {
        match self {
            InlineFree::Freed => true,
            InlineFree::SlabEmptied(slab) => {
                slab.retire();
                true
            }
            InlineFree::NotInline => false,
        }
    }
}

/// A slab of this thread's heap that an inline free emptied.
pub(crate) struct EmptiedSlab {
    heap: *const ThreadHeap,
    slab: *const Slab,
}

impl EmptiedSlab {
    /// Keeps the slab as its class's spare, or releases it.
    #[cold]
    #[inline(never)]
    pub(crate) fn retire(self) {
        // SAFETY: made by `try_free_owned` on this thread (the type is
        // neither `Send` nor `Sync`), for a slab the heap owns: the heap is
        // alive while the thread runs and the pool lives, and nothing of
        // this thread has used it since.
        unsafe { (*self.heap).retire_empty(OwnedSlab::new(self.slab)) };
    }
}

/// Frees `block` if it is a block of a slab in this thread's most recently
/// used heap, found in that heap's owned-slab filter, and nothing special
/// applies. Null is no slab's (no address of chunk 0 finds the filter's
/// empty marker), so a caller that accepts null, as C's free functions do,
/// tests for it only on the full path.
///
/// # Safety
/// If `block` starts a block of a slab of `pool`, it is a live block the
/// caller gives up.
#[inline]
pub(crate) unsafe fn try_free_cached(key: InlineKey, block: *mut u8) -> InlineFree {
    // SAFETY: as the caller guarantees.
    with_thread_heaps(|heaps| unsafe { try_free_owned(heaps, key, block) }).unwrap_or(InlineFree::NotInline)
}

/// `try_free_cached`, with the thread's table.
///
/// # Safety
/// As [`try_free_cached`].
#[inline]
unsafe fn try_free_owned(heaps: &HeapTable<ThreadHeap>, key: InlineKey, block: *mut u8) -> InlineFree {
    // A checked or wiping pool's inline key is no heap's (see
    // `try_allocate_cached`).
    let Some(heap_pointer) = heaps.front(key.0) else { return InlineFree::NotInline };
    // SAFETY: the front entry is this thread's live heap for `pool`.
    let heap = unsafe { &*heap_pointer };
    let address = block as usize;
    let Some(slab_address) = heap.owned.slab_of(address) else { return InlineFree::NotInline };
    debug_assert!(!block.is_null());
    // SAFETY: filter entries are slabs in this heap's rings, owned by this
    // thread and mapped while the pool lives.
    let slab = unsafe { OwnedSlab::new(slab_address as *const Slab) };
    debug_assert!(slab.owned_by_current_thread().is_some() && !slab.is_checked());
    if !slab.is_block_start(address) {
        return InlineFree::NotInline;
    }
    // The timed frees take the full path.
    let Some(number) = heap.counters.frees.next_untimed() else { return InlineFree::NotInline };
    heap.counters.frees.count_untimed(number);
    // SAFETY: `block` starts a block of `slab`, which the caller gives up;
    // it lies in the slab, so it is not null.
    if unsafe { ThreadHeap::push_freed(slab, NonNull::new_unchecked(block)) } {
        InlineFree::SlabEmptied(EmptiedSlab { heap: heap_pointer, slab: slab.as_ptr() })
    } else {
        InlineFree::Freed
    }
}

/// Frees a cache block of `slab`, on any thread: onto the owner's list when
/// this thread owns the slab (no table lookup, no atomic read-modify-write),
/// else into this thread's batch for the slab, or, with no heap, onto the
/// slab's thread-free list. With `zero_on_free` the block is zeroed first,
/// once it is known to be one the caller may give up: every way a cache
/// block is freed passes here, and the lists it joins reuse only its first
/// word.
///
/// # Safety
/// If `block` starts a block of `slab`, it is a handed-out block the caller
/// gives up (with `checked`, a block that is free already is refused).
#[inline]
pub(crate) unsafe fn free_to_slab(pool: &PoolInner, slab: &Slab, block: NonNull<u8>) -> Result<(), PoolError> {
    let index = slab.block_index(block.as_ptr() as usize)?;
    if slab.is_checked() {
        if !slab.mark_freed(index) {
            return Err(PoolError::NotAllocated { addr: block.as_ptr() as usize });
        }
        // SAFETY: a handed-out block the caller gives up, and marking it
        // freed made this its only free.
        unsafe { guard::release_cache_block(pool, slab, index, block) }?;
    }
    // A checked pool's free filled the block with poison already, which
    // overwrote the data as well; zeros would read as a write after free.
    if pool.config.zero_on_free && !slab.is_checked() {
        // SAFETY: a block of the slab, of its class's size and aligned to at
        // least a word, which the caller gives up.
        unsafe { wipe(block, class_size(slab.class())) };
    }
    if let Some(owned) = slab.owned_by_current_thread() {
        // SAFETY: a slab owned by this thread has an owner, this thread's
        // heap that made or adopted it.
        let heap = unsafe { ThreadHeap::owning(owned) };
        // SAFETY: a handed-out block of the slab, given up.
        unsafe { heap.free_local(owned, block) };
        return Ok(());
    }
    // SAFETY: as above.
    if with_heap(pool, |heap| unsafe { heap.free_remote(slab, block) }).is_none() {
        // SAFETY: as above.
        unsafe { free_without_heap(pool, slab, block) };
    }
    Ok(())
}

/// Frees a cache block of `slab` straight onto the slab's thread-free
/// list, with no heap: for a thread whose table is gone or full (see
/// [`with_heap`]), or that is inside a pool operation which may be using
/// its heap. The free is counted with the pool, not with a heap.
///
/// # Safety
/// `block` is a handed-out block of `slab`, which the caller gives up.
pub(crate) unsafe fn free_without_heap(pool: &PoolInner, slab: &Slab, block: NonNull<u8>) {
    // SAFETY: as the caller guarantees.
    unsafe { slab.push_remote(block) };
    // Release: see `SampledTimer`, which counts the other frees.
    pool.caches.orphan_frees.add_concurrent_release(1);
}

/// Runs `use_heap` with this thread's heap for `pool`, creating it on first
/// use. `None` once the thread's table is gone (during thread exit) or full
/// of live pools' heaps; callers then fall back to paths that need no heap.
#[inline]
pub(crate) fn with_heap<R>(pool: &PoolInner, use_heap: impl FnOnce(&ThreadHeap) -> R) -> Option<R> {
    with_thread_heaps(|heaps| {
        let heap = heaps.get_or_insert(pool.id, arm_exit_guard, || ThreadHeap::new(pool))?;
        // SAFETY: the heap belongs to this thread's table, and the table
        // only retires heaps of dropped pools (or all, at thread exit),
        // while `pool` is alive for the whole call.
        Some(use_heap(unsafe { &*heap }))
    })
    .flatten()
}

/// Hands over the blocks this thread freed into other threads' slabs of
/// `pool` and still holds in its batch; creates no heap.
pub(crate) fn hand_over_remote_frees(pool: &PoolInner) {
    with_thread_heaps(|heaps| {
        if let Some(heap) = heaps.get(pool.id) {
            // SAFETY: heaps in the table are alive, and `pool` is alive for
            // the whole call.
            unsafe { &*heap }.hand_over_remote_batch();
        }
    });
}

/// Gives back to the OS the pages inside this thread's cache slabs of
/// `pool` that hold only free blocks, and returns how many; creates no heap.
pub(crate) fn purge_own_slabs(pool: &PoolInner) -> usize {
    with_thread_heaps(|heaps| {
        // SAFETY: heaps in the table are alive, and `pool` is alive for the
        // whole call.
        heaps.get(pool.id).map_or(0, |heap| unsafe { &*heap }.compact())
    })
    .unwrap_or(0)
}

/// In a forked child, whose only thread is the one that forked: retires
/// the heaps that the parent's other threads had for `pool`, as each thread
/// would at exit. Their batches go to their slabs, their empty slabs back
/// to the pool, the rest is abandoned for adoption and `compact`. A thread
/// caught by the fork in the middle of a cache operation leaks the block
/// it was moving, or leaves the slabs of the class it was relinking
/// unreclaimed (see [`ThreadHeap::retire_vanished`]); it never makes a
/// block reachable twice.
#[cfg(not(lle_mempool_model))]
pub(crate) fn retire_heaps_of_vanished_threads(pool: &PoolInner) {
    let own = with_thread_heaps(HeapTable::heaps).unwrap_or([std::ptr::null_mut(); heap_table::HEAPS_PER_THREAD]);
    for heap in pool.caches.registry.heaps_except(&own) {
        // SAFETY: a listed heap of a thread that does not exist in the
        // child: in no table that will ever be used, and retired once, here.
        unsafe { ThreadHeap::retire_vanished(heap) };
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::size_class::class_of;
    use crate::{MemoryPool, PoolConfig};

    #[test]
    fn checked_and_wiping_pools_never_take_the_inline_paths() {
        let plain = MemoryPool::new(1 << 20).unwrap();
        let checked = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true)).unwrap();
        let wiping = MemoryPool::with_config(PoolConfig::new(1 << 20).zero_on_free(true)).unwrap();
        for pool in [&plain, &checked, &wiping] {
            // The first allocation makes the heap and is timed: full path.
            let first = pool.allocate_fast(64).unwrap();
            let inline = try_allocate_cached(pool.inline_key, class_of(64));
            assert_eq!(inline.is_some(), std::ptr::eq(pool, &plain), "only the plain pool's heap answers inline");
            // SAFETY: live blocks, freed once.
            unsafe {
                // The first free is timed: full path.
                pool.free_fast(first).unwrap();
                if let Some(block) = inline {
                    assert!(
                        matches!(try_free_cached(pool.inline_key, block.as_ptr()), InlineFree::Freed),
                        "the owner frees its own block inline"
                    );
                }
            }
        }
        for pool in [&checked, &wiping] {
            let block = pool.allocate_fast(64).unwrap();
            // SAFETY: a live block, which the inline path refuses untouched.
            assert!(matches!(unsafe { try_free_cached(pool.inline_key, block.as_ptr()) }, InlineFree::NotInline));
            // SAFETY: a live block, freed once.
            unsafe { pool.free_fast(block).unwrap() };
        }
        let block = checked.allocate_fast(64).unwrap();
        // SAFETY: a live block, freed once; then a double free, which
        // checked mode refuses.
        unsafe {
            checked.free_fast(block).unwrap();
            assert!(matches!(checked.free_fast(block), Err(PoolError::NotAllocated { .. })));
        }
    }

    #[test]
    fn frees_without_a_heap_count_with_the_pool_and_reach_the_slab() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let block = pool.allocate_fast(128).unwrap();
        let slab = Slab::header_address(block.as_ptr() as usize) as *const Slab;
        // SAFETY: a live block of the slab, given up; the slab is mapped.
        unsafe { free_without_heap(&pool.inner, &*slab, block) };
        let totals = pool.inner.caches.totals();
        assert_eq!((totals.allocations, totals.frees, totals.remote_frees), (1, 1, 0));
        assert_eq!(pool.stats().live_allocations, 0);
        // The block waits on the thread-free list until the owner collects.
        // SAFETY: as above.
        let owned = unsafe { &*slab }.owned_by_current_thread().expect("this thread's slab");
        assert_eq!(owned.used(), 1);
        assert!(owned.collect_remote());
        assert_eq!((owned.used(), owned.pop()), (0, Some(block)));
    }

    #[test]
    fn compact_reclaims_abandoned_slabs_once_their_blocks_are_home() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let block = std::thread::scope(|scope| {
            scope.spawn(|| pool.allocate_fast(256).unwrap().as_ptr() as usize).join().unwrap()
        });
        assert_eq!(pool.stats().fast.slabs, 1, "abandoned by the exited thread");
        reclaim_abandoned(&pool.inner);
        assert_eq!(pool.stats().fast.slabs, 1, "a block is still out");
        // SAFETY: the live block the thread allocated, freed once.
        unsafe { pool.free_fast(NonNull::new(block as *mut u8).unwrap()).unwrap() };
        reclaim_abandoned(&pool.inner);
        assert_eq!(pool.stats().fast.slabs, 1, "the free waits in this thread's batch");
        hand_over_remote_frees(&pool.inner);
        reclaim_abandoned(&pool.inner);
        assert_eq!(pool.stats().fast.slabs, 0);
        assert_eq!(pool.inner.caches.slab_blocks(), 0);
        pool.check().unwrap();
    }
}
