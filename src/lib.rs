//! A lock-free concurrent memory pool for programs that allocate small
//! objects (events, nodes, buffers) at high rates from many threads.
//!
//! A [`MemoryPool`] owns its memory: anonymous mappings you can size, grow,
//! shrink, inspect and check. Small blocks come from per-thread caches with
//! no lock and no atomic read-modify-write ([`MemoryPool::allocate_fast`]);
//! any size comes from the shared first-fit pool ([`MemoryPool::allocate`]).
//!
//! ```
//! use lle_mempool::MemoryPool;
//!
//! let pool = MemoryPool::new(1 << 20)?;
//! let event = pool.allocate_fast(48)?;
//! unsafe {
//!     event.as_ptr().write_bytes(0xAB, 48);
//!     pool.free_fast(event)?;
//! }
//! assert!(pool.check().is_ok());
//! # Ok::<(), lle_mempool::PoolError>(())
//! ```
//!
//! # Design
//!
//! ```text
//!   thread A            thread B            thread C
//!  +-----------+       +-----------+       +-----------+
//!  | heap: per |       | heap: per |       | heap: per |   allocate_fast / free_fast:
//!  | class ring|       | class ring|       | class ring|   pop/push the owner's slab list,
//!  | of slabs  |       | of slabs  |       | of slabs  |   remote frees CAS onto the slab
//!  +-----+-----+       +-----+-----+       +-----+-----+
//!        |  64 KiB slabs, in batches           |
//!  +-----v-----------------------------------v--------+
//!  | shared pool: first fit by address                |   allocate / free / expand /
//!  |  biased lock for writers, seqlock for readers,   |   compact / resize
//!  |  a 16-ary max-tree per region: fit in O(log n)   |
//!  +-----+------------------+----------------+--------+
//!        |                  |                |
//!  +-----v-----+      +-----v-----+    +-----v-----+
//!  | region 0  |      | region 1  |    | region 2  |     anonymous mmaps, grown in place
//!  +-----------+      +-----------+    +-----------+     with mremap, never moved
//! ```
//!
//! - **Regions** (`region`): anonymous mappings. The first region reserves
//!   address space up front ([`PoolConfig::reserve`]) and grows in place by
//!   committing it; past the reservation a region is grown in place with
//!   `mremap` without `MREMAP_MAYMOVE`, and when the kernel can't, a new
//!   region is mapped. A live block never moves.
//! - **Free-block index** (`free_index`): per region, one bit per 16-byte
//!   granule for "free" and one for "a block starts here". Coalescing is
//!   implicit: a free block is a maximal run of free granules. Each run
//!   counts for the 64-granule leaf it starts in; a 16-ary max-tree of the
//!   longest run per leaf (one cache line a node, compared as a whole with
//!   SSE2) finds the leftmost fitting run in O(log n), and a hierarchy of
//!   "leaf wholly free" bitmaps measures long runs without a scan.
//! - **Seqlock** (`seqlock`): writers hold the pool's lock and bracket each
//!   change; `stats` and `utilization` read without blocking them. `check`
//!   does too, and audits under the lock when writes keep overlapping its
//!   reading, so that it finishes under any write load. Every word a reader
//!   can see is an atomic.
//! - **Biased lock** (`biased_lock`): the writers' lock is biased to the
//!   thread that made the pool, which enters with a plain store and load,
//!   no read-modify-write (whose store-buffer drain cost about a quarter of a
//!   shared-pool step). The first other thread revokes the bias once, with
//!   `membarrier(2)`; from then on it is a plain mutex.
//! - **Epochs**: region tables, replaced region descriptions and removed
//!   regions are retired through a crossbeam-epoch `Collector` owned by the
//!   pool, so nothing is freed or unmapped while a reader may hold it. Readers borrow
//!   one of a few handles the pool keeps registered (`epoch_handles`)
//!   rather than registering one per call.
//! - **Ownership map** (`slab_map`): a radix map with one word per 64 KiB
//!   chunk, either the slab there or a mask of the chunk's 4 KiB pages that
//!   lie in the pool's regions. `PoolInner::classify` turns any address into
//!   "a slab's block", "the shared pool's" or "foreign" without a lock, an
//!   epoch or an allocation, and without reading memory at the address;
//!   `contains` uses it, and every free path ends in
//!   `PoolInner::free_classified`, the one place that decides where a freed
//!   pointer goes.
//! - **Thread caches** (`thread_cache/`, `slab`, `size_class`):
//!   36 size classes up to 1 KiB, per-thread heaps (`heap_table`, `heap`)
//!   with a ring of 64 KiB slabs per class (`slab_ring`) taken from the
//!   shared pool, mimalloc-style thread-free lists for cross-thread frees
//!   (batched per slab, `remote_batch`), a filter of owned slabs
//!   (`owned_filter`) that lets an owner's free prove ownership from
//!   thread-local memory, and the slabs of exited threads (`abandoned`).
//! - **Fork** (`fork`): every pool registers in a process-wide list, and
//!   `pthread_atfork` handlers take every pool's locks before a `fork()`
//!   and release them after it, so the child of a fork taken at any moment
//!   by any thread can use every pool, a [`GlobalPool`] too. In the child
//!   the shared pool's lock is biased to the surviving thread, and the
//!   caches of the threads that did not survive are retired as at thread
//!   exit, so their slabs become reclaimable.
//! - **Guards** (`guard`): in a [checked](PoolConfig::checked) pool, a
//!   canary after the bytes asked of every block, verified on free, and
//!   poison in every freed block, verified when it is handed out again;
//!   damaged blocks are quarantined. Checked pools never take the inline
//!   fast paths, so unchecked pools pay nothing for it.
//! - **Facades** (`sync`, `os`): every atomic, lock and thread-local comes
//!   from `sync`, so the same code runs under loom and shuttle
//!   (`cfg(lle_mempool_model)`); every system call goes through `os`, which
//!   the models replace with heap memory.
//!
//! `docs/DESIGN.md` in the repository holds each component's invariants,
//! the build configurations and what each swaps, and a reading order.
//!
//! # Errors, not panics
//!
//! Zero or overflowing sizes, bad alignments, foreign, interior and
//! double-freed pointers, growth past the maximum, shrinking below live data
//! and the OS refusing memory are all [`PoolError`] values. A refused call
//! leaves the pool as it was; [`MemoryPool::check`] verifies every invariant.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod align;
mod allocator;
mod biased_lock;
mod boxed;
#[cfg(feature = "capi")]
pub mod capi;
mod config;
mod epoch_handles;
mod error;
mod fallible;
mod fork;
mod free_index;
mod global;
mod guard;
mod identity;
mod leaks;
mod listeners;
mod model_cells;
mod os;
mod pressure;
mod purge;
mod region;
mod seqlock;
mod shared_pool;
mod size_class;
mod slab;
mod slab_map;
mod stats;
mod sync;
mod thread_cache;
mod wipe;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use boxed::PoolBox;
pub use config::{PoolConfig, PoolKind};
pub use error::PoolError;
pub use global::GlobalPool;
pub use guard::{BlockDamage, DamageKind};
pub use leaks::{write_leak_report, AllocationPath, LiveBlock};
pub use listeners::{ListenerId, ResizeEvent, ResizeReason};
pub use pressure::{PressureCallbackId, PressureEvent, PressureReason};
pub use stats::{FastPathStats, PoolStats};

