//! `PoolConfig::zero_on_free`: freed blocks read zero through the pool's raw
//! memory, on both paths, whether the allocating thread frees them or
//! another: shared blocks all of them, cache blocks all but their first
//! word, the link of the free list they join. A pool without the setting
//! leaves the data where it was, which shows that the reads see the
//! memory the blocks had.

mod common;

use allocator_api2::alloc::{Allocator, Layout};
use common::fill;
use lle_mempool::{MemoryPool, PoolConfig};
use std::collections::HashSet;
use std::ptr::NonNull;

/// The bytes of a freed cache block that the pool may write for its own
/// use: the first word, the free list's link.
const LINK: usize = std::mem::size_of::<usize>();

/// Sizes served by the thread caches (classes of 16 up to 1024 bytes, one
/// of them not a multiple of 16).
const CACHE_SIZES: [usize; 5] = [16, 24, 72, 320, 1024];
/// Sizes served by the shared pool, through `allocate` (any size) and
/// `allocate_fast` (above 1 KiB).
const SHARED_SIZES: [usize; 5] = [16, 100, 1025, 4000, 100_000];
/// Blocks per size: enough to fill several free-list links.
const BLOCKS: usize = 40;

fn wiping_pool() -> MemoryPool {
    MemoryPool::with_config(PoolConfig::new(1 << 20).zero_on_free(true)).unwrap()
}

/// A freed block's bytes, read from the pool's memory, which stays mapped.
///
/// # Safety
/// `block..block + len` must lie in memory the pool still maps.
unsafe fn raw_bytes(block: usize, len: usize) -> Vec<u8> {
    // SAFETY: per the caller; volatile, as memory the program gave up.
    (0..len).map(|offset| unsafe { ((block + offset) as *const u8).read_volatile() }).collect()
}

/// Asserts that the freed cache blocks read zero past their link word, and
/// that each link is zero or the address of another block freed into the
/// same slab.
fn assert_cache_blocks_wiped(blocks: &[usize], len: usize) {
    let freed: HashSet<usize> = blocks.iter().copied().collect();
    for &block in blocks {
        // SAFETY: the block's slab holds a live keeper block (see the
        // tests), so it is mapped and not given back.
        let bytes = unsafe { raw_bytes(block, len) };
        let nonzero: Vec<usize> = (0..len).filter(|&offset| bytes[offset] != 0).collect();
        assert!(
            nonzero.iter().all(|&offset| offset < LINK),
            "cache block {block:#x} of {len} bytes: non-zero bytes past the link word at {nonzero:?}"
        );
        let link = usize::from_ne_bytes(bytes[..LINK].try_into().unwrap());
        assert!(
            link == 0 || (freed.contains(&link) && link >> 16 == block >> 16),
            "cache block {block:#x}: its first word {link:#x} is neither zero nor a freed block of its slab"
        );
    }
}

/// Asserts that the freed shared blocks read zero, all their bytes.
fn assert_shared_blocks_wiped(blocks: &[(usize, usize)]) {
    for &(block, len) in blocks {
        // SAFETY: nothing compacts the pool, so its regions stay mapped.
        let bytes = unsafe { raw_bytes(block, len) };
        let nonzero = bytes.iter().filter(|&&byte| byte != 0).count();
        assert_eq!(nonzero, 0, "shared block {block:#x} of {len} bytes: {nonzero} bytes not zero");
    }
}

/// Allocates `BLOCKS` cache blocks of `size` after one block that stays
/// live (so that their slab is never given back while the test reads it),
/// fills them, and returns the keeper and the blocks with their usable size.
fn fill_cache_blocks(pool: &MemoryPool, size: usize) -> (NonNull<u8>, Vec<usize>, usize) {
    let keeper = pool.allocate_fast(size).unwrap();
    let len = pool.usable_size(keeper).unwrap();
    let blocks = (0..BLOCKS)
        .map(|seed| {
            let block = pool.allocate_fast(size).unwrap();
            // SAFETY: a live block of `len` usable bytes.
            unsafe { fill(block, len, seed as u64 + 1) };
            block.as_ptr() as usize
        })
        .collect();
    (keeper, blocks, len)
}

/// Frees blocks given by address.
///
/// # Safety
/// Each is a live block of `pool`, freed once.
unsafe fn free_all(pool: &MemoryPool, blocks: &[usize]) {
    for &block in blocks {
        // SAFETY: per the caller.
        unsafe { pool.free_fast(NonNull::new(block as *mut u8).unwrap()).unwrap() };
    }
}

#[test]
fn cache_blocks_freed_by_their_thread_read_zero_past_the_link() {
    let pool = wiping_pool();
    for size in CACHE_SIZES {
        let (keeper, blocks, len) = fill_cache_blocks(&pool, size);
        // SAFETY: live blocks, freed once.
        unsafe { free_all(&pool, &blocks) };
        assert_cache_blocks_wiped(&blocks, len);
        // And through `free`, the other entry point.
        let again: Vec<usize> = (0..BLOCKS).map(|_| pool.allocate_fast(size).unwrap().as_ptr() as usize).collect();
        for &block in &again {
            // SAFETY: a live block of `len` bytes, then freed once.
            unsafe {
                fill(NonNull::new(block as *mut u8).unwrap(), len, 99);
                pool.free(NonNull::new(block as *mut u8).unwrap()).unwrap();
            }
        }
        assert_cache_blocks_wiped(&again, len);
        // SAFETY: the live keeper, freed once.
        unsafe { pool.free_fast(keeper).unwrap() };
    }
    pool.check().unwrap();
}

