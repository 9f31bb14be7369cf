//! The reservation: a pool reserves address space for its first region up
//! front and grows by committing it, so it stays one contiguous region that
//! grows in place, and every block lies in it; past the reservation it
//! grows as it would without one. Cutting back inside the reservation
//! decommits and keeps the address space, so the region grows in place
//! again. Every block keeps its data throughout, and `check()` passes
//! after each step.

mod common;

use common::{assert_intact, fill, resident_bytes, Live};
use lle_mempool::{MemoryPool, PoolConfig, PoolError};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

const MIB: usize = 1 << 20;

/// One test at a time: one measures the process's resident memory, which
/// the others' blocks would disturb.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sizes from 16 bytes to 96 KiB, in a fixed, mixed order.
fn block_size(step: usize) -> usize {
    let sizes = [48, 4096, 100, 24 * 1024, 700, 96 * 1024, 16, 10_000];
    sizes[step % sizes.len()]
}

/// Allocates mixed blocks on the shared path until the pool is `size`
/// bytes, and one block that does not fit in what is left.
fn grow_to(pool: &MemoryPool, live: &mut Live, size: usize) {
    let mut step = live.blocks.len();
    while pool.size() < size {
        let len = block_size(step);
        live.add(pool.allocate(len).unwrap(), len);
        step += 1;
    }
}

/// The pool's one region.
fn only_region(pool: &MemoryPool) -> Range<usize> {
    let regions = pool.regions();
    assert_eq!(regions.len(), 1, "one region: {regions:#x?}");
    regions[0].clone()
}

#[test]
fn a_pool_grows_to_256_mib_in_one_contiguous_region() {
    let _exclusive = exclusive();
    let pool = MemoryPool::with_config(PoolConfig::new(MIB).reserve(1 << 30)).unwrap();
    let start = only_region(&pool).start;
    let mut live = Live::new();
    // Fast-path blocks too: their slabs come from the same region.
    for len in [16, 200, 1024] {
        live.add(pool.allocate_fast(len).unwrap(), len);
    }
    grow_to(&pool, &mut live, 256 * MIB);
    assert_eq!(pool.size(), 256 * MIB, "the growth factor doubles the pool each time");
    assert_eq!(pool.stats().expansions, 8);
    let region = only_region(&pool);
    assert_eq!(region, start..start + pool.size(), "the region grew where it stands");
    live.assert_inside(&region);
    live.assert_intact();
    pool.check().unwrap();
    // Every block is the pool's, and the first fit is the region's start.
    assert!(live.blocks.iter().all(|&(block, _, _)| pool.contains(block.as_ptr())));
    assert!(!pool.contains((region.end) as *const u8), "the reservation past the size is not the pool's");
}

#[test]
fn the_default_reservation_keeps_a_growing_pool_in_one_region() {
    let _exclusive = exclusive();
    let pool = MemoryPool::new(MIB).unwrap();
    let start = only_region(&pool).start;
    let mut live = Live::new();
    grow_to(&pool, &mut live, 64 * MIB);
    assert_eq!(only_region(&pool), start..start + pool.size());
    live.assert_intact();
    pool.check().unwrap();

    // With a maximum size, the default reservation is the maximum size: the
    // pool grows in place up to it, and no further.
    let bounded = MemoryPool::with_config(PoolConfig::new(MIB).max_size(32 * MIB)).unwrap();
    let start = only_region(&bounded).start;
    let mut bounded_live = Live::new();
    grow_to(&bounded, &mut bounded_live, 32 * MIB);
    assert_eq!(only_region(&bounded), start..start + 32 * MIB);
    assert!(matches!(bounded.allocate(32 * MIB), Err(PoolError::ExceedsMaxSize { .. })));
    bounded_live.assert_intact();
    bounded.check().unwrap();
}

#[test]
fn growth_past_the_reservation_goes_on_cleanly() {
    let _exclusive = exclusive();
    let pool = MemoryPool::with_config(PoolConfig::new(MIB).reserve(4 * MIB)).unwrap();
    let first = only_region(&pool);
    let mut live = Live::new();
    grow_to(&pool, &mut live, 4 * MIB);
    assert_eq!(only_region(&pool), first.start..first.start + 4 * MIB, "inside the reservation: in place");
    let inside = live.blocks.len();
    grow_to(&pool, &mut live, 64 * MIB);
    pool.check().unwrap();
    live.assert_intact();
    let regions = pool.regions();
    let reserved = regions.iter().find(|region| region.start == first.start);
    assert!(reserved.is_some_and(|region| region.len() >= 4 * MIB), "the first region never moves: {regions:#x?}");
    assert_eq!(regions.iter().map(Range::len).sum::<usize>(), pool.size());
    for &(block, len, _) in &live.blocks {
        let start = block.as_ptr() as usize;
        assert!(regions.iter().any(|region| region.contains(&start) && start + len <= region.end));
    }
    // Freeing what grew past the reservation and compacting leaves the
    // reserved region, which grows in place again.
    live.free_from(&pool, inside);
    pool.compact().unwrap();
    pool.check().unwrap();
    live.assert_intact();
    assert_eq!(only_region(&pool).start, first.start);
    grow_to(&pool, &mut live, 64 * MIB);
    live.assert_intact();
    pool.check().unwrap();
}

