//! Shared first-fit pool (`MemoryPool::allocate` / `MemoryPool::free`) against
//! general-purpose and arena allocators under steady-state churn.
//!
//! Workload: `N` live blocks of random size in `16..=4096` bytes (`N` in
//! 1 000, 10 000, 100 000). Each measured iteration frees a random live block
//! and allocates a block of a new random size in its slot, then writes the
//! block's first byte. Filling the `N` blocks happens before timing; the live
//! set persists across samples, so every sample sees the same steady state.
//! All peers replay the identical seeded sequence of victims and sizes.
//!
//! Peers, in group `shared_pool`, with ids `shared_pool/<peer>/<N>`:
//! `lle_mempool`; the pool with one option on, to show what it costs
//! (`lle_mempool_checked`, `lle_mempool_track_callers`,
//! `lle_mempool_zero_on_free`, `lle_mempool_huge_pages`); `system` (`std::alloc::System`), `mimalloc` (called through
//! `GlobalAlloc`, not installed as the global allocator), `rlsf` (TLSF over one
//! arena) and, at `N = 1000` only, `linked_list_allocator` (its first fit is
//! linear in the free-list length, so larger `N` only measures that).
//!
//! Reading it: the reported time is one free + one allocate. Divide a peer's
//! median by `lle_mempool`'s at the same `N`: above 1.0 the pool is faster.
//! How the ratio moves as `N` grows shows how each allocator's search cost
//! scales with the number of live (and hence free) blocks.
//!
//! The bench also prints, to stderr, the pool's footprint after churning at
//! each `N`: `stats().size` (bytes mapped) and `stats().used` (bytes handed
//! out, headers and rounding included) divided by the bytes actually
//! requested by the live blocks. 1.0 is no overhead; `size` ratio minus
//! `used` ratio is free space the pool holds.

#[path = "pool_options.rs"]
mod pool_options;

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use linked_list_allocator::Heap;
use lle_mempool::{MemoryPool, PoolConfig};
use mimalloc::MiMalloc;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rlsf::Tlsf;

const MIN_BLOCK: usize = 16;
const MAX_BLOCK: usize = 4096;
const LIVE_COUNTS: [usize; 3] = [1_000, 10_000, 100_000];
const LINKED_LIST_MAX_LIVE: usize = 1_000;

/// The pool's default alignment; asking the peers for the same keeps the
/// comparison about equal work.
const ALIGN: usize = 16;

/// Small on purpose: the pool grows on demand, so the footprint report shows
/// what its growth policy costs rather than a hand-picked size.
const POOL_INITIAL_SIZE: usize = 4 << 20;

/// Larger than the biggest `N`, so every live block gets churned before the
/// sequence repeats.
const OP_TABLE_LEN: usize = 1 << 18;

/// Per-block overhead an arena must budget for (TLSF headers, rounding up to
/// its 32-byte granularity); twice the worst-case live bytes leaves room for
/// fragmentation under random sizes.
const ARENA_BLOCK_BUDGET: usize = MAX_BLOCK + 64;
const ARENA_SLACK_FACTOR: usize = 2;

const SEED: u64 = 0x5eed_11e0;

/// A single-threaded allocator under test. `free` gets the size back because
/// the `GlobalAlloc`-style peers need the layout.
trait ChurnAllocator {
    fn allocate(&mut self, size: usize) -> NonNull<u8>;
    /// # Safety
    /// `ptr` came from `allocate(size)` on `self` and is still live.
    unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize);
}

fn layout_for(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("block sizes and ALIGN form valid layouts")
}

struct LlePool(MemoryPool);

impl ChurnAllocator for LlePool {
    #[inline]
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        self.0.allocate(size).expect("lle_mempool allocate")
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, _size: usize) {
        unsafe { self.0.free(ptr) }.expect("lle_mempool free");
    }
}

struct ViaGlobalAlloc<A>(A);

impl<A: GlobalAlloc> ChurnAllocator for ViaGlobalAlloc<A> {
    #[inline]
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        let layout = layout_for(size);
        // SAFETY: sizes are never zero.
        let ptr = unsafe { self.0.alloc(layout) };
        NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout))
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize) {
        unsafe { self.0.dealloc(ptr.as_ptr(), layout_for(size)) };
    }
}

