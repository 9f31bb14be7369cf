//! Per-thread caches: the lock-free fast path behind `allocate_fast` and
//! `free_fast`.
//!
//! Each thread has, for each pool it uses, a [`ThreadHeap`]: per size class a
//! ring of slabs it owns, one of them current. Allocation pops the current
//! slab's local free list; a free by the owning thread pushes onto it.
//! Neither touches a lock, an atomic read-modify-write, a clock or a shared
//! counter. Blocks freed by another thread are batched per slab by the
//! freeing thread ([`RemoteBatch`]) and go onto the slab's thread-free list
//! with one compare-and-swap per batch; they return to the owner when the
//! owner's lists run dry, so producer/consumer pipelines reuse their memory
//! instead of growing (as mimalloc, rpmalloc and snmalloc do).
//!
//! An owner's free finds its slab through the heap's filter of owned slabs
//! (`ThreadHeap::owned_slabs`), from thread-local memory alone; anything the
//! filter does not vouch for takes the full path through the pool's slab
//! map, which validates every pointer.
//!
//! Bounds: a heap keeps at most one empty slab per class; further empty
//! slabs go back to the shared pool at once. An exiting thread releases its
//! empty slabs and abandons the rest to the pool, where other threads adopt
//! them and `compact` reclaims them once their blocks come home.
//!
//! Lifetimes: a heap lives in its thread's table, and the pool keeps a list
//! of its heaps in a [`CacheRegistry`] that both share through an `Arc`. The
//! registry's lock and `alive` flag decide who may touch what: a dropped pool
//! marks itself dead under the lock, after which an exiting thread frees its
//! heap without touching the (unmapped) slabs; an exiting thread flushes into
//! a live pool while holding the lock, so the pool cannot be dropped under it.

use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::size_class::{class_size, CLASS_COUNT};
use crate::slab::{link, Slab, SLAB_SIZE};
use crate::stats::{Counter, SampledTimer, FAST_TIMING_PERIOD};
#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::sync::{const_thread_local, lock, Arc, Mutex};
use crate::PoolInner;
use std::cell::Cell;
use std::ptr::{self, NonNull};

/// Non-current slabs looked at for a free block before taking a new slab.
const RING_SCAN_LIMIT: usize = 32;
/// Pools one thread keeps caches for at once; more evicts the least recent.
const HEAPS_PER_THREAD: usize = 8;
/// Blocks a thread collects for one other thread's slab before handing them
/// over with a single compare-and-swap.
const REMOTE_BATCH_LIMIT: u32 = 64;
/// Set in the table key of a checked pool's heap, so that the inline fast
/// path (which compares the key with the bare pool id) always passes such a
/// heap to the full path. Pool ids count up from 1 and never reach it.
const CHECKED_KEY_BIT: u64 = 1 << 63;
/// Entries in a heap's filter of owned slabs; a power of two.
const OWNED_FILTER_LEN: usize = 64;
/// An empty filter entry: no slab starts at an odd address.
const NO_SLAB: usize = 1;

/// Counters a heap's thread writes and `stats` reads.
#[derive(Default)]
pub(crate) struct FastCounts {
    pub(crate) allocations: u64,
    pub(crate) frees: u64,
    pub(crate) remote_frees: u64,
    pub(crate) alloc_time: (u64, u64),
    pub(crate) free_time: (u64, u64),
}

impl FastCounts {
    fn add(&mut self, other: &FastCounts) {
        self.allocations += other.allocations;
        self.frees += other.frees;
        self.remote_frees += other.remote_frees;
        self.alloc_time = (self.alloc_time.0 + other.alloc_time.0, self.alloc_time.1 + other.alloc_time.1);
        self.free_time = (self.free_time.0 + other.free_time.0, self.free_time.1 + other.free_time.1);
    }
}

