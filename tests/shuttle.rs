//! Randomised schedules over the whole public API, under shuttle.
//!
//! loom proves that no interleaving of a few small shapes breaks; these tests
//! say that many interleavings of many large shapes did not break
//! either. Under `--cfg lle_mempool_shuttle` the crate's `sync` facade
//! hands out shuttle's atomics, locks and thread-locals, so every atomic
//! access and lock inside the pool is a point where shuttle may switch
//! threads; the OS layer is heap memory and slabs are 4 KiB, so the pool
//! grows, fills slabs, shrinks and unmaps regions within a few hundred
//! operations.
//!
//! Each test runs one workload under both of shuttle's schedulers:
//! `check_random` (uniformly random switches) and `check_pct` (probabilistic
//! concurrency testing, which finds bugs needing a few badly placed switches
//! with known probability). Shuttle treats every atomic as `SeqCst`, so it
//! finds logic races (lost blocks, double hand-outs, counters out of step,
//! listeners called after removal), not weak-memory reorderings: those are
//! the loom models' job.
//!
//! Every block written is filled with a pattern unique to it and verified
//! before it is freed, so two threads handed overlapping memory, or a block
//! reused while still live, fail the test by data, not only by error codes.
//!
//! Run: `RUSTFLAGS="--cfg lle_mempool_shuttle" CARGO_TARGET_DIR=target-shuttle cargo test --test shuttle`.
//! `LLE_MEMPOOL_SHUTTLE_SCHEDULES` sets the schedules per test (default
//! 1000) and `LLE_MEMPOOL_SHUTTLE_OPS` the operations per thread (default
//! 250). A failing schedule is printed by shuttle and can be replayed with
//! `shuttle::replay`.

#![cfg(lle_mempool_shuttle)]

use lle_mempool::{ListenerId, MemoryPool, PoolConfig, PoolError, PoolStats, ResizeEvent, ResizeReason};
use shuttle::rand::{thread_rng, Rng};
use shuttle::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use shuttle::sync::mpsc::{channel, Receiver, Sender};
use shuttle::thread;
use std::ptr::NonNull;
use std::sync::Arc;

/// Threads running the workload in every schedule.
const THREADS: usize = 4;
/// The model's page size (the OS layer's stand-in): every size is a multiple.
const PAGE: usize = 4096;
/// The largest block the fast path serves from slabs.
const MAX_FAST_SIZE: usize = 1024;
/// Sizes asked of the fast path: a handful of size classes, so that threads
/// share classes (and so slabs) and cross-thread frees meet the owner's own
/// allocations on the same slab, up to the largest class.
const FAST_SIZES: [usize; 4] = [1, 48, 256, MAX_FAST_SIZE];
/// Blocks one thread holds at most.
const LIVE_BLOCKS_PER_THREAD: usize = 12;
/// The pool's cap: growth past it is refused with `ExceedsMaxSize`, which
/// the workload accepts, so the refusal path is exercised too and the pool
/// (and `check`'s walk over it) stays small.
const MAX_POOL_SIZE: usize = 24 * PAGE;
/// Where `check_pct` places its priority change points: bugs needing up to
/// this many badly timed switches are found with known probability.
const PCT_DEPTH: usize = 3;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn schedules() -> usize {
    env_or("LLE_MEMPOOL_SHUTTLE_SCHEDULES", 1000)
}

fn operations_per_thread() -> usize {
    env_or("LLE_MEMPOOL_SHUTTLE_OPS", 250)
}

