//! One thread's caches for one pool: per size class a ring of slabs the
//! heap owns, one of them current, and one empty slab kept back.
//!
//! Allocation pops the current slab's local list; a free by the owning
//! thread pushes onto it. Neither touches a lock, an atomic
//! read-modify-write, a clock or a shared counter. A free into another
//! thread's slab goes into the heap's [`RemoteBatch`]. When the current
//! slab runs dry, the heap collects the frees other threads handed to it,
//! then looks around the ring, then takes its spare, an abandoned slab, or
//! a new one.
//!
//! Bounds: a heap keeps at most one empty slab per class outside its rings;
//! further empty slabs go back to the shared pool at once. A retired heap
//! releases its empty slabs and abandons the rest.
//!
//! Memory inside slabs that still hold live blocks goes back to the OS page
//! by page ([`purge_slabs`]): on `compact`, and on the heap's slow path once
//! the pool's purge delay has passed since the heap last purged. The fast
//! paths never look at the clock.
//!
//! In a forked child the heaps of the threads that did not survive are
//! retired by the one that did ([`retire_vanished`]), though their threads
//! may have stopped at any instruction of an operation on them. The fast
//! paths keep a class's ring whole after every store they make (they only
//! change a slab's own lists and counts); the slow paths that relink a
//! ring or change a spare mark their class as being edited
//! ([`edit`]), and the child leaves a class so marked alone.
//!
//! [`retire_vanished`]: ThreadHeap::retire_vanished
//! [`edit`]: ThreadHeap::edit
//! [`purge_slabs`]: ThreadHeap::purge_slabs

use super::heap_table::TableEntry;
use super::owned_filter::OwnedFilter;
use super::registry::{CacheRegistry, FastCounts};
use super::remote_batch::RemoteBatch;
use super::slab_ring::SlabRing;
use super::{new_slab, release_slab};
use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::purge::HeapPurgeSchedule;
use crate::size_class::{class_size, CLASS_COUNT};
use crate::slab::{OwnedSlab, Slab, SlabOwner};
use crate::stats::{Counter, SampledTimer, FAST_TIMING_PERIOD};
use crate::sync::{compiler_fence, Arc, Ordering};
use crate::PoolInner;
use std::cell::Cell;
use std::ptr::{self, NonNull};

/// Non-current slabs looked at for a free block before taking a new slab.
const RING_SCAN_LIMIT: usize = 32;

// One bit per class in [`ThreadHeap::editing`].
const _: () = assert!(CLASS_COUNT <= u64::BITS as usize);

/// A heap's counters: written by its thread alone, read by `stats`.
#[derive(Default)]
pub(super) struct HeapCounters {
    pub(super) allocations: SampledTimer<FAST_TIMING_PERIOD>,
    pub(super) frees: SampledTimer<FAST_TIMING_PERIOD>,
    /// Of the frees, those into slabs of other threads; counted after the
    /// free, with `Release`, so that a reader that sees it sees the free.
    pub(super) remote_frees: Counter<u64>,
}

impl HeapCounters {
    pub(super) fn read(&self) -> FastCounts {
        FastCounts {
            allocations: self.allocations.operations(),
            frees: self.frees.operations(),
            remote_frees: self.remote_frees.get(),
            alloc_time: self.allocations.time(),
            free_time: self.frees.time(),
        }
    }
}

/// The slabs of one size class.
struct ClassCache {
    ring: SlabRing,
    /// One empty slab kept back, outside the ring, so that a thread freeing
    /// and allocating around a slab boundary does not churn the pool.
    spare: Cell<*mut Slab>,
}

/// One thread's caches for one pool.
pub(crate) struct ThreadHeap {
    pool: *const PoolInner,
    pub(super) checked: bool,
    registry: Arc<CacheRegistry>,
    classes: [ClassCache; CLASS_COUNT],
    pub(super) counters: HeapCounters,
    remote_batch: RemoteBatch,
    /// The slabs in this heap's rings, for the inline free.
    pub(super) owned: OwnedFilter,
    /// One bit per class whose ring or spare the heap's thread is changing
    /// (see [`edit`](Self::edit)).
    editing: Cell<u64>,
    /// When the slow path next purges the free pages inside the slabs.
    purge: Cell<HeapPurgeSchedule>,
}

