//! Per-thread fast path (`MemoryPool::allocate_fast` / `MemoryPool::free_fast`)
//! against thread-caching allocators and a bare thread-local free list.
//!
//! Peers, in every group: `lle_mempool`; `mimalloc` and `jemalloc` (called
//! through `GlobalAlloc`, not installed as the global allocator); `system`
//! (`std::alloc::System`, glibc malloc on Linux); and `free_list`, a
//! `thread_local!` intrusive singly linked list per 64-byte size class that
//! refills from the system allocator when empty. `free_list` is the floor:
//! no allocator that does real bookkeeping can beat popping a thread-local
//! list, so `peer / free_list` says how close a peer gets to free.
//!
//! `pair` and `batch_1000` also run the pool with each of its debugging and
//! memory options on, to show what each costs against `lle_mempool` in the
//! same run: `lle_mempool_checked` (`PoolConfig::checked(true)`: guard
//! bytes, poison, double-free detection), `lle_mempool_track_callers`
//! (checked, and each block's allocation site recorded),
//! `lle_mempool_zero_on_free` and `lle_mempool_huge_pages`.
//!
//! Every workload writes into the blocks it allocates and reads the bytes
//! back before it frees them, as a program does with its events: one byte
//! per block, which also keeps an allocator from being measured on memory
//! it never touches.
//!
//! Groups (every time is a median; smaller is better):
//! - `pair`: allocate 64 B and free it again, in a hot loop. Time per pair.
//! - `batch_1000`: allocate 1 000 blocks of 64 B, then free all of them. Time
//!   per 1 000 pairs; criterion also prints it as pairs per second.
//! - `scaling`: the `pair` loop on 1 thread (`scaling/<peer>/1thread`) and on
//!   2 threads at once, each doing the same count
//!   (`scaling/<peer>/2threads`). Time is wall time per pair per thread, so
//!   equal times mean perfect scaling. Each peer's speedup,
//!   `2 * t(1 thread) / t(2 threads)`, is printed to stderr: 2.00 is perfect,
//!   1.00 means the second thread bought nothing. `free_list` shares
//!   nothing between threads, so its speedup is the ceiling the machine
//!   itself allows; read the other speedups against it, not against 2.00.
//! - `producer_consumer`: one thread allocates 64 B events and sends them in
//!   batches of 32 to a second thread, which frees them. Time per event.
//!   Every free is a cross-thread free. `free_list` has no way to hand
//!   blocks back to their owner thread, so here it degenerates into the
//!   system allocator plus a cache: treat it as a reference, not a floor.
//!   The pool's size after the run is printed to stderr, to show whether
//!   remote frees are recycled or leak into growth.
//! - `larson`: Larson-like server churn. 2 threads each own 1 000 slots of
//!   random size in `8..=1000` B, repeatedly free a random slot and allocate
//!   into it, and every 10 000 operations swap their slot arrays, so the next
//!   frees of those blocks happen on the thread that did not allocate them.
//!   Time is wall time per free+allocate on each of the two threads.
//!
//! Threads for the multi-threaded groups are spawned per sample, outside the
//! timed span: timing starts when a barrier releases them and stops when the
//! last one finishes its operations, before it frees leftovers and exits.

#[path = "pool_options.rs"]
mod pool_options;

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::ptr::{self, NonNull};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use lle_mempool::{MemoryPool, PoolConfig};
use mimalloc::MiMalloc;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tikv_jemallocator::Jemalloc;

const EVENT_SIZE: usize = 64;
const BATCH_LEN: usize = 1_000;

/// 8, not 16: Rust's `System` takes a slower `posix_memalign` path whenever
/// the alignment exceeds the size, which would tax it on the 8..16 B blocks
/// of the Larson mix.
const PEER_ALIGN: usize = 8;

/// Room for the Larson working set and in-flight events; the pool grows past
/// it on demand.
const POOL_INITIAL_SIZE: usize = 16 << 20;

