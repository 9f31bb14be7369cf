//! The shared pool against a reference model.
//!
//! Random sequences of allocate, allocate_aligned, free, expand, compact and
//! resize run against a model that knows every live block (address, size,
//! alignment, pattern seed) and predicts the pool's size, regions, free
//! blocks, counters and resize events. After every step the pool must agree
//! with the model, every block must still hold its pattern, and `check()`
//! must pass. Also here: first fit by address and coalescing, shown on
//! concrete layouts.

mod common;

use common::{assert_intact, fill, granule_round, page_round, page_size};
use lle_mempool::{MemoryPool, PoolConfig, PoolError, ResizeEvent, ResizeReason};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use std::collections::BTreeMap;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// The largest region the pool maps (its index covers 2^30 granules).
const MAX_REGION_BYTES: usize = (1 << 30) * 16;

#[derive(Debug, Clone)]
enum Operation {
    Allocate(usize),
    AllocateAligned(usize, u32),
    Free(usize),
    Expand(usize),
    Compact,
    Resize(ResizeTarget),
}

#[derive(Debug, Clone)]
enum ResizeTarget {
    GrowBy(usize),
    ShrinkBy(usize),
    /// Per mille of twice the current size.
    Fraction(usize),
}

#[derive(Debug, Clone)]
struct Setup {
    initial_size: usize,
    alignment: usize,
    growth_factor: f64,
    /// Room above the initial size, if the pool has a maximum.
    max_headroom: Option<usize>,
}

struct Block {
    size: usize,
    align: usize,
    seed: u64,
}

struct Model {
    live: BTreeMap<usize, Block>,
    size: usize,
    used: usize,
    peak_used: usize,
    total_allocations: u64,
    total_frees: u64,
    failed_allocations: u64,
    expansions: u64,
    compactions: u64,
    max_size: Option<usize>,
    growth_factor: f64,
    alignment: usize,
    next_seed: u64,
    regions: Vec<Range<usize>>,
    expected_events: Vec<ResizeEvent>,
}

/// The free runs of a layout, in address order: `(start, bytes)`.
fn free_runs(regions: &[Range<usize>], live: &BTreeMap<usize, Block>) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    for region in regions {
        let mut cursor = region.start;
        for (&addr, block) in live.range(region.clone()) {
            if addr > cursor {
                runs.push((cursor, addr - cursor));
            }
            cursor = addr + granule_round(block.size);
        }
        assert!(cursor <= region.end, "a block runs past its region's end");
        if region.end > cursor {
            runs.push((cursor, region.end - cursor));
        }
    }
    runs
}

/// The bytes of `region` that compaction or shrinking can give back: free
/// space at its end, in whole pages.
fn releasable_tail(region: &Range<usize>, live: &BTreeMap<usize, Block>) -> usize {
    let in_use_end =
        live.range(region.clone()).next_back().map_or(region.start, |(&addr, block)| addr + granule_round(block.size));
    region.end - region.start - page_round(in_use_end - region.start)
}

impl Model {
    fn new(setup: &Setup, pool: &MemoryPool) -> Model {
        let size = page_round(setup.initial_size);
        Model {
            live: BTreeMap::new(),
            size,
            used: 0,
            peak_used: 0,
            total_allocations: 0,
            total_frees: 0,
            failed_allocations: 0,
            expansions: 0,
            compactions: 0,
            max_size: setup.max_headroom.map(|headroom| size + headroom),
            growth_factor: setup.growth_factor,
            alignment: setup.alignment,
            next_seed: 1,
            regions: pool.regions(),
            expected_events: Vec::new(),
        }
    }