impl ThreadHeap {
    /// A heap of the calling thread for `pool`, listed in the pool's
    /// registry; it ends with [`TableEntry::retire`].
    pub(super) fn new(pool: &PoolInner) -> *mut ThreadHeap {
        let heap = Box::into_raw(Box::new(ThreadHeap {
            pool: pool as *const PoolInner,
            checked: pool.config.checked,
            registry: Arc::clone(&pool.caches.registry),
            classes: std::array::from_fn(|_| ClassCache { ring: SlabRing::new(), spare: Cell::new(ptr::null_mut()) }),
            counters: HeapCounters::default(),
            remote_batch: RemoteBatch::new(),
            owned: OwnedFilter::new(),
            editing: Cell::new(0),
            purge: Cell::new(HeapPurgeSchedule::new(pool.config.purge_delay)),
        }));
        pool.caches.registry.add(heap);
        heap
    }

    #[inline]
    fn pool(&self) -> &PoolInner {
        // SAFETY: a heap is only used by its thread while that thread holds
        // a reference to the pool, or at exit under the registry lock after
        // checking that the pool lives.
        unsafe { &*self.pool }
    }

    /// The heap that owns `slab`.
    ///
    /// # Safety
    /// `slab` is owned by a heap (it is not abandoned), and the calling
    /// thread is that heap's, as [`Slab::owned_by_current_thread`] finds.
    /// Every owner of a slab is a `ThreadHeap` (see [`owner`](Self::owner)),
    /// alive while it owns the slab.
    #[inline]
    pub(super) unsafe fn owning<'a>(slab: OwnedSlab<'a>) -> &'a ThreadHeap {
        let owner = slab.owner();
        debug_assert!(owner.is_some(), "an owned slab without an owner");
        // SAFETY: as the caller guarantees.
        unsafe { &*owner.unwrap_unchecked().cast::<ThreadHeap>() }
    }

    /// This heap as its slabs' owner.
    fn owner(&self) -> SlabOwner {
        SlabOwner::of(self)
    }

    /// The current slab of class `class`, for the inline allocation.
    ///
    /// # Safety
    /// `class` is below `CLASS_COUNT`.
    #[inline(always)]
    pub(super) unsafe fn current_slab(&self, class: usize) -> Option<OwnedSlab<'_>> {
        debug_assert!(class < CLASS_COUNT);
        // SAFETY: as the caller guarantees.
        unsafe { self.classes.get_unchecked(class) }.ring.current()
    }

    /// Takes a block of class `class`.
    #[inline]
    pub(crate) fn allocate(&self, class: usize) -> Result<NonNull<u8>, PoolError> {
        let timing = self.counters.allocations.start();
        let block = match self.classes[class].ring.current().and_then(OwnedSlab::pop) {
            Some(block) => block,
            None => self.refill(class)?,
        };
        if self.checked {
            let slab = Slab::header_address(block.as_ptr() as usize) as *const Slab;
            // SAFETY: the block came from one of our slabs, which is mapped.
            let slab = unsafe { &*slab };
            slab.mark_allocated(slab.index_of(block));
        }
        self.counters.allocations.finish(timing);
        Ok(block)
    }

    /// Runs `change`, which relinks the ring of class `class` or changes
    /// its spare, with the class marked as being edited: a forked child
    /// whose copy of this thread stopped inside leaves the class alone
    /// rather than walk a ring caught half-linked. Nests (a resize listener
    /// may use the heap from inside a change).
    #[inline]
    fn edit<R>(&self, class: usize, change: impl FnOnce() -> R) -> R {
        let outer = self.editing.get();
        self.editing.set(outer | 1 << class);
        // The mark is down before the first store of the change, and stays
        // until the last is made.
        compiler_fence(Ordering::Release);
        let result = change();
        compiler_fence(Ordering::Release);
        self.editing.set(outer);
        result
    }

    /// Finds a block when the current slab has none; first purges the
    /// slabs' free pages if the purge delay has passed.
    #[cold]
    fn refill(&self, class: usize) -> Result<NonNull<u8>, PoolError> {
        let mut schedule = self.purge.get();
        if schedule.purge_now() {
            self.purge_slabs();
        }
        self.purge.set(schedule);
        self.edit(class, || self.refill_marked(class))
    }

    /// Gives back to the OS the pages inside this heap's slabs (those in
    /// its rings and its spares) that hold only free blocks; returns how
    /// many. A class caught being edited by this thread (a resize listener
    /// running inside a change) is left alone.
    pub(super) fn purge_slabs(&self) -> usize {
        let mut purged = 0;
        for (class, cache) in self.classes.iter().enumerate() {
            if self.editing.get() & 1 << class != 0 {
                continue;
            }
            // The purge relinks the slabs' free lists.
            self.edit(class, || {
                cache.ring.for_each(|slab| purged += slab.purge_free_pages());
                let spare = cache.spare.get();
                if !spare.is_null() {
                    // SAFETY: the spare is owned by this heap, on its thread.
                    purged += unsafe { OwnedSlab::new(spare) }.purge_free_pages();
                }
            });
        }
        purged
    }

    /// [`purge_slabs`](Self::purge_slabs) for `compact`, which restarts the
    /// purge delay.
    pub(super) fn compact(&self) -> usize {
        let mut schedule = self.purge.get();
        schedule.restart();
        self.purge.set(schedule);
        self.purge_slabs()
    }

    /// [`refill`](Self::refill), inside its edit of the class.
    fn refill_marked(&self, class: usize) -> Result<NonNull<u8>, PoolError> {
        self.hand_over_remote_batch();
        let cache = &self.classes[class];
        if let Some(current) = cache.ring.current() {
            if current.collect_remote() {
                if let Some(block) = current.pop() {
                    return Ok(block);
                }
            }
            let found = cache.ring.find_after_current(RING_SCAN_LIMIT, |candidate| {
                if !candidate.has_free_block() {
                    return None;
                }
                candidate.collect_remote();
                candidate.pop().map(|block| (candidate, block))
            });
            if let Some((candidate, block)) = found {
                cache.ring.make_current(candidate);
                return Ok(block);
            }
        }
        let slab = self.take_slab(class)?;
        self.ring_insert(class, slab);
        cache.ring.make_current(slab);
        slab.pop().ok_or_else(|| out_of_memory(class_size(class)))
    }

    /// A slab of `class` with a free block, in no ring: the spare, an
    /// abandoned one, or a new one.
    fn take_slab(&self, class: usize) -> Result<OwnedSlab<'_>, PoolError> {
        let spare = self.classes[class].spare.replace(ptr::null_mut());
        if !spare.is_null() {
            // SAFETY: the spare is owned by this heap, whose thread is the
            // caller, and stays mapped while the pool lives.
            return Ok(unsafe { OwnedSlab::new(spare) });
        }
        let pool = self.pool();
        if let Some(adopted) = pool.caches.abandoned.adopt(class, self.owner()) {
            return Ok(adopted);
        }
        new_slab(pool, class, self.owner())
    }

    fn ring_insert(&self, class: usize, slab: OwnedSlab<'_>) {
        self.owned.insert(slab.as_ptr() as usize);
        self.classes[class].ring.insert(slab);
    }

    /// Frees a block of `slab`, which this heap owns.
    ///
    /// # Safety
    /// `block` is a handed-out block of `slab`, which the caller gives up.
    #[inline]
    pub(super) unsafe fn free_local(&self, slab: OwnedSlab<'_>, block: NonNull<u8>) {
        let timing = self.counters.frees.start();
        // SAFETY: as the caller guarantees.
        unsafe { self.free_local_untimed(slab, block) };
        self.counters.frees.finish(timing);
    }

    /// Frees a block of `slab` for the inline free path, which takes care
    /// of counting it; `slab` is owned by this heap.
    ///
    /// # Safety
    /// As [`free_local`](Self::free_local).
    #[inline(always)]
    pub(super) unsafe fn free_local_untimed(&self, slab: OwnedSlab<'_>, block: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        if unsafe { Self::push_freed(slab, block) } {
            self.retire_empty(slab);
        }
    }

    /// Puts `block` back on `slab`'s local list; returns whether that
    /// emptied the slab and the slab is not its heap's current one (which
    /// stays, to serve the next allocation: a thread that allocates and
    /// frees one block at a time empties it at every free). The caller
    /// then hands it to [`retire_empty`](Self::retire_empty).
    ///
    /// # Safety
    /// As [`free_local`](Self::free_local).
    #[inline(always)]
    pub(super) unsafe fn push_freed(slab: OwnedSlab<'_>, block: NonNull<u8>) -> bool {
        // SAFETY: as the caller guarantees.
        unsafe { slab.push_local(block) == 0 && !slab.is_current() }
    }

    /// Gives a block back to a slab another thread owns (or an abandoned
    /// one), counting and sampling it as this thread's free.
    ///
    /// # Safety
    /// `block` is a handed-out block of `slab`, which the caller gives up.
    pub(super) unsafe fn free_remote(&self, slab: &Slab, block: NonNull<u8>) {
        let timing = self.counters.frees.start();
        // SAFETY: as the caller guarantees.
        unsafe { self.remote_batch.add(slab, block) };
        self.counters.frees.finish(timing);
        self.counters.remote_frees.add_release(1);
    }

    /// Hands the remote batch to its slab, if there is one.
    pub(super) fn hand_over_remote_batch(&self) {
        self.remote_batch.hand_over();
    }

    /// Takes `slab`, just emptied and not current, out of its ring: kept as
    /// its class's spare, or released.
    #[cold]
    pub(super) fn retire_empty(&self, slab: OwnedSlab<'_>) {
        self.edit(slab.class(), || {
            self.owned.forget(slab.as_ptr() as usize);
            let cache = &self.classes[slab.class()];
            cache.ring.remove(slab);
            if cache.spare.get().is_null() {
                cache.spare.set(slab.as_ptr());
            } else {
                // SAFETY: out of the ring and the filter, not the spare:
                // nothing of this heap refers to it any more.
                unsafe { release_slab(self.pool(), slab) };
            }
        });
    }

    /// Gives everything back to the live pool: empty slabs are released, the
    /// rest abandoned for adoption; a class caught being edited (only in a
    /// forked child, see [`retire_vanished`](Self::retire_vanished)) keeps
    /// its slabs. Called with the registry lock held.
    fn flush(&self) {
        self.hand_over_remote_batch();
        let pool = self.pool();
        let editing = self.editing.get();
        for (class, cache) in self.classes.iter().enumerate() {
            if editing & 1 << class != 0 {
                continue;
            }
            let spare = cache.spare.replace(ptr::null_mut());
            if !spare.is_null() {
                // SAFETY: the spare is owned by this heap and nothing else
                // of it refers to the slab.
                unsafe { release_slab(pool, OwnedSlab::new(spare)) };
            }
            cache.ring.take_all(|slab| {
                self.owned.forget(slab.as_ptr() as usize);
                slab.collect_remote();
                // SAFETY (both): out of the ring and the filter: the heap
                // gives the slab up.
                if slab.used() == 0 {
                    unsafe { release_slab(pool, slab) };
                } else {
                    unsafe { pool.caches.abandoned.abandon(slab) };
                }
            });
        }
    }
}

