//! The fast path: size classes, cross-thread frees, thread exit,
//! several pools per thread, dropping a pool while threads that used it
//! live on, the producer/consumer memory bound, checked mode and the
//! fast-path statistics. Every block carries a pattern that is checked
//! before it is freed.

mod common;

use common::{assert_intact, fill};
use lle_mempool::{MemoryPool, PoolConfig, PoolError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::ptr::NonNull;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// A block crossing threads: a raw pointer is not `Send`, its address is.
#[derive(Clone, Copy, Debug)]
struct Sent {
    addr: usize,
    len: usize,
    seed: u64,
}

impl Sent {
    fn new(block: NonNull<u8>, len: usize, seed: u64) -> Sent {
        Sent { addr: block.as_ptr() as usize, len, seed }
    }

    fn pointer(&self) -> NonNull<u8> {
        NonNull::new(self.addr as *mut u8).expect("blocks are non-null")
    }
}

/// Allocates a fast block of `len` bytes and stamps it.
fn stamped(pool: &MemoryPool, len: usize, seed: u64) -> Sent {
    let block = pool.allocate_fast(len).unwrap_or_else(|error| panic!("allocate_fast({len}): {error}"));
    // SAFETY: a fresh block of at least `len` bytes.
    unsafe { fill(block, len, seed) };
    Sent::new(block, len, seed)
}

/// Checks a block's stamp and frees it with `free_fast`.
fn release(pool: &MemoryPool, block: Sent) {
    // SAFETY: a live block of this pool, handed to the caller, freed once.
    unsafe {
        assert_intact(block.pointer(), block.len, block.seed);
        pool.free_fast(block.pointer()).unwrap_or_else(|error| panic!("free_fast({block:?}): {error}"));
    }
}

#[test]
fn every_size_goes_through_the_fast_path() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let sizes: Vec<usize> = (1..=1024).chain([1025, 1100, 2048, 4000, 65_536]).collect();
    let mut blocks = Vec::new();
    for (seed, &size) in sizes.iter().enumerate() {
        let block = pool.allocate_fast(size).unwrap();
        let usable = pool.usable_size(block).unwrap();
        assert!(usable >= size, "size {size}: usable {usable}");
        if (65..=1024).contains(&size) {
            assert!((usable - size) * 8 <= size, "size {size}: class {usable} wastes more than 12.5%");
        }
        let natural = 1usize << size.trailing_zeros();
        let promised = natural.min(16);
        assert_eq!(block.as_ptr() as usize % promised, 0, "size {size}: alignment {promised}");
        // SAFETY: a fresh block of `usable` bytes.
        unsafe { fill(block, usable, seed as u64) };
        blocks.push((block, usable, seed as u64));
    }
    // Sizes above the classes come from the shared pool.
    let stats = pool.stats();
    let shared_blocks = stats.live_allocations as u64 - (stats.fast.allocations - stats.fast.frees);
    assert_eq!(shared_blocks, 5);
    let mut extents: Vec<(usize, usize)> =
        blocks.iter().map(|&(block, usable, _)| (block.as_ptr() as usize, usable)).collect();
    extents.sort_unstable();
    for pair in extents.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "blocks overlap at {:#x}", pair[1].0);
    }
    let stats = pool.stats();
    assert_eq!(stats.fast.allocations, 1024);
    for &(block, usable, seed) in &blocks {
        // SAFETY: live blocks of `usable` bytes.
        unsafe { assert_intact(block, usable, seed) };
    }
    for (block, usable, seed) in blocks {
        release(&pool, Sent::new(block, usable, seed));
    }
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees, stats.fast.remote_frees), (1024, 1024, 0));
    assert_eq!(stats.live_allocations, 0, "everything was freed: {stats:?}");
    assert_eq!(stats.used, stats.fast.slab_bytes, "only slabs are left: {stats:?}");
    pool.check().unwrap();
}

