//! Guard bytes and poisoning: what a [checked](crate::PoolConfig::checked)
//! pool does to every block it hands out and takes back.
//!
//! - **Canary.** A block is taken a little larger than asked, so that at
//!   least one byte follows the bytes asked for; every byte from there to
//!   the block's end is set to [`CANARY`] when the block is handed out and
//!   verified when it is freed. An overflow, even of one byte, is a free
//!   refused with [`PoolError::BlockCorrupted`], and the block is quarantined:
//!   never freed, never handed out again.
//! - **Poison.** A freed block is filled with [`POISON`] before anything
//!   else can take it, and verified when it is handed out again: a write
//!   after free is reported then, with a panic or the pool's
//!   [`on_corruption`](crate::PoolConfig::on_corruption) callback, and the
//!   block is quarantined.
//! - **Sizes asked.** The canary's start is the size asked: cache slabs of
//!   a checked pool keep it per block after their blocks (see
//!   [`Slab::record_asked`]); shared blocks keep it in a table of the pool's
//!   live shared blocks, which also remembers the quarantined ones, so that
//!   freeing one again is refused as a double free.
//!
//! What poisoning cannot see: a cache block's first word, which holds the
//! free-list link while the block is free, and, in the shared pool, a
//! write of zeros over a whole 16-byte granule. Freed shared space merges
//! with space that reads as zeros (memory never used, and pages the pool
//! purged), so the shared pool accepts each granule of a block it hands out
//! if it is all poison or all zeros.

use crate::error::PoolError;
use crate::free_index::GRANULE;
use crate::slab::{Slab, SLAB_SIZE};
use crate::slab_map::Owner;
use crate::stats::Counter;
#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::sync::{lock, yield_now, Mutex};
use crate::PoolInner;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::Location;
use std::ptr::NonNull;

/// The byte that fills a block from the bytes asked to its end.
pub(crate) const CANARY: u8 = 0xCA;
/// The byte that fills a freed block.
pub(crate) const POISON: u8 = 0xDF;

/// The bytes at the start of a free cache block that hold its free-list
/// link, which poisoning leaves to the list.
const LINK_BYTES: usize = std::mem::size_of::<usize>();

/// How a block's guard bytes were found damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DamageKind {
    /// A byte past the size asked, up to the block's end, was written: an
    /// overflow, found when the block was freed.
    Overflow,
    /// A byte of the block was written while it was free, found when the
    /// block was about to be handed out again.
    WriteAfterFree,
}

/// A block whose guard bytes a [checked](crate::PoolConfig::checked) pool
/// found damaged: in [`PoolError::BlockCorrupted`], and given to the
/// [`on_corruption`](crate::PoolConfig::on_corruption) callback.
///
/// # Examples
///
/// ```
/// use lle_mempool::{DamageKind, MemoryPool, PoolConfig, PoolError};
///
/// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true))?;
/// let block = pool.allocate_fast(20)?;
/// unsafe { block.as_ptr().add(20).write(0) }; // one byte too far
/// let Err(PoolError::BlockCorrupted { block: damage }) = (unsafe { pool.free_fast(block) }) else {
///     panic!("the overflow went unnoticed");
/// };
/// assert_eq!(damage.addr, block.as_ptr() as usize);
/// assert_eq!((damage.size, damage.offset, damage.kind), (20, 20, DamageKind::Overflow));
/// # Ok::<(), PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BlockDamage {
    /// The block's address.
    pub addr: usize,
    /// The bytes asked for it: for an overflow, when it was allocated; for
    /// a write after free, by the allocation that was about to receive it.
    pub size: usize,
    /// The bytes the block spans, guard bytes included.
    pub usable: usize,
    /// The first damaged byte, as an offset from `addr`.
    pub offset: usize,
    /// What the damage says happened.
    pub kind: DamageKind,
}

impl fmt::Display for BlockDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DamageKind::Overflow => "written past the bytes asked",
            DamageKind::WriteAfterFree => "written after it was freed",
        };
        write!(
            f,
            "block {:#x} ({} bytes asked, {} usable) was {what}: first damaged byte at offset {}",
            self.addr, self.size, self.usable, self.offset
        )
    }
}

impl BlockDamage {
    fn into_error(self) -> PoolError {
        PoolError::BlockCorrupted { block: Box::new(self) }
    }
}

