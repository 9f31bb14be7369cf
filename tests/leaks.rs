//! Leak reports: `live_blocks` on both paths, with and without callers,
//! under concurrent use, and the report a pool writes when dropped with
//! live blocks.

use allocator_api2::alloc::{Allocator, Layout};
use lle_mempool::{AllocationPath, LiveBlock, MemoryPool, PoolConfig, PoolError};
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

fn tracking() -> MemoryPool {
    MemoryPool::with_config(PoolConfig::new(1 << 20).track_callers(true)).unwrap()
}

fn fill(block: NonNull<u8>, len: usize, byte: u8) {
    // SAFETY: callers pass blocks of at least `len` bytes they hold.
    unsafe { block.as_ptr().write_bytes(byte, len) };
}

fn holds(block: NonNull<u8>, len: usize, byte: u8) -> bool {
    // SAFETY: callers pass blocks of at least `len` bytes they may read.
    unsafe { std::slice::from_raw_parts(block.as_ptr(), len) }.iter().all(|&found| found == byte)
}

/// What a test expects of a live block.
fn expected(
    block: NonNull<u8>,
    size: usize,
    path: AllocationPath,
    line: Option<u32>,
) -> (usize, usize, AllocationPath, Option<u32>) {
    (block.as_ptr() as usize, size, path, line)
}

fn described(blocks: &[LiveBlock]) -> Vec<(usize, usize, AllocationPath, Option<u32>)> {
    blocks.iter().map(|block| (block.addr, block.size, block.path, block.caller.map(|caller| caller.line()))).collect()
}

#[test]
fn live_blocks_lists_exactly_the_leaked_blocks_with_their_sizes_and_callers() {
    let pool = tracking();
    let mut freed = Vec::new();
    for size in [8, 100, 700] {
        freed.push(pool.allocate_fast(size).unwrap());
        freed.push(pool.allocate(size * 3).unwrap());
    }
    let cache_small = pool.allocate_fast(24).unwrap();
    let cache_small_line = line!() - 1;
    let cache_large = pool.allocate_fast(1000).unwrap();
    let cache_large_line = line!() - 1;
    let shared = pool.allocate(5000).unwrap();
    let shared_line = line!() - 1;
    let aligned = pool.allocate_aligned(300, 4096).unwrap();
    let aligned_line = line!() - 1;
    let leaked = [(cache_small, 24, 0x11), (cache_large, 1000, 0x22), (shared, 5000, 0x33), (aligned, 300, 0x44)];
    for &(block, size, byte) in &leaked {
        fill(block, size, byte);
    }
    for block in freed.drain(..) {
        unsafe { pool.free(block).unwrap() };
    }

    let live = pool.live_blocks().unwrap();
    let mut wanted = vec![
        expected(cache_small, 24, AllocationPath::Cache, Some(cache_small_line)),
        expected(cache_large, 1000, AllocationPath::Cache, Some(cache_large_line)),
        expected(shared, 5000, AllocationPath::Shared, Some(shared_line)),
        expected(aligned, 300, AllocationPath::Shared, Some(aligned_line)),
    ];
    wanted.sort();
    assert_eq!(described(&live), wanted);
    for block in &live {
        assert_eq!(block.caller.unwrap().file(), file!());
        assert!(block.usable > block.size, "{block:?}: the canary follows the bytes asked");
    }
    let cache = live.iter().find(|block| block.addr == cache_small.as_ptr() as usize).unwrap();
    assert_eq!(cache.usable, 32);
    // Listing reads records only: the blocks hold what was written.
    for &(block, size, byte) in &leaked {
        assert!(holds(block, size, byte));
        unsafe { pool.free(block).unwrap() };
    }
    assert_eq!(pool.live_blocks().unwrap(), []);
}

#[test]
fn a_checked_pool_lists_blocks_without_callers_and_others_refuse() {
    let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true)).unwrap();
    let cache = pool.allocate_fast(40).unwrap();
    let shared = pool.allocate(2000).unwrap();
    let mut wanted =
        vec![expected(cache, 40, AllocationPath::Cache, None), expected(shared, 2000, AllocationPath::Shared, None)];
    wanted.sort();
    assert_eq!(described(&pool.live_blocks().unwrap()), wanted);

    let plain = MemoryPool::new(1 << 20).unwrap();
    let block = plain.allocate_fast(40).unwrap();
    assert!(matches!(plain.live_blocks(), Err(PoolError::InvalidConfig { .. })));
    unsafe { plain.free(block).unwrap() };
}

#[test]
fn the_allocator_impl_names_its_caller() {
    let pool = tracking();
    let small = Allocator::allocate(&&pool, Layout::from_size_align(48, 8).unwrap()).unwrap();
    let small_line = line!() - 1;
    let large = Allocator::allocate(&&pool, Layout::from_size_align(4000, 64).unwrap()).unwrap();
    let large_line = line!() - 1;
    let lines: HashSet<_> = pool.live_blocks().unwrap().iter().map(|block| block.caller.unwrap().line()).collect();
    assert_eq!(lines, HashSet::from([small_line, large_line]));
    unsafe {
        Allocator::deallocate(&&pool, small.cast(), Layout::from_size_align(48, 8).unwrap());
        Allocator::deallocate(&&pool, large.cast(), Layout::from_size_align(4000, 64).unwrap());
    }
}