    /// Checks that the regions after a growth by `additional` bytes keep
    /// every old region where it was: at most one grew in place, the rest
    /// of the growth is new regions.
    fn accept_growth(&mut self, pool: &MemoryPool, additional: usize) {
        let after = pool.regions();
        let mut grown = 0;
        for old in &self.regions {
            let now = after
                .iter()
                .find(|region| region.start == old.start)
                .unwrap_or_else(|| panic!("region {old:#x?} vanished while growing"));
            assert!(now.end >= old.end, "region {old:#x?} shrank while growing");
            if now.end > old.end {
                grown += 1;
            }
        }
        assert!(grown <= 1, "several regions grew at once");
        let total: usize = after.iter().map(|region| region.len()).sum();
        assert_eq!(total, self.size + additional, "regions after growing by {additional}");
        self.size += additional;
        self.regions = after;
    }

    /// Trims `take` bytes off the end of each planned region, removing
    /// those left empty, as compact and resize do.
    fn trim(&mut self, plan: &BTreeMap<usize, usize>) {
        let mut trimmed = Vec::new();
        for region in &self.regions {
            let take = plan.get(&region.start).copied().unwrap_or(0);
            if take < region.len() {
                trimmed.push(region.start..region.end - take);
            }
            self.size -= take;
        }
        self.regions = trimmed;
    }

    fn allocate(&mut self, pool: &MemoryPool, size: usize, align: Option<usize>) {
        let effective_align = align.unwrap_or(self.alignment).max(16);
        let wanted = granule_round(size) + effective_align - 16;
        let first_fit = |model: &Model| {
            free_runs(&model.regions, &model.live)
                .into_iter()
                .find(|&(_, bytes)| bytes >= wanted)
                .map(|(start, _)| start.next_multiple_of(effective_align))
        };
        let mut prediction = first_fit(self);
        let mut old_size = self.size;
        let mut growth = None;
        if prediction.is_none() {
            let page = page_size();
            let needed = page_round(wanted);
            let room =
                |model: &Model| model.max_size.map_or(usize::MAX, |max| max.saturating_sub(model.size) / page * page);
            if needed > room(self) {
                // Refused by the maximum size, the pool compacts and tries
                // once more: a first fit again (compaction only shortens
                // free runs), then growth from the compacted size.
                self.compact_model();
                old_size = self.size;
            }
            let by_factor = (self.size as f64 * (self.growth_factor - 1.0)).min(MAX_REGION_BYTES as f64) as usize;
            let mut additional = page_round(needed.max(by_factor));
            if let Some(max) = self.max_size {
                let room = room(self);
                if needed > room {
                    let result = match align {
                        Some(align) => pool.allocate_aligned(size, align),
                        None => pool.allocate(size),
                    };
                    assert_eq!(
                        result,
                        Err(PoolError::ExceedsMaxSize { requested: self.size + needed, max }),
                        "allocating {size} (align {align:?}) with no room left"
                    );
                    self.failed_allocations += 1;
                    return;
                }
                additional = additional.min(room);
            }
            growth = Some(additional);
        }
        let block = match align {
            Some(align) => pool.allocate_aligned(size, align),
            None => pool.allocate(size),
        }
        .unwrap_or_else(|error| panic!("allocating {size} (align {align:?}): {error}"));
        if let Some(additional) = growth {
            self.accept_growth(pool, additional);
            self.expansions += 1;
            self.expected_events.push(ResizeEvent { old_size, new_size: self.size, reason: ResizeReason::AutoExpand });
            prediction = first_fit(self);
        }
        let addr = block.as_ptr() as usize;
        let predicted = prediction.expect("growth leaves a fitting free run");
        if effective_align == 16 {
            assert_eq!(addr, predicted, "first fit by address for {size} bytes");
        } else {
            assert!(addr <= predicted, "{addr:#x} is past the first fit {predicted:#x} for align {effective_align}");
        }
        assert_eq!(addr % effective_align, 0, "alignment {effective_align}");
        let usable = granule_round(size);
        assert_eq!(pool.usable_size(block), Ok(usable));
        let seed = self.next_seed;
        self.next_seed += 1;
        // SAFETY: a fresh block of `usable` bytes.
        unsafe { fill(block, usable, seed) };
        self.live.insert(addr, Block { size, align: effective_align, seed });
        self.used += usable;
        self.peak_used = self.peak_used.max(self.used);
        self.total_allocations += 1;
    }

