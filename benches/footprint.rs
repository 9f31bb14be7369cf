//! Memory footprint: resident memory against live bytes while a workload
//! changes shape, for the pool's two paths and their peers.
//!
//! Workload (seeded: every allocator replays the identical sequence of sizes
//! and victims; the counts are the constants below, times `--scale`):
//! 1. `small`: 800 000 blocks of `16..=512` B arrive (about 200 MiB live);
//!    then, in `small die-off`, 90% of them die at random.
//! 2. `large`: 20 000 blocks of `1..=8` KiB arrive (about 88 MiB, less than
//!    half of what the small blocks freed); then, in `big die-off`, 80% of
//!    every live block dies at random.
//! 3. `churn`: 2 000 000 steps of a steady mix: free a random live block,
//!    allocate one of `16..=4096` B.
//!
//! Every block is written whole when it is allocated (a program writes its
//! objects, so resident memory must see their pages), and its first and last
//! byte are checked before it is freed. An operation is one allocate or one
//! free; live bytes are the sum of the sizes asked for.
//!
//! Allocators, each in a process of its own (the bench runs itself again
//! with `--child NAME`, so no allocator inherits another's heap): `glibc`
//! (`std::alloc::System`), `jemalloc` and `mimalloc` (called through
//! `GlobalAlloc`, not installed as the global allocator), `rlsf` (TLSF over
//! an arena that is mapped but untouched, so only the pages it uses count),
//! `lle_shared` (a pool from `MemoryPool::new(1 MiB)`, `allocate` / `free` for
//! every size) and `lle_fast` (the same pool, `allocate_fast` / `free_fast` up
//! to 1 KiB, `allocate` / `free` above). The pool's rows get a second process
//! that stops after the big die-off, calls `compact()`, and reads its
//! resident memory again; the main process never compacts, so its curve is
//! comparable with the peers'.
//!
//! Resident memory (RSS) is read from `/proc/self/statm` every 1 000
//! operations and at the end of each phase, minus the process's resident
//! memory just before the workload. That baseline is taken after the
//! workload's own bookkeeping (the live-block list, the sample buffer) has
//! been touched, and before the allocator is created, so an allocator's own
//! metadata counts against it. Minor page faults come from `getrusage` over
//! the same span.
//!
//! Run: `cargo bench -p lle-mempool-benches --bench footprint`; `-- --quick`
//! runs it at 5% of the counts (a smoke run of seconds), `-- --scale F` at
//! any factor, and allocator names after `--` select a subset.
//!
//! Reading it: stdout is a markdown table. Each cell is RSS divided by the
//! live bytes at the same moment, with the RSS itself in brackets: 1.00 means
//! the allocator holds nothing beyond what the program asked for. `peak` is
//! the highest RSS over the highest live set (they need not coincide), `end`
//! is after the churn, `after die-off` is right after the big die-off,
//! without and with `compact()`. The curves, one CSV per allocator
//! (`ops,phase,live_bytes,rss_bytes`), and a plot of all of them,
//! `rss.svg`, go to `target/footprint/` (under `CARGO_TARGET_DIR` when it is
//! set).

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::ptr::NonNull;
use std::time::Instant;
use std::{env, mem};

use lle_mempool::MemoryPool;
use mimalloc::MiMalloc;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rlsf::Tlsf;
use tikv_jemallocator::Jemalloc;

const SEED: u64 = 0xf007_9417;

/// Phase 1's arrivals: at a mean of 264 B, about 200 MiB live at full scale.
const SMALL_BLOCKS: usize = 800_000;
const SMALL_SIZES: RangeInclusive<usize> = 16..=512;
/// The share of the small blocks that dies once all of them have arrived.
const SMALL_DEATH_PERCENT: usize = 90;

/// Phase 2's arrivals: at a mean of 4.5 KiB, about 88 MiB, less than half of
/// the 180 MiB the small blocks' deaths freed. The holes they left are of
/// every length, so an allocator that reuses them keeps its phase-1 peak
/// (glibc and TLSF do); one that needs fresh memory for the new shape shows
/// it in the peak ratio.
const LARGE_BLOCKS: usize = 20_000;
const LARGE_SIZES: RangeInclusive<usize> = 1024..=8192;
/// The big die-off: the share of every live block that dies.
const DIE_OFF_PERCENT: usize = 80;

/// Phase 3's free-one-allocate-one steps, over the die-off's survivors.
const CHURN_STEPS: usize = 2_000_000;
const CHURN_SIZES: RangeInclusive<usize> = 16..=4096;

/// One RSS reading per this many operations. Often enough that the plot is
/// smooth; the end of every phase is read as well, so no peak between
/// readings is missed at a phase boundary.
const SAMPLE_INTERVAL: u64 = 1_000;

/// The factor `--quick` applies to every count.
const QUICK_SCALE: f64 = 0.05;

/// Asking every allocator for the pool's default alignment keeps the
/// comparison about equal work.
const ALIGN: usize = 16;