#[test]
fn shrinking_inside_the_reservation_keeps_it_for_growth_in_place() {
    let _exclusive = exclusive();
    let pool = MemoryPool::with_config(PoolConfig::new(MIB).reserve(256 * MIB)).unwrap();
    let start = only_region(&pool).start;
    let mut live = Live::new();
    grow_to(&pool, &mut live, 2 * MIB);
    let kept = live.blocks.len();
    // Filled to just past 64 MiB: the last block doubled the pool.
    grow_to(&pool, &mut live, 128 * MIB);
    let touched = resident_bytes();

    // compact: the free tail is decommitted, and resident memory falls.
    live.free_from(&pool, kept);
    let released = pool.compact().unwrap();
    let compacted = only_region(&pool);
    assert_eq!(compacted.start, start);
    assert_eq!(released, 128 * MIB - pool.size());
    assert!(pool.size() <= 2 * MIB, "size {} after compact", pool.size());
    let after = resident_bytes();
    assert!(
        touched.saturating_sub(after) >= 48 * MIB,
        "resident set went from {touched} to {after} bytes; the decommitted tail stayed resident"
    );
    assert!(!pool.contains(compacted.end as *const u8), "the decommitted tail is not the pool's");
    live.assert_intact();
    pool.check().unwrap();

    // Growing again is in place, over the decommitted tail.
    grow_to(&pool, &mut live, 64 * MIB);
    assert_eq!(only_region(&pool), start..start + pool.size());
    live.assert_intact();
    pool.check().unwrap();

    // resize: shrinking decommits, growing commits, in place both ways.
    live.free_from(&pool, kept);
    pool.resize(4 * MIB).unwrap();
    assert_eq!(only_region(&pool), start..start + 4 * MIB);
    live.assert_intact();
    pool.check().unwrap();
    pool.resize(200 * MIB).unwrap();
    assert_eq!(only_region(&pool), start..start + 200 * MIB);
    let big = pool.allocate(150 * MIB).unwrap();
    live.add(big, 150 * MIB);
    live.assert_inside(&(start..start + 200 * MIB));
    live.assert_intact();
    pool.check().unwrap();

    // A pool compacted to nothing reserves afresh when it grows.
    live.free_from(&pool, 0);
    pool.compact().unwrap();
    assert_eq!((pool.size(), pool.regions().len()), (0, 0));
    grow_to(&pool, &mut live, 16 * MIB);
    let region = only_region(&pool);
    assert_eq!(region.len(), pool.size());
    live.assert_inside(&region);
    live.assert_intact();
    pool.check().unwrap();
}

#[test]
fn no_reservation_is_asked_with_zero() {
    let _exclusive = exclusive();
    // Without one, growth maps address space after the region or a new
    // region; either way the blocks keep their data.
    for config in [PoolConfig::new(MIB).reserve(0), PoolConfig::new(MIB).reserve(MIB)] {
        let pool = MemoryPool::with_config(config).unwrap();
        let mut live = Live::new();
        grow_to(&pool, &mut live, 16 * MIB);
        assert_eq!(pool.regions().iter().map(Range::len).sum::<usize>(), pool.size());
        live.assert_intact();
        pool.check().unwrap();
    }
}

#[test]
fn a_reservation_out_of_bounds_is_refused() {
    let _exclusive = exclusive();
    let refused = |config: PoolConfig| match MemoryPool::with_config(config) {
        Err(PoolError::InvalidConfig { reason }) => assert!(reason.contains("reserve"), "{reason}"),
        other => panic!("expected InvalidConfig, got {:?}", other.map(|pool| pool.size())),
    };
    refused(PoolConfig::new(MIB).reserve(MIB - 1));
    refused(PoolConfig::new(MIB).reserve(4096));
    refused(PoolConfig::new(MIB).max_size(8 * MIB).reserve(8 * MIB + 1));
    refused(PoolConfig::new(0).max_size(8 * MIB).reserve(usize::MAX));
    // At the bounds: accepted.
    for config in [
        PoolConfig::new(MIB).reserve(MIB),
        PoolConfig::new(MIB).max_size(8 * MIB).reserve(8 * MIB),
        PoolConfig::new(0).reserve(usize::MAX),
        PoolConfig::new(0).reserve(1),
    ] {
        let pool = MemoryPool::with_config(config).unwrap();
        let block = pool.allocate(100).unwrap();
        // SAFETY: a fresh block, checked and freed once.
        unsafe {
            fill(block, 100, 7);
            assert_intact(block, 100, 7);
            pool.free(block).unwrap();
        }
        pool.check().unwrap();
    }
}