use shared_pool::{Relieve, SharedPool, MAX_ALIGNMENT};
use size_class::{class_of, class_size, MAX_FAST_SIZE};
use slab::SLAB_SIZE;
use slab_map::Owner;
use stats::mean_duration;
use std::fmt;
use std::ops::Range;
use std::ptr::NonNull;
use thread_cache::{with_heap, InlineFree, PoolCaches};

/// A concurrent memory pool over anonymous mappings.
///
/// Every method takes `&self`; share the pool between threads by reference
/// (scoped threads), `Arc`, or a `static`. Dropping the pool unmaps all of
/// its memory: blocks still live at that point become invalid.
///
/// # Examples
///
/// ```
/// use lle_mempool::{MemoryPool, PoolConfig, PoolKind};
///
/// let pool = MemoryPool::with_config(PoolConfig::new(256 * 1024).kind(PoolKind::Buffer))?;
/// let buffer = pool.allocate(1000)?;
/// unsafe { buffer.as_ptr().write_bytes(7, 1000) };
/// assert_eq!(pool.stats().live_allocations, 1);
/// unsafe { pool.free(buffer)? };
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
pub struct MemoryPool {
    inner: Box<PoolInner>,
    /// `inner.caches.inline_key()`, fixed for the pool's life: here, the
    /// inline paths of a C caller (which cannot hoist it out of its loop)
    /// read one word through the handle instead of two.
    inline_key: thread_cache::InlineKey,
}

/// The pool itself, boxed so that thread heaps can point at it while the
/// `MemoryPool` handle moves.
pub(crate) struct PoolInner {
    pub(crate) id: u64,
    pub(crate) config: PoolConfig,
    pub(crate) shared: SharedPool,
    pub(crate) caches: PoolCaches,
    pub(crate) guards: guard::Guards,
}

