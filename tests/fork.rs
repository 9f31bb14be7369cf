//! A pool stays usable in the child of a `fork()` taken at any moment by
//! any thread: while other threads hold its locks, while the thread its
//! lock is biased to is inside a critical section, while blocks sit in
//! other threads' caches and remote batches. Each child allocates enough to
//! need a new slab and a shared block, checks the data and the pool, and
//! exits; a child that deadlocks is killed by the watchdog and fails the
//! test. (`tests/fork_global.rs` does the same for `GlobalPool`.)

#![cfg(not(lle_mempool_model))]

mod common;
#[path = "common/forking.rs"]
mod forking;

use common::{fill, verify, RaiseOnDrop};
use forking::{fork_and_wait, ChildEnd};
use lle_mempool::MemoryPool;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;

const FORKS: usize = 48;

/// A block with the pattern seed and length it was filled with.
#[derive(Clone, Copy)]
struct Stamped {
    address: usize,
    len: usize,
    seed: u64,
}

impl Stamped {
    fn new(block: NonNull<u8>, len: usize, seed: u64) -> Stamped {
        // SAFETY: a fresh block of at least `len` bytes.
        unsafe { fill(block, len, seed) };
        Stamped { address: block.as_ptr() as usize, len, seed }
    }

    fn block(&self) -> NonNull<u8> {
        NonNull::new(self.address as *mut u8).expect("blocks are non-null")
    }

    fn verify(&self) -> Result<(), String> {
        // SAFETY: the block is live and holds `len` bytes.
        unsafe { verify(self.block(), self.len, self.seed) }
    }
}

/// Shared-pool traffic: keeps up to `window` blocks of varied sizes live,
/// verifying and freeing the oldest as it goes.
fn churn_shared(pool: &MemoryPool, stop: &AtomicBool, seed: u64, window: usize) {
    let mut live: Vec<Stamped> = Vec::with_capacity(window);
    let mut step = seed;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let len = 32 + (step as usize * 7919) % 6000;
        let block = pool.allocate(len).expect("the shared pool grows");
        live.push(Stamped::new(block, len, step));
        if live.len() == window {
            let oldest = live.remove(0);
            oldest.verify().unwrap();
            // SAFETY: live, freed once.
            unsafe { pool.free(oldest.block()) }.unwrap();
        }
    }
    for block in live {
        block.verify().unwrap();
        // SAFETY: as above.
        unsafe { pool.free(block.block()) }.unwrap();
    }
}

/// Fast-path traffic: allocates cache blocks, and hands every other one to
/// `outbox` for another thread to free (remote frees), freeing what arrives
/// in `inbox`.
fn churn_fast(
    pool: &MemoryPool,
    stop: &AtomicBool,
    seed: u64,
    inbox: &Mutex<Vec<Stamped>>,
    outbox: &Mutex<Vec<Stamped>>,
) {
    let mut live: Vec<Stamped> = Vec::new();
    let mut step = seed;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let len = 8 + (step as usize * 104_729) % 1016;
        let block = pool.allocate_fast(len).expect("the caches refill");
        live.push(Stamped::new(block, len, step));
        if live.len() == 64 {
            let mut handed = outbox.lock().unwrap();
            for (position, block) in live.drain(..).enumerate() {
                block.verify().unwrap();
                if position % 2 == 0 && handed.len() < 4096 {
                    handed.push(block);
                } else {
                    // SAFETY: live, freed once.
                    unsafe { pool.free_fast(block.block()) }.unwrap();
                }
            }
        }
        let arrived = std::mem::take(&mut *inbox.lock().unwrap());
        for block in arrived {
            block.verify().unwrap();
            // SAFETY: handed over by the thread that allocated it.
            unsafe { pool.free_fast(block.block()) }.unwrap();
        }
    }
    for block in live.into_iter().chain(std::mem::take(&mut *inbox.lock().unwrap())) {
        // SAFETY: as above.
        unsafe { pool.free_fast(block.block()) }.unwrap();
    }
}

