//! Regions and the OS: growth never moves live blocks, even when
//! another mapping blocks in-place growth; compact gives memory back to the
//! OS, visibly in the process's resident set; resize listeners hear about
//! every change of size.

mod common;

use common::{assert_intact, fill, page_size, resident_bytes};
use lle_mempool::{MemoryPool, PoolConfig, ResizeEvent, ResizeReason};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Tests that measure the process's resident memory, or map memory at
/// chosen addresses, run one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A mapping the test placed itself, unmapped on drop.
struct Blocker {
    addr: usize,
    len: usize,
}

impl Drop for Blocker {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing else uses.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Maps `len` bytes exactly at `addr` unless something is already there.
/// `None` when the address is taken, which blocks growth just as well.
fn map_at(addr: usize, len: usize) -> Option<Blocker> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the
    // new one is ours alone.
    let result = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if result == libc::MAP_FAILED {
        let error = std::io::Error::last_os_error();
        assert_eq!(error.raw_os_error(), Some(libc::EEXIST), "mmap at {addr:#x}: {error}");
        return None;
    }
    let blocker = Blocker { addr: result as usize, len };
    // Kernels before 4.17 ignore the flag and may map elsewhere.
    (blocker.addr == addr).then_some(blocker)
}

#[test]
fn growth_blocked_by_a_neighbouring_mapping_maps_a_new_region_and_moves_nothing() {
    let _exclusive = exclusive();
    // No reservation: it would hold the addresses after the region, and
    // growth would commit them (tests/reservation.rs).
    let pool = MemoryPool::with_config(PoolConfig::new(64 * 1024).reserve(0)).unwrap();
    let region = pool.regions()[0].clone();
    let old = pool.allocate(60 * 1024).unwrap();
    assert_eq!(old.as_ptr() as usize, region.start);
    // SAFETY: a fresh 60 KiB block.
    unsafe { fill(old, 60 * 1024, 1) };
    // `None`: the address is taken already, which blocks growth as well
    // (or, on kernels before 4.17, the flag was ignored and it may not).
    let blocker = map_at(region.end, 16 * page_size());

    pool.expand(1 << 20).unwrap();
    let regions = pool.regions();
    assert_eq!(pool.size(), 64 * 1024 + (1 << 20));
    assert_eq!(pool.stats().expansions, 1);
    if blocker.is_some() {
        assert!(regions.contains(&region), "the blocked region is unchanged: {regions:#x?}");
        assert_eq!(regions.len(), 2, "growth went to a new region: {regions:#x?}");
    } else {
        let grown = regions.iter().any(|now| now.start == region.start && now.end >= region.end);
        assert!(grown, "the old region stays where it was: {regions:#x?}");
        assert!(regions.len() == 2 || regions[0].len() == pool.size(), "{regions:#x?}");
    }
    // SAFETY: the live block, unmoved.
    unsafe { assert_intact(old, 60 * 1024, 1) };

    // Automatic growth past the blocked region, too.
    let mut blocks = vec![(old, 60 * 1024, 1u64)];
    for seed in 2..40u64 {
        let size = 40_000 + seed as usize * 100;
        let block = pool.allocate(size).unwrap();
        // SAFETY: a fresh block of `size` bytes.
        unsafe { fill(block, size, seed) };
        blocks.push((block, size, seed));
    }
    assert!(pool.regions().iter().any(|now| now.start == region.start), "the old region never moves");
    for &(block, size, seed) in &blocks {
        // SAFETY: live blocks of `size` bytes.
        unsafe { assert_intact(block, size, seed) };
    }
    pool.check().unwrap();
    for (block, _, _) in blocks {
        // SAFETY: live blocks, freed once.
        unsafe { pool.free(block).unwrap() };
    }
    assert_eq!(pool.stats().free_blocks, pool.regions().len());
    pool.check().unwrap();
    drop(blocker);
}

#[test]
fn unblocked_growth_extends_the_region_in_place() {
    let _exclusive = exclusive();
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let region = pool.regions()[0].clone();
    let block = pool.allocate(64 * 1024).unwrap();
    // SAFETY: a fresh 64 KiB block.
    unsafe { fill(block, 64 * 1024, 7) };
    pool.expand(256 * 1024).unwrap();
    let regions = pool.regions();
    assert_eq!(pool.size(), 320 * 1024);
    // In place if the kernel had room, else a new region: both keep the block.
    let grew_in_place = regions.len() == 1;
    if grew_in_place {
        assert_eq!(regions[0], region.start..region.start + 320 * 1024);
        assert_eq!(pool.stats().free_blocks, 1);
    } else {
        assert!(regions.contains(&region));
    }
    // SAFETY: the live block, unmoved.
    unsafe {
        assert_intact(block, 64 * 1024, 7);
        pool.free(block).unwrap();
    }
    pool.check().unwrap();
}