#[test]
fn free_and_free_fast_accept_each_others_blocks() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let fast = stamped(&pool, 40, 1);
    let big_fast = stamped(&pool, 3000, 2);
    let shared = pool.allocate(40).unwrap();
    // SAFETY: a fresh block; each block below is freed once.
    unsafe {
        fill(shared, 40, 3);
        assert_intact(fast.pointer(), 40, 1);
        pool.free(fast.pointer()).unwrap();
        assert_intact(big_fast.pointer(), 3000, 2);
        pool.free(big_fast.pointer()).unwrap();
        assert_intact(shared, 40, 3);
        pool.free_fast(shared).unwrap();
    }
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees), (1, 1));
    assert_eq!(stats.live_allocations, 0, "{stats:?}");
    assert_eq!(stats.used, stats.fast.slab_bytes, "{stats:?}");
    pool.check().unwrap();
}

#[test]
fn fast_statistics_follow_what_threads_did() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let blocks: Vec<Sent> = (0..5000).map(|seed| stamped(&pool, 64, seed)).collect();
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees, stats.fast.remote_frees), (5000, 0, 0));
    assert!(stats.fast.slabs >= 1);
    let slab_blocks = stats.fast.cached_blocks + 5000;
    assert_eq!(slab_blocks % stats.fast.slabs, 0, "slabs of one class hold equal numbers of blocks: {stats:?}");
    let per_slab = slab_blocks / stats.fast.slabs;
    assert!((900..=1024).contains(&per_slab), "a 64 KiB slab holds about 1,000 blocks of 64 B: {per_slab}");
    assert_eq!(stats.live_allocations, 5000, "the blocks, not the slabs that hold them: {stats:?}");
    assert_eq!(stats.used, stats.fast.slab_bytes, "slabs are shared-pool blocks: {stats:?}");

    let (local, remote) = blocks.split_at(3000);
    for &block in local {
        release(&pool, block);
    }
    let stats = pool.stats();
    assert_eq!((stats.fast.frees, stats.fast.remote_frees), (3000, 0));
    assert_eq!(stats.fast.cached_blocks + 2000, stats.fast.slabs * per_slab, "{stats:?}");

    std::thread::scope(|scope| {
        scope.spawn(|| remote.iter().for_each(|&block| release(&pool, block))).join().unwrap();
    });
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees, stats.fast.remote_frees), (5000, 5000, 2000));
    assert_eq!(stats.fast.cached_blocks, stats.fast.slabs * per_slab, "every block is cached again: {stats:?}");
    pool.check().unwrap();
}

#[test]
fn blocks_freed_on_other_threads_come_home() {
    const BLOCKS: usize = 20_000;
    const CONSUMERS: usize = 3;
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut rng = SmallRng::seed_from_u64(5);
    let mut run_round = |round: u64| {
        let blocks: Vec<Sent> = (0..BLOCKS)
            .map(|index| stamped(&pool, rng.gen_range(1..=1024), round * 1_000_000 + index as u64))
            .collect();
        std::thread::scope(|scope| {
            let (senders, receivers): (Vec<_>, Vec<_>) = (0..CONSUMERS).map(|_| mpsc::channel::<Vec<Sent>>()).unzip();
            let consumers: Vec<_> = receivers
                .into_iter()
                .map(|receiver| {
                    let pool = &pool;
                    scope.spawn(move || {
                        for batch in receiver {
                            batch.into_iter().for_each(|block| release(pool, block));
                        }
                    })
                })
                .collect();
            for (index, batch) in blocks.chunks(100).enumerate() {
                senders[index % CONSUMERS].send(batch.to_vec()).unwrap();
            }
            drop(senders);
            for consumer in consumers {
                consumer.join().unwrap();
            }
        });
        pool.size()
    };
    let after_first = run_round(1);
    for round in 2..=4 {
        let size = run_round(round);
        assert_eq!(size, after_first, "round {round}: remotely freed blocks were reused");
    }
    let stats = pool.stats();
    assert_eq!(stats.fast.remote_frees, 4 * BLOCKS as u64);
    assert_eq!(stats.fast.allocations, stats.fast.frees);
    pool.check().unwrap();
}

/// Churns `count` blocks on the current thread: allocates them, frees most
/// in a shuffled order, and hands `leftovers` of them out to be freed by
/// another thread after this one exits.
fn churn(pool: &MemoryPool, count: usize, leftovers: usize, seed: u64) -> Vec<Sent> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut live: Vec<Sent> = Vec::new();
    for index in 0..count {
        live.push(stamped(pool, rng.gen_range(1..=1024), seed * 10_000 + index as u64));
        if live.len() > 200 && rng.gen_bool(0.5) {
            let victim = live.swap_remove(rng.gen_range(0..live.len()));
            release(pool, victim);
        }
    }
    while live.len() > leftovers {
        let victim = live.swap_remove(rng.gen_range(0..live.len()));
        release(pool, victim);
    }
    live
}

