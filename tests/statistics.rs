//! The statistics a program reads to look for leaks: `live_allocations`
//! counts the blocks handed to callers and not yet freed, on both paths,
//! and the memory the caches hold is reported apart, in slabs and bytes.
//!
//! Each test runs what a real program does (pipelines across threads,
//! short-lived threads, mixes of both paths), checks its blocks' contents,
//! and compares the statistics with what it knows it holds.

mod common;

use common::{assert_intact, fill, granule_round, Sent};
use lle_mempool::{MemoryPool, PoolStats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Barrier;

const SLAB_BYTES: usize = 64 * 1024;

impl Sent {
    fn new(pool: &MemoryPool, len: usize, seed: u64, fast: bool) -> Sent {
        let block = if fast { pool.allocate_fast(len) } else { pool.allocate(len) }.unwrap();
        // SAFETY: a fresh block of at least `len` bytes.
        unsafe { fill(block, len, seed) };
        Sent { addr: block.as_ptr() as usize, len, seed }
    }

    /// Checks the contents and frees the block, on either path.
    fn release(self, pool: &MemoryPool, through_fast: bool) {
        // SAFETY: a live block of `len` bytes that only the caller holds,
        // freed once.
        unsafe {
            assert_intact(self.pointer(), self.len, self.seed);
            if through_fast {
                pool.free_fast(self.pointer()).unwrap();
            } else {
                pool.free(self.pointer()).unwrap();
            }
        }
    }
}

/// How the figures must relate however many blocks are live: slabs are
/// 64 KiB each, in use but not allocations.
fn assert_cache_figures(stats: &PoolStats) {
    assert_eq!(stats.used + stats.free, stats.size, "{stats:?}");
    assert_eq!(stats.fast.slab_bytes, stats.fast.slabs * SLAB_BYTES, "{stats:?}");
    assert!(stats.used >= stats.fast.slab_bytes, "{stats:?}");
    let shared_live_blocks = stats.total_allocations - stats.total_frees - stats.fast.slabs as u64;
    let cache_live_blocks = stats.fast.allocations - stats.fast.frees;
    assert_eq!(stats.live_allocations as u64, shared_live_blocks + cache_live_blocks, "{stats:?}");
}

/// Everything freed: nothing is live, whatever the caches keep.
fn assert_nothing_live(pool: &MemoryPool) {
    let stats = pool.stats();
    assert_cache_figures(&stats);
    assert_eq!(stats.live_allocations, 0, "blocks live after everything was freed: {stats:?}");
    assert_eq!(stats.fast.allocations, stats.fast.frees, "{stats:?}");
    assert_eq!(stats.used, stats.fast.slab_bytes, "only cache slabs may be in use: {stats:?}");
    pool.check().unwrap();
}

#[test]
fn a_pipeline_across_threads_leaves_nothing_live() {
    const PRODUCERS: usize = 4;
    const CONSUMERS: usize = 3;
    const EVENTS: u64 = 20_000;
    let pool = MemoryPool::new(1 << 20).unwrap();
    let (sender, receiver) = mpsc::channel::<Vec<Sent>>();
    let receiver = std::sync::Mutex::new(receiver);
    // Producers stop here with their last batch still unconsumed, so the
    // statistics can be compared with what is in flight.
    let produced = Barrier::new(PRODUCERS + 1);
    let counted = Barrier::new(PRODUCERS + 1);
    let consumed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let producers: Vec<_> = (0..PRODUCERS as u64)
            .map(|producer| {
                let sender = sender.clone();
                let (pool, produced, counted) = (&pool, &produced, &counted);
                scope.spawn(move || {
                    let mut held = Vec::new();
                    for event in 0..EVENTS {
                        let seed = producer * EVENTS + event;
                        // Mostly cache blocks, some above the classes.
                        let len = if event % 50 == 0 { 1500 + event as usize % 3000 } else { 8 + event as usize % 500 };
                        held.push(Sent::new(pool, len, seed, event % 7 != 0));
                        if held.len() == 64 {
                            sender.send(std::mem::take(&mut held)).unwrap();
                        }
                    }
                    // Hold the last partial batch across the count.
                    produced.wait();
                    counted.wait();
                    sender.send(held).unwrap();
                })
            })
            .collect();
        drop(sender);
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|consumer| {
                let (pool, receiver, consumed) = (&pool, &receiver, &consumed);
                scope.spawn(move || {
                    let mut freed = 0u64;
                    loop {
                        let batch = receiver.lock().unwrap().recv();
                        let Ok(batch) = batch else { break };
                        let len = batch.len() as u64;
                        for (position, block) in batch.into_iter().enumerate() {
                            block.release(pool, (position + consumer) % 2 == 0);
                        }
                        freed += len;
                        consumed.fetch_add(len, Ordering::SeqCst);
                    }
                    // Hand the blocks held back for other threads' slabs
                    // over now, as a thread that goes idle would.
                    pool.flush_remote_frees();
                    freed
                })
            })
            .collect();
        produced.wait();
        // Wait until the consumers have freed every full batch: then only
        // the held-back partial batches are live.
        let held_back = PRODUCERS as u64 * (EVENTS % 64);
        while consumed.load(Ordering::SeqCst) < PRODUCERS as u64 * EVENTS - held_back {
            // Consumers only finish once the producers send their last batch
            // below: one that finished now panicked.
            assert!(!consumers.iter().any(|consumer| consumer.is_finished()), "a consumer stopped early");
            std::thread::yield_now();
        }
        let stats = pool.stats();
        // Let the producers go before asserting, so that a failure does
        // not leave them waiting.
        counted.wait();
        assert_cache_figures(&stats);
        assert_eq!(stats.live_allocations as u64, held_back, "{stats:?}");
        for producer in producers {
            producer.join().unwrap();
        }
        let freed: u64 = consumers.into_iter().map(|consumer| consumer.join().unwrap()).sum();
        assert_eq!(freed, PRODUCERS as u64 * EVENTS);
    });
    assert_nothing_live(&pool);
    assert!(pool.stats().fast.remote_frees > 0, "blocks crossed threads");
    pool.compact().unwrap();
    assert_nothing_live(&pool);
}