/// The byte at `offset` of the block tagged `tag`: a hash of both, so that
/// no two blocks, and no two offsets of one block, are likely to agree.
fn pattern_byte(tag: u64, offset: usize) -> u8 {
    let mixed = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (offset as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
    (mixed >> 56) as u8
}

/// A block the workload owns: where it is, how much of it was asked for, the
/// tag its pattern was made from, and which path allocated it.
#[derive(Debug, Clone, Copy)]
struct Block {
    address: usize,
    len: usize,
    tag: u64,
    fast: bool,
}

impl Block {
    fn pointer(&self) -> NonNull<u8> {
        NonNull::new(self.address as *mut u8).expect("blocks are never null")
    }

    /// Fills the block with its pattern.
    fn fill(&self) {
        for offset in 0..self.len {
            // SAFETY: the block is live, ours, and `len` bytes long.
            unsafe { (self.address as *mut u8).add(offset).write(pattern_byte(self.tag, offset)) };
        }
    }

    /// Panics unless the block still holds its pattern.
    fn verify(&self) {
        for offset in 0..self.len {
            // SAFETY: the block is live, ours, and `len` bytes long.
            let found = unsafe { (self.address as *const u8).add(offset).read() };
            assert_eq!(
                found,
                pattern_byte(self.tag, offset),
                "block {:#x} ({} bytes, {} path) was overwritten at offset {offset}: another thread was handed the same memory",
                self.address,
                self.len,
                if self.fast { "fast" } else { "shared" },
            );
        }
    }
}

/// Takes a block of `len` bytes on the path named by `fast`, checks what the
/// pool says about it, and fills it. `None` when the pool is at its cap.
fn allocate_block(pool: &MemoryPool, len: usize, align: Option<usize>, fast: bool, tag: u64) -> Option<Block> {
    let allocated = match (fast, align) {
        (true, _) => pool.allocate_fast(len),
        (false, Some(align)) => pool.allocate_aligned(len, align),
        (false, None) => pool.allocate(len),
    };
    let pointer = match allocated {
        Ok(pointer) => pointer,
        Err(PoolError::ExceedsMaxSize { max, .. }) => {
            assert_eq!(max, MAX_POOL_SIZE);
            return None;
        }
        Err(error) => panic!("allocating {len} bytes (fast: {fast}, align: {align:?}) failed: {error}"),
    };
    let address = pointer.as_ptr() as usize;
    let wanted_alignment = align.unwrap_or(if fast { 16.min(1 << len.trailing_zeros()) } else { pool.alignment() });
    assert_eq!(address % wanted_alignment, 0, "block of {len} bytes at {address:#x} is not {wanted_alignment}-aligned");
    assert!(pool.contains(pointer.as_ptr()), "a live block at {address:#x} is outside the pool");
    let usable = pool.usable_size(pointer).expect("a live block has a usable size");
    assert!(usable >= len, "block at {address:#x} has {usable} usable bytes for {len} asked");
    let block = Block { address, len, tag, fast };
    block.fill();
    Some(block)
}

/// Verifies and frees a block, on the fast or the shared free path (both
/// take blocks of either origin).
fn free_block(pool: &MemoryPool, block: Block, through_fast: bool) {
    block.verify();
    let pointer = block.pointer();
    if block.len > 16 {
        // An interior pointer of a live block is refused and changes nothing.
        // SAFETY: the block is longer than 16 bytes, so this points inside
        // it, and is not null.
        let interior = unsafe { NonNull::new_unchecked(pointer.as_ptr().add(16)) };
        // SAFETY: the pool refuses an interior pointer without touching the
        // block, which stays live and ours.
        let refused = if through_fast { unsafe { pool.free_fast(interior) } } else { unsafe { pool.free(interior) } };
        assert!(
            matches!(refused, Err(PoolError::InteriorPointer { .. })),
            "an interior pointer of a live block was not refused: {refused:?}"
        );
    }
    // SAFETY: the block is live and nobody uses it after this.
    let freed = if through_fast { unsafe { pool.free_fast(pointer) } } else { unsafe { pool.free(pointer) } };
    freed.unwrap_or_else(|error| panic!("freeing {block:?} failed: {error}"));
}

/// The invariants any snapshot must satisfy, however busy the pool is.
fn assert_consistent(stats: &PoolStats) {
    assert_eq!(stats.size % PAGE, 0, "size is not whole pages: {stats:?}");
    assert_eq!(stats.used % 16, 0, "bytes in use are not whole granules: {stats:?}");
    assert_eq!(stats.used + stats.free, stats.size, "used + free != size: {stats:?}");
    assert!(stats.largest_free_block <= stats.free, "largest free block exceeds free bytes: {stats:?}");
    assert_eq!(stats.free == 0, stats.free_blocks == 0, "free bytes and free blocks disagree: {stats:?}");
    assert_eq!(stats.free == 0, stats.largest_free_block == 0, "free bytes and largest block disagree: {stats:?}");
    assert!(stats.free_blocks * 16 <= stats.free, "more free blocks than free granules: {stats:?}");
    assert!(
        stats.largest_free_block * stats.free_blocks >= stats.free,
        "free blocks can't hold the free bytes: {stats:?}"
    );
    assert!(stats.peak_used >= stats.used, "peak below current use: {stats:?}");
    assert!(stats.total_frees <= stats.total_allocations, "more frees than allocations: {stats:?}");
    // The shared pool's live blocks are the slabs and the callers' shared
    // blocks, read in one snapshot; live_allocations adds the cache blocks
    // callers hold, summed over threads.
    assert_eq!(stats.fast.slabs == 0, stats.fast.slab_bytes == 0, "slabs and their bytes disagree: {stats:?}");
    assert!(stats.fast.slab_bytes <= stats.used, "slabs exceed the bytes in use: {stats:?}");
    let live_slabs = stats.fast.slabs as u64;
    assert!(stats.total_allocations - stats.total_frees >= live_slabs, "more slabs than live blocks: {stats:?}");
    let live_shared = (stats.total_allocations - stats.total_frees - live_slabs) as usize;
    let shared_bytes = stats.used - stats.fast.slab_bytes;
    assert!(live_shared * 16 <= shared_bytes, "more live shared blocks than their granules: {stats:?}");
    assert_eq!(shared_bytes == 0, live_shared == 0, "shared bytes and shared blocks disagree: {stats:?}");
    assert!(stats.live_allocations >= live_shared, "fewer live allocations than shared blocks: {stats:?}");
}

/// What a registered listener observed. A listener's panic is caught by the
/// pool, so violations are counted here and asserted on by the test.
struct ListenerProbe {
    /// Set once `remove_resize_listener` has returned `true` for it.
    removed: AtomicBool,
    calls: AtomicUsize,
    violations: AtomicUsize,
}

impl ListenerProbe {
    fn observe(&self, event: &ResizeEvent) {
        if self.removed.load(Ordering::SeqCst) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        let direction_ok = match event.reason {
            ResizeReason::Expand | ResizeReason::AutoExpand => event.new_size > event.old_size,
            ResizeReason::Compact => event.new_size < event.old_size,
            ResizeReason::Resize => event.new_size != event.old_size,
            // A reason this probe does not know: a violation until it learns
            // which way that reason moves the size.
            _ => false,
        };
        if !direction_ok || event.old_size % PAGE != 0 || event.new_size % PAGE != 0 {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Still not removed: `remove_resize_listener` must wait for a call
        // in progress, so this catches it returning while we run.
        if self.removed.load(Ordering::SeqCst) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Everything one workload thread needs.
struct Worker {
    index: usize,
    pool: Arc<MemoryPool>,
    inbox: Receiver<Block>,
    peers: Vec<Sender<Block>>,
    mix: Mix,
    operations: usize,
    probes: Arc<std::sync::Mutex<Vec<Arc<ListenerProbe>>>>,
}

/// Weights, per thousand operations, of the operations beyond plain
/// allocation and freeing.
#[derive(Clone, Copy)]
struct Mix {
    /// Pool-wide operations: expand, compact, resize.
    maintenance: u32,
    /// Cheap lock-free readers: stats, utilization, size, contains.
    readers: u32,
    /// `check`, which walks every word of every index and, like every
    /// seqlock reader, retries while writers keep changing the pool: under
    /// the model it costs as much as a hundred other operations.
    checks: u32,
    /// Listener registration and removal.
    listeners: u32,
    /// Blocks handed to another thread to free.
    cross_thread: u32,
}

impl Worker {
    fn run(self) {
        let Worker { index, pool, inbox, peers, mix, operations, probes } = self;
        let mut rng = thread_rng();
        let mut blocks: Vec<Block> = Vec::new();
        let mut listeners: Vec<(ListenerId, Arc<ListenerProbe>)> = Vec::new();
        let mut sequence = 0u64;
        let mut next_tag = || {
            sequence += 1;
            ((index as u64) << 48) | sequence
        };
        for _ in 0..operations {
            // Incoming blocks from other threads: free them on either path,
            // which for fast blocks is a remote free onto another thread's
            // slab, or a free into an abandoned one.
            if let Ok(block) = inbox.try_recv() {
                free_block(&pool, block, rng.gen());
            }
            let roll = rng.gen_range(0..1000u32);
            let maintenance_end = mix.maintenance;
            let readers_end = maintenance_end + mix.readers;
            let checks_end = readers_end + mix.checks;
            let listeners_end = checks_end + mix.listeners;
            let cross_end = listeners_end + mix.cross_thread;
            if roll < maintenance_end {
                maintain(&pool, &mut rng);
            } else if roll < readers_end {
                read(&pool, &mut rng);
            } else if roll < checks_end {
                pool.check().unwrap_or_else(|error| panic!("check failed while the pool was busy: {error}"));
            } else if roll < listeners_end {
                if listeners.is_empty() || rng.gen_bool(0.5) {
                    let probe = Arc::new(ListenerProbe {
                        removed: AtomicBool::new(false),
                        calls: AtomicUsize::new(0),
                        violations: AtomicUsize::new(0),
                    });
                    let observer = Arc::clone(&probe);
                    let id = pool.on_resize(move |event| observer.observe(event));
                    probes.lock().unwrap().push(Arc::clone(&probe));
                    listeners.push((id, probe));
                } else {
                    let (id, probe) = listeners.swap_remove(rng.gen_range(0..listeners.len()));
                    assert!(pool.remove_resize_listener(id), "a registered listener was not found");
                    probe.removed.store(true, Ordering::SeqCst);
                    assert!(!pool.remove_resize_listener(id), "a listener was removed twice");
                }
            } else if roll < cross_end && !blocks.is_empty() {
                let block = blocks.swap_remove(rng.gen_range(0..blocks.len()));
                let peer = rng.gen_range(0..peers.len());
                peers[peer].send(block).expect("peers keep their inboxes until every sender is gone");
            } else if blocks.len() < LIVE_BLOCKS_PER_THREAD && (blocks.is_empty() || rng.gen_bool(0.55)) {
                let fast = rng.gen_bool(0.6);
                let len = if fast {
                    // Mostly slab sizes; sometimes just above, which the fast
                    // path hands to the shared pool.
                    if rng.gen_bool(0.9) {
                        FAST_SIZES[rng.gen_range(0..FAST_SIZES.len())]
                    } else {
                        rng.gen_range(MAX_FAST_SIZE + 1..=2 * MAX_FAST_SIZE)
                    }
                } else if rng.gen_bool(0.95) {
                    rng.gen_range(1..=PAGE / 4)
                } else {
                    // More than the pool's free space now and then, so that
                    // allocation grows the pool (AutoExpand).
                    rng.gen_range(PAGE..=2 * PAGE)
                };
                let align = (!fast && rng.gen_bool(0.15)).then(|| [32, 64, 256, PAGE][rng.gen_range(0..4)]);
                blocks.extend(allocate_block(&pool, len, align, fast, next_tag()));
            } else if !blocks.is_empty() {
                let block = blocks.swap_remove(rng.gen_range(0..blocks.len()));
                free_block(&pool, block, rng.gen());
            }
        }
        for block in blocks.drain(..) {
            free_block(&pool, block, rng.gen());
        }
        for (id, probe) in listeners {
            assert!(pool.remove_resize_listener(id), "a registered listener was not found");
            probe.removed.store(true, Ordering::SeqCst);
        }
        // Dropping our senders lets the peers' drains finish; ours ends when
        // every peer has dropped theirs, so no block is left in flight.
        drop(peers);
        for block in inbox.iter() {
            free_block(&pool, block, rng.gen());
        }
    }
}

/// One of expand, compact or resize, with the errors each may legitimately
/// return while other threads allocate.
fn maintain(pool: &MemoryPool, rng: &mut impl Rng) {
    match rng.gen_range(0..3) {
        0 => {
            let additional = rng.gen_range(1..=4 * PAGE);
            match pool.expand(additional) {
                Ok(()) | Err(PoolError::ExceedsMaxSize { .. }) => {}
                Err(error) => panic!("expand({additional}) failed: {error}"),
            }
        }
        1 => {
            let released = pool.compact().unwrap_or_else(|error| panic!("compact failed: {error}"));
            assert_eq!(released % PAGE, 0, "compact released a partial page: {released}");
        }
        _ => {
            // Up to a little past the cap, so every outcome is reached.
            let target = rng.gen_range(0..=MAX_POOL_SIZE + 2 * PAGE);
            match pool.resize(target) {
                Ok(()) => {}
                Err(PoolError::ShrinkBelowUsed { .. } | PoolError::ShrinkBlocked { .. }) => {}
                Err(PoolError::ExceedsMaxSize { .. }) => assert!(target > MAX_POOL_SIZE),
                Err(error) => panic!("resize({target}) failed: {error}"),
            }
        }
    }
}

/// One of the lock-free readers, checked against what must hold at any time.
fn read(pool: &MemoryPool, rng: &mut impl Rng) {
    match rng.gen_range(0..8) {
        0..=2 => assert_consistent(&pool.stats()),
        3 | 4 => {
            let utilization = pool.utilization();
            assert!((0.0..=100.0).contains(&utilization), "utilization out of range: {utilization}");
        }
        _ => {
            let size = pool.size();
            assert_eq!(size % PAGE, 0, "size is not whole pages: {size}");
            let on_stack = 0u8;
            assert!(!pool.contains(&on_stack), "a stack address is inside the pool");
            // SAFETY: the pool refuses a pointer it does not own without
            // touching it.
            let foreign = unsafe { pool.free_fast(NonNull::from(&on_stack)) };
            assert!(
                matches!(foreign, Err(PoolError::ForeignPointer { .. })),
                "a foreign pointer was accepted: {foreign:?}"
            );
            assert!(matches!(pool.allocate_fast(0), Err(PoolError::ZeroSize)));
        }
    }
}

/// Runs `THREADS` workers over one pool, then checks that every byte came
/// back and the pool's books balance.
fn workload(mix: Mix) {
    let mut rng = thread_rng();
    let checked = rng.gen_bool(0.5);
    let pool = Arc::new(
        MemoryPool::with_config(PoolConfig::new(4 * PAGE).max_size(MAX_POOL_SIZE).checked(checked))
            .expect("a small pool can be made"),
    );
    let probes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let operations = operations_per_thread();
    let (senders, inboxes): (Vec<Sender<Block>>, Vec<Receiver<Block>>) = (0..THREADS).map(|_| channel()).unzip();
    let handles: Vec<_> = inboxes
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| {
            let worker = Worker {
                index,
                pool: Arc::clone(&pool),
                inbox,
                peers: senders.iter().enumerate().filter(|&(peer, _)| peer != index).map(|(_, s)| s.clone()).collect(),
                mix,
                operations,
                probes: Arc::clone(&probes),
            };
            thread::spawn(move || worker.run())
        })
        .collect();
    drop(senders);
    for handle in handles {
        handle.join().expect("a worker panicked");
    }

    // Every thread has exited: their caches were flushed, slabs with blocks
    // freed remotely after the exit were abandoned, and compact releases
    // those whose blocks all came home.
    pool.compact().expect("compact of an idle pool");
    pool.check().expect("the pool's books balance once idle");
    let stats = pool.stats();
    assert_consistent(&stats);
    assert_eq!(stats.used, 0, "bytes still in use after every block was freed: {stats:?}");
    assert_eq!(stats.live_allocations, 0, "blocks still live after every block was freed: {stats:?}");
    assert_eq!(stats.total_allocations, stats.total_frees, "shared pool allocations and frees differ: {stats:?}");
    assert_eq!(stats.fast.allocations, stats.fast.frees, "fast allocations and frees differ: {stats:?}");
    assert_eq!((stats.fast.slabs, stats.fast.cached_blocks), (0, 0), "slabs outlived their threads: {stats:?}");
    assert!(stats.fast.remote_frees <= stats.fast.frees, "more remote frees than frees: {stats:?}");
    assert_eq!(pool.resize_listener_count(), 0, "listeners left registered");
    for probe in probes.lock().unwrap().iter() {
        assert!(probe.removed.load(Ordering::SeqCst));
        assert_eq!(probe.violations.load(Ordering::SeqCst), 0, "a listener saw a bad event or ran after its removal");
    }
    // Everything free is one block per region now, and the pool can still
    // serve a block of its largest free size.
    let largest = stats.largest_free_block;
    if largest > 0 {
        let whole = pool.allocate(largest).expect("the largest free block can be allocated");
        // SAFETY: just allocated, not used again.
        unsafe { pool.free(whole).expect("freeing it") };
    }
}

/// Heavy on blocks crossing threads: fast-path remote frees onto live
/// owners' slabs, frees into slabs abandoned by exited threads, adoption.
const CROSS_THREAD: Mix = Mix { maintenance: 20, readers: 40, checks: 0, listeners: 0, cross_thread: 300 };

/// Every part of the API at once: growth, compaction and resizing against
/// allocation on both paths, readers, and listeners coming and going while
/// the pool resizes.
const WHOLE_API: Mix = Mix { maintenance: 60, readers: 100, checks: 2, listeners: 60, cross_thread: 120 };

#[test]
fn cross_thread_frees_random() {
    shuttle::check_random(|| workload(CROSS_THREAD), schedules());
}

#[test]
fn cross_thread_frees_pct() {
    shuttle::check_pct(|| workload(CROSS_THREAD), schedules(), PCT_DEPTH);
}

#[test]
fn whole_api_random() {
    shuttle::check_random(|| workload(WHOLE_API), schedules());
}

#[test]
fn whole_api_pct() {
    shuttle::check_pct(|| workload(WHOLE_API), schedules(), PCT_DEPTH);
}
