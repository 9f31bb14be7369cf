//! Purging inside cache slabs: a slab that keeps a few live blocks gives
//! back the pages that hold only free blocks, on `compact` and on the
//! thread's next slow path once the purge delay has passed; the live blocks
//! keep their data, and the slab hands every free block out again exactly
//! once when it fills up.
//!
//! Residency is read per page with `mincore`, not from the process's
//! resident set, which other tests running at the same time change.

mod common;

use common::{assert_intact, fill, page_size, resident_pages};
use lle_mempool::{MemoryPool, PoolConfig};
use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::time::Duration;

/// The cache's slab size, which the blocks' addresses reveal.
const SLAB_SIZE: usize = 64 * 1024;
/// Sizes served by the cache, some of which do not divide a page.
const SIZES: [usize; 5] = [16, 48, 64, 272, 1024];
/// Slabs' worth of blocks allocated per size.
const SLABS_PER_SIZE: usize = 3;

/// The blocks of one size, with the seed each was filled with.
struct SizeBlocks {
    size: usize,
    live: Vec<(NonNull<u8>, u64)>,
    /// The whole pages that held only blocks freed since.
    free_pages: Vec<usize>,
    freed: usize,
}

fn slab_of(block: NonNull<u8>) -> usize {
    block.as_ptr() as usize & !(SLAB_SIZE - 1)
}

/// Fills `SLABS_PER_SIZE` slabs' worth of blocks of each size, then frees
/// every block but those that touch two pages of each slab (its first
/// block, and the blocks touching the slab's middle page): the pages in
/// between hold only free blocks.
fn fill_and_thin(pool: &MemoryPool) -> Vec<SizeBlocks> {
    let page = page_size();
    let mut seed = 0u64;
    SIZES
        .iter()
        .map(|&size| {
            let blocks: Vec<(NonNull<u8>, u64)> = (0..SLABS_PER_SIZE * SLAB_SIZE / size)
                .map(|_| {
                    let block = pool.allocate_fast(size).unwrap();
                    seed += 1;
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe { fill(block, size, seed) };
                    (block, seed)
                })
                .collect();
            let first_of_slab: BTreeSet<usize> = blocks
                .iter()
                .map(|&(block, _)| block.as_ptr() as usize)
                .fold(std::collections::BTreeMap::new(), |mut firsts, address| {
                    firsts.entry(address & !(SLAB_SIZE - 1)).or_insert(address);
                    firsts
                })
                .into_values()
                .collect();
            let pages = |block: NonNull<u8>| {
                let start = block.as_ptr() as usize;
                start / page..(start + size).div_ceil(page)
            };
            let keep = |block: NonNull<u8>| {
                let middle = (slab_of(block) + SLAB_SIZE / 2) / page;
                first_of_slab.contains(&(block.as_ptr() as usize)) || pages(block).contains(&middle)
            };
            let (live, dead): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|&(block, _)| keep(block));
            let busy: BTreeSet<usize> = live.iter().flat_map(|&(block, _)| pages(block)).collect();
            let free_pages: BTreeSet<usize> =
                dead.iter().flat_map(|&(block, _)| pages(block)).filter(|page| !busy.contains(page)).collect();
            let freed = dead.len();
            for (block, _) in dead {
                // SAFETY: a live block of the pool, freed once.
                unsafe { pool.free_fast(block).unwrap() };
            }
            SizeBlocks { size, live, free_pages: free_pages.into_iter().collect(), freed }
        })
        .collect()
}

fn resident(pages: &[usize]) -> usize {
    let page = page_size();
    pages.iter().map(|&index| resident_pages(NonNull::new((index * page) as *mut u8).unwrap(), page)).sum()
}

/// The live blocks still hold their data; then as many blocks as were
/// freed are allocated again, from the same slabs, each once, and every
/// block, old and new, holds its own data.
fn check_and_refill(pool: &MemoryPool, sizes: &[SizeBlocks]) {
    for blocks in sizes {
        for &(block, seed) in &blocks.live {
            // SAFETY: live blocks of `size` bytes.
            unsafe { assert_intact(block, blocks.size, seed) };
        }
    }
    pool.check().unwrap();
    let slabs = pool.stats().fast.slabs;
    let mut seed = 1 << 32;
    let mut all: Vec<(NonNull<u8>, usize, u64)> = Vec::new();
    for blocks in sizes {
        let slabs_of_size: BTreeSet<usize> = blocks.live.iter().map(|&(block, _)| slab_of(block)).collect();
        for _ in 0..blocks.freed {
            let block = pool.allocate_fast(blocks.size).unwrap();
            assert!(slabs_of_size.contains(&slab_of(block)), "size {}: a freed block comes back", blocks.size);
            seed += 1;
            // SAFETY: a fresh block of `size` bytes.
            unsafe { fill(block, blocks.size, seed) };
            all.push((block, blocks.size, seed));
        }
        all.extend(blocks.live.iter().map(|&(block, seed)| (block, blocks.size, seed)));
    }
    assert_eq!(pool.stats().fast.slabs, slabs, "the slabs filled up again, and no new one was needed");
    let distinct: BTreeSet<usize> = all.iter().map(|&(block, _, _)| block.as_ptr() as usize).collect();
    assert_eq!(distinct.len(), all.len(), "no block handed out twice");
    for &(block, size, seed) in &all {
        // SAFETY: live blocks of `size` bytes.
        unsafe { assert_intact(block, size, seed) };
    }
    pool.check().unwrap();
}

#[test]
fn compact_gives_back_the_free_pages_inside_slabs_with_live_blocks() {
    let pool = MemoryPool::with_config(PoolConfig::new(16 << 20).purge_delay(None)).unwrap();
    let sizes = fill_and_thin(&pool);
    for blocks in &sizes {
        assert!(blocks.free_pages.len() >= SLABS_PER_SIZE * 8, "size {}: whole free pages", blocks.size);
        assert_eq!(resident(&blocks.free_pages), blocks.free_pages.len(), "written, freed, still resident");
    }
    pool.compact().unwrap();
    for blocks in &sizes {
        assert_eq!(resident(&blocks.free_pages), 0, "size {}: the free pages were purged", blocks.size);
    }
    check_and_refill(&pool, &sizes);
}

#[test]
fn the_slow_path_purges_the_slabs_once_the_delay_has_passed() {
    const DELAY: Duration = Duration::from_millis(300);
    let pool = MemoryPool::with_config(PoolConfig::new(16 << 20).purge_delay(Some(DELAY))).unwrap();
    let sizes = fill_and_thin(&pool);
    let pages: Vec<usize> = sizes.iter().flat_map(|blocks| blocks.free_pages.iter().copied()).collect();
    assert_eq!(resident(&pages), pages.len(), "no purge before the delay");
    std::thread::sleep(DELAY + Duration::from_millis(5));
    // A size not used yet: its first allocation takes the slow path.
    let other = pool.allocate_fast(512).unwrap();
    assert_eq!(resident(&pages), 0, "the slow path purged the free pages without compact");
    // SAFETY: a live block, freed once.
    unsafe { pool.free_fast(other).unwrap() };
    check_and_refill(&pool, &sizes);
}