/// A heap's counters: written by its thread alone, read by `stats`.
#[derive(Default)]
struct HeapCounters {
    allocations: SampledTimer<FAST_TIMING_PERIOD>,
    frees: SampledTimer<FAST_TIMING_PERIOD>,
    /// Of the frees, those into slabs of other threads.
    remote_frees: Counter<u64>,
}

impl HeapCounters {
    fn read(&self) -> FastCounts {
        FastCounts {
            allocations: self.allocations.operations(),
            frees: self.frees.operations(),
            remote_frees: self.remote_frees.get(),
            alloc_time: self.allocations.time(),
            free_time: self.frees.time(),
        }
    }
}

/// The pool's side of its thread heaps.
pub(crate) struct CacheRegistry {
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
    pub(crate) fn new() -> Self {
        CacheRegistry {
            state: Mutex::new(RegistryState { alive: true, heaps: Vec::new(), retired: FastCounts::default() }),
        }
    }

    /// The pool is being dropped: no heap may touch it from now on.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.alive = false;
        state.heaps.clear();
    }

    #[cfg(not(lle_mempool_model))]
    /// Holds the registry across a `fork()`, so that no thread is making,
    /// retiring or counting heaps at the fork.
    pub(crate) fn hold_for_fork(&self) -> MutexGuard<'_, RegistryState> {
        lock(&self.state)
    }

    /// The counts of every heap, live or retired.
    pub(crate) fn totals(&self) -> FastCounts {
        let state = lock(&self.state);
        let mut totals = FastCounts::default();
        totals.add(&state.retired);
        for &heap in &state.heaps {
            // SAFETY: listed heaps are alive (see the type's docs); their
            // counters are atomics.
            totals.add(&unsafe { &*heap }.counters.read());
        }
        totals
    }
}

struct ClassCache {
    /// The slab allocation pops from; part of the ring. Changed only by
    /// `make_current`, which keeps the slabs' `current` flags in step.
    current: Cell<*mut Slab>,
    /// One empty slab kept back, outside the ring, so that a thread freeing
    /// and allocating around a slab boundary does not churn the pool.
    spare: Cell<*mut Slab>,
}

/// Blocks this thread freed into one slab it does not own, chained through
/// their first words and not yet handed to the slab.
///
/// A consumer thread frees runs of blocks that a producer carved one after
/// another from the same slab; handing each over with its own
/// compare-and-swap on a line the owner keeps taking back would pay a
/// cache-line transfer per block. Batching pays one per run (snmalloc's
/// remote-deallocation cache does the same). The batch is bounded, handed
/// over when a block of another slab arrives, when the thread refills a
/// slab, calls `compact`, or exits; until then its blocks count as in use,
/// so their slab can be neither released nor reclaimed.
struct RemoteBatch {
    slab: Cell<*const Slab>,
    /// The block freed last: the chain runs from it to `last`.
    first: Cell<*mut u8>,
    /// The block freed first, whose link gets the slab's list.
    last: Cell<*mut u8>,
    len: Cell<u32>,
}

impl ClassCache {
    /// Makes `slab` (owned by this heap, or null) the current slab.
    fn make_current(&self, slab: *mut Slab) {
        let previous = self.current.replace(slab);
        // SAFETY: current slabs, old and new, are owned by this heap, whose
        // thread is the caller.
        unsafe {
            if !previous.is_null() {
                (*previous).set_current(false);
            }
            if !slab.is_null() {
                (*slab).set_current(true);
            }
        }
    }
}

/// One thread's caches for one pool.
pub(crate) struct ThreadHeap {
    pool: *const PoolInner,
    checked: bool,
    registry: Arc<CacheRegistry>,
    classes: [ClassCache; CLASS_COUNT],
    counters: HeapCounters,
    remote_batch: RemoteBatch,
    /// A direct-mapped set of the slabs in this heap's rings, by address:
    /// an entry equal to a pointer's slab address proves, from thread-local
    /// memory alone, that this thread owns that slab. The fast free tests
    /// it instead of the pool's slab map and the slab's owner, and falls
    /// back to them on a miss (collisions only evict).
    owned_slabs: [Cell<usize>; OWNED_FILTER_LEN],
}

