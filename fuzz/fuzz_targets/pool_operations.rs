//! Fuzzes the whole `MemoryPool` API on two pools from two threads at once.
//!
//! # What the input means
//!
//! The first byte picks the pools' initial sizes. Every following 4-byte
//! record `[operation, selector, size, parameter]` is one operation; records
//! alternate between the pool's creating thread (even records) and a second
//! thread (odd records), which run at the same time. The selector's low bit
//! picks the pool (0: default configuration, 1: `checked(true)` with
//! alignment 64 and a 16 MiB maximum) and its other bits a block of the
//! thread's table of live blocks. Sizes are biased towards the cache's size
//! class edges, the 1 KiB boundary between cache and shared pool, zero and
//! sizes no pool can hold.
//!
//! The operations: `allocate`, `allocate_aligned`, `allocate_fast`, `free`
//! and `free_fast` of live blocks (the thread's own, or another thread's
//! handed over through a shared table) and of bad pointers (foreign,
//! interior, misaligned, the other pool's, already freed), frees of stray
//! addresses inside the checked pool, `usable_size`, `contains`, `expand`,
//! `compact`, `resize`, `stats`, `utilization`, `check`,
//! `flush_remote_frees`, `PoolBox` values and `allocator_api2` vectors.
//! Boxes and vectors use the default pool only: stray frees on the checked
//! pool must know every live block there, and the tables hold them all.
//!
//! # What it asserts
//!
//! Every bad pointer gets its own error (`ForeignPointer`,
//! `InteriorPointer`, `NotAllocated`), every refused request the error its
//! arguments call for, and a refused resize or expansion leaves the size as
//! it was. Every block is filled with a pattern of its own, which is
//! verified before the block is freed and at the end, and `check()` passes
//! every few operations and at the end.
//!
//! Operations whose outcome depends on what the other thread does (double
//! and stray frees, whose address the other thread could be handed at the
//! same moment; expand, compact and resize, whose resulting sizes are
//! asserted) take a gate exclusively; all others share it and run
//! concurrently. The second thread exits only once the first has run its
//! records, since a thread's exit gives its caches back outside the gate.
//! Double frees of cache blocks happen only on the checked pool: on the
//! default pool they are undefined behaviour by contract.
//!
//! # Running it
//!
//! ```text
//! cargo install cargo-fuzz
//! mkdir -p fuzz/corpus/pool_operations
//! cargo +nightly fuzz run pool_operations fuzz/corpus/pool_operations fuzz/seeds/pool_operations \
//!     -- -max_total_time=60 -rss_limit_mb=4096
//! ```
//!
//! New inputs go to the first directory; `fuzz/seeds/pool_operations` holds
//! committed hand-made inputs that reach every operation. A crash is saved
//! under `fuzz/artifacts/pool_operations/`; replay it with
//! `cargo +nightly fuzz run pool_operations <file>`.

#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

use allocator_api2::vec::Vec as PoolVec;
use libfuzzer_sys::fuzz_target;
use lle_mempool::{MemoryPool, PoolBox, PoolConfig, PoolError};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard, RwLock};

/// Bytes per operation record.
const RECORD: usize = 4;
/// Live blocks a thread keeps at most; allocations beyond it free a block
/// first, so the memory a run touches stays bounded.
const LIVE_LIMIT: usize = 48;
/// A thread checks both pools after this many of its operations.
const CHECK_PERIOD: usize = 16;
/// The largest request the thread caches serve.
const MAX_FAST_SIZE: usize = 1024;
/// The checked pool's maximum size.
const CHECKED_MAX: usize = 16 << 20;
/// The default pool has no maximum: it is not grown explicitly past this
/// size, and growth requests are clamped, because `check()` reads every
/// granule and a run should do thousands of operations a second.
const DEFAULT_POOL_LIMIT: usize = 32 << 20;
/// The most an explicit growth adds to the default pool at once.
const DEFAULT_POOL_STEP: usize = 4 << 20;
/// The largest alignment the default pool is asked for, for the same reason.
const DEFAULT_POOL_MAX_ALIGN: usize = 1 << 20;
/// Alignments above this are refused by every pool.
const MAX_ALIGNMENT: usize = 1 << 30;
/// Sizes no pool can hold: beyond the largest region, or overflowing when
/// rounded up.
const HUGE_SIZES: [usize; 5] = [usize::MAX, usize::MAX - 15, isize::MAX as usize, 1 << 40, (1 << 35) + 1];
/// Requests that overflow when rounded up to whole pages.
const OVERFLOWING_GROWTH: [usize; 2] = [usize::MAX, usize::MAX - 100];