#[test]
fn short_lived_threads_do_not_grow_the_pool() {
    const THREADS: u64 = 200;
    let pool = MemoryPool::new(0).unwrap();
    let run_thread = |seed: u64| -> Vec<Sent> {
        std::thread::scope(|scope| scope.spawn(|| churn(&pool, 2000, 5, seed)).join().unwrap())
    };
    let leftovers = run_thread(0);
    let after_one = pool.size();
    // The exited thread's blocks are freed here, onto abandoned slabs.
    leftovers.into_iter().for_each(|block| release(&pool, block));
    let mut largest = after_one;
    for seed in 1..THREADS {
        let leftovers = run_thread(seed);
        largest = largest.max(pool.size());
        leftovers.into_iter().for_each(|block| release(&pool, block));
    }
    let after_all = pool.size();
    let stats = pool.stats();
    eprintln!("one thread: {after_one} bytes; {THREADS} threads: at most {largest} bytes");
    assert!(
        largest - after_one <= 4 << 20,
        "one thread needed {after_one} bytes; {THREADS} threads grew the pool to {largest}: {stats:?}"
    );
    assert_eq!(stats.fast.allocations, stats.fast.frees);
    pool.compact().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.live_allocations, stats.fast.slabs), (0, 0), "compact released the abandoned slabs: {stats:?}");
    assert!(after_all >= pool.size());
    pool.check().unwrap();
}

#[test]
fn each_pool_in_a_thread_has_its_own_caches() {
    let first = MemoryPool::new(1 << 20).unwrap();
    let second = MemoryPool::new(1 << 20).unwrap();
    let mine = stamped(&first, 48, 1);
    let theirs = stamped(&second, 48, 2);
    let shared = first.allocate(48).unwrap();
    // SAFETY: a fresh block.
    unsafe { fill(shared, 48, 3) };
    for pointer in [mine.pointer(), shared] {
        let addr = pointer.as_ptr() as usize;
        // SAFETY: refused without touching the block.
        unsafe {
            assert_eq!(second.free_fast(pointer), Err(PoolError::ForeignPointer { addr }));
            assert_eq!(second.free(pointer), Err(PoolError::ForeignPointer { addr }));
        }
        assert_eq!(second.usable_size(pointer), Err(PoolError::ForeignPointer { addr }));
    }
    // The refused blocks are still live in their own pool, and usable.
    // SAFETY: live blocks of 48 bytes.
    unsafe {
        assert_intact(mine.pointer(), 48, 1);
        fill(mine.pointer(), 48, 4);
        assert_intact(shared, 48, 3);
        first.free(shared).unwrap();
    }
    release(&first, Sent { seed: 4, ..mine });
    // SAFETY: refused without touching the block.
    let addr = theirs.addr;
    assert_eq!(unsafe { first.free_fast(theirs.pointer()) }, Err(PoolError::ForeignPointer { addr }));
    release(&second, theirs);
    for pool in [&first, &second] {
        let stats = pool.stats();
        assert_eq!((stats.fast.allocations, stats.fast.frees), (1, 1));
        pool.check().unwrap();
    }
}

#[test]
fn a_thread_can_use_more_pools_than_it_caches() {
    const POOLS: usize = 12;
    let pools: Vec<MemoryPool> = (0..POOLS).map(|_| MemoryPool::new(256 * 1024).unwrap()).collect();
    let mut rng = SmallRng::seed_from_u64(9);
    let mut live: Vec<(usize, Sent)> = Vec::new();
    for round in 0..20_000u64 {
        let which = rng.gen_range(0..POOLS);
        live.push((which, stamped(&pools[which], rng.gen_range(1..=1024), round)));
        if live.len() > 500 {
            let (owner, block) = live.swap_remove(rng.gen_range(0..live.len()));
            // The wrong pool refuses it first.
            let wrong = (owner + 1 + rng.gen_range(0..POOLS - 1)) % POOLS;
            // SAFETY: refused without touching the block.
            let refused = unsafe { pools[wrong].free_fast(block.pointer()) };
            assert_eq!(refused, Err(PoolError::ForeignPointer { addr: block.addr }));
            release(&pools[owner], block);
        }
    }
    for (owner, block) in live {
        release(&pools[owner], block);
    }
    for pool in &pools {
        let stats = pool.stats();
        assert_eq!(stats.used, stats.fast.slabs * 64 * 1024, "only slabs are left: {stats:?}");
        pool.check().unwrap();
    }
}

