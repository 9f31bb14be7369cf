//! Purging on a delay: after most of the live set dies and the purge delay
//! passes, later frees give the free pages back to the OS, page for page as
//! `mincore` sees them, while live blocks keep their data and stay
//! resident; with no delay only `compact` gives them back; empty cache
//! slabs go back to the shared pool and are purged the same way.
//!
//! Residency is read per page of the pool with `mincore`, not from the
//! process's resident set, which other tests running at the same time
//! change.

mod common;

use common::{assert_intact, fill, page_size, resident_pages};
use lle_mempool::{MemoryPool, PoolConfig};
use std::ptr::NonNull;
use std::time::Duration;

/// The die-off blocks: 640 of 64 KiB, 40 MiB.
const BLOCK: usize = 64 * 1024;
const BLOCKS: usize = 640;
/// One die-off block in this many lives on.
const KEEP_EVERY: usize = 10;
/// The frees after the delay: more than the purge threshold of the pool
/// (an eighth of 64 MiB), so at least one of them finds the budget spent.
const LATE_BLOCK: usize = 1 << 20;
const LATE_BLOCKS: usize = 12;
const POOL: usize = 64 << 20;
const DELAY: Duration = Duration::from_millis(20);

/// A pool holding the die-off blocks (every page written), then the late
/// blocks, then one last block that keeps the region's tail from being cut
/// by `compact`, so that every page the test looks at stays mapped.
struct Workload {
    pool: MemoryPool,
    blocks: Vec<NonNull<u8>>,
    late: Vec<NonNull<u8>>,
    last: NonNull<u8>,
}

impl Workload {
    fn new(purge_delay: Option<Duration>) -> Workload {
        let pool = MemoryPool::with_config(PoolConfig::new(POOL).purge_delay(purge_delay)).unwrap();
        let allocate = |seed: usize, len: usize| {
            let block = pool.allocate_aligned(len, page_size()).unwrap();
            // SAFETY: a fresh block of `len` bytes; writing every page
            // makes it resident.
            unsafe { fill(block, len, seed as u64) };
            block
        };
        let blocks = (0..BLOCKS).map(|seed| allocate(seed, BLOCK)).collect();
        let late = (0..LATE_BLOCKS).map(|seed| allocate(BLOCKS + seed, LATE_BLOCK)).collect();
        let last = allocate(BLOCKS + LATE_BLOCKS, BLOCK);
        Workload { pool, blocks, late, last }
    }

    fn kept(index: usize) -> bool {
        index % KEEP_EVERY == 0
    }

    /// Frees nine in ten of the die-off blocks: free runs of 576 KiB
    /// between the survivors.
    fn die_off(&self) {
        for (index, &block) in self.blocks.iter().enumerate() {
            if !Self::kept(index) {
                // SAFETY: a live block of this pool, freed once.
                unsafe { self.pool.free(block).unwrap() };
            }
        }
    }

    /// Frees the late blocks, after the delay.
    fn free_late(&self) {
        std::thread::sleep(DELAY + Duration::from_millis(10));
        for &block in &self.late {
            // SAFETY: as in `die_off`.
            unsafe { self.pool.free(block).unwrap() };
        }
    }

    /// The resident pages of the freed die-off blocks, and of the kept ones.
    fn residency(&self) -> (usize, usize) {
        let (mut freed, mut kept) = (0, 0);
        for (index, &block) in self.blocks.iter().enumerate() {
            let pages = resident_pages(block, BLOCK);
            if Self::kept(index) {
                kept += pages;
            } else {
                freed += pages;
            }
        }
        (freed, kept)
    }