const EVENTS_PER_MESSAGE: usize = 32;
/// Bounded so the producer cannot run arbitrarily far ahead of the consumer.
const MESSAGES_IN_FLIGHT: usize = 64;
/// Every message buffer ever in circulation; the recycling channel holds all
/// of them, so the consumer never blocks handing one back.
const MESSAGE_BUFFERS: usize = 2 * MESSAGES_IN_FLIGHT;

const LARSON_THREADS: usize = 2;
const LARSON_SLOTS: usize = 1_000;
const LARSON_MIN_BLOCK: usize = 8;
const LARSON_MAX_BLOCK: usize = 1_000;
const LARSON_OPS_BETWEEN_SWAPS: u64 = 10_000;
const LARSON_PLAN_LEN: usize = 1 << 16;
const SEED: u64 = 0x1a75_0f00;

/// Samples this short are dominated by barrier release skew (criterion's
/// warm-up starts at one iteration), so they stay out of the speedup figure.
const MIN_ITERS_FOR_SPEEDUP: u64 = 10_000;

/// An allocator shared by every thread of a workload. `free` gets the size
/// back because the `GlobalAlloc`-style peers need the layout.
trait Allocator: Sync {
    fn name(&self) -> &'static str;
    fn allocate(&self, size: usize) -> *mut u8;
    /// # Safety
    /// `ptr` came from `allocate(size)` on `self`, on any thread, and is live.
    unsafe fn free(&self, ptr: *mut u8, size: usize);
}

struct Lle(&'static MemoryPool, &'static str);

impl Allocator for Lle {
    fn name(&self) -> &'static str {
        self.1
    }

    #[inline]
    fn allocate(&self, size: usize) -> *mut u8 {
        self.0.allocate_fast(size).expect("allocate_fast").as_ptr()
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8, _size: usize) {
        // SAFETY: `allocate` never hands out null.
        let ptr = unsafe { NonNull::new_unchecked(ptr) };
        unsafe { self.0.free_fast(ptr) }.expect("free_fast");
    }
}

struct ViaGlobalAlloc<A> {
    allocator: A,
    name: &'static str,
}

fn peer_layout(size: usize) -> Layout {
    Layout::from_size_align(size, PEER_ALIGN).expect("block sizes form valid layouts")
}

impl<A: GlobalAlloc + Sync> Allocator for ViaGlobalAlloc<A> {
    fn name(&self) -> &'static str {
        self.name
    }

    #[inline]
    fn allocate(&self, size: usize) -> *mut u8 {
        let layout = peer_layout(size);
        // SAFETY: sizes are never zero.
        let ptr = unsafe { self.allocator.alloc(layout) };
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        ptr
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8, size: usize) {
        unsafe { self.allocator.dealloc(ptr, peer_layout(size)) };
    }
}

const FREE_LIST_CLASS_SIZE: usize = 64;
const FREE_LIST_CLASSES: usize = LARSON_MAX_BLOCK.div_ceil(FREE_LIST_CLASS_SIZE);
const FREE_LIST_REFILL: usize = 64;
/// Caps what a consuming thread hoards when it only ever frees (producer /
/// consumer); past it blocks go back to the system.
const FREE_LIST_MAX_LEN: usize = 4_096;

/// One intrusive list per size class: each free block's first word points at
/// the next free block.
struct FreeLists {
    heads: [Cell<*mut u8>; FREE_LIST_CLASSES],
    lens: [Cell<usize>; FREE_LIST_CLASSES],
}

fn free_list_layout(class: usize) -> Layout {
    Layout::from_size_align((class + 1) * FREE_LIST_CLASS_SIZE, PEER_ALIGN).expect("class sizes form valid layouts")
}

impl FreeLists {
    #[inline]
    fn pop(&self, class: usize) -> *mut u8 {
        let head = self.heads[class].get();
        if head.is_null() {
            return self.refill(class);
        }
        // SAFETY: `head` is a free block this list owns; its first word is
        // the link written by `push`.
        self.heads[class].set(unsafe { head.cast::<*mut u8>().read() });
        self.lens[class].set(self.lens[class].get() - 1);
        head
    }

