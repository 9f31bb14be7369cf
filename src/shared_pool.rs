//! The shared pool: first fit by address over mmap'd regions.
//!
//! Writers (allocate, free, expand, compact, resize) are serialised by one
//! mutex and bracket each change of the free-block indexes and counters with
//! the seqlock, so `stats` reads a consistent snapshot without ever blocking
//! them, and so does `check` unless writes keep overlapping its long audit,
//! when it audits under the lock instead. Readers find the regions through a
//! table published in an epoch-protected pointer: whatever a writer replaces
//! (a table, a region's description, a whole region) is retired through the
//! pool's own crossbeam-epoch `Collector` and only freed or unmapped once no
//! reader can still hold it. A trimmed region's free tail is cut off its
//! mapping at once: readers read descriptions and indexes, never the pool's
//! memory, and the slab map calls the tail foreign before it is cut.
//!
//! Growth never moves memory. The first region reserves address space up
//! front (`PoolConfig::reserve`) and growth commits it, so a pool that stays
//! within its reservation is one region that grows in place. Past the
//! reservation the newest region is grown in place (mremap without
//! `MREMAP_MAYMOVE`), and a new region is mapped when the kernel can't.

use crate::align::align_up;
use crate::biased_lock::BiasedMutex;
use crate::epoch_handles::EpochHandles;
use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::free_index::{GRANULE, LEAF_GRANULES, MAX_REGION_GRANULES};
use crate::listeners::{Listeners, ResizeEvent, ResizeReason};
use crate::os;
use crate::pressure::{MemoryPressure, PressureEvent, PressureReason};
use crate::purge::{PurgeSchedule, PURGE_MIN_RUN};
use crate::region::{find_region, MappedRegion, Region, RegionTable};
use crate::seqlock::{SeqLock, WriterToken};
use crate::slab_map::SlabMap;
use crate::stats::{Counter, SampledTimer, SHARED_TIMING_PERIOD};
use crate::sync::Ordering;
use crossbeam_epoch::{Atomic, Collector, Guard, Owned};
use std::ptr::NonNull;
use std::time::Duration;

/// The largest region, in bytes; bigger requests span several regions.
const MAX_REGION_BYTES: usize = MAX_REGION_GRANULES * GRANULE;
/// The largest alignment `allocate_aligned` accepts: alignment padding comes
/// out of a single region.
pub(crate) const MAX_ALIGNMENT: usize = 1 << 30;
/// Optimistic audits `check` tries before it audits under the writers'
/// lock. One audit of a large pool reads every word of its indexes, long
/// enough for a writer to overlap every attempt; a few attempts let a
/// quiet moment pass without blocking writers, and the lock bounds the
/// rest. Under the models one attempt, so that a single overlapping write
/// reaches the locked audit.
const CHECK_ATTEMPTS: u32 = if cfg!(lle_mempool_model) { 1 } else { 3 };

pub(crate) struct SharedPool {
    state: BiasedMutex<PoolState>,
    seqlock: SeqLock,
    table: Atomic<RegionTable>,
    collector: Collector,
    /// Registered handles of `collector` for the lock-free readers.
    reader_handles: EpochHandles,
    pub(crate) counters: SharedCounters,
    pub(crate) listeners: Listeners,
    /// The soft limit and the memory-pressure callbacks.
    pub(crate) pressure: MemoryPressure,
    /// Which memory is the pool's: every region's pages are marked here
    /// while the region holds them (see `slab_map`).
    pub(crate) map: SlabMap,
    max_size: Option<usize>,
    growth_factor: f64,
    /// The address space the first region reserves (whole pages; no more
    /// than its length means none).
    reserve: usize,
    /// Whether regions ask for transparent huge pages (see
    /// `PoolConfig::huge_pages`).
    huge_pages: bool,
}

pub(crate) struct PoolState {
    /// Sorted by address; the table readers see mirrors this.
    regions: Vec<MappedRegion>,
    /// The base of the region mapped last: the one growth tries to extend
    /// when no reservation has room.
    newest: Option<usize>,
    /// The seqlock's write token: kept here, behind the writers' lock, so
    /// that opening a write bracket takes holding that lock.
    writer: WriterToken,
    /// When frees next purge free pages on their own.
    purge: PurgeSchedule,
}

/// Counters written under the pool's lock and read inside a seqlock read.
#[derive(Default)]
pub(crate) struct SharedCounters {
    pub(crate) size: Counter<usize>,
    pub(crate) used: Counter<usize>,
    /// Of those, the blocks that back the thread caches' slabs.
    pub(crate) slabs: Counter<usize>,
    pub(crate) free_runs: Counter<usize>,
    pub(crate) peak_used: Counter<usize>,
    /// Allocations, ever, one in [`SHARED_TIMING_PERIOD`] timed.
    pub(crate) allocations: SampledTimer<SHARED_TIMING_PERIOD>,
    /// Frees, ever, timed as allocations are.
    pub(crate) frees: SampledTimer<SHARED_TIMING_PERIOD>,
    /// Changed by any thread, with a read-modify-write: refusals are rare.
    pub(crate) failed_allocations: Counter<u64>,
    pub(crate) expansions: Counter<u64>,
    pub(crate) compactions: Counter<u64>,
    /// Purges made after the purge delay (not by `compact`).
    pub(crate) purges: Counter<u64>,
}

impl SharedCounters {
    /// Live blocks, for callers and for cache slabs alike: every block is
    /// counted once when claimed and once when released, so the difference
    /// needs no counter of its own on the hot paths. Wrapping: a seqlock
    /// reader may read the two counts torn (a claim missed, a later release
    /// seen), which must not trap, since the reading is thrown away and
    /// retried.
    fn live_blocks(&self) -> usize {
        self.allocations.operations().wrapping_sub(self.frees.operations()) as usize
    }
}

