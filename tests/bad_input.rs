//! Bad input, on the shared pool and in the fast path's pointer checks: each
//! case is refused with its own `PoolError`, and the refusal leaves the pool
//! exactly as it was: same statistics (but for the failed-allocation
//! counter), `check()` passes, live blocks keep their data, and the pool
//! still allocates and frees.

mod common;

use common::{assert_intact, fill, page_size};
use lle_mempool::{MemoryPool, PoolConfig, PoolError, PoolStats};
use std::ops::Range;
use std::ptr::NonNull;

/// A pool with a few live blocks (shared and fast) holding patterns, to
/// check that refusals disturb nothing.
struct Fixture {
    pool: MemoryPool,
    blocks: Vec<(NonNull<u8>, usize, u64)>,
    /// Whether `still_works` tries the fast path too (it keeps a slab).
    try_fast_path: bool,
}

/// What a refusal must not change.
#[derive(Debug, PartialEq)]
struct Observed {
    size: usize,
    used: usize,
    free: usize,
    largest_free_block: usize,
    free_blocks: usize,
    live_allocations: usize,
    peak_used: usize,
    total_allocations: u64,
    total_frees: u64,
    expansions: u64,
    compactions: u64,
    fast_allocations: u64,
    fast_frees: u64,
    fast_remote_frees: u64,
    cached_blocks: usize,
    slabs: usize,
    regions: Vec<Range<usize>>,
}

impl Fixture {
    fn new(config: PoolConfig) -> Fixture {
        let pool = MemoryPool::with_config(config).unwrap();
        let mut fixture = Fixture { pool, blocks: Vec::new(), try_fast_path: true };
        for (seed, size) in [(1u64, 100usize), (2, 4000), (3, 16), (4, 777)] {
            let block = fixture.pool.allocate(size).unwrap();
            // SAFETY: a fresh block of `size` bytes.
            unsafe { fill(block, size, seed) };
            fixture.blocks.push((block, size, seed));
        }
        for (seed, size) in [(11u64, 24usize), (12, 64), (13, 1000), (14, 48)] {
            let block = fixture.pool.allocate_fast(size).unwrap();
            // SAFETY: as above.
            unsafe { fill(block, size, seed) };
            fixture.blocks.push((block, size, seed));
        }
        fixture
    }

    fn observe(&self) -> (Observed, u64) {
        let PoolStats {
            size,
            used,
            free,
            largest_free_block,
            free_blocks,
            live_allocations,
            peak_used,
            total_allocations,
            total_frees,
            failed_allocations,
            expansions,
            compactions,
            fast,
            ..
        } = self.pool.stats();
        let observed = Observed {
            size,
            used,
            free,
            largest_free_block,
            free_blocks,
            live_allocations,
            peak_used,
            total_allocations,
            total_frees,
            expansions,
            compactions,
            fast_allocations: fast.allocations,
            fast_frees: fast.frees,
            fast_remote_frees: fast.remote_frees,
            cached_blocks: fast.cached_blocks,
            slabs: fast.slabs,
            regions: self.pool.regions(),
        };
        (observed, failed_allocations)
    }

    /// Runs `refused`, which must fail with `expected`, and checks that it
    /// changed nothing but (for allocations) the failure counter.
    fn refuses<T: std::fmt::Debug>(
        &self,
        what: &str,
        expected: PoolError,
        counts_as_failed_allocation: bool,
        refused: impl FnOnce(&MemoryPool) -> Result<T, PoolError>,
    ) {
        let (before, failed_before) = self.observe();
        let result = refused(&self.pool);
        match result {
            Err(error) => {
                assert_eq!(error, expected, "{what}");
                assert!(!error.to_string().is_empty(), "{what}: empty Display");
            }
            Ok(value) => panic!("{what}: accepted ({value:?}), expected {expected:?}"),
        }
        let (after, failed_after) = self.observe();
        assert_eq!(after, before, "{what} changed the pool");
        assert_eq!(failed_after - failed_before, u64::from(counts_as_failed_allocation), "{what}: failure count");
        self.still_works(what);
    }