impl PoolInner {
    /// What `addr` is to this pool: in a registered slab, in a shared
    /// region, or foreign. The one place that classifies pointers; lock-free,
    /// allocation-free, and reads nothing at `addr` (see [`Owner`] for what
    /// a found slab promises).
    #[inline]
    pub(crate) fn classify(&self, addr: usize) -> Owner<'_> {
        self.shared.map.classify(addr)
    }

    /// Frees `block`, whatever it is: the free behind every free path that
    /// has not classified the pointer yet.
    ///
    /// # Safety
    /// As [`free_classified`](Self::free_classified).
    #[inline]
    pub(crate) unsafe fn free(&self, block: NonNull<u8>) -> Result<(), PoolError> {
        // SAFETY: as the caller guarantees.
        unsafe { self.free_classified(block, self.classify(block.as_ptr() as usize)) }
    }

    /// Frees `block`, which [`classify`](Self::classify) found to be
    /// `owner`: the one place that decides where a freed pointer goes. A
    /// slab's block goes back to its slab (see `thread_cache`), a shared
    /// block to the shared pool, which checks that it is a live block;
    /// anything else is refused. With `zero_on_free` every block is zeroed
    /// here or in `free_to_slab`, after it is known to be a live block and
    /// before the pool can hand it out again.
    ///
    /// # Safety
    /// If `block` is a live block of the pool, the caller gives it up. A
    /// cache block must not be freed twice unless the pool is checked; any
    /// other pointer is refused safely.
    #[inline]
    pub(crate) unsafe fn free_classified(&self, block: NonNull<u8>, owner: Owner<'_>) -> Result<(), PoolError> {
        match owner {
            // SAFETY: as the caller guarantees.
            Owner::Slab(slab) => unsafe { thread_cache::free_to_slab(self, slab, block) },
            Owner::Shared => {
                // A checked pool's free fills the block with poison, which
                // overwrites the data as well (see `free_to_slab`).
                if self.config.zero_on_free && !self.config.checked {
                    // SAFETY: as the caller guarantees.
                    unsafe { self.wipe_shared_from(block, 0) }?;
                }
                self.free_shared(block.as_ptr() as usize)
            }
            Owner::Foreign => Err(PoolError::ForeignPointer { addr: block.as_ptr() as usize }),
        }
    }

    /// Frees the shared block at `addr`, through its guards in a checked
    /// pool.
    #[inline]
    fn free_shared(&self, addr: usize) -> Result<(), PoolError> {
        if self.config.checked {
            return guard::release_shared_block(self, addr);
        }
        self.shared.free(addr)
    }

    /// [`allocate_shared`](Self::allocate_shared) in a checked pool: out of
    /// line, so that unchecked pools' allocations stay as they are.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn allocate_shared_guarded(&self, size: usize, align: usize) -> Result<NonNull<u8>, PoolError> {
        let guarded = guard::guarded_shared_size(size).or_else(|error| self.failed(error))?;
        guard::hand_out(self, size, || self.shared.allocate(guarded, align, self))
    }

    /// [`allocate_from_cache`](Self::allocate_from_cache) of `size` bytes
    /// (non-zero) in a checked pool, out of line as
    /// [`allocate_shared_guarded`](Self::allocate_shared_guarded) is.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn allocate_from_cache_guarded(&self, size: usize) -> Result<NonNull<u8>, PoolError> {
        let guarded = guard::guarded_cache_size(size).or_else(|error| self.failed(error))?;
        guard::hand_out(self, size, || self.allocate_from_cache(guarded))
    }

    /// Allocates `size` bytes (non-zero) from this thread's cache, or from
    /// the shared pool above the caches' sizes or without a heap; no guards.
    fn allocate_from_cache(&self, size: usize) -> Result<NonNull<u8>, PoolError> {
        if size > MAX_FAST_SIZE {
            return self.shared.allocate(size, config::MIN_DEFAULT_ALIGNMENT, self);
        }
        let class = class_of(size);
        match with_heap(self, |heap| heap.allocate(class)) {
            Some(Ok(block)) => Ok(block),
            // A heap fails only when the shared pool refuses it a slab, and
            // the shared pool has counted that failure already.
            Some(Err(error)) => Err(error),
            None => self.shared.allocate(class_size(class), config::MIN_DEFAULT_ALIGNMENT, self),
        }
    }

    /// Zeroes the live shared block at `block` from byte `keep` to its end
    /// (nothing if it is no longer than `keep`); refuses, touching nothing,
    /// what is not a live shared block. Outside the pool's lock, which a
    /// large block would hold up: the block is the caller's until it frees
    /// it or gives its tail back.
    ///
    /// # Safety
    /// If `block` is a live shared block, its bytes from `keep` on are the
    /// caller's to give up.
    unsafe fn wipe_shared_from(&self, block: NonNull<u8>, keep: usize) -> Result<(), PoolError> {
        let len = self.shared.block_size(block.as_ptr() as usize)?;
        if keep < len {
            // SAFETY: `keep..len` lies inside the live block, which the caller
            // gives up from `keep` on; `keep` is a multiple of the granule,
            // so the start stays aligned.
            unsafe { wipe::wipe(NonNull::new_unchecked(block.as_ptr().add(keep)), len - keep) };
        }
        Ok(())
    }

    /// Resizes the live shared block at `block` to `new_size` bytes in
    /// place, as [`SharedPool::resize_in_place`]; with `zero_on_free` the
    /// tail that a shrink gives back is zeroed first.
    ///
    /// # Safety
    /// If `block` is a live shared block and `new_size` is below its size,
    /// the bytes past `new_size` are the caller's to give up.
    pub(crate) unsafe fn resize_shared_in_place(
        &self,
        block: NonNull<u8>,
        new_size: usize,
    ) -> Result<Option<usize>, PoolError> {
        // A zero size is refused below, with nothing touched.
        if self.config.zero_on_free && new_size > 0 {
            let kept = shared_pool::granules_for(new_size)? * free_index::GRANULE;
            // SAFETY: as the caller guarantees.
            unsafe { self.wipe_shared_from(block, kept) }?;
        }
        self.shared.resize_in_place(block.as_ptr() as usize, new_size)
    }

    /// Allocates `size` bytes (non-zero) aligned to `align` (a supported
    /// power of two) from the shared pool, guarded in a checked pool. The
    /// shared pool retries a refusal by the maximum size once, after
    /// [`release_cached`](Self::release_cached) and a compaction (see
    /// `pressure`).
    #[inline(always)]
    #[track_caller]
    pub(crate) fn allocate_shared(&self, size: usize, align: usize) -> Result<NonNull<u8>, PoolError> {
        if self.config.checked {
            return self.allocate_shared_guarded(size, align);
        }
        self.shared.allocate(size, align, self)
    }

    /// Gives the shared pool back what the thread caches can spare without
    /// a thread's help: the blocks this thread freed into other threads'
    /// slabs and still holds in its batch, and the slabs of exited threads
    /// whose blocks have all come home.
    pub(crate) fn release_cached(&self) {
        thread_cache::hand_over_remote_frees(self);
        thread_cache::reclaim_abandoned(self);
    }

    fn failed<T>(&self, error: PoolError) -> Result<T, PoolError> {
        self.shared.counters.failed_allocations.add_concurrent(1);
        Err(error)
    }
}

impl Relieve for PoolInner {
    fn relieve(&self) {
        self.release_cached();
    }
}