/// The entry of the owned-slab filter for the slab at `slab_address`.
#[inline]
fn owned_filter_slot(slab_address: usize) -> usize {
    (slab_address >> SLAB_SIZE.trailing_zeros()) & (OWNED_FILTER_LEN - 1)
}

impl ThreadHeap {
    #[inline]
    fn pool(&self) -> &PoolInner {
        // SAFETY: a heap is only used by its thread while that thread holds
        // a reference to the pool, or at exit under the registry lock after
        // checking `alive`.
        unsafe { &*self.pool }
    }

    /// Takes a block of class `class`.
    #[inline]
    pub(crate) fn allocate(&self, class: usize) -> Result<NonNull<u8>, PoolError> {
        let timing = self.counters.allocations.start();
        let slab = self.classes[class].current.get();
        // SAFETY: current slabs are owned by this heap and mapped while the
        // pool lives.
        let block = match (!slab.is_null()).then(|| unsafe { (*slab).pop() }).flatten() {
            Some(block) => block,
            None => self.refill(class)?,
        };
        if self.checked {
            let slab = (block.as_ptr() as usize & !(SLAB_SIZE - 1)) as *const Slab;
            // SAFETY: the block came from one of our slabs, which is aligned
            // to SLAB_SIZE and mapped.
            let slab = unsafe { &*slab };
            slab.mark_allocated(slab.index_of(block));
        }
        self.counters.allocations.finish(timing);
        Ok(block)
    }

    /// Finds a block when the current slab has none.
    #[cold]
    fn refill(&self, class: usize) -> Result<NonNull<u8>, PoolError> {
        self.hand_over_remote_batch();
        let cache = &self.classes[class];
        let current = cache.current.get();
        if !current.is_null() {
            // SAFETY (whole block): ring slabs are owned by this heap.
            unsafe {
                if (*current).collect_remote() {
                    if let Some(block) = (*current).pop() {
                        return Ok(block);
                    }
                }
                let mut candidate = (*current).next.get();
                let mut scanned = 0;
                while candidate != current && scanned < RING_SCAN_LIMIT {
                    if (*candidate).has_free_block() {
                        (*candidate).collect_remote();
                        if let Some(block) = (*candidate).pop() {
                            cache.make_current(candidate);
                            return Ok(block);
                        }
                    }
                    candidate = (*candidate).next.get();
                    scanned += 1;
                }
            }
        }
        let spare = cache.spare.replace(ptr::null_mut());
        let slab = if !spare.is_null() {
            spare
        } else if let Some(adopted) = self.adopt(class) {
            adopted
        } else {
            self.new_slab(class)?
        };
        self.ring_insert(class, slab);
        cache.make_current(slab);
        // SAFETY: the slab is ours now and has a free block.
        unsafe { (*slab).pop() }.ok_or(PoolError::OutOfMemory { requested: class_size(class), errno: libc::ENOMEM })
    }

    /// Adopts an abandoned slab of `class` with a free block, if any.
    fn adopt(&self, class: usize) -> Option<*mut Slab> {
        let pool = self.pool();
        let mut abandoned = lock(&pool.abandoned);
        let mut position = 0;
        while position < abandoned.len() {
            let slab = abandoned[position];
            // SAFETY: abandoned slabs are mapped, and their owner-only state
            // belongs to the holder of this lock.
            let slab_ref = unsafe { &*slab };
            if slab_ref.class() == class {
                slab_ref.collect_remote();
                if slab_ref.has_free_block() {
                    abandoned.swap_remove(position);
                    slab_ref.set_owner(self as *const ThreadHeap as *mut ThreadHeap);
                    return Some(slab);
                }
            }
            position += 1;
        }
        None
    }