impl TableEntry for ThreadHeap {
    fn pool_is_dropped(&self) -> bool {
        !self.registry.is_alive()
    }

    /// Ends the heap's life: flushes into its pool if the pool still lives,
    /// leaves the registry, frees the heap.
    unsafe fn retire(heap: *mut ThreadHeap) {
        // SAFETY: heaps are made by `ThreadHeap::new` with `Box::into_raw`
        // and retired exactly once: by their own thread, or, in a forked
        // child, by the thread that survived the fork for one that did not
        // (see `retire_vanished`).
        let heap = unsafe { Box::from_raw(heap) };
        let registry = Arc::clone(&heap.registry);
        registry.retire(&heap, || heap.flush());
    }
}

impl ThreadHeap {
    /// In a forked child: retires `heap`, the heap of a thread that did not
    /// survive the fork, as that thread would have at exit, wherever the
    /// fork stopped it. Its remote batch is whole after every store (see
    /// `remote_batch`), and so is every ring but those of the classes
    /// marked as being edited, which [`flush`](Self::flush) skips. A heap
    /// with such a class keeps those slabs owned and unreclaimed (still
    /// counted as the pool's slabs) and is itself leaked, so that what
    /// the slabs name as their owner stays a heap.
    ///
    /// # Safety
    /// `heap` is listed in its pool's registry, belongs to a thread that
    /// does not exist in this process, and is retired once, here.
    #[cfg(not(lle_mempool_model))]
    pub(super) unsafe fn retire_vanished(heap: *mut ThreadHeap) {
        // SAFETY: listed heaps are alive; nothing else uses this one.
        let view = unsafe { &*heap };
        // Its thread may have stopped inside `add`, with `len` short.
        view.remote_batch.hand_over_counted();
        if view.editing.get() == 0 {
            // SAFETY: as the caller guarantees.
            unsafe { Self::retire(heap) };
        } else {
            view.registry.retire(view, || view.flush());
        }
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::size_class::class_of;
    use crate::slab::{DATA_OFFSET, SLAB_SIZE};
    use crate::MemoryPool;

    /// A heap of this thread for `pool`, outside any table; retired by the
    /// caller.
    fn heap_for(pool: &MemoryPool) -> &ThreadHeap {
        // SAFETY: alive until the test retires it.
        unsafe { &*ThreadHeap::new(&pool.inner) }
    }

    fn retire(heap: &ThreadHeap) {
        // SAFETY: made by `heap_for`, in no table, unused from here on.
        unsafe { ThreadHeap::retire(ptr::from_ref(heap).cast_mut()) };
    }

    /// The slab `block` lies in.
    fn slab_of(block: NonNull<u8>) -> *const Slab {
        Slab::header_address(block.as_ptr() as usize) as *const Slab
    }

    fn fill(blocks: &[NonNull<u8>], size: usize) {
        for (index, block) in blocks.iter().enumerate() {
            // SAFETY: live blocks of `size` bytes.
            unsafe { block.as_ptr().write_bytes(index as u8, size) };
        }
    }

    fn hold(blocks: &[NonNull<u8>], size: usize) -> bool {
        blocks.iter().enumerate().all(|(index, block)| {
            // SAFETY: as in `fill`.
            unsafe { std::slice::from_raw_parts(block.as_ptr(), size) }.iter().all(|&byte| byte == index as u8)
        })
    }

    #[test]
    fn an_emptied_slab_becomes_the_spare_and_serves_the_next_refill() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let heap = heap_for(&pool);
        let class = class_of(1024);
        let capacity = (SLAB_SIZE - DATA_OFFSET) / 1024;
        let blocks: Vec<_> = (0..capacity + 1).map(|_| heap.allocate(class).unwrap()).collect();
        fill(&blocks, 1024);
        let (first, second) = (slab_of(blocks[0]), slab_of(blocks[capacity]));
        assert!(blocks[..capacity].iter().all(|&block| slab_of(block) == first), "one slab filled first");
        assert_ne!(first, second);
        assert_eq!(pool.inner.shared.counters.slabs.get(), 2);

        for &block in &blocks[..capacity] {
            // SAFETY: our slab; handed out above and given up here.
            unsafe { heap.free_local(OwnedSlab::new(first), block) };
        }
        assert_eq!(heap.classes[class].spare.get().cast_const(), first, "the emptied slab is kept back");
        assert_eq!(pool.inner.shared.counters.slabs.get(), 2);
        // SAFETY: still live.
        let kept = unsafe { std::slice::from_raw_parts(blocks[capacity].as_ptr(), 1024) };
        assert!(kept.iter().all(|&byte| byte == capacity as u8), "the other slab's block is untouched");

        // The current slab gives its freed block back first, then its
        // untouched ones; the refill after them takes the spare, not a new
        // slab.
        // SAFETY: as above.
        unsafe { heap.free_local(OwnedSlab::new(second), blocks[capacity]) };
        let again: Vec<_> = (0..capacity + 1).map(|_| heap.allocate(class).unwrap()).collect();
        assert_eq!(again[0], blocks[capacity]);
        assert!(again[..capacity].iter().all(|&block| slab_of(block) == second));
        assert_eq!(slab_of(again[capacity]), first);
        assert!(heap.classes[class].spare.get().is_null());
        assert_eq!(pool.inner.shared.counters.slabs.get(), 2);
        fill(&again, 1024);
        assert!(hold(&again, 1024), "no block handed out twice");

        for &block in &again {
            // SAFETY: as above.
            unsafe { heap.free_local(OwnedSlab::new(slab_of(block)), block) };
        }
        let counts = heap.counters.read();
        assert_eq!((counts.allocations, counts.frees), (2 * capacity as u64 + 2, 2 * capacity as u64 + 2));
        retire(heap);
        assert_eq!(pool.inner.shared.counters.slabs.get(), 0, "a retired heap releases its empty slabs");
        pool.check().unwrap();
    }

