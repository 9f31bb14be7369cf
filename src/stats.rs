//! Statistics: what a pool reports, and the counters behind it.
//!
//! Every count is a [`Counter`]. The shared pool's are written only under
//! its lock and read by `stats()` inside a seqlock read, so a snapshot is
//! consistent. Fast-path counters live in each thread's cache, written only
//! by that thread, and are summed when statistics are asked for. A counter
//! with one writer at a time changes with a load and a store, never a
//! read-modify-write; the few that any thread may change (refusals, frees
//! without a heap, blocks in slabs) use one.
//!
//! Times are sampled by a [`SampledTimer`]: one operation in a period reads
//! the clock, because a clock read costs ten times a cached allocation.
//! Each path's period is set here: [`SHARED_TIMING_PERIOD`] for the shared
//! pool, [`FAST_TIMING_PERIOD`] for the thread caches.

use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One shared-pool operation in this many is timed.
pub(crate) const SHARED_TIMING_PERIOD: u64 = 64;
/// One thread-cache operation in this many is timed (per thread): a cached
/// operation is a few nanoseconds, so a clock read is sampled more rarely.
pub(crate) const FAST_TIMING_PERIOD: u64 = 1024;

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
    /// Times the pool purged free pages on its own, after its purge delay
    /// (see [`PoolConfig::purge_delay`](crate::PoolConfig::purge_delay));
    /// the pages `compact` purges are not counted here.
    pub purges: u64,
    /// Allocations the maximum size refused and the pool tried once more,
    /// after compacting and calling its memory-pressure callbacks (see
    /// [`MemoryPool::on_memory_pressure`](crate::MemoryPool::on_memory_pressure)).
    pub low_memory_retries: u64,
    /// Of those, the retries that succeeded.
    pub low_memory_recoveries: u64,
    /// Mean time of a sampled allocation, either path.
    pub avg_alloc_time: Duration,
    /// Mean time of a sampled free, either path.
    pub avg_free_time: Duration,
    /// Blocks a [checked](crate::PoolConfig::checked) pool found damaged
    /// and holds back for good, on both paths: not live, not free, and
    /// never handed out again. Their bytes stay in `used`.
    pub quarantined_blocks: usize,
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

/// The integers a [`Counter`] holds, each with its atomic from `crate::sync`.
pub(crate) trait CounterValue: Copy + PartialOrd {
    /// The atomic that holds the value.
    type Atomic;
    /// A new atomic holding `value`.
    fn atomic(value: Self) -> Self::Atomic;
    /// A `Relaxed` load.
    fn load(atomic: &Self::Atomic) -> Self;
    /// A `Relaxed` store.
    fn store(atomic: &Self::Atomic, value: Self);
    /// A `Release` store.
    fn store_release(atomic: &Self::Atomic, value: Self);
    /// A `Relaxed` fetch-add.
    fn fetch_add(atomic: &Self::Atomic, amount: Self);
    /// A `Release` fetch-add.
    fn fetch_add_release(atomic: &Self::Atomic, amount: Self);
    /// A `Relaxed` fetch-sub.
    fn fetch_sub(atomic: &Self::Atomic, amount: Self);
    /// `self + amount`, wrapping.
    fn plus(self, amount: Self) -> Self;
    /// `self - amount`, wrapping.
    fn minus(self, amount: Self) -> Self;
}

macro_rules! counter_value {
    ($value:ty, $atomic:ty) => {
        impl CounterValue for $value {
            type Atomic = $atomic;

            fn atomic(value: Self) -> $atomic {
                <$atomic>::new(value)
            }

            #[inline(always)]
            fn load(atomic: &$atomic) -> Self {
                atomic.load(Ordering::Relaxed)
            }

            #[inline(always)]
            fn store(atomic: &$atomic, value: Self) {
                atomic.store(value, Ordering::Relaxed);
            }

            #[inline(always)]
            fn store_release(atomic: &$atomic, value: Self) {
                atomic.store(value, Ordering::Release);
            }

            #[inline(always)]
            fn fetch_add(atomic: &$atomic, amount: Self) {
                atomic.fetch_add(amount, Ordering::Relaxed);
            }

            #[inline(always)]
            fn fetch_add_release(atomic: &$atomic, amount: Self) {
                atomic.fetch_add(amount, Ordering::Release);
            }

            #[inline(always)]
            fn fetch_sub(atomic: &$atomic, amount: Self) {
                atomic.fetch_sub(amount, Ordering::Relaxed);
            }

            #[inline(always)]
            fn plus(self, amount: Self) -> Self {
                self.wrapping_add(amount)
            }

            #[inline(always)]
            fn minus(self, amount: Self) -> Self {
                self.wrapping_sub(amount)
            }
        }
    };
}