/// The pool starts small and grows on demand, so its growth policy is part
/// of what is measured.
const POOL_INITIAL_SIZE: usize = 1 << 20;

/// The largest block `lle_fast` sends through `allocate_fast`: the fast
/// path's own limit.
const FAST_PATH_MAX_SIZE: usize = 1024;

/// rlsf's arena per unit of scale. Mapped without reserve and never touched
/// until TLSF hands a block out, so only its size limits the run: twenty
/// times the peak live set.
const RLSF_ARENA_BYTES_PER_SCALE: usize = 4 << 30;

const MIB: f64 = (1 << 20) as f64;

/// The line a child prints for its parent, followed by `key=value` fields.
const REPORT_TAG: &str = "footprint-report";

/// The phases, in order; a sample records the one it was taken in.
const PHASES: [&str; 5] = ["small", "small die-off", "large", "big die-off", "churn"];
const SMALL_PHASE: usize = 0;
const SMALL_DIE_OFF_PHASE: usize = 1;
const LARGE_PHASE: usize = 2;
const BIG_DIE_OFF_PHASE: usize = 3;
const CHURN_PHASE: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AllocatorKind {
    Glibc,
    Jemalloc,
    Mimalloc,
    Rlsf,
    LleShared,
    LleFast,
}

impl AllocatorKind {
    const ALL: [AllocatorKind; 6] = [
        AllocatorKind::Glibc,
        AllocatorKind::Jemalloc,
        AllocatorKind::Mimalloc,
        AllocatorKind::Rlsf,
        AllocatorKind::LleShared,
        AllocatorKind::LleFast,
    ];

    fn name(self) -> &'static str {
        match self {
            AllocatorKind::Glibc => "glibc",
            AllocatorKind::Jemalloc => "jemalloc",
            AllocatorKind::Mimalloc => "mimalloc",
            AllocatorKind::Rlsf => "rlsf",
            AllocatorKind::LleShared => "lle_shared",
            AllocatorKind::LleFast => "lle_fast",
        }
    }

    fn from_name(name: &str) -> Option<AllocatorKind> {
        AllocatorKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Whether the allocator has a `compact()` to measure after the die-off.
    fn compacts(self) -> bool {
        matches!(self, AllocatorKind::LleShared | AllocatorKind::LleFast)
    }

    fn create(self, scale: f64) -> Box<dyn FootprintAllocator> {
        match self {
            AllocatorKind::Glibc => Box::new(ViaGlobalAlloc(System)),
            AllocatorKind::Jemalloc => Box::new(ViaGlobalAlloc(Jemalloc)),
            AllocatorKind::Mimalloc => Box::new(ViaGlobalAlloc(MiMalloc)),
            AllocatorKind::Rlsf => {
                let bytes = (RLSF_ARENA_BYTES_PER_SCALE as f64 * scale.max(1.0)) as usize;
                Box::new(TlsfArena::new(bytes))
            }
            AllocatorKind::LleShared => Box::new(LleShared(new_pool())),
            AllocatorKind::LleFast => Box::new(LleFast(new_pool())),
        }
    }
}

fn new_pool() -> MemoryPool {
    MemoryPool::new(POOL_INITIAL_SIZE).expect("create pool")
}

/// A single-threaded allocator under test. `free` gets the size back because
/// the `GlobalAlloc`-style peers need the layout.
trait FootprintAllocator {
    fn allocate(&mut self, size: usize) -> NonNull<u8>;

    /// # Safety
    /// `ptr` came from `allocate(size)` on `self` and is still live.
    unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize);

    /// Gives free memory back to the OS. Only the allocators whose kind
    /// [`compacts`](AllocatorKind::compacts) are asked.
    fn compact(&mut self) {
        unreachable!("only the pool is compacted")
    }
}

fn layout_for(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("block sizes and ALIGN form valid layouts")
}

struct ViaGlobalAlloc<A>(A);

impl<A: GlobalAlloc> FootprintAllocator for ViaGlobalAlloc<A> {
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        let layout = layout_for(size);
        // SAFETY: block sizes are never zero.
        let ptr = unsafe { self.0.alloc(layout) };
        NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout))
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: the caller's contract: `ptr` came from `alloc` with this layout.
        unsafe { self.0.dealloc(ptr.as_ptr(), layout_for(size)) };
    }
}

/// Address space mapped readable and writable without swap reserve: pages
/// become resident only when first written, so an arena far larger than
/// the workload costs nothing until TLSF hands it out.
struct ReservedArena {
    base: NonNull<u8>,
    len: usize,
}

impl ReservedArena {
    fn new(len: usize) -> ReservedArena {
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap of the rlsf arena: {}", io::Error::last_os_error());
        ReservedArena { base: NonNull::new(addr.cast()).expect("mmap never maps at null"), len }
    }
}