/// What every child does: new slabs on both paths, a shared block, a
/// second thread (so the lock, biased to the child's thread, is revoked
/// there), every pattern verified, everything freed, the pool checked.
fn child_uses_pool(pool: &MemoryPool) -> Result<(), String> {
    // 300 blocks of 512 bytes need more than two 64 KiB slabs.
    let mut blocks = Vec::with_capacity(301);
    for seed in 0..300 {
        let block = pool.allocate_fast(512).map_err(|error| format!("allocate_fast: {error}"))?;
        blocks.push(Stamped::new(block, 512, seed));
    }
    let large = pool.allocate(200_000).map_err(|error| format!("allocate: {error}"))?;
    blocks.push(Stamped::new(large, 200_000, 7777));
    let helper = thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(), String> {
                for seed in 0..200u64 {
                    let block = pool.allocate(100 + seed as usize).map_err(|error| format!("{error}"))?;
                    let stamped = Stamped::new(block, 100 + seed as usize, seed);
                    let fast = pool.allocate_fast(48).map_err(|error| format!("{error}"))?;
                    let fast = Stamped::new(fast, 48, seed + 1000);
                    stamped.verify()?;
                    fast.verify()?;
                    // SAFETY: live, freed once.
                    unsafe {
                        pool.free(stamped.block()).map_err(|error| format!("{error}"))?;
                        pool.free_fast(fast.block()).map_err(|error| format!("{error}"))?;
                    }
                }
                Ok(())
            })
            .join()
    });
    helper.map_err(|_| "the child's second thread panicked".to_string())??;
    for block in &blocks {
        block.verify()?;
    }
    for block in blocks {
        // SAFETY: live, freed once.
        unsafe { pool.free_fast(block.block()) }.map_err(|error| format!("free: {error}"))?;
    }
    pool.check().map_err(|error| format!("check: {error}"))
}

#[test]
fn children_of_forks_taken_mid_traffic_use_the_pool() {
    // The pool is made here, so its lock is biased to this thread, which
    // then hammers the shared path: forks land while it is inside.
    let pool = MemoryPool::new(4 << 20).unwrap();
    let stop = AtomicBool::new(false);
    let (to_second, to_first) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let mut ends = Vec::new();
    thread::scope(|scope| {
        let _stop_on_exit = RaiseOnDrop(&stop);
        let (pool, stop) = (&pool, &stop);
        let (to_second, to_first) = (&to_second, &to_first);
        scope.spawn(move || churn_fast(pool, stop, 1 << 32, to_first, to_second));
        scope.spawn(move || churn_fast(pool, stop, 2 << 32, to_second, to_first));
        scope.spawn(move || churn_shared(pool, stop, 3 << 32, 16));
        scope.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stats = pool.stats();
                assert!(stats.used <= stats.size);
            }
        });
        let forker = scope.spawn(move || {
            let mut ends = Vec::new();
            for _ in 0..FORKS {
                ends.push(fork_and_wait(|| child_uses_pool(pool)));
                thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
            ends
        });
        churn_shared(pool, stop, 4 << 32, 8);
        ends = forker.join().unwrap();
    });
    let failed: Vec<_> = ends.iter().enumerate().filter(|(_, end)| **end != ChildEnd::Exited(0)).collect();
    assert!(failed.is_empty(), "{} of {FORKS} children failed: {failed:?}", failed.len());
    pool.check().unwrap();
}

#[test]
fn caches_of_threads_that_did_not_survive_the_fork_are_reclaimed_in_the_child() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let (filled, forked) = (Barrier::new(3), Barrier::new(3));
    let handed = Mutex::new(Vec::new());
    thread::scope(|scope| {
        // An owner that fills slabs and frees all but what it hands on, and
        // a thread that frees those remotely, keeping them in its batch:
        // both still alive at the fork, with empty slabs in their caches.
        scope.spawn(|| {
            let mut blocks = Vec::new();
            for seed in 0..2_000 {
                blocks.push(Stamped::new(pool.allocate_fast(64).unwrap(), 64, seed));
            }
            for (position, block) in blocks.into_iter().enumerate() {
                block.verify().unwrap();
                if position % 100 == 0 {
                    handed.lock().unwrap().push(block);
                } else {
                    // SAFETY: live, freed once.
                    unsafe { pool.free_fast(block.block()) }.unwrap();
                }
            }
            filled.wait();
            forked.wait();
        });
        scope.spawn(|| {
            filled.wait();
            for block in handed.lock().unwrap().drain(..) {
                // SAFETY: handed over by its allocator, freed once.
                unsafe { pool.free_fast(block.block()) }.unwrap();
            }
            forked.wait();
        });
        filled.wait();
        // Give the second thread time to batch its frees; the child checks
        // only what holds once it has (its slabs come back either way).
        while !handed.lock().unwrap().is_empty() {
            thread::yield_now();
        }
        let before = pool.stats().fast;
        assert!(before.slabs > 0, "the other threads' caches hold slabs");
        let end = fork_and_wait(|| {
            // Nothing of the parent's threads' caches may stay pinned: empty
            // slabs go back, the batched blocks go home, and the abandoned
            // slabs they emptied are released by compact.
            pool.compact().map_err(|error| format!("compact: {error}"))?;
            let after = pool.stats();
            if after.fast.slabs != 0 || after.used != 0 {
                return Err(format!(
                    "{} slabs and {} bytes still held by threads that do not exist here",
                    after.fast.slabs, after.used
                ));
            }
            child_uses_pool(&pool)
        });
        forked.wait();
        assert_eq!(end, ChildEnd::Exited(0));
    });
    pool.check().unwrap();
}