    fn free(&mut self, pool: &MemoryPool, selector: usize) {
        if self.live.is_empty() {
            return;
        }
        let addr = *self.live.keys().nth(selector % self.live.len()).expect("selector in range");
        let block = self.live.remove(&addr).expect("live block");
        let pointer = NonNull::new(addr as *mut u8).expect("non-null block");
        let usable = granule_round(block.size);
        // SAFETY: a live block of `usable` bytes.
        unsafe { assert_intact(pointer, usable, block.seed) };
        // SAFETY: a live block of this pool, not used afterwards.
        assert_eq!(unsafe { pool.free(pointer) }, Ok(()));
        // SAFETY: refused without touching the block: it is free now.
        assert_eq!(unsafe { pool.free(pointer) }, Err(PoolError::NotAllocated { addr }));
        self.used -= usable;
        self.total_frees += 1;
    }

    fn expand(&mut self, pool: &MemoryPool, bytes: usize) {
        let result = pool.expand(bytes);
        if bytes == 0 {
            assert_eq!(result, Ok(()));
            return;
        }
        let additional = page_round(bytes);
        if let Some(max) = self.max_size {
            if self.size + additional > max {
                assert_eq!(result, Err(PoolError::ExceedsMaxSize { requested: self.size + additional, max }));
                return;
            }
        }
        assert_eq!(result, Ok(()), "expanding by {bytes}");
        let old_size = self.size;
        self.accept_growth(pool, additional);
        self.expansions += 1;
        self.expected_events.push(ResizeEvent { old_size, new_size: self.size, reason: ResizeReason::Expand });
    }

    fn compact(&mut self, pool: &MemoryPool) {
        let compacted = pool.compact();
        let released = self.compact_model();
        assert_eq!(compacted, Ok(released), "compact");
    }

    /// What compaction does to the pool: free tails cut off. Returns the
    /// bytes released.
    fn compact_model(&mut self) -> usize {
        let plan: BTreeMap<usize, usize> = self
            .regions
            .iter()
            .map(|region| (region.start, releasable_tail(region, &self.live)))
            .filter(|&(_, take)| take > 0)
            .collect();
        let released: usize = plan.values().sum();
        let old_size = self.size;
        self.trim(&plan);
        if released > 0 {
            self.compactions += 1;
            self.expected_events.push(ResizeEvent { old_size, new_size: self.size, reason: ResizeReason::Compact });
        }
        released
    }

    fn resize(&mut self, pool: &MemoryPool, target: &ResizeTarget) {
        let requested = match *target {
            ResizeTarget::GrowBy(bytes) => self.size + bytes,
            ResizeTarget::ShrinkBy(bytes) => self.size.saturating_sub(bytes),
            ResizeTarget::Fraction(per_mille) => self.size * 2 * per_mille / 1000,
        };
        let rounded = page_round(requested);
        let old_size = self.size;
        let result = pool.resize(requested);
        if rounded > self.size {
            if let Some(max) = self.max_size {
                if rounded > max {
                    assert_eq!(result, Err(PoolError::ExceedsMaxSize { requested: rounded, max }));
                    return;
                }
            }
            assert_eq!(result, Ok(()), "growing to {requested}");
            self.accept_growth(pool, rounded - old_size);
            self.expansions += 1;
        } else if rounded < self.size {
            if rounded < self.used {
                assert_eq!(result, Err(PoolError::ShrinkBelowUsed { requested, used: self.used }));
                return;
            }
            let mut excess = self.size - rounded;
            let mut plan = BTreeMap::new();
            for region in self.regions.iter().rev() {
                let take = releasable_tail(region, &self.live).min(excess);
                if take > 0 {
                    plan.insert(region.start, take);
                    excess -= take;
                }
            }
            if excess > 0 {
                assert_eq!(result, Err(PoolError::ShrinkBlocked { requested, reachable: rounded + excess }));
                return;
            }
            assert_eq!(result, Ok(()), "shrinking to {requested}");
            self.trim(&plan);
            self.compactions += 1;
        } else {
            assert_eq!(result, Ok(()), "resizing to the current size");
            return;
        }
        self.expected_events.push(ResizeEvent { old_size, new_size: self.size, reason: ResizeReason::Resize });
    }