#[test]
fn dropping_a_pool_while_threads_that_used_it_live_on() {
    const THREADS: usize = 4;
    let doomed = Arc::new(MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true)).unwrap());
    let next = Arc::new(MemoryPool::new(1 << 20).unwrap());
    let dropped = Arc::new(Barrier::new(THREADS + 1));
    let done_with_doomed = Arc::new(Barrier::new(THREADS + 1));
    let (sender, receiver) = mpsc::channel::<Sent>();
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (doomed, next) = (Arc::clone(&doomed), Arc::clone(&next));
            let (dropped, done_with_doomed) = (Arc::clone(&dropped), Arc::clone(&done_with_doomed));
            let sender = sender.clone();
            std::thread::spawn(move || {
                // Fill every slot of the thread's cache table: the doomed
                // pool's heap must later be evicted without touching it.
                let others: Vec<MemoryPool> = (0..7).map(|_| MemoryPool::new(256 * 1024).unwrap()).collect();
                for other in &others {
                    let block = stamped(other, 100, 1);
                    release(other, block);
                }
                let mut kept = Vec::new();
                for index in 0..3000u64 {
                    let block = stamped(&doomed, 1 + (index as usize * 37) % 1024, index);
                    match index % 3 {
                        0 => release(&doomed, block),
                        1 => sender.send(block).unwrap(),
                        _ => kept.push(block),
                    }
                }
                kept.into_iter().for_each(|block| release(&doomed, block));
                // This thread still has caches (and slabs) for the doomed pool.
                drop(doomed);
                drop(sender);
                done_with_doomed.wait();
                dropped.wait();
                // Another pool, with the cache table full of live pools
                // and one dead one.
                let mut rng = SmallRng::seed_from_u64(thread as u64);
                let blocks: Vec<Sent> = (0..2000).map(|seed| stamped(&next, rng.gen_range(1..=1024), seed)).collect();
                blocks.into_iter().for_each(|block| release(&next, block));
                for other in &others {
                    let block = stamped(other, 200, 2);
                    release(other, block);
                }
                drop(others);
            })
        })
        .collect();
    drop(sender);
    // Cross-thread frees into the doomed pool, from this thread.
    for block in receiver {
        release(&doomed, block);
    }
    done_with_doomed.wait();
    let doomed = Arc::into_inner(doomed).expect("the threads let go of the doomed pool");
    doomed.check().unwrap();
    drop(doomed);
    dropped.wait();
    for thread in threads {
        thread.join().expect("a thread crashed after its pool was dropped");
    }
    let stats = next.stats();
    assert_eq!(stats.fast.allocations, stats.fast.frees);
    assert_eq!(stats.fast.allocations, THREADS as u64 * 2000);
    next.compact().unwrap();
    assert_eq!(next.stats().fast.slabs, 0, "the exited threads released their slabs");
    next.check().unwrap();
}