    /// Every survivor holds its pattern; then everything is freed and the
    /// pool checks out.
    fn finish(self) {
        for (index, &block) in self.blocks.iter().enumerate() {
            if Self::kept(index) {
                // SAFETY: a live block of this pool, freed once.
                unsafe {
                    assert_intact(block, BLOCK, index as u64);
                    self.pool.free(block).unwrap();
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            assert_intact(self.last, BLOCK, (BLOCKS + LATE_BLOCKS) as u64);
            self.pool.free(self.last).unwrap();
        }
        self.pool.check().unwrap();
        assert_eq!(self.pool.stats().live_allocations, 0);
    }
}

const KEPT_BLOCKS: usize = BLOCKS / KEEP_EVERY;

#[test]
fn free_pages_are_purged_once_the_delay_has_passed() {
    let workload = Workload::new(Some(DELAY));
    let page_count = |blocks: usize| blocks * BLOCK / page_size();
    assert_eq!(workload.residency(), (page_count(BLOCKS - KEPT_BLOCKS), page_count(KEPT_BLOCKS)), "all written");
    workload.die_off();
    workload.free_late();
    let (freed, kept) = workload.residency();
    assert_eq!(freed, 0, "every page of the freed blocks was purged");
    assert_eq!(kept, page_count(KEPT_BLOCKS), "no page of a live block was purged");
    assert_eq!(resident_pages(workload.last, BLOCK), page_count(1));
    let stats = workload.pool.stats();
    assert!(stats.purges >= 1, "{stats:?}");
    assert_eq!(stats.compactions, 0, "no compact was called");
    workload.pool.check().unwrap();
    workload.finish();
}

#[test]
fn without_a_delay_only_compact_purges() {
    let workload = Workload::new(None);
    let page_count = |blocks: usize| blocks * BLOCK / page_size();
    workload.die_off();
    workload.free_late();
    assert_eq!(
        workload.residency(),
        (page_count(BLOCKS - KEPT_BLOCKS), page_count(KEPT_BLOCKS)),
        "nothing is purged without a delay"
    );
    assert_eq!(workload.pool.stats().purges, 0);
    workload.pool.check().unwrap();

    workload.pool.compact().unwrap();
    assert_eq!(workload.residency(), (0, page_count(KEPT_BLOCKS)), "compact purged every free page, no live one");
    assert_eq!(workload.pool.stats().purges, 0, "compact's purges are not delayed ones");
    workload.pool.check().unwrap();
    workload.finish();
}

#[test]
fn compact_still_purges_with_a_delay_set() {
    let workload = Workload::new(Some(Duration::from_secs(3600)));
    let page_count = |blocks: usize| blocks * BLOCK / page_size();
    workload.die_off();
    workload.free_late();
    let (freed, _) = workload.residency();
    assert_eq!(freed, page_count(BLOCKS - KEPT_BLOCKS), "an hour has not passed");
    workload.pool.compact().unwrap();
    assert_eq!(workload.residency(), (0, page_count(KEPT_BLOCKS)));
    workload.pool.check().unwrap();
    workload.finish();
}

#[test]
fn empty_cache_slabs_go_back_and_are_purged() {
    const SLAB: usize = 64 * 1024;
    const CACHED: usize = 1000;
    let pool = MemoryPool::with_config(PoolConfig::new(POOL).purge_delay(Some(DELAY))).unwrap();
    // About 16 MiB of cache blocks: some 250 slabs of one class.
    let blocks: Vec<NonNull<u8>> = (0..16 * 1024)
        .map(|seed| {
            let block = pool.allocate_fast(CACHED).unwrap();
            // SAFETY: a fresh block of `CACHED` bytes.
            unsafe { fill(block, CACHED, seed) };
            block
        })
        .collect();
    let late: Vec<NonNull<u8>> = (0..LATE_BLOCKS).map(|_| pool.allocate(LATE_BLOCK).unwrap()).collect();
    let last = pool.allocate(BLOCK).unwrap();
    let mut slabs: Vec<usize> = blocks.iter().map(|block| block.as_ptr() as usize & !(SLAB - 1)).collect();
    slabs.dedup();
    assert!(slabs.len() > 200, "{} slabs", slabs.len());
    for (seed, &block) in blocks.iter().enumerate() {
        // SAFETY: live cache blocks of this pool, each freed once.
        unsafe {
            assert_intact(block, CACHED, seed as u64);
            pool.free_fast(block).unwrap();
        }
    }
    // The cache keeps its current slab and one spare, emptied; every other
    // slab went back to the shared pool.
    let kept_slabs = pool.stats().fast.slabs;
    assert!(kept_slabs <= 2, "{kept_slabs} slabs kept");
    std::thread::sleep(DELAY + Duration::from_millis(10));
    for block in late {
        // SAFETY: live blocks of this pool, each freed once.
        unsafe { pool.free(block).unwrap() };
    }
    let resident: usize = slabs
        .iter()
        .map(|&slab| {
            // SAFETY: slab addresses are non-null pool addresses.
            resident_pages(unsafe { NonNull::new_unchecked(slab as *mut u8) }, SLAB)
        })
        .sum();
    assert!(
        resident <= kept_slabs * SLAB / page_size(),
        "{resident} pages of emptied slabs still resident: more than the {kept_slabs} slabs the cache kept"
    );
    assert!(pool.stats().purges >= 1);
    pool.check().unwrap();
    // SAFETY: a live block, freed once.
    unsafe { pool.free(last).unwrap() };
    pool.check().unwrap();
}