    /// Everything the pool says must agree with the model.
    fn verify(&mut self, pool: &MemoryPool, events: &Mutex<Vec<ResizeEvent>>) {
        assert_eq!(pool.regions(), self.regions, "regions");
        let mut previous_end = 0;
        for (&addr, block) in &self.live {
            let pointer = NonNull::new(addr as *mut u8).expect("non-null block");
            let usable = pool.usable_size(pointer).expect("live block has a size");
            assert_eq!(usable, granule_round(block.size));
            assert!(addr >= previous_end, "block {addr:#x} overlaps its predecessor");
            previous_end = addr + usable;
            assert_eq!(addr % block.align, 0);
            assert!(pool.contains(pointer.as_ptr()));
            // SAFETY: a live block of `usable` bytes.
            unsafe { assert_intact(pointer, usable, block.seed) };
        }
        let runs = free_runs(&self.regions, &self.live);
        let stats = pool.stats();
        assert_eq!(stats.size, self.size, "size");
        assert_eq!(pool.size(), self.size, "size()");
        assert_eq!(stats.used, self.used, "used");
        assert_eq!(stats.free, self.size - self.used, "free");
        assert_eq!(stats.live_allocations, self.live.len(), "live allocations");
        assert_eq!(stats.free_blocks, runs.len(), "free blocks");
        assert_eq!(stats.largest_free_block, runs.iter().map(|&(_, bytes)| bytes).max().unwrap_or(0));
        assert_eq!(stats.peak_used, self.peak_used, "peak used");
        assert_eq!(stats.total_allocations, self.total_allocations, "total allocations");
        assert_eq!(stats.total_frees, self.total_frees, "total frees");
        assert_eq!(stats.failed_allocations, self.failed_allocations, "failed allocations");
        assert_eq!(stats.expansions, self.expansions, "expansions");
        assert_eq!(stats.compactions, self.compactions, "compactions");
        let utilization = pool.utilization();
        let expected = if self.size == 0 { 0.0 } else { self.used as f64 * 100.0 / self.size as f64 };
        assert!((utilization - expected).abs() < 1e-9, "utilization {utilization}, expected {expected}");
        assert!((0.0..=100.0).contains(&utilization));
        assert_eq!(pool.check(), Ok(()));
        let seen = std::mem::take(&mut *events.lock().unwrap());
        assert_eq!(seen, std::mem::take(&mut self.expected_events), "resize events");
    }
}

fn block_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 1usize..=64,
        6 => 1usize..=2048,
        2 => 1usize..=16_384,
        1 => 1usize..=200_000,
    ]
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        8 => block_size().prop_map(Operation::Allocate),
        4 => (block_size(), 0u32..=12).prop_map(|(size, shift)| Operation::AllocateAligned(size, shift)),
        9 => any::<usize>().prop_map(Operation::Free),
        1 => prop_oneof![Just(0usize), 1usize..=300_000].prop_map(Operation::Expand),
        1 => Just(Operation::Compact),
        1 => prop_oneof![
            (0usize..=200_000).prop_map(ResizeTarget::GrowBy),
            (0usize..=300_000).prop_map(ResizeTarget::ShrinkBy),
            (0usize..=1000).prop_map(ResizeTarget::Fraction),
        ]
        .prop_map(Operation::Resize),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(0usize), 1usize..=40_000, Just(64 * 1024)],
        prop_oneof![3 => Just(16usize), 1 => Just(32usize), 1 => Just(256usize)],
        prop_oneof![Just(1.0f64), Just(1.5), Just(2.0), Just(3.0)],
        prop_oneof![3 => Just(None), 1 => (0usize..=512 * 1024).prop_map(Some)],
    )
        .prop_map(|(initial_size, alignment, growth_factor, max_headroom)| Setup {
            initial_size,
            alignment,
            growth_factor,
            max_headroom,
        })
}