    #[inline]
    fn push(&self, class: usize, block: *mut u8) {
        let len = self.lens[class].get();
        if len >= FREE_LIST_MAX_LEN {
            // SAFETY: every block of `class` comes from `System` with this layout.
            unsafe { System.dealloc(block, free_list_layout(class)) };
            return;
        }
        // SAFETY: the caller gave up `block`, which holds at least one pointer.
        unsafe { block.cast::<*mut u8>().write(self.heads[class].get()) };
        self.heads[class].set(block);
        self.lens[class].set(len + 1);
    }

    #[cold]
    fn refill(&self, class: usize) -> *mut u8 {
        let layout = free_list_layout(class);
        for _ in 0..FREE_LIST_REFILL {
            // SAFETY: the layout is non-zero.
            let block = unsafe { System.alloc(layout) };
            if block.is_null() {
                handle_alloc_error(layout);
            }
            self.push(class, block);
        }
        self.pop(class)
    }
}

impl Drop for FreeLists {
    fn drop(&mut self) {
        for class in 0..FREE_LIST_CLASSES {
            let mut block = self.heads[class].get();
            while !block.is_null() {
                // SAFETY: as in `pop`; each block is released once.
                let next = unsafe { block.cast::<*mut u8>().read() };
                unsafe { System.dealloc(block, free_list_layout(class)) };
                block = next;
            }
        }
    }
}

thread_local! {
    static FREE_LISTS: FreeLists = const {
        FreeLists {
            heads: [const { Cell::new(ptr::null_mut()) }; FREE_LIST_CLASSES],
            lens: [const { Cell::new(0) }; FREE_LIST_CLASSES],
        }
    };
}

struct ThreadLocalFreeList;

impl ThreadLocalFreeList {
    #[inline]
    fn class_of(size: usize) -> usize {
        (size - 1) / FREE_LIST_CLASS_SIZE
    }
}

impl Allocator for ThreadLocalFreeList {
    fn name(&self) -> &'static str {
        "free_list"
    }

    #[inline]
    fn allocate(&self, size: usize) -> *mut u8 {
        FREE_LISTS.with(|lists| lists.pop(Self::class_of(size)))
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8, size: usize) {
        FREE_LISTS.with(|lists| lists.push(Self::class_of(size), ptr));
    }
}

/// Expands `$body` once per peer with `$peer` bound to a different
/// allocator type, so each peer's loop is monomorphized rather than
/// dispatched through a vtable.
macro_rules! for_each_peer {
    ($pool:expr, |$peer:ident| $body:expr) => {{
        {
            let $peer = &Lle($pool, "lle_mempool");
            $body;
        }
        {
            let $peer = &ViaGlobalAlloc { allocator: MiMalloc, name: "mimalloc" };
            $body;
        }
        {
            let $peer = &ViaGlobalAlloc { allocator: Jemalloc, name: "jemalloc" };
            $body;
        }
        {
            let $peer = &ViaGlobalAlloc { allocator: System, name: "system" };
            $body;
        }
        {
            let $peer = &ThreadLocalFreeList;
            $body;
        }
    }};
}

/// Leaked so every thread, including criterion's, can use it for the rest of
/// the process; a separate pool per group keeps the size reports apart.
fn leaked_pool() -> &'static MemoryPool {
    Box::leak(Box::new(MemoryPool::new(POOL_INITIAL_SIZE).expect("create pool")))
}

/// Pools with one option each on, run in `pair` and `batch_1000` beside the
/// default pool to show what the option costs. Made once and shared by both
/// groups: a thread keeps caches for at most eight pools, and criterion's
/// thread runs every group.
fn leaked_option_pools() -> &'static [Lle] {
    static POOLS: OnceLock<Vec<Lle>> = OnceLock::new();
    POOLS.get_or_init(make_option_pools)
}

fn make_option_pools() -> Vec<Lle> {
    pool_options::option_configs(|| PoolConfig::new(POOL_INITIAL_SIZE))
        .into_iter()
        .map(|(name, config)| {
            let pool = MemoryPool::with_config(config).expect("create a pool with an option on");
            Lle(Box::leak(Box::new(pool)), name)
        })
        .collect()
}