/// One thread allocates 64-byte events, another frees them, a few thousand
/// in flight; the pool stays small.
fn producer_consumer(events: u64) -> (usize, std::time::Duration) {
    const BATCH: usize = 32;
    const BATCHES_IN_FLIGHT: usize = 100;
    let pool = MemoryPool::new(1 << 20).unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::sync_channel::<Vec<usize>>(BATCHES_IN_FLIGHT);
        let pool = &pool;
        let consumer = scope.spawn(move || {
            let mut freed = 0u64;
            for batch in receiver {
                for addr in batch {
                    let block = NonNull::new(addr as *mut u64).unwrap();
                    // SAFETY: a live 64-byte event whose first word holds its number.
                    unsafe {
                        assert_eq!(block.as_ptr().read(), freed, "event {freed} at {addr:#x}");
                        assert_eq!(block.as_ptr().add(7).read(), !freed);
                        pool.free_fast(block.cast()).unwrap();
                    }
                    freed += 1;
                }
            }
            assert_eq!(freed, events);
        });
        let mut batch = Vec::with_capacity(BATCH);
        for event in 0..events {
            let block = pool.allocate_fast(64).unwrap().cast::<u64>();
            // SAFETY: a fresh 64-byte block.
            unsafe {
                block.as_ptr().write(event);
                block.as_ptr().add(7).write(!event);
            }
            batch.push(block.as_ptr() as usize);
            if batch.len() == BATCH {
                sender.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).unwrap();
            }
        }
        if !batch.is_empty() {
            sender.send(batch).unwrap();
        }
        drop(sender);
        consumer.join().unwrap();
    });
    let elapsed = started.elapsed();
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees), (events, events));
    assert_eq!(stats.fast.remote_frees, events);
    pool.check().unwrap();
    (pool.size(), elapsed)
}

/// A pipeline at scale: 10 million events, a few thousand in flight. About a
/// second with the test profile (opt-level 1), so it always runs.
#[test]
fn producer_consumer_stays_bounded_for_ten_million_events() {
    let (size, elapsed) = producer_consumer(10_000_000);
    eprintln!("10M events: pool {size} bytes, {elapsed:?}");
    assert!(size <= 64 << 20, "the pool grew to {size} bytes");
}

#[test]
fn checked_mode_works_across_threads_and_catches_double_frees() {
    let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true)).unwrap();
    // Below 1 KiB: with its canary, a checked block of 1 KiB comes from the
    // shared pool.
    let blocks: Vec<Sent> = (0..4000).map(|seed| stamped(&pool, 1 + (seed as usize * 13) % 1023, seed)).collect();
    let (here, there) = blocks.split_at(2000);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                for &block in there {
                    release(&pool, block);
                    // SAFETY: refused without touching the block.
                    let again = unsafe { pool.free_fast(block.pointer()) };
                    assert_eq!(again, Err(PoolError::NotAllocated { addr: block.addr }));
                }
            })
            .join()
            .unwrap();
    });
    for &block in here {
        release(&pool, block);
        // SAFETY: refused without touching the block.
        assert_eq!(unsafe { pool.free(block.pointer()) }, Err(PoolError::NotAllocated { addr: block.addr }));
    }
    // Blocks freed on the other thread can't be freed again here either.
    for &block in there.iter().step_by(97) {
        // SAFETY: refused without touching the block.
        assert_eq!(unsafe { pool.free_fast(block.pointer()) }, Err(PoolError::NotAllocated { addr: block.addr }));
    }
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees, stats.fast.remote_frees), (4000, 4000, 2000));
    // And the memory is reused correctly afterwards.
    let again: Vec<Sent> = (0..4000).map(|seed| stamped(&pool, 64, seed + 10_000)).collect();
    again.into_iter().for_each(|block| release(&pool, block));
    pool.check().unwrap();
}

/// Threads exit while other threads are still freeing their blocks, and
/// while `compact` reclaims abandoned slabs: every block comes home once,
/// and the abandoned slabs are reclaimed at the end.
#[test]
fn threads_exit_while_their_blocks_are_freed_elsewhere() {
    let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true)).unwrap();
    let (sender, receiver) = mpsc::channel::<Vec<Sent>>();
    let compactor_stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop_even_on_panic = common::RaiseOnDrop(&compactor_stop);
        let pool = &pool;
        let freer = scope.spawn(move || {
            let mut freed = 0usize;
            for batch in receiver {
                freed += batch.len();
                batch.into_iter().for_each(|block| release(pool, block));
            }
            freed
        });
        let compactor = scope.spawn(|| {
            let mut rounds = 0;
            while !compactor_stop.load(std::sync::atomic::Ordering::Relaxed) {
                pool.compact().unwrap();
                pool.check().unwrap();
                rounds += 1;
            }
            rounds
        });
        for generation in 0..50u64 {
            let threads: Vec<_> = (0..4u64)
                .map(|thread| {
                    let sender = sender.clone();
                    scope.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64(generation * 10 + thread);
                        let blocks: Vec<Sent> = (0..500)
                            .map(|index| {
                                stamped(pool, rng.gen_range(1..=1024), generation * 100_000 + thread * 1000 + index)
                            })
                            .collect();
                        sender.send(blocks).unwrap();
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
        }
        drop(sender);
        assert_eq!(freer.join().unwrap(), 50 * 4 * 500);
        compactor_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(compactor.join().unwrap() > 0);
    });
    let stats = pool.stats();
    assert_eq!(stats.fast.allocations, stats.fast.frees);
    pool.compact().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.live_allocations, stats.fast.slabs), (0, 0), "{stats:?}");
    pool.check().unwrap();
}

