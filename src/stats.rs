//! Statistics: what a pool reports, and the counters behind it.
//!
//! The shared pool's counters are written only under its lock (a `Relaxed`
//! load and store, never a read-modify-write) and read by `stats()` inside a
//! seqlock read, so a snapshot is consistent. Fast-path counters live in
//! each thread's cache, written only by that thread, and are summed when
//! statistics are asked for. Times are sampled: one operation in
//! [`TIMING_SAMPLE_PERIOD`] reads the clock, because a clock read costs ten
//! times a cached allocation.

use crate::sync::{AtomicU64, Ordering};
use std::time::Duration;

/// One operation in this many is timed.
pub(crate) const TIMING_SAMPLE_PERIOD: u64 = 64;

/// A snapshot of a pool's state and history.
///
/// How the figures relate:
///
/// - `size == used + free`: every mapped byte is in a live or a free block
///   of the shared pool.
/// - `used` is the bytes of the shared pool's live blocks, which are of two
///   kinds: the blocks callers got from [`allocate`](crate::MemoryPool::allocate)
///   (and from `allocate_fast` above 1 KiB), each rounded up to 16-byte
///   granules, and the caches' slabs, [`FastPathStats::slab_bytes`] in all.
///   So `used - fast.slab_bytes` is the bytes of the shared blocks callers
///   hold.
/// - `live_allocations` is the blocks handed to callers and not yet freed,
///   on both paths: the shared blocks callers hold plus the cache blocks
///   callers hold (`fast.allocations - fast.frees`). Slabs are not
///   allocations, and a block freed on any thread counts as freed at once,
///   even while it waits to return to its slab. Once a program has freed
///   everything it allocated, `live_allocations` is 0, whatever the caches
///   still hold.
/// - The caches hold `fast.slabs` slabs, `fast.slab_bytes` bytes, in which
///   `fast.cached_blocks` free blocks wait to be handed out.
///
/// The shared-pool figures are one consistent snapshot. The cache counters
/// are summed over threads as each thread last wrote them, so a snapshot
/// taken while other threads allocate or free may be off by the operations
/// in flight; taken while they are idle, it is exact.
///
/// # Examples
///
/// ```
/// let pool = lle_mempool::MemoryPool::new(256 * 1024)?;
/// let block = pool.allocate(100)?;
/// let event = pool.allocate_fast(48)?;
/// let stats = pool.stats();
/// assert_eq!(stats.size, 256 * 1024);
/// assert_eq!(stats.live_allocations, 2);
/// // 100 rounded up to 16-byte granules, and the slab the event came from.
/// assert_eq!(stats.used, 112 + stats.fast.slab_bytes);
/// assert_eq!((stats.fast.slabs, stats.fast.slab_bytes), (1, 64 * 1024));
/// unsafe {
///     pool.free(block)?;
///     pool.free_fast(event)?;
/// }
/// let stats = pool.stats();
/// assert_eq!(stats.live_allocations, 0);
/// // The slab stays in this thread's cache, ready for the next event.
/// assert_eq!(stats.used, stats.fast.slab_bytes);
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Bytes mapped, in all regions.
    pub size: usize,
    /// Bytes in live blocks of the shared pool: the shared blocks callers
    /// hold, granule-rounded, plus the caches' slabs
    /// ([`FastPathStats::slab_bytes`]).
    pub used: usize,
    /// Bytes in free blocks: `size - used`.
    pub free: usize,
    /// The largest free block, in bytes.
    pub largest_free_block: usize,
    /// Free blocks: maximal runs of free memory.
    pub free_blocks: usize,
    /// Blocks handed to callers and not yet freed, on both paths (shared
    /// blocks and cache blocks). The caches' slabs do not count: this is 0
    /// once every block allocated has been freed.
    pub live_allocations: usize,
    /// The most bytes ever in use at once.
    pub peak_used: usize,
    /// Allocations from the shared pool, ever, including the slabs taken
    /// by the caches.
    pub total_allocations: u64,
    /// Frees to the shared pool, ever, including the slabs the caches gave
    /// back.
    pub total_frees: u64,
    /// Allocations refused, on either path.
    pub failed_allocations: u64,
    /// Times the pool grew.
    pub expansions: u64,
    /// Times `compact` or `resize` gave memory back.
    pub compactions: u64,
    /// Mean time of a sampled allocation, either path.
    pub avg_alloc_time: Duration,
    /// Mean time of a sampled free, either path.
    pub avg_free_time: Duration,
    /// The per-thread caches.
    pub fast: FastPathStats,
}

/// The per-thread caches, summed over threads.
///
/// # Examples
///
/// ```
/// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
/// let block = pool.allocate_fast(64)?;
/// unsafe { pool.free_fast(block)? };
/// let fast = pool.stats().fast;
/// assert_eq!((fast.allocations, fast.frees), (1, 1));
/// assert!(fast.cached_blocks > 0);
/// assert_eq!(fast.slab_bytes, fast.slabs * 64 * 1024);
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FastPathStats {
    /// Blocks handed out by `allocate_fast` from the caches, ever.
    pub allocations: u64,
    /// Cache blocks given back, on any thread, ever. `allocations - frees`
    /// blocks are live.
    pub frees: u64,
    /// Of those, the ones freed by a thread other than the slab's owner.
    pub remote_frees: u64,
    /// Free blocks sitting in slabs, ready for the caches.
    pub cached_blocks: usize,
    /// Slabs held by the caches (or abandoned by exited threads): live
    /// blocks of the shared pool, which are not allocations.
    pub slabs: usize,
    /// Bytes of the shared pool in those slabs: `slabs` times the slab size
    /// (64 KiB). Part of [`PoolStats::used`].
    pub slab_bytes: usize,
}

/// Adds `amount` to a counter only its writer changes: a load and a store,
/// which cost what plain memory does, instead of a locked read-modify-write.
pub(crate) fn bump(counter: &AtomicU64, amount: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(amount), Ordering::Relaxed);
}

/// A sampled mean: total nanoseconds and the number of samples.
pub(crate) struct TimeSamples {
    pub(crate) total_nanos: AtomicU64,
    pub(crate) samples: AtomicU64,
}

impl TimeSamples {
    pub(crate) fn new() -> Self {
        TimeSamples { total_nanos: AtomicU64::new(0), samples: AtomicU64::new(0) }
    }

    /// Records one sample; called by the counters' single writer.
    pub(crate) fn record(&self, elapsed: Duration) {
        bump(&self.total_nanos, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        bump(&self.samples, 1);
    }

    pub(crate) fn read(&self) -> (u64, u64) {
        (self.total_nanos.load(Ordering::Relaxed), self.samples.load(Ordering::Relaxed))
    }
}

/// The mean of several `(total nanoseconds, samples)` pairs.
pub(crate) fn mean_duration(parts: &[(u64, u64)]) -> Duration {
    let (nanos, samples) =
        parts.iter().fold((0u128, 0u128), |(n, s), &(part_n, part_s)| (n + u128::from(part_n), s + u128::from(part_s)));
    nanos
        .checked_div(samples)
        .map_or(Duration::ZERO, |mean| Duration::from_nanos(u64::try_from(mean).unwrap_or(u64::MAX)))
}