fn run_model(setup: &Setup, operations: &[Operation]) {
    let mut config = PoolConfig::new(setup.initial_size).alignment(setup.alignment).growth_factor(setup.growth_factor);
    if let Some(headroom) = setup.max_headroom {
        config = config.max_size(page_round(setup.initial_size) + headroom);
    }
    let pool = MemoryPool::with_config(config).expect("valid configuration");
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    pool.on_resize(move |event| log.lock().unwrap().push(*event));
    let mut model = Model::new(setup, &pool);
    model.verify(&pool, &events);
    for operation in operations {
        match *operation {
            Operation::Allocate(size) => model.allocate(&pool, size, None),
            Operation::AllocateAligned(size, shift) => model.allocate(&pool, size, Some(1 << shift)),
            Operation::Free(selector) => model.free(&pool, selector),
            Operation::Expand(bytes) => model.expand(&pool, bytes),
            Operation::Compact => model.compact(&pool),
            Operation::Resize(ref target) => model.resize(&pool, target),
        }
        model.verify(&pool, &events);
    }
    while !model.live.is_empty() {
        model.free(&pool, 0);
        model.verify(&pool, &events);
    }
    assert_eq!(pool.stats().free_blocks, pool.regions().len(), "one free block per region once all is freed");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_agrees_with_the_model(setup in setup(), operations in prop::collection::vec(operation(), 1..150)) {
        run_model(&setup, &operations);
    }
}

/// Every power-of-two alignment from 1 to 4096 is honoured, with the
/// padding left free and the pattern intact.
#[test]
fn every_power_of_two_alignment_is_honoured() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let mut blocks = Vec::new();
    for round in 0..3u64 {
        for shift in 0..=12u32 {
            let align = 1usize << shift;
            let size = 1 + (shift as usize * 37 + round as usize * 11) % 300;
            let block = pool.allocate_aligned(size, align).unwrap();
            assert_eq!(block.as_ptr() as usize % align, 0, "align {align}");
            assert_eq!(block.as_ptr() as usize % 16, 0, "granule alignment");
            let seed = round * 100 + u64::from(shift);
            // SAFETY: a fresh block of at least `size` bytes.
            unsafe { fill(block, size, seed) };
            blocks.push((block, size, seed));
        }
    }
    pool.check().unwrap();
    for (block, size, seed) in blocks {
        // SAFETY: live blocks of `size` bytes.
        unsafe {
            assert_intact(block, size, seed);
            pool.free(block).unwrap();
        }
    }
    let stats = pool.stats();
    assert_eq!((stats.used, stats.live_allocations), (0, 0));
    assert_eq!(stats.free_blocks, pool.regions().len());
    pool.check().unwrap();
}