/// A consistent reading of the shared pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedSnapshot {
    pub(crate) size: usize,
    pub(crate) used: usize,
    pub(crate) largest_free_block: usize,
    pub(crate) free_blocks: usize,
    pub(crate) live_blocks: usize,
    pub(crate) slabs: usize,
    pub(crate) peak_used: usize,
    pub(crate) total_allocations: u64,
    pub(crate) total_frees: u64,
    pub(crate) failed_allocations: u64,
    pub(crate) expansions: u64,
    pub(crate) compactions: u64,
    pub(crate) purges: u64,
    pub(crate) alloc_time: (u64, u64),
    pub(crate) free_time: (u64, u64),
}

/// Whom a shared-pool block is for. The statistics count the blocks handed
/// to callers apart from the slabs that back the thread caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockUse {
    Caller,
    CacheSlab,
}

/// What the shared pool's owner can give back when the maximum size
/// refuses an allocation, before the pool compacts and retries it: the
/// pool is told with a thin reference, one register on the hot path.
pub(crate) trait Relieve {
    /// Frees what can be freed without the program's help.
    fn relieve(&self);
}

/// Nothing to give back: the shared pool on its own, in its tests.
#[cfg(test)]
impl Relieve for () {
    fn relieve(&self) {}
}

/// What an allocation has to tell once the pool's lock is released.
#[derive(Clone, Copy)]
struct AfterAllocation {
    /// The pool grew for it.
    growth: Option<ResizeEvent>,
    /// It took the bytes in use above the soft limit.
    crossed_soft_limit: bool,
}

/// Applies a signed change to the count of free runs.
fn adjust_runs(counter: &Counter<usize>, added: usize, removed: usize) {
    counter.add(added);
    counter.subtract(removed);
}

/// Granules for `size` bytes.
pub(crate) fn granules_for(size: usize) -> Result<usize, PoolError> {
    let granules = size.checked_add(GRANULE - 1).ok_or(PoolError::SizeOverflow { size })? / GRANULE;
    if granules > MAX_REGION_GRANULES {
        return Err(PoolError::SizeOverflow { size });
    }
    Ok(granules)
}

impl SharedPool {
    /// A pool of `initial_size` bytes. `reserve` is the address space its
    /// first region reserves to grow into; `None` for the default, the
    /// maximum size or else as much as a region can hold. With `huge_pages`
    /// its regions ask for transparent huge pages.
    pub(crate) fn new(
        initial_size: usize,
        max_size: Option<usize>,
        growth_factor: f64,
        reserve: Option<usize>,
        purge_delay: Option<Duration>,
        huge_pages: bool,
    ) -> Result<Self, PoolError> {
        let (seqlock, writer) = SeqLock::new();
        let page = os::page_size();
        let reserve = reserve.or(max_size).unwrap_or(MAX_REGION_BYTES).min(MAX_REGION_BYTES) / page * page;
        let purge = PurgeSchedule::new(purge_delay, initial_size);
        let pool = SharedPool {
            state: BiasedMutex::new(PoolState { regions: Vec::new(), newest: None, writer, purge }),
            seqlock,
            table: Atomic::new(RegionTable::new(Vec::new())),
            collector: Collector::new(),
            reader_handles: EpochHandles::new(),
            counters: SharedCounters::default(),
            listeners: Listeners::new(),
            pressure: MemoryPressure::new(None),
            map: SlabMap::new()?,
            max_size,
            growth_factor,
            reserve,
            huge_pages,
        };
        if initial_size > 0 {
            let bytes =
                align_up(initial_size, os::page_size()).ok_or(PoolError::SizeOverflow { size: initial_size })?;
            if let Some(max) = max_size {
                if bytes > max {
                    return Err(PoolError::ExceedsMaxSize { requested: bytes, max });
                }
            }
            pool.locked(|state| pool.add_capacity(state, bytes))?;
            // The initial mapping is not an expansion.
            pool.counters.expansions.set(0);
        }
        Ok(pool)
    }

    /// Allocates `size` bytes (non-zero) aligned to `align` (a power of two,
    /// at most [`MAX_ALIGNMENT`]), growing the pool if no free block fits.
    /// When the maximum size refuses it, `relieve` gives back what its
    /// owner can spare, and the allocation is retried once (see
    /// [`refused`](Self::refused)).
    pub(crate) fn allocate(&self, size: usize, align: usize, relieve: &impl Relieve) -> Result<NonNull<u8>, PoolError> {
        self.allocate_for(size, align, BlockUse::Caller, Some(relieve))
    }

    /// As [`allocate`](Self::allocate), for a block that backs a cache slab;
    /// it goes back with [`free_slab`](Self::free_slab).
    pub(crate) fn allocate_slab(
        &self,
        size: usize,
        align: usize,
        relieve: &impl Relieve,
    ) -> Result<NonNull<u8>, PoolError> {
        self.allocate_for(size, align, BlockUse::CacheSlab, Some(relieve))
    }

    /// `relieve` is `None` for the retry itself, which is not retried.
    fn allocate_for<R: Relieve>(
        &self,
        size: usize,
        align: usize,
        block_use: BlockUse,
        relieve: Option<&R>,
    ) -> Result<NonNull<u8>, PoolError> {
        debug_assert!(size > 0 && align.is_power_of_two() && align <= MAX_ALIGNMENT);
        let result = self.allocate_inner(size, align, block_use);
        if result.is_err() {
            return self.refused(result, size, align, block_use, relieve);
        }
        result
    }

    /// After an allocation of `size` bytes was refused: if the maximum size
    /// refused it and it was not a retry, gives back what memory can be had
    /// (`relieve`, then a compaction), tells the memory-pressure callbacks,
    /// which may free more, and tries the allocation once more. Runs above
    /// every locked section, so nothing here takes the lock recursively.
    /// Every refusal is counted here. (The retry goes through
    /// [`allocate_for`](Self::allocate_for) rather than beside it: a second
    /// caller of the allocation itself would keep it from being inlined
    /// there, which costs the hot path.)
    #[cold]
    #[inline(never)]
    fn refused<R: Relieve>(
        &self,
        refused: Result<NonNull<u8>, PoolError>,
        size: usize,
        align: usize,
        block_use: BlockUse,
        relieve: Option<&R>,
    ) -> Result<NonNull<u8>, PoolError> {
        match (refused, relieve) {
            (Err(PoolError::ExceedsMaxSize { .. }), Some(relieve)) => {
                relieve.relieve();
                // A compaction the heap refuses memory for only relieves less.
                let _ = self.compact();
                self.report_pressure(PressureReason::MaxSize { requested: size });
                self.pressure.retries.add_concurrent(1);
                let retried = self.allocate_for(size, align, block_use, None::<&R>);
                if retried.is_ok() {
                    self.pressure.recoveries.add_concurrent(1);
                }
                retried
            }
            (refused, _) => {
                self.counters.failed_allocations.add_concurrent(1);
                refused
            }
        }
    }