/// A pool is dropped while the threads that used it are exiting, so their
/// caches are flushed into it, or left alone, right as it goes away.
#[test]
fn dropping_a_pool_races_its_threads_exiting() {
    const THREADS: usize = 2;
    for round in 0..300u64 {
        let pool = Arc::new(MemoryPool::new(256 * 1024).unwrap());
        let (sender, receiver) = mpsc::channel::<Sent>();
        let freed_elsewhere = Arc::new(Barrier::new(THREADS + 1));
        let threads: Vec<_> = (0..THREADS as u64)
            .map(|thread| {
                let pool = Arc::clone(&pool);
                let sender = sender.clone();
                let freed_elsewhere = Arc::clone(&freed_elsewhere);
                std::thread::spawn(move || {
                    for index in 0..64u64 {
                        let size = 1 + (index * 29) as usize % 512;
                        let block = stamped(&pool, size, round * 1000 + thread * 100 + index);
                        if index % 2 == 0 {
                            sender.send(block).unwrap();
                        } else {
                            release(&pool, block);
                        }
                    }
                    drop(sender);
                    freed_elsewhere.wait();
                    // Returning drops the last references to the pool; the
                    // thread's caches, still holding its slabs, are flushed
                    // on the way out, racing the pool's drop.
                })
            })
            .collect();
        drop(sender);
        for block in receiver {
            release(&pool, block);
        }
        freed_elsewhere.wait();
        while Arc::strong_count(&pool) > 1 {
            std::hint::spin_loop();
        }
        let pool = Arc::into_inner(pool).expect("the only reference");
        drop(pool);
        for thread in threads {
            thread.join().expect("a thread crashed exiting as its pool was dropped");
        }
    }
}

/// Remote frees travel in batches of 64 per slab: a live thread that freed
/// 130 of another thread's blocks has handed 128 over, holds 2, and hands
/// those over when asked (or when it exits).
#[test]
fn remote_frees_are_handed_over_in_batches() {
    const SIZE: usize = 64;
    const FREED: usize = 130;
    const BATCH: usize = 64;
    let pool = MemoryPool::new(1 << 20).unwrap();
    // Fill this thread's current slab completely, so that the allocations
    // below must come from collected remote frees or a new slab.
    let mut blocks = vec![stamped(&pool, SIZE, 0)];
    let left = pool.stats().fast.cached_blocks;
    blocks.extend((1..=left as u64).map(|seed| stamped(&pool, SIZE, seed)));
    assert_eq!(pool.stats().fast.cached_blocks, 0);
    let slabs_before = pool.stats().fast.slabs;
    let (handed, kept) = blocks.split_at(FREED);
    let freed: std::collections::HashSet<usize> = handed.iter().map(|block| block.addr).collect();

    let (freed_tx, freed_rx) = mpsc::channel::<()>();
    let (flush_tx, flush_rx) = mpsc::channel::<()>();
    let (flushed_tx, flushed_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let pool = &pool;
        let handed = handed.to_vec();
        scope.spawn(move || {
            handed.into_iter().for_each(|block| release(pool, block));
            freed_tx.send(()).unwrap();
            flush_rx.recv().unwrap();
            pool.flush_remote_frees();
            flushed_tx.send(()).unwrap();
            // Stay alive until the owner has checked: exit would hand over too.
            flush_rx.recv().unwrap();
        });
        freed_rx.recv().unwrap();
        // Two full batches arrived; the last two blocks wait in the batch.
        let reused: Vec<Sent> = (0..2 * BATCH as u64).map(|seed| stamped(pool, SIZE, 1_000 + seed)).collect();
        assert!(reused.iter().all(|block| freed.contains(&block.addr)), "a handed-over block was not reused");
        assert_eq!(pool.stats().fast.slabs, slabs_before);
        let fresh = stamped(pool, SIZE, 2_000);
        assert!(!freed.contains(&fresh.addr), "a block still in the freeing thread's batch was handed out");
        flush_tx.send(()).unwrap();
        flushed_rx.recv().unwrap();
        assert_eq!(pool.stats().fast.remote_frees, FREED as u64);
        flush_tx.send(()).unwrap();
        for block in reused.into_iter().chain(std::iter::once(fresh)) {
            release(pool, block);
        }
    });
    for &block in kept {
        release(&pool, block);
    }
    let stats = pool.stats();
    assert_eq!(stats.fast.allocations, stats.fast.frees);
    // Both slabs hold nothing but free blocks again.
    assert_eq!(stats.fast.cached_blocks as u64, stats.fast.slabs as u64 * (left as u64 + 1), "{stats:?}");
    pool.check().unwrap();
}