/// First fit by address: a block that fits a hole goes into the hole, and
/// freeing neighbours coalesces them into one free block.
#[test]
fn first_fit_fills_the_lowest_hole_and_frees_coalesce() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let region = pool.regions()[0].clone();
    let a = pool.allocate(1000).unwrap();
    let b = pool.allocate(2000).unwrap();
    let c = pool.allocate(3000).unwrap();
    let d = pool.allocate(100).unwrap();
    assert_eq!(a.as_ptr() as usize, region.start, "the first block starts the region");
    assert_eq!(b.as_ptr() as usize, a.as_ptr() as usize + 1008);
    assert_eq!(c.as_ptr() as usize, b.as_ptr() as usize + 2000);
    // SAFETY (whole test): live blocks of the sizes filled.
    unsafe {
        fill(a, 1000, 1);
        fill(b, 2000, 2);
        fill(c, 3000, 3);
        fill(d, 100, 4);
    }
    assert_eq!(pool.stats().free_blocks, 1);
    unsafe { pool.free(b).unwrap() };
    assert_eq!(pool.stats().free_blocks, 2, "B's hole and the tail");
    // Too big for B's hole: it goes to the tail.
    let big = pool.allocate(2001).unwrap();
    assert!(big.as_ptr() as usize > d.as_ptr() as usize);
    // Fits B's hole: it lands at B's address, and the rest of the hole stays free.
    let small = pool.allocate(500).unwrap();
    assert_eq!(small.as_ptr(), b.as_ptr());
    unsafe { fill(small, 500, 5) };
    let stats = pool.stats();
    assert_eq!(stats.free_blocks, 2, "rest of the hole and the tail");
    // Exactly the rest of the hole: it fills it.
    let rest = pool.allocate(2000 - 512).unwrap();
    assert_eq!(rest.as_ptr() as usize, b.as_ptr() as usize + 512);
    assert_eq!(pool.stats().free_blocks, 1);
    unsafe {
        pool.free(rest).unwrap();
        pool.free(small).unwrap();
    }
    assert_eq!(pool.stats().free_blocks, 2, "the hole coalesced again");
    unsafe {
        assert_intact(a, 1000, 1);
        assert_intact(c, 3000, 3);
        pool.free(a).unwrap();
        assert_eq!(pool.stats().free_blocks, 2, "A joins B's hole");
        pool.free(c).unwrap();
        let stats = pool.stats();
        assert_eq!(stats.free_blocks, 2, "A, B and C are one free block; the tail is another");
        let joined = pool.allocate(1008 + 2000 + 3008).unwrap();
        assert_eq!(joined, a, "the joined block fits exactly where A was");
        assert_eq!(pool.stats().free_blocks, 1);
        pool.free(joined).unwrap();
        assert_intact(d, 100, 4);
        pool.free(d).unwrap();
        pool.free(big).unwrap();
    }
    let stats = pool.stats();
    assert_eq!((stats.free_blocks, stats.largest_free_block, stats.used), (1, region.len(), 0));
    pool.check().unwrap();
}

/// Coalescing with the left neighbour only, the right only, and both.
#[test]
fn free_coalesces_with_each_neighbour() {
    let pool = MemoryPool::new(16 * 1024).unwrap();
    let blocks: Vec<_> = (0..5).map(|_| pool.allocate(256).unwrap()).collect();
    for (seed, &block) in blocks.iter().enumerate() {
        // SAFETY: fresh 256-byte blocks.
        unsafe { fill(block, 256, seed as u64) };
    }
    let runs = || pool.stats().free_blocks;
    assert_eq!(runs(), 1);
    // SAFETY (whole test): live blocks, each freed once.
    unsafe {
        pool.free(blocks[1]).unwrap();
        assert_eq!(runs(), 2);
        pool.free(blocks[2]).unwrap(); // joins its left neighbour
        assert_eq!(runs(), 2);
        assert_eq!(pool.stats().largest_free_block, 16 * 1024 - 5 * 256);
        let hole = pool.allocate(512).unwrap();
        assert_eq!(hole, blocks[1], "the coalesced hole fits 512 bytes at its start");
        pool.free(hole).unwrap();
        pool.free(blocks[4]).unwrap(); // joins the tail on its right
        assert_eq!(runs(), 2);
        pool.free(blocks[3]).unwrap(); // joins both neighbours
        assert_eq!(runs(), 1);
        assert_intact(blocks[0], 256, 0);
        pool.free(blocks[0]).unwrap();
    }
    assert_eq!((runs(), pool.stats().largest_free_block), (1, 16 * 1024));
    pool.check().unwrap();
}
