//! Running out of memory is an error value, never an abort: under an
//! address-space limit that lets the pool map what it asks for but leaves no
//! room for the bookkeeping that goes with it (the free index of a new or
//! grown region), growth fails with `OutOfMemory` (NULL or an error code in
//! C), and the pool is exactly as it was: same size and regions, `check()`
//! passes, live blocks keep their data, and it still serves allocations.
//!
//! Each case runs in a child process (this test binary, re-run for that one
//! test) so that the limit cannot disturb other tests, and so that an abort
//! shows up as the child's signal instead of killing the test run.

mod common;

use common::{assert_intact, fill};
use lle_mempool::{MemoryPool, PoolError};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// Names the case a child process runs.
const CHILD: &str = "LLE_MEMPOOL_OOM_CASE";
/// Address space left beyond the room a case asks for: enough for the
/// test's own small allocations and for `check()` on small pools, far less
/// than the index of a region of the sizes the cases map (1/64 of it, and
/// at least 64 MiB, more than a malloc arena holds).
const MARGIN: usize = 8 << 20;
const GIB: usize = 1 << 30;
/// A child that has not finished by then is hung, and fails the test.
const WATCHDOG: Duration = Duration::from_secs(300);

/// Runs `case` in a child process and fails unless the child passes.
fn in_child(name: &str, case: impl FnOnce()) {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        case();
        return;
    }
    let mut child = Command::new(std::env::current_exe().expect("path of the test binary"))
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD, name)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child process");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: the child hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{name}: the child failed: {status} (killed by signal {:?})", status.signal());
}

/// The process's mapped bytes now (`VmSize`).
fn mapped_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|line| line.starts_with("VmSize:")).expect("a VmSize line");
    let kib: usize = line.split_whitespace().nth(1).and_then(|field| field.parse().ok()).expect("VmSize in kB");
    kib * 1024
}

/// Lets the process map only `room` bytes (plus [`MARGIN`]) more than it
/// has now. Sets the soft limit alone, so that [`lift_limit`] can undo it.
fn limit_address_space(room: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut limit), 0);
        limit.rlim_cur = (mapped_bytes() + room + MARGIN) as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
    }
}

fn lift_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
    }
}

/// The `(start, end)` of every mapping of the process.
fn mappings() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

/// Where the mapping holding `addr` ends.
fn mapping_end(addr: usize) -> usize {
    let found = mappings().into_iter().find(|&(start, end)| (start..end).contains(&addr));
    found.map(|(_, end)| end).unwrap_or_else(|| panic!("no mapping holds {addr:#x}"))
}

/// Blocks of a pool, stamped with their patterns.
struct Live {
    blocks: Vec<(NonNull<u8>, usize, u64)>,
}

impl Live {
    fn new() -> Live {
        Live { blocks: Vec::new() }
    }

    fn add(&mut self, block: NonNull<u8>, len: usize) {
        let seed = self.blocks.len() as u64 + 1;
        // SAFETY: a fresh block of at least `len` bytes.
        unsafe { fill(block, len, seed) };
        self.blocks.push((block, len, seed));
    }

    fn assert_intact(&self) {
        for &(block, len, seed) in &self.blocks {
            // SAFETY: live blocks of `len` bytes.
            unsafe { assert_intact(block, len, seed) };
        }
    }

    fn free_all(self, pool: &MemoryPool) {
        for (block, _, _) in self.blocks {
            // SAFETY: live blocks, freed once.
            unsafe { pool.free(block).unwrap() };
        }
    }
}

/// What a refusal must leave: the same size and regions, a pool that
/// passes `check()`, and intact blocks.
fn assert_as_before(pool: &MemoryPool, what: &str, size: usize, regions: &[std::ops::Range<usize>], live: &Live) {
    assert_eq!(pool.size(), size, "{what}: the size changed");
    assert_eq!(pool.regions(), regions, "{what}: the regions changed");
    pool.check().unwrap_or_else(|error| panic!("{what}: {error}"));
    live.assert_intact();
}

/// As [`assert_as_before`], and the pool still serves both paths from the
/// room it has.
fn assert_unchanged(pool: &MemoryPool, what: &str, size: usize, regions: &[std::ops::Range<usize>], live: &mut Live) {
    assert_as_before(pool, what, size, regions, live);
    let block = pool.allocate(1000).unwrap_or_else(|error| panic!("{what}: the pool no longer allocates: {error}"));
    live.add(block, 1000);
    let block = pool.allocate_fast(100).unwrap_or_else(|error| panic!("{what}: no fast allocation: {error}"));
    live.add(block, 100);
}