/// The callback a pool reports writes after free to, shared by the clones
/// of its configuration.
///
/// It is `std`'s `Arc`, not `crate::sync`'s: it holds a callback that never
/// changes, and the models' `Arc` can neither hold an unsized callback nor
/// be made outside a model, where configurations are built.
#[derive(Clone)]
pub(crate) struct CorruptionHandler(std::sync::Arc<dyn Fn(&BlockDamage) + Send + Sync>);

impl CorruptionHandler {
    pub(crate) fn new(callback: impl Fn(&BlockDamage) + Send + Sync + 'static) -> Self {
        CorruptionHandler(std::sync::Arc::new(callback))
    }
}

impl fmt::Debug for CorruptionHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CorruptionHandler(..)")
    }
}

/// Two configurations report to the same place only with the same callback.
impl PartialEq for CorruptionHandler {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a checked pool knows of a shared block it handed out.
#[derive(Clone, Copy)]
enum SharedRecord {
    /// Live, asked for `size` bytes of the `usable` it spans, at `caller`
    /// if the pool tracks callers.
    Live { size: usize, usable: usize, caller: Option<&'static Location<'static>> },
    /// Damaged and held back: never freed, never handed out again.
    Quarantined,
}

/// The shared blocks a checked pool handed out, by address.
pub(crate) struct SharedRecords(HashMap<usize, SharedRecord, BuildHasherDefault<AddressHasher>>);

impl SharedRecords {
    /// Visits each live block: its address, the bytes asked, the bytes it
    /// spans and where it was allocated.
    pub(crate) fn for_each_live(&self, mut visit: impl FnMut(usize, usize, usize, Option<&'static Location<'static>>)) {
        for (&addr, record) in &self.0 {
            if let SharedRecord::Live { size, usable, caller } = *record {
                visit(addr, size, usable, caller);
            }
        }
    }
}

/// Where a pool reports writes after free: the configuration's
/// [`on_corruption`](crate::PoolConfig::on_corruption) callback, until
/// [`MemoryPool::on_corruption`](crate::MemoryPool::on_corruption) replaces
/// it.
///
/// The handler sits in an `Arc` of its own, cloned by each report for the
/// length of its call and never handed out otherwise: the count of its
/// clones is the count of calls running, which lets [`replace`] wait for
/// them without holding the lock across a call, so a callback may allocate
/// from the pool and find another damaged block. It is `std`'s `Arc`, as
/// [`CorruptionHandler`]'s is, for the same reasons.
///
/// [`replace`]: CorruptionReports::replace
struct CorruptionReports(Mutex<Option<std::sync::Arc<CorruptionHandler>>>);

impl CorruptionReports {
    /// The handler to call now, held for the length of the call.
    fn current(&self) -> Option<std::sync::Arc<CorruptionHandler>> {
        lock(&self.0).clone()
    }

    /// Puts `handler` in place of the current one, and returns once no
    /// call of the one it replaced is running; `true` if there was one.
    /// Called from within the handler it replaces, it would wait for
    /// itself.
    fn replace(&self, handler: Option<CorruptionHandler>) -> bool {
        let previous = std::mem::replace(&mut *lock(&self.0), handler.map(std::sync::Arc::new));
        let Some(previous) = previous else { return false };
        // No report can clone it any more; the clones left are calls still
        // running.
        while std::sync::Arc::strong_count(&previous) > 1 {
            yield_now();
        }
        true
    }
}

/// A pool's guard state; used only when the pool is checked.
pub(crate) struct Guards {
    /// Held across each checked free of a shared block, from finding its
    /// record to the shared pool's free, so that two frees of one block
    /// cannot both find it live.
    shared: Mutex<SharedRecords>,
    /// Cache blocks quarantined: counted as allocated by their heaps, and
    /// never freed.
    quarantined_cache: Counter<usize>,
    /// Shared blocks quarantined: live in the shared pool forever.
    quarantined_shared: Counter<usize>,
    corruption: CorruptionReports,
}

impl Guards {
    /// The guard state of a new pool, which reports writes after free to
    /// `on_corruption`, or panics without one.
    pub(crate) fn new(on_corruption: Option<CorruptionHandler>) -> Self {
        Guards {
            shared: Mutex::new(SharedRecords(HashMap::default())),
            quarantined_cache: Counter::new(0),
            quarantined_shared: Counter::new(0),
            corruption: CorruptionReports(Mutex::new(on_corruption.map(std::sync::Arc::new))),
        }
    }