counter_value!(u64, AtomicU64);
counter_value!(usize, AtomicUsize);

/// A statistic that any thread may read at any time (`Relaxed`: a counter
/// orders nothing, except where a reader must find one count no lower than
/// another: the `_release` methods publish everything the writer did
/// before, which a reader's `Acquire` fence after reading this count then
/// sees; see `CacheRegistry::totals`).
///
/// Most counters have one writer at a time: the thread whose cache they
/// belong to, or the holder of the lock that guards them. Those change with
/// [`add`](Self::add) and [`subtract`](Self::subtract), a load and a store,
/// which cost what plain memory does; a locked read-modify-write would wait
/// for the store buffer to drain. Counters that any thread changes use
/// [`add_concurrent`](Self::add_concurrent) and
/// [`subtract_concurrent`](Self::subtract_concurrent) instead, and never
/// the single-writer methods.
pub(crate) struct Counter<T: CounterValue>(T::Atomic);

impl<T: CounterValue> Counter<T> {
    /// A counter holding `value`.
    pub(crate) fn new(value: T) -> Self {
        Counter(T::atomic(value))
    }

    #[inline(always)]
    pub(crate) fn get(&self) -> T {
        T::load(&self.0)
    }

    /// Sets the value; one writer at a time.
    #[inline(always)]
    pub(crate) fn set(&self, value: T) {
        T::store(&self.0, value);
    }

    /// Adds `amount`; one writer at a time.
    #[inline(always)]
    pub(crate) fn add(&self, amount: T) {
        self.set(self.get().plus(amount));
    }

    /// Sets the value, publishing what the writer did before; one writer at
    /// a time.
    #[inline(always)]
    pub(crate) fn set_release(&self, value: T) {
        T::store_release(&self.0, value);
    }

    /// Adds `amount`, publishing what the writer did before; one writer at
    /// a time.
    #[inline(always)]
    pub(crate) fn add_release(&self, amount: T) {
        self.set_release(self.get().plus(amount));
    }

    /// Subtracts `amount`, which the counter holds; one writer at a time.
    #[inline(always)]
    pub(crate) fn subtract(&self, amount: T) {
        let value = self.get();
        debug_assert!(value >= amount, "counter underflow");
        self.set(value.minus(amount));
    }

    /// Raises the value to `value` if it is below; one writer at a time.
    #[inline(always)]
    pub(crate) fn raise_to(&self, value: T) {
        if value > self.get() {
            self.set(value);
        }
    }

    /// Adds `amount`, from any thread.
    #[inline]
    pub(crate) fn add_concurrent(&self, amount: T) {
        T::fetch_add(&self.0, amount);
    }

    /// Adds `amount`, from any thread, publishing what the thread did
    /// before.
    #[inline]
    pub(crate) fn add_concurrent_release(&self, amount: T) {
        T::fetch_add_release(&self.0, amount);
    }

    /// Subtracts `amount`, from any thread.
    #[inline]
    pub(crate) fn subtract_concurrent(&self, amount: T) {
        T::fetch_sub(&self.0, amount);
    }
}

impl<T: CounterValue + Default> Default for Counter<T> {
    fn default() -> Self {
        Counter::new(T::default())
    }
}

/// Counts operations of one kind, and times one in `PERIOD` of them: the
/// first, and every `PERIOD`th after it. One writer at a time. The count is
/// published with `Release` (a plain store on x86): a free's count then
/// carries its block's allocation, which `stats` relies on.
pub(crate) struct SampledTimer<const PERIOD: u64> {
    operations: Counter<u64>,
    total_nanos: Counter<u64>,
    samples: Counter<u64>,
}

impl<const PERIOD: u64> Default for SampledTimer<PERIOD> {
    fn default() -> Self {
        Self::new()
    }
}

/// An operation underway: its start, if it is one of the timed ones.
#[must_use = "a started operation is stopped by `finish` or `stop`"]
pub(crate) struct Timing(Option<Instant>);