#[test]
fn quarantined_blocks_are_not_live() {
    let pool = tracking();
    for allocate in [MemoryPool::allocate_fast, MemoryPool::allocate] {
        let block = allocate(&pool, 50).unwrap();
        // One byte past the bytes asked.
        unsafe { block.as_ptr().add(50).write(0) };
        assert!(matches!(unsafe { pool.free(block) }, Err(PoolError::BlockCorrupted { .. })));
    }
    assert_eq!(pool.stats().quarantined_blocks, 2);
    assert_eq!(pool.live_blocks().unwrap(), []);
}

#[test]
fn blocks_of_other_threads_and_many_slabs_are_all_listed() {
    let pool = tracking();
    // More blocks than the walk's first guess, across several slabs and
    // threads.
    let mut blocks: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|thread| {
                let pool = &pool;
                scope.spawn(move || {
                    (0..400)
                        .map(|i| {
                            let size = 16 + (i * 7 + thread) % 900;
                            (pool.allocate_fast(size).unwrap().as_ptr() as usize, size)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect()
    });
    blocks.sort();
    let live: Vec<_> = pool.live_blocks().unwrap().iter().map(|block| (block.addr, block.size)).collect();
    assert_eq!(live, blocks);
    for (addr, _) in blocks {
        unsafe { pool.free(NonNull::new(addr as *mut u8).unwrap()).unwrap() };
    }
    assert_eq!(pool.live_blocks().unwrap(), []);
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn blocks_live_throughout_a_walk_are_listed_under_concurrent_use() {
    let pool = tracking();
    let kept: Vec<_> = (0..20).map(|i| pool.allocate_fast(8 + i * 40).unwrap()).collect();
    let kept_shared = pool.allocate(3000).unwrap();
    let stop = AtomicBool::new(false);
    let start = Barrier::new(3);
    std::thread::scope(|scope| {
        for thread in 0..2 {
            let (pool, stop, start) = (&pool, &stop, &start);
            scope.spawn(move || {
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    // Whole slabs come and go, on both paths.
                    let blocks: Vec<_> = (0..300)
                        .map(|i| {
                            if i % 50 == thread {
                                pool.allocate(2000 + i).unwrap()
                            } else {
                                pool.allocate_fast(1 + (i * 13) % 1000).unwrap()
                            }
                        })
                        .collect();
                    for block in blocks {
                        unsafe { pool.free(block).unwrap() };
                    }
                }
            });
        }
        start.wait();
        // Stops the threads even if an assertion below fails, so that the
        // scope's join returns and the failure is reported.
        let _stop = StopOnDrop(&stop);
        for _ in 0..200 {
            let live = pool.live_blocks().unwrap();
            for (i, block) in kept.iter().enumerate() {
                let found = live.iter().filter(|live| live.addr == block.as_ptr() as usize).collect::<Vec<_>>();
                assert_eq!(found.len(), 1);
                assert_eq!(found[0].size, 8 + i * 40);
            }
            assert!(live.iter().any(|live| live.addr == kept_shared.as_ptr() as usize && live.size == 3000));
            for block in &live {
                assert!(block.size > 0 && block.size < block.usable, "{block:?}");
            }
        }
    });
    for block in kept {
        unsafe { pool.free(block).unwrap() };
    }
    unsafe { pool.free(kept_shared).unwrap() };
    assert_eq!(pool.live_blocks().unwrap(), []);
}

/// Run in a child process by the test below: leaks and drops a pool that
/// reports leaks.
#[test]
fn child_dropping_a_pool_with_leaks() {
    if std::env::var_os("LLE_LEAK_REPORT_CHILD").is_none() {
        return;
    }
    let pool =
        MemoryPool::with_config(PoolConfig::new(1 << 20).report_leaks_on_drop(true).track_callers(true)).unwrap();
    let _cache = pool.allocate_fast(24).unwrap();
    let _shared = pool.allocate(5000).unwrap();
    let freed = pool.allocate(100).unwrap();
    unsafe { pool.free(freed).unwrap() };
    drop(pool);
    let quiet = MemoryPool::with_config(PoolConfig::new(1 << 20).report_leaks_on_drop(true)).unwrap();
    let block = quiet.allocate(100).unwrap();
    unsafe { quiet.free(block).unwrap() };
    drop(quiet);
}

#[test]
fn a_pool_dropped_with_leaks_reports_them_on_standard_error() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_dropping_a_pool_with_leaks", "--nocapture", "--test-threads=1"])
        .env("LLE_LEAK_REPORT_CHILD", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let reports: Vec<_> = stderr.lines().filter(|line| line.starts_with("memory pool leak report")).collect();
    // One report: the pool that freed everything writes none.
    assert_eq!(reports, ["memory pool leak report: 2 live blocks, 5024 bytes asked (5040 usable)"], "{stderr}");
    let largest = stderr.lines().skip_while(|line| *line != "largest:").nth(1).unwrap();
    let named = format!(": 5000 bytes (5008 usable, shared) allocated at {}:", file!());
    assert!(largest.starts_with("  0x") && largest.contains(&named), "{stderr}");
    assert!(stderr.contains("  cache 32 bytes: 1 block\n"), "{stderr}");
    assert!(stderr.contains("  shared 5008 bytes: 1 block\n"), "{stderr}");
}