    /// Reports writes after free to `handler` from now on, or panics
    /// without one; returns once no call of the handler it replaces is
    /// running, `true` if there was one.
    pub(crate) fn replace_corruption_handler(&self, handler: Option<CorruptionHandler>) -> bool {
        self.corruption.replace(handler)
    }

    /// Cache blocks and shared blocks quarantined.
    pub(crate) fn quarantined(&self) -> (usize, usize) {
        (self.quarantined_cache.get(), self.quarantined_shared.get())
    }

    /// Holds the table of shared blocks across a `fork()`: and so, as
    /// [`with_records_held`] does, every checked slab in place.
    #[cfg(not(lle_mempool_model))]
    pub(crate) fn hold_for_fork(&self) -> MutexGuard<'_, SharedRecords> {
        lock(&self.shared)
    }
}

/// Runs `walk` with the table of shared blocks held, while no checked slab
/// leaves the pool: a checked slab's release runs inside
/// [`apart_from_walks`].
pub(crate) fn with_records_held<R>(pool: &PoolInner, walk: impl FnOnce(&SharedRecords) -> R) -> R {
    walk(&lock(&pool.guards.shared))
}

/// Runs `release`, which gives a checked slab back to the shared pool, at
/// no time a walk of [`with_records_held`] runs.
pub(crate) fn apart_from_walks(pool: &PoolInner, release: impl FnOnce()) {
    with_records_held(pool, |_| release());
}

/// The bytes a checked pool takes from its caches for `size` bytes asked
/// (non-zero): at least one more, for the canary, and as many as keep the
/// block aligned as the caches promise for `size` (see `size_class`).
pub(crate) fn guarded_cache_size(size: usize) -> Result<usize, PoolError> {
    let natural_alignment = (1 << size.trailing_zeros()).min(GRANULE);
    size.checked_add(natural_alignment).ok_or(PoolError::SizeOverflow { size })
}

/// The bytes a checked pool takes from the shared pool for `size` bytes
/// asked: one more, for the canary; the granule rounds it up.
pub(crate) fn guarded_shared_size(size: usize) -> Result<usize, PoolError> {
    size.checked_add(1).ok_or(PoolError::SizeOverflow { size })
}

/// Hands out a block for `size` bytes asked, taking blocks with `take`:
/// each is verified for poison, and a damaged one is quarantined, reported
/// (outside every lock) and replaced by the next. The block's caller, if
/// the pool tracks callers, is this function's (`#[track_caller]` up to
/// the public allocation methods).
#[track_caller]
pub(crate) fn hand_out(
    pool: &PoolInner,
    size: usize,
    mut take: impl FnMut() -> Result<NonNull<u8>, PoolError>,
) -> Result<NonNull<u8>, PoolError> {
    loop {
        let block = take().map_err(|error| match error {
            // The caller's size is the one to name, not the guarded one.
            PoolError::SizeOverflow { .. } => PoolError::SizeOverflow { size },
            other => other,
        })?;
        match prepare(pool, block, size)? {
            None => return Ok(block),
            Some(damage) => report(pool, &damage),
        }
    }
}

/// Tells the pool's owner of a write after free: its callback, or a panic.
fn report(pool: &PoolInner, damage: &BlockDamage) {
    match pool.guards.corruption.current() {
        Some(handler) => (handler.0)(damage),
        None => panic!("checked memory pool: {damage}"),
    }
}