    fn new_slab(&self, class: usize) -> Result<*mut Slab, PoolError> {
        let pool = self.pool();
        let memory = pool.shared.allocate_slab(SLAB_SIZE, SLAB_SIZE)?;
        // SAFETY: a fresh SLAB_SIZE block of the pool, aligned to SLAB_SIZE
        // and ours alone.
        let slab =
            unsafe { Slab::create(memory, class, self as *const ThreadHeap as *mut ThreadHeap, pool.config.checked) };
        if let Err(error) = pool.shared.map.register(slab) {
            // Nothing refers to the slab yet: its memory goes straight back.
            let released = pool.shared.free_slab(memory.as_ptr() as usize);
            debug_assert!(released.is_ok(), "a fresh slab was not a live block: {released:?}");
            return Err(error);
        }
        // SAFETY: just created.
        pool.slab_blocks.add_concurrent(unsafe { (*slab).capacity() });
        // Room in the abandoned list for every slab there is, reserved while
        // the caller can still be told: abandoning a slab when its thread
        // exits must not need memory. The count read here includes this
        // slab and every slab made before it, so the last slab reserved for
        // all of them.
        let reserved = {
            let mut abandoned = lock(&pool.abandoned);
            let missing = pool.shared.counters.slabs.get().saturating_sub(abandoned.len());
            abandoned.try_reserve(missing)
        };
        if reserved.is_err() {
            pool.release_slab(slab);
            return Err(out_of_memory(SLAB_SIZE));
        }
        Ok(slab)
    }

    fn ring_insert(&self, class: usize, slab: *mut Slab) {
        self.owned_slabs[owned_filter_slot(slab as usize)].set(slab as usize);
        let current = self.classes[class].current.get();
        // SAFETY: both slabs are owned by this heap; ring links are owner-only.
        unsafe {
            if current.is_null() {
                (*slab).next.set(slab);
                (*slab).previous.set(slab);
            } else {
                let after = (*current).next.get();
                (*slab).previous.set(current);
                (*slab).next.set(after);
                (*after).previous.set(slab);
                (*current).next.set(slab);
            }
        }
    }

    /// Unlinks `slab`, which is not current, from its ring.
    fn ring_remove(&self, slab: &Slab) {
        debug_assert_ne!(self.classes[slab.class()].current.get() as *const Slab, slab as *const Slab);
        self.forget_owned(slab);
        let (previous, next) = (slab.previous.get(), slab.next.get());
        // SAFETY: ring neighbours are slabs owned by this heap.
        unsafe {
            (*previous).next.set(next);
            (*next).previous.set(previous);
        }
    }

    /// Drops `slab` from the owned-slab filter, where it may or may not be.
    fn forget_owned(&self, slab: &Slab) {
        let entry = &self.owned_slabs[owned_filter_slot(slab as *const Slab as usize)];
        if entry.get() == slab as *const Slab as usize {
            entry.set(NO_SLAB);
        }
    }

    /// Frees a block of a slab this heap owns.
    #[inline]
    pub(crate) fn free_local(&self, slab: &Slab, block: NonNull<u8>) {
        let timing = self.counters.frees.start();
        let used = slab.push_local(block);
        if used == 0 && !slab.is_current() {
            self.retire_empty(slab);
        }
        self.counters.frees.finish(timing);
    }

    /// Gives a block back to a slab another thread owns (or an abandoned
    /// one), counting and sampling it as this thread's free.
    pub(crate) fn free_remote(&self, slab: &Slab, block: NonNull<u8>) {
        let timing = self.counters.frees.start();
        self.batch_remote(slab, block);
        self.counters.remote_frees.add(1);
        self.counters.frees.finish(timing);
    }

    /// Adds `block`, just freed into `slab`, to the remote batch.
    #[inline]
    fn batch_remote(&self, slab: &Slab, block: NonNull<u8>) {
        let batch = &self.remote_batch;
        if !std::ptr::eq(batch.slab.get(), slab) {
            self.hand_over_remote_batch();
            batch.slab.set(slab);
            batch.last.set(block.as_ptr());
        } else {
            // SAFETY: the caller freed `block` into `slab`, so this thread
            // alone holds it; the batch's first block is live in the batch.
            unsafe { link(block, NonNull::new_unchecked(batch.first.get())) };
        }
        batch.first.set(block.as_ptr());
        let len = batch.len.get() + 1;
        batch.len.set(len);
        if len >= REMOTE_BATCH_LIMIT {
            self.hand_over_remote_batch();
        }
    }