    fn still_works(&self, what: &str) {
        assert_eq!(self.pool.check(), Ok(()), "{what}: check");
        for &(block, size, seed) in &self.blocks {
            // SAFETY: the fixture's blocks stay live.
            unsafe { assert_intact(block, size, seed) };
        }
        let shared = self.pool.allocate(48).unwrap();
        // SAFETY: a fresh 48-byte block, freed once.
        unsafe {
            fill(shared, 48, 99);
            assert_intact(shared, 48, 99);
            self.pool.free(shared).unwrap();
        }
        if self.try_fast_path {
            let fast = self.pool.allocate_fast(48).unwrap();
            // SAFETY: as above.
            unsafe {
                fill(fast, 48, 98);
                assert_intact(fast, 48, 98);
                self.pool.free_fast(fast).unwrap();
            }
        }
        assert_eq!(self.pool.check(), Ok(()), "{what}: check after use");
    }

    fn block(&self, index: usize) -> NonNull<u8> {
        self.blocks[index].0
    }
}

fn at(addr: usize) -> NonNull<u8> {
    NonNull::new(addr as *mut u8).expect("non-null address")
}

#[test]
fn zero_and_overflowing_sizes_are_refused() {
    let fixture = Fixture::new(PoolConfig::new(64 * 1024));
    fixture.refuses("allocate(0)", PoolError::ZeroSize, true, |pool| pool.allocate(0));
    fixture.refuses("allocate_aligned(0, 64)", PoolError::ZeroSize, true, |pool| pool.allocate_aligned(0, 64));
    fixture.refuses("allocate_fast(0)", PoolError::ZeroSize, true, |pool| pool.allocate_fast(0));
    for size in [usize::MAX, usize::MAX - 3, usize::MAX - 15, usize::MAX / 2, 1 << 40] {
        let expected = PoolError::SizeOverflow { size };
        fixture.refuses(&format!("allocate({size})"), expected.clone(), true, |pool| pool.allocate(size));
        fixture.refuses(&format!("allocate_fast({size})"), expected.clone(), true, |pool| pool.allocate_fast(size));
        for align in [16, 4096] {
            fixture.refuses(&format!("allocate_aligned({size}, {align})"), expected.clone(), true, |pool| {
                pool.allocate_aligned(size, align)
            });
        }
    }
    for additional in [usize::MAX, usize::MAX - 4095] {
        fixture.refuses("expand(overflow)", PoolError::SizeOverflow { size: additional }, false, |pool| {
            pool.expand(additional)
        });
    }
    fixture.refuses("resize(usize::MAX)", PoolError::SizeOverflow { size: usize::MAX }, false, |pool| {
        pool.resize(usize::MAX)
    });
}

#[test]
fn bad_alignments_are_refused() {
    let fixture = Fixture::new(PoolConfig::new(64 * 1024));
    for align in [0usize, 3, 24, 48, 4095, usize::MAX] {
        fixture.refuses(&format!("align {align}"), PoolError::InvalidAlignment { align }, true, |pool| {
            pool.allocate_aligned(64, align)
        });
    }
    for align in [1usize << 31, 1 << 40, 1 << 63] {
        fixture.refuses(&format!("align {align}"), PoolError::AlignmentTooLarge { align }, true, |pool| {
            pool.allocate_aligned(64, align)
        });
    }
}

#[test]
fn foreign_pointers_are_refused_by_every_entry_point() {
    let fixture = Fixture::new(PoolConfig::new(64 * 1024));
    let other = MemoryPool::new(64 * 1024).unwrap();
    let other_shared = other.allocate(64).unwrap();
    let other_fast = other.allocate_fast(64).unwrap();
    let mut heap = Box::new([0u8; 64]);
    let mut stack = [0u8; 64];
    let region_end = fixture.pool.regions().last().unwrap().end;
    let candidates = [
        ("another pool's shared block", other_shared),
        ("another pool's fast block", other_fast),
        ("a Box", NonNull::from(&mut heap[0])),
        ("the stack", NonNull::from(&mut stack[0])),
        ("a dangling pointer", NonNull::<u64>::dangling().cast()),
        ("the end of the pool's last region", at(region_end)),
        ("the top of the address space", at(usize::MAX & !15)),
    ];
    for (what, pointer) in candidates {
        let addr = pointer.as_ptr() as usize;
        let expected = PoolError::ForeignPointer { addr };
        // SAFETY: refused without touching the memory.
        fixture.refuses(&format!("free({what})"), expected.clone(), false, |pool| unsafe { pool.free(pointer) });
        // SAFETY: as above.
        fixture
            .refuses(&format!("free_fast({what})"), expected.clone(), false, |pool| unsafe { pool.free_fast(pointer) });
        fixture.refuses(&format!("usable_size({what})"), expected, false, |pool| pool.usable_size(pointer));
        assert!(!fixture.pool.contains(pointer.as_ptr()), "{what} is not in the pool");
    }
    assert_eq!(heap[0], 0);
    assert_eq!(stack[0], 0);
    // The other pool's blocks are untouched and still its own.
    // SAFETY: live blocks of `other`.
    unsafe {
        fill(other_shared, 64, 5);
        fill(other_fast, 64, 6);
        assert_intact(other_shared, 64, 5);
        other.free(other_shared).unwrap();
        other.free_fast(other_fast).unwrap();
    }
    other.check().unwrap();
}

