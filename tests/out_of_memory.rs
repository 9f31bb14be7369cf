//! Running out of memory is an error value, never an abort: under an
//! address-space limit that lets the pool map what it asks for but leaves no
//! room for the bookkeeping that goes with it (the free index of a new or
//! grown region), growth fails with `OutOfMemory` (NULL or an error code in
//! C), and the pool is exactly as it was: same size and regions, `check()`
//! passes, live blocks keep their data, and it still serves allocations.
//! A pool that reserved its address space up front grows by committing it,
//! which the limit does not stop: there it is the index that the limit
//! refuses, and the committed memory is decommitted again. Creating a pool
//! under a limit its default reservation does not fit still works: the
//! reservation shrinks until it fits.
//!
//! The kernel can also refuse to cut a free tail off a region, when the cut
//! would split a mapping past `vm.max_map_count`: the tail is then purged
//! and kept, still the pool's, and unmapped with the region. Inside a
//! reservation the tail is decommitted instead, which the limit does not
//! stop.
//!
//! Each case runs in a child process (this test binary, re-run for that one
//! test) so that the limit cannot disturb other tests, and so that an abort
//! shows up as the child's signal instead of killing the test run.

mod common;

use common::{fill, page_size, Live};
use lle_mempool::{MemoryPool, PoolConfig, PoolError};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
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

/// How a case's pool holds its address space.
#[derive(Clone, Copy, Debug)]
enum Reservation {
    /// None: growth maps address space, which the limit refuses.
    None,
    /// The default: growth commits address space the pool holds already,
    /// and only the index needs more, which the limit refuses.
    Default,
}

impl Reservation {
    const BOTH: [Reservation; 2] = [Reservation::None, Reservation::Default];

    fn config(self, initial_size: usize) -> PoolConfig {
        match self {
            Reservation::None => PoolConfig::new(initial_size).reserve(0),
            Reservation::Default => PoolConfig::new(initial_size),
        }
    }

    /// The room to leave for a growth of `bytes` that must be refused: the
    /// memory, not its index, where growth maps; nothing where it commits.
    fn room_refusing(self, bytes: usize) -> usize {
        match self {
            Reservation::None => bytes,
            Reservation::Default => 0,
        }
    }
}

/// A pool with some live blocks on both paths, stamped.
fn pool_with_blocks(reservation: Reservation) -> (MemoryPool, Live) {
    pool_with_blocks_from(reservation.config(1 << 20))
}

fn pool_with_blocks_from(config: PoolConfig) -> (MemoryPool, Live) {
    let pool = MemoryPool::with_config(config).unwrap();
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
        for reservation in Reservation::BOTH {
            let (pool, mut live) = pool_with_blocks(reservation);
            let (size, regions) = (pool.size(), pool.regions());
            limit_address_space(reservation.room_refusing(8 * GIB));
            let what = format!("expand(8 GiB), {reservation:?}");
            expect_out_of_memory(&what, pool.expand(8 * GIB));
            assert_unchanged(&pool, &what, size, &regions, &mut live);
            let what = format!("resize(+8 GiB), {reservation:?}");
            expect_out_of_memory(&what, pool.resize(size + 8 * GIB));
            assert_unchanged(&pool, &what, size, &regions, &mut live);
            lift_limit();
            live.free_all(&pool);
            pool.check().unwrap();
        }
    });
}

#[test]
fn allocating_beyond_the_limit_is_out_of_memory() {
    in_child("allocating_beyond_the_limit_is_out_of_memory", || {
        for reservation in Reservation::BOTH {
            let (pool, mut live) = pool_with_blocks(reservation);
            let (size, regions) = (pool.size(), pool.regions());
            limit_address_space(reservation.room_refusing(4 * GIB));
            let what = format!("allocate(4 GiB), {reservation:?}");
            expect_out_of_memory(&what, pool.allocate(4 * GIB));
            assert_unchanged(&pool, &what, size, &regions, &mut live);
            let what = format!("allocate_aligned(4 GiB, 4096), {reservation:?}");
            expect_out_of_memory(&what, pool.allocate_aligned(4 * GIB, 4096));
            assert_unchanged(&pool, &what, size, &regions, &mut live);
            lift_limit();
            live.free_all(&pool);
            pool.check().unwrap();
        }
    });
}

/// A pool that grows by many small allocations until the limit stops it:
/// one without a reservation, and one that runs past its reservation.
#[test]
fn a_pool_grown_by_small_allocations_stops_with_out_of_memory() {
    in_child("a_pool_grown_by_small_allocations_stops_with_out_of_memory", || {
        for reserve in [0, 64 << 20] {
            grow_by_small_allocations_until_refused(PoolConfig::new(1 << 20).reserve(reserve));
        }
    });
}

