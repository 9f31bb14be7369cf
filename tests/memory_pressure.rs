//! Low memory: the soft limit's callbacks, and the retry of an allocation
//! the maximum size refuses, on both allocation paths.

mod common;

use common::{fill, verify};
use lle_mempool::{MemoryPool, PoolConfig, PoolError, PressureEvent, PressureReason};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

/// A test that deadlocks fails after this long instead of hanging.
const DEADLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `test` on its own thread and fails if it has not finished in
/// [`DEADLOCK_TIMEOUT`].
fn without_deadlock(test: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(DEADLOCK_TIMEOUT) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The test panicked: report its panic.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlocked: not finished after {DEADLOCK_TIMEOUT:?}"),
    }
}

/// Events recorded by a callback.
fn recorder(pool: &MemoryPool) -> Arc<Mutex<Vec<PressureEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    pool.on_memory_pressure(move |event| log.lock().unwrap().push(*event));
    seen
}

/// A block in flight from producer to consumer: address, length, seed.
type Event = (usize, usize, u64);

/// The queue between a producer and its consumer.
#[derive(Default)]
struct Pipeline {
    queue: Mutex<VecDeque<Event>>,
    /// Raised by the soft-limit callback: the consumer should catch up.
    behind: Mutex<bool>,
    wake: Condvar,
    finished: AtomicBool,
    consumed: AtomicUsize,
}

impl Pipeline {
    /// Frees every queued block, checking its data first. Holds the queue
    /// while freeing and hands this thread's remote frees over before
    /// letting go, so that once the queue is seen empty its blocks are back
    /// with their owners.
    fn drain(&self, pool: &MemoryPool) {
        let mut queue = self.queue.lock().unwrap();
        for (address, len, seed) in queue.drain(..) {
            let block = NonNull::new(address as *mut u8).unwrap();
            // SAFETY: a live block of `len` bytes the producer filled and
            // gave up; freed once, here.
            unsafe {
                verify(block, len, seed).unwrap();
                pool.free_fast(block).unwrap();
            }
            self.consumed.fetch_add(1, Ordering::Relaxed);
        }
        pool.flush_remote_frees();
    }
}