/// The pool's default configuration, and a checked one that differs in
/// every other setting too.
fn pool_configs(selector: u8) -> [PoolConfig; 2] {
    let initial = |bits: u8| [0, 4096, 64 << 10, 256 << 10][usize::from(bits & 3)];
    [
        PoolConfig::new(initial(selector)),
        PoolConfig::new(initial(selector >> 2)).checked(true).alignment(64).max_size(CHECKED_MAX).growth_factor(1.5),
    ]
}

/// The size class edges of the thread caches: by 16 up to 64 bytes, then
/// eight classes per doubling up to 1 KiB.
fn class_edges() -> impl Iterator<Item = usize> {
    let small = (1..=4).map(|step| step * 16);
    let doubling = (0..4).flat_map(|group| (1..=8).map(move |step| (64 << group) + step * (8 << group)));
    small.chain(doubling)
}

/// A request size from two input bytes: near a class edge, near the 1 KiB,
/// page or slab boundary, anything up to 16 KiB, zero, big or huge.
fn decode_size(size: u8, parameter: u8) -> usize {
    let low = usize::from(size & 63);
    match size >> 6 {
        0 => {
            let edge = class_edges().nth(low % 36).unwrap_or(MAX_FAST_SIZE);
            match parameter >> 6 {
                0 => edge - 1,
                2 => edge + 1,
                _ => edge,
            }
        }
        1 => {
            let base = [MAX_FAST_SIZE, 4096, 64 << 10, 16][low & 3] as isize;
            (base + isize::from(parameter as i8)).max(0) as usize
        }
        2 => (low << 8 | usize::from(parameter)) + 1,
        _ => match low {
            0 => 0,
            1..=5 => HUGE_SIZES[low - 1],
            _ => (64 << 10 << (parameter % 3)) + usize::from(parameter),
        },
    }
}

/// An alignment from an input byte: powers of two up to 1 GiB, and values
/// that are refused.
fn decode_align(parameter: u8) -> usize {
    match parameter & 31 {
        shift @ 0..=20 => 1 << shift,
        21 => MAX_ALIGNMENT,
        22 => MAX_ALIGNMENT << 1,
        23 => 0,
        24 => 3,
        25 => 48,
        26 => 1 << (usize::BITS - 1),
        shift => 16 << (shift - 27),
    }
}

/// The alignment `allocate_fast` promises for `size` bytes.
fn fast_alignment(size: usize) -> usize {
    (1 << size.trailing_zeros()).min(16)
}

/// A live block in a table: where it is, what was written into it, whose it
/// is and which path served it.
#[derive(Clone, Copy, Debug)]
struct Block {
    addr: usize,
    len: usize,
    seed: u64,
    pool: usize,
    /// From `allocate_fast` at most 1 KiB: a cache block.
    cache: bool,
}

impl Block {
    fn ptr(&self) -> NonNull<u8> {
        NonNull::new(self.addr as *mut u8).expect("blocks are never null")
    }

    fn at(&self, offset: usize) -> NonNull<u8> {
        NonNull::new((self.addr + offset) as *mut u8).expect("offsets stay in the block")
    }

    fn assert_intact(&self) {
        // SAFETY: the block is live and was filled with `len` bytes of the
        // pattern of `seed`; whoever holds its table entry owns it.
        unsafe { common::assert_intact(self.ptr(), self.len, self.seed) };
    }
}

