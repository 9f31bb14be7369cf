#![cfg(lle_mempool_loom)]
//! Model 1, the seqlock: a writer changes the free-block index and the
//! counters while a reader takes `stats()` and runs `check()`. The reader may
//! only ever accept a snapshot of a state between two writes.
//!
//! Breaks this model catches (each tried by hand):
//! - dropping the `fence(Release)` in `SeqLock::write`, so a reader can see
//!   a protected store without the odd sequence that announces it;
//! - loading the sequence `Relaxed` instead of `Acquire` at the start of
//!   `SeqLock::read`, so a reader that sees the closing even sequence need
//!   not see the stores before it;
//! - dropping the `fence(Acquire)` in `SeqLock::read`, so the closing
//!   sequence check can be satisfied before the protected loads are done;
//! - storing the closing even sequence `Relaxed` in `SeqWriteGuard::drop`,
//!   so a reader that sees it need not see the stores it closes;
//! - leaving out the write bracket around `SharedPool::free`'s changes, so
//!   a reader sees the index freed and the counters not yet updated.
//!
//! The writer is the main thread and the reader a spawned one: loom runs
//! the main thread first, and then tries the reader at every point of the
//! writes (see `support::observe_later` for why the order matters).

#[path = "support.rs"]
mod support;

use lle_mempool::{MemoryPool, PoolStats};
use loom::sync::Arc;
use loom::thread;

const POOL_SIZE: usize = 4096;

/// What `stats()` may report: `(used, live_allocations, free_blocks,
/// total_allocations, total_frees, largest_free_block)`.
type Seen = (usize, usize, usize, u64, u64, usize);

fn seen(stats: &PoolStats) -> Seen {
    assert_eq!(stats.size, POOL_SIZE);
    assert_eq!(stats.used + stats.free, stats.size, "used and free disagree: {stats:?}");
    (
        stats.used,
        stats.live_allocations,
        stats.free_blocks,
        stats.total_allocations,
        stats.total_frees,
        stats.largest_free_block,
    )
}

/// One 64-byte block at the start of the pool.
const ONE_BLOCK: Seen = (64, 1, 1, 1, 0, POOL_SIZE - 64);
/// That block freed: the pool is one free run again.
const EMPTY: Seen = (0, 0, 1, 1, 1, POOL_SIZE);
/// A 32-byte block allocated where the first one was.
const SMALLER_BLOCK: Seen = (32, 1, 1, 2, 1, POOL_SIZE - 32);

/// The writer frees a block and allocates a smaller one in its place; the
/// reader's `stats()` must be exactly one of the three states around those
/// writes. The index (`largest_free_block`) and the counters (`used`,
/// `free_blocks`, ...) are written in the same bracket, so a torn read
/// shows up as a mix of two states.
#[test]
fn stats_sees_only_whole_writes() {
    support::model(2, || {
        let pool = Arc::new(MemoryPool::new(POOL_SIZE).expect("pool"));
        let first = pool.allocate(64).expect("first block").as_ptr() as usize;
        let reader = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                let during = seen(&pool.stats());
                assert!([ONE_BLOCK, EMPTY, SMALLER_BLOCK].contains(&during), "torn snapshot {during:?}");
            })
        };
        // SAFETY: `first` is a live block that only this thread uses.
        unsafe { pool.free(support::block(first)).expect("free the first block") };
        let second = pool.allocate(32).expect("second block").as_ptr() as usize;
        reader.join().expect("reader");
        assert_eq!(second, first, "first fit puts the second block where the first was");
        assert_eq!(seen(&pool.stats()), SMALLER_BLOCK);
        pool.check().expect("check after the writes");
        // SAFETY: `second` is live and no longer used.
        unsafe { pool.free(support::block(second)).expect("free the second block") };
    });
}

/// The writer frees a block while the reader takes `stats()` and then
/// `check()`, which recomputes free bytes, free runs and live blocks from
/// every word of the index and compares them with the counters: any mix of
/// before and after in one snapshot fails it.
#[test]
fn check_sees_only_whole_writes() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::new(POOL_SIZE).expect("pool"));
        let first = pool.allocate(64).expect("first block").as_ptr() as usize;
        let reader = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                let during = seen(&pool.stats());
                assert!([ONE_BLOCK, EMPTY].contains(&during), "torn snapshot {during:?}");
                pool.check().expect("check during the free");
            })
        };
        // SAFETY: `first` is a live block that only this thread uses.
        unsafe { pool.free(support::block(first)).expect("free the first block") };
        reader.join().expect("reader");
        assert_eq!(seen(&pool.stats()), EMPTY);
        pool.check().expect("check after the free");
    });
}