impl Drop for ReservedArena {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and whatever used it (TLSF) is gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Same bitmap and list parameters as `rlsf::GlobalTlsf`.
type TlsfCore = Tlsf<'static, usize, usize, { usize::BITS as usize }, { usize::BITS as usize }>;

struct TlsfArena {
    tlsf: TlsfCore,
    // Declared after `tlsf` so the memory it points into outlives it.
    _arena: ReservedArena,
}

impl TlsfArena {
    fn new(bytes: usize) -> TlsfArena {
        let arena = ReservedArena::new(bytes);
        let mut tlsf = TlsfCore::new();
        let memory = NonNull::slice_from_raw_parts(arena.base, arena.len);
        // SAFETY: the arena is owned by the returned value, outlives `tlsf`
        // and is used by nothing else.
        unsafe { tlsf.insert_free_block_ptr(memory) }.expect("arena fits in TLSF");
        TlsfArena { tlsf, _arena: arena }
    }
}

impl FootprintAllocator for TlsfArena {
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        self.tlsf.allocate(layout_for(size)).expect("rlsf arena exhausted; raise RLSF_ARENA_BYTES_PER_SCALE")
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, _size: usize) {
        // SAFETY: the caller's contract: `ptr` is a live block of this TLSF.
        unsafe { self.tlsf.deallocate(ptr, ALIGN) };
    }
}

struct LleShared(MemoryPool);

impl FootprintAllocator for LleShared {
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        self.0.allocate(size).expect("lle_mempool allocate")
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, _size: usize) {
        // SAFETY: the caller's contract: `ptr` is a live block of this pool.
        unsafe { self.0.free(ptr) }.expect("lle_mempool free");
    }

    fn compact(&mut self) {
        self.0.compact().expect("lle_mempool compact");
    }
}

struct LleFast(MemoryPool);

impl FootprintAllocator for LleFast {
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        if size <= FAST_PATH_MAX_SIZE {
            self.0.allocate_fast(size).expect("lle_mempool allocate_fast")
        } else {
            self.0.allocate(size).expect("lle_mempool allocate")
        }
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize) {
        if size <= FAST_PATH_MAX_SIZE {
            // SAFETY: the caller's contract: `ptr` is a live block of this pool.
            unsafe { self.0.free_fast(ptr) }.expect("lle_mempool free_fast");
        } else {
            // SAFETY: as above.
            unsafe { self.0.free(ptr) }.expect("lle_mempool free");
        }
    }

    fn compact(&mut self) {
        self.0.compact().expect("lle_mempool compact");
    }
}

/// The workload's counts at one scale.
#[derive(Clone, Copy)]
struct Plan {
    small_blocks: usize,
    large_blocks: usize,
    churn_steps: usize,
}

impl Plan {
    fn at_scale(scale: f64) -> Plan {
        let scaled = |count: usize| ((count as f64 * scale).round() as usize).max(1);
        Plan {
            small_blocks: scaled(SMALL_BLOCKS),
            large_blocks: scaled(LARGE_BLOCKS),
            churn_steps: scaled(CHURN_STEPS),
        }
    }

    fn small_deaths(&self) -> usize {
        self.small_blocks * SMALL_DEATH_PERCENT / 100
    }

    /// The live count after phase 2's arrivals.
    fn live_blocks_before_die_off(&self) -> usize {
        self.small_blocks - self.small_deaths() + self.large_blocks
    }

    /// The most blocks ever live: at the end of phase 1 or of phase 2
    /// (the churn keeps the count).
    fn max_live_blocks(&self) -> usize {
        self.small_blocks.max(self.live_blocks_before_die_off())
    }

    fn die_off_deaths(&self) -> usize {
        self.live_blocks_before_die_off() * DIE_OFF_PERCENT / 100
    }

    fn total_operations(&self) -> usize {
        self.small_blocks + self.small_deaths() + self.large_blocks + self.die_off_deaths() + 2 * self.churn_steps
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    operations: u64,
    phase: usize,
    live_bytes: usize,
    rss_bytes: usize,
}

/// The process's resident bytes, read without touching the heap (the
/// allocator under test may be the heap).
fn resident_bytes() -> usize {
    let mut buffer = [0u8; 128];
    let read =
        File::open("/proc/self/statm").and_then(|mut file| file.read(&mut buffer)).expect("read /proc/self/statm");
    let text = std::str::from_utf8(&buffer[..read]).expect("statm is ASCII");
    // statm: size resident shared text lib data dt, in pages.
    let pages: usize =
        text.split_whitespace().nth(1).and_then(|field| field.parse().ok()).expect("statm's resident field");
    pages * page_size()
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).expect("a positive page size")
}

fn minor_faults() -> u64 {
    // SAFETY: `rusage` is plain data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(status, 0, "getrusage: {}", io::Error::last_os_error());
    usage.ru_minflt as u64
}

struct LiveBlock {
    ptr: NonNull<u8>,
    size: usize,
}