#[test]
fn compact_lowers_the_resident_set() {
    let _exclusive = exclusive();
    const BYTES: usize = 64 << 20;
    let pool = MemoryPool::new(0).unwrap();
    let blocks: Vec<NonNull<u8>> = (0..64).map(|_| pool.allocate(1 << 20).unwrap()).collect();
    for (seed, &block) in blocks.iter().enumerate() {
        // SAFETY: fresh 1 MiB blocks; writing every page makes it resident.
        unsafe { fill(block, 1 << 20, seed as u64) };
    }
    let touched = resident_bytes();
    for (seed, &block) in blocks.iter().enumerate() {
        // SAFETY: live 1 MiB blocks, freed once.
        unsafe {
            assert_intact(block, 1 << 20, seed as u64);
            pool.free(block).unwrap();
        }
    }
    let size_before = pool.size();
    assert!(size_before >= BYTES);
    let released = pool.compact().unwrap();
    let after = resident_bytes();
    assert_eq!(released, size_before - pool.size(), "compact's return value and size() agree");
    assert_eq!(pool.size(), 0, "every region was free");
    assert_eq!(pool.stats().compactions, 1);
    assert!(
        touched.saturating_sub(after) >= BYTES * 3 / 4,
        "resident set went from {touched} to {after} bytes; expected a drop of most of {BYTES}"
    );
    pool.check().unwrap();
    // Still usable.
    let block = pool.allocate(1000).unwrap();
    // SAFETY: a fresh block, freed once.
    unsafe {
        fill(block, 1000, 9);
        assert_intact(block, 1000, 9);
        pool.free(block).unwrap();
    }
}

#[test]
fn compact_purges_free_pages_between_live_blocks() {
    let _exclusive = exclusive();
    const BYTES: usize = 32 << 20;
    let pool = MemoryPool::new(BYTES + (1 << 20)).unwrap();
    let first = pool.allocate(4096).unwrap();
    let middle = pool.allocate(BYTES).unwrap();
    let last = pool.allocate(4096).unwrap();
    // SAFETY: fresh blocks of these sizes.
    unsafe {
        fill(first, 4096, 1);
        fill(middle, BYTES, 2);
        fill(last, 4096, 3);
    }
    let touched = resident_bytes();
    // SAFETY: the live middle block, freed once.
    unsafe { pool.free(middle).unwrap() };
    let size = pool.size();
    let released = pool.compact().unwrap();
    assert_eq!(released, size - pool.size());
    let after = resident_bytes();
    assert!(
        touched.saturating_sub(after) >= BYTES * 3 / 4,
        "resident set went from {touched} to {after} bytes; the free middle was not purged"
    );
    // SAFETY: the live blocks keep their data; each freed once.
    unsafe {
        assert_intact(first, 4096, 1);
        assert_intact(last, 4096, 3);
        pool.free(first).unwrap();
        pool.free(last).unwrap();
    }
    pool.check().unwrap();
}

type EventLog = Arc<Mutex<Vec<ResizeEvent>>>;

fn record_events(pool: &MemoryPool) -> (EventLog, lle_mempool::ListenerId) {
    let events: EventLog = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let id = pool.on_resize(move |event| log.lock().unwrap().push(*event));
    (events, id)
}

fn take(events: &EventLog) -> Vec<ResizeEvent> {
    std::mem::take(&mut *events.lock().unwrap())
}

fn event(old_size: usize, new_size: usize, reason: ResizeReason) -> ResizeEvent {
    ResizeEvent { old_size, new_size, reason }
}