    /// Hands the remote batch to its slab, if there is one.
    pub(crate) fn hand_over_remote_batch(&self) {
        let batch = &self.remote_batch;
        let slab = batch.slab.replace(ptr::null());
        if slab.is_null() {
            return;
        }
        debug_assert!(batch.len.get() > 0);
        batch.len.set(0);
        // SAFETY: the batch's blocks still count as used in `slab`, so the
        // slab is mapped and not reused; `first` and `last` are non-null for
        // a non-empty batch, and `batch_remote` linked `first` to `last`.
        unsafe {
            (*slab).push_remote_chain(
                NonNull::new_unchecked(batch.first.replace(ptr::null_mut())),
                NonNull::new_unchecked(batch.last.replace(ptr::null_mut())),
            )
        };
    }

    #[cold]
    fn retire_empty(&self, slab: &Slab) {
        self.ring_remove(slab);
        let cache = &self.classes[slab.class()];
        if cache.spare.get().is_null() {
            cache.spare.set(slab as *const Slab as *mut Slab);
        } else {
            self.pool().release_slab(slab as *const Slab as *mut Slab);
        }
    }

    /// Gives everything back to the live pool: empty slabs are released, the
    /// rest abandoned for adoption. Called with the registry lock held.
    fn flush(&self) {
        self.hand_over_remote_batch();
        let pool = self.pool();
        for cache in &self.classes {
            let spare = cache.spare.replace(ptr::null_mut());
            if !spare.is_null() {
                pool.release_slab(spare);
            }
            let first = cache.current.get();
            cache.make_current(ptr::null_mut());
            if first.is_null() {
                continue;
            }
            let mut slab = first;
            loop {
                // SAFETY: ring slabs are owned by this heap; `next` is read
                // before the slab is released or handed over.
                let next = unsafe { (*slab).next.get() };
                // SAFETY: as above.
                let slab_ref = unsafe { &*slab };
                self.forget_owned(slab_ref);
                slab_ref.collect_remote();
                if slab_ref.used() == 0 {
                    pool.release_slab(slab);
                } else {
                    pool.abandon_slab(slab);
                }
                if next == first {
                    break;
                }
                slab = next;
            }
        }
    }
}

/// Ends `heap`'s life: flush into its pool if the pool still lives, unlink
/// it, fold its counts into the registry, free it.
fn retire_heap(heap: *mut ThreadHeap) {
    // SAFETY: heaps are created by `ThreadHeaps::heap_for` with Box::into_raw
    // and retired exactly once: by their own thread, or, in a forked child,
    // by the thread that survived the fork for one that did not.
    let heap = unsafe { Box::from_raw(heap) };
    let registry = Arc::clone(&heap.registry);
    let mut state = lock(&registry.state);
    if state.alive {
        heap.flush();
        let counts = heap.counters.read();
        state.retired.add(&counts);
        let pointer = &*heap as *const ThreadHeap as *mut ThreadHeap;
        state.heaps.retain(|&listed| listed != pointer);
    }
    drop(state);
    drop(heap);
}

#[cfg(not(lle_mempool_model))]
/// In a forked child, whose only thread is the one that forked: retires
/// the heaps that the parent's other threads had for `pool`, as each thread
/// would at exit. Their batches go to their slabs, their empty slabs back
/// to the pool, the rest is abandoned for adoption and `compact`. A thread
/// caught by the fork in the middle of a cache operation may leave the
/// slab it was changing unreclaimed; it never makes it reachable twice.
pub(crate) fn retire_heaps_of_vanished_threads(pool: &PoolInner) {
    let own: [*mut ThreadHeap; HEAPS_PER_THREAD] = THREAD_HEAPS
        .try_with(|heaps| std::array::from_fn(|slot| heaps.heaps[slot].get()))
        .unwrap_or([ptr::null_mut(); HEAPS_PER_THREAD]);
    let vanished: Vec<*mut ThreadHeap> =
        lock(&pool.caches.state).heaps.iter().copied().filter(|heap| !own.contains(heap)).collect();
    for heap in vanished {
        retire_heap(heap);
    }
}

