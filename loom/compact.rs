#![cfg(lle_mempool_loom)]
//! Model 4, compaction against a free and against lock-free readers: one
//! thread frees the last block of a region and compacts, which trims that
//! region's free tail and removes a second, wholly free region; another
//! thread reads the pool meanwhile with `stats()`, `check()` and
//! `contains()`.
//!
//! Trimming publishes a new region table and a new description of the
//! trimmed region, and retires the old ones, the tail and the removed region
//! through the pool's epoch collector. Every reader must see the pool either
//! before or after the compaction, never a mix, and nothing a reader can
//! reach may be freed before it unpins: each table and region carries a
//! reclamation witness (`sync::ReclaimWitness`) whose drop loom checks
//! against every read of it.
//!
//! Breaks this model catches (each tried by hand):
//! - closing the seqlock write bracket in `SharedPool::compact` before the
//!   trimmed regions are published, so a reader sees the new size with the
//!   old regions;
//! - dropping a retired region description at once in `SharedPool::retire`
//!   instead of deferring it to the epoch collector (loom reports the
//!   causality violation on the region's witness);
//! - destroying the replaced region table at once in `SharedPool::publish`
//!   instead of deferring it (loom reports the causality violation on the
//!   table's witness);
//! - `check()` reading the region table without pinning an epoch guard, so
//!   nothing holds back the reclamation of what it reads.
//!
//! The removed region is unmapped through the collector as well, and the
//! trimmed tail is cut off its mapping at once: no lock-free reader touches
//! pool memory (they read tables and indexes only), so the region
//! descriptions and tables are what the epochs must protect here.

#[path = "support.rs"]
mod support;

use lle_mempool::MemoryPool;
use loom::sync::Arc;
use loom::thread;

const PAGE: usize = 4096;
const KEEP: usize = 64;

#[test]
fn compaction_waits_for_readers() {
    support::model(2, || {
        // Region one grows in place to two pages; region two is mapped
        // beside it (the stand-in reserves twice a mapping, once).
        let pool = Arc::new(MemoryPool::new(PAGE).expect("pool"));
        pool.expand(PAGE).expect("grow in place");
        pool.expand(PAGE).expect("map a second region");
        assert_eq!(pool.regions().len(), 2);
        let kept = pool.allocate(KEEP).expect("kept block").as_ptr() as usize;
        // The rest of region one's first page, so the next block starts on
        // its second page.
        let filler = pool.allocate(PAGE - KEEP).expect("filler").as_ptr() as usize;
        let last = pool.allocate(KEEP).expect("last block").as_ptr() as usize;
        assert_eq!(last - kept, PAGE, "the last block opens region one's second page");
        // SAFETY: live and unused.
        unsafe { pool.free(support::block(filler)).expect("free the filler") };
        // SAFETY: `kept` is a live block of KEEP bytes that only this thread uses.
        unsafe { std::ptr::write_bytes(kept as *mut u8, 0x5A, KEEP) };

        let reader = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                support::observe_later();
                let stats = pool.stats();
                let before = (3 * PAGE, 2 * KEEP, 0);
                let after = (PAGE, KEEP, 1);
                let seen = (stats.size, stats.used, stats.compactions);
                // Between the free and the compaction: the block is gone,
                // the memory not yet.
                let freed = (3 * PAGE, KEEP, 0);
                assert!([before, freed, after].contains(&seen), "a mixed snapshot: {stats:?}");
                assert_eq!(stats.used + stats.free, stats.size, "{stats:?}");
                pool.check().expect("check during the compaction");
                assert!(pool.contains(kept as *const u8), "the kept block left the pool");
            })
        };

        // SAFETY: live and unused.
        unsafe { pool.free(support::block(last)).expect("free the last block") };
        let released = pool.compact().expect("compact");
        reader.join().expect("reader");

        assert_eq!(released, 2 * PAGE, "region one's tail and all of region two");
        let stats = pool.stats();
        assert_eq!((stats.size, stats.used, stats.free_blocks, stats.compactions), (PAGE, KEEP, 1, 1), "{stats:?}");
        assert_eq!(pool.regions().len(), 1);
        assert!(pool.contains(kept as *const u8));
        assert!(!pool.contains(last as *const u8), "the trimmed page is still in the pool");
        // SAFETY: the kept block is live; compaction never moves it.
        let intact = unsafe { std::slice::from_raw_parts(kept as *const u8, KEEP) }.iter().all(|&byte| byte == 0x5A);
        assert!(intact, "compaction touched a live block");
        pool.check().expect("check after the compaction");
    });
}