#[test]
fn two_hundred_short_lived_threads_leave_nothing_live() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut kept = Vec::new();
    for thread in 0..200u64 {
        // Each thread frees half of its blocks itself and leaves the rest,
        // cache and shared blocks alike, to the main thread.
        let handed = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let blocks: Vec<Sent> = (0..40u64)
                        .map(|n| {
                            let len = if n % 10 == 0 { 2000 } else { 16 + n as usize * 8 };
                            Sent::new(&pool, len, thread * 100 + n, n % 3 != 0)
                        })
                        .collect();
                    let (mine, handed) = blocks.split_at(20);
                    mine.iter().enumerate().for_each(|(n, block)| block.release(&pool, n % 2 == 0));
                    handed.to_vec()
                })
                .join()
                .unwrap()
        });
        kept.extend(handed);
    }
    // Every thread has exited; its slabs are abandoned or released.
    let stats = pool.stats();
    assert_cache_figures(&stats);
    assert_eq!(stats.live_allocations, kept.len(), "{stats:?}");
    for (n, block) in kept.into_iter().enumerate() {
        block.release(&pool, n % 2 == 1);
    }
    assert_nothing_live(&pool);
    // The abandoned slabs' blocks have all come home: compaction releases
    // them, and only this thread's cache keeps any.
    pool.compact().unwrap();
    assert_nothing_live(&pool);
}

#[test]
fn one_thread_mixing_both_paths_is_counted_block_by_block() {
    let pool = MemoryPool::new(256 * 1024).unwrap();
    let stats = pool.stats();
    assert_eq!((stats.live_allocations, stats.used, stats.fast.slabs, stats.fast.slab_bytes), (0, 0, 0, 0));

    let mut live: Vec<(Sent, bool)> = Vec::new();
    let mut shared_bytes = 0;
    for n in 0..600u64 {
        // allocate, allocate_fast within the classes, allocate_fast above.
        let (len, fast) = match n % 3 {
            0 => (24 + n as usize % 700, false),
            1 => (8 + n as usize % 1000, true),
            _ => (1100 + n as usize * 3, true),
        };
        let block = Sent::new(&pool, len, n, fast);
        if len > 1024 || !fast {
            shared_bytes += granule_round(len);
        }
        live.push((block, fast));
        if n % 50 == 49 {
            let stats = pool.stats();
            assert_cache_figures(&stats);
            assert_eq!(stats.live_allocations, live.len(), "{stats:?}");
            assert_eq!(stats.used, shared_bytes + stats.fast.slab_bytes, "{stats:?}");
        }
    }
    // Free every other block, each through the other path's function.
    let mut position = 0;
    live.retain(|&(block, fast)| {
        position += 1;
        if position % 2 == 0 {
            return true;
        }
        if block.len > 1024 || !fast {
            shared_bytes -= granule_round(block.len);
        }
        block.release(&pool, !fast);
        false
    });
    let stats = pool.stats();
    assert_cache_figures(&stats);
    assert_eq!(stats.live_allocations, live.len(), "{stats:?}");
    assert_eq!(stats.used, shared_bytes + stats.fast.slab_bytes, "{stats:?}");
    pool.check().unwrap();

    for (block, fast) in live {
        block.release(&pool, fast);
    }
    assert_nothing_live(&pool);
    assert!(pool.stats().fast.slabs > 0, "this thread's cache keeps its slabs");
}

#[test]
fn readers_on_many_threads_share_the_pools_epoch_handles() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..16u64 {
            let pool = &pool;
            scope.spawn(move || {
                for round in 0..200u64 {
                    let block = Sent::new(pool, 64, thread * 1000 + round, round % 2 == 0);
                    let stats = pool.stats();
                    assert!(stats.live_allocations >= 1, "{stats:?}");
                    if round % 50 == 0 {
                        pool.check().unwrap();
                    }
                    block.release(pool, round % 2 == 0);
                }
            });
        }
    });
    assert_nothing_live(&pool);
    // Dropping the pool drops the handles its readers registered (the
    // AddressSanitizer run's leak check sees any that were not).
    drop(pool);
}