/// Backing memory for the arena allocators, taken from the system so its
/// untouched pages stay virtual.
struct Arena {
    base: NonNull<u8>,
    layout: Layout,
}

impl Arena {
    fn for_live_blocks(live_count: usize) -> Arena {
        let bytes = live_count * ARENA_BLOCK_BUDGET * ARENA_SLACK_FACTOR;
        let layout = Layout::from_size_align(bytes, 4096).expect("arena layout");
        // SAFETY: the layout is non-zero.
        let base = NonNull::new(unsafe { System.alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout));
        Arena { base, layout }
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.layout.size())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `for_live_blocks` with this layout.
        unsafe { System.dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// Same bitmap and list parameters as `rlsf::GlobalTlsf`.
type TlsfCore = Tlsf<'static, usize, usize, { usize::BITS as usize }, { usize::BITS as usize }>;

struct TlsfArena {
    tlsf: TlsfCore,
    // Declared after `tlsf` so the memory it points into outlives it.
    _arena: Arena,
}

impl TlsfArena {
    fn for_live_blocks(live_count: usize) -> TlsfArena {
        let arena = Arena::for_live_blocks(live_count);
        let mut tlsf = TlsfCore::new();
        // SAFETY: the arena is owned by the returned value and outlives `tlsf`.
        unsafe { tlsf.insert_free_block_ptr(arena.as_slice_ptr()) }.expect("arena fits in TLSF");
        TlsfArena { tlsf, _arena: arena }
    }
}

impl ChurnAllocator for TlsfArena {
    #[inline]
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        self.tlsf.allocate(layout_for(size)).expect("rlsf arena exhausted; raise ARENA_SLACK_FACTOR")
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, _size: usize) {
        unsafe { self.tlsf.deallocate(ptr, ALIGN) };
    }
}

struct LinkedListArena {
    heap: Heap,
    _arena: Arena,
}

impl LinkedListArena {
    fn for_live_blocks(live_count: usize) -> LinkedListArena {
        let arena = Arena::for_live_blocks(live_count);
        // SAFETY: the arena is owned by the returned value, outlives `heap`
        // and is used by nothing else.
        let heap = unsafe { Heap::new(arena.base.as_ptr(), arena.layout.size()) };
        LinkedListArena { heap, _arena: arena }
    }
}

impl ChurnAllocator for LinkedListArena {
    #[inline]
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        self.heap
            .allocate_first_fit(layout_for(size))
            .expect("linked_list_allocator arena exhausted; raise ARENA_SLACK_FACTOR")
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize) {
        unsafe { self.heap.deallocate(ptr, layout_for(size)) };
    }
}

#[derive(Clone, Copy)]
struct ChurnOp {
    victim: u32,
    size: u32,
}

/// The seeded sequence every peer replays at one live count.
struct ChurnPlan {
    initial_sizes: Vec<usize>,
    ops: Vec<ChurnOp>,
}

impl ChurnPlan {
    fn new(live_count: usize) -> ChurnPlan {
        let mut rng = SmallRng::seed_from_u64(SEED ^ live_count as u64);
        let initial_sizes = (0..live_count).map(|_| rng.gen_range(MIN_BLOCK..=MAX_BLOCK)).collect();
        let ops = (0..OP_TABLE_LEN)
            .map(|_| ChurnOp {
                victim: rng.gen_range(0..live_count) as u32,
                size: rng.gen_range(MIN_BLOCK..=MAX_BLOCK) as u32,
            })
            .collect();
        ChurnPlan { initial_sizes, ops }
    }
}

struct LiveBlock {
    ptr: NonNull<u8>,
    size: usize,
}

/// Writing the first byte makes every peer pay for faulting in fresh memory,
/// as a real caller would.
#[inline]
fn touch(ptr: NonNull<u8>) {
    // SAFETY: `ptr` is a live block of at least MIN_BLOCK bytes.
    unsafe { ptr.as_ptr().write_volatile(0xA5) };
}

struct Churn<'plan, A: ChurnAllocator> {
    allocator: A,
    live: Vec<LiveBlock>,
    plan: &'plan ChurnPlan,
    next_op: usize,
}

