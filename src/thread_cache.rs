//! Per-thread caches: the lock-free fast path behind `allocate_fast` and
//! `free_fast`.
//!
//! Each thread has, for each pool it uses, a [`ThreadHeap`]: per size class a
//! ring of slabs it owns, one of them current. Allocation pops the current
//! slab's local free list; a free by the owning thread pushes onto it.
//! Neither touches a lock, an atomic read-modify-write, a clock or a shared
//! counter. A block freed by another thread goes onto its slab's
//! thread-free list with one compare-and-swap and returns to the owner when
//! the owner's lists run dry, so producer/consumer pipelines reuse their
//! memory instead of growing (mimalloc, rpmalloc; DESIGN-NOTES §1).
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
use crate::size_class::{class_size, CLASS_COUNT};
use crate::slab::{Slab, SLAB_SIZE};
use crate::stats::{bump, TimeSamples};
use crate::sync::{const_thread_local, lock, Arc, AtomicU64, Mutex, Ordering};
use crate::PoolInner;
use std::cell::Cell;
use std::ptr::{self, NonNull};
use std::time::Instant;

/// Non-current slabs looked at for a free block before taking a new slab.
const RING_SCAN_LIMIT: usize = 32;
/// Pools one thread keeps caches for at once; more evicts the least recent.
const HEAPS_PER_THREAD: usize = 8;
/// One fast operation in this many is timed (per thread).
const FAST_TIMING_PERIOD: u64 = 1024;

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

struct HeapCounters {
    allocations: AtomicU64,
    frees: AtomicU64,
    remote_frees: AtomicU64,
    alloc_time: TimeSamples,
    free_time: TimeSamples,
}

impl HeapCounters {
    fn read(&self) -> FastCounts {
        FastCounts {
            allocations: self.allocations.load(Ordering::Relaxed),
            frees: self.frees.load(Ordering::Relaxed),
            remote_frees: self.remote_frees.load(Ordering::Relaxed),
            alloc_time: self.alloc_time.read(),
            free_time: self.free_time.read(),
        }
    }
}

/// The pool's side of its thread heaps.
pub(crate) struct CacheRegistry {
    state: Mutex<RegistryState>,
}

struct RegistryState {
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
    /// The slab allocation pops from; part of the ring.
    current: Cell<*mut Slab>,
    /// One empty slab kept back, outside the ring, so that a thread freeing
    /// and allocating around a slab boundary does not churn the pool.
    spare: Cell<*mut Slab>,
}