/// What both threads share: the pools, each thread's table of live blocks,
/// the table blocks are handed over through, and the gate.
struct World {
    pools: [MemoryPool; 2],
    tables: [Mutex<Vec<Block>>; 2],
    handoff: Mutex<Vec<Block>>,
    /// Shared by operations whose outcome the other thread cannot change;
    /// taken exclusively by the others.
    gate: RwLock<()>,
    seeds: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A payload for `PoolBox`: cache-sized, stamped with its seed.
#[derive(Debug, PartialEq)]
struct Stamp([u64; 5]);

impl Stamp {
    fn new(seed: u64) -> Stamp {
        Stamp(std::array::from_fn(|index| seed.wrapping_mul(index as u64 + 3)))
    }
}

/// A payload for `PoolBox` aligned beyond any size class: a shared block.
#[derive(Debug, PartialEq)]
#[repr(align(4096))]
struct Page([u64; 8]);

/// One thread's view of the run.
struct Worker<'w> {
    world: &'w World,
    me: usize,
    done: usize,
    boxes: Vec<(PoolBox<'w, Stamp>, u64)>,
    pages: Vec<(PoolBox<'w, Page>, u64)>,
    vectors: Vec<(PoolVec<u64, &'w MemoryPool>, u64)>,
}

impl<'w> Worker<'w> {
    fn new(world: &'w World, me: usize) -> Self {
        Worker { world, me, done: 0, boxes: Vec::new(), pages: Vec::new(), vectors: Vec::new() }
    }

    fn table(&self) -> MutexGuard<'w, Vec<Block>> {
        lock(&self.world.tables[self.me])
    }

    fn next_seed(&self) -> u64 {
        self.world.seeds.fetch_add(1, Ordering::Relaxed)
    }

    fn run(&mut self, record: [u8; RECORD]) {
        let [operation, selector, size, parameter] = record;
        let pool = usize::from(selector & 1);
        let slot = usize::from(selector >> 1);
        match operation % 21 {
            0 => self.shared(|w| w.allocate(pool, size, parameter, Path::Allocate)),
            1 => self.shared(|w| w.allocate(pool, size, parameter, Path::Aligned)),
            2 | 3 => self.shared(|w| w.allocate(pool, size, parameter, Path::Fast)),
            4 => self.shared(|w| w.free_live(slot, parameter & 1 == 0)),
            5 => self.shared(|w| w.free_live(slot, false)),
            6 => self.shared(|w| w.free_bad(pool, slot, parameter)),
            7 => self.exclusive(|w| w.double_free(slot, parameter & 1 == 0)),
            8 => self.exclusive(|w| w.stray_free(slot, size, parameter)),
            9 => self.shared(|w| w.inspect(slot)),
            10 => self.exclusive(|w| w.expand(pool, size, parameter)),
            11 => self.exclusive(|w| w.compact(pool)),
            12 => self.exclusive(|w| w.resize(pool, size, parameter)),
            13 => self.shared(|w| w.statistics(pool)),
            14 => self.shared(|w| w.check(pool)),
            15 => self.shared(|w| w.world.pools[pool].flush_remote_frees()),
            16 => self.shared(|w| w.give(slot)),
            17 => self.shared(|w| w.take(slot)),
            18 => self.shared(|w| w.boxed(selector, parameter)),
            19 => self.shared(|w| w.vector(selector, size, parameter)),
            _ => self.exclusive(|w| w.audit()),
        }
        self.done += 1;
        if self.done.is_multiple_of(CHECK_PERIOD) {
            self.shared(|w| (0..2).for_each(|pool| w.check(pool)));
        }
    }

    fn shared(&mut self, operation: impl FnOnce(&mut Self)) {
        let _shared = self.world.gate.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        operation(self);
    }

    fn exclusive(&mut self, operation: impl FnOnce(&mut Self)) {
        let _exclusive = self.world.gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        operation(self);
    }

    fn allocate(&mut self, pool_index: usize, size: u8, parameter: u8, path: Path) {
        if self.table().len() >= LIVE_LIMIT {
            self.free_live(usize::from(parameter), true);
        }
        let pool = &self.world.pools[pool_index];
        let size = decode_size(size, parameter);
        let mut align = match path {
            Path::Allocate => pool.alignment(),
            Path::Aligned => decode_align(parameter),
            Path::Fast => fast_alignment(size.max(1)),
        };
        if pool_index == 0 && align > DEFAULT_POOL_MAX_ALIGN && align <= MAX_ALIGNMENT {
            align = DEFAULT_POOL_MAX_ALIGN;
        }
        let result = match path {
            Path::Allocate => pool.allocate(size),
            Path::Aligned => pool.allocate_aligned(size, align),
            Path::Fast => pool.allocate_fast(size),
        };
        let refusal = if size == 0 {
            Some(PoolError::ZeroSize)
        } else if !align.is_power_of_two() {
            Some(PoolError::InvalidAlignment { align })
        } else if align > MAX_ALIGNMENT {
            Some(PoolError::AlignmentTooLarge { align })
        } else if HUGE_SIZES.contains(&size) {
            Some(PoolError::SizeOverflow { size })
        } else {
            None
        };
        let block = match (result, refusal) {
            (Err(error), Some(expected)) => {
                assert_eq!(error, expected, "{path:?} of {size} bytes aligned to {align}");
                return;
            }
            (Ok(block), Some(expected)) => {
                panic!("{path:?} of {size} bytes aligned to {align} gave {block:?}, expected {expected:?}")
            }
            // The checked pool may be full: its maximum is small.
            (Err(PoolError::ExceedsMaxSize { .. }), None) if pool_index == 1 => return,
            (Err(PoolError::OutOfMemory { .. }), None) => return,
            (Err(error), None) => panic!("{path:?} of {size} bytes aligned to {align} refused: {error:?}"),
            (Ok(block), None) => block,
        };
        assert_eq!(block.as_ptr() as usize % align, 0, "{path:?} of {size} bytes misaligned (want {align})");
        let cache = path == Path::Fast && size <= MAX_FAST_SIZE;
        let usable = pool.usable_size(block).expect("a fresh block has a size");
        if pool_index == 1 {
            // The rest of a checked pool's block is its canary.
            assert_eq!(usable, size, "checked block of {size} bytes");
        } else if cache {
            assert!(usable >= size, "cache block of {size} bytes holds only {usable}");
        } else {
            assert_eq!(usable, common::granule_round(size), "shared block of {size} bytes");
        }
        assert!(pool.contains(block.as_ptr()));
        assert!(!self.world.pools[1 - pool_index].contains(block.as_ptr()));
        let block = Block { addr: block.as_ptr() as usize, len: size, seed: self.next_seed(), pool: pool_index, cache };
        // SAFETY: the block is fresh, of `size` bytes, and only this table
        // refers to it.
        unsafe { common::fill(block.ptr(), block.len, block.seed) };
        self.table().push(block);
    }

    /// Removes the block at `slot` (modulo the table's length) from this
    /// thread's table.
    fn take_from_table(&self, slot: usize) -> Option<Block> {
        let mut table = self.table();
        if table.is_empty() {
            return None;
        }
        let slot = slot % table.len();
        Some(table.swap_remove(slot))
    }

    fn free_block(&self, block: &Block, plain: bool) -> Result<(), PoolError> {
        let pool = &self.world.pools[block.pool];
        // SAFETY: callers pass live blocks of `pool` they own and drop, or
        // addresses the pool must refuse.
        unsafe {
            if plain {
                pool.free(block.ptr())
            } else {
                pool.free_fast(block.ptr())
            }
        }
    }

    fn free_live(&mut self, slot: usize, plain: bool) {
        if let Some(block) = self.take_from_table(slot) {
            block.assert_intact();
            self.free_block(&block, plain).unwrap_or_else(|error| panic!("freeing live {block:?}: {error:?}"));
        }
    }

    /// Frees, through `free` or `free_fast`, a pointer that is no live
    /// block of the pool, and expects the pool to name the problem.
    fn free_bad(&mut self, pool_index: usize, slot: usize, parameter: u8) {
        let on_stack = 0u64;
        let on_heap = Box::new([0u64; 4]);
        let plain = parameter & 1 == 0;
        let own = {
            let table = self.table();
            (!table.is_empty()).then(|| table[slot % table.len()])
        };
        let (pool, addr, expected) = match (parameter >> 1) % 7 {
            0 => (pool_index, &on_stack as *const u64 as usize, Bad::Foreign),
            1 => (pool_index, on_heap.as_ptr() as usize, Bad::Foreign),
            2 => (pool_index, 8, Bad::Foreign),
            3 => (pool_index, usize::MAX - 15, Bad::Foreign),
            4 => (pool_index, 1 << 47, Bad::Foreign),
            variant => {
                let Some(block) = own else { return };
                match variant {
                    // The other pool's live block.
                    5 if parameter & 0x80 != 0 => (1 - block.pool, block.addr, Bad::Foreign),
                    // Inside the block: granule-aligned when possible.
                    5 => {
                        let Some(offset) = interior_offset(&block, usize::from(parameter >> 4), true) else { return };
                        (block.pool, block.addr + offset, Bad::Interior)
                    }
                    // Misaligned: in the block's first granule.
                    _ => {
                        let Some(offset) = interior_offset(&block, usize::from(parameter >> 4), false) else { return };
                        (block.pool, block.addr + offset, Bad::Interior)
                    }
                }
            }
        };
        let probe = Block { addr, len: 0, seed: 0, pool, cache: false };
        let result = self.free_block(&probe, plain);
        let sized = self.world.pools[pool].usable_size(probe.ptr());
        let expected_error = match expected {
            Bad::Foreign => PoolError::ForeignPointer { addr },
            Bad::Interior => PoolError::InteriorPointer { addr },
        };
        assert_eq!(result, Err(expected_error.clone()), "free of {expected:?} pointer {addr:#x}");
        assert_eq!(sized, Err(expected_error), "usable_size of {expected:?} pointer {addr:#x}");
        assert_eq!(self.world.pools[pool].contains(addr as *const u8), expected == Bad::Interior);
        drop(on_heap);
        if let Some(block) = own {
            block.assert_intact();
        }
    }

    /// Frees a live block, then frees it again: the second free must be
    /// refused as a double free. Cache blocks only on the checked pool.
    fn double_free(&mut self, slot: usize, plain: bool) {
        let Some(block) = self.take_from_table(slot) else { return };
        if block.cache && block.pool == 0 {
            self.table().push(block);
            return;
        }
        block.assert_intact();
        self.free_block(&block, plain).unwrap_or_else(|error| panic!("freeing live {block:?}: {error:?}"));
        let again = self.free_block(&block, !plain);
        assert_eq!(again, Err(PoolError::NotAllocated { addr: block.addr }), "second free of {block:?}");
    }

    /// Frees an address in the checked pool that no table holds as a live
    /// block: near a live block, or anywhere in a region. The pool must
    /// refuse it, as not allocated or as an interior pointer.
    fn stray_free(&mut self, slot: usize, size: u8, parameter: u8) {
        let pool = &self.world.pools[1];
        let live: Vec<Block> = self
            .world
            .tables
            .iter()
            .flat_map(|table| lock(table).clone())
            .chain(lock(&self.world.handoff).clone())
            .filter(|block| block.pool == 1)
            .collect();
        let delta = isize::from(parameter as i8);
        let addr = if parameter & 1 == 0 && !live.is_empty() {
            live[slot % live.len()].addr.wrapping_add_signed(delta)
        } else {
            let regions = pool.regions();
            if regions.is_empty() {
                return;
            }
            let region = &regions[slot % regions.len()];
            let fraction = usize::from(size) << 8 | usize::from(parameter);
            region.start + (region.len() / 65536 * fraction) + (fraction % 64) * 16
        };
        if !pool.contains(addr as *const u8) || live.iter().any(|block| block.addr == addr) || addr == 0 {
            return;
        }
        let probe = Block { addr, len: 0, seed: 0, pool: 1, cache: false };
        match self.free_block(&probe, parameter & 2 == 0) {
            Err(PoolError::InteriorPointer { addr: reported }) => {
                assert_eq!(reported, addr);
                assert_eq!(pool.usable_size(probe.ptr()), Err(PoolError::InteriorPointer { addr }));
            }
            Err(PoolError::NotAllocated { addr: reported }) => assert_eq!(reported, addr),
            other => panic!("stray free of {addr:#x} in the checked pool: {other:?}"),
        }
        for block in &live {
            block.assert_intact();
        }
    }

    fn inspect(&mut self, slot: usize) {
        let table = self.table();
        if table.is_empty() {
            return;
        }
        let block = table[slot % table.len()];
        drop(table);
        let pool = &self.world.pools[block.pool];
        let usable =
            pool.usable_size(block.ptr()).unwrap_or_else(|error| panic!("usable_size of {block:?}: {error:?}"));
        assert!(usable >= block.len, "{block:?} holds only {usable} bytes");
        assert!(pool.contains(block.ptr().as_ptr()));
        assert!(pool.contains(block.at(block.len - 1).as_ptr()));
        assert!(!self.world.pools[1 - block.pool].contains(block.ptr().as_ptr()));
        block.assert_intact();
    }

    fn expand(&mut self, pool_index: usize, size: u8, parameter: u8) {
        let pool = &self.world.pools[pool_index];
        let mut additional = decode_size(size, parameter);
        if parameter & 0x20 != 0 {
            additional = OVERFLOWING_GROWTH[usize::from(parameter & 1)];
        } else if pool_index == 0 {
            if pool.size() > DEFAULT_POOL_LIMIT {
                return;
            }
            additional = additional.min(DEFAULT_POOL_STEP);
        }
        let before = pool.size();
        let result = pool.expand(additional);
        let after = pool.size();
        let grown = additional.checked_next_multiple_of(common::page_size());
        match (result, grown) {
            (Ok(()), Some(grown)) => assert_eq!(after, before + grown, "expand({additional})"),
            (Err(PoolError::SizeOverflow { size }), grown) => {
                assert_eq!(size, additional);
                assert!(grown.and_then(|grown| before.checked_add(grown)).is_none(), "expand({additional})");
            }
            (Err(PoolError::ExceedsMaxSize { requested, max }), Some(grown)) if pool_index == 1 => {
                assert_eq!((requested, max), (before + grown, CHECKED_MAX));
                assert!(before + grown > CHECKED_MAX);
            }
            (Err(PoolError::OutOfMemory { .. }), Some(_)) => {}
            (other, _) => panic!("expand({additional}) on a pool of {before} bytes: {other:?}"),
        }
        if after != before {
            assert!(additional > 0 && after > before, "expand({additional}) changed the size to {after}");
        }
    }

    fn compact(&mut self, pool_index: usize) {
        let pool = &self.world.pools[pool_index];
        let before = pool.size();
        let released = pool.compact().unwrap_or_else(|error| panic!("compact: {error:?}"));
        assert_eq!(pool.size(), before - released);
        self.verify_all();
    }

    fn resize(&mut self, pool_index: usize, size: u8, parameter: u8) {
        let pool = &self.world.pools[pool_index];
        let target = if size == u8::MAX && parameter & 0x80 != 0 {
            OVERFLOWING_GROWTH[usize::from(parameter & 1)]
        } else {
            usize::from(size) * (usize::from(parameter % 5) + 1) * (16 << 10) + usize::from(parameter >> 3) * 16
        };
        let before = pool.stats();
        match pool.resize(target) {
            Ok(()) => assert_eq!(pool.size(), common::page_round(target), "resize({target}) from {}", before.size),
            Err(error) => {
                assert_eq!(pool.size(), before.size, "refused resize({target}) changed the size");
                match error {
                    PoolError::SizeOverflow { size } => assert_eq!(size, target),
                    PoolError::ExceedsMaxSize { requested, max } => {
                        assert_eq!(pool_index, 1);
                        assert_eq!((requested, max), (common::page_round(target), CHECKED_MAX));
                    }
                    // `used` is not compared with the snapshot: a thread that
                    // exits releases its empty slabs without taking the gate.
                    PoolError::ShrinkBelowUsed { requested, used } => {
                        assert_eq!(requested, target);
                        assert!(common::page_round(target) < used, "resize({target}) refused with {used} used");
                    }
                    PoolError::ShrinkBlocked { requested, reachable } => {
                        assert_eq!(requested, target);
                        assert!(reachable > target && reachable <= before.size);
                    }
                    PoolError::OutOfMemory { .. } => {}
                    other => panic!("resize({target}) from {}: {other:?}", before.size),
                }
            }
        }
        self.verify_all();
    }

    fn statistics(&mut self, pool_index: usize) {
        let pool = &self.world.pools[pool_index];
        let stats = pool.stats();
        assert!(stats.used <= stats.size, "{stats:?}");
        assert_eq!(stats.free, stats.size - stats.used, "{stats:?}");
        assert!(stats.largest_free_block <= stats.free, "{stats:?}");
        assert_eq!(stats.free_blocks == 0, stats.free == 0, "{stats:?}");
        assert!(stats.peak_used >= stats.used, "{stats:?}");
        let utilization = pool.utilization();
        assert!((0.0..=100.0).contains(&utilization), "utilization {utilization}");
    }

    fn check(&mut self, pool_index: usize) {
        self.world.pools[pool_index].check().unwrap_or_else(|error| panic!("check of pool {pool_index}: {error}"));
    }

    /// Moves a live block to the handoff table, for the other thread to
    /// free.
    fn give(&mut self, slot: usize) {
        if let Some(block) = self.take_from_table(slot) {
            lock(&self.world.handoff).push(block);
        }
    }

    /// Takes a block another thread handed over into this thread's table.
    fn take(&mut self, slot: usize) {
        let mut handoff = lock(&self.world.handoff);
        if handoff.is_empty() {
            return;
        }
        let slot = slot % handoff.len();
        let block = handoff.swap_remove(slot);
        drop(handoff);
        block.assert_intact();
        self.table().push(block);
    }

    /// `PoolBox` values on the default pool: made, checked, unwrapped,
    /// passed through raw pointers and dropped.
    fn boxed(&mut self, selector: u8, parameter: u8) {
        let pool = &self.world.pools[0];
        let seed = self.next_seed();
        match (selector >> 1) % 6 {
            0 if self.boxes.len() < LIVE_LIMIT => {
                self.boxes.push((pool.boxed(Stamp::new(seed)).expect("a cache-sized box"), seed));
            }
            1 if self.pages.len() < 8 => {
                let page = pool.boxed(Page([seed; 8])).expect("a page-aligned box");
                assert_eq!(&*page as *const Page as usize % 4096, 0);
                self.pages.push((page, seed));
            }
            2 => {
                let unit = pool.boxed(()).expect("a zero-sized box");
                assert!(!pool.contains((&*unit as *const ()).cast()));
            }
            3 if !self.boxes.is_empty() => {
                let (stamp, seed) = self.boxes.swap_remove(usize::from(parameter) % self.boxes.len());
                assert!(std::ptr::eq(PoolBox::pool(&stamp), pool));
                assert_eq!(PoolBox::into_inner(stamp), Stamp::new(seed));
            }
            4 if !self.boxes.is_empty() => {
                let index = usize::from(parameter) % self.boxes.len();
                let (stamp, seed) = self.boxes.swap_remove(index);
                let raw = PoolBox::into_raw(stamp);
                assert!(pool.contains(raw.as_ptr().cast()));
                // SAFETY: `raw` came from `into_raw` of a box of this pool.
                let stamp = unsafe { PoolBox::from_raw(pool, raw) };
                assert_eq!(*stamp, Stamp::new(seed));
                self.boxes.push((stamp, seed));
            }
            _ => {
                if let Some((page, seed)) = self.pages.pop() {
                    assert_eq!(*page, Page([seed; 8]));
                }
                if let Some((stamp, seed)) = self.boxes.pop() {
                    assert_eq!(*stamp, Stamp::new(seed));
                }
            }
        }
    }

    /// `allocator_api2` vectors on the default pool, grown and shrunk in
    /// place or moved by the pool's `Allocator` implementation.
    fn vector(&mut self, selector: u8, size: u8, parameter: u8) {
        let pool = &self.world.pools[0];
        let count = decode_size(size, parameter).min(1 << 16);
        match (selector >> 1) % 4 {
            0 if self.vectors.len() < 8 => {
                let seed = self.next_seed();
                let mut vector = PoolVec::new_in(pool);
                vector.extend((0..count).map(|index| vector_element(seed, index)));
                self.vectors.push((vector, seed));
            }
            1 if !self.vectors.is_empty() => {
                let index = usize::from(parameter) % self.vectors.len();
                let (vector, seed) = &mut self.vectors[index];
                let start = vector.len();
                let extra = count.min((1 << 16) - start.min(1 << 16));
                vector.extend((start..start + extra).map(|index| vector_element(*seed, index)));
            }
            2 if !self.vectors.is_empty() => {
                let index = usize::from(parameter) % self.vectors.len();
                let (vector, _) = &mut self.vectors[index];
                vector.truncate(vector.len() / (usize::from(parameter % 4) + 1));
                vector.shrink_to_fit();
            }
            _ => {
                if let Some((vector, _)) = self.vectors.pop() {
                    drop(vector);
                }
            }
        }
        self.verify_vectors();
    }

    fn verify_vectors(&self) {
        for (vector, seed) in &self.vectors {
            assert!(
                vector.iter().enumerate().all(|(index, &found)| found == vector_element(*seed, index)),
                "vector corrupted"
            );
        }
    }

    /// With the other thread held at the gate: every live block of both
    /// threads and the handoff table is intact, inside its pool, and the
    /// pools' sizes agree with their regions.
    fn audit(&mut self) {
        self.verify_all();
        for pool in &self.world.pools {
            let mapped: usize = pool.regions().iter().map(|region| region.len()).sum();
            assert_eq!(mapped, pool.size());
            assert_eq!(pool.stats().size, mapped);
            pool.check().unwrap_or_else(|error| panic!("audit: {error}"));
        }
    }

    /// Verifies every block of both tables and the handoff table. Run only
    /// with the gate held exclusively.
    fn verify_all(&self) {
        for table in self.world.tables.iter().chain([&self.world.handoff]) {
            for block in lock(table).iter() {
                assert!(self.world.pools[block.pool].contains(block.ptr().as_ptr()));
                block.assert_intact();
            }
        }
    }

    /// Verifies and frees everything this thread holds.
    fn finish(&mut self) {
        while let Some(block) = self.take_from_table(0) {
            block.assert_intact();
            self.free_block(&block, true).unwrap_or_else(|error| panic!("freeing live {block:?}: {error:?}"));
        }
        for (stamp, seed) in self.boxes.drain(..) {
            assert_eq!(*stamp, Stamp::new(seed));
        }
        for (page, seed) in self.pages.drain(..) {
            assert_eq!(*page, Page([seed; 8]));
        }
        self.verify_vectors();
        self.vectors.clear();
    }
}

/// The element at `index` of the vector stamped with `seed`.
fn vector_element(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// How an allocation operation asks for its block.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Allocate,
    Aligned,
    Fast,
}

/// What a bad pointer is, and so which error it must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    Foreign,
    Interior,
}

/// An offset inside `block` that is no block start, chosen by `choice`: a
/// multiple of the 16-byte granule when `granule_aligned`, else one of the
/// block's first 15 bytes past its start; `None` if the block is too short.
fn interior_offset(block: &Block, choice: usize, granule_aligned: bool) -> Option<usize> {
    let (candidates, step) = if granule_aligned { ((block.len - 1) / 16, 16) } else { ((block.len - 1).min(15), 1) };
    (candidates > 0).then(|| (choice % candidates + 1) * step)
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, records)) = data.split_first() else { return };
    let [default, checked] = pool_configs(config);
    let world = World {
        pools: [
            MemoryPool::with_config(default).expect("default pool"),
            MemoryPool::with_config(checked).expect("checked pool"),
        ],
        tables: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        handoff: Mutex::new(Vec::new()),
        gate: RwLock::new(()),
        seeds: AtomicU64::new(1),
    };
    assert_eq!(world.pools[1].alignment(), 64);
    let stream = |me: usize| {
        records.chunks_exact(RECORD).skip(me).step_by(2).map(|record| [record[0], record[1], record[2], record[3]])
    };
    // The second thread outlives the first one's records: its exit gives
    // its thread caches back to the pools (slabs released or abandoned),
    // which no gate covers, and would change under an exclusive operation
    // what that operation asserts.
    let records_done = Barrier::new(2);
    std::thread::scope(|scope| {
        let (world, records_done) = (&world, &records_done);
        let second = scope.spawn(move || {
            let mut worker = Worker::new(world, 1);
            stream(1).for_each(|record| worker.run(record));
            worker.shared(Worker::finish);
            records_done.wait();
        });
        let mut worker = Worker::new(world, 0);
        stream(0).for_each(|record| worker.run(record));
        records_done.wait();
        worker.shared(Worker::finish);
        second.join().expect("the second thread panicked");
    });
    for block in lock(&world.handoff).drain(..) {
        block.assert_intact();
        // SAFETY: handed-over blocks are live and owned by the table.
        unsafe { world.pools[block.pool].free_fast(block.ptr()) }
            .unwrap_or_else(|error| panic!("{block:?}: {error:?}"));
    }
    for pool in &world.pools {
        pool.check().unwrap_or_else(|error| panic!("final check: {error}"));
        pool.compact().expect("final compact");
        pool.check().unwrap_or_else(|error| panic!("check after the final compact: {error}"));
    }
});