/// Verifies the poison of `block`, just taken for `size` bytes asked, and
/// sets it up: its size (and caller) recorded, its canary written. A
/// damaged block is quarantined and described instead.
#[track_caller]
fn prepare(pool: &PoolInner, block: NonNull<u8>, size: usize) -> Result<Option<BlockDamage>, PoolError> {
    let addr = block.as_ptr() as usize;
    let damage = |usable, offset| BlockDamage { addr, size, usable, offset, kind: DamageKind::WriteAfterFree };
    match pool.classify(addr) {
        Owner::Slab(slab) => {
            let index = slab.index_of(block);
            let usable = slab.block_size();
            debug_assert!(slab.is_checked() && slab.is_allocated(index) && size < usable);
            // SAFETY: the block was just taken for us: its bytes are ours.
            if let Some(offset) = unsafe { first_unlike(addr + LINK_BYTES, usable - LINK_BYTES, POISON) } {
                // Marked free and on no list: nothing hands it out, and a
                // free of it is refused.
                slab.mark_freed(index);
                pool.guards.quarantined_cache.add_concurrent(1);
                return Ok(Some(damage(usable, LINK_BYTES + offset)));
            }
            if slab.keeps_callers() {
                slab.record_caller(index, Location::caller());
            }
            slab.record_asked(index, size);
            // SAFETY: as above.
            unsafe { fill(addr + size, usable - size, CANARY) };
        }
        Owner::Shared => {
            let usable = pool.shared.block_size(addr)?;
            debug_assert!(size < usable);
            let poisoned = first_damaged_granule(addr, usable);
            let mut records = lock(&pool.guards.shared);
            if records.0.try_reserve(1).is_err() {
                drop(records);
                let freed = pool.shared.free(addr);
                debug_assert!(freed.is_ok(), "a block just taken was not live: {freed:?}");
                return Err(crate::fallible::out_of_memory(usable));
            }
            if let Some(offset) = poisoned {
                records.0.insert(addr, SharedRecord::Quarantined);
                pool.guards.quarantined_shared.add_concurrent(1);
                return Ok(Some(damage(usable, offset)));
            }
            let caller = pool.config.track_callers.then_some(Location::caller());
            records.0.insert(addr, SharedRecord::Live { size, usable, caller });
            drop(records);
            // SAFETY: the block was just taken for us: its bytes are ours.
            unsafe { fill(addr + size, usable - size, CANARY) };
        }
        Owner::Foreign => unreachable!("the pool handed out a block outside its regions"),
    }
    Ok(None)
}

/// Frees block `index` of `slab` at `block`, which a checked free has just
/// marked free: verifies its canary and poisons it, or quarantines it.
///
/// # Safety
/// `block` is block `index` of `slab`, handed out and given up by the
/// caller; marking it freed made this caller its only freer.
#[cold]
#[inline(never)]
pub(crate) unsafe fn release_cache_block(
    pool: &PoolInner,
    slab: &Slab,
    index: usize,
    block: NonNull<u8>,
) -> Result<(), PoolError> {
    let addr = block.as_ptr() as usize;
    let (size, usable) = (slab.asked(index), slab.block_size());
    // SAFETY: the caller gives the block up to us alone.
    if let Some(offset) = unsafe { first_unlike(addr + size, usable - size, CANARY) } {
        pool.guards.quarantined_cache.add_concurrent(1);
        let kind = DamageKind::Overflow;
        return Err(BlockDamage { addr, size, usable, offset: size + offset, kind }.into_error());
    }
    // SAFETY: as above.
    unsafe { fill(addr, usable, POISON) };
    Ok(())
}

/// Frees the shared block at `addr` in a checked pool: verifies its canary,
/// poisons it and frees it; quarantines it if its canary is damaged;
/// refuses it if it is quarantined already, or no live block.
#[cold]
#[inline(never)]
pub(crate) fn release_shared_block(pool: &PoolInner, addr: usize) -> Result<(), PoolError> {
    let mut records = lock(&pool.guards.shared);
    let Some(record) = records.0.get_mut(&addr) else {
        // No caller's block: free space, an interior pointer, or a block
        // being handed out right now (a stale pointer's free racing with
        // the block's next allocation). The shared pool tells which, and
        // nothing is freed.
        return Err(pool.shared.block_size(addr).err().unwrap_or(PoolError::NotAllocated { addr }));
    };
    let SharedRecord::Live { size, usable, .. } = *record else {
        return Err(PoolError::NotAllocated { addr });
    };
    // SAFETY: a live block the caller gives up; the record, held under the
    // lock, makes this free its only one.
    if let Some(offset) = unsafe { first_unlike(addr + size, usable - size, CANARY) } {
        // In place: the table's room stays as it is.
        *record = SharedRecord::Quarantined;
        pool.guards.quarantined_shared.add_concurrent(1);
        let kind = DamageKind::Overflow;
        return Err(BlockDamage { addr, size, usable, offset: size + offset, kind }.into_error());
    }
    records.0.remove(&addr);
    // SAFETY: as above.
    unsafe { fill(addr, usable, POISON) };
    let freed = pool.shared.free(addr);
    debug_assert!(freed.is_ok(), "a recorded block was not live: {freed:?}");
    freed
}