#[test]
fn listeners_hear_every_change_of_size() {
    let pool = MemoryPool::with_config(PoolConfig::new(128 * 1024).growth_factor(2.0)).unwrap();
    let (events, id) = record_events(&pool);

    // Automatic growth by the growth factor (doubling: 128 KiB more)...
    let medium = pool.allocate(120 * 1024).unwrap();
    assert_eq!(take(&events), [], "it fits");
    let doubled = pool.allocate(100 * 1024).unwrap();
    assert_eq!(take(&events), [event(128 * 1024, 256 * 1024, ResizeReason::AutoExpand)]);
    // ...or by what the allocation needs, if that is more.
    let big = pool.allocate(300 * 1024).unwrap();
    // SAFETY: a fresh block.
    unsafe { fill(big, 300 * 1024, 1) };
    assert_eq!(take(&events), [event(256 * 1024, 556 * 1024, ResizeReason::AutoExpand)]);

    pool.expand(64 * 1024).unwrap();
    assert_eq!(take(&events), [event(556 * 1024, 620 * 1024, ResizeReason::Expand)]);
    pool.expand(0).unwrap();
    assert_eq!(take(&events), [], "no change, no event");

    // SAFETY: live blocks, freed once.
    unsafe {
        assert_intact(big, 300 * 1024, 1);
        pool.free(big).unwrap();
        pool.free(medium).unwrap();
        pool.free(doubled).unwrap();
    }
    assert_eq!(take(&events), []);

    let released = pool.compact().unwrap();
    assert_eq!(released, 620 * 1024);
    assert_eq!(take(&events), [event(620 * 1024, 0, ResizeReason::Compact)]);
    assert_eq!(pool.size(), 0);
    pool.compact().unwrap();
    assert_eq!(take(&events), [], "nothing to compact, no event");

    pool.resize(100 * 1024).unwrap();
    assert_eq!(take(&events), [event(0, 100 * 1024, ResizeReason::Resize)]);
    pool.resize(10_000).unwrap();
    assert_eq!(take(&events), [event(100 * 1024, 12 * 1024, ResizeReason::Resize)]);
    assert!(pool.resize(usize::MAX).is_err());
    let block = pool.allocate(10_000).unwrap();
    assert!(pool.resize(4096).is_err());
    assert_eq!(take(&events), [], "refused resizes change nothing and say nothing");

    assert!(pool.remove_resize_listener(id));
    assert!(!pool.remove_resize_listener(id));
    pool.expand(4096).unwrap();
    assert_eq!(take(&events), [], "a removed listener hears nothing");
    // SAFETY: the live block, freed once.
    unsafe { pool.free(block).unwrap() };
    assert_eq!(pool.resize_listener_count(), 0);
}

#[test]
fn listeners_may_read_the_pool_without_deadlock() {
    let pool = Arc::new(MemoryPool::new(64 * 1024).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let reader = Arc::downgrade(&pool);
        let seen = Arc::clone(&seen);
        let calls = Arc::clone(&calls);
        pool.on_resize(move |event| {
            let Some(pool) = reader.upgrade() else { return };
            let stats = pool.stats();
            pool.check().expect("the pool is consistent when listeners run");
            assert_eq!(pool.size(), event.new_size, "listeners run after the change");
            assert_eq!(stats.size, event.new_size);
            assert!((0.0..=100.0).contains(&pool.utilization()));
            assert!(!pool.regions().is_empty() || event.new_size == 0);
            calls.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(event.reason);
        });
    }
    // A second listener that does the same through its own clone.
    let second_calls = Arc::new(AtomicUsize::new(0));
    {
        let reader = Arc::downgrade(&pool);
        let second_calls = Arc::clone(&second_calls);
        pool.on_resize(move |_| {
            if let Some(pool) = reader.upgrade() {
                let _ = pool.stats();
                second_calls.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let (done_sender, done) = std::sync::mpsc::channel();
    let worker = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            pool.expand(4096).unwrap();
            let block = pool.allocate(512 * 1024).unwrap();
            // SAFETY: a fresh block, freed once.
            unsafe {
                fill(block, 512 * 1024, 3);
                pool.free(block).unwrap();
            }
            pool.compact().unwrap();
            pool.resize(8192).unwrap();
            done_sender.send(()).unwrap();
        })
    };
    done.recv_timeout(std::time::Duration::from_secs(60)).expect("a listener deadlocked the pool");
    worker.join().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(second_calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        *seen.lock().unwrap(),
        [ResizeReason::Expand, ResizeReason::AutoExpand, ResizeReason::Compact, ResizeReason::Resize]
    );
}

/// The documentation promises more than reading: a listener may call the
/// pool's methods other than adding and removing listeners, including ones
/// that change the pool's size and so report to listeners themselves.
#[test]
fn listeners_may_change_the_pool_size_without_deadlock() {
    let pool = Arc::new(MemoryPool::new(64 * 1024).unwrap());
    let events: EventLog = Arc::new(Mutex::new(Vec::new()));
    {
        let reader = Arc::downgrade(&pool);
        let events = Arc::clone(&events);
        pool.on_resize(move |event| {
            events.lock().unwrap().push(*event);
            let Some(pool) = reader.upgrade() else { return };
            if event.reason == ResizeReason::Expand && event.new_size < 256 * 1024 {
                // Grows again from inside the listener.
                pool.expand(64 * 1024).unwrap();
            }
        });
    }
    let (done_sender, done) = std::sync::mpsc::channel();
    let worker = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            pool.expand(64 * 1024).unwrap();
            done_sender.send(pool.size()).unwrap();
        })
    };
    let size =
        done.recv_timeout(std::time::Duration::from_secs(10)).expect("a listener that expands deadlocked the pool");
    worker.join().unwrap();
    assert_eq!(size, 256 * 1024);
    let events = events.lock().unwrap();
    let sizes: Vec<(usize, usize)> = events.iter().map(|event| (event.old_size, event.new_size)).collect();
    assert_eq!(sizes, [(64 * 1024, 128 * 1024), (128 * 1024, 192 * 1024), (192 * 1024, 256 * 1024)]);
}