    fn allocate_inner(&self, size: usize, align: usize, block_use: BlockUse) -> Result<NonNull<u8>, PoolError> {
        let granules = granules_for(size)?;
        let padding = align.max(GRANULE) / GRANULE - 1;
        let wanted = granules + padding;
        if wanted > MAX_REGION_GRANULES {
            return Err(PoolError::SizeOverflow { size });
        }
        // The section returns only the block: anything it returns is copied
        // out through memory, and a narrow field or padding in the copy
        // would stall on the caller's pending stores (see `biased_lock`).
        // What to tell once the lock is released: rare, so one test for
        // all of it on the way out.
        let mut after: Option<AfterAllocation> = None;
        let block = self.locked(|state| {
            let timing = self.counters.allocations.start();
            if let Some(block) = self.claim_first_fit(state, granules, wanted, align, block_use) {
                self.counters.allocations.stop(timing);
                if self.pressure.crossed_by(self.counters.used.get(), granules * GRANULE) {
                    after = Some(AfterAllocation { growth: None, crossed_soft_limit: true });
                }
                return Ok(Some(block));
            }
            let old_size = self.counters.size.get();
            self.grow(state, wanted * GRANULE)?;
            let growth = ResizeEvent { old_size, new_size: self.counters.size.get(), reason: ResizeReason::AutoExpand };
            let block = self.claim_first_fit(state, granules, wanted, align, block_use);
            let crossed_soft_limit =
                block.is_some() && self.pressure.crossed_by(self.counters.used.get(), granules * GRANULE);
            after = Some(AfterAllocation { growth: Some(growth), crossed_soft_limit });
            Ok(block)
        })?;
        if let Some(after) = after {
            // Growth made a free run of at least `wanted` granules.
            debug_assert!(after.growth.is_none() || block.is_some());
            self.notify_after_allocation(after);
        }
        block.ok_or(PoolError::OutOfMemory { requested: size, errno: libc::ENOMEM })
    }

    /// Tells the resize listeners of an allocation's growth, then the
    /// memory-pressure callbacks of its crossing the soft limit, with the
    /// lock not held.
    #[cold]
    #[inline(never)]
    fn notify_after_allocation(&self, after: AfterAllocation) {
        if let Some(growth) = after.growth {
            self.listeners.notify(growth);
        }
        if after.crossed_soft_limit {
            self.report_pressure(PressureReason::SoftLimit);
        }
    }

    /// Calls the memory-pressure callbacks, with the lock not held.
    #[cold]
    #[inline(never)]
    pub(crate) fn report_pressure(&self, reason: PressureReason) {
        let event = PressureEvent {
            used: self.usage().1,
            soft_limit: self.pressure.soft_limit(),
            max_size: self.max_size,
            reason,
        };
        self.pressure.notify(event);
    }

    /// Claims `granules` granules, aligned to `align`, out of the leftmost
    /// free run of `wanted` (granules plus worst-case alignment padding),
    /// and counts the allocation.
    fn claim_first_fit(
        &self,
        state: &PoolState,
        granules: usize,
        wanted: usize,
        align: usize,
        block_use: BlockUse,
    ) -> Option<NonNull<u8>> {
        for region in &state.regions {
            // SAFETY: `state` is the pool's lock, held: no other thread
            // writes any region's index.
            let Some(run_start) = (unsafe { region.index.find_first_fit(wanted) }) else { continue };
            let run_address = region.address_of(run_start).as_ptr() as usize;
            let aligned = run_address.next_multiple_of(align.max(GRANULE));
            let first = region.granule_of(aligned);
            debug_assert!(first + granules <= run_start + wanted);
            {
                let _write = self.seqlock.write(&state.writer);
                // SAFETY: as above, the lock is held.
                let neighbours = unsafe { region.index.claim(first, granules) };
                adjust_runs(
                    &self.counters.free_runs,
                    usize::from(neighbours.before) + usize::from(neighbours.after),
                    1,
                );
                let bytes = granules * GRANULE;
                self.counters.used.add(bytes);
                if block_use == BlockUse::CacheSlab {
                    self.counters.slabs.add(1);
                }
                self.counters.allocations.count_one();
                self.counters.peak_used.raise_to(self.counters.used.get());
            }
            // Outside the write bracket: readers need not wait on a
            // system call.
            region.fault_in_ahead((first + granules) * GRANULE);
            return Some(region.address_of(first));
        }
        None
    }

    /// Runs `section` under the writers' lock. A thread already inside (a
    /// signal handler, an allocator that calls back into the pool) gets
    /// [`PoolError::Reentered`].
    #[inline(always)]
    fn locked<R>(&self, section: impl FnOnce(&mut PoolState) -> Result<R, PoolError>) -> Result<R, PoolError> {
        self.state.with(section)?
    }

    /// Where `addr` is in the pool: the region and granule of the live block
    /// starting there, or why there is none.
    fn locate_block(state: &PoolState, addr: usize) -> Result<(usize, usize), PoolError> {
        let index = find_region(&state.regions, addr).ok_or(PoolError::ForeignPointer { addr })?;
        let region = &state.regions[index];
        let granule = region.granule_of(addr);
        region.index.prefetch_tree_for(granule);
        if addr % GRANULE == 0 && region.index.is_block_start(granule) {
            Ok((index, granule))
        } else if region.index.is_free(granule) {
            Err(PoolError::NotAllocated { addr })
        } else {
            Err(PoolError::InteriorPointer { addr })
        }
    }