/// Writes `tag` into the block's first byte, as a program fills its event.
#[inline]
fn stamp(ptr: *mut u8, tag: u8) {
    // SAFETY: every allocator here hands out blocks of at least one byte.
    unsafe { ptr.write_volatile(tag) };
}

/// Reads the byte `stamp` wrote, as a program reads its event, and checks it.
#[inline]
fn check_stamp(ptr: *mut u8, tag: u8) {
    // SAFETY: as for `stamp`; the block is still live.
    let found = unsafe { ptr.read_volatile() };
    assert_eq!(found, tag, "block {ptr:p} lost its contents");
}

#[inline]
fn allocate_free_pair<A: Allocator>(allocator: &A) {
    let ptr = allocator.allocate(black_box(EVENT_SIZE));
    stamp(ptr, 0x5A);
    check_stamp(ptr, 0x5A);
    // SAFETY: `ptr` was just allocated with this size.
    unsafe { allocator.free(black_box(ptr), EVENT_SIZE) };
}

/// Wall time from the moment the barrier releases the first thread until the
/// last one reports done.
fn span_of(spans: impl IntoIterator<Item = (Instant, Instant)>) -> Duration {
    let (start, end) = spans
        .into_iter()
        .reduce(|(start_a, end_a), (start_b, end_b)| (start_a.min(start_b), end_a.max(end_b)))
        .expect("at least one thread");
    end - start
}

fn bench_pair<A: Allocator>(group: &mut BenchmarkGroup<'_, WallTime>, allocator: &A) {
    group.bench_function(allocator.name(), |bencher| bencher.iter(|| allocate_free_pair(allocator)));
}

fn bench_batch<A: Allocator>(group: &mut BenchmarkGroup<'_, WallTime>, allocator: &A) {
    let mut blocks: Vec<*mut u8> = Vec::with_capacity(BATCH_LEN);
    group.bench_function(allocator.name(), |bencher| {
        bencher.iter(|| {
            for index in 0..BATCH_LEN {
                let ptr = allocator.allocate(black_box(EVENT_SIZE));
                stamp(ptr, index as u8);
                blocks.push(ptr);
            }
            for (index, ptr) in black_box(&mut blocks).drain(..).enumerate() {
                check_stamp(ptr, index as u8);
                // SAFETY: each block was allocated above with this size.
                unsafe { allocator.free(ptr, EVENT_SIZE) };
            }
        })
    });
}

fn run_pairs_on_threads<A: Allocator>(allocator: &A, threads: usize, pairs_per_thread: u64) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..pairs_per_thread {
                        allocate_free_pair(allocator);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("worker panicked")).collect()
    });
    span_of(spans)
}

fn median(mut samples: Vec<f64>) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    Some(samples[samples.len() / 2])
}

/// Returns this run's median nanoseconds per pair per thread, if it ran.
fn bench_scaling_at<A: Allocator>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    allocator: &A,
    threads: usize,
) -> Option<f64> {
    let label = if threads == 1 { "1thread".to_owned() } else { format!("{threads}threads") };
    let mut nanos_per_pair = Vec::new();
    group.bench_function(BenchmarkId::new(allocator.name(), label), |bencher| {
        bencher.iter_custom(|pairs| {
            let elapsed = run_pairs_on_threads(allocator, threads, pairs);
            if pairs >= MIN_ITERS_FOR_SPEEDUP {
                nanos_per_pair.push(elapsed.as_nanos() as f64 / pairs as f64);
            }
            elapsed
        })
    });
    median(nanos_per_pair)
}

fn bench_scaling<A: Allocator>(group: &mut BenchmarkGroup<'_, WallTime>, allocator: &A) {
    let one = bench_scaling_at(group, allocator, 1);
    let two = bench_scaling_at(group, allocator, 2);
    if let (Some(one), Some(two)) = (one, two) {
        eprintln!(
            "scaling/{}: {one:.2} ns/pair on 1 thread, {two:.2} ns/pair/thread on 2 threads, speedup {:.2} (2.00 = perfect)",
            allocator.name(),
            2.0 * one / two,
        );
    }
}