#[test]
fn interior_pointers_are_refused() {
    let fixture = Fixture::new(PoolConfig::new(64 * 1024));
    // Block 1 is a 4000-byte shared block; block 6 a 1000-byte fast block.
    let shared = fixture.block(1).as_ptr() as usize;
    let fast = fixture.block(6).as_ptr() as usize;
    for addr in [shared + 16, shared + 1, shared + 3984, shared + 3999, fast + 16, fast + 1, fast + 999] {
        let expected = PoolError::InteriorPointer { addr };
        // SAFETY: refused without touching the memory.
        fixture.refuses(&format!("free({addr:#x})"), expected.clone(), false, |pool| unsafe { pool.free(at(addr)) });
        // SAFETY: as above.
        fixture.refuses(&format!("free_fast({addr:#x})"), expected.clone(), false, |pool| unsafe {
            pool.free_fast(at(addr))
        });
        fixture.refuses(&format!("usable_size({addr:#x})"), expected, false, |pool| pool.usable_size(at(addr)));
    }
    // A slab's own start (its header) is no block either.
    let slab = fast & !(64 * 1024 - 1);
    // SAFETY: refused without touching the memory.
    let result = unsafe { fixture.pool.free_fast(at(slab)) };
    assert_eq!(result, Err(PoolError::InteriorPointer { addr: slab }));
    fixture.still_works("freeing a slab header");
}

#[test]
fn double_frees_of_shared_blocks_are_refused() {
    let fixture = Fixture::new(PoolConfig::new(64 * 1024));
    let block = fixture.pool.allocate(300).unwrap();
    let addr = block.as_ptr() as usize;
    // SAFETY: a live block, freed once; the second free is refused.
    unsafe { fixture.pool.free(block).unwrap() };
    fixture.refuses("second free", PoolError::NotAllocated { addr }, false, |pool| unsafe { pool.free(block) });
    fixture
        .refuses("second free_fast", PoolError::NotAllocated { addr }, false, |pool| unsafe { pool.free_fast(block) });
    // Never handed out: the free space right after the fixture's shared
    // blocks (never page aligned, so no slab starts there).
    let free_space = fixture.block(3).as_ptr() as usize + 784;
    fixture.refuses("free of free space", PoolError::NotAllocated { addr: free_space }, false, |pool| unsafe {
        pool.free(at(free_space))
    });
}

#[test]
fn double_frees_of_fast_blocks_are_refused_when_checked() {
    let fixture = Fixture::new(PoolConfig::new(1 << 20).checked(true));
    for size in [8usize, 64, 200, 1024] {
        let block = fixture.pool.allocate_fast(size).unwrap();
        let addr = block.as_ptr() as usize;
        // SAFETY: a fresh block of `size` bytes, freed once.
        unsafe {
            fill(block, size, 7);
            fixture.pool.free_fast(block).unwrap();
        }
        fixture.refuses(
            &format!("second free_fast of {size}"),
            PoolError::NotAllocated { addr },
            false,
            |pool| unsafe { pool.free_fast(block) },
        );
        fixture.refuses(&format!("second free of {size}"), PoolError::NotAllocated { addr }, false, |pool| unsafe {
            pool.free(block)
        });
    }
    // Freed on another thread, then again here and on a third thread.
    let block = fixture.pool.allocate_fast(96).unwrap();
    let addr = block.as_ptr() as usize;
    // SAFETY: a fresh block of 96 bytes.
    unsafe { fill(block, 96, 8) };
    let pool = &fixture.pool;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let block = at(addr);
                // SAFETY: the live block, freed once, on this thread.
                unsafe {
                    assert_intact(block, 96, 8);
                    pool.free_fast(block).unwrap();
                }
            })
            .join()
            .unwrap();
    });
    fixture.refuses("free_fast after another thread's free", PoolError::NotAllocated { addr }, false, |pool| unsafe {
        pool.free_fast(at(addr))
    });
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: refused without touching the block.
                assert_eq!(unsafe { pool.free_fast(at(addr)) }, Err(PoolError::NotAllocated { addr }));
            })
            .join()
            .unwrap();
    });
    fixture.still_works("cross-thread double frees");
}