/// The byte a block is filled with: from its address and size, so a block
/// that another block overwrote, or that moved, fails its check.
fn fill_byte(block: &LiveBlock) -> u8 {
    ((block.ptr.as_ptr() as usize >> 4) ^ block.size) as u8
}

/// One child's run: the allocator, the live blocks, and the readings.
struct Workload {
    allocator: Box<dyn FootprintAllocator>,
    live: Vec<LiveBlock>,
    /// Scratch for [`pages_holding_live_blocks`](Self::pages_holding_live_blocks),
    /// allocated and touched before the baseline like `live`.
    pages: Vec<usize>,
    rng: SmallRng,
    baseline_rss: usize,
    /// Minor faults at the baseline.
    baseline_faults: u64,
    operations: u64,
    phase: usize,
    live_bytes: usize,
    peak_live: usize,
    peak_rss: usize,
    samples: Vec<Sample>,
}

impl Workload {
    /// Touches every page of the bookkeeping first, so that the baseline
    /// includes it, then takes the baseline, then creates the allocator.
    fn new(kind: AllocatorKind, plan: &Plan, scale: f64) -> Workload {
        let mut live = Vec::with_capacity(plan.max_live_blocks());
        live.resize_with(plan.max_live_blocks(), || LiveBlock { ptr: NonNull::dangling(), size: 0 });
        live.clear();
        // A live block spans at most this many pages.
        let pages_per_block = LARGE_SIZES.end().div_ceil(page_size()) + 1;
        let mut pages = vec![0usize; plan.max_live_blocks() * pages_per_block];
        pages.clear();
        // One reading per interval, plus one at the start, one at the end of
        // each phase and one after `compact()`.
        let readings = plan.total_operations() / SAMPLE_INTERVAL as usize + PHASES.len() + 2;
        let mut samples = Vec::with_capacity(readings);
        samples.resize(samples.capacity(), Sample::default());
        samples.clear();
        std::hint::black_box((&mut live, &mut pages, &mut samples));

        let baseline_rss = resident_bytes();
        let baseline_faults = minor_faults();
        let mut workload = Workload {
            allocator: kind.create(scale),
            live,
            pages,
            rng: SmallRng::seed_from_u64(SEED),
            baseline_rss,
            baseline_faults,
            operations: 0,
            phase: SMALL_PHASE,
            live_bytes: 0,
            peak_live: 0,
            peak_rss: 0,
            samples,
        };
        workload.sample();
        workload
    }

    fn allocate(&mut self, sizes: RangeInclusive<usize>) {
        let size = self.rng.gen_range(sizes);
        // Growing the list now would count its pages against the allocator.
        assert!(self.live.len() < self.live.capacity(), "the live list outgrew its baseline capacity");
        let block = LiveBlock { ptr: self.allocator.allocate(size), size };
        // SAFETY: the block is `size` bytes, just allocated and ours alone.
        unsafe { block.ptr.as_ptr().write_bytes(fill_byte(&block), size) };
        self.live.push(block);
        self.live_bytes += size;
        self.peak_live = self.peak_live.max(self.live_bytes);
        self.count_operation();
    }

    fn free_random(&mut self) {
        let index = self.rng.gen_range(0..self.live.len());
        let block = self.live.swap_remove(index);
        let expected = fill_byte(&block);
        // SAFETY: the block is live and `size` bytes long.
        let (first, last) = unsafe { (*block.ptr.as_ptr(), *block.ptr.as_ptr().add(block.size - 1)) };
        assert!(
            first == expected && last == expected,
            "block at {:p} of {} B lost its contents: {first:#x}..{last:#x}, expected {expected:#x}",
            block.ptr,
            block.size,
        );
        // SAFETY: the block came from this allocator with this size, and
        // leaving `live` makes this its only free.
        unsafe { self.allocator.free(block.ptr, block.size) };
        self.live_bytes -= block.size;
        self.count_operation();
    }

    fn count_operation(&mut self) {
        self.operations += 1;
        if self.operations % SAMPLE_INTERVAL == 0 {
            self.sample();
        }
    }

    fn sample(&mut self) -> Sample {
        let rss_bytes = resident_bytes().saturating_sub(self.baseline_rss);
        self.peak_rss = self.peak_rss.max(rss_bytes);
        let sample = Sample { operations: self.operations, phase: self.phase, live_bytes: self.live_bytes, rss_bytes };
        assert!(self.samples.len() < self.samples.capacity(), "the samples outgrew their baseline capacity");
        self.samples.push(sample);
        sample
    }

    /// The bytes of the pages that hold at least one byte of a live block:
    /// what an allocator that never moves a block could at best keep
    /// resident with its blocks where they are.
    fn pages_holding_live_blocks(&mut self) -> usize {
        let page = page_size();
        self.pages.clear();
        for block in &self.live {
            let first = block.ptr.as_ptr() as usize / page;
            let last = (block.ptr.as_ptr() as usize + block.size - 1) / page;
            assert!(
                self.pages.len() + (last - first + 1) <= self.pages.capacity(),
                "the page list outgrew its baseline capacity"
            );
            self.pages.extend(first..=last);
        }
        self.pages.sort_unstable();
        self.pages.dedup();
        self.pages.len() * page
    }

