//! How a pool is set up.

use crate::error::PoolError;
use crate::guard::{BlockDamage, CorruptionHandler};
use crate::shared_pool::MAX_ALIGNMENT;
use crate::slab::BlockRecords;
use std::time::Duration;

/// What a pool is for, as the LLE line editor names its pools.
///
/// The kind changes no behaviour; it labels the pool in statistics, the C
/// API and listeners' events, so that a program with many pools can tell
/// them apart.
///
/// # Examples
///
/// ```
/// use lle_mempool::{MemoryPool, PoolConfig, PoolKind};
///
/// let pool = MemoryPool::with_config(PoolConfig::new(64 * 1024).kind(PoolKind::Event))?;
/// assert_eq!(pool.kind(), PoolKind::Event);
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PoolKind {
    /// Text buffers.
    Buffer,
    /// Input and editor events.
    Event,
    /// Strings.
    String,
    /// Short-lived scratch memory.
    Temp,
    /// History entries.
    History,
    /// Syntax-highlighting state.
    Syntax,
    /// Completion candidates.
    Completion,
    /// Anything else.
    #[default]
    Custom,
}

/// The settings a pool is created with.
///
/// # Examples
///
/// ```
/// use lle_mempool::{MemoryPool, PoolConfig, PoolKind};
///
/// let config = PoolConfig::new(1 << 20)
///     .kind(PoolKind::Buffer)
///     .alignment(64)
///     .max_size(16 << 20)
///     .growth_factor(1.5);
/// let pool = MemoryPool::with_config(config)?;
/// assert_eq!(pool.allocate(100)?.as_ptr() as usize % 64, 0);
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub(crate) initial_size: usize,
    pub(crate) kind: PoolKind,
    pub(crate) alignment: usize,
    pub(crate) max_size: Option<usize>,
    pub(crate) growth_factor: f64,
    pub(crate) checked: bool,
    /// `None` for the default (see [`PoolConfig::reserve`]).
    pub(crate) reserve: Option<usize>,
    pub(crate) purge_delay: Option<Duration>,
    pub(crate) zero_on_free: bool,
    pub(crate) huge_pages: bool,
    pub(crate) soft_limit: Option<usize>,
    /// Where a checked pool reports writes after free; `None` panics.
    pub(crate) on_corruption: Option<CorruptionHandler>,
    pub(crate) report_leaks_on_drop: bool,
    pub(crate) track_callers: bool,
}

/// The smallest default alignment a pool accepts: what `malloc` promises.
pub(crate) const MIN_DEFAULT_ALIGNMENT: usize = 16;

/// How long free pages stay resident, by default, before the pool purges
/// them on its own (see [`PoolConfig::purge_delay`]).
pub(crate) const DEFAULT_PURGE_DELAY: Duration = Duration::from_secs(1);

