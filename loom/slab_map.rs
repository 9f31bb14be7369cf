#![cfg(lle_mempool_loom)]
//! Model 8, the map from addresses to slabs: its publication of new nodes
//! and of registered slabs.
//!
//! An empty pool's first `allocate_fast` maps a region, which builds the
//! map's nodes for it and marks its memory, and then makes a slab there and
//! registers it. Meanwhile another thread, which knows where that slab will
//! be but has not been told it exists, asks `contains` about it and frees a
//! block of it that was never handed out, as a buggy program might. That
//! free must be refused whatever the map says at that moment (memory of
//! no region, shared memory not yet a slab, or a slab), and when it finds the
//! slab it reads the header's block bitmap: a model atomic made when the
//! header was written, so loom reports any read the map's orderings do not
//! order after that write. Walking the map reads the node slots the same
//! way.
//!
//! Breaks this model catches (each tried by hand):
//! - installing a new node `Relaxed` instead of `Release` in
//!   `SlabMap::slot_or_build`: a lookup can reach the node's slots without
//!   seeing them made;
//! - loading a child node `Relaxed` instead of `Acquire` in `SlabMap::slot`,
//!   for the same reason from the reader's side;
//! - storing the slab `Relaxed` instead of `Release` in
//!   `SlabMap::register`: a free that finds the slab can read its header
//!   before it is written;
//! - loading the entry `Relaxed` instead of `Acquire` in
//!   `SlabMap::classify`, likewise.
//!
//! The writer is the main thread and the reader a spawned one that steps
//! aside first (see `support::observe_later` for why the order matters).

#[path = "support.rs"]
mod support;

use lle_mempool::{MemoryPool, PoolConfig, PoolError};
use loom::sync::Arc;
use loom::thread;

/// Slabs are aligned to their size, 4 KiB under the models.
const SLAB_SIZE: usize = 4096;
/// The smallest request.
const SIZE: usize = 16;

#[test]
fn a_new_slab_is_published_with_its_header() {
    support::model(2, || {
        // Under loom the models' mappings are carved in address order from
        // an arena that starts over once nothing is mapped: a probe pool
        // made as the pool is and used as it will be puts its first slab
        // where the pool's will be, and its second block where the pool
        // has a block it never hands out. Checked below, after the fact.
        let config = PoolConfig::new(0).checked(true);
        let (slab, never_handed_out) = {
            let probe = MemoryPool::with_config(config.clone()).expect("probe pool");
            let _first = probe.allocate_fast(SIZE).expect("probe block");
            let second = probe.allocate_fast(SIZE).expect("probe block").as_ptr() as usize;
            (second & !(SLAB_SIZE - 1), second)
        };
        let pool = Arc::new(MemoryPool::with_config(config).expect("pool"));

        let observer = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                support::observe_later();
                // Before the region: foreign; after: the pool's.
                let _ = pool.contains(never_handed_out as *const u8);
                // SAFETY: the pool refuses this free whatever it finds: the
                // block is never handed out, and the pool is checked.
                let refused = unsafe { pool.free(support::block(never_handed_out)) };
                assert!(
                    matches!(
                        refused,
                        Err(PoolError::ForeignPointer { .. }
                            | PoolError::InteriorPointer { .. }
                            | PoolError::NotAllocated { .. })
                    ),
                    "a free of a block never handed out: {refused:?}"
                );
            })
        };

        let block = pool.allocate_fast(SIZE).expect("first block").as_ptr() as usize;
        // SAFETY: a live block of SIZE bytes, this thread's.
        unsafe { std::ptr::write_bytes(block as *mut u8, 0x5A, SIZE) };
        observer.join().expect("observer");

        assert_eq!(block & !(SLAB_SIZE - 1), slab, "the first slab is not where the model expects it");
        // SAFETY: as above.
        let kept = unsafe { std::slice::from_raw_parts(block as *const u8, SIZE) };
        assert!(kept.iter().all(|&byte| byte == 0x5A), "the refused free touched a live block");
        assert!(pool.contains(never_handed_out as *const u8));
        // SAFETY: refused, as above.
        let again = unsafe { pool.free(support::block(never_handed_out)) };
        assert!(matches!(again, Err(PoolError::NotAllocated { .. })), "{again:?}");
        // SAFETY: the live block, no longer used.
        unsafe { pool.free_fast(support::block(block)).expect("free the block") };
        let stats = pool.stats();
        assert_eq!((stats.fast.allocations, stats.fast.frees), (1, 1), "{stats:?}");
        pool.check().expect("check at the end");
    });
}