    /// The bytes usable at the live block that starts at `addr`.
    pub(crate) fn block_size(&self, addr: usize) -> Result<usize, PoolError> {
        self.locked(|state| {
            let (region, granule) = Self::locate_block(state, addr)?;
            Ok(state.regions[region].index.block_granules(granule) * GRANULE)
        })
    }

    /// Frees the live block at `addr`.
    pub(crate) fn free(&self, addr: usize) -> Result<(), PoolError> {
        self.free_as(addr, BlockUse::Caller)
    }

    /// Frees a block from [`allocate_slab`](Self::allocate_slab).
    pub(crate) fn free_slab(&self, addr: usize) -> Result<(), PoolError> {
        self.free_as(addr, BlockUse::CacheSlab)
    }

    fn free_as(&self, addr: usize, block_use: BlockUse) -> Result<(), PoolError> {
        self.locked(|state| {
            let timing = self.counters.frees.start();
            let (region_index, first) = Self::locate_block(state, addr)?;
            let region = &state.regions[region_index];
            let granules = region.index.block_granules(first);
            {
                let _write = self.seqlock.write(&state.writer);
                // SAFETY: `state` is the pool's lock, held.
                let neighbours = unsafe { region.index.release(first, granules) };
                adjust_runs(
                    &self.counters.free_runs,
                    1,
                    usize::from(neighbours.before) + usize::from(neighbours.after),
                );
                self.counters.used.subtract(granules * GRANULE);
                if block_use == BlockUse::CacheSlab {
                    self.counters.slabs.subtract(1);
                }
                self.counters.frees.count_one();
            }
            self.counters.frees.stop(timing);
            if state.purge.count_freed(granules * GRANULE) {
                self.purge_if_due(state);
            }
            Ok(())
        })
    }

    /// Purges free pages if the purge delay has passed since the last
    /// purge; called by the free that spent the schedule's budget. The
    /// walk reads one bit per KiB of the pool, plus one `madvise` per free
    /// run it purges; the threshold makes it rare (see `purge`).
    #[cold]
    #[inline(never)]
    fn purge_if_due(&self, state: &mut PoolState) {
        if state.purge.purge_now(self.counters.size.get()) {
            self.purge_free_pages(state, PURGE_MIN_RUN);
            let _write = self.seqlock.write(&state.writer);
            self.counters.purges.add(1);
        }
    }

    /// Resizes the live block at `addr` to `new_size` bytes (non-zero)
    /// without moving it: growing takes the free granules right after the
    /// block, shrinking frees its tail. Returns the block's size in bytes
    /// afterwards, or `None`, with the pool unchanged, when the granules a
    /// growth needs are not all free.
    pub(crate) fn resize_in_place(&self, addr: usize, new_size: usize) -> Result<Option<usize>, PoolError> {
        if new_size == 0 {
            return Err(PoolError::ZeroSize);
        }
        let wanted = granules_for(new_size)?;
        let mut crossed_soft_limit = false;
        let resized = self.locked(|state| {
            let (region_index, first) = Self::locate_block(state, addr)?;
            let index = &state.regions[region_index].index;
            let current = index.block_granules(first);
            let end = first + current;
            if wanted > current {
                let extra = wanted - current;
                if index.free_run_from(end, extra) < extra {
                    return Ok(None);
                }
                let _write = self.seqlock.write(&state.writer);
                // SAFETY: `state` is the pool's lock, held.
                let neighbours = unsafe { index.extend_block(end, extra) };
                // The free run the block grew into is used up unless some of
                // it is left after the block.
                if !neighbours.after {
                    self.counters.free_runs.subtract(1);
                }
                self.counters.used.add(extra * GRANULE);
                self.counters.peak_used.raise_to(self.counters.used.get());
                crossed_soft_limit = self.pressure.crossed_by(self.counters.used.get(), extra * GRANULE);
            } else if wanted < current {
                let released = current - wanted;
                let _write = self.seqlock.write(&state.writer);
                // SAFETY: `state` is the pool's lock, held.
                let neighbours = unsafe { index.truncate_block(end, released) };
                // The freed tail is a new free run unless it joined the one
                // after the block.
                if !neighbours.after {
                    self.counters.free_runs.add(1);
                }
                self.counters.used.subtract(released * GRANULE);
            }
            Ok(Some(wanted * GRANULE))
        });
        if crossed_soft_limit {
            self.report_pressure(PressureReason::SoftLimit);
        }
        resized
    }

    /// Grows the pool (by the growth factor, within the maximum size) so that
    /// a free run of at least `needed` bytes exists.
    fn grow(&self, state: &mut PoolState, needed: usize) -> Result<(), PoolError> {
        let page = os::page_size();
        let size = self.counters.size.get();
        let overflow = PoolError::SizeOverflow { size: needed };
        let needed = align_up(needed, page).ok_or(overflow.clone())?;
        let by_factor = (size as f64 * (self.growth_factor - 1.0)).min(MAX_REGION_BYTES as f64) as usize;
        let mut additional = align_up(needed.max(by_factor), page).ok_or(overflow.clone())?;
        if let Some(max) = self.max_size {
            let room = max.saturating_sub(size) / page * page;
            if needed > room {
                return Err(PoolError::ExceedsMaxSize { requested: size.saturating_add(needed), max });
            }
            additional = additional.min(room);
        }
        self.add_capacity(state, additional)
    }

