//! Scale and concurrency: a million live blocks; threads
//! allocating, passing blocks to each other and freeing them while another
//! thread grows, compacts and inspects the pool; readers racing growth.

mod common;

use common::{assert_intact, fill, granule_round, Sent};
use lle_mempool::{MemoryPool, PoolConfig, PoolStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[test]
fn a_million_live_allocations() {
    const COUNT: usize = 1_000_000;
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut blocks: Vec<(usize, usize)> = Vec::with_capacity(COUNT);
    let mut used = 0;
    for seed in 0..COUNT {
        let size = rng.gen_range(16..=64);
        let block = pool.allocate(size).unwrap();
        // SAFETY: a fresh block of at least 16 bytes: the first 8 hold the pattern.
        unsafe { block.as_ptr().cast::<u64>().write(seed as u64 ^ 0x5A5A_5A5A) };
        blocks.push((block.as_ptr() as usize, size));
        used += granule_round(size);
    }
    let stats = pool.stats();
    assert_eq!(stats.live_allocations, COUNT);
    assert_eq!(stats.used, used);
    assert_eq!(stats.total_allocations, COUNT as u64);
    pool.check().unwrap();
    let mut sorted: Vec<(usize, usize)> = blocks.clone();
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        assert!(pair[0].0 + granule_round(pair[0].1) <= pair[1].0, "blocks overlap at {:#x}", pair[1].0);
    }
    for (seed, &(addr, _)) in blocks.iter().enumerate() {
        // SAFETY: a live block whose first 8 bytes we wrote.
        let found = unsafe { (addr as *const u64).read() };
        assert_eq!(found, seed as u64 ^ 0x5A5A_5A5A, "block {seed} at {addr:#x}");
    }
    // Free in an order that exercises coalescing on both sides: odd
    // indexes first, then even.
    for parity in [1, 0] {
        for &(addr, _) in blocks.iter().skip(parity).step_by(2) {
            // SAFETY: live blocks, each freed once.
            unsafe { pool.free(NonNull::new(addr as *mut u8).unwrap()).unwrap() };
        }
        pool.check().unwrap();
    }
    let stats = pool.stats();
    assert_eq!((stats.live_allocations, stats.used), (0, 0));
    assert_eq!(stats.total_frees, COUNT as u64);
    assert_eq!(stats.free_blocks, pool.regions().len(), "one free block per region");
    assert_eq!(stats.peak_used, used);
}

fn assert_stats_invariants(stats: &PoolStats) {
    assert_eq!(stats.used + stats.free, stats.size, "{stats:?}");
    assert!(stats.largest_free_block <= stats.free, "{stats:?}");
    assert!(stats.free_blocks > 0 || stats.free == 0, "{stats:?}");
    assert!(stats.free_blocks == 0 || stats.largest_free_block > 0, "{stats:?}");
    assert!(stats.peak_used >= stats.used, "{stats:?}");
    // The shared pool's live blocks are the callers' shared blocks and the
    // slabs; live_allocations adds the cache blocks callers hold.
    let live_shared = stats.total_allocations - stats.total_frees - stats.fast.slabs as u64;
    assert!(stats.live_allocations as u64 >= live_shared, "{stats:?}");
    assert_eq!(stats.fast.slab_bytes, stats.fast.slabs * 64 * 1024, "{stats:?}");
    assert!(stats.used >= stats.fast.slab_bytes, "{stats:?}");
    assert!(stats.fast.frees <= stats.fast.allocations, "{stats:?}");
    assert!(stats.fast.remote_frees <= stats.fast.frees, "{stats:?}");
}

