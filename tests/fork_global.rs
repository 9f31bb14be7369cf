//! `GlobalPool` as the global allocator stays usable in the child of a
//! `fork()` taken at any moment by any thread: threads hammer the pool
//! through ordinary `Box`es and `Vec`s (the cache path) and through
//! `with_pool` (the shared path) while another thread forks. Each child
//! allocates enough to need a new slab and a shared block, checks the data
//! and the pool, and exits; a child that deadlocks is killed by the
//! watchdog and fails the test. Its own binary: one global allocator each.

#![cfg(not(lle_mempool_model))]

mod common;
#[path = "common/forking.rs"]
mod forking;

use common::RaiseOnDrop;
use forking::{fork_and_wait, ChildEnd};
use lle_mempool::GlobalPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: GlobalPool = GlobalPool::new();

const FORKS: usize = 48;

/// A buffer whose bytes say which seed filled it.
fn stamped(len: usize, seed: u64) -> Vec<u8> {
    (0..len).map(|index| (seed as usize).wrapping_mul(31).wrapping_add(index) as u8).collect()
}

fn intact(buffer: &[u8], seed: u64) -> bool {
    buffer.iter().enumerate().all(|(index, &byte)| byte == (seed as usize).wrapping_mul(31).wrapping_add(index) as u8)
}

/// Cache traffic through the global allocator: buffers of up to 1 KiB,
/// half of them freed by the thread at the other end of `outbox`.
fn churn_boxes(
    stop: &AtomicBool,
    seed: u64,
    outbox: mpsc::Sender<(Vec<u8>, u64)>,
    inbox: mpsc::Receiver<(Vec<u8>, u64)>,
) {
    let mut live = Vec::new();
    let mut step = seed;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let len = 1 + (step as usize * 7919) % 1024;
        live.push((stamped(len, step), step));
        if live.len() == 64 {
            for (position, (buffer, seed)) in live.drain(..).enumerate() {
                assert!(intact(&buffer, seed), "a buffer changed under its owner");
                if position % 2 == 0 {
                    let _ = outbox.send((buffer, seed));
                }
            }
        }
        for (buffer, seed) in inbox.try_iter() {
            assert!(intact(&buffer, seed), "a buffer changed on its way");
        }
    }
}

/// Shared-pool traffic on the global allocator's pool.
fn churn_shared(stop: &AtomicBool, seed: u64) {
    let mut step = seed;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let len = 2048 + (step as usize * 104_729) % 30_000;
        let verdict = GLOBAL.with_pool(|pool| -> Result<(), String> {
            let block = pool.allocate(len).map_err(|error| error.to_string())?;
            // SAFETY: a fresh block of `len` bytes, freed once below.
            unsafe {
                block.as_ptr().write_bytes(step as u8, len);
                let bytes = std::slice::from_raw_parts(block.as_ptr(), len);
                if bytes.iter().any(|&byte| byte != step as u8) {
                    return Err("a shared block changed under its owner".into());
                }
                pool.free(block).map_err(|error| error.to_string())
            }
        });
        assert_eq!(verdict, Some(Ok(())));
    }
}

/// What every child does: more than two slabs' worth of 512-byte buffers,
/// a shared block, a second thread, every byte checked, the pool checked.
fn child_uses_the_global_pool() -> Result<(), String> {
    let buffers: Vec<(Vec<u8>, u64)> = (0..300).map(|seed| (stamped(512, seed), seed)).collect();
    let served =
        buffers.iter().filter(|(buffer, _)| GLOBAL.with_pool(|pool| pool.contains(buffer.as_ptr())) == Some(true));
    if served.count() < 290 {
        return Err("the pool served almost none of the child's buffers".into());
    }
    let helper = thread::spawn(|| (0..200u64).map(|seed| stamped(200, seed)).all(|buffer| buffer.len() == 200));
    if !helper.join().map_err(|_| "the child's second thread panicked".to_string())? {
        return Err("the child's second thread lost a buffer".into());
    }
    let shared = GLOBAL.with_pool(|pool| -> Result<(), String> {
        let block = pool.allocate(200_000).map_err(|error| error.to_string())?;
        // SAFETY: a fresh block of 200,000 bytes, freed once.
        unsafe {
            block.as_ptr().write_bytes(0x5A, 200_000);
            pool.free(block).map_err(|error| error.to_string())
        }
    });
    shared.ok_or("no global pool")??;
    for (buffer, seed) in &buffers {
        if !intact(buffer, *seed) {
            return Err("a buffer changed in the child".into());
        }
    }
    drop(buffers);
    GLOBAL.with_pool(|pool| pool.check()).ok_or("no global pool")?.map_err(|error| format!("check: {error}"))
}

#[test]
fn children_of_forks_taken_mid_traffic_use_the_global_pool() {
    let stop = AtomicBool::new(false);
    let ends = thread::scope(|scope| {
        let _stop_on_exit = RaiseOnDrop(&stop);
        let stop = &stop;
        let (to_second, from_first) = mpsc::channel();
        let (to_first, from_second) = mpsc::channel();
        scope.spawn(move || churn_boxes(stop, 1 << 32, to_second, from_second));
        scope.spawn(move || churn_boxes(stop, 2 << 32, to_first, from_first));
        scope.spawn(move || churn_shared(stop, 3 << 32));
        scope.spawn(move || churn_shared(stop, 5 << 32));
        let forker = scope.spawn(move || {
            let ends: Vec<ChildEnd> = (0..FORKS).map(|_| fork_and_wait(child_uses_the_global_pool)).collect();
            stop.store(true, Ordering::Relaxed);
            ends
        });
        churn_shared(stop, 4 << 32);
        forker.join()
    });
    let ends = ends.expect("the forking thread panicked");
    let failed: Vec<_> = ends.iter().enumerate().filter(|(_, end)| **end != ChildEnd::Exited(0)).collect();
    assert!(failed.is_empty(), "{} of {FORKS} children failed: {failed:?}", failed.len());
    assert_eq!(GLOBAL.with_pool(|pool| pool.check()), Some(Ok(())));
}