fn grow_by_small_allocations_until_refused(config: PoolConfig) {
    let (pool, mut live) = pool_with_blocks_from(config);
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
        // let compact cut the free tail away. No reservation: with one, the
        // gap would be the pool's, and growth would commit it (see the next
        // case).
        let pool = MemoryPool::with_config(PoolConfig::new(GROWTH + (1 << 20)).reserve(0)).unwrap();
        let mut live = Live::new();
        live.add(pool.allocate(1 << 20).unwrap(), 1 << 20);
        assert_eq!(pool.compact().unwrap(), GROWTH, "setup: compact cuts the free tail");
        let region = pool.regions()[0].clone();
        assert_eq!(mapping_end(region.start), region.end, "setup: the free tail is cut off the mapping at once");
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

/// Growth into the reservation commits its pages, then the heap refuses
/// the grown region's index: the pages must be decommitted again.
#[test]
fn growth_into_the_reservation_is_decommitted_when_the_index_cannot_be_had() {
    in_child("growth_into_the_reservation_is_decommitted_when_the_index_cannot_be_had", || {
        const GROWTH: usize = 4 * GIB;
        let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).reserve(8 * GIB)).unwrap();
        let mut live = Live::new();
        live.add(pool.allocate(64 * 1024).unwrap(), 64 * 1024);
        let region = pool.regions()[0].clone();
        let (size, regions) = (pool.size(), pool.regions());
        assert_eq!(mapping_end(region.start), region.end, "setup: only the region's pages are read-write");

        // No room at all: committing needs none, the index does.
        limit_address_space(0);
        expect_out_of_memory("expand into the reservation", pool.expand(GROWTH));
        assert_eq!(mapping_end(region.start), region.end, "the committed pages were not decommitted");
        assert_as_before(&pool, "expand into the reservation", size, &regions, &live);

        // With the limit lifted the same growth works, in place.
        lift_limit();
        pool.expand(GROWTH).unwrap();
        assert_eq!(pool.regions(), vec![region.start..region.end + GROWTH], "growth in place after the rollback");
        assert_eq!(mapping_end(region.start), region.end + GROWTH, "the growth is read-write");
        assert_unchanged(&pool, "growth after the rollback", pool.size(), &pool.regions(), &mut live);
        live.free_all(&pool);
        pool.check().unwrap();
    });
}

/// Creating a pool under an address-space limit that its default
/// reservation does not fit: the reservation shrinks until it fits, and
/// the pool grows in place inside what it got.
#[test]
fn a_refused_reservation_falls_back_to_one_that_fits() {
    in_child("a_refused_reservation_falls_back_to_one_that_fits", || {
        const ROOM: usize = 64 << 20;
        limit_address_space(ROOM);
        let before = mapped_bytes();
        let pool = MemoryPool::new(1 << 20).expect("a pool whose default reservation does not fit");
        let reserved = mapped_bytes() - before;
        assert!(reserved <= ROOM + MARGIN, "{reserved} bytes mapped under a limit of {ROOM} + {MARGIN}");
        assert!(reserved >= 16 << 20, "the reservation was dropped rather than halved: {reserved} bytes mapped");
        let start = pool.regions()[0].start;
        let mut live = Live::new();
        for _ in 0..14 {
            live.add(pool.allocate(1 << 20).unwrap(), 1 << 20);
        }
        assert_eq!(pool.size(), 16 << 20);
        assert_eq!(pool.regions(), vec![start..start + (16 << 20)], "growth inside the reservation is in place");
        pool.check().unwrap();
        live.assert_intact();

        // Under no room but the margin, a pool is still created.
        limit_address_space(0);
        let small = MemoryPool::new(1 << 20).expect("a pool under no room");
        live.add(small.allocate(4096).unwrap(), 4096);
        small.check().unwrap();
        lift_limit();
        live.assert_intact();
        let small_blocks = live.blocks.split_off(live.blocks.len() - 1);
        for (block, _, _) in small_blocks {
            // SAFETY: the small pool's live block, freed once.
            unsafe { small.free(block).unwrap() };
        }
        live.free_all(&pool);
        pool.check().unwrap();
    });
}

/// A mapping the test made itself, unmapped on drop.
struct TestMapping {
    addr: usize,
    len: usize,
}

impl TestMapping {
    /// Maps `len` bytes with `protection`, at `addr` exactly (`MAP_FIXED_NOREPLACE`)
    /// or, for 0, wherever the kernel likes.
    fn new(addr: usize, len: usize, protection: libc::c_int) -> TestMapping {
        let mapping = Self::try_new(addr, len, protection);
        mapping.unwrap_or_else(|| panic!("mmap at {addr:#x}: {}", std::io::Error::last_os_error()))
    }