impl MemoryPool {
    /// A pool of `initial_size` bytes (rounded up to pages) with the default
    /// configuration. `0` makes an empty pool that maps memory on first use.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(10_000)?;
    /// assert_eq!(pool.size(), 12_288);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn new(initial_size: usize) -> Result<MemoryPool, PoolError> {
        Self::with_config(PoolConfig::new(initial_size))
    }

    /// A pool set up by `config`.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig, PoolError};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(4096).max_size(4096))?;
    /// assert!(matches!(pool.expand(4096), Err(PoolError::ExceedsMaxSize { .. })));
    /// assert!(MemoryPool::with_config(PoolConfig::new(4096).growth_factor(0.5)).is_err());
    /// # Ok::<(), PoolError>(())
    /// ```
    pub fn with_config(config: PoolConfig) -> Result<MemoryPool, PoolError> {
        config.validate()?;
        let config = config.with_implied_settings();
        let shared = SharedPool::new(
            config.initial_size,
            config.max_size,
            config.growth_factor,
            config.reserve,
            config.purge_delay,
            config.huge_pages,
        )?;
        let id = identity::next_pool_id();
        let caches = PoolCaches::new(id, config.takes_full_paths());
        shared.pressure.set_soft_limit(config.soft_limit);
        let guards = guard::Guards::new(config.on_corruption.clone());
        let inline_key = caches.inline_key();
        let pool = MemoryPool { inner: Box::new(PoolInner { id, config, shared, caches, guards }), inline_key };
        fork::register(&pool.inner)?;
        Ok(pool)
    }

    /// What the pool is for.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(lle_mempool::MemoryPool::new(0)?.kind(), lle_mempool::PoolKind::Custom);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn kind(&self) -> PoolKind {
        self.inner.config.kind
    }

    /// The alignment of blocks from [`allocate`](Self::allocate).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(lle_mempool::MemoryPool::new(0)?.alignment(), 16);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn alignment(&self) -> usize {
        self.inner.config.alignment
    }

    /// The configuration the pool was made with.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// assert_eq!(pool.config().clone(), lle_mempool::PoolConfig::new(4096));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Allocates `size` bytes from the shared pool, aligned to the pool's
    /// alignment, growing the pool if no free block fits. The block's
    /// contents are unspecified.
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroSize`], [`PoolError::SizeOverflow`], or, when the
    /// pool can't grow, [`PoolError::ExceedsMaxSize`] or
    /// [`PoolError::OutOfMemory`]. An allocation is refused with
    /// `ExceedsMaxSize` only after the pool has compacted, called its
    /// [memory-pressure callbacks](Self::on_memory_pressure) and tried once
    /// more (on every allocation path).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let first = pool.allocate(100)?;
    /// let second = pool.allocate(100)?;
    /// // First fit by address: the second block follows the first.
    /// assert_eq!(second.as_ptr() as usize - first.as_ptr() as usize, 112);
    /// assert!(pool.allocate(usize::MAX - 3).is_err());
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    #[inline(always)]
    #[track_caller]
    pub fn allocate(&self, size: usize) -> Result<NonNull<u8>, PoolError> {
        self.allocate_aligned(size, self.inner.config.alignment)
    }

    /// Allocates `size` bytes aligned to `align`, any power of two up to
    /// 1 GiB.
    ///
    /// # Errors
    ///
    /// As [`allocate`](Self::allocate), plus
    /// [`PoolError::InvalidAlignment`] for zero or a non-power of two and
    /// [`PoolError::AlignmentTooLarge`] above 1 GiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(64 * 1024)?;
    /// let page = pool.allocate_aligned(100, 4096)?;
    /// assert_eq!(page.as_ptr() as usize % 4096, 0);
    /// assert!(pool.allocate_aligned(100, 3).is_err());
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    #[inline(always)]
    #[track_caller]
    pub fn allocate_aligned(&self, size: usize, align: usize) -> Result<NonNull<u8>, PoolError> {
        // Inline, as `allocate` is: the caller's location, which
        // `#[track_caller]` passes, is then made only on the checked path,
        // where it is recorded; out of line every allocation would pass it.
        if size == 0 {
            return self.inner.failed(PoolError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return self.inner.failed(PoolError::InvalidAlignment { align });
        }
        if align > MAX_ALIGNMENT {
            return self.inner.failed(PoolError::AlignmentTooLarge { align });
        }
        self.inner.allocate_shared(size, align)
    }

    /// Frees a block from any of this pool's allocation methods.
    ///
    /// Equivalent to [`free_fast`](Self::free_fast): both return the block
    /// to where it came from (a thread cache's slab or the shared pool), and
    /// refuse the same pointers. `free` looks the pointer up in the pool's
    /// map straight away, the quicker way for shared blocks; `free_fast`
    /// first asks this thread's cache, the quicker way for cache blocks that
    /// their allocating thread frees.
    ///
    /// # Errors
    ///
    /// [`PoolError::ForeignPointer`] for a pointer outside the pool,
    /// [`PoolError::InteriorPointer`] for one inside a block but not at its
    /// start, and [`PoolError::NotAllocated`] for free space of the shared
    /// pool (cache blocks are checked for double frees only with
    /// [`PoolConfig::checked`]). The pool is unchanged by a refused free,
    /// but for [`PoolError::BlockCorrupted`]: a checked pool found the
    /// block written past the bytes asked, and quarantined it.
    ///
    /// # Safety
    ///
    /// If `ptr` is a live block of this pool, nobody may use it afterwards.
    /// Freeing a cache block twice without `checked` is undefined
    /// behaviour; freeing any other pointer is refused safely.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolError};
    ///
    /// let pool = MemoryPool::new(4096)?;
    /// let block = pool.allocate(64)?;
    /// unsafe {
    ///     pool.free(block)?;
    ///     assert!(matches!(pool.free(block), Err(PoolError::NotAllocated { .. })));
    /// }
    /// let mut on_stack = 0u8;
    /// let foreign = std::ptr::NonNull::from(&mut on_stack);
    /// assert!(matches!(unsafe { pool.free(foreign) }, Err(PoolError::ForeignPointer { .. })));
    /// # Ok::<(), PoolError>(())
    /// ```
    pub unsafe fn free(&self, ptr: NonNull<u8>) -> Result<(), PoolError> {
        // SAFETY: the caller's contract is ours.
        unsafe { self.inner.free(ptr) }
    }

    /// Allocates `size` bytes from this thread's cache: no lock, no atomic
    /// read-modify-write in the common case. Sizes above 1 KiB are served by
    /// the shared pool (in a [checked](PoolConfig::checked) pool, 1 KiB too:
    /// its canary takes it past the largest size class). The block is aligned to 16 bytes, or to the largest
    /// power of two dividing `size` if that is smaller (the alignment of any
    /// Rust type of that size).
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroSize`], or the shared pool's errors when a new slab
    /// can't be had.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// let blocks: Vec<_> = (0..100).map(|_| pool.allocate_fast(64)).collect::<Result<_, _>>()?;
    /// for block in blocks {
    ///     assert_eq!(block.as_ptr() as usize % 16, 0);
    ///     unsafe { pool.free_fast(block)? };
    /// }
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    #[inline(always)]
    #[track_caller]
    pub fn allocate_fast(&self, size: usize) -> Result<NonNull<u8>, PoolError> {
        // The steps of `allocate_cached`, in a copy of their own: built on
        // it, with the same steps behind an `Option`, a churn step takes
        // five percent more instructions (callgrind).
        if size.wrapping_sub(1) < MAX_FAST_SIZE {
            if let Some(block) = thread_cache::try_allocate_cached(self.inline_key, class_of(size)) {
                return Ok(block);
            }
        }
        self.allocate_fast_slow(size)
    }

    /// The common case of [`allocate_fast`](Self::allocate_fast) (which
    /// keeps a copy of these steps), kept small enough to inline into the
    /// caller: a cached size class, this thread's most recent pool, a block
    /// on the current slab's list. `None` sends the caller to
    /// [`allocate_fast_slow`](Self::allocate_fast_slow).
    ///
    /// Nothing in it panics but its debug assertions of the pool's
    /// invariants, so the C API calls it outside its unwinding guard.
    #[cfg(feature = "capi")]
    #[inline(always)]
    pub(crate) fn allocate_cached(&self, size: usize) -> Option<NonNull<u8>> {
        if size.wrapping_sub(1) >= MAX_FAST_SIZE {
            return None;
        }
        thread_cache::try_allocate_cached(self.inline_key, class_of(size))
    }

    /// [`allocate_fast`](Self::allocate_fast) of `size` bytes (non-zero, at
    /// most [`MAX_FAST_SIZE`]), for a caller that knows the size class. The
    /// same two steps; `allocate_fast` keeps its own copy of them, shaped to
    /// inline into its callers: built on this one, its pair takes five
    /// percent more instructions.
    #[inline(always)]
    #[track_caller]
    pub(crate) fn allocate_in_class(&self, size: usize, class: usize) -> Result<NonNull<u8>, PoolError> {
        debug_assert!(size > 0 && size <= MAX_FAST_SIZE && class == class_of(size));
        if let Some(block) = thread_cache::try_allocate_cached(self.inline_key, class) {
            return Ok(block);
        }
        self.allocate_fast_slow(size)
    }

    /// Everything `allocate_fast` does not do inline: errors, large sizes,
    /// refills, sampled timing, checked mode, the first use on a thread.
    #[inline(never)]
    #[track_caller]
    fn allocate_fast_slow(&self, size: usize) -> Result<NonNull<u8>, PoolError> {
        let inner = &*self.inner;
        if size == 0 {
            return inner.failed(PoolError::ZeroSize);
        }
        if inner.config.checked {
            return inner.allocate_from_cache_guarded(size);
        }
        inner.allocate_from_cache(size)
    }

    /// Frees a block from any of this pool's allocation methods, on any
    /// thread. A cache block goes back to its slab: to the owner's list if
    /// this thread owns the slab, else onto the slab's thread-free list.
    /// Blocks of another thread's slab are handed over in batches of up to
    /// 64 per slab, with one compare-and-swap each; a batch goes as soon as
    /// a block of another slab is freed, and when this thread refills a
    /// cache, calls [`compact`](Self::compact) or exits.
    ///
    /// # Errors
    ///
    /// As [`free`](Self::free): pointers outside the pool, interior pointers
    /// and (for the shared pool, or with [`PoolConfig::checked`]) double
    /// frees are refused, and the pool is unchanged.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// let block = pool.allocate_fast(24)?;
    /// let address = block.as_ptr() as usize;
    /// std::thread::spawn(move || address).join().unwrap();
    /// let interior = unsafe { std::ptr::NonNull::new_unchecked(block.as_ptr().add(8)) };
    /// assert!(unsafe { pool.free_fast(interior) }.is_err());
    /// unsafe { pool.free_fast(block)? };
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    #[inline(always)]
    pub unsafe fn free_fast(&self, ptr: NonNull<u8>) -> Result<(), PoolError> {
        // SAFETY: the caller's contract is ours.
        if unsafe { self.free_cached(ptr.as_ptr()) }.finish() {
            return Ok(());
        }
        // SAFETY: the caller's contract is ours.
        unsafe { self.free_fast_slow(ptr) }
    }

    /// The common case of [`free_fast`](Self::free_fast), inline: a block
    /// of a slab this thread owns, known from thread-local memory alone.
    /// `NotInline` sends the caller to
    /// [`free_fast_slow`](Self::free_fast_slow), with nothing freed.
    ///
    /// Nothing in it panics but its debug assertions of the pool's
    /// invariants, so the C API calls it outside its unwinding guard. Null
    /// gives `NotInline`, so the C API tests for it only past this path.
    ///
    /// # Safety
    ///
    /// As [`free_fast`](Self::free_fast); `ptr` may also be null.
    #[inline(always)]
    pub(crate) unsafe fn free_cached(&self, ptr: *mut u8) -> InlineFree {
        // SAFETY: the caller's contract is ours.
        unsafe { thread_cache::try_free_cached(self.inline_key, ptr) }
    }

    /// Everything `free_fast` does not do inline: validation errors, shared
    /// blocks, remote frees, sampled timing, checked mode.
    ///
    /// # Safety
    ///
    /// As [`free_fast`](Self::free_fast).
    #[inline(never)]
    unsafe fn free_fast_slow(&self, ptr: NonNull<u8>) -> Result<(), PoolError> {
        // SAFETY: the caller's contract is ours.
        unsafe { self.inner.free(ptr) }
    }

    /// The bytes usable at a live block: its size class for cache blocks,
    /// its granule-rounded size for shared blocks. In a
    /// [checked](PoolConfig::checked) pool, the bytes asked: the rest of
    /// the block is its canary.
    ///
    /// # Errors
    ///
    /// As [`free`](Self::free), for pointers that are not live blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// assert_eq!(pool.usable_size(pool.allocate(100)?)?, 112);
    /// assert_eq!(pool.usable_size(pool.allocate_fast(65)?)?, 72);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn usable_size(&self, ptr: NonNull<u8>) -> Result<usize, PoolError> {
        let inner = &*self.inner;
        let addr = ptr.as_ptr() as usize;
        if inner.config.checked {
            return guard::asked_size(inner, addr, inner.classify(addr));
        }
        match inner.classify(addr) {
            Owner::Slab(slab) => {
                slab.block_index(addr)?;
                Ok(class_size(slab.class()))
            }
            Owner::Shared => inner.shared.block_size(addr),
            Owner::Foreign => Err(PoolError::ForeignPointer { addr }),
        }
    }

    /// The blocks handed out and not yet freed, on both paths, by address:
    /// each one's address, bytes asked, bytes spanned, path and, with
    /// [`PoolConfig::track_callers`], where it was allocated. Quarantined
    /// blocks (see [`PoolConfig::checked`]) are not live and not listed.
    ///
    /// Only a pool that keeps records of its blocks knows them: a
    /// [checked](PoolConfig::checked) pool, which
    /// [`report_leaks_on_drop`](PoolConfig::report_leaks_on_drop) and
    /// `track_callers` imply. The list is exact for a pool nobody uses
    /// during the call. Under concurrent use it is a snapshot of each slab
    /// and of the shared pool's blocks: every block live throughout the
    /// call is listed, once, with the size asked and caller of its
    /// allocation, and no block free throughout the call is; a block
    /// allocated or freed during the call may or may not be listed, and
    /// one allocated during it may be listed with the size and caller of
    /// its block's previous allocation. Slabs are not released while the
    /// call runs, and the shared blocks are read all at once, under the
    /// lock a checked shared free takes.
    ///
    /// # Errors
    ///
    /// [`PoolError::InvalidConfig`] for a pool that is not checked, rather
    /// than a partial list; [`PoolError::OutOfMemory`] if the list's
    /// memory can't be had.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{AllocationPath, MemoryPool, PoolConfig, PoolError};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true))?;
    /// let kept = pool.allocate_fast(24)?;
    /// let freed = pool.allocate(3000)?;
    /// unsafe { pool.free(freed)? };
    /// let live = pool.live_blocks()?;
    /// assert_eq!(live.len(), 1);
    /// assert_eq!((live[0].addr, live[0].size), (kept.as_ptr() as usize, 24));
    /// assert_eq!(live[0].path, AllocationPath::Cache);
    ///
    /// let unchecked = MemoryPool::new(1 << 20)?;
    /// assert!(matches!(unchecked.live_blocks(), Err(PoolError::InvalidConfig { .. })));
    /// # Ok::<(), PoolError>(())
    /// ```
    pub fn live_blocks(&self) -> Result<Vec<LiveBlock>, PoolError> {
        leaks::live_blocks(&self.inner)
    }

    /// Whether `ptr` lies inside the pool's memory: in one of its regions
    /// (see [`regions`](Self::regions)), and so in a block of either
    /// allocation path or in free space. Lock-free, allocation-free, and it
    /// never reads memory at `ptr`: any pointer may be asked about. Memory
    /// that [`compact`](Self::compact) or [`resize`](Self::resize) gave back
    /// is not the pool's any more, even if the OS hands its addresses out
    /// again.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let block = pool.allocate(16)?;
    /// let cached = pool.allocate_fast(16)?;
    /// assert!(pool.contains(block.as_ptr()));
    /// assert!(pool.contains(cached.as_ptr()));
    /// assert!(!pool.contains(&0u8));
    /// let heap = Box::new(0u8);
    /// assert!(!pool.contains(&*heap));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn contains(&self, ptr: *const u8) -> bool {
        !matches!(self.inner.classify(ptr as usize), Owner::Foreign)
    }

    /// The address ranges of the pool's regions, in address order.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(8192)?;
    /// let regions = pool.regions();
    /// assert_eq!(regions.len(), 1);
    /// assert_eq!(regions[0].len(), 8192);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn regions(&self) -> Vec<Range<usize>> {
        self.inner.shared.regions().into_iter().map(|(start, len)| start..start + len).collect()
    }

    /// Grows the pool by `additional` bytes, rounded up to pages: in place
    /// inside the first region's reservation, or if the kernel can extend
    /// the newest region, else as a new region.
    /// Live blocks never move.
    ///
    /// # Errors
    ///
    /// [`PoolError::ExceedsMaxSize`], [`PoolError::SizeOverflow`] or
    /// [`PoolError::OutOfMemory`]; the pool is then unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let block = pool.allocate(4096)?;
    /// pool.expand(8192)?;
    /// assert_eq!(pool.size(), 12_288);
    /// assert!(pool.contains(block.as_ptr()));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn expand(&self, additional: usize) -> Result<(), PoolError> {
        self.inner.shared.expand(additional)
    }

    /// Hands over, now, the blocks this thread freed into slabs that other
    /// threads own and still holds in its batch (see
    /// [`free_fast`](Self::free_fast)), so that their owners can reuse them.
    /// A thread that frees other threads' blocks and then goes idle for a
    /// long time may call this; batches are handed over by themselves as a
    /// thread keeps freeing, and when it exits.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let pool = Arc::new(lle_mempool::MemoryPool::new(1 << 20)?);
    /// let block = pool.allocate_fast(64)?.as_ptr() as usize;
    /// let remote = Arc::clone(&pool);
    /// std::thread::spawn(move || {
    ///     let block = std::ptr::NonNull::new(block as *mut u8).unwrap();
    ///     unsafe { remote.free_fast(block) }.unwrap();
    ///     // This thread may idle for long now: give the owner its block.
    ///     remote.flush_remote_frees();
    /// })
    /// .join()
    /// .unwrap();
    /// assert_eq!(pool.stats().fast.remote_frees, 1);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn flush_remote_frees(&self) {
        thread_cache::hand_over_remote_frees(&self.inner);
    }

    /// Gives free memory back to the OS and returns the bytes unmapped.
    ///
    /// Free space at the end of each region, and regions that are entirely
    /// free, are unmapped (the pool's [`size`](Self::size) shrinks by the
    /// returned amount); whole free pages inside the pool are purged with
    /// `madvise`, so they stop counting as resident. Cache slabs abandoned by
    /// exited threads are released first if their blocks have come home, and
    /// blocks this thread freed into other threads' slabs and still holds
    /// in its batch (see [`free_fast`](Self::free_fast)) are handed over.
    /// Inside the cache slabs that still hold live blocks, the calling
    /// thread's own and the abandoned ones, the pages that hold only free
    /// blocks are purged too; other threads' slabs are theirs to purge,
    /// which they do on their own after the [purge
    /// delay](PoolConfig::purge_delay).
    /// A region whose shorter index the heap can't provide keeps its free
    /// tail. Without `compact`, the pool purges free pages on its own after
    /// its [purge delay](PoolConfig::purge_delay).
    ///
    /// # Errors
    ///
    /// [`PoolError::OutOfMemory`], with nothing unmapped, when the heap
    /// refuses the memory for the new table of regions.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// pool.expand(1 << 20)?;
    /// let keep = pool.allocate(100)?;
    /// assert_eq!(pool.compact()?, 1 << 20);
    /// assert_eq!(pool.size(), 4096);
    /// assert!(pool.contains(keep.as_ptr()));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn compact(&self) -> Result<usize, PoolError> {
        self.inner.release_cached();
        thread_cache::purge_own_slabs(&self.inner);
        self.inner.shared.compact()
    }

    /// Grows or shrinks the pool to `new_size` bytes, rounded up to pages.
    /// All or nothing: on error the pool is exactly as before. Shrinking
    /// removes free space from the ends of regions, highest addresses first;
    /// it never moves a live block.
    ///
    /// # Errors
    ///
    /// [`PoolError::ShrinkBelowUsed`] below the bytes in use,
    /// [`PoolError::ShrinkBlocked`] when live blocks sit where memory would
    /// have to go, [`PoolError::OutOfMemory`] when the heap refuses the
    /// shortened regions' indexes, and the errors of
    /// [`expand`](Self::expand) when growing.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolError};
    ///
    /// let pool = MemoryPool::new(64 * 1024)?;
    /// pool.resize(128 * 1024)?;
    /// assert_eq!(pool.size(), 128 * 1024);
    /// let block = pool.allocate(40 * 1024)?;
    /// assert!(matches!(pool.resize(4096), Err(PoolError::ShrinkBelowUsed { .. })));
    /// assert_eq!(pool.size(), 128 * 1024);
    /// unsafe { pool.free(block)? };
    /// pool.resize(4096)?;
    /// assert_eq!(pool.size(), 4096);
    /// # Ok::<(), PoolError>(())
    /// ```
    pub fn resize(&self, new_size: usize) -> Result<(), PoolError> {
        self.inner.shared.resize(new_size)
    }

    /// Bytes mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(lle_mempool::MemoryPool::new(1)?.size(), 4096);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn size(&self) -> usize {
        self.inner.shared.usage().0
    }

    /// The share of the pool in live blocks, in percent (0 to 100). An
    /// empty pool (size 0) is 0% used.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let _half = pool.allocate(2048)?;
    /// assert_eq!(pool.utilization(), 50.0);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn utilization(&self) -> f64 {
        let (size, used) = self.inner.shared.usage();
        if size == 0 {
            0.0
        } else {
            used as f64 * 100.0 / size as f64
        }
    }

    /// A snapshot of the pool's state and history, read without blocking
    /// allocations; fast-path counters are summed over threads.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let stats = pool.stats();
    /// assert_eq!((stats.size, stats.used, stats.free, stats.free_blocks), (4096, 0, 4096, 1));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        let inner = &*self.inner;
        let shared = inner.shared.snapshot();
        let fast = inner.caches.totals();
        // Every cache block handed out and not yet freed, wherever its slab
        // is; a block freed on another thread counts as freed from that
        // moment, even while it waits in a batch or a thread-free list.
        // A quarantined cache block counted as an allocation and is never
        // freed; a quarantined shared block stays live in the shared pool.
        let (quarantined_cache, quarantined_shared) = inner.guards.quarantined();
        let live_cache_blocks =
            (fast.allocations.saturating_sub(fast.frees) as usize).saturating_sub(quarantined_cache);
        // The snapshot counts slabs and live shared blocks in the same
        // write bracket, so the slabs never exceed them.
        let live_shared_blocks = (shared.live_blocks - shared.slabs).saturating_sub(quarantined_shared);
        PoolStats {
            size: shared.size,
            used: shared.used,
            free: shared.size - shared.used,
            largest_free_block: shared.largest_free_block,
            free_blocks: shared.free_blocks,
            live_allocations: live_shared_blocks + live_cache_blocks,
            peak_used: shared.peak_used,
            total_allocations: shared.total_allocations,
            total_frees: shared.total_frees,
            failed_allocations: shared.failed_allocations,
            expansions: shared.expansions,
            compactions: shared.compactions,
            purges: shared.purges,
            low_memory_retries: inner.shared.pressure.retries.get(),
            low_memory_recoveries: inner.shared.pressure.recoveries.get(),
            quarantined_blocks: quarantined_cache + quarantined_shared,
            avg_alloc_time: mean_duration(&[shared.alloc_time, fast.alloc_time]),
            avg_free_time: mean_duration(&[shared.free_time, fast.free_time]),
            fast: FastPathStats {
                allocations: fast.allocations,
                frees: fast.frees,
                remote_frees: fast.remote_frees,
                cached_blocks: inner.caches.slab_blocks().saturating_sub(live_cache_blocks + quarantined_cache),
                slabs: shared.slabs,
                slab_bytes: shared.slabs * SLAB_SIZE,
            },
        }
    }

    /// Recomputes free space, free blocks and live blocks from the block
    /// records and verifies every invariant of every region's index against
    /// the counters. It reads without blocking writers, retrying when a
    /// write overlaps it; after a few overlapped attempts it holds the lock
    /// that writers take for one last audit, so it finishes in bounded time
    /// however busy the pool is (writers wait for that audit).
    ///
    /// # Errors
    ///
    /// [`PoolError::Corrupted`] naming the broken invariant, or
    /// [`PoolError::OutOfMemory`] when the memory for the audit's reference
    /// copy of an index can't be had.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let block = pool.allocate(100)?;
    /// pool.check()?;
    /// unsafe { pool.free(block)? };
    /// pool.check()?;
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn check(&self) -> Result<(), PoolError> {
        self.inner.shared.check()
    }

    /// Registers `listener`, called after every change of the pool's size
    /// (expand, automatic growth, compact, resize) with the old and new
    /// sizes and the reason. It runs on the thread that caused the change,
    /// after the pool's lock is released: it may call the pool's methods,
    /// except registering or removing listeners.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&calls);
    /// pool.on_resize(move |_| { counter.fetch_add(1, Ordering::SeqCst); });
    /// pool.expand(4096)?;
    /// pool.compact()?;
    /// assert_eq!(calls.load(Ordering::SeqCst), 2);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn on_resize<F>(&self, listener: F) -> ListenerId
    where
        F: Fn(&ResizeEvent) + Send + Sync + 'static,
    {
        self.inner.shared.listeners.add(Box::new(listener))
    }

    /// Removes a listener; `false` if it was not registered. Once this
    /// returns, the listener is not running and will not be called again.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let id = pool.on_resize(|_| panic!("not called after removal"));
    /// assert!(pool.remove_resize_listener(id));
    /// pool.expand(4096)?;
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn remove_resize_listener(&self, id: ListenerId) -> bool {
        self.inner.shared.listeners.remove(id)
    }

    /// How many resize listeners are registered.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// pool.on_resize(|_| {});
    /// assert_eq!(pool.resize_listener_count(), 1);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn resize_listener_count(&self) -> usize {
        self.inner.shared.listeners.count()
    }

    /// Registers `callback`, called when memory runs low:
    ///
    /// - when an allocation takes the bytes in use above the
    ///   [soft limit](PoolConfig::soft_limit), once per crossing
    ///   ([`PressureReason::SoftLimit`]);
    /// - when the maximum size refuses an allocation, on any path
    ///   ([`PressureReason::MaxSize`]). The pool has then compacted (as
    ///   [`compact`](Self::compact) does: this thread's remote frees handed
    ///   over, exited threads' slabs reclaimed, free tails unmapped); after
    ///   the callbacks it tries the allocation once more. A callback that
    ///   frees memory thus lets the allocation succeed: the statistics'
    ///   [`low_memory_retries`](PoolStats::low_memory_retries) and
    ///   [`low_memory_recoveries`](PoolStats::low_memory_recoveries) count
    ///   the retries and those that succeeded, and an allocation that still
    ///   fails returns [`PoolError::ExceedsMaxSize`].
    ///
    /// It runs on the thread whose allocation crossed the limit or was
    /// refused, after the pool's lock is released, and is told the bytes in
    /// use, the soft limit and the maximum size. It may free, allocate
    /// (from this pool too), compact or do nothing, but not register or
    /// remove callbacks. Pressure raised while the thread is inside a
    /// pressure callback or a resize listener calls no callback: such an
    /// allocation is still retried after compaction.
    ///
    /// # Examples
    ///
    /// A consumer told to catch up when its producer gets ahead:
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig, PressureReason};
    /// use std::ptr::NonNull;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(4096).max_size(4096))?);
    /// let queue: Arc<Mutex<Vec<usize>>> = Arc::default();
    /// let (consumer_pool, backlog) = (Arc::clone(&pool), Arc::clone(&queue));
    /// pool.on_memory_pressure(move |event| {
    ///     assert_eq!(event.reason, PressureReason::MaxSize { requested: 1024 });
    ///     for block in backlog.lock().unwrap().drain(..) {
    ///         unsafe { consumer_pool.free(NonNull::new(block as *mut u8).unwrap()).unwrap() };
    ///     }
    /// });
    /// for _ in 0..8 {
    ///     let block = pool.allocate(1024)?;
    ///     queue.lock().unwrap().push(block.as_ptr() as usize);
    /// }
    /// let stats = pool.stats();
    /// assert_eq!((stats.low_memory_retries, stats.low_memory_recoveries), (1, 1));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn on_memory_pressure<F>(&self, callback: F) -> PressureCallbackId
    where
        F: Fn(&PressureEvent) + Send + Sync + 'static,
    {
        self.inner.shared.pressure.add(Box::new(callback))
    }

    /// Removes a memory-pressure callback; `false` if it was not
    /// registered. Once this returns, the callback is not running and will
    /// not be called again.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::with_config(lle_mempool::PoolConfig::new(4096).soft_limit(0))?;
    /// let id = pool.on_memory_pressure(|_| panic!("not called after removal"));
    /// assert!(pool.remove_memory_pressure_callback(id));
    /// pool.allocate(16)?;
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn remove_memory_pressure_callback(&self, id: PressureCallbackId) -> bool {
        self.inner.shared.pressure.remove(id)
    }

    /// How many memory-pressure callbacks are registered.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// pool.on_memory_pressure(|_| {});
    /// assert_eq!(pool.memory_pressure_callback_count(), 1);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn memory_pressure_callback_count(&self) -> usize {
        self.inner.shared.pressure.count()
    }

    /// The soft limit (see [`PoolConfig::soft_limit`]), if any.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::with_config(lle_mempool::PoolConfig::new(4096).soft_limit(2048))?;
    /// assert_eq!(pool.soft_limit(), Some(2048));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn soft_limit(&self) -> Option<usize> {
        self.inner.shared.pressure.soft_limit()
    }

    /// Sets or clears the soft limit (see [`PoolConfig::soft_limit`]). The
    /// next crossing is measured from the bytes in use then: a pool already
    /// above the new limit reports when it next goes from at most the limit
    /// to above it.
    ///
    /// # Errors
    ///
    /// [`PoolError::InvalidConfig`] for a limit above the maximum size; the
    /// limit is then unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::with_config(lle_mempool::PoolConfig::new(4096).max_size(8192))?;
    /// pool.set_soft_limit(Some(4096))?;
    /// assert_eq!(pool.soft_limit(), Some(4096));
    /// assert!(pool.set_soft_limit(Some(1 << 20)).is_err());
    /// pool.set_soft_limit(None)?;
    /// assert_eq!(pool.soft_limit(), None);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn set_soft_limit(&self, soft_limit: Option<usize>) -> Result<(), PoolError> {
        let config = PoolConfig { soft_limit, ..self.inner.config.clone() };
        config.validate()?;
        self.inner.shared.pressure.set_soft_limit(soft_limit);
        Ok(())
    }

    /// Where a [checked](PoolConfig::checked) pool reports writes after
    /// free from now on: `callback`, in place of the one set before (here
    /// or by [`PoolConfig::on_corruption`]), with the damaged block, which
    /// is quarantined; the allocation that found it goes on with another
    /// block. It runs on the allocating thread, outside every lock of the
    /// pool: it may allocate and free, but must not set or remove the
    /// callback. Once this returns, the previous callback is not running
    /// and will not be called again. An unchecked pool keeps the callback
    /// and never calls it.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true))?;
    /// let damaged = Arc::new(AtomicUsize::new(0));
    /// let sink = Arc::clone(&damaged);
    /// pool.on_corruption(move |damage| sink.store(damage.addr, Ordering::SeqCst));
    /// let block = pool.allocate_fast(64)?;
    /// unsafe {
    ///     pool.free_fast(block)?;
    ///     block.as_ptr().add(40).write(1); // a write after free
    /// }
    /// let next = pool.allocate_fast(64)?;
    /// assert_ne!(next, block);
    /// assert_eq!(damaged.load(Ordering::SeqCst), block.as_ptr() as usize);
    /// assert_eq!(pool.stats().quarantined_blocks, 1);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn on_corruption<F>(&self, callback: F)
    where
        F: Fn(&BlockDamage) + Send + Sync + 'static,
    {
        self.inner.guards.replace_corruption_handler(Some(guard::CorruptionHandler::new(callback)));
    }

    /// Removes the corruption callback, so that a write after free panics
    /// the allocation that finds it; `false` if there was none. Once this
    /// returns, the callback is not running and will not be called again.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true).on_corruption(|_| {}))?;
    /// assert!(pool.remove_corruption_callback());
    /// assert!(!pool.remove_corruption_callback());
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn remove_corruption_callback(&self) -> bool {
        self.inner.guards.replace_corruption_handler(None)
    }
}

impl Drop for MemoryPool {
    fn drop(&mut self) {
        if self.inner.config.report_leaks_on_drop {
            leaks::report_on_drop(&self.inner);
        }
        fork::unregister(&self.inner);
        // From here on no thread heap touches the pool.
        self.inner.caches.close();
    }
}

impl fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("MemoryPool")
            .field("kind", &self.kind())
            .field("size", &stats.size)
            .field("used", &stats.used)
            .field("live_allocations", &stats.live_allocations)
            .finish_non_exhaustive()
    }
}