/// A thread's table of heaps, most recently used first, keyed by
/// [`table_key`].
///
/// The table has no drop glue, so the inline fast path reads it with a plain
/// thread-local access, without the "destroyed yet?" test that a
/// thread-local with a destructor costs on every access. Retiring the heaps
/// at thread exit is [`ExitGuard`]'s job.
struct ThreadHeaps {
    pool_ids: [Cell<u64>; HEAPS_PER_THREAD],
    heaps: [Cell<*mut ThreadHeap>; HEAPS_PER_THREAD],
}

impl ThreadHeaps {
    const fn new() -> Self {
        ThreadHeaps {
            pool_ids: [const { Cell::new(0) }; HEAPS_PER_THREAD],
            heaps: [const { Cell::new(ptr::null_mut()) }; HEAPS_PER_THREAD],
        }
    }

    #[inline]
    fn heap_for(&self, pool: &PoolInner) -> Option<*mut ThreadHeap> {
        if self.pool_ids[0].get() == table_key(pool) {
            return Some(self.heaps[0].get());
        }
        self.heap_for_slow(pool)
    }

    /// Finds or makes the heap for `pool`, and moves it to the front. With
    /// every slot taken by a live pool, returns `None`: a heap in use further
    /// up the stack (a resize listener may allocate from another pool) must
    /// never be evicted, and only a dead pool's heap is surely not in use.
    #[cold]
    fn heap_for_slow(&self, pool: &PoolInner) -> Option<*mut ThreadHeap> {
        let key = table_key(pool);
        let slot = match self.slot_of(key) {
            Some(slot) => slot,
            None => {
                // A heap is only made while the exit guard can still run, so
                // that none outlives its thread unretired.
                EXIT_GUARD.try_with(|_| ()).ok()?;
                let slot = self.free_slot()?;
                let heap = Box::into_raw(Box::new(ThreadHeap {
                    pool: pool as *const PoolInner,
                    checked: pool.config.checked,
                    registry: Arc::clone(&pool.caches),
                    classes: std::array::from_fn(|_| ClassCache {
                        current: Cell::new(ptr::null_mut()),
                        spare: Cell::new(ptr::null_mut()),
                    }),
                    counters: HeapCounters::default(),
                    remote_batch: RemoteBatch {
                        slab: Cell::new(ptr::null()),
                        first: Cell::new(ptr::null_mut()),
                        last: Cell::new(ptr::null_mut()),
                        len: Cell::new(0),
                    },
                    owned_slabs: [const { Cell::new(NO_SLAB) }; OWNED_FILTER_LEN],
                }));
                lock(&pool.caches.state).heaps.push(heap);
                self.pool_ids[slot].set(key);
                self.heaps[slot].set(heap);
                slot
            }
        };
        // Rotate the entry to the front, keeping the others' order.
        let (pool_id, heap) = (self.pool_ids[slot].get(), self.heaps[slot].get());
        for position in (1..=slot).rev() {
            self.pool_ids[position].set(self.pool_ids[position - 1].get());
            self.heaps[position].set(self.heaps[position - 1].get());
        }
        self.pool_ids[0].set(pool_id);
        self.heaps[0].set(heap);
        Some(heap)
    }

    /// The slot holding the heap keyed `key`, if any.
    fn slot_of(&self, key: u64) -> Option<usize> {
        (0..HEAPS_PER_THREAD).find(|&slot| self.pool_ids[slot].get() == key)
    }