/// Workers allocate random sizes from both paths, write patterns, pass
/// blocks around a ring through channels, verify and free them with both
/// free functions, while a maintenance thread expands, compacts, reads
/// statistics and checks the pool.
#[test]
fn threads_share_blocks_while_the_pool_grows_and_shrinks() {
    const WORKERS: usize = 4;
    let run_for = Duration::from_millis(2500);
    let pool = MemoryPool::with_config(PoolConfig::new(256 * 1024).growth_factor(1.25)).unwrap();
    let stop = AtomicBool::new(false);
    let seeds = AtomicU64::new(1);
    let stopped_sending = Barrier::new(WORKERS);
    let all_freed = Barrier::new(WORKERS + 1);
    let may_exit = Barrier::new(WORKERS + 1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..WORKERS).map(|_| mpsc::channel::<Vec<Sent>>()).unzip();
    let maintenance_rounds = std::thread::scope(|scope| {
        let _stop_even_on_panic = common::RaiseOnDrop(&stop);
        let mut workers = Vec::new();
        for (worker, receiver) in receivers.into_iter().enumerate() {
            let next = senders[(worker + 1) % WORKERS].clone();
            let (pool, stop, seeds) = (&pool, &stop, &seeds);
            let (stopped_sending, all_freed, may_exit) = (&stopped_sending, &all_freed, &may_exit);
            workers.push(scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(worker as u64 + 100);
                let mut held: Vec<Sent> = Vec::new();
                let release = |block: Sent, rng: &mut SmallRng| {
                    // SAFETY: a live block of this pool, handed to us, freed once.
                    unsafe {
                        assert_intact(block.pointer(), block.len, block.seed);
                        if rng.gen_bool(0.5) {
                            pool.free(block.pointer()).unwrap();
                        } else {
                            pool.free_fast(block.pointer()).unwrap();
                        }
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let (len, block) = if rng.gen_bool(0.6) {
                            let len =
                                if rng.gen_bool(0.95) { rng.gen_range(1..=1024) } else { rng.gen_range(1025..=8192) };
                            (len, pool.allocate_fast(len).unwrap())
                        } else {
                            let len = rng.gen_range(1..=4096);
                            (len, pool.allocate(len).unwrap())
                        };
                        assert!(pool.usable_size(block).unwrap() >= len);
                        let seed = seeds.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: a fresh block of at least `len` bytes.
                        unsafe { fill(block, len, seed) };
                        held.push(Sent { addr: block.as_ptr() as usize, len, seed });
                    }
                    // Pass a random share on, free some, keep the rest a while.
                    let mut batch = Vec::new();
                    let mut index = 0;
                    while index < held.len() {
                        match rng.gen_range(0..4) {
                            0 => batch.push(held.swap_remove(index)),
                            1 => release(held.swap_remove(index), &mut rng),
                            _ => index += 1,
                        }
                    }
                    next.send(batch).unwrap();
                    while let Ok(received) = receiver.try_recv() {
                        for block in received {
                            release(block, &mut rng);
                        }
                    }
                }
                // Nobody sends after this barrier, so draining empties the channel for good.
                stopped_sending.wait();
                drop(next);
                for block in held.drain(..) {
                    release(block, &mut rng);
                }
                while let Ok(received) = receiver.try_recv() {
                    for block in received {
                        release(block, &mut rng);
                    }
                }
                all_freed.wait();
                may_exit.wait();
            }));
        }
        drop(senders);
        let maintenance = scope.spawn(|| {
            // Stop the workers even if an assertion below fails, so the test
            // reports the failure instead of hanging.
            struct StopOnDrop<'a>(&'a AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop_on_drop = StopOnDrop(&stop);
            let mut rng = SmallRng::seed_from_u64(7);
            let mut rounds = 0u64;
            let started = Instant::now();
            while started.elapsed() < run_for {
                match rng.gen_range(0..3) {
                    0 => pool.expand(rng.gen_range(1..=512 * 1024)).unwrap(),
                    1 => {
                        // Workers may grow the pool meanwhile, so only the
                        // unit of what comes back is certain.
                        let released = pool.compact().unwrap();
                        assert_eq!(released % 4096, 0, "compact released {released} bytes, not whole pages");
                    }
                    _ => {}
                }
                assert_stats_invariants(&pool.stats());
                let utilization = pool.utilization();
                assert!((0.0..=100.0).contains(&utilization), "utilization {utilization}");
                pool.check().unwrap_or_else(|error| panic!("check during the run: {error}"));
                rounds += 1;
            }
            stop.store(true, Ordering::Relaxed);
            rounds
        });
        // The maintenance thread's failure is reported once the workers
        // are out of their barriers: panicking here would leave them there.
        let rounds = maintenance.join();
        all_freed.wait();
        // Every block is freed; the workers still hold their slabs.
        let stats = pool.stats();
        let checked = pool.check();
        may_exit.wait();
        // An explicit join waits for the thread's exit, thread-local
        // destructors (which flush the thread's caches) included; the
        // scope's implicit join does not.
        for worker in workers {
            worker.join().unwrap();
        }
        let rounds = rounds.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        checked.unwrap();
        assert_stats_invariants(&stats);
        assert_eq!(stats.live_allocations, 0, "every block is freed: {stats:?}");
        assert_eq!(stats.used, stats.fast.slab_bytes, "only cache slabs are in use: {stats:?}");
        assert_eq!(stats.fast.allocations, stats.fast.frees, "{stats:?}");
        assert!(stats.fast.remote_frees > 0, "blocks crossed threads");
        rounds
    });
    assert!(maintenance_rounds > 10, "the maintenance thread ran {maintenance_rounds} rounds");
    // The workers exited, giving their slabs back.
    pool.compact().unwrap();
    let stats = pool.stats();
    pool.check().unwrap();
    assert_eq!((stats.live_allocations, stats.used, stats.fast.slabs), (0, 0, 0), "{stats:?}");
    assert_eq!(stats.fast.cached_blocks, 0, "{stats:?}");
    assert_eq!(stats.size, 0, "compact gave every free region back: {stats:?}");
}