    #[test]
    fn a_retired_heap_abandons_slabs_with_blocks_out_and_another_heap_adopts_them() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let class = class_of(64);
        let first = heap_for(&pool);
        let kept = first.allocate(class).unwrap();
        // SAFETY: a live 64-byte block.
        unsafe { kept.as_ptr().write_bytes(0x5A, 64) };
        retire(first);
        assert_eq!(pool.inner.shared.counters.slabs.get(), 1, "abandoned, not released");

        let second = heap_for(&pool);
        let block = second.allocate(class).unwrap();
        assert_eq!(slab_of(block), slab_of(kept));
        assert_ne!(block, kept);
        // SAFETY: still live.
        assert!(unsafe { std::slice::from_raw_parts(kept.as_ptr(), 64) }.iter().all(|&byte| byte == 0x5A));
        // SAFETY: the slab is the second heap's now, and this is its thread.
        let owner = unsafe { ThreadHeap::owning(OwnedSlab::new(slab_of(kept))) };
        assert_eq!(ptr::from_ref(owner), ptr::from_ref(second), "adopted by the heap that needed a slab");
        retire(second);
    }

    #[test]
    fn a_vanished_heap_caught_editing_a_class_keeps_its_slabs_and_gives_back_the_rest() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let (edited, other) = (class_of(64), class_of(1024));
        let vanished = heap_for(&pool);
        let edited_blocks: Vec<_> = (0..3).map(|_| vanished.allocate(edited).unwrap()).collect();
        let other_blocks: Vec<_> = (0..3).map(|_| vanished.allocate(other).unwrap()).collect();
        fill(&edited_blocks, 64);
        fill(&other_blocks, 1024);
        // A block of another heap's slab, freed into the vanished heap's
        // batch.
        let survivor = heap_for(&pool);
        let remote = survivor.allocate(class_of(48)).unwrap();
        // SAFETY: handed out above, given up here; the slab is mapped.
        unsafe { vanished.free_remote(&*slab_of(remote), remote) };
        let counts = vanished.counters.read();

        // The vanished thread stopped inside an edit of `edited`, with the
        // current slab's forward link not yet written: walking the ring
        // would follow it.
        vanished.editing.set(1 << edited);
        let current = vanished.classes[edited].ring.current().unwrap();
        let (edited_slab, next) = (current.as_ptr(), current.next());
        current.set_next(ptr::without_provenance_mut(SLAB_SIZE));
        // SAFETY: the test's heap, in no table, not used again.
        unsafe { ThreadHeap::retire_vanished(ptr::from_ref(vanished).cast_mut()) };

        assert!(hold(&edited_blocks, 64) && hold(&other_blocks, 1024), "every live block intact");
        let totals = pool.inner.caches.totals();
        assert!(totals.allocations >= counts.allocations && totals.frees >= counts.frees, "its counts kept");
        // SAFETY: the survivor's slab, on its thread.
        let home = unsafe { OwnedSlab::new(slab_of(remote)) };
        assert!(home.collect_remote(), "the batch was handed over");
        assert_eq!(home.used(), 0);
        // The other class's slab was abandoned and is adopted; the edited
        // class's stays with the vanished heap, so a new one is made.
        assert_eq!(slab_of(survivor.allocate(other).unwrap()), slab_of(other_blocks[0]));
        let fresh = survivor.allocate(edited).unwrap();
        assert_ne!(slab_of(fresh), edited_slab.cast_const(), "the edited class's slab is left alone");
        // SAFETY: the edited slab's header, mapped while the pool lives.
        assert_eq!(unsafe { &*edited_slab }.owner(), Some(vanished.owner()), "still the vanished heap's");
        assert_eq!(pool.inner.shared.counters.slabs.get(), 4, "unreclaimed slabs stay counted");
        current.set_next(next);
        retire(survivor);
        // The child leaks the vanished heap; the test frees its memory (no
        // drop glue touches its slabs, which go with the pool).
        // SAFETY: made by `ThreadHeap::new` with `Box::into_raw`, out of the
        // registry since `retire_vanished`, and not used again.
        drop(unsafe { Box::from_raw(ptr::from_ref(vanished).cast_mut()) });
    }

    #[test]
    fn remote_frees_are_batched_until_handed_over() {
        let pool = MemoryPool::new(1 << 20).unwrap();
        let class = class_of(48);
        let owner = heap_for(&pool);
        let blocks: Vec<_> = (0..3).map(|_| owner.allocate(class).unwrap()).collect();
        let slab = slab_of(blocks[0]);
        // The freeing side: another heap of the same thread stands in for
        // another thread's heap.
        let freer = heap_for(&pool);
        for &block in &blocks {
            // SAFETY: handed out above, given up here; the slab is mapped.
            unsafe { freer.free_remote(&*slab, block) };
        }
        assert_eq!((freer.counters.read().frees, freer.counters.read().remote_frees), (3, 3));
        // SAFETY: the owner's slab, on the owner's thread.
        let view = unsafe { OwnedSlab::new(slab) };
        assert!(!view.collect_remote(), "still in the freeing heap's batch");
        freer.hand_over_remote_batch();
        assert!(view.collect_remote());
        assert_eq!(view.used(), 0);
        retire(freer);
        retire(owner);
        assert_eq!(pool.inner.shared.counters.slabs.get(), 0);
    }
}