    /// Reads the end of the current phase and starts `next`.
    fn end_phase(&mut self, next: usize) -> Sample {
        let sample = self.sample();
        self.phase = next;
        sample
    }

    /// Phases 1 and 2 and the big die-off; returns the reading right after it.
    fn arrive_and_die_off(&mut self, plan: &Plan) -> Sample {
        for _ in 0..plan.small_blocks {
            self.allocate(SMALL_SIZES);
        }
        self.end_phase(SMALL_DIE_OFF_PHASE);
        for _ in 0..plan.small_deaths() {
            self.free_random();
        }
        self.end_phase(LARGE_PHASE);
        for _ in 0..plan.large_blocks {
            self.allocate(LARGE_SIZES);
        }
        debug_assert_eq!(self.live.len(), plan.live_blocks_before_die_off());
        self.end_phase(BIG_DIE_OFF_PHASE);
        for _ in 0..plan.die_off_deaths() {
            self.free_random();
        }
        self.end_phase(CHURN_PHASE)
    }

    fn churn(&mut self, plan: &Plan) -> Sample {
        for _ in 0..plan.churn_steps {
            self.free_random();
            self.allocate(CHURN_SIZES);
        }
        self.sample()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for block in self.live.drain(..) {
            // SAFETY: every block in `live` is live and came from this allocator.
            unsafe { self.allocator.free(block.ptr, block.size) };
        }
    }
}

/// What a child reports, in bytes but for `minor_faults` and `operations`.
/// `compacted_*` come from a compacting child, the rest from a full run.
#[derive(Default)]
struct Report {
    baseline_rss: u64,
    peak_rss: u64,
    peak_live: u64,
    end_rss: u64,
    end_live: u64,
    die_off_rss: u64,
    die_off_live: u64,
    /// The bytes of the pages that held a live block after the die-off.
    die_off_live_pages: u64,
    compacted_rss: u64,
    compacted_live: u64,
    minor_faults: u64,
    operations: u64,
}

impl Report {
    /// Every field by name, for one printer and one parser.
    fn fields(&mut self) -> [(&'static str, &mut u64); 12] {
        [
            ("baseline_rss", &mut self.baseline_rss),
            ("peak_rss", &mut self.peak_rss),
            ("peak_live", &mut self.peak_live),
            ("end_rss", &mut self.end_rss),
            ("end_live", &mut self.end_live),
            ("die_off_rss", &mut self.die_off_rss),
            ("die_off_live", &mut self.die_off_live),
            ("die_off_live_pages", &mut self.die_off_live_pages),
            ("compacted_rss", &mut self.compacted_rss),
            ("compacted_live", &mut self.compacted_live),
            ("minor_faults", &mut self.minor_faults),
            ("operations", &mut self.operations),
        ]
    }

    fn into_line(mut self) -> String {
        let mut line = REPORT_TAG.to_owned();
        for (key, value) in self.fields() {
            write!(line, " {key}={value}").expect("writing to a String");
        }
        line
    }

    fn parse(line: &str) -> Result<Report, String> {
        let mut report = Report::default();
        let fields = line.strip_prefix(REPORT_TAG).ok_or_else(|| format!("not a report: {line:?}"))?;
        for field in fields.split_whitespace() {
            let (key, value) = field.split_once('=').ok_or_else(|| format!("bad field {field:?}"))?;
            let slot = report
                .fields()
                .into_iter()
                .find(|(name, _)| *name == key)
                .map(|(_, slot)| slot)
                .ok_or_else(|| format!("unknown field {key:?}"))?;
            *slot = value.parse().map_err(|error| format!("field {key:?}: {error}"))?;
        }
        Ok(report)
    }
}

/// What a child process does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChildRun {
    /// The whole workload, with its curve written as CSV.
    Full,
    /// Up to the big die-off, then `compact()`.
    Compact,
}

fn run_child(kind: AllocatorKind, run: ChildRun, scale: f64) -> Report {
    let plan = Plan::at_scale(scale);
    let mut workload = Workload::new(kind, &plan, scale);
    let die_off = workload.arrive_and_die_off(&plan);
    let mut report = Report {
        baseline_rss: workload.baseline_rss as u64,
        die_off_rss: die_off.rss_bytes as u64,
        die_off_live: die_off.live_bytes as u64,
        die_off_live_pages: workload.pages_holding_live_blocks() as u64,
        ..Report::default()
    };
    match run {
        ChildRun::Compact => {
            workload.allocator.compact();
            let compacted = workload.sample();
            report.compacted_rss = compacted.rss_bytes as u64;
            report.compacted_live = compacted.live_bytes as u64;
        }
        ChildRun::Full => {
            let end = workload.churn(&plan);
            report.minor_faults = minor_faults() - workload.baseline_faults;
            report.peak_rss = workload.peak_rss as u64;
            report.peak_live = workload.peak_live as u64;
            report.end_rss = end.rss_bytes as u64;
            report.end_live = end.live_bytes as u64;
            report.operations = workload.operations;
            write_curve(&curve_path(kind), &workload.samples).expect("write the curve's CSV");
        }
    }
    report
}