/// An owner's free is recognised through a small per-heap filter of owned
/// slabs; with far more slabs than the filter has entries, collisions send
/// frees to the full path. Either way every block must come back exactly
/// once, intact, and empty slabs must leave.
#[test]
fn owner_frees_across_more_slabs_than_the_filter_holds() {
    const BLOCKS: usize = 150_000;
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut rng = SmallRng::seed_from_u64(17);
    let mut blocks: Vec<Sent> =
        (0..BLOCKS as u64).map(|seed| stamped(&pool, [16, 64, 96][seed as usize % 3], seed)).collect();
    assert!(pool.stats().fast.slabs > 128, "{:?}", pool.stats().fast);
    for round in 0..3u64 {
        // Free a random half, then refill it with new stamps.
        for index in 0..BLOCKS {
            let other = rng.gen_range(index..BLOCKS);
            blocks.swap(index, other);
        }
        let kept = blocks.split_off(BLOCKS / 2);
        for block in blocks.drain(..) {
            release(&pool, block);
        }
        pool.check().unwrap();
        blocks = kept;
        blocks.extend((0..(BLOCKS / 2) as u64).map(|seed| stamped(&pool, 64, (round + 1) * 1_000_000 + seed)));
        let mut addresses: Vec<usize> = blocks.iter().map(|block| block.addr).collect();
        addresses.sort_unstable();
        addresses.dedup();
        assert_eq!(addresses.len(), BLOCKS, "round {round}: a block was handed out twice");
    }
    for block in blocks {
        release(&pool, block);
    }
    let stats = pool.stats();
    assert_eq!(stats.fast.allocations, stats.fast.frees);
    // Empty slabs went back to the shared pool: at most one spare and one
    // current slab per class remain.
    assert!(stats.fast.slabs <= 2 * 3, "{:?}", stats.fast);
    pool.check().unwrap();
}

/// Slabs that went back to the shared pool must drop out of the owner's
/// filter: shared blocks later carved where they were are then freed (with
/// `free_fast`) as shared blocks, not as blocks of a slab that is gone.
#[test]
fn shared_blocks_where_released_slabs_were_free_as_shared_blocks() {
    let pool = MemoryPool::new(4 << 20).unwrap();
    let fast: Vec<Sent> = (0..20_000u64).map(|seed| stamped(&pool, 64, seed)).collect();
    let slabs = pool.stats().fast.slabs;
    for block in fast {
        release(&pool, block);
    }
    assert!(pool.stats().fast.slabs < slabs, "empty slabs were not released");
    // First fit reuses the released slabs' space, block starts included.
    let mut rng = SmallRng::seed_from_u64(3);
    let shared: Vec<Sent> = (0..4_000u64)
        .map(|seed| {
            let len = rng.gen_range(1..=2048);
            let block = pool.allocate(len).unwrap();
            // SAFETY: a fresh block of `len` bytes.
            unsafe { fill(block, len, 7_000_000 + seed) };
            Sent::new(block, len, 7_000_000 + seed)
        })
        .collect();
    for block in shared {
        release(&pool, block);
    }
    let stats = pool.stats();
    // What the shared pool still has out is the cache's slabs, nothing else.
    assert_eq!(stats.live_allocations, 0, "{stats:?}");
    assert_eq!(stats.used, stats.fast.slab_bytes, "{stats:?}");
    pool.check().unwrap();
}
