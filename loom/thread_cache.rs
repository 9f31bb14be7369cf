#![cfg(lle_mempool_loom)]
//! Model 5, the thread caches: refill and flush against a cross-thread free
//! of the same size class.
//!
//! `refill_collects_a_remote_free`: the owner fills a slab, hands one block
//! to a second thread, which frees it remotely (batched, then handed onto
//! the slab's thread-free list), and allocates once more, which refills: the remotely freed block
//! must come back if its free happened first, and no block may be handed
//! out twice (each keeps its pattern).
//!
//! `flush_races_a_remote_free`: the owner hands its only block to a second
//! thread and exits, so its heap is flushed while the block is freed
//! remotely: the slab is released if the free arrived first, abandoned
//! otherwise and reclaimed by `compact`. In every schedule the fast-path
//! counters balance and the pool ends empty and consistent.
//!
//! Breaks this model catches (each tried by hand):
//! - skipping the collection of remote frees in `ThreadHeap::refill`: a
//!   block freed by another thread before the refill is not reused;
//! - dropping a remote batch instead of handing it over in
//!   `RemoteBatch::hand_over`: the freed block never comes back;
//! - releasing a flushed slab in `ThreadHeap::flush` without checking that
//!   all its blocks have come home: the remote free then lands in memory the
//!   shared pool has taken back;
//! - flushing without collecting a slab's remote frees first: a slab whose
//!   blocks have all come home is abandoned and outlives its thread;
//! - `Release` weakened to `Relaxed` on the compare-and-swap in
//!   `Slab::push_remote_chain`, or `Acquire` on the swap in
//!   `OwnedSlab::collect_remote`: the refill then reads the freed block's link
//!   unordered after the other thread wrote it, a causality violation
//!   (`loom/remote_free.rs` covers batches and non-empty lists).

#[path = "support.rs"]
mod support;

use lle_mempool::{MemoryPool, PoolConfig, PoolError};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

/// The largest cache class: a 4 KiB model slab holds only a few blocks.
const SIZE: usize = 1024;
/// Slabs are aligned to their size, 4 KiB under the models.
const SLAB_SIZE: usize = 4096;
/// Room for a few slabs.
const POOL_SIZE: usize = 4 * SLAB_SIZE;

fn fill(address: usize, byte: u8) {
    // SAFETY: the callers own the SIZE bytes at `address`, a live block.
    unsafe { std::ptr::write_bytes(address as *mut u8, byte, SIZE) };
}

fn holds(address: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { std::slice::from_raw_parts(address as *const u8, SIZE) }.iter().all(|&value| value == byte)
}

/// Frees `block` from another thread and says so in `freed`.
fn free_remotely(pool: Arc<MemoryPool>, block: usize, freed: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        assert!(holds(block, 0xB0), "the handed-over block was reused while still live");
        // SAFETY: handed over by its allocator; only this thread uses it.
        unsafe { pool.free_fast(support::block(block)).expect("remote free") };
        // Hand the batched free over now rather than at thread exit.
        pool.flush_remote_frees();
        freed.store(true, Ordering::Release);
    })
}

#[test]
fn refill_collects_a_remote_free() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(POOL_SIZE)).expect("pool"));
        let freed = Arc::new(AtomicBool::new(false));
        // This thread owns the slab and never exits during the model.
        let handed = pool.allocate_fast(SIZE).expect("first block").as_ptr() as usize;
        fill(handed, 0xB0);
        let left = pool.stats().fast.cached_blocks;
        assert!(left >= 1, "a model slab holds at least two {SIZE}-byte blocks");
        let mut mine = Vec::new();
        for index in 0..left {
            let block = pool.allocate_fast(SIZE).expect("fill the slab").as_ptr() as usize;
            fill(block, index as u8);
            mine.push(block);
        }
        let remote = free_remotely(Arc::clone(&pool), handed, Arc::clone(&freed));

        // The remote free goes first here; loom also tries it at every
        // point of the refill.
        support::observe_later();
        let seen_free = freed.load(Ordering::Acquire);
        let refilled = pool.allocate_fast(SIZE).expect("refill").as_ptr() as usize;
        if seen_free {
            assert_eq!(refilled, handed, "the refill did not collect the remote free");
            assert_eq!(pool.stats().fast.slabs, 1, "a new slab despite a free block");
        }
        fill(refilled, 0xEE);
        remote.join().expect("remote");
        for (index, &block) in mine.iter().enumerate() {
            assert!(holds(block, index as u8), "block {index} was handed out twice");
        }
        mine.push(refilled);
        let mut distinct = mine.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), mine.len(), "a block handed out twice");
        for block in mine {
            // SAFETY: live blocks of this thread.
            unsafe { pool.free_fast(support::block(block)).expect("owner free") };
        }
        let stats = pool.stats();
        assert_eq!(stats.fast.allocations, stats.fast.frees, "{stats:?}");
        assert_eq!(stats.fast.remote_frees, 1, "{stats:?}");
        pool.check().expect("check at the end");
    });
}

/// Yields the main thread may spend waiting for an exiting thread's
/// thread-locals to be destroyed before it may conclude the flush is over:
/// a yield lets every other thread run until it blocks, so this only has to
/// cover the preemptions and lock hand-offs loom may add.
const FLUSH_WAIT_YIELDS: usize = 8;

#[test]
fn flush_races_a_remote_free() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(POOL_SIZE)).expect("pool"));
        let freed = Arc::new(AtomicBool::new(false));
        let owner = {
            let (pool, freed) = (Arc::clone(&pool), Arc::clone(&freed));
            thread::spawn(move || {
                let handed = pool.allocate_fast(SIZE).expect("block").as_ptr() as usize;
                fill(handed, 0xB0);
                let remote = free_remotely(Arc::clone(&pool), handed, Arc::clone(&freed));
                // The remote free goes first here; loom also tries it at
                // every point of the flush that follows.
                support::observe_later();
                let seen_free = freed.load(Ordering::Acquire);
                // Returning ends the thread: its heap is flushed.
                (handed, seen_free, remote)
            })
        };
        let (handed, seen_free, remote) = owner.join().expect("owner");
        remote.join().expect("remote");

        // loom wakes `join` before the joined thread's thread-locals are
        // destroyed (std waits for them), so the flush may still be under
        // way: wait until the slab is back in the shared pool, compacting to
        // reclaim it if the flush abandoned it.
        let slab = support::block(handed & !(SLAB_SIZE - 1));
        let mut waited = 0;
        loop {
            match pool.usable_size(slab) {
                // Released: a free block of the shared pool, or memory the
                // compaction below gave back.
                Err(PoolError::NotAllocated { .. } | PoolError::ForeignPointer { .. }) => break,
                // Still a slab (owned, or abandoned), or half released.
                Err(PoolError::InteriorPointer { .. }) | Ok(_) => {}
                other => panic!("the slab's memory is neither a slab nor pool memory: {other:?}"),
            }
            if waited >= FLUSH_WAIT_YIELDS {
                assert!(!seen_free, "the flush abandoned a slab whose blocks had all come home");
                pool.compact().expect("compact");
            }
            waited += 1;
            thread::yield_now();
        }
        let stats = pool.stats();
        assert_eq!((stats.fast.allocations, stats.fast.frees, stats.fast.remote_frees), (1, 1, 1), "{stats:?}");
        assert_eq!((stats.fast.slabs, stats.fast.cached_blocks), (0, 0), "{stats:?}");
        assert_eq!((stats.used, stats.live_allocations), (0, 0), "{stats:?}");
        pool.check().expect("check at the end");
    });
}