/// `target/footprint/`, next to the workspace root or under
/// `CARGO_TARGET_DIR`; a relative `CARGO_TARGET_DIR` is taken from the
/// workspace root, where cargo is run (cargo runs a bench from its package
/// directory instead).
fn output_dir() -> PathBuf {
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ is inside the workspace");
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root.join("target"), |dir| workspace_root.join(dir));
    target.join("footprint")
}

fn curve_path(kind: AllocatorKind) -> PathBuf {
    output_dir().join(format!("{}.csv", kind.name()))
}

fn write_curve(path: &Path, samples: &[Sample]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "ops,phase,live_bytes,rss_bytes")?;
    for sample in samples {
        writeln!(out, "{},{},{},{}", sample.operations, PHASES[sample.phase], sample.live_bytes, sample.rss_bytes)?;
    }
    out.flush()
}

fn read_curve(path: &Path) -> Result<Vec<Sample>, String> {
    let text = fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let parse_line = |line: &str| -> Option<Sample> {
        let mut fields = line.split(',');
        let operations = fields.next()?.parse().ok()?;
        let phase_name = fields.next()?;
        let phase = PHASES.iter().position(|name| *name == phase_name)?;
        let live_bytes = fields.next()?.parse().ok()?;
        let rss_bytes = fields.next()?.parse().ok()?;
        Some(Sample { operations, phase, live_bytes, rss_bytes })
    };
    text.lines()
        .skip(1)
        .map(|line| parse_line(line).ok_or_else(|| format!("{}: bad line {line:?}", path.display())))
        .collect()
}