    /// Grows the pool by `additional` bytes (page multiple, within the
    /// maximum), in place if the kernel allows, else with new regions. A
    /// single free run of `additional` bytes results, if it fits one region.
    /// All or nothing: every allocation it needs is made before the state
    /// changes, so running out of memory leaves the pool as it was.
    fn add_capacity(&self, state: &mut PoolState, additional: usize) -> Result<(), PoolError> {
        debug_assert!(additional % os::page_size() == 0);
        let handle = self.collector.register();
        let guard = handle.pin();
        if self.grow_in_place(state, additional, &guard)? {
            return Ok(());
        }
        let count = additional.div_ceil(MAX_REGION_BYTES);
        let refused = || out_of_memory(additional);
        let mut mapped = Vec::new();
        mapped.try_reserve_exact(count).map_err(|_| refused())?;
        state.regions.try_reserve(count).map_err(|_| refused())?;
        let table = Self::reserve_table(state.regions.len() + count)?;
        let mut remaining = additional;
        // On a refusal, the regions mapped so far are dropped, which unmaps
        // them: they were never published.
        while remaining > 0 {
            let len = remaining.min(MAX_REGION_BYTES);
            // Only the first region reserves: the pool is then one region
            // for as long as the reservation lasts, and past it growth maps
            // what it needs.
            let reserve = if state.regions.is_empty() && mapped.is_empty() { self.reserve } else { 0 };
            mapped.push(MappedRegion::map(len, reserve, self.huge_pages)?);
            remaining -= len;
        }
        self.mark_regions(&mapped)?;
        let _write = self.seqlock.write(&state.writer);
        for region in mapped {
            state.newest = Some(region.start());
            self.counters.free_runs.add(1);
            let at = state.regions.partition_point(|existing| existing.start() < region.start());
            state.regions.insert(at, region);
        }
        self.count_growth(additional);
        self.publish(state, table, &guard);
        Ok(())
    }