/// A producer that outruns its consumer: the consumer only runs when the
/// soft-limit callback tells it to, and the producer allocates far more
/// than the maximum size in all. Near the maximum, the callback that the
/// refusal calls drains the queue on the producer's thread, and the
/// retried allocation succeeds: no allocation fails, and every block's data
/// arrives intact.
#[test]
fn a_producer_that_outruns_its_consumer_is_caught_up_with() {
    without_deadlock(|| {
        const MAX: usize = 1 << 20;
        let pool =
            Arc::new(MemoryPool::with_config(PoolConfig::new(128 << 10).max_size(MAX).soft_limit(MAX / 2)).unwrap());
        let pipeline = Arc::new(Pipeline::default());
        let soft_crossings = Arc::new(AtomicUsize::new(0));
        let refusals = Arc::new(AtomicUsize::new(0));
        {
            let (pipeline, pool_for_callback) = (Arc::clone(&pipeline), Arc::downgrade(&pool));
            let (soft_crossings, refusals) = (Arc::clone(&soft_crossings), Arc::clone(&refusals));
            pool.on_memory_pressure(move |event| {
                assert_eq!((event.soft_limit, event.max_size), (Some(MAX / 2), Some(MAX)));
                match event.reason {
                    PressureReason::SoftLimit => {
                        assert!(event.used > MAX / 2, "{event:?}");
                        soft_crossings.fetch_add(1, Ordering::Relaxed);
                        // The consumer stays behind until the pool first
                        // reaches its maximum, so that every run exercises
                        // the retry before a refusal, however the threads
                        // are scheduled; from then on a crossing wakes it.
                        if refusals.load(Ordering::Relaxed) > 0 {
                            *pipeline.behind.lock().unwrap() = true;
                            pipeline.wake.notify_one();
                        }
                    }
                    PressureReason::MaxSize { .. } => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                        pipeline.drain(&pool_for_callback.upgrade().unwrap());
                    }
                    _ => unreachable!(),
                }
            });
        }
        let consumer = {
            let (pool, pipeline) = (Arc::clone(&pool), Arc::clone(&pipeline));
            std::thread::spawn(move || loop {
                let mut behind = pipeline.behind.lock().unwrap();
                while !*behind && !pipeline.finished.load(Ordering::Acquire) {
                    behind = pipeline.wake.wait(behind).unwrap();
                }
                let finishing = !*behind;
                *behind = false;
                drop(behind);
                pipeline.drain(&pool);
                if finishing {
                    return;
                }
            })
        };
        const EVENTS: u64 = 20_000;
        let mut bytes = 0;
        for seed in 0..EVENTS {
            // Small events from the thread cache, large ones from the
            // shared pool.
            let len = if seed % 4 == 0 { 2000 + (seed as usize % 7) * 100 } else { 24 + (seed as usize % 5) * 40 };
            let block = pool.allocate_fast(len).unwrap_or_else(|error| panic!("event {seed} refused: {error}"));
            // SAFETY: a fresh block of `len` bytes.
            unsafe { fill(block, len, seed) };
            pipeline.queue.lock().unwrap().push_back((block.as_ptr() as usize, len, seed));
            bytes += len;
        }
        pipeline.finished.store(true, Ordering::Release);
        pipeline.wake.notify_one();
        consumer.join().unwrap();
        pipeline.drain(&pool);

        assert!(bytes > 8 * MAX, "the producer allocated {bytes} bytes, not far more than the maximum");
        assert_eq!(pipeline.consumed.load(Ordering::Relaxed), EVENTS as usize);
        let stats = pool.stats();
        assert_eq!(stats.failed_allocations, 0);
        assert_eq!(stats.live_allocations, 0);
        assert!(soft_crossings.load(Ordering::Relaxed) >= 1, "the soft limit was never reported crossed");
        let refusals = refusals.load(Ordering::Relaxed) as u64;
        assert!(refusals >= 1, "the producer never reached the maximum size");
        assert_eq!((stats.low_memory_retries, stats.low_memory_recoveries), (refusals, refusals));
        assert!(stats.size <= MAX);
        pool.check().unwrap();
    });
}

/// The soft limit is reported once per crossing, on either path: a thread
/// cache's new slab (which the cache's own blocks never are), and a shared
/// block; frees back to the limit re-arm it.
#[test]
fn each_crossing_is_reported_once_on_both_paths() {
    const KIB: usize = 1 << 10;
    let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).soft_limit(100 * KIB)).unwrap();
    let seen = recorder(&pool);
    let events = || seen.lock().unwrap().clone();

    // The first slab takes `used` to 64 KiB, below the limit; the second,
    // for another class, above it.
    let mut blocks = vec![pool.allocate_fast(32).unwrap()];
    assert!(events().is_empty());
    blocks.push(pool.allocate_fast(512).unwrap());
    assert_eq!(events().len(), 1);
    assert_eq!((events()[0].used, events()[0].reason), (128 * KIB, PressureReason::SoftLimit));
    // Blocks from the caches' slabs, and shared blocks, above the limit: no
    // new crossing.
    blocks.extend((0..100).map(|_| pool.allocate_fast(32).unwrap()));
    blocks.push(pool.allocate(4 * KIB).unwrap());
    assert_eq!(events().len(), 1);

    // The shared path: up to the limit, then across it.
    pool.set_soft_limit(Some(140 * KIB)).unwrap();
    blocks.push(pool.allocate(4 * KIB).unwrap());
    assert_eq!(events().len(), 1, "at the limit, not above it");
    let crossing = pool.allocate(8 * KIB).unwrap();
    assert_eq!(events().len(), 2);
    assert_eq!(events()[1].used, 144 * KIB);
    // Back to the limit, and across it again.
    // SAFETY: a live block, freed once.
    unsafe { pool.free(crossing).unwrap() };
    blocks.push(pool.allocate(4 * KIB).unwrap());
    assert_eq!(events().len(), 2);
    blocks.push(pool.allocate(16).unwrap());
    assert_eq!(events().len(), 3);
    assert_eq!(events()[2].used, 140 * KIB + 16);
    for (seed, &block) in blocks.iter().enumerate() {
        let len = pool.usable_size(block).unwrap();
        // SAFETY: live blocks of at least `len` bytes.
        unsafe { fill(block, len, seed as u64) };
    }
    // SAFETY: live blocks, filled above, freed once.
    unsafe {
        for (seed, block) in blocks.into_iter().enumerate() {
            verify(block, pool.usable_size(block).unwrap(), seed as u64).unwrap();
            pool.free_fast(block).unwrap();
        }
    }
    assert_eq!(events().len(), 3);
    pool.check().unwrap();
}

