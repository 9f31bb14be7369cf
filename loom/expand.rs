#![cfg(lle_mempool_loom)]
//! Model 3, growth against readers, allocation and free: one thread expands
//! the pool while another reads it (`stats()`, `check()`), then allocates a
//! block that only fits once the pool has grown (growing it itself if it
//! gets there first) and frees an older one.
//!
//! Under the models a mapping reserves twice its length, so the first growth
//! extends the region in place (a new region description and index are
//! published, the old ones retired through the epoch collector) and the
//! second maps a new region: both publication paths run in every schedule.
//! No block may be handed out twice (each block keeps its own byte pattern),
//! no byte may be lost (`size`, `used`, `free`, the regions and `check()`
//! agree at the end), and no reader may see the regions of one state with
//! the counters of another.
//!
//! Breaks this model catches (each tried by hand):
//! - counting the growth (`size`, `expansions`) after closing the seqlock
//!   bracket that publishes the grown region, so a reader sees a region
//!   longer than the pool's size;
//! - dropping the old region description at once in `SharedPool::retire`
//!   instead of deferring it to the epoch collector, so a pinned reader
//!   still looking at it uses freed memory (loom reports the causality
//!   violation on the region's reclamation witness);
//! - destroying the replaced region table at once in `SharedPool::publish`
//!   (the reader still pinned on it reads freed memory and the model
//!   fails).

#[path = "support.rs"]
mod support;

use lle_mempool::MemoryPool;
use loom::sync::Arc;
use loom::thread;

const INITIAL_SIZE: usize = 4096;
const GROWTH: usize = 4096;
const OLD_BLOCK: usize = 2048;
const NEW_BLOCK: usize = 3072;

fn fill(address: usize, len: usize, byte: u8) {
    // SAFETY: the callers own the `len` bytes at `address`, a live block.
    unsafe { std::ptr::write_bytes(address as *mut u8, byte, len) };
}

fn holds(address: usize, len: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { std::slice::from_raw_parts(address as *const u8, len) }.iter().all(|&value| value == byte)
}

#[test]
fn growth_published_while_another_thread_allocates() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::new(INITIAL_SIZE).expect("pool"));
        let old_block = pool.allocate(OLD_BLOCK).expect("old block").as_ptr() as usize;
        fill(old_block, OLD_BLOCK, 0xA1);

        let user = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                // Read first, while the expansion may be publishing.
                support::observe_later();
                let stats = pool.stats();
                assert_eq!(stats.used + stats.free, stats.size, "{stats:?}");
                assert!(stats.largest_free_block <= stats.free, "a free block larger than the free space: {stats:?}");
                pool.check().expect("check while the pool grows");
                // Does not fit in the 2 KiB left: it lands in the grown
                // part, whoever grows the pool.
                let new_block = pool.allocate(NEW_BLOCK).expect("new block").as_ptr() as usize;
                fill(new_block, NEW_BLOCK, 0xB2);
                assert!(holds(old_block, OLD_BLOCK, 0xA1), "the new block overlaps the old one");
                // SAFETY: live, and only this thread uses it now.
                unsafe { pool.free(support::block(old_block)).expect("free the old block") };
                new_block
            })
        };
        pool.expand(GROWTH).expect("expand");

        let new_block = user.join().expect("user");

        assert!(holds(new_block, NEW_BLOCK, 0xB2), "the new block was overwritten");
        let regions = pool.regions();
        let mapped: usize = regions.iter().map(|region| region.len()).sum();
        let stats = pool.stats();
        // The expansion, and an automatic growth if the allocation came first.
        let grew_itself = stats.expansions == 2;
        assert_eq!(stats.size, INITIAL_SIZE + GROWTH + if grew_itself { 4096 } else { 0 }, "{stats:?}");
        assert_eq!(mapped, stats.size, "regions {regions:?} against {stats:?}");
        assert_eq!((stats.used, stats.live_allocations), (NEW_BLOCK, 1), "{stats:?}");
        assert_eq!(stats.free, stats.size - NEW_BLOCK);
        pool.check().expect("check after the growth");

        // SAFETY: live and no longer used.
        unsafe { pool.free(support::block(new_block)).expect("free the new block") };
        let stats = pool.stats();
        assert_eq!((stats.used, stats.free, stats.live_allocations), (0, stats.size, 0), "{stats:?}");
        // Every region is one free block again.
        assert_eq!(stats.free_blocks, regions.len(), "{stats:?}");
        assert_eq!(stats.largest_free_block, regions.iter().map(|region| region.len()).max().unwrap_or(0));
        pool.check().expect("check at the end");
    });
}