fn run_producer_consumer<A: Allocator>(allocator: &A, events: u64) -> Duration {
    let (message_tx, message_rx) = sync_channel::<Vec<usize>>(MESSAGES_IN_FLIGHT);
    let (recycled_tx, recycled_rx) = sync_channel::<Vec<usize>>(MESSAGE_BUFFERS);
    for _ in 0..MESSAGE_BUFFERS {
        recycled_tx.send(Vec::with_capacity(EVENTS_PER_MESSAGE)).expect("recycling channel has room for every buffer");
    }
    let barrier = Barrier::new(2);
    let barrier = &barrier;
    let (start, end) = thread::scope(|scope| {
        let producer = scope.spawn(move || {
            barrier.wait();
            let start = Instant::now();
            let mut remaining = events;
            while remaining > 0 {
                let mut message = recycled_rx.recv().expect("consumer alive");
                let count = remaining.min(EVENTS_PER_MESSAGE as u64);
                for index in 0..count {
                    let event = allocator.allocate(EVENT_SIZE);
                    stamp(event, index as u8);
                    message.push(event as usize);
                }
                remaining -= count;
                message_tx.send(message).expect("consumer alive");
            }
            start
        });
        let consumer = scope.spawn(move || {
            barrier.wait();
            for mut message in message_rx {
                for (index, event) in message.drain(..).enumerate() {
                    check_stamp(event as *mut u8, index as u8);
                    // SAFETY: the producer allocated it with this size and
                    // gave up ownership by sending it.
                    unsafe { allocator.free(event as *mut u8, EVENT_SIZE) };
                }
                // Fails only once the producer is done and needs no buffers.
                let _ = recycled_tx.send(message);
            }
            Instant::now()
        });
        (producer.join().expect("producer panicked"), consumer.join().expect("consumer panicked"))
    });
    end - start
}

fn bench_producer_consumer<A: Allocator>(group: &mut BenchmarkGroup<'_, WallTime>, allocator: &A) {
    group.bench_function(allocator.name(), |bencher| {
        bencher.iter_custom(|events| run_producer_consumer(allocator, events))
    });
}

#[derive(Clone, Copy)]
struct LarsonOp {
    slot: u16,
    size: u16,
}

/// The seeded sizes and victims both threads replay, from different offsets.
struct LarsonPlan {
    ops: Vec<LarsonOp>,
}

impl LarsonPlan {
    fn new() -> LarsonPlan {
        let mut rng = SmallRng::seed_from_u64(SEED);
        let ops = (0..LARSON_PLAN_LEN)
            .map(|_| LarsonOp {
                slot: rng.gen_range(0..LARSON_SLOTS) as u16,
                size: rng.gen_range(LARSON_MIN_BLOCK..=LARSON_MAX_BLOCK) as u16,
            })
            .collect();
        LarsonPlan { ops }
    }
}

/// A live block as `(address, size)`; plain integers so slot arrays can move
/// between threads.
type Slot = (usize, usize);

struct LarsonThread<'a, A> {
    allocator: &'a A,
    plan: &'a LarsonPlan,
    barrier: &'a Barrier,
    to_peer: SyncSender<Vec<Slot>>,
    from_peer: Receiver<Vec<Slot>>,
    first_op: usize,
}