/// With no callback that frees, the retry fails: the caller gets
/// `ExceedsMaxSize`, and the statistics say the retry was made and did not
/// help. Without a soft limit, the callbacks still hear of the refusal.
#[test]
fn a_retry_that_does_not_help_is_refused_and_counted() {
    let pool = MemoryPool::with_config(PoolConfig::new(64 << 10).max_size(64 << 10)).unwrap();
    let seen = recorder(&pool);
    let block = pool.allocate(60 << 10).unwrap();
    // SAFETY: a fresh block of 60 KiB.
    unsafe { fill(block, 60 << 10, 7) };
    assert!(matches!(pool.allocate(8 << 10), Err(PoolError::ExceedsMaxSize { .. })));
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    let event = events[0];
    assert_eq!(event.reason, PressureReason::MaxSize { requested: 8 << 10 });
    assert_eq!((event.used, event.soft_limit, event.max_size), (60 << 10, None, Some(64 << 10)));
    let stats = pool.stats();
    assert_eq!((stats.low_memory_retries, stats.low_memory_recoveries, stats.failed_allocations), (1, 0, 1));

    // Other refusals are not retried.
    assert_eq!(pool.allocate(0), Err(PoolError::ZeroSize));
    assert_eq!(pool.stats().low_memory_retries, 1);
    // SAFETY: the live block, filled above, freed once.
    unsafe {
        verify(block, 60 << 10, 7).unwrap();
        pool.free(block).unwrap();
    }
    pool.check().unwrap();
}

/// A refused slab is retried as a refused shared block is: a callback that
/// frees shared blocks makes room for the thread cache's new slab.
#[test]
fn a_refused_slab_is_retried_after_the_callbacks_free() {
    let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(128 << 10).max_size(128 << 10)).unwrap());
    let hoard: Arc<Mutex<Vec<usize>>> = Arc::default();
    {
        let (hoard, pool_for_callback) = (Arc::clone(&hoard), Arc::downgrade(&pool));
        pool.on_memory_pressure(move |_| {
            let pool = pool_for_callback.upgrade().unwrap();
            for address in hoard.lock().unwrap().drain(..) {
                let block = NonNull::new(address as *mut u8).unwrap();
                // SAFETY: a live shared block of 16 KiB filled with its address.
                unsafe {
                    verify(block, 16 << 10, address as u64).unwrap();
                    pool.free(block).unwrap();
                }
            }
        });
    }
    for _ in 0..8 {
        let block = pool.allocate(16 << 10).unwrap();
        // SAFETY: a fresh block of 16 KiB.
        unsafe { fill(block, 16 << 10, block.as_ptr() as u64) };
        hoard.lock().unwrap().push(block.as_ptr() as usize);
    }
    let event = pool.allocate_fast(64).unwrap();
    // SAFETY: a fresh block of 64 bytes.
    unsafe { fill(event, 64, 3) };
    let stats = pool.stats();
    assert_eq!((stats.low_memory_retries, stats.low_memory_recoveries, stats.failed_allocations), (1, 1, 0));
    assert_eq!(stats.fast.slabs, 1);
    // SAFETY: the live block, freed once.
    unsafe {
        verify(event, 64, 3).unwrap();
        pool.free_fast(event).unwrap();
    }
    pool.check().unwrap();
}