    /// An empty slot, or one freed by retiring the heap of a dropped pool.
    fn free_slot(&self) -> Option<usize> {
        if let Some(slot) = self.slot_of(0) {
            return Some(slot);
        }
        let slot = (0..HEAPS_PER_THREAD).find(|&slot| {
            // SAFETY: heaps in the table are alive; the registry is shared.
            let registry = unsafe { &(*self.heaps[slot].get()).registry };
            !lock(&registry.state).alive
        })?;
        retire_heap(self.heaps[slot].replace(ptr::null_mut()));
        self.pool_ids[slot].set(0);
        Some(slot)
    }

    /// Retires every heap in the table (at thread exit).
    fn retire_all(&self) {
        for slot in 0..HEAPS_PER_THREAD {
            let heap = self.heaps[slot].replace(ptr::null_mut());
            self.pool_ids[slot].set(0);
            if !heap.is_null() {
                retire_heap(heap);
            }
        }
    }
}

// Under the models a thread's locals are destroyed in an order that changes
// from one execution to the next, so the table may go before the guard;
// then the table retires its heaps itself. (Retiring twice is harmless: the
// first pass empties the table.)
#[cfg(lle_mempool_model)]
impl Drop for ThreadHeaps {
    fn drop(&mut self) {
        self.retire_all();
    }
}

/// Made on a thread's first heap; its destructor retires the thread's heaps.
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Fails only under the models, where the table may already be gone
        // and has then retired its heaps itself.
        let _ = THREAD_HEAPS.try_with(ThreadHeaps::retire_all);
    }
}

/// The key of `pool`'s heap in a thread's table.
#[inline]
fn table_key(pool: &PoolInner) -> u64 {
    debug_assert!(pool.id != 0 && pool.id & CHECKED_KEY_BIT == 0);
    if pool.config.checked {
        pool.id | CHECKED_KEY_BIT
    } else {
        pool.id
    }
}

const_thread_local! {
    static THREAD_HEAPS: ThreadHeaps = ThreadHeaps::new();
}

const_thread_local! {
    static EXIT_GUARD: ExitGuard = ExitGuard;
}

/// Takes a block of `class` from this thread's heap for `pool` if that is
/// the thread's most recently used heap and its current slab has one.
/// `None` sends the caller to the full path, which also handles the sampled
/// timing and checked mode, so that this one stays a handful of instructions.
#[inline]
pub(crate) fn try_allocate_cached(pool: &PoolInner, class: usize) -> Option<NonNull<u8>> {
    THREAD_HEAPS
        .try_with(|heaps| {
            // A checked pool's key carries CHECKED_KEY_BIT, so its heap never
            // passes here: checked mode takes the full path.
            if heaps.pool_ids[0].get() != pool.id {
                return None;
            }
            // SAFETY: the front entry is this thread's live heap for `pool`.
            let heap = unsafe { &*heaps.heaps[0].get() };
            debug_assert!(!heap.checked);
            // The timed allocations take the full path.
            let number = heap.counters.allocations.next_untimed()?;
            debug_assert!(class < CLASS_COUNT);
            // SAFETY: callers pass `class_of` of a size the fast path serves,
            // which is below CLASS_COUNT.
            let slab = unsafe { heap.classes.get_unchecked(class) }.current.get();
            if slab.is_null() {
                return None;
            }
            // SAFETY: current slabs are owned by this heap and mapped.
            let block = unsafe { (*slab).pop() }?;
            heap.counters.allocations.count_untimed(number);
            Some(block)
        })
        .ok()
        .flatten()
}

/// Frees `block` if it is a valid block of a slab in this thread's most
/// recently used heap, found in that heap's owned-slab filter, and nothing
/// special applies; `false` sends the caller to the full path.
#[inline]
pub(crate) fn try_free_cached(pool: &PoolInner, block: NonNull<u8>) -> bool {
    THREAD_HEAPS.try_with(|heaps| try_free_owned(heaps, pool, block)).unwrap_or(false)
}