#[test]
fn growth_beyond_the_maximum_is_refused() {
    let page = page_size();
    let max = 1 << 20;
    let fixture = Fixture::new(PoolConfig::new(64 * 1024).max_size(max));
    let size = fixture.pool.size();
    fixture.refuses("expand past max", PoolError::ExceedsMaxSize { requested: size + max, max }, false, |pool| {
        pool.expand(max)
    });
    fixture.refuses(
        "expand a page past max",
        PoolError::ExceedsMaxSize { requested: max + page, max },
        false,
        |pool| pool.expand(max - size + 1),
    );
    fixture.refuses("resize past max", PoolError::ExceedsMaxSize { requested: max + page, max }, false, |pool| {
        pool.resize(max + 1)
    });
    // An allocation the maximum refuses compacts the pool before its
    // retry: compacted already, the pool shows that nothing else changes.
    fixture.pool.compact().unwrap();
    let size = fixture.pool.size();
    fixture.refuses("allocation past max", PoolError::ExceedsMaxSize { requested: size + max, max }, true, |pool| {
        pool.allocate(max)
    });
    // Up to the maximum is fine.
    fixture.pool.expand(max - size).unwrap();
    assert_eq!(fixture.pool.size(), max);
    fixture.still_works("growing to the maximum");
}

/// A fast allocation that needs a slab the maximum size forbids is refused,
/// and counted once as a failed allocation.
#[test]
fn a_fast_allocation_past_the_maximum_is_refused_once() {
    let pool = MemoryPool::with_config(PoolConfig::new(64 * 1024).max_size(64 * 1024)).unwrap();
    let fixture = Fixture { pool, blocks: Vec::new(), try_fast_path: false };
    // The refusal compacts the pool before its retry, which gives back the
    // whole free pool: compacted already, it shows that nothing else
    // changes.
    assert_eq!(fixture.pool.compact(), Ok(64 * 1024));
    fixture.refuses(
        "allocate_fast without room for a slab",
        PoolError::ExceedsMaxSize { requested: 128 * 1024, max: 64 * 1024 },
        true,
        |pool| pool.allocate_fast(64),
    );
    // Sizes above the fast path's classes come from the shared pool.
    let big = fixture.pool.allocate_fast(2000).unwrap();
    // SAFETY: a fresh 2000-byte block, freed once.
    unsafe {
        fill(big, 2000, 3);
        assert_intact(big, 2000, 3);
        fixture.pool.free_fast(big).unwrap();
    }
}

#[test]
fn shrinking_below_the_bytes_in_use_is_refused() {
    let fixture = Fixture::new(PoolConfig::new(256 * 1024));
    let used = fixture.pool.stats().used;
    assert!(used > 64 * 1024, "the fixture's fast blocks hold slabs");
    let page = page_size();
    for requested in [0usize, 1, 4096, used / page * page - page] {
        fixture.refuses(
            &format!("resize({requested})"),
            PoolError::ShrinkBelowUsed { requested, used },
            false,
            |pool| pool.resize(requested),
        );
    }
}

#[test]
fn shrinking_past_a_live_block_at_a_region_end_is_refused() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let front = pool.allocate(60 * 1024).unwrap();
    let last = pool.allocate(4 * 1024).unwrap();
    assert_eq!(last.as_ptr() as usize + 4096, pool.regions()[0].end, "the last block ends the region");
    // SAFETY: live blocks of these sizes; `front` is freed once.
    unsafe {
        fill(last, 4096, 1);
        pool.free(front).unwrap();
    }
    let fixture = Fixture { pool, blocks: vec![(last, 4096, 1)], try_fast_path: false };
    for requested in [4096usize, 16 * 1024, 60 * 1024] {
        fixture.refuses(
            &format!("resize({requested})"),
            PoolError::ShrinkBlocked { requested, reachable: 64 * 1024 },
            false,
            |pool| pool.resize(requested),
        );
    }
    // Shrinking the newer region's tail is fine, the old region stays.
    fixture.pool.expand(64 * 1024).unwrap();
    fixture.pool.resize(64 * 1024 + 4096).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(fixture.pool.size(), 64 * 1024 + 4096);
    fixture.still_works("a partial shrink");
    // SAFETY: the live block, freed once.
    unsafe { fixture.pool.free(last).unwrap() };
    fixture.pool.resize(0).unwrap();
    assert_eq!((fixture.pool.size(), fixture.pool.regions().len()), (0, 0));
    fixture.pool.check().unwrap();
}