    /// As [`new`](Self::new); `None` where something is mapped at `addr`
    /// already.
    fn try_new(addr: usize, len: usize, protection: libc::c_int) -> Option<TestMapping> {
        let placement = if addr == 0 { 0 } else { libc::MAP_FIXED_NOREPLACE };
        // SAFETY: a new anonymous mapping that replaces nothing.
        let result = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                protection,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | placement,
                -1,
                0,
            )
        };
        if result == libc::MAP_FAILED {
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST), "mmap at {addr:#x}");
            return None;
        }
        let mapping = TestMapping { addr: result as usize, len };
        assert!(addr == 0 || mapping.addr == addr, "setup: the kernel ignored MAP_FIXED_NOREPLACE");
        Some(mapping)
    }
}

impl Drop for TestMapping {
    fn drop(&mut self) {
        // SAFETY: the test's own mapping, which nothing else uses.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Uses up the process's mappings (`vm.max_map_count`): every other page of
/// a reservation is made readable, each page then a mapping of its own,
/// until the kernel refuses to split another. `None` where the limit is too
/// high to reach in a test.
fn exhaust_mappings() -> Option<TestMapping> {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count").expect("read vm.max_map_count");
    let limit: usize = limit.trim().parse().expect("vm.max_map_count is a number");
    if limit > 1 << 21 {
        return None;
    }
    let page = page_size();
    let pages = limit + 64;
    let filler = TestMapping::new(0, pages * page, libc::PROT_NONE);
    let protect = |index: usize| {
        // SAFETY: a page of the test's own reservation, which holds nothing.
        unsafe { libc::mprotect((filler.addr + index * page) as *mut libc::c_void, page, libc::PROT_READ) == 0 }
    };
    let mut index = 1;
    while protect(index) {
        index += 2;
        assert!(index < pages - 2, "setup: vm.max_map_count was never reached");
    }
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOMEM), "setup: mprotect");
    // A refused mprotect may have made one of its two splits; the last page,
    // which takes one split, fills the count if it did not.
    let _ = protect(pages - 1);
    Some(filler)
}

/// A pool of one `len`-byte region with a read-write page of the test's
/// own right after it: the kernel merges the two into one mapping, so
/// cutting the region's tail would split it. Where another mapping already
/// sits right after the region, another try: the failed pool stays alive
/// with a page of the test's below it, so the next region lands lower, with
/// room above it.
fn pool_with_neighbour(len: usize) -> (MemoryPool, TestMapping) {
    let page = page_size();
    let mut crowded = Vec::new();
    for _ in 0..16 {
        // No reservation: it would take the addresses after the region.
        let pool = MemoryPool::with_config(PoolConfig::new(len).reserve(0)).unwrap();
        let end = pool.regions()[0].end;
        if let Some(neighbour) = TestMapping::try_new(end, page, libc::PROT_READ | libc::PROT_WRITE) {
            return (pool, neighbour);
        }
        crowded.push((pool, TestMapping::new(0, page, libc::PROT_NONE)));
    }
    panic!("setup: every region had another mapping right after it");
}

#[test]
fn a_tail_the_kernel_will_not_cut_is_purged_and_kept() {
    in_child("a_tail_the_kernel_will_not_cut_is_purged_and_kept", || {
        const REGION: usize = 2 << 20;
        const KEPT: usize = 64 * 1024;
        let (pool, neighbour) = pool_with_neighbour(REGION);
        let region = pool.regions()[0].clone();
        assert_eq!(region.len(), REGION);
        let mut live = Live::new();
        live.add(pool.allocate(KEPT).unwrap(), KEPT);
        // A block in what becomes the tail, stamped, then freed: a tail that
        // is neither cut nor purged would still hold its pattern.
        let stamped = pool.allocate(REGION / 2).unwrap();
        // SAFETY: a fresh block of that size.
        unsafe { fill(stamped, REGION / 2, 99) };
        // SAFETY: a live block, freed once.
        unsafe { pool.free(stamped).unwrap() };
        assert_eq!(mapping_end(region.start), neighbour.addr + neighbour.len, "setup: the neighbour merged");

        let Some(filler) = exhaust_mappings() else {
            eprintln!("vm.max_map_count is too high to reach here; nothing checked");
            return;
        };
        let released = pool.compact();
        drop(filler);
        assert_eq!(released, Ok(REGION - KEPT), "compact gives the tail back all the same");
        let trimmed = region.start..region.start + KEPT;
        assert_eq!(pool.regions(), std::slice::from_ref(&trimmed), "the region is trimmed");
        assert_eq!(mapping_end(region.start), neighbour.addr + neighbour.len, "the kernel did not cut the tail");
        // SAFETY: the tail is still mapped, as just checked.
        let tail = unsafe { std::slice::from_raw_parts(stamped.as_ptr(), REGION / 2) };
        assert!(tail.iter().all(|&byte| byte == 0), "the kept tail was purged");
        pool.check().unwrap();
        live.assert_intact();

        // The kept tail serves growth in place as fresh memory.
        pool.expand(REGION - KEPT).unwrap();
        assert_eq!(pool.regions(), std::slice::from_ref(&region), "grown in place over the kept tail");
        live.add(pool.allocate(REGION - KEPT).unwrap(), REGION - KEPT);
        live.assert_intact();
        pool.check().unwrap();
        live.free_all(&pool);

        // Dropping the pool unmaps the region, kept tail and all, and not
        // a byte of the neighbour.
        drop(pool);
        let held = |addr: usize| mappings().into_iter().any(|(start, end)| (start..end).contains(&addr));
        assert!(!held(region.start) && !held(region.end - 1), "the region was unmapped");
        assert_eq!(mapping_end(neighbour.addr), neighbour.addr + neighbour.len, "the neighbour is intact");
        // SAFETY: the neighbour is the test's own, still mapped.
        unsafe { (neighbour.addr as *mut u8).write(7) };
    });
}