#[test]
fn cache_blocks_freed_by_another_thread_read_zero_past_the_link() {
    let pool = wiping_pool();
    for size in CACHE_SIZES {
        // Allocated here, freed there: remote frees, batched by the freeing
        // thread and handed over when it exits.
        let (keeper, blocks, len) = fill_cache_blocks(&pool, size);
        std::thread::scope(|scope| {
            // SAFETY: live blocks, freed once.
            scope.spawn(|| unsafe { free_all(&pool, &blocks) });
        });
        assert_cache_blocks_wiped(&blocks, len);
        // Allocated there (the slab is abandoned when the thread exits, its
        // keeper still live), freed here.
        let (keeper_there, blocks_there, len) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (keeper, blocks, len) = fill_cache_blocks(&pool, size);
                    (keeper.as_ptr() as usize, blocks, len)
                })
                .join()
                .unwrap()
        });
        // SAFETY: live blocks, freed once.
        unsafe { free_all(&pool, &blocks_there) };
        pool.flush_remote_frees();
        assert_cache_blocks_wiped(&blocks_there, len);
        // SAFETY: the live keepers, freed once.
        unsafe { free_all(&pool, &[keeper.as_ptr() as usize, keeper_there]) };
    }
    pool.check().unwrap();
}

#[test]
fn shared_blocks_read_zero_once_freed_on_any_thread() {
    let pool = wiping_pool();
    let allocate = |size: usize, fast: bool| {
        let block = if fast { pool.allocate_fast(size) } else { pool.allocate(size) }.unwrap();
        let len = pool.usable_size(block).unwrap();
        // SAFETY: a live block of `len` usable bytes.
        unsafe { fill(block, len, size as u64) };
        (block.as_ptr() as usize, len)
    };
    for fast in [false, true] {
        let sizes = SHARED_SIZES.iter().filter(|&&size| !fast || size > 1024);
        let sizes: Vec<usize> = sizes.flat_map(|&size| [size; 4]).collect();
        let here: Vec<(usize, usize)> = sizes.iter().map(|&size| allocate(size, fast)).collect();
        for &(block, _) in &here {
            // SAFETY: live blocks, freed once.
            unsafe { pool.free(NonNull::new(block as *mut u8).unwrap()).unwrap() };
        }
        assert_shared_blocks_wiped(&here);
        let there: Vec<(usize, usize)> = sizes.iter().map(|&size| allocate(size, fast)).collect();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let addresses: Vec<usize> = there.iter().map(|&(block, _)| block).collect();
                // SAFETY: live blocks, freed once.
                unsafe { free_all(&pool, &addresses) };
            });
        });
        assert_shared_blocks_wiped(&there);
    }
    pool.check().unwrap();
}

#[test]
fn shrinking_a_shared_block_in_place_wipes_the_tail_it_gives_back() {
    let pool = wiping_pool();
    let old = Layout::from_size_align(4096, 16).unwrap();
    let new = Layout::from_size_align(1000, 16).unwrap();
    let block = Allocator::allocate(&&pool, old).unwrap().cast::<u8>();
    // SAFETY: a live block of 4096 bytes.
    unsafe { fill(block, 4096, 7) };
    // SAFETY: a live block of the allocator for `old`.
    let shrunk = unsafe { Allocator::shrink(&&pool, block, old, new) }.unwrap();
    assert_eq!(shrunk.cast::<u8>(), block, "shrunk in place");
    let kept = shrunk.len();
    assert!((1000..4096).contains(&kept));
    // SAFETY: the kept bytes are the live block's; the tail is the pool's,
    // still mapped.
    unsafe {
        common::assert_intact(block, 1000, 7);
        assert!(raw_bytes(block.as_ptr() as usize + kept, 4096 - kept).iter().all(|&byte| byte == 0));
        Allocator::deallocate(&&pool, block, new);
    }
    assert_shared_blocks_wiped(&[(block.as_ptr() as usize, 4096)]);
    pool.check().unwrap();
}

#[test]
fn refused_frees_wipe_nothing() {
    let pool = wiping_pool();
    let shared = pool.allocate(256).unwrap();
    let cached = pool.allocate_fast(64).unwrap();
    // SAFETY: live blocks of those sizes.
    unsafe {
        fill(shared, 256, 1);
        fill(cached, 64, 2);
    }
    for (block, len, seed) in [(shared, 256, 1), (cached, 64, 2)] {
        // SAFETY: 16 bytes into a live block of at least 64.
        let interior = unsafe { NonNull::new_unchecked(block.as_ptr().add(16)) };
        // SAFETY: an interior pointer, which the pool refuses untouched.
        assert!(unsafe { pool.free(interior) }.is_err());
        // SAFETY: the block is live and untouched by the refused free.
        unsafe { common::assert_intact(block, len, seed) };
    }
    // SAFETY: live blocks, freed once.
    unsafe {
        pool.free(shared).unwrap();
        pool.free_fast(cached).unwrap();
    }
}

#[test]
fn without_the_setting_freed_data_stays_where_it_was() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let (keeper, blocks, len) = fill_cache_blocks(&pool, 72);
    let shared = pool.allocate(4000).unwrap();
    // SAFETY: a live block of 4000 bytes.
    unsafe { fill(shared, 4000, 5) };
    // SAFETY: live blocks, freed once.
    unsafe {
        free_all(&pool, &blocks);
        pool.free(shared).unwrap();
    }
    for &block in &blocks {
        // SAFETY: the slab holds the live keeper, so it stays mapped.
        let bytes = unsafe { raw_bytes(block, len) };
        assert!(bytes[LINK..].iter().any(|&byte| byte != 0), "the default pool wiped a cache block");
    }
    // SAFETY: the pool's regions stay mapped.
    assert!(unsafe { raw_bytes(shared.as_ptr() as usize, 4000) }.iter().any(|&byte| byte != 0));
    // SAFETY: the live keeper, freed once.
    unsafe { pool.free_fast(keeper).unwrap() };
}
