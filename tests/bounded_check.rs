//! `check()` finishes under any write load.
//!
//! One audit of a large pool reads every word of its indexes; a writer
//! that allocates and frees all the while overlaps every optimistic
//! attempt, and an audit that only ever retried would never finish.

mod common;

use common::{assert_intact, fill, RaiseOnDrop};
use lle_mempool::MemoryPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Large enough that one audit takes far longer than an allocate-and-free.
const POOL_BYTES: usize = 512 << 20;
/// How long `check()` may take before the test calls it hung. Generous: it
/// only turns a hang into a failure, it measures nothing.
const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
fn check_finishes_while_a_writer_allocates_and_frees() {
    let pool = MemoryPool::new(POOL_BYTES).unwrap();
    // Live blocks spread over the pool, so the audit has blocks and free
    // runs to recount everywhere.
    let spread: Vec<_> = (0..256u64)
        .map(|seed| {
            let block = pool.allocate(4096).unwrap();
            // SAFETY: a fresh block of 4096 bytes.
            unsafe { fill(block, 4096, seed) };
            let gap = pool.allocate(POOL_BYTES / 512).unwrap();
            (block, seed, gap)
        })
        .collect();
    for &(_, _, gap) in &spread {
        // SAFETY: a live block nobody uses.
        unsafe { pool.free(gap).unwrap() };
    }
    pool.check().unwrap();

    let stop = AtomicBool::new(false);
    let pairs = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let _stop_on_exit = RaiseOnDrop(&stop);
        let writer = scope.spawn(|| {
            let mut seed = 1_000u64;
            while !stop.load(Ordering::Relaxed) {
                let len = 16 + (seed as usize % 64) * 16;
                let block = pool.allocate(len).unwrap();
                // SAFETY: a fresh block of `len` bytes, freed once below.
                unsafe {
                    fill(block, len, seed);
                    assert_intact(block, len, seed);
                    pool.free(block).unwrap();
                }
                seed += 1;
                pairs.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the writer get going, so that it overlaps the first attempt.
        while pairs.load(Ordering::Relaxed) < 1_000 {
            assert!(!writer.is_finished(), "the writer stopped early");
            std::thread::yield_now();
        }
        let (verdicts, verdict) = mpsc::channel();
        let checked = &pool;
        scope.spawn(move || {
            for _ in 0..3 {
                if verdicts.send(checked.check()).is_err() {
                    return;
                }
            }
        });
        for round in 0..3 {
            match verdict.recv_timeout(WATCHDOG) {
                Ok(result) => result.unwrap_or_else(|error| panic!("check {round} under a writer: {error}")),
                Err(_) => panic!("check() did not finish within {WATCHDOG:?} while a writer allocated and freed"),
            }
        }
        assert!(!writer.is_finished(), "the writer stopped while check ran");
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    assert!(pairs.load(Ordering::Relaxed) > 1_000);

    for (block, seed, _) in spread {
        // SAFETY: live blocks of 4096 bytes, freed once.
        unsafe {
            assert_intact(block, 4096, seed);
            pool.free(block).unwrap();
        }
    }
    pool.check().unwrap();
    assert_eq!(pool.stats().live_allocations, 0);
}