impl PoolConfig {
    /// A configuration for a pool that starts with `initial_size` bytes
    /// (rounded up to whole pages), with alignment 16, no maximum size, a
    /// growth factor of 2, the default [reservation](Self::reserve), no
    /// double-free checks on the fast path, a purge delay of one second, no
    /// wipe on free and no huge pages.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = lle_mempool::PoolConfig::new(4096);
    /// let pool = lle_mempool::MemoryPool::with_config(config)?;
    /// assert_eq!(pool.size(), 4096);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn new(initial_size: usize) -> Self {
        PoolConfig {
            initial_size,
            kind: PoolKind::Custom,
            alignment: MIN_DEFAULT_ALIGNMENT,
            max_size: None,
            growth_factor: 2.0,
            checked: false,
            reserve: None,
            purge_delay: Some(DEFAULT_PURGE_DELAY),
            zero_on_free: false,
            huge_pages: false,
            soft_limit: None,
            on_corruption: None,
            report_leaks_on_drop: false,
            track_callers: false,
        }
    }

    /// Labels the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{PoolConfig, PoolKind};
    /// let config = PoolConfig::new(4096).kind(PoolKind::History);
    /// # let _ = config;
    /// ```
    pub fn kind(mut self, kind: PoolKind) -> Self {
        self.kind = kind;
        self
    }

    /// The alignment of blocks from [`MemoryPool::allocate`]: a power of two,
    /// at least 16 and at most 1 GiB (the largest alignment an allocation
    /// can have).
    ///
    /// [`MemoryPool::allocate`]: crate::MemoryPool::allocate
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig, PoolError};
    ///
    /// assert!(MemoryPool::with_config(PoolConfig::new(4096).alignment(8)).is_err());
    /// assert_eq!(
    ///     MemoryPool::with_config(PoolConfig::new(4096).alignment(1 << 31)).err(),
    ///     Some(PoolError::AlignmentTooLarge { align: 1 << 31 }),
    /// );
    /// ```
    pub fn alignment(mut self, align: usize) -> Self {
        self.alignment = align;
        self
    }

    /// The most bytes the pool may map, in all its regions together.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::with_config(
    ///     lle_mempool::PoolConfig::new(4096).max_size(8192),
    /// )?;
    /// assert!(pool.expand(1 << 20).is_err());
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn max_size(mut self, max: usize) -> Self {
        self.max_size = Some(max);
        self
    }

    /// By how much the pool multiplies its size when an allocation finds no
    /// room: a finite number of at least 1.0 (1.0 grows by just what the
    /// allocation needs).
    ///
    /// # Examples
    ///
    /// ```
    /// let config = lle_mempool::PoolConfig::new(4096).growth_factor(1.25);
    /// # let _ = config;
    /// ```
    pub fn growth_factor(mut self, factor: f64) -> Self {
        self.growth_factor = factor;
        self
    }

    /// How much address space the pool's first region reserves up front, in
    /// bytes: the pool grows in place into it, one contiguous region that
    /// never moves and has no boundaries inside, for as long as the
    /// reservation lasts (past it the pool grows as without one). Reserved
    /// address space is neither memory nor a promise of it: it costs no
    /// resident pages and no commit charge until the pool grows into it,
    /// and growing commits only what the pool's size says.
    ///
    /// By default the maximum size where there is one, else 16 GiB, the
    /// largest a region can be (more is reserved as 16 GiB too). Where the
    /// kernel refuses the reservation (an address-space limit, a small
    /// address space), the pool halves it until it fits, down to no
    /// reservation: creating a pool never fails for it. 0, or the initial
    /// size, means no reservation. Anything else below the initial size,
    /// or above the maximum size, is refused with
    /// [`PoolError::InvalidConfig`].
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig, PoolError};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).reserve(64 << 20))?;
    /// let start = pool.regions()[0].start;
    /// let block = pool.allocate(8 << 20)?;
    /// // The pool grew in place: still one region, from the same address.
    /// assert_eq!(pool.regions(), [start..start + pool.size()]);
    /// assert!(pool.contains(block.as_ptr()));
    ///
    /// assert!(matches!(
    ///     MemoryPool::with_config(PoolConfig::new(1 << 20).reserve(4096)),
    ///     Err(PoolError::InvalidConfig { .. }),
    /// ));
    /// # Ok::<(), PoolError>(())
    /// ```
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.reserve = Some(bytes);
        self
    }

    /// Whether the pool checks every block it hands out and takes back, on
    /// both paths. Off by default: a debugging mode, which costs every
    /// allocation and free a pass over the block, and each block a few
    /// bytes more.
    ///
    /// - **Double frees** are refused with [`PoolError::NotAllocated`]:
    ///   all of them, cache blocks too, from any thread, and a free of a
    ///   quarantined block. (A free of a block whose memory has been
    ///   handed out again frees the new block: no pool can tell it apart
    ///   from that block's own free.)
    /// - **Guard bytes.** Every block is taken at least one byte larger
    ///   than asked, and the bytes from the size asked to the block's end
    ///   are set to a canary, verified on free: an overflow, even of one
    ///   byte, is refused with [`PoolError::BlockCorrupted`] naming the block
    ///   (a [`BlockDamage`]), and the block is quarantined: never freed,
    ///   never handed out again, counted in
    ///   [`PoolStats::quarantined_blocks`](crate::PoolStats::quarantined_blocks).
    ///   [`usable_size`](crate::MemoryPool::usable_size) answers the bytes
    ///   asked.
    /// - **Poison.** Freed blocks are filled with a poison pattern,
    ///   verified when the block is handed out again: a write after free
    ///   is reported then, with a panic, or to the
    ///   [`on_corruption`](Self::on_corruption) callback, and the block is
    ///   quarantined. Poisoning does not see writes to a free cache block's
    ///   first word (its free-list link), nor, in the shared pool, a write
    ///   of zeros over a whole 16-byte granule.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig, PoolError};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true))?;
    /// let block = pool.allocate_fast(64)?;
    /// unsafe {
    ///     pool.free_fast(block)?;
    ///     assert!(matches!(pool.free_fast(block), Err(PoolError::NotAllocated { .. })));
    /// }
    /// let block = pool.allocate(100)?;
    /// unsafe {
    ///     block.as_ptr().add(100).write(b'!'); // one byte past the end
    ///     assert!(matches!(pool.free(block), Err(PoolError::BlockCorrupted { .. })));
    /// }
    /// assert_eq!(pool.stats().quarantined_blocks, 1);
    /// # Ok::<(), PoolError>(())
    /// ```
    pub fn checked(mut self, on: bool) -> Self {
        self.checked = on;
        self
    }

    /// How long after it last gave free pages back the pool gives back
    /// more on its own, without [`compact`]; `None` gives memory back only
    /// on `compact` (and [`resize`]). The default is one second.
    ///
    /// The pool purges (with `madvise`, so the pages stop counting as
    /// resident and read as zeros when used again) the whole free pages in
    /// free blocks of at least 64 KiB: smaller holes between live blocks
    /// are likely to be filled again soon, and a purged page faults when it
    /// is. Nothing runs in the background: a free in the shared pool counts
    /// its bytes, and only when an eighth of the pool (at least 4 MiB) has
    /// been freed since the last purge does it look at the clock; the
    /// purge itself walks one bit per KiB of the pool and makes one
    /// `madvise` call per free block it purges, and is paid for by the free
    /// that finds the delay passed. So memory freed just before a program
    /// goes quiet stays resident until later frees, or `compact`, give it
    /// back.
    ///
    /// Memory in the thread caches comes back the same way: a cache keeps
    /// at most one empty slab per size class, and gives every other slab
    /// back to the shared pool as soon as its last block is freed (and an
    /// exiting thread's slabs once their blocks come home, or on
    /// `compact`), where its 64 KiB are a free block like any other. A slab
    /// that keeps a few live blocks gives back the pages inside it that hold
    /// only free blocks: each thread's cache purges its own slabs when it
    /// next takes its slow path (a slab runs dry) after the delay has passed
    /// since its last purge, and `compact` purges the calling thread's
    /// slabs and the abandoned ones. The fast path never looks at the clock.
    ///
    /// Why one second: the check costs the hot path a subtraction per
    /// shared-pool free either way, and the delay bounds how often a
    /// purge's walk and its page faults can be paid. mimalloc purges after
    /// 10 ms, which in a loop that frees and refills the same memory
    /// purges pages only to fault them in again; jemalloc lets dirty pages
    /// decay over 10 s, which holds memory long after a phase of a program
    /// has ended. A second keeps the purge cost in such a loop negligible
    /// while memory comes back soon after the program's frees. Every
    /// duration is valid; zero purges whenever the threshold is reached.
    ///
    /// [`compact`]: crate::MemoryPool::compact
    /// [`resize`]: crate::MemoryPool::resize
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    /// use std::time::Duration;
    ///
    /// // Purge as soon as 4 MiB (the least threshold) have been freed.
    /// let pool = MemoryPool::with_config(PoolConfig::new(16 << 20).purge_delay(Some(Duration::ZERO)))?;
    /// let blocks = (0..8).map(|_| pool.allocate(1 << 20)).collect::<Result<Vec<_>, _>>()?;
    /// for block in blocks {
    ///     unsafe { pool.free(block)? };
    /// }
    /// assert_eq!(pool.stats().purges, 1, "the fifth free found the threshold passed");
    ///
    /// // Give memory back only when the program says so.
    /// let manual = MemoryPool::with_config(PoolConfig::new(16 << 20).purge_delay(None))?;
    /// let blocks = (0..8).map(|_| manual.allocate(1 << 20)).collect::<Result<Vec<_>, _>>()?;
    /// for block in blocks {
    ///     unsafe { manual.free(block)? };
    /// }
    /// assert_eq!(manual.stats().purges, 0);
    /// manual.compact()?;
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn purge_delay(mut self, delay: Option<Duration>) -> Self {
        self.purge_delay = delay;
        self
    }

    /// Whether every block is zeroed as it is freed, on both paths, by
    /// local and remote frees alike, so that no freed data stays readable
    /// in the pool's memory. Off by default.
    ///
    /// The zeros are written with volatile stores, which the compiler must
    /// keep even though nothing reads the block before it is reused (a plain
    /// `memset` before a free is a dead store it may drop). A shared block
    /// (from [`allocate`]) reads all zeros once freed, and so does the tail
    /// that shrinking a shared block in place gives back. A cache block
    /// (from [`allocate_fast`]) reads zeros except for its first 8 bytes,
    /// which the pool reuses as the link of the free list the block joins:
    /// they hold the address of the next free block, or zero. A block is
    /// not zeroed when it is handed out: memory never handed out is zero
    /// already, as the kernel maps it, but a cache block keeps its link.
    ///
    /// Costs a store per word of every block freed; and the pool's frees
    /// and allocations take the full paths, as [checked](Self::checked)
    /// pools' do, instead of the inline ones. In a checked pool, freed
    /// blocks hold the checked mode's poison pattern instead of zeros: it
    /// overwrites the freed data just the same.
    ///
    /// [`allocate`]: crate::MemoryPool::allocate
    /// [`allocate_fast`]: crate::MemoryPool::allocate_fast
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).zero_on_free(true))?;
    /// let secret = pool.allocate(64)?;
    /// unsafe {
    ///     secret.as_ptr().write_bytes(0x5A, 64);
    ///     pool.free(secret)?;
    ///     // The pool's memory stays mapped: the freed bytes read zero.
    ///     assert!((0..64).all(|offset| secret.as_ptr().add(offset).read_volatile() == 0));
    /// }
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn zero_on_free(mut self, on: bool) -> Self {
        self.zero_on_free = on;
        self
    }

    /// Whether the pool asks the kernel for transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`) on its regions and reservations of 2 MiB
    /// or more, whose start it aligns to 2 MiB so that the kernel can map
    /// whole huge pages in them. Off by default.
    ///
    /// A pool that holds many blocks spends much of its time faulting pages
    /// in and missing the TLB; a huge page replaces 512 faults and TLB
    /// entries with one. It takes effect where the kernel's transparent
    /// huge pages are `always` or `madvise`
    /// (`/sys/kernel/mm/transparent_hugepage/enabled`), and only in the
    /// 2 MiB-aligned stretches of a region that are mapped read-write
    /// whole; elsewhere, or where the kernel has no huge page free, memory
    /// comes in ordinary pages as without it. Purging free pages (see
    /// [`purge_delay`](Self::purge_delay)) inside a huge page splits it:
    /// the purged pages go back, the rest stays.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(4 << 20).huge_pages(true))?;
    /// assert_eq!(pool.regions()[0].start % (2 << 20), 0, "aligned for huge pages");
    /// let block = pool.allocate(3 << 20)?;
    /// unsafe { block.as_ptr().write_bytes(1, 3 << 20) };
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }

    /// Whether the pool's allocations and frees must all take the full
    /// paths, which mark, check or wipe blocks, rather than the inline
    /// ones, which do none of that.
    pub(crate) fn takes_full_paths(&self) -> bool {
        self.checked || self.zero_on_free
    }

    /// The bytes in use above which the pool calls its memory-pressure
    /// callbacks (see [`MemoryPool::on_memory_pressure`]): at most the
    /// maximum size, if there is one, else [`PoolError::InvalidConfig`].
    /// None by default. It limits nothing: allocations above it succeed.
    ///
    /// The callbacks are called once per crossing: by the allocation that
    /// takes the bytes in use ([`PoolStats::used`], which counts the thread
    /// caches' 64 KiB slabs, not their blocks) from at most the limit to
    /// above it, and again only after frees have brought them back to the
    /// limit or below. [`MemoryPool::set_soft_limit`] changes it later.
    ///
    /// [`MemoryPool::on_memory_pressure`]: crate::MemoryPool::on_memory_pressure
    /// [`MemoryPool::set_soft_limit`]: crate::MemoryPool::set_soft_limit
    /// [`PoolStats::used`]: crate::PoolStats::used
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig, PoolError};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).soft_limit(4096))?;
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&calls);
    /// pool.on_memory_pressure(move |_| { counter.fetch_add(1, Ordering::SeqCst); });
    /// let below = pool.allocate(4096)?;
    /// assert_eq!(calls.load(Ordering::SeqCst), 0, "at the limit, not above it");
    /// let above = pool.allocate(16)?;
    /// let further = pool.allocate(16)?;
    /// assert_eq!(calls.load(Ordering::SeqCst), 1, "once per crossing");
    /// unsafe {
    ///     pool.free(above)?;
    ///     pool.free(further)?;
    /// }
    /// let again = pool.allocate(16)?;
    /// assert_eq!(calls.load(Ordering::SeqCst), 2, "back at the limit, then above it again");
    ///
    /// assert!(matches!(
    ///     MemoryPool::with_config(PoolConfig::new(4096).max_size(8192).soft_limit(1 << 20)),
    ///     Err(PoolError::InvalidConfig { .. }),
    /// ));
    /// # let _ = (below, again);
    /// # Ok::<(), PoolError>(())
    /// ```
    pub fn soft_limit(mut self, bytes: usize) -> Self {
        self.soft_limit = Some(bytes);
        self
    }

    /// Where a [checked](Self::checked) pool reports a write after free:
    /// `callback` runs, outside every lock of the pool, with the damaged
    /// block, which is quarantined, and the allocation that found it goes
    /// on with another block. Without a callback, the allocation panics.
    /// [`MemoryPool::on_corruption`](crate::MemoryPool::on_corruption)
    /// replaces it on a pool already made.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{BlockDamage, DamageKind, MemoryPool, PoolConfig};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let reports = Arc::new(Mutex::new(Vec::<BlockDamage>::new()));
    /// let sink = Arc::clone(&reports);
    /// let config = PoolConfig::new(1 << 20)
    ///     .checked(true)
    ///     .on_corruption(move |damage| sink.lock().unwrap().push(*damage));
    /// let pool = MemoryPool::with_config(config)?;
    /// let block = pool.allocate_fast(64)?;
    /// unsafe {
    ///     pool.free_fast(block)?;
    ///     block.as_ptr().add(32).write(7); // a write after free
    /// }
    /// let next = pool.allocate_fast(64)?;
    /// assert_ne!(next, block, "the damaged block is quarantined");
    /// let reports = reports.lock().unwrap();
    /// assert_eq!(reports.len(), 1);
    /// assert_eq!((reports[0].addr, reports[0].offset), (block.as_ptr() as usize, 32));
    /// assert_eq!(reports[0].kind, DamageKind::WriteAfterFree);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn on_corruption(mut self, callback: impl Fn(&BlockDamage) + Send + Sync + 'static) -> Self {
        self.on_corruption = Some(CorruptionHandler::new(callback));
        self
    }

    /// Whether the pool, when dropped with blocks still live, writes a
    /// summary of them to standard error: how many, their bytes, the ten
    /// largest, and how many of each size (see
    /// [`write_leak_report`](crate::write_leak_report), which writes the
    /// same summary anywhere). Off by default.
    ///
    /// The pool learns its live blocks from the records of
    /// [checked](Self::checked) mode, so this turns checked mode on, with
    /// its guard bytes and poisoning.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).report_leaks_on_drop(true))?;
    /// assert!(pool.config().is_checked());
    /// let forgotten = pool.allocate(100)?;
    /// # let _ = forgotten;
    /// drop(pool); // standard error: "memory pool leak report: 1 live block, 100 bytes ..."
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn report_leaks_on_drop(mut self, on: bool) -> Self {
        self.report_leaks_on_drop = on;
        self
    }

    /// Whether the pool records where each block was allocated (the
    /// caller of [`allocate`](crate::MemoryPool::allocate),
    /// [`allocate_aligned`](crate::MemoryPool::allocate_aligned),
    /// [`allocate_fast`](crate::MemoryPool::allocate_fast) or the `Allocator`
    /// impl's `allocate`, through `#[track_caller]`: no backtrace is
    /// walked), for [`live_blocks`](crate::MemoryPool::live_blocks) and
    /// the leak report. Off by default.
    ///
    /// The location is kept beside the size asked, in the records of
    /// [checked](Self::checked) mode, so this turns checked mode on.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::{MemoryPool, PoolConfig};
    ///
    /// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).track_callers(true))?;
    /// let block = pool.allocate_fast(40)?; let line = line!();
    /// let live = pool.live_blocks()?;
    /// assert_eq!(live.len(), 1);
    /// assert_eq!(live[0].caller.map(|caller| caller.line()), Some(line));
    /// unsafe { pool.free_fast(block)? };
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn track_callers(mut self, on: bool) -> Self {
        self.track_callers = on;
        self
    }

    /// Whether the pool is checked: asked with [`checked`](Self::checked),
    /// or implied by [`report_leaks_on_drop`](Self::report_leaks_on_drop)
    /// or [`track_callers`](Self::track_callers).
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::PoolConfig;
    ///
    /// assert!(!PoolConfig::new(4096).is_checked());
    /// assert!(PoolConfig::new(4096).checked(true).is_checked());
    /// assert!(PoolConfig::new(4096).track_callers(true).is_checked());
    /// ```
    pub fn is_checked(&self) -> bool {
        self.checked || self.report_leaks_on_drop || self.track_callers
    }

    /// The configuration a pool runs with: the settings the others imply
    /// made explicit, so that the pool reads each from one field.
    pub(crate) fn with_implied_settings(mut self) -> Self {
        self.checked = self.is_checked();
        self
    }

    /// What a slab of a pool with this configuration records of each
    /// block.
    pub(crate) fn block_records(&self) -> BlockRecords {
        match (self.checked, self.track_callers) {
            (false, _) => BlockRecords::None,
            (true, false) => BlockRecords::Sizes,
            (true, true) => BlockRecords::SizesAndCallers,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), PoolError> {
        if !self.alignment.is_power_of_two() {
            return Err(PoolError::InvalidAlignment { align: self.alignment });
        }
        if self.alignment < MIN_DEFAULT_ALIGNMENT {
            return Err(PoolError::InvalidConfig { reason: "alignment must be at least 16" });
        }
        // A pool whose every allocation would be refused is no pool.
        if self.alignment > MAX_ALIGNMENT {
            return Err(PoolError::AlignmentTooLarge { align: self.alignment });
        }
        if !(self.growth_factor.is_finite() && self.growth_factor >= 1.0) {
            return Err(PoolError::InvalidConfig { reason: "growth factor must be a finite number >= 1.0" });
        }
        if let Some(max) = self.max_size {
            if self.initial_size > max {
                return Err(PoolError::ExceedsMaxSize { requested: self.initial_size, max });
            }
        }
        if let Some(reserve) = self.reserve {
            if reserve != 0 && reserve < self.initial_size {
                return Err(PoolError::InvalidConfig { reason: "reserve must be 0 or at least the initial size" });
            }
            if self.max_size.is_some_and(|max| reserve > max) {
                return Err(PoolError::InvalidConfig { reason: "reserve must be at most the maximum size" });
            }
        }
        if let (Some(soft), Some(max)) = (self.soft_limit, self.max_size) {
            if soft > max {
                return Err(PoolError::InvalidConfig { reason: "soft limit must be at most the maximum size" });
            }
        }
        Ok(())
    }
}