/// Runs this executable again for one allocator and returns its report.
fn spawn_child(kind: AllocatorKind, run: ChildRun, scale: f64) -> Result<Report, String> {
    let exe = env::current_exe().map_err(|error| format!("current_exe: {error}"))?;
    let mut command = Command::new(exe);
    command.args(["--child", kind.name(), "--scale", &scale.to_string()]);
    if run == ChildRun::Compact {
        command.arg("--compact");
    }
    let output = command.stderr(Stdio::inherit()).output().map_err(|error| format!("spawn: {error}"))?;
    if !output.status.success() {
        return Err(format!("{} child failed: {}", kind.name(), output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with(REPORT_TAG))
        .ok_or_else(|| format!("{} child printed no report", kind.name()))?;
    Report::parse(line)
}

struct Row {
    kind: AllocatorKind,
    full: Report,
    compacted: Option<Report>,
}

fn ratio_cell(rss: u64, live: u64) -> String {
    format!("{:.2} ({:.1} MiB)", rss as f64 / live as f64, rss as f64 / MIB)
}

fn print_table(rows: &[Row], scale: f64) {
    let reference = &rows[0].full;
    for row in rows {
        let same_workload = row.full.peak_live == reference.peak_live
            && row.full.end_live == reference.end_live
            && row.full.die_off_live == reference.die_off_live
            && row.full.operations == reference.operations
            && row.compacted.as_ref().is_none_or(|compacted| compacted.compacted_live == reference.die_off_live);
        assert!(same_workload, "{} ran a different workload than {}", row.kind.name(), rows[0].kind.name());
    }
    println!();
    println!(
        "Footprint at scale {scale}: {} operations; live bytes peak at {:.1} MiB, are {:.1} MiB after the big die-off \
         and {:.1} MiB at the end.",
        reference.operations,
        reference.peak_live as f64 / MIB,
        reference.die_off_live as f64 / MIB,
        reference.end_live as f64 / MIB,
    );
    let baselines: Vec<String> =
        rows.iter().map(|row| format!("{} {:.1} MiB", row.kind.name(), row.full.baseline_rss as f64 / MIB)).collect();
    println!(
        "RSS is each process's resident memory minus its resident memory just before the workload, with the \
         workload's bookkeeping already in it ({}).",
        baselines.join(", "),
    );
    println!("Each cell: RSS / live bytes (RSS).");
    println!();
    println!(
        "The floor after the die-off: the pages that still hold a byte of a live block, which no allocator that \
         keeps its blocks where they are can give back."
    );
    println!();
    println!("| allocator | peak RSS / peak live | end RSS / end live | after the big die-off | after the die-off and `compact()` | floor after the die-off | minor page faults |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let report = &row.full;
        let compacted = row.compacted.as_ref().map_or_else(
            || "n/a".to_owned(),
            |compacted| ratio_cell(compacted.compacted_rss, compacted.compacted_live),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.kind.name(),
            ratio_cell(report.peak_rss, report.peak_live),
            ratio_cell(report.end_rss, report.end_live),
            ratio_cell(report.die_off_rss, report.die_off_live),
            compacted,
            ratio_cell(report.die_off_live_pages, report.die_off_live),
            report.minor_faults,
        );
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `0..max` into
/// about `ticks` pieces, and the number of decimals its labels need.
fn tick_step(max: f64, ticks: f64) -> (f64, usize) {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let exponent = raw.log10().floor();
    let magnitude = 10f64.powf(exponent);
    let mantissa = [1.0, 2.0, 5.0, 10.0].into_iter().find(|m| m * magnitude >= raw).unwrap_or(10.0);
    let decimals = if exponent < 0.0 { (-exponent) as usize } else { 0 };
    (mantissa * magnitude, decimals)
}

/// At most about this many points per line, so the SVG stays small; the
/// last point of every phase is always kept.
const SVG_MAX_POINTS: usize = 1_500;

const SVG_COLORS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b"];

fn write_svg(path: &Path, curves: &[(&str, Vec<Sample>)], scale: f64) -> io::Result<()> {
    const WIDTH: f64 = 960.0;
    const HEIGHT: f64 = 540.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 150.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 55.0;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;

    let live = &curves[0].1;
    let max_operations = live.last().map_or(1, |sample| sample.operations).max(1) as f64;
    let max_bytes = curves
        .iter()
        .flat_map(|(_, samples)| samples.iter().map(|sample| sample.rss_bytes.max(sample.live_bytes)))
        .max()
        .unwrap_or(1);
    let (y_step, y_decimals) = tick_step(max_bytes as f64 / MIB, 6.0);
    let max_mib = ((max_bytes as f64 / MIB) / y_step).ceil().max(1.0) * y_step;
    let (x_step, x_decimals) = tick_step(max_operations / 1e6, 8.0);
    let x_of = |operations: u64| LEFT + operations as f64 / max_operations * plot_width;
    let y_of = |bytes: usize| TOP + plot_height - bytes as f64 / MIB / max_mib * plot_height;

    let mut svg = String::new();
    let mut line = |text: String| {
        svg.push_str(&text);
        svg.push('\n');
    };
    line(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    ));
    line(format!(r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#));
    line(format!(
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Resident memory over the footprint workload (scale {scale})</text>"#,
        LEFT + plot_width / 2.0
    ));

    // Grid and y ticks.
    let mut tick = 0.0;
    while tick <= max_mib + y_step / 2.0 {
        let y = TOP + plot_height - tick / max_mib * plot_height;
        line(format!(
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            LEFT + plot_width
        ));
        line(format!(r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{tick:.y_decimals$}</text>"#, LEFT - 6.0, y + 4.0));
        tick += y_step;
    }
    // X ticks, in millions of operations.
    let mut tick = 0.0;
    while tick <= max_operations / 1e6 + x_step / 1e3 {
        let x = LEFT + tick * 1e6 / max_operations * plot_width;
        let bottom = TOP + plot_height;
        line(format!(r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="#000"/>"##, bottom + 5.0));
        line(format!(r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{tick:.x_decimals$}</text>"#, bottom + 19.0));
        tick += x_step;
    }
    // Phase boundaries, from the live curve, with each phase named at its
    // start; names of phases too short for their own line of text are
    // pushed right, one line apart, rather than drawn over each other.
    const PHASE_LABEL_SPACING: f64 = 13.0;
    let mut phase_start = 0;
    let mut label_x = f64::MIN;
    for (index, sample) in live.iter().enumerate() {
        let next_phase = live.get(index + 1).map(|next| next.phase);
        if next_phase == Some(sample.phase) {
            continue;
        }
        label_x = (x_of(phase_start) + 12.0).max(label_x + PHASE_LABEL_SPACING);
        line(format!(
            r##"<text x="{label_x:.1}" y="{0:.1}" fill="#666" font-size="11" transform="rotate(-90 {label_x:.1} {0:.1})" text-anchor="end">{1}</text>"##,
            TOP + 4.0,
            PHASES[sample.phase],
        ));
        if next_phase.is_some() {
            let x = x_of(sample.operations);
            line(format!(
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="3,3"/>"##,
                TOP + plot_height
            ));
            phase_start = sample.operations;
        }
    }
    // Axes and their labels.
    line(format!(
        r##"<path d="M{LEFT},{TOP} V{:.1} H{:.1}" fill="none" stroke="#000"/>"##,
        TOP + plot_height,
        LEFT + plot_width
    ));
    line(format!(
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">operations, millions (an allocate or a free is one)</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 12.0
    ));
    line(format!(
        r#"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">MiB (RSS above the baseline; live bytes asked)</text>"#,
        TOP + plot_height / 2.0
    ));

    // The curves: every allocator's RSS, then the live bytes on top.
    let points = |samples: &[Sample], value: fn(&Sample) -> usize| -> String {
        let stride = samples.len().div_ceil(SVG_MAX_POINTS).max(1);
        let mut text = String::new();
        for (index, sample) in samples.iter().enumerate() {
            let phase_ends = samples.get(index + 1).is_none_or(|next| next.phase != sample.phase);
            if index % stride == 0 || phase_ends {
                write!(text, "{:.1},{:.1} ", x_of(sample.operations), y_of(value(sample)))
                    .expect("writing to a String");
            }
        }
        text
    };
    let mut legend = Vec::new();
    for ((name, samples), color) in curves.iter().zip(SVG_COLORS) {
        line(format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points(samples, |sample| sample.rss_bytes)
        ));
        legend.push((format!("{name} RSS"), color, ""));
    }
    line(format!(
        r##"<polyline fill="none" stroke="#000" stroke-width="1.5" stroke-dasharray="6,3" points="{}"/>"##,
        points(live, |sample| sample.live_bytes)
    ));
    legend.push(("live bytes".to_owned(), "#000", r#" stroke-dasharray="6,3""#));
    for (index, (label, color, dash)) in legend.iter().enumerate() {
        let x = LEFT + plot_width + 14.0;
        let y = TOP + 10.0 + index as f64 * 20.0;
        line(format!(
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
            x + 24.0
        ));
        line(format!(r#"<text x="{:.1}" y="{:.1}">{label}</text>"#, x + 30.0, y + 4.0));
    }
    line("</svg>".to_owned());
    fs::write(path, svg)
}

struct Options {
    scale: f64,
    child: Option<(AllocatorKind, ChildRun)>,
    allocators: Vec<AllocatorKind>,
}

const USAGE: &str = "usage: footprint [--quick | --scale F] [ALLOCATOR...]
allocators: glibc jemalloc mimalloc rlsf lle_shared lle_fast (default: all)";

fn parse_options() -> Result<Options, String> {
    let mut options = Options { scale: 1.0, child: None, allocators: Vec::new() };
    let mut child_kind = None;
    let mut compact = false;
    let mut args = env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // cargo passes `--bench` to every bench binary.
            "--bench" => {}
            "--quick" => options.scale = QUICK_SCALE,
            "--scale" => {
                let value = args.next().ok_or("--scale needs a factor")?;
                options.scale = value.parse().map_err(|_| format!("--scale {value:?}: not a number"))?;
                if !(options.scale.is_finite() && options.scale > 0.0) {
                    return Err(format!("--scale {value}: must be positive"));
                }
            }
            "--child" => {
                let name = args.next().ok_or("--child needs an allocator")?;
                child_kind =
                    Some(AllocatorKind::from_name(&name).ok_or_else(|| format!("unknown allocator {name:?}"))?);
            }
            "--compact" => compact = true,
            name if !name.starts_with('-') => {
                options
                    .allocators
                    .push(AllocatorKind::from_name(name).ok_or_else(|| format!("unknown allocator {name:?}"))?);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    options.child = child_kind.map(|kind| (kind, if compact { ChildRun::Compact } else { ChildRun::Full }));
    if compact && options.child.is_none_or(|(kind, _)| !kind.compacts()) {
        return Err("--compact goes with --child lle_shared or --child lle_fast".to_owned());
    }
    if options.allocators.is_empty() {
        options.allocators = AllocatorKind::ALL.to_vec();
    }
    Ok(options)
}

fn run_parent(options: &Options) -> Result<(), String> {
    let dir = output_dir();
    fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut rows = Vec::new();
    for &kind in &options.allocators {
        let started = Instant::now();
        eprintln!("footprint: {} ...", kind.name());
        let full = spawn_child(kind, ChildRun::Full, options.scale)?;
        let compacted = if kind.compacts() { Some(spawn_child(kind, ChildRun::Compact, options.scale)?) } else { None };
        eprintln!("footprint: {} done in {:.1} s", kind.name(), started.elapsed().as_secs_f64());
        rows.push(Row { kind, full, compacted });
    }
    print_table(&rows, options.scale);

    let curves = rows
        .iter()
        .map(|row| Ok((row.kind.name(), read_curve(&curve_path(row.kind))?)))
        .collect::<Result<Vec<_>, String>>()?;
    let svg_path = dir.join("rss.svg");
    write_svg(&svg_path, &curves, options.scale).map_err(|error| format!("{}: {error}", svg_path.display()))?;
    println!();
    println!("Curves: {}/<allocator>.csv; plot: {}", dir.display(), svg_path.display());
    Ok(())
}

fn main() {
    let options = parse_options().unwrap_or_else(|error| {
        eprintln!("footprint: {error}\n{USAGE}");
        process::exit(2);
    });
    match options.child {
        Some((kind, run)) => println!("{}", run_child(kind, run, options.scale).into_line()),
        None => {
            if let Err(error) = run_parent(&options) {
                eprintln!("footprint: {error}");
                process::exit(1);
            }
        }
    }
}