fn expect_out_of_memory<T: std::fmt::Debug>(what: &str, result: Result<T, PoolError>) {
    match result {
        Err(PoolError::OutOfMemory { errno, .. }) => assert_eq!(errno, libc::ENOMEM, "{what}"),
        other => panic!("{what}: expected OutOfMemory, got {other:?}"),
    }
}

/// A pool with some live blocks on both paths, stamped.
fn pool_with_blocks() -> (MemoryPool, Live) {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut live = Live::new();
    for size in [100, 5000, 64 * 1024] {
        live.add(pool.allocate(size).unwrap(), size);
        live.add(pool.allocate_fast(size.min(1024)).unwrap(), size.min(1024));
    }
    (pool, live)
}

#[test]
fn expand_and_resize_beyond_the_limit_are_out_of_memory() {
    in_child("expand_and_resize_beyond_the_limit_are_out_of_memory", || {
        let (pool, mut live) = pool_with_blocks();
        let (size, regions) = (pool.size(), pool.regions());
        // Room for the mapping, not for its index.
        limit_address_space(8 * GIB);
        expect_out_of_memory("expand(8 GiB)", pool.expand(8 * GIB));
        assert_unchanged(&pool, "expand(8 GiB)", size, &regions, &mut live);
        expect_out_of_memory("resize(+8 GiB)", pool.resize(size + 8 * GIB));
        assert_unchanged(&pool, "resize(+8 GiB)", size, &regions, &mut live);
        lift_limit();
        live.free_all(&pool);
        pool.check().unwrap();
    });
}

#[test]
fn allocating_beyond_the_limit_is_out_of_memory() {
    in_child("allocating_beyond_the_limit_is_out_of_memory", || {
        let (pool, mut live) = pool_with_blocks();
        let (size, regions) = (pool.size(), pool.regions());
        limit_address_space(4 * GIB);
        expect_out_of_memory("allocate(4 GiB)", pool.allocate(4 * GIB));
        assert_unchanged(&pool, "allocate(4 GiB)", size, &regions, &mut live);
        expect_out_of_memory("allocate_aligned(4 GiB, 4096)", pool.allocate_aligned(4 * GIB, 4096));
        assert_unchanged(&pool, "allocate_aligned(4 GiB, 4096)", size, &regions, &mut live);
        lift_limit();
        live.free_all(&pool);
        pool.check().unwrap();
    });
}

/// A pool that grows by many small allocations until the limit stops it.
#[test]
fn a_pool_grown_by_small_allocations_stops_with_out_of_memory() {
    in_child("a_pool_grown_by_small_allocations_stops_with_out_of_memory", || {
        let (pool, mut live) = pool_with_blocks();
        limit_address_space(512 << 20);
        let mut refusal = None;
        for round in 0..100_000 {
            let size = 16 * 1024 + round % 7 * 1000;
            match pool.allocate(size) {
                Ok(block) => live.add(block, 64),
                Err(error) => {
                    refusal = Some(error);
                    break;
                }
            }
        }
        expect_out_of_memory("the shared path at the limit", refusal.map_or(Ok(()), Err));
        pool.check().unwrap();
        live.assert_intact();
        // The fast path runs out too once no slab can be had.
        let mut refusal = None;
        for _ in 0..10_000_000 {
            match pool.allocate_fast(512) {
                Ok(block) => live.add(block, 16),
                Err(error) => {
                    refusal = Some(error);
                    break;
                }
            }
        }
        expect_out_of_memory("the fast path at the limit", refusal.map_or(Ok(()), Err));
        // The fast path may still have grown the pool by less than the
        // shared path's last attempt asked for.
        let (size, regions) = (pool.size(), pool.regions());
        pool.check().unwrap();
        live.assert_intact();
        // Freeing makes room again, under the same limit.
        let blocks = std::mem::take(&mut live.blocks);
        let (freed, kept) = blocks.split_at(blocks.len() / 2);
        for &(block, _, _) in freed {
            // SAFETY: live blocks, freed once.
            unsafe { pool.free(block).unwrap() };
        }
        live.blocks = kept.to_vec();
        assert_unchanged(&pool, "after freeing half", size, &regions, &mut live);
        lift_limit();
        live.free_all(&pool);
        pool.check().unwrap();
    });
}