#[test]
fn invalid_configurations_are_refused() {
    let cases: [(PoolConfig, PoolError); 10] = [
        (PoolConfig::new(4096).alignment(8), PoolError::InvalidConfig { reason: "alignment must be at least 16" }),
        (PoolConfig::new(4096).alignment(0), PoolError::InvalidAlignment { align: 0 }),
        (PoolConfig::new(4096).alignment(24), PoolError::InvalidAlignment { align: 24 }),
        // Every allocation of such a pool would be refused.
        (PoolConfig::new(4096).alignment(1 << 31), PoolError::AlignmentTooLarge { align: 1 << 31 }),
        (PoolConfig::new(0).alignment(1 << 62), PoolError::AlignmentTooLarge { align: 1 << 62 }),
        (
            PoolConfig::new(4096).growth_factor(0.5),
            PoolError::InvalidConfig { reason: "growth factor must be a finite number >= 1.0" },
        ),
        (
            PoolConfig::new(4096).growth_factor(f64::NAN),
            PoolError::InvalidConfig { reason: "growth factor must be a finite number >= 1.0" },
        ),
        (
            PoolConfig::new(4096).growth_factor(f64::INFINITY),
            PoolError::InvalidConfig { reason: "growth factor must be a finite number >= 1.0" },
        ),
        (PoolConfig::new(8192).max_size(4096), PoolError::ExceedsMaxSize { requested: 8192, max: 4096 }),
        (PoolConfig::new(usize::MAX), PoolError::SizeOverflow { size: usize::MAX }),
    ];
    for (config, expected) in cases {
        let described = format!("{config:?}");
        match MemoryPool::with_config(config) {
            Err(error) => {
                assert_eq!(error, expected, "{described}");
                assert!(!error.to_string().is_empty());
            }
            Ok(_) => panic!("{described} accepted"),
        }
    }
    // An initial size that is not a page multiple but rounds up past the
    // maximum is refused too; one that fits is fine.
    let page = page_size();
    assert!(matches!(
        MemoryPool::with_config(PoolConfig::new(page + 1).max_size(page + 1)),
        Err(PoolError::ExceedsMaxSize { .. })
    ));
    let pool = MemoryPool::with_config(PoolConfig::new(page).max_size(page)).unwrap();
    assert_eq!(pool.size(), page);
}

/// The OS refusing memory is `OutOfMemory`, and the pool stays as it was.
/// Runs in a child process under a small address-space limit, so that the
/// limit cannot disturb other tests.
#[test]
fn the_os_refusing_memory_is_out_of_memory() {
    const CHILD: &str = "LLE_MEMPOOL_OOM_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "the_os_refusing_memory_is_out_of_memory", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .status()
            .unwrap();
        assert!(status.success(), "child process: {status}");
        return;
    }
    // No reservation, so that growth asks the OS for address space, which
    // the limit refuses; growth into a reservation needs none
    // (tests/out_of_memory.rs covers it).
    let fixture = Fixture::new(PoolConfig::new(1 << 20).reserve(0));
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let mapped = statm.split_whitespace().next().unwrap().parse::<usize>().unwrap() * page_size();
    let limit = libc::rlimit { rlim_cur: (mapped + (64 << 20)) as libc::rlim_t, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; this child process is ours.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    let gib = 1usize << 30;
    fixture.refuses("expand(1 GiB)", PoolError::OutOfMemory { requested: gib, errno: libc::ENOMEM }, false, |pool| {
        pool.expand(gib)
    });
    fixture.refuses("resize(+1 GiB)", PoolError::OutOfMemory { requested: gib, errno: libc::ENOMEM }, false, |pool| {
        pool.resize(pool.size() + gib)
    });
    fixture.refuses("allocate(1 GiB)", PoolError::OutOfMemory { requested: gib, errno: libc::ENOMEM }, true, |pool| {
        pool.allocate(gib)
    });
    fixture.still_works("the OS refusing memory");
}