impl<const PERIOD: u64> SampledTimer<PERIOD> {
    pub(crate) fn new() -> Self {
        SampledTimer { operations: Counter::new(0), total_nanos: Counter::new(0), samples: Counter::new(0) }
    }

    /// Starts the next operation, reading the clock if it is a timed one.
    #[inline(always)]
    pub(crate) fn start(&self) -> Timing {
        Timing((self.operations.get() % PERIOD == 0).then(Instant::now))
    }

    /// The number of the next operation, unless that one is to be timed:
    /// for a path that never reads the clock, and leaves timed operations
    /// to one that does. [`count_untimed`](Self::count_untimed) counts it.
    #[inline(always)]
    pub(crate) fn next_untimed(&self) -> Option<u64> {
        let number = self.operations.get();
        (number % PERIOD != 0).then_some(number)
    }

    /// Counts the operation that [`next_untimed`](Self::next_untimed)
    /// numbered `number`.
    #[inline(always)]
    pub(crate) fn count_untimed(&self, number: u64) {
        self.operations.set_release(number + 1);
    }

    /// Counts `timing`'s operation and, if it is timed, records how long
    /// it took.
    #[inline(always)]
    pub(crate) fn finish(&self, timing: Timing) {
        self.count_one();
        self.stop(timing);
    }

    /// Counts one operation, without stopping its clock: for counts that
    /// must change together with others (in one seqlock write), where the
    /// operation is started. [`stop`](Self::stop) stops it.
    #[inline(always)]
    pub(crate) fn count_one(&self) {
        self.operations.add_release(1);
    }

    /// Records how long `timing`'s operation took, if it is timed; after
    /// [`count_one`](Self::count_one).
    #[inline(always)]
    pub(crate) fn stop(&self, timing: Timing) {
        if let Some(started) = timing.0 {
            self.record(started.elapsed());
        }
    }

    #[cold]
    fn record(&self, elapsed: Duration) {
        self.total_nanos.add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        self.samples.add(1);
    }

    /// Operations counted.
    pub(crate) fn operations(&self) -> u64 {
        self.operations.get()
    }

    /// The timed operations' total nanoseconds, and how many there were.
    pub(crate) fn time(&self) -> (u64, u64) {
        (self.total_nanos.get(), self.samples.get())
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

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    #[test]
    fn counters_add_subtract_and_only_ever_raise_a_peak() {
        let counter = Counter::<usize>::new(5);
        counter.add(10);
        counter.subtract(3);
        assert_eq!(counter.get(), 12);
        counter.raise_to(7);
        assert_eq!(counter.get(), 12, "a lower value is no new peak");
        counter.raise_to(40);
        assert_eq!(counter.get(), 40);
        counter.set(1);
        assert_eq!(counter.get(), 1);

        let shared = Counter::<u64>::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        shared.add_concurrent(3);
                        shared.subtract_concurrent(1);
                    }
                });
            }
        });
        assert_eq!(shared.get(), 4 * 1000 * 2, "no concurrent change is lost");
    }

    #[test]
    fn a_sampled_timer_counts_every_operation_and_times_one_per_period() {
        const PERIOD: u64 = 4;
        let timer = SampledTimer::<PERIOD>::new();
        let mut timed = Vec::new();
        for number in 0..3 * PERIOD {
            match timer.next_untimed() {
                Some(untimed) => {
                    assert_eq!(untimed, number);
                    timer.count_untimed(untimed);
                }
                None => {
                    timed.push(number);
                    timer.finish(timer.start());
                }
            }
        }
        assert_eq!(timed, [0, PERIOD, 2 * PERIOD], "the first and every PERIOD-th are timed");
        assert_eq!(timer.operations(), 3 * PERIOD);
        assert_eq!(timer.time().1, 3, "one sample per timed operation");

        // Counted apart from the clock, as the shared pool does.
        let timing = timer.start();
        timer.count_one();
        timer.stop(timing);
        assert_eq!(timer.operations(), 3 * PERIOD + 1);
        assert_eq!(timer.time().1, 4, "operation 3 * PERIOD was a timed one");
    }

    #[test]
    fn the_mean_of_samples_spans_every_part() {
        assert_eq!(mean_duration(&[(300, 2), (100, 2)]), Duration::from_nanos(100));
        assert_eq!(mean_duration(&[(0, 0), (0, 0)]), Duration::ZERO, "no samples, no time");
    }
}