/// The bytes asked of the live block at `addr`, which `owner` holds, in a
/// checked pool; what `usable_size` answers there, since the bytes past
/// them are the canary's.
pub(crate) fn asked_size(pool: &PoolInner, addr: usize, owner: Owner<'_>) -> Result<usize, PoolError> {
    match owner {
        Owner::Slab(slab) => {
            let index = slab.block_index(addr)?;
            if !slab.is_allocated(index) {
                return Err(PoolError::NotAllocated { addr });
            }
            Ok(slab.asked(index))
        }
        Owner::Shared => match lock(&pool.guards.shared).0.get(&addr) {
            Some(SharedRecord::Live { size, .. }) => Ok(*size),
            Some(SharedRecord::Quarantined) => Err(PoolError::NotAllocated { addr }),
            None => pool.shared.block_size(addr).and(Err(PoolError::NotAllocated { addr })),
        },
        Owner::Foreign => Err(PoolError::ForeignPointer { addr }),
    }
}

/// Fills the blocks of a new checked slab with poison, so that every block
/// it hands out is verified alike, whether it was ever used or not.
pub(crate) fn poison_new_slab(slab: &Slab) {
    let (start, len) = slab.block_area();
    // SAFETY: the blocks of a slab nobody else knows of yet.
    unsafe { fill(start, len, POISON) };
}

/// Fills a checked slab with poison as it goes back to the shared pool, so
/// that its memory reads as freed blocks do.
///
/// # Safety
/// `slab` is the address of a slab that the caller gives up and that
/// nothing refers to any more.
pub(crate) unsafe fn poison_released_slab(slab: usize) {
    // SAFETY: as the caller guarantees: SLAB_SIZE bytes of the caller's.
    unsafe { fill(slab, SLAB_SIZE, POISON) };
}

/// Sets `len` bytes at `start` to `byte`.
///
/// # Safety
/// The bytes are the caller's to write.
unsafe fn fill(start: usize, len: usize, byte: u8) {
    // SAFETY: as the caller guarantees.
    unsafe { (start as *mut u8).write_bytes(byte, len) };
}

/// The offset of the first of `len` bytes at `start` that is not `byte`.
///
/// # Safety
/// The bytes are the caller's to read.
unsafe fn first_unlike(start: usize, len: usize, byte: u8) -> Option<usize> {
    // SAFETY: as the caller guarantees.
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
    // Every byte folded into one, with no branch per byte, which compiles
    // to vector operations; the search only once something differs.
    if bytes.iter().fold(0, |differences, &found| differences | (found ^ byte)) == 0 {
        return None;
    }
    bytes.iter().position(|&found| found != byte)
}

/// The offset of the first byte of the first granule of the `len` bytes at
/// `addr` (whole granules of a shared block just taken) that is neither all
/// poison nor all zeros.
fn first_damaged_granule(addr: usize, len: usize) -> Option<usize> {
    debug_assert!(addr % GRANULE == 0 && len % GRANULE == 0);
    // SAFETY: the block was just taken for the caller: its bytes are the
    // caller's to read.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
    // SAFETY: as above. Memory freed by a block or a slab is all poison:
    // one pass tells.
    unsafe { first_unlike(addr, len, POISON) }?;
    bytes.chunks_exact(GRANULE).enumerate().find_map(|(index, granule)| {
        if granule == [POISON; GRANULE] || granule == [0; GRANULE] {
            return None;
        }
        // What the granule held, judged by most of its bytes.
        let poison = granule.iter().filter(|&&byte| byte == POISON).count();
        let expected = if poison * 2 >= GRANULE { POISON } else { 0 };
        granule.iter().position(|&byte| byte != expected).map(|within| index * GRANULE + within)
    })
}

/// Hashes the addresses of shared blocks: one multiply, since the keys are
/// distinct granule-aligned addresses and no caller chooses them to collide
/// (the default hasher's resistance to such callers costs a shared free
/// about a hundred instructions).
#[derive(Default, Clone, Copy)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        // The product's high bits depend on every bit of the address, its
        // low bits only on the address's low bits, which are zero for
        // granule-aligned blocks; the table takes its bucket from the low
        // bits, so the high ones are rotated down.
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing, as `rustc-hash` does.
        self.0 = (self.0 ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
