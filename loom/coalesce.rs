#![cfg(lle_mempool_loom)]
//! Model 2, coalescing: a free block has a live block on each side; two
//! threads free those neighbours at once while a third allocates, and the
//! freeing threads check the pool while the others are still at work.
//!
//! Whatever the order, the free memory must end up as maximal runs: with
//! the new block freed too, the region is one free block again, and no byte
//! is lost or counted twice (`used`, `free`, `free_blocks`,
//! `largest_free_block` and `check()`, which recounts from the bitmaps).
//!
//! Breaks this model catches (each tried by hand):
//! - releasing the block's granules in `SharedPool::free` before opening the
//!   seqlock write bracket, so a concurrent `check()` sees free granules that
//!   the counters still count as used;
//! - ignoring the right-hand neighbour when `SharedPool::free` counts the
//!   free runs it merges, so a block freed next to a free run leaves one run
//!   too many.

#[path = "support.rs"]
mod support;

use lle_mempool::MemoryPool;
use loom::sync::Arc;
use loom::thread;

const POOL_SIZE: usize = 4096;
const BLOCK: usize = 64;

fn fill(address: usize, byte: u8) {
    // SAFETY: the callers own the BLOCK bytes at `address`, a live block.
    unsafe { std::ptr::write_bytes(address as *mut u8, byte, BLOCK) };
}

fn holds(address: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { std::slice::from_raw_parts(address as *const u8, BLOCK) }.iter().all(|&value| value == byte)
}

/// Frees `address`; with `check`, then checks the whole pool while the
/// other threads may be halfway through their own calls.
fn free_neighbour(pool: &MemoryPool, address: usize, byte: u8, check: bool) {
    assert!(holds(address, byte), "a neighbour's block was overwritten");
    // SAFETY: the block is live and this thread is its only user.
    unsafe { pool.free(support::block(address)).expect("free a neighbour") };
    if check {
        // Let the other threads write first: loom then explores this read
        // at every point of their writes (see `support::observe_later`).
        support::observe_later();
        pool.check().expect("check while the others free and allocate");
    }
}

#[test]
fn neighbours_freed_at_once_merge_into_one_block() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::new(POOL_SIZE).expect("pool"));
        // [left][middle][right][free tail], then the middle is freed.
        let left = pool.allocate(BLOCK).expect("left").as_ptr() as usize;
        let middle = pool.allocate(BLOCK).expect("middle").as_ptr() as usize;
        let right = pool.allocate(BLOCK).expect("right").as_ptr() as usize;
        assert_eq!((middle - left, right - middle), (BLOCK, BLOCK), "first fit lays blocks out in order");
        fill(left, 0x11);
        fill(right, 0x33);
        // SAFETY: `middle` is live and unused.
        unsafe { pool.free(support::block(middle)).expect("free the middle") };
        assert_eq!(pool.stats().free_blocks, 2);

        let left_freer = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || free_neighbour(&pool, left, 0x11, false))
        };
        let right_freer = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || free_neighbour(&pool, right, 0x33, true))
        };
        let new_block = pool.allocate(BLOCK).expect("allocate during the frees").as_ptr() as usize;
        fill(new_block, 0x77);
        left_freer.join().expect("left freer");
        right_freer.join().expect("right freer");

        // First fit put the new block in the lowest free run that existed
        // when it ran: where the left block was (if it was already free) or
        // in the middle hole.
        assert!(new_block == left || new_block == middle, "new block at {:#x}", new_block - left);
        assert!(holds(new_block, 0x77), "the new block was overwritten");
        let stats = pool.stats();
        let runs_around_it = if new_block == left { 1 } else { 2 };
        assert_eq!(
            (stats.used, stats.free, stats.live_allocations, stats.free_blocks),
            (BLOCK, POOL_SIZE - BLOCK, 1, runs_around_it),
            "{stats:?}"
        );
        assert_eq!(stats.largest_free_block, POOL_SIZE - (new_block - left) - BLOCK);
        pool.check().expect("check with the new block live");

        // SAFETY: live and no longer used.
        unsafe { pool.free(support::block(new_block)).expect("free the new block") };
        let stats = pool.stats();
        assert_eq!(
            (stats.used, stats.free, stats.live_allocations, stats.free_blocks, stats.largest_free_block),
            (0, POOL_SIZE, 0, 1, POOL_SIZE),
            "the region is one free block again: {stats:?}"
        );
        pool.check().expect("check at the end");
    });
}