impl<A: Allocator> LarsonThread<'_, A> {
    fn run(self, ops: u64) -> (Instant, Instant) {
        let LarsonThread { allocator, plan, barrier, to_peer, from_peer, first_op } = self;
        let mut slots: Vec<Slot> = plan.ops[first_op..first_op + LARSON_SLOTS]
            .iter()
            .map(|op| {
                let size = op.size as usize;
                (allocator.allocate(size) as usize, size)
            })
            .collect();
        let mut next_op = first_op;

        barrier.wait();
        let start = Instant::now();
        for done in 1..=ops {
            let op = plan.ops[next_op];
            next_op = (next_op + 1) % LARSON_PLAN_LEN;
            let slot = &mut slots[op.slot as usize];
            // SAFETY: every slot holds a live block, allocated with its size
            // by this thread or by the peer that handed the array over.
            unsafe { allocator.free(slot.0 as *mut u8, slot.1) };
            let size = op.size as usize;
            let ptr = allocator.allocate(size);
            // SAFETY: `ptr` is a fresh block of at least 8 bytes.
            unsafe { ptr.write_volatile(0xA5) };
            *slot = (ptr as usize, size);
            if done % LARSON_OPS_BETWEEN_SWAPS == 0 {
                to_peer.send(slots).expect("peer alive");
                slots = from_peer.recv().expect("peer alive");
            }
        }
        let end = Instant::now();

        for (ptr, size) in slots {
            // SAFETY: as above; each block is freed once.
            unsafe { allocator.free(ptr as *mut u8, size) };
        }
        (start, end)
    }
}

fn run_larson<A: Allocator>(allocator: &A, plan: &LarsonPlan, ops_per_thread: u64) -> Duration {
    let barrier = Barrier::new(LARSON_THREADS);
    // Capacity 1: a thread can hand its array over before its peer has
    // reached the swap, and never gets a second one ahead.
    let (to_second, from_first) = sync_channel(1);
    let (to_first, from_second) = sync_channel(1);
    let first =
        LarsonThread { allocator, plan, barrier: &barrier, to_peer: to_second, from_peer: from_second, first_op: 0 };
    let second = LarsonThread {
        allocator,
        plan,
        barrier: &barrier,
        to_peer: to_first,
        from_peer: from_first,
        first_op: LARSON_PLAN_LEN / 2,
    };
    let spans = thread::scope(|scope| {
        let first = scope.spawn(move || first.run(ops_per_thread));
        let second = scope.spawn(move || second.run(ops_per_thread));
        [first.join().expect("larson thread panicked"), second.join().expect("larson thread panicked")]
    });
    span_of(spans)
}

fn bench_larson<A: Allocator>(group: &mut BenchmarkGroup<'_, WallTime>, allocator: &A, plan: &LarsonPlan) {
    group.bench_function(allocator.name(), |bencher| bencher.iter_custom(|ops| run_larson(allocator, plan, ops)));
}

fn pair(c: &mut Criterion) {
    let pool = leaked_pool();
    let mut group = c.benchmark_group("pair");
    for_each_peer!(pool, |peer| bench_pair(&mut group, peer));
    for pool in leaked_option_pools() {
        bench_pair(&mut group, pool);
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let pool = leaked_pool();
    let mut group = c.benchmark_group("batch_1000");
    group.throughput(Throughput::Elements(BATCH_LEN as u64));
    for_each_peer!(pool, |peer| bench_batch(&mut group, peer));
    for pool in leaked_option_pools() {
        bench_batch(&mut group, pool);
    }
    group.finish();
}

fn scaling(c: &mut Criterion) {
    let pool = leaked_pool();
    let mut group = c.benchmark_group("scaling");
    for_each_peer!(pool, |peer| bench_scaling(&mut group, peer));
    group.finish();
}

fn producer_consumer(c: &mut Criterion) {
    let pool = leaked_pool();
    let mut group = c.benchmark_group("producer_consumer");
    for_each_peer!(pool, |peer| bench_producer_consumer(&mut group, peer));
    group.finish();
    let stats = pool.stats();
    eprintln!("producer_consumer: lle_mempool size after the run {} B, used {} B", stats.size, stats.used);
}

fn larson(c: &mut Criterion) {
    let pool = leaked_pool();
    let plan = LarsonPlan::new();
    let mut group = c.benchmark_group("larson");
    for_each_peer!(pool, |peer| bench_larson(&mut group, peer, &plan));
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole suite has to finish in minutes on two noisy cores.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pair, batch, scaling, producer_consumer, larson
}
criterion_main!(benches);