/// In-place growth (mremap) succeeds, then the heap refuses the grown
/// region's index: the mapping must be cut back to its old length.
#[test]
fn growth_in_place_is_rolled_back_when_the_index_cannot_be_had() {
    in_child("growth_in_place_is_rolled_back_when_the_index_cannot_be_had", || {
        // Its index (1/64 of it) is larger than a malloc arena's heap (64 MiB
        // in glibc), whose reserved address space could otherwise serve it.
        const GROWTH: usize = 4 * GIB;
        // A region with a free gap after it: map it with room to spare, then
        // let compact cut the free tail away.
        let pool = MemoryPool::new(GROWTH + (1 << 20)).unwrap();
        let mut live = Live::new();
        live.add(pool.allocate(1 << 20).unwrap(), 1 << 20);
        assert_eq!(pool.compact().unwrap(), GROWTH, "setup: compact cuts the free tail");
        // The tail is unmapped once no reader can hold it; later calls
        // nudge the collector.
        let mut attempts = 0;
        while mapping_end(pool.regions()[0].start) != pool.regions()[0].end {
            attempts += 1;
            assert!(attempts < 100, "setup: the free tail was never unmapped");
            pool.compact().unwrap();
        }
        let region = pool.regions()[0].clone();
        let (size, regions) = (pool.size(), pool.regions());
        let gap = region.end..region.end + GROWTH;
        let blocked = mappings().into_iter().any(|(start, end)| start < gap.end && end > gap.start);
        assert!(!blocked, "setup: something was mapped after the region: {gap:#x?}");

        limit_address_space(GROWTH);
        expect_out_of_memory("expand in place", pool.expand(GROWTH));
        assert_eq!(mapping_end(region.start), region.end, "the grown mapping was not cut back");
        assert_as_before(&pool, "expand in place", size, &regions, &live);

        // With the limit lifted the same growth works, in place.
        lift_limit();
        pool.expand(GROWTH).unwrap();
        assert_eq!(pool.regions(), vec![region.start..region.end + GROWTH], "growth in place after the rollback");
        assert_unchanged(&pool, "growth after the rollback", pool.size(), &pool.regions(), &mut live);
        live.free_all(&pool);
        pool.check().unwrap();
    });
}

/// The C API: NULL and `LLE_ERROR_OUT_OF_MEMORY`, never an abort.
#[cfg(feature = "capi")]
#[test]
fn the_c_api_reports_out_of_memory() {
    use lle_mempool::capi::{
        lle_atomic_pool_resize, lle_create_memory_pool, lle_destroy_memory_pool, lle_expand_pool_memory,
        lle_get_pool_size, lle_pool_allocate, lle_pool_free, LleResult, LLE_POOL_BUFFER,
    };
    in_child("the_c_api_reports_out_of_memory", || {
        let pool = lle_create_memory_pool(1 << 20, 0, LLE_POOL_BUFFER);
        assert!(!pool.is_null());
        // SAFETY: a live pool from lle_create_memory_pool, destroyed once at
        // the end; blocks come from it and are freed once.
        unsafe {
            let rust_view = &*pool;
            let mut live = Live::new();
            for size in [100, 70_000] {
                let block = lle_pool_allocate(pool, size).cast::<u8>();
                live.add(NonNull::new(block).expect("a block"), size);
            }
            let (size, regions) = (lle_get_pool_size(pool), rust_view.regions());

            limit_address_space(4 * GIB);
            assert!(lle_pool_allocate(pool, 4 * GIB).is_null(), "lle_pool_allocate(4 GiB)");
            assert_unchanged(rust_view, "lle_pool_allocate(4 GiB)", size, &regions, &mut live);
            lift_limit();

            limit_address_space(8 * GIB);
            assert_eq!(lle_expand_pool_memory(pool, 8 * GIB), LleResult::ErrorOutOfMemory);
            assert_unchanged(rust_view, "lle_expand_pool_memory(8 GiB)", size, &regions, &mut live);
            assert_eq!(lle_atomic_pool_resize(pool, size + 8 * GIB), LleResult::ErrorOutOfMemory);
            assert_unchanged(rust_view, "lle_atomic_pool_resize(+8 GiB)", size, &regions, &mut live);
            lift_limit();

            for (block, _, _) in std::mem::take(&mut live.blocks) {
                assert_eq!(lle_pool_free(pool, block.as_ptr().cast()), LleResult::Success);
            }
            rust_view.check().unwrap();
            lle_destroy_memory_pool(pool);
        }
    });
}