/// A callback may allocate from the pool that called it, on both paths,
/// and free: it runs outside the pool's lock. An allocation it makes that
/// the maximum refuses is retried without calling the callbacks again.
#[test]
fn a_callback_that_allocates_from_its_pool_does_not_deadlock() {
    without_deadlock(|| {
        let pool =
            Arc::new(MemoryPool::with_config(PoolConfig::new(64 << 10).max_size(512 << 10).soft_limit(0)).unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let (calls, pool_for_callback) = (Arc::clone(&calls), Arc::downgrade(&pool));
            pool.on_memory_pressure(move |event| {
                let pool = pool_for_callback.upgrade().unwrap();
                calls.fetch_add(1, Ordering::Relaxed);
                let shared = pool.allocate(1000).unwrap();
                let cached = pool.allocate_fast(40).unwrap();
                // SAFETY: fresh blocks of their sizes, checked and freed once.
                unsafe {
                    fill(shared, 1000, 1);
                    fill(cached, 40, 2);
                    verify(shared, 1000, 1).unwrap();
                    verify(cached, 40, 2).unwrap();
                    pool.free(shared).unwrap();
                    pool.free_fast(cached).unwrap();
                }
                if let PressureReason::MaxSize { .. } = event.reason {
                    // Refused again: retried, not reported again.
                    assert!(matches!(pool.allocate(1 << 20), Err(PoolError::ExceedsMaxSize { .. })));
                }
                pool.check().unwrap();
            });
        }
        // Across the limit of 0 on the fast path: the crossing is the
        // cache's new slab.
        let cached = pool.allocate_fast(200).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // Across a limit at the bytes in use now, on the shared path.
        pool.set_soft_limit(Some(pool.stats().used)).unwrap();
        let shared = pool.allocate(100).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // SAFETY: the live block, freed once.
        unsafe { pool.free(shared).unwrap() };
        // Refused by the maximum: the callback runs, its own refused
        // allocation does not call it again.
        assert!(matches!(pool.allocate(1 << 20), Err(PoolError::ExceedsMaxSize { .. })));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        let stats = pool.stats();
        assert_eq!((stats.low_memory_retries, stats.low_memory_recoveries), (2, 0));
        // SAFETY: the live block, freed once.
        unsafe { pool.free_fast(cached).unwrap() };
        pool.check().unwrap();
    });
}

/// Removing a callback stops it, a panicking callback does not stop the
/// others, and a soft limit set later takes effect from then on.
#[test]
fn callbacks_are_removed_survive_panics_and_follow_the_soft_limit() {
    let pool = MemoryPool::with_config(PoolConfig::new(64 << 10).max_size(1 << 20)).unwrap();
    let removed = pool.on_memory_pressure(|_| panic!("removed callbacks are not called"));
    pool.on_memory_pressure(|_| panic!("a panicking callback is skipped"));
    let seen = recorder(&pool);
    assert_eq!(pool.memory_pressure_callback_count(), 3);
    assert!(pool.remove_memory_pressure_callback(removed));
    assert!(!pool.remove_memory_pressure_callback(removed));
    assert_eq!(pool.memory_pressure_callback_count(), 2);

    let first = pool.allocate(2048).unwrap();
    assert!(seen.lock().unwrap().is_empty(), "no soft limit: nothing to cross");
    assert_eq!(
        pool.set_soft_limit(Some(2 << 20)),
        Err(PoolError::InvalidConfig { reason: "soft limit must be at most the maximum size" })
    );
    assert_eq!(pool.soft_limit(), None);
    pool.set_soft_limit(Some(1024)).unwrap();
    let second = pool.allocate(16).unwrap();
    assert!(seen.lock().unwrap().is_empty(), "already above the limit when it was set: no crossing");
    // SAFETY: live blocks, freed once.
    unsafe {
        pool.free(first).unwrap();
        pool.free(second).unwrap();
    }
    let third = pool.allocate(1040).unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].used, 1040);
    // SAFETY: a live block, freed once.
    unsafe { pool.free(third).unwrap() };
    pool.check().unwrap();
}