/// One thread's caches for one pool.
pub(crate) struct ThreadHeap {
    pool: *const PoolInner,
    checked: bool,
    registry: Arc<CacheRegistry>,
    classes: [ClassCache; CLASS_COUNT],
    counters: HeapCounters,
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
        let allocations = self.counters.allocations.load(Ordering::Relaxed);
        let started = (allocations % FAST_TIMING_PERIOD == 0).then(Instant::now);
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
        self.counters.allocations.store(allocations + 1, Ordering::Relaxed);
        if let Some(started) = started {
            self.counters.alloc_time.record(started.elapsed());
        }
        Ok(block)
    }

    /// Finds a block when the current slab has none.
    #[cold]
    fn refill(&self, class: usize) -> Result<NonNull<u8>, PoolError> {
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
                            cache.current.set(candidate);
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
        cache.current.set(slab);
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
        let memory = pool.shared.allocate(SLAB_SIZE, SLAB_SIZE)?;
        // SAFETY: a fresh SLAB_SIZE block of the pool, aligned to SLAB_SIZE
        // and ours alone.
        let slab =
            unsafe { Slab::create(memory, class, self as *const ThreadHeap as *mut ThreadHeap, pool.config.checked) };
        pool.slabs.register(slab);
        // SAFETY: just created.
        pool.slab_blocks.fetch_add(unsafe { (*slab).capacity() }, Ordering::Relaxed);
        pool.slab_count.fetch_add(1, Ordering::Relaxed);
        Ok(slab)
    }

    fn ring_insert(&self, class: usize, slab: *mut Slab) {
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
        let (previous, next) = (slab.previous.get(), slab.next.get());
        // SAFETY: ring neighbours are slabs owned by this heap.
        unsafe {
            (*previous).next.set(next);
            (*next).previous.set(previous);
        }
    }

    /// Frees a block of a slab this heap owns.
    #[inline]
    pub(crate) fn free_local(&self, slab: &Slab, block: NonNull<u8>) {
        let frees = self.counters.frees.load(Ordering::Relaxed);
        let started = (frees % FAST_TIMING_PERIOD == 0).then(Instant::now);
        let used = slab.push_local(block);
        if used == 0 && !std::ptr::eq(self.classes[slab.class()].current.get(), slab) {
            self.retire_empty(slab);
        }
        self.counters.frees.store(frees + 1, Ordering::Relaxed);
        if let Some(started) = started {
            self.counters.free_time.record(started.elapsed());
        }
    }

    /// Gives a block back to a slab another thread owns (or an abandoned
    /// one), counting and sampling it as this thread's free.
    pub(crate) fn free_remote(&self, slab: &Slab, block: NonNull<u8>) {
        let frees = self.counters.frees.load(Ordering::Relaxed);
        let started = (frees % FAST_TIMING_PERIOD == 0).then(Instant::now);
        slab.push_remote(block);
        self.counters.frees.store(frees + 1, Ordering::Relaxed);
        bump(&self.counters.remote_frees, 1);
        if let Some(started) = started {
            self.counters.free_time.record(started.elapsed());
        }
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
        let pool = self.pool();
        for cache in &self.classes {
            let spare = cache.spare.replace(ptr::null_mut());
            if !spare.is_null() {
                pool.release_slab(spare);
            }
            let first = cache.current.replace(ptr::null_mut());
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
    // and retired exactly once, by their own thread.
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

/// A thread's table of heaps, most recently used first.
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
        if self.pool_ids[0].get() == pool.id {
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
        let slot = match (1..HEAPS_PER_THREAD).find(|&slot| self.pool_ids[slot].get() == pool.id) {
            Some(slot) => slot,
            None => {
                let slot = self.free_slot()?;
                let heap = Box::into_raw(Box::new(ThreadHeap {
                    pool: pool as *const PoolInner,
                    checked: pool.config.checked,
                    registry: Arc::clone(&pool.caches),
                    classes: std::array::from_fn(|_| ClassCache {
                        current: Cell::new(ptr::null_mut()),
                        spare: Cell::new(ptr::null_mut()),
                    }),
                    counters: HeapCounters {
                        allocations: AtomicU64::new(0),
                        frees: AtomicU64::new(0),
                        remote_frees: AtomicU64::new(0),
                        alloc_time: TimeSamples::new(),
                        free_time: TimeSamples::new(),
                    },
                }));
                lock(&pool.caches.state).heaps.push(heap);
                self.pool_ids[slot].set(pool.id);
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

    /// An empty slot, or one freed by retiring the heap of a dropped pool.
    fn free_slot(&self) -> Option<usize> {
        if let Some(slot) = (0..HEAPS_PER_THREAD).find(|&slot| self.pool_ids[slot].get() == 0) {
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
}

impl Drop for ThreadHeaps {
    fn drop(&mut self) {
        for slot in 0..HEAPS_PER_THREAD {
            let heap = self.heaps[slot].replace(ptr::null_mut());
            self.pool_ids[slot].set(0);
            if !heap.is_null() {
                retire_heap(heap);
            }
        }
    }
}

const_thread_local! {
    static THREAD_HEAPS: ThreadHeaps = ThreadHeaps::new();
}

/// Takes a block of `class` from this thread's heap for `pool` if that is
/// the thread's most recently used heap and its current slab has one.
/// `None` sends the caller to the full path, which also handles the sampled
/// timing and checked mode, so that this one stays a handful of instructions.
#[inline]
pub(crate) fn try_allocate_cached(pool: &PoolInner, class: usize) -> Option<NonNull<u8>> {
    THREAD_HEAPS
        .try_with(|heaps| {
            if heaps.pool_ids[0].get() != pool.id {
                return None;
            }
            // SAFETY: the front entry is this thread's live heap for `pool`.
            let heap = unsafe { &*heaps.heaps[0].get() };
            let allocations = heap.counters.allocations.load(Ordering::Relaxed);
            if heap.checked || allocations % FAST_TIMING_PERIOD == 0 {
                return None;
            }
            let slab = heap.classes[class].current.get();
            if slab.is_null() {
                return None;
            }
            // SAFETY: current slabs are owned by this heap and mapped.
            let block = unsafe { (*slab).pop() }?;
            heap.counters.allocations.store(allocations + 1, Ordering::Relaxed);
            Some(block)
        })
        .ok()
        .flatten()
}

/// Frees `block` if it is a valid block of a slab this thread owns and
/// nothing special applies; `false` sends the caller to [`free_to_slab`].
#[inline]
pub(crate) fn try_free_cached(slab: &Slab, block: NonNull<u8>) -> bool {
    if !slab.is_owned_by_current_thread() || slab.is_checked() || slab.block_index(block.as_ptr() as usize).is_err() {
        return false;
    }
    // SAFETY: the owner's heap lives as long as its thread owns the slab,
    // and this is that thread.
    let heap = unsafe { &*slab.owner() };
    let frees = heap.counters.frees.load(Ordering::Relaxed);
    if frees % FAST_TIMING_PERIOD == 0 {
        return false;
    }
    if slab.push_local(block) == 0 && !std::ptr::eq(heap.classes[slab.class()].current.get(), slab) {
        heap.retire_empty(slab);
    }
    heap.counters.frees.store(frees + 1, Ordering::Relaxed);
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
        slab.push_remote(block);
        pool.orphan_frees.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
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
