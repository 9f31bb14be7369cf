#![cfg(lle_mempool_loom)]
//! Model 7, the remote-free hand-over: the links inside freed blocks.
//!
//! `remote_frees_reach_the_owner_through_their_links`: the owner fills a
//! slab and hands three of its blocks to a second thread. That thread frees
//! one and hands it over, then frees the other two (one batch: a chain the
//! freeing thread links through the blocks' first words) and hands them
//! over too, onto the slab's thread-free list, which may still hold the
//! first. Meanwhile the owner allocates three more blocks, so its refill
//! takes whatever has arrived (as its local list, without walking it, when
//! that list is empty) and the allocations after it follow the links. The
//! owner does not wait for the other thread before that: the slab's list is
//! the only thing that orders the links' writes before their reads, and
//! loom checks each link access as a cell's (`sync::read_block_link`).
//! Every block keeps its pattern, none is handed out twice, and the counters
//! balance at the end.
//!
//! Breaks this model catches (each tried by hand), all as causality
//! violations on a block's link:
//! - `Release` weakened to `Relaxed` on the successful compare-and-swap in
//!   `Slab::push_remote_chain`, for every hand-over;
//! - the same only for a batch of more than one block: the links that
//!   `RemoteBatch::add` wrote are then unpublished;
//! - the same only for a hand-over onto a non-empty list, which then
//!   publishes nothing of its own chain (the list's earlier release covers
//!   only the earlier blocks);
//! - `Acquire` weakened to `Relaxed` on the owner's swap in
//!   `OwnedSlab::collect_remote`.

#[path = "support.rs"]
mod support;

use lle_mempool::{MemoryPool, PoolConfig};
use loom::sync::Arc;
use loom::thread;

/// A class whose 4 KiB model slab holds a handful of blocks.
const SIZE: usize = 512;
/// Slabs are aligned to their size, 4 KiB under the models.
const SLAB_SIZE: usize = 4096;
/// Room for a few slabs.
const POOL_SIZE: usize = 4 * SLAB_SIZE;
/// Blocks the owner hands to the other thread.
const HANDED: usize = 3;
/// The pattern of the handed blocks; the owner's keep their index.
const HANDED_BYTE: u8 = 0xB0;

fn fill(address: usize, byte: u8) {
    // SAFETY: the callers own the SIZE bytes at `address`, a live block.
    unsafe { std::ptr::write_bytes(address as *mut u8, byte, SIZE) };
}

fn holds(address: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { std::slice::from_raw_parts(address as *const u8, SIZE) }.iter().all(|&value| value == byte)
}

#[test]
fn remote_frees_reach_the_owner_through_their_links() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(POOL_SIZE)).expect("pool"));
        // This thread owns the slab and never exits during the model.
        let mut handed = Vec::new();
        for _ in 0..HANDED {
            let block = pool.allocate_fast(SIZE).expect("a block to hand over").as_ptr() as usize;
            fill(block, HANDED_BYTE);
            handed.push(block);
        }
        assert_eq!(pool.stats().fast.slabs, 1, "a model slab holds more than {HANDED} {SIZE}-byte blocks");
        let mut mine = Vec::new();
        for index in 0..pool.stats().fast.cached_blocks {
            let block = pool.allocate_fast(SIZE).expect("fill the slab").as_ptr() as usize;
            fill(block, index as u8);
            mine.push(block);
        }
        assert_eq!(pool.stats().fast.cached_blocks, 0, "the slab is full");

        let remote = {
            let (pool, handed) = (Arc::clone(&pool), handed.clone());
            thread::spawn(move || {
                for &block in &handed {
                    assert!(holds(block, HANDED_BYTE), "a handed-over block was reused while still live");
                }
                // SAFETY: handed over by the owner; only this thread uses it.
                unsafe { pool.free_fast(support::block(handed[0])).expect("remote free") };
                pool.flush_remote_frees();
                for &block in &handed[1..] {
                    // SAFETY: as above.
                    unsafe { pool.free_fast(support::block(block)).expect("remote free") };
                }
                pool.flush_remote_frees();
            })
        };

        // The hand-overs go first here; loom also tries the refill at every
        // point of them.
        support::observe_later();
        let mut refilled = Vec::new();
        for _ in 0..HANDED {
            let block = pool.allocate_fast(SIZE).expect("refill").as_ptr() as usize;
            assert!(!mine.contains(&block) && !refilled.contains(&block), "the refill handed out a live block");
            fill(block, 0xEE);
            refilled.push(block);
        }
        remote.join().expect("remote");
        for (index, &block) in mine.iter().enumerate() {
            assert!(holds(block, index as u8), "block {index} was handed out twice");
        }
        mine.extend(refilled);
        for block in mine {
            // SAFETY: live blocks of this thread.
            unsafe { pool.free_fast(support::block(block)).expect("owner free") };
        }
        let stats = pool.stats();
        assert_eq!(stats.fast.allocations, stats.fast.frees, "{stats:?}");
        assert_eq!(stats.fast.remote_frees, HANDED as u64, "{stats:?}");
        pool.check().expect("check at the end");
    });
}