/// Inside a reservation the free tail is decommitted rather than cut: the
/// range then reaches from the cut to the end of the read-write mapping,
/// which leaves as many mappings as before, so the kernel does it even at
/// `vm.max_map_count`, and the reservation stays whole for growth.
#[test]
fn a_tail_inside_the_reservation_is_decommitted_at_the_mapping_limit() {
    in_child("a_tail_inside_the_reservation_is_decommitted_at_the_mapping_limit", || {
        const REGION: usize = 2 << 20;
        const KEPT: usize = 64 * 1024;
        let pool = MemoryPool::with_config(PoolConfig::new(REGION).reserve(2 * REGION)).unwrap();
        let region = pool.regions()[0].clone();
        assert_eq!(region.len(), REGION);
        let mut live = Live::new();
        live.add(pool.allocate(KEPT).unwrap(), KEPT);
        let stamped = pool.allocate(REGION / 2).unwrap();
        // SAFETY: a fresh block of that size.
        unsafe { fill(stamped, REGION / 2, 99) };
        // SAFETY: a live block, freed once.
        unsafe { pool.free(stamped).unwrap() };
        assert_eq!(mapping_end(region.start), region.end, "setup: the region is one read-write mapping");

        let Some(filler) = exhaust_mappings() else {
            eprintln!("vm.max_map_count is too high to reach here; nothing checked");
            return;
        };
        let released = pool.compact();
        let decommitted_at = mapping_end(region.start);
        drop(filler);
        assert_eq!(released, Ok(REGION - KEPT), "compact gives the tail back");
        let trimmed = region.start..region.start + KEPT;
        assert_eq!(pool.regions(), std::slice::from_ref(&trimmed), "the region is trimmed");
        assert_eq!(decommitted_at, trimmed.end, "the tail is decommitted: only the kept part is read-write");
        pool.check().unwrap();
        live.assert_intact();

        // Growth in place recommits the tail, whose old contents are gone,
        // and goes on into the reservation.
        pool.expand(2 * REGION - KEPT).unwrap();
        assert_eq!(pool.regions(), vec![region.start..region.end + REGION], "grown in place into the reservation");
        // SAFETY: recommitted pool memory, free, which nobody uses.
        let tail = unsafe { std::slice::from_raw_parts(stamped.as_ptr(), REGION / 2) };
        assert!(tail.iter().all(|&byte| byte == 0), "the decommitted tail kept its contents");
        live.add(pool.allocate(2 * REGION - KEPT).unwrap(), 2 * REGION - KEPT);
        live.assert_intact();
        pool.check().unwrap();
        live.free_all(&pool);

        // Dropping the pool unmaps all of it.
        drop(pool);
        let held = |addr: usize| mappings().into_iter().any(|(start, end)| (start..end).contains(&addr));
        assert!(!held(region.start) && !held(region.end + REGION - 1), "the region was unmapped");
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
                live.add(std::ptr::NonNull::new(block).expect("a block"), size);
            }
            let (size, regions) = (lle_get_pool_size(pool), rust_view.regions());
            // The C API's pools have the default reservation.
            let reservation = Reservation::Default;

            limit_address_space(reservation.room_refusing(4 * GIB));
            assert!(lle_pool_allocate(pool, 4 * GIB).is_null(), "lle_pool_allocate(4 GiB)");
            assert_unchanged(rust_view, "lle_pool_allocate(4 GiB)", size, &regions, &mut live);
            lift_limit();

            limit_address_space(reservation.room_refusing(8 * GIB));
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