impl<'plan, A: ChurnAllocator> Churn<'plan, A> {
    fn fill(mut allocator: A, plan: &'plan ChurnPlan) -> Self {
        let live = plan
            .initial_sizes
            .iter()
            .map(|&size| {
                let ptr = allocator.allocate(size);
                touch(ptr);
                LiveBlock { ptr, size }
            })
            .collect();
        Churn { allocator, live, plan, next_op: 0 }
    }

    fn run(&mut self, steps: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..steps {
            let op = self.plan.ops[self.next_op];
            self.next_op = (self.next_op + 1) % OP_TABLE_LEN;
            let block = &mut self.live[op.victim as usize];
            // SAFETY: every slot holds a live block from `self.allocator`.
            unsafe { self.allocator.free(block.ptr, block.size) };
            let size = op.size as usize;
            let ptr = self.allocator.allocate(size);
            touch(ptr);
            *block = LiveBlock { ptr, size };
        }
        start.elapsed()
    }

    fn live_requested_bytes(&self) -> usize {
        self.live.iter().map(|block| block.size).sum()
    }
}

impl<A: ChurnAllocator> Drop for Churn<'_, A> {
    fn drop(&mut self) {
        for block in self.live.drain(..) {
            // SAFETY: every slot holds a live block from `self.allocator`.
            unsafe { self.allocator.free(block.ptr, block.size) };
        }
    }
}

/// Runs one peer. The live set is built lazily on the first call, so a
/// filtered-out peer costs nothing, and is kept across criterion's samples so
/// the fill stays out of every measurement. Returns the final state for any
/// after-the-fact reporting.
fn bench_peer<'plan, A: ChurnAllocator>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    peer: &str,
    plan: &'plan ChurnPlan,
    make_allocator: impl Fn() -> A,
) -> Option<Churn<'plan, A>> {
    let live_count = plan.initial_sizes.len();
    let mut state: Option<Churn<'plan, A>> = None;
    group.bench_function(BenchmarkId::new(peer, live_count), |bencher| {
        let churn = state.get_or_insert_with(|| Churn::fill(make_allocator(), plan));
        bencher.iter_custom(|steps| churn.run(steps));
    });
    state
}

fn report_pool_footprint(churn: &Churn<'_, LlePool>) {
    let stats = churn.allocator.0.stats();
    let requested = churn.live_requested_bytes() as f64;
    eprintln!(
        "lle_mempool footprint, {} live blocks: requested {} B, stats().size {} B ({:.3}x), stats().used {} B ({:.3}x)",
        churn.live.len(),
        churn.live_requested_bytes(),
        stats.size,
        stats.size as f64 / requested,
        stats.used,
        stats.used as f64 / requested,
    );
}

/// The pool with one option each on, run beside the default pool to show
/// what the option costs.
fn option_configs() -> [(&'static str, PoolConfig); 4] {
    pool_options::option_configs(|| PoolConfig::new(POOL_INITIAL_SIZE))
}

fn shared_pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("shared_pool");
    for live_count in LIVE_COUNTS {
        let plan = ChurnPlan::new(live_count);

        let lle = bench_peer(&mut group, "lle_mempool", &plan, || {
            LlePool(MemoryPool::new(POOL_INITIAL_SIZE).expect("create pool"))
        });
        if let Some(churn) = &lle {
            report_pool_footprint(churn);
        }
        drop(lle);
        for (name, config) in option_configs() {
            drop(bench_peer(&mut group, name, &plan, || {
                LlePool(MemoryPool::with_config(config.clone()).expect("create a pool with an option on"))
            }));
        }

        drop(bench_peer(&mut group, "system", &plan, || ViaGlobalAlloc(System)));
        drop(bench_peer(&mut group, "mimalloc", &plan, || ViaGlobalAlloc(MiMalloc)));
        drop(bench_peer(&mut group, "rlsf", &plan, || TlsfArena::for_live_blocks(live_count)));
        if live_count <= LINKED_LIST_MAX_LIVE {
            drop(bench_peer(&mut group, "linked_list_allocator", &plan, || {
                LinkedListArena::for_live_blocks(live_count)
            }));
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole suite has to finish in minutes on two noisy cores.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = shared_pool
}
criterion_main!(benches);