    /// Marks freshly mapped regions as the pool's in the map, all or none.
    fn mark_regions(&self, regions: &[MappedRegion]) -> Result<(), PoolError> {
        for (marked, region) in regions.iter().enumerate() {
            if let Err(error) = self.map.mark_shared(region.start(), region.len()) {
                for region in &regions[..marked] {
                    self.map.clear_shared(region.start(), region.len());
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Counts `additional` bytes of growth. Called inside the write bracket
    /// that publishes the grown regions: a reader that saw the new regions
    /// with the old size would find the pool inconsistent.
    fn count_growth(&self, additional: usize) {
        self.counters.size.add(additional);
        self.counters.expansions.add(1);
    }

    /// Grows a region by `additional` bytes where it stands: the lowest
    /// whose reservation has room for it, which only commits pages, else
    /// the newest, which the kernel may extend. `Ok(false)` when it can't
    /// (too large, or the kernel has no room after it or no memory to
    /// commit), with nothing changed.
    fn grow_in_place(&self, state: &mut PoolState, additional: usize, guard: &Guard) -> Result<bool, PoolError> {
        let reserved = state.regions.iter().position(|region| region.has_room_for(region.len() + additional));
        let newest =
            || state.newest.and_then(|newest| state.regions.iter().position(|region| region.start() == newest));
        let Some(position) = reserved.or_else(newest) else { return Ok(false) };
        let old_len = state.regions[position].len();
        let new_len = old_len + additional;
        if new_len > MAX_REGION_BYTES {
            return Ok(false);
        }
        let table = Self::reserve_table(state.regions.len())?;
        let region = &mut state.regions[position];
        if !region.grow_in_place(new_len) {
            return Ok(false);
        }
        // The index is built after growing the mapping, not before: past a
        // reservation the kernel refuses most in-place growth (new mappings
        // go just below the newest), and an index built for nothing would
        // double the cost of growing. Rolling back costs one mremap or
        // decommit in the rare case.
        let grown = match region.with_len(new_len) {
            Ok(grown) => Box::new(grown),
            Err(_) => {
                // SAFETY: the tail was added just now, is free and was never
                // published: cutting it off restores the mapping as it was.
                unsafe { region.cut_back(old_len) };
                return Err(out_of_memory(additional));
            }
        };
        if let Err(error) = self.map.mark_shared(region.end(), additional) {
            // SAFETY: as above: the tail was added just now and is unknown
            // to anyone.
            unsafe { region.cut_back(old_len) };
            return Err(error);
        }
        let joins_free_tail = region.index.trailing_free() > 0;
        let _write = self.seqlock.write(&state.writer);
        if !joins_free_tail {
            self.counters.free_runs.add(1);
        }
        self.count_growth(additional);
        let old = region.replace_description(grown);
        self.publish(state, table, guard);
        self.retire(old, guard);
        Ok(true)
    }

    /// An empty table with room for `regions` regions, reserved before the
    /// state changes so that publishing it cannot fail halfway.
    fn reserve_table(regions: usize) -> Result<Vec<*const Region>, PoolError> {
        let mut table = Vec::new();
        table.try_reserve_exact(regions).map_err(|_| out_of_memory(regions * std::mem::size_of::<*const Region>()))?;
        Ok(table)
    }

    /// Makes readers see `state.regions`, through `table` (empty, from
    /// [`reserve_table`](Self::reserve_table) with room for them all).
    /// Called inside a write bracket.
    fn publish(&self, state: &PoolState, mut table: Vec<*const Region>, guard: &Guard) {
        debug_assert!(table.is_empty() && table.capacity() >= state.regions.len());
        table.extend(state.regions.iter().map(|region| &**region as *const Region));
        let old = self.table.swap(Owned::new(RegionTable::new(table)), Ordering::AcqRel, guard);
        // SAFETY: the old table is unreachable for new readers now, and the
        // collector frees it only after every reader pinned before this point
        // has unpinned.
        unsafe { guard.defer_destroy(old) };
    }

    /// Frees a region description once no reader can hold it.
    fn retire(&self, region: Box<Region>, guard: &Guard) {
        // SAFETY: `region` was removed from the state and the published table
        // before this call; readers that loaded the older table are pinned,
        // and the closure runs only after all of them unpin. A description
        // owns its index only: the mapping stays with the `MappedRegion`.
        unsafe { guard.defer_unchecked(move || drop(region)) };
    }

    /// Unmaps a removed region, and frees its description, once no reader
    /// can hold it. Its contents are purged at once, so the resident memory
    /// drops now.
    fn retire_region(&self, region: MappedRegion, guard: &Guard) {
        // SAFETY: the region is free pool memory, no longer part of the
        // state or of the published table; nobody reads free memory.
        unsafe { region.purge(region.address_of(0), region.len()) };
        // SAFETY: as in `retire`: the region's description, which dies with
        // it, was removed before this call.
        unsafe { guard.defer_unchecked(move || drop(region)) };
    }

    /// Grows the pool by `additional` bytes (rounded up to pages).
    pub(crate) fn expand(&self, additional: usize) -> Result<(), PoolError> {
        if additional == 0 {
            return Ok(());
        }
        let additional = align_up(additional, os::page_size()).ok_or(PoolError::SizeOverflow { size: additional })?;
        let (old_size, new_size) = self.locked(|state| {
            let old_size = self.counters.size.get();
            let new_size = old_size.checked_add(additional).ok_or(PoolError::SizeOverflow { size: additional })?;
            if let Some(max) = self.max_size {
                if new_size > max {
                    return Err(PoolError::ExceedsMaxSize { requested: new_size, max });
                }
            }
            self.add_capacity(state, additional)?;
            Ok((old_size, new_size))
        })?;
        self.listeners.notify(ResizeEvent { old_size, new_size, reason: ResizeReason::Expand });
        Ok(())
    }

    /// What is left of `region` once `bytes` (page multiple, at most its
    /// releasable tail) are cut off its end: `None` for nothing. Built
    /// before the cut, so that the heap refusing the shorter index changes
    /// nothing.
    fn trimmed(region: &Region, bytes: usize) -> Result<Option<Box<Region>>, PoolError> {
        debug_assert!(bytes > 0 && bytes <= region.releasable_tail());
        if bytes == region.len() {
            return Ok(None);
        }
        let remainder = region.with_len(region.len() - bytes).map_err(|_| out_of_memory(region.len() - bytes))?;
        Ok(Some(Box::new(remainder)))
    }

    /// Cuts `bytes` off the end of region `position`, replacing it with
    /// `remainder` from [`trimmed`](Self::trimmed). Called inside a write
    /// bracket.
    fn trim_region(
        &self,
        state: &mut PoolState,
        position: usize,
        bytes: usize,
        remainder: Option<Box<Region>>,
        guard: &Guard,
    ) {
        let region = &state.regions[position];
        debug_assert!(bytes > 0 && bytes <= region.releasable_tail());
        let trailing_free = region.index.trailing_free() * GRANULE;
        if trailing_free == bytes {
            self.counters.free_runs.subtract(1);
        }
        self.counters.size.subtract(bytes);
        // Before the memory is retired: once unmapped, a foreign mapping may
        // take its addresses, and they must read as foreign then.
        self.map.clear_shared(region.end() - bytes, bytes);
        match remainder {
            None => {
                debug_assert_eq!(bytes, region.len());
                let old = state.regions.remove(position);
                if state.newest == Some(old.start()) {
                    state.newest = None;
                }
                self.retire_region(old, guard);
            }
            Some(trimmed) => {
                debug_assert_eq!(trimmed.len() + bytes, region.len());
                let region = &mut state.regions[position];
                // SAFETY: the tail is free (it lies in the releasable tail),
                // the remainder published next leaves it out, and the slab
                // map calls it foreign already.
                unsafe { region.cut_back(trimmed.len()) };
                let old = region.replace_description(trimmed);
                self.retire(old, guard);
            }
        }
    }

    /// Gives free memory back to the OS: free tails of regions and whole
    /// free regions are unmapped, and whole free pages inside free blocks are
    /// purged. Returns the bytes unmapped (by which `size` shrank).
    pub(crate) fn compact(&self) -> Result<usize, PoolError> {
        let handle = self.collector.register();
        let (old_size, new_size) = self.locked(|state| {
            let old_size = self.counters.size.get();
            {
                let table = Self::reserve_table(state.regions.len())?;
                let guard = handle.pin();
                let _write = self.seqlock.write(&state.writer);
                let mut position = 0;
                while position < state.regions.len() {
                    let tail = state.regions[position].releasable_tail();
                    // A region whose shorter index the heap refuses keeps its
                    // tail: compaction gives back what it can.
                    let cut = if tail > 0 { Self::trimmed(&state.regions[position], tail).ok() } else { None };
                    let removes_region = matches!(cut, Some(None));
                    if let Some(remainder) = cut {
                        self.trim_region(state, position, tail, remainder, &guard);
                    }
                    if !removes_region {
                        position += 1;
                    }
                }
                if self.counters.size.get() != old_size {
                    self.publish(state, table, &guard);
                    self.counters.compactions.add(1);
                }
            }
            self.purge_free_pages(state, os::page_size());
            state.purge.restart(os::coarse_monotonic_now(), self.counters.size.get());
            Ok((old_size, self.counters.size.get()))
        })?;
        Self::collect_garbage(&handle);
        self.listeners.notify(ResizeEvent { old_size, new_size, reason: ResizeReason::Compact });
        Ok(old_size - new_size)
    }

    /// Purges whole pages inside free blocks of at least `min_run` bytes (a
    /// multiple of the 1 KiB leaf: the walk sees wholly free leaves).
    /// Called with the lock held, so no allocation can claim a page while it
    /// is purged.
    fn purge_free_pages(&self, state: &PoolState, min_run: usize) {
        let page = os::page_size();
        let leaf_bytes = LEAF_GRANULES * GRANULE;
        debug_assert!(min_run > 0 && min_run % leaf_bytes == 0);
        for region in &state.regions {
            region.index.for_each_free_leaf_run(min_run / leaf_bytes, |first, count| {
                let start = region.address_of(first).as_ptr() as usize;
                let end = start + count * GRANULE;
                let (page_start, page_end) = (start.next_multiple_of(page), end / page * page);
                if page_end > page_start {
                    // SAFETY: the pages lie inside a free run of a live
                    // mapping, and the lock keeps them free meanwhile.
                    unsafe { region.purge(NonNull::new_unchecked(page_start as *mut u8), page_end - page_start) };
                }
            });
        }
    }

    /// Nudges the collector so retired memory is freed soon rather than at
    /// some later operation.
    fn collect_garbage(handle: &crossbeam_epoch::LocalHandle) {
        for _ in 0..3 {
            handle.pin().flush();
        }
    }

    /// Grows or shrinks the pool to `new_size` bytes, rounded up to pages.
    /// All or nothing: on error the pool is exactly as before.
    pub(crate) fn resize(&self, new_size: usize) -> Result<(), PoolError> {
        let target = align_up(new_size, os::page_size()).ok_or(PoolError::SizeOverflow { size: new_size })?;
        let handle = self.collector.register();
        let old_size = self.locked(|state| {
            let old_size = self.counters.size.get();
            if target > old_size {
                if let Some(max) = self.max_size {
                    if target > max {
                        return Err(PoolError::ExceedsMaxSize { requested: target, max });
                    }
                }
                self.add_capacity(state, target - old_size)?;
            } else if target < old_size {
                let used = self.counters.used.get();
                if target < used {
                    return Err(PoolError::ShrinkBelowUsed { requested: new_size, used });
                }
                // Plan first, from the highest addresses down, so that a refusal
                // changes nothing.
                let mut excess = old_size - target;
                let refused = || out_of_memory(old_size - target);
                let mut plan = Vec::new();
                plan.try_reserve_exact(state.regions.len()).map_err(|_| refused())?;
                for (position, region) in state.regions.iter().enumerate().rev() {
                    if excess == 0 {
                        break;
                    }
                    let take = region.releasable_tail().min(excess);
                    if take > 0 {
                        plan.push((position, take));
                        excess -= take;
                    }
                }
                if excess > 0 {
                    return Err(PoolError::ShrinkBlocked { requested: new_size, reachable: target + excess });
                }
                // Everything the cuts allocate, before the first cut.
                let table = Self::reserve_table(state.regions.len())?;
                let mut cuts = Vec::new();
                cuts.try_reserve_exact(plan.len()).map_err(|_| refused())?;
                for (position, take) in plan {
                    cuts.push((position, take, Self::trimmed(&state.regions[position], take)?));
                }
                let guard = handle.pin();
                let _write = self.seqlock.write(&state.writer);
                // Highest positions first, so removals don't shift pending ones.
                for (position, take, remainder) in cuts {
                    self.trim_region(state, position, take, remainder, &guard);
                }
                self.publish(state, table, &guard);
                self.counters.compactions.add(1);
            }
            Ok(old_size)
        })?;
        Self::collect_garbage(&handle);
        self.listeners.notify(ResizeEvent { old_size, new_size: target, reason: ResizeReason::Resize });
        Ok(())
    }

    /// Holds the pool's lock across a `fork()`, excluding every thread.
    #[cfg(not(lle_mempool_model))]
    pub(crate) fn hold_for_fork(&self) -> crate::biased_lock::ForkHold<'_, PoolState> {
        self.state.hold_for_fork()
    }

    /// The regions' `(start, length)`, in address order.
    pub(crate) fn regions(&self) -> Vec<(usize, usize)> {
        let handle = self.collector.register();
        let guard = handle.pin();
        self.with_regions(&guard, |regions| regions.iter().map(|region| (region.start(), region.len())).collect())
    }

    /// The pool's size and the bytes in use, read consistently without
    /// blocking writers. Cheaper than [`snapshot`](Self::snapshot): it reads
    /// two counters and no region, so it needs no epoch guard (pinning one
    /// costs more than everything else here).
    pub(crate) fn usage(&self) -> (usize, usize) {
        let counters = &self.counters;
        self.seqlock.read(|| (counters.size.get(), counters.used.get()))
    }

    /// A consistent snapshot, read without blocking writers.
    pub(crate) fn snapshot(&self) -> SharedSnapshot {
        self.reader_handles.with_handle(&self.collector, |handle| self.snapshot_pinned(&handle.pin()))
    }

    fn snapshot_pinned(&self, guard: &Guard) -> SharedSnapshot {
        let counters = &self.counters;
        self.seqlock.read(|| {
            let size = counters.size.get();
            let used = counters.used.get();
            SharedSnapshot {
                size,
                used,
                largest_free_block: self.with_regions(guard, |regions| {
                    regions.iter().map(|region| region.index.longest_free() * GRANULE).max().unwrap_or(0)
                }),
                free_blocks: counters.free_runs.get(),
                live_blocks: counters.live_blocks(),
                slabs: counters.slabs.get(),
                peak_used: counters.peak_used.get(),
                total_allocations: counters.allocations.operations(),
                total_frees: counters.frees.operations(),
                failed_allocations: counters.failed_allocations.get(),
                expansions: counters.expansions.get(),
                compactions: counters.compactions.get(),
                purges: counters.purges.get(),
                alloc_time: counters.allocations.time(),
                free_time: counters.frees.time(),
            }
        })
    }

    fn with_regions<T>(&self, guard: &Guard, read: impl FnOnce(&[&Region]) -> T) -> T {
        let table = self.table.load(Ordering::Acquire, guard);
        // SAFETY: the table pointer is never null after construction; the
        // table and its regions are retired through the collector, so they
        // stay alive while `guard` is pinned.
        let table = unsafe { table.deref() };
        table.witness.reading();
        // SAFETY: `*const Region` and `&Region` have the same layout; every
        // pointer in the table is non-null, aligned, and names a region that
        // stays alive while `guard` is pinned, as above. Viewing them as
        // references allocates nothing, so readers never need memory.
        let regions: &[&Region] =
            unsafe { std::slice::from_raw_parts(table.regions.as_ptr().cast::<&Region>(), table.regions.len()) };
        for region in regions {
            region.witness.reading();
        }
        read(regions)
    }

    /// Recomputes free space, free blocks and live blocks from the bitmaps
    /// and checks them against the counters, and every tree entry and
    /// whole-leaf bit of every index against the bitmaps (a recount of
    /// free space, and more).
    ///
    /// Reads without blocking writers, pinned for one attempt at a time;
    /// after [`CHECK_ATTEMPTS`] attempts that writes overlapped, audits
    /// under the writers' lock, so it finishes under any write load.
    pub(crate) fn check(&self) -> Result<(), PoolError> {
        let optimistic = self.reader_handles.with_handle(&self.collector, |handle| {
            self.seqlock.try_read(CHECK_ATTEMPTS, || self.with_regions(&handle.pin(), |regions| self.audit(regions)))
        });
        if let Some(verdict) = optimistic {
            return verdict;
        }
        // The lock keeps every writer out, so the regions it guards are the
        // published ones and nothing is retired meanwhile: no epoch guard is
        // needed.
        self.locked(|state| {
            let regions: Vec<&Region> = state.regions.iter().map(|region| &**region).collect();
            self.audit(&regions)
        })
    }

    /// The audit behind [`check`](Self::check), over `regions` in address
    /// order. Inside a seqlock read it may see torn values, and then only
    /// reports a discrepancy that the read throws away.
    fn audit(&self, regions: &[&Region]) -> Result<(), PoolError> {
        let counters = &self.counters;
        let corrupted = |reason: String| PoolError::Corrupted { reason };
        let (mut size, mut free, mut runs, mut live) = (0usize, 0usize, 0usize, 0usize);
        let mut previous_end = 0usize;
        for region in regions {
            if region.start() < previous_end {
                return Err(corrupted(format!("region at {:#x} overlaps its predecessor", region.start())));
            }
            previous_end = region.end();
            let (region_free, region_runs, region_live) = region.index.audit()?;
            size += region.len();
            free += region_free * GRANULE;
            runs += region_runs;
            live += region_live;
        }
        let expect = |what: &str, counted: usize, recorded: usize| {
            if counted == recorded {
                Ok(())
            } else {
                Err(corrupted(format!("{what}: the blocks say {counted}, the counters say {recorded}")))
            }
        };
        expect("size", size, counters.size.get())?;
        expect("bytes in use", size - free, counters.used.get())?;
        expect("free blocks", runs, counters.free_runs.get())?;
        expect("live blocks", live, counters.live_blocks())?;
        let slabs = counters.slabs.get();
        if slabs > live {
            return Err(corrupted(format!("{slabs} cache slabs, but only {live} live blocks")));
        }
        Ok(())
    }
}

impl Drop for SharedPool {
    fn drop(&mut self) {
        // SAFETY: no thread can be reading the table: we have `&mut self`.
        drop(unsafe { std::mem::replace(&mut self.table, Atomic::null()).into_owned() });
        // The regions drop with the state, which unmaps them: dropping the
        // pool ends every block's life (the caller owns the pool
        // exclusively), and no reader can be pinned: all readers borrow the
        // pool. The collector drops with the pool and runs whatever is still
        // deferred: old tables, old descriptions, removed regions.
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    fn fill(block: NonNull<u8>, len: usize, value: u8) {
        // SAFETY: the tests only fill blocks they own, within their size.
        unsafe { block.as_ptr().write_bytes(value, len) };
    }

    fn holds(block: NonNull<u8>, len: usize, value: u8) -> bool {
        // SAFETY: as in `fill`.
        unsafe { std::slice::from_raw_parts(block.as_ptr(), len) }.iter().all(|&byte| byte == value)
    }

    #[test]
    fn blocks_grow_into_free_neighbours_and_shrink_in_place() {
        let pool = SharedPool::new(4096, None, 2.0, None, None, false).unwrap();
        let first = pool.allocate(100, 16, &()).unwrap();
        let second = pool.allocate(100, 16, &()).unwrap();
        let first_addr = first.as_ptr() as usize;
        fill(first, 100, 0xA1);
        // The second block sits right after the first: no room.
        assert_eq!(pool.resize_in_place(first_addr, 200), Ok(None));
        assert_eq!(pool.block_size(first_addr), Ok(112));
        pool.check().unwrap();

        pool.free(second.as_ptr() as usize).unwrap();
        assert_eq!(pool.resize_in_place(first_addr, 200), Ok(Some(208)));
        assert_eq!(pool.block_size(first_addr), Ok(208));
        assert!(holds(first, 100, 0xA1), "growing in place kept the contents");
        let snapshot = pool.snapshot();
        assert_eq!((snapshot.used, snapshot.free_blocks, snapshot.live_blocks), (208, 1, 1));
        pool.check().unwrap();

        // Up to the end of the region: the free run after it is used up.
        assert_eq!(pool.resize_in_place(first_addr, 4096), Ok(Some(4096)));
        assert_eq!(pool.snapshot().free_blocks, 0);
        assert_eq!(pool.snapshot().peak_used, 4096);
        pool.check().unwrap();
        assert_eq!(pool.resize_in_place(first_addr, 4097), Ok(None));

        // Shrinking frees the tail as one run, and a later block can use it.
        assert_eq!(pool.resize_in_place(first_addr, 50), Ok(Some(64)));
        assert!(holds(first, 50, 0xA1), "shrinking in place kept the contents");
        let snapshot = pool.snapshot();
        assert_eq!((snapshot.used, snapshot.free_blocks, snapshot.largest_free_block), (64, 1, 4032));
        pool.check().unwrap();
        let third = pool.allocate(32, 16, &()).unwrap();
        assert_eq!(third.as_ptr() as usize, first_addr + 64);

        // A shrink whose tail does not touch a free run makes a new one.
        assert_eq!(pool.resize_in_place(first_addr, 16), Ok(Some(16)));
        assert_eq!(pool.snapshot().free_blocks, 2);
        pool.check().unwrap();
        // Same size: nothing to do.
        assert_eq!(pool.resize_in_place(first_addr, 10), Ok(Some(16)));
        pool.check().unwrap();
    }

    #[test]
    fn resizing_refuses_what_is_not_a_live_block() {
        let pool = SharedPool::new(4096, None, 2.0, None, None, false).unwrap();
        let block = pool.allocate(64, 16, &()).unwrap();
        let addr = block.as_ptr() as usize;
        assert_eq!(pool.resize_in_place(addr, 0), Err(PoolError::ZeroSize));
        assert_eq!(pool.resize_in_place(addr + 16, 32), Err(PoolError::InteriorPointer { addr: addr + 16 }));
        assert_eq!(pool.resize_in_place(addr + 64, 32), Err(PoolError::NotAllocated { addr: addr + 64 }));
        let outside = &8usize as *const usize as usize;
        assert_eq!(pool.resize_in_place(outside, 8), Err(PoolError::ForeignPointer { addr: outside }));
        pool.free(addr).unwrap();
        assert_eq!(pool.resize_in_place(addr, 32), Err(PoolError::NotAllocated { addr }));
        pool.check().unwrap();
    }
}