/// Lock-free readers racing growth and shrinking never see a half-made
/// change: `check()` passes and statistics add up at every instant.
#[test]
fn readers_never_see_a_half_finished_resize() {
    let pool = MemoryPool::with_config(PoolConfig::new(64 * 1024).growth_factor(1.0)).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop_even_on_panic = common::RaiseOnDrop(&stop);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        pool.check().unwrap_or_else(|error| panic!("after {reads} reads: {error}"));
                        assert_stats_invariants(&pool.stats());
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let started = Instant::now();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut live = Vec::new();
        while started.elapsed() < Duration::from_millis(1500) {
            match rng.gen_range(0..5) {
                0 => pool.expand(rng.gen_range(1..=64 * 1024)).unwrap(),
                1 => {
                    pool.compact().unwrap();
                }
                2 => {
                    let target = pool.stats().used + rng.gen_range(0..=128 * 1024);
                    let _ = pool.resize(target);
                }
                3 if live.len() < 64 => {
                    let len = rng.gen_range(1..=100_000);
                    let block = pool.allocate(len).unwrap();
                    // SAFETY: a fresh block.
                    unsafe { fill(block, len.min(64), len as u64) };
                    live.push((block, len));
                }
                _ => {
                    if !live.is_empty() {
                        let (block, len) = live.swap_remove(rng.gen_range(0..live.len()));
                        // SAFETY: a live block, freed once.
                        unsafe {
                            assert_intact(block, len.min(64), len as u64);
                            pool.free(block).unwrap();
                        }
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        for (block, len) in live {
            // SAFETY: live blocks, freed once.
            unsafe {
                assert_intact(block, len.min(64), len as u64);
                pool.free(block).unwrap();
            }
        }
    });
    pool.check().unwrap();
}

/// The thread that made the pool holds its lock's bias; other threads join
/// in while it is busy allocating, so the bias is revoked under load. No
/// block may be handed out twice or lose its contents on the way.
#[test]
fn the_creating_thread_keeps_working_while_others_join_in() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let start = Barrier::new(3);
    let work = |seed: u64, rounds: usize| {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut live: Vec<(NonNull<u8>, usize, u64)> = Vec::new();
        for round in 0..rounds {
            if live.len() < 64 && rng.gen_bool(0.6) {
                let len = rng.gen_range(1..=2048);
                let block = pool.allocate(len).unwrap();
                let tag = seed << 32 | round as u64;
                // SAFETY: the block is live, `len` bytes, and this thread's.
                unsafe { fill(block, len, tag) };
                live.push((block, len, tag));
            } else if !live.is_empty() {
                let (block, len, tag) = live.swap_remove(rng.gen_range(0..live.len()));
                // SAFETY: as above.
                unsafe { assert_intact(block, len, tag) };
                // SAFETY: the block is live and this thread's alone.
                unsafe { pool.free(block).unwrap() };
            }
        }
        for (block, len, tag) in live {
            // SAFETY: as above.
            unsafe { assert_intact(block, len, tag) };
            // SAFETY: as above.
            unsafe { pool.free(block).unwrap() };
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..=2u64)
            .map(|seed| {
                let (work, start) = (&work, &start);
                scope.spawn(move || {
                    start.wait();
                    work(seed, 20_000);
                })
            })
            .collect();
        // The owner is mid-way through its own work when the others start.
        work(100, 5_000);
        start.wait();
        work(101, 20_000);
        // Joined by hand: the scope's own wait happens inside std, which
        // ThreadSanitizer does not see, and it would then report the
        // helpers' last unlock as racing with the pool's drop.
        for helper in helpers {
            helper.join().unwrap();
        }
    });
    pool.check().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.used, stats.live_allocations), (0, 0));
}

/// Statistics read while blocks cross threads and die at once, so that
/// almost none is live at any moment, never count a free before its
/// allocation, nor a remote free before its free: a program that checks
/// for leaks with `allocations - frees` reads no negative count.
#[test]
fn statistics_never_count_a_free_before_its_allocation() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let stop = AtomicBool::new(false);
    let (sender, receiver) = mpsc::sync_channel::<(usize, u64)>(16);
    let snapshots = std::thread::scope(|scope| {
        let _stop_even_on_panic = common::RaiseOnDrop(&stop);
        let (pool, stop) = (&pool, &stop);
        scope.spawn(move || {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let block = pool.allocate_fast(48).unwrap();
                // SAFETY: a fresh block of 48 bytes.
                unsafe { fill(block, 48, count) };
                sender.send((block.as_ptr() as usize, count)).unwrap();
                count += 1;
            }
        });
        scope.spawn(move || {
            while let Ok((addr, count)) = receiver.recv() {
                let block = NonNull::new(addr as *mut u8).unwrap();
                // SAFETY: a live block of 48 bytes, handed over and freed once.
                unsafe {
                    assert_intact(block, 48, count);
                    pool.free_fast(block).unwrap();
                }
            }
        });
        let started = Instant::now();
        let mut snapshots = 0u64;
        while started.elapsed() < Duration::from_millis(1500) {
            let fast = pool.stats().fast;
            assert!(fast.remote_frees <= fast.frees && fast.frees <= fast.allocations, "{fast:?}");
            snapshots += 1;
        }
        stop.store(true, Ordering::Relaxed);
        snapshots
    });
    assert!(snapshots > 100, "{snapshots} snapshots");
    let fast = pool.stats().fast;
    assert!(fast.remote_frees > 0 && fast.frees == fast.allocations, "{fast:?}");
}