/// Pressure callbacks and resize listeners may each allocate: a callback's
/// allocation that grows the pool runs the resize listeners, and a
/// listener's allocation that crosses the soft limit calls no pressure
/// callback (it would wait for a callback list while holding the
/// listeners'), and neither deadlocks.
#[test]
fn pressure_callbacks_and_resize_listeners_may_allocate() {
    without_deadlock(|| {
        let pool = Arc::new(MemoryPool::with_config(PoolConfig::new(4096).soft_limit(2048)).unwrap());
        let resizes = Arc::new(AtomicUsize::new(0));
        {
            let (resizes, pool_for_listener) = (Arc::clone(&resizes), Arc::downgrade(&pool));
            pool.on_resize(move |_| {
                resizes.fetch_add(1, Ordering::Relaxed);
                let pool = pool_for_listener.upgrade().unwrap();
                let block = pool.allocate(64).unwrap();
                // SAFETY: a fresh block, freed once.
                unsafe { pool.free(block).unwrap() };
            });
        }
        let grown_by_callback: Arc<Mutex<Vec<usize>>> = Arc::default();
        {
            let (grown, pool_for_callback) = (Arc::clone(&grown_by_callback), Arc::downgrade(&pool));
            pool.on_memory_pressure(move |_| {
                let pool = pool_for_callback.upgrade().unwrap();
                // More than the pool holds: it grows, and tells the listener.
                let block = pool.allocate(8192).unwrap();
                // SAFETY: a fresh block of 8 KiB.
                unsafe { fill(block, 8192, 5) };
                grown.lock().unwrap().push(block.as_ptr() as usize);
            });
        }
        let seen = recorder(&pool);
        let block = pool.allocate(3000).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "the callbacks were called once");
        assert_eq!(resizes.load(Ordering::Relaxed), 1, "the callback's allocation grew the pool");
        let grown = grown_by_callback.lock().unwrap()[0];
        // Back below the limit, and across it again from a listener: the
        // listener's allocation of 64 bytes crosses it, and is not reported.
        // SAFETY: live blocks, the callback's filled with seed 5, freed once.
        unsafe {
            let grown = NonNull::new(grown as *mut u8).unwrap();
            verify(grown, 8192, 5).unwrap();
            pool.free(grown).unwrap();
            pool.free(block).unwrap();
        }
        pool.set_soft_limit(Some(0)).unwrap();
        pool.expand(4096).unwrap();
        assert_eq!(resizes.load(Ordering::Relaxed), 2);
        assert_eq!(seen.lock().unwrap().len(), 1, "a listener's crossing calls no pressure callback");
        pool.check().unwrap();
    });
}

/// A block grown in place (through the `Allocator` API) crosses the soft
/// limit as an allocation does.
#[test]
fn growing_a_block_in_place_crosses_the_soft_limit() {
    use allocator_api2::alloc::{Allocator, Layout};
    let pool = MemoryPool::with_config(PoolConfig::new(64 << 10).soft_limit(4096)).unwrap();
    let seen = recorder(&pool);
    let small = Layout::from_size_align(2000, 16).unwrap();
    let large = Layout::from_size_align(8000, 16).unwrap();
    let block = Allocator::allocate(&&pool, small).unwrap().cast::<u8>();
    // SAFETY: a fresh block of 2000 bytes.
    unsafe { fill(block, 2000, 11) };
    assert!(seen.lock().unwrap().is_empty());
    // SAFETY: a live block of `small`, grown once.
    let grown = unsafe { Allocator::grow(&&pool, block, small, large) }.unwrap().cast::<u8>();
    assert_eq!(grown, block, "grown in place");
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].used, events[0].reason), (8000, PressureReason::SoftLimit));
    // SAFETY: the live block, grown to `large`, freed once.
    unsafe {
        verify(grown, 2000, 11).unwrap();
        Allocator::deallocate(&&pool, grown, large);
    }
    pool.check().unwrap();
}