#[inline]
fn try_free_owned(heaps: &ThreadHeaps, pool: &PoolInner, block: NonNull<u8>) -> bool {
    // Checked pools' keys never match a bare id (see `try_allocate_cached`).
    if heaps.pool_ids[0].get() != pool.id {
        return false;
    }
    // SAFETY: the front entry is this thread's live heap for `pool`.
    let heap = unsafe { &*heaps.heaps[0].get() };
    let address = block.as_ptr() as usize;
    let slab_address = address & !(SLAB_SIZE - 1);
    if heap.owned_slabs[owned_filter_slot(slab_address)].get() != slab_address {
        return false;
    }
    // SAFETY: filter entries are slabs in this heap's rings, owned by this
    // thread and mapped while the pool lives.
    let slab = unsafe { &*(slab_address as *const Slab) };
    debug_assert!(slab.is_owned_by_current_thread() && !slab.is_checked());
    if !slab.is_block_start(address) {
        return false;
    }
    // The timed frees take the full path.
    let Some(number) = heap.counters.frees.next_untimed() else { return false };
    if slab.push_local(block) == 0 && !slab.is_current() {
        heap.retire_empty(slab);
    }
    heap.counters.frees.count_untimed(number);
    true
}

/// Frees a cache block of `slab`, on any thread: onto the owner's list when
/// this thread owns the slab (no table lookup, no atomic read-modify-write),
/// else onto the slab's thread-free list.
#[inline]
pub(crate) fn free_to_slab(pool: &PoolInner, slab: &Slab, block: NonNull<u8>) -> Result<(), PoolError> {
    let index = slab.block_index(block.as_ptr() as usize)?;
    if slab.is_checked() && !slab.mark_freed(index) {
        return Err(PoolError::DoubleFree { addr: block.as_ptr() as usize });
    }
    if slab.is_owned_by_current_thread() {
        // SAFETY: the owner's heap lives as long as its thread owns the slab,
        // and this is that thread.
        unsafe { &*slab.owner() }.free_local(slab, block);
        return Ok(());
    }
    if with_heap(pool, |heap| heap.free_remote(slab, block)).is_none() {
        free_without_heap(pool, slab, block);
    }
    Ok(())
}

/// Frees a valid cache block of `slab` straight onto the slab's
/// thread-free list, with no heap: for a thread whose table is gone or full
/// (see [`with_heap`]), or that is inside a pool operation which may be
/// using its heap. The free is counted with the pool, not with a heap.
pub(crate) fn free_without_heap(pool: &PoolInner, slab: &Slab, block: NonNull<u8>) {
    slab.push_remote(block);
    pool.orphan_frees.add_concurrent(1);
}

/// Runs `use_heap` with this thread's heap for `pool`, creating it on first
/// use. `None` once the thread's table is gone (during thread exit) or full
/// of live pools' heaps; callers then fall back to paths that need no heap.
#[inline]
pub(crate) fn with_heap<R>(pool: &PoolInner, use_heap: impl FnOnce(&ThreadHeap) -> R) -> Option<R> {
    THREAD_HEAPS
        .try_with(|heaps| {
            let heap = heaps.heap_for(pool)?;
            // SAFETY: the heap belongs to this thread's table, and the table
            // only retires heaps of dropped pools (or all, at thread exit),
            // while `pool` is alive for the whole call.
            Some(use_heap(unsafe { &*heap }))
        })
        .ok()
        .flatten()
}

/// Hands over the blocks this thread freed into other threads' slabs of
/// `pool` and still holds in its batch; creates no heap.
pub(crate) fn hand_over_remote_frees(pool: &PoolInner) {
    let key = table_key(pool);
    let _ = THREAD_HEAPS.try_with(|heaps| {
        if let Some(slot) = heaps.slot_of(key) {
            // SAFETY: heaps in the table are alive, and `pool` is alive for
            // the whole call.
            unsafe { &*heaps.heaps[slot].get() }.hand_over_remote_batch();
        }
    });
}
