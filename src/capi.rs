//! C ABI for the pool, declared in `include/lle/memory_management.h`.
//!
//! Every function is safe to call with a NULL pool or NULL output pointer: it
//! reports [`LleResult::ErrorNullPointer`] (or NULL, 0, -1.0 where the C
//! signature has no room for a code) instead of crashing.  No Rust panic ever
//! unwinds into C: each body runs under [`std::panic::catch_unwind`] and a
//! panic becomes [`LleResult::ErrorInternal`] or NULL. The one exception is
//! the common case of the fast pair, [`MemoryPool::allocate_cached`] and
//! [`MemoryPool::free_cached`], which nothing in can panic (but the debug
//! assertions of the pool's invariants): run inside `catch_unwind` it could
//! not be inlined, and would cost a C caller several times what it costs
//! Rust. (A free that empties a slab retires it under the guard.)
//!
//! The header is written by hand; `tests/capi.rs` compiles a probe against it
//! and compares every constant, size and field offset with this module, so the
//! two cannot drift apart unnoticed.

use std::ffi::{c_int, c_uint, c_void};
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::time::Duration;

use crate::align::align_up;
use crate::guard::CorruptionHandler;
use crate::thread_cache::{EmptiedSlab, InlineFree};
use crate::{
    BlockDamage, DamageKind, MemoryPool, PoolConfig, PoolError, PoolKind, PoolStats, PressureEvent, PressureReason,
};

/// C `LLE_POOL_BUFFER`: maps to [`PoolKind::Buffer`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_BUFFER);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_BUFFER: c_uint = 0;
/// C `LLE_POOL_EVENT`: maps to [`PoolKind::Event`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_EVENT);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_EVENT: c_uint = 1;
/// C `LLE_POOL_STRING`: maps to [`PoolKind::String`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_STRING);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_STRING: c_uint = 2;
/// C `LLE_POOL_TEMP`: maps to [`PoolKind::Temp`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_TEMP);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_TEMP: c_uint = 3;
/// C `LLE_POOL_HISTORY`: maps to [`PoolKind::History`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_HISTORY);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_HISTORY: c_uint = 4;
/// C `LLE_POOL_SYNTAX`: maps to [`PoolKind::Syntax`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_SYNTAX);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_SYNTAX: c_uint = 5;
/// C `LLE_POOL_COMPLETION`: maps to [`PoolKind::Completion`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_COMPLETION);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_COMPLETION: c_uint = 6;
/// C `LLE_POOL_CUSTOM`: maps to [`PoolKind::Custom`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_CUSTOM);
/// assert!(!pool.is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_POOL_CUSTOM: c_uint = 7;

/// Alignment a pool gets when `lle_create_memory_pool` is passed 0, and the
/// floor for smaller power-of-two requests (a 16-aligned block is also
/// 8-aligned, so rounding up never breaks the caller's expectation).
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_CUSTOM);
/// let block = unsafe { lle_pool_allocate(pool, 1) };
/// assert_eq!(block as usize % LLE_DEFAULT_ALIGNMENT, 0);
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
pub const LLE_DEFAULT_ALIGNMENT: usize = 16;

/// C `LLE_POOL_FLAG_CHECKED`: [`PoolConfig::checked`]: guard bytes, poison
/// and double-free detection on both paths.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(1 << 20, 0, LLE_POOL_EVENT, LLE_POOL_FLAG_CHECKED);
/// unsafe {
///     let event = lle_pool_allocate_fast(pool, 64);
///     assert_eq!(lle_pool_free_fast(pool, event), LleResult::Success);
///     assert_eq!(lle_pool_free_fast(pool, event), LleResult::ErrorDoubleFree);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
pub const LLE_POOL_FLAG_CHECKED: u32 = 1 << 0;
/// C `LLE_POOL_FLAG_ZERO_ON_FREE`: [`PoolConfig::zero_on_free`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(4096, 0, LLE_POOL_STRING, LLE_POOL_FLAG_ZERO_ON_FREE);
/// unsafe {
///     let secret = lle_pool_allocate(pool, 64).cast::<u8>();
///     secret.write_bytes(0x5A, 64);
///     assert_eq!(lle_pool_free(pool, secret.cast()), LleResult::Success);
///     assert!((0..64).all(|offset| secret.add(offset).read_volatile() == 0));
///     lle_destroy_memory_pool(pool);
/// }
/// ```
pub const LLE_POOL_FLAG_ZERO_ON_FREE: u32 = 1 << 1;
/// C `LLE_POOL_FLAG_HUGE_PAGES`: [`PoolConfig::huge_pages`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(4 << 20, 0, LLE_POOL_BUFFER, LLE_POOL_FLAG_HUGE_PAGES);
/// unsafe {
///     // The first block starts the pool's region, aligned for huge pages.
///     let block = lle_pool_allocate(pool, 3 << 20);
///     assert_eq!(block as usize % (2 << 20), 0);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
pub const LLE_POOL_FLAG_HUGE_PAGES: u32 = 1 << 2;
/// C `LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP`:
/// [`PoolConfig::report_leaks_on_drop`]: [`lle_destroy_memory_pool`]
/// writes a leak report to standard error if blocks are live. Implies
/// [`LLE_POOL_FLAG_CHECKED`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(1 << 20, 0, LLE_POOL_CUSTOM, LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP);
/// unsafe {
///     let forgotten = lle_pool_allocate(pool, 100);
///     assert!(!forgotten.is_null());
///     // Standard error: "memory pool leak report: 1 live block, 100 bytes ..."
///     lle_destroy_memory_pool(pool);
/// }
/// ```
pub const LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP: u32 = 1 << 3;

/// Every `LLE_POOL_FLAG_*` bit; any other makes creation fail.
const KNOWN_FLAGS: u32 =
    LLE_POOL_FLAG_CHECKED | LLE_POOL_FLAG_ZERO_ON_FREE | LLE_POOL_FLAG_HUGE_PAGES | LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP;

/// C `lle_result_t`: 0 on success, one negative code per failure cause.
///
/// The values are ABI: never renumber, only append.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// assert_eq!(LleResult::Success as i32, 0);
/// assert!((LleResult::ErrorNullPointer as i32) < 0);
/// ```
pub enum LleResult {
    /// `LLE_SUCCESS`
    Success = 0,
    /// `LLE_ERROR_NULL_POINTER`: the pool or an output pointer was NULL.
    ErrorNullPointer = -1,
    /// `LLE_ERROR_INVALID_PARAMETER`: an argument the pool never sees was out of range.
    ErrorInvalidParameter = -2,
    /// `LLE_ERROR_ZERO_SIZE`: [`PoolError::ZeroSize`].
    ErrorZeroSize = -3,
    /// `LLE_ERROR_SIZE_OVERFLOW`: [`PoolError::SizeOverflow`].
    ErrorSizeOverflow = -4,
    /// `LLE_ERROR_INVALID_ALIGNMENT`: [`PoolError::InvalidAlignment`].
    ErrorInvalidAlignment = -5,
    /// `LLE_ERROR_ALIGNMENT_TOO_LARGE`: [`PoolError::AlignmentTooLarge`].
    ErrorAlignmentTooLarge = -6,
    /// `LLE_ERROR_FOREIGN_POINTER`: [`PoolError::ForeignPointer`].
    ErrorForeignPointer = -7,
    /// `LLE_ERROR_INTERIOR_POINTER`: [`PoolError::InteriorPointer`].
    ErrorInteriorPointer = -8,
    /// `LLE_ERROR_DOUBLE_FREE`: [`PoolError::NotAllocated`], a double free
    /// or an address the pool never handed out (the C API's specification
    /// names the code for the first; it covers both).
    ErrorDoubleFree = -9,
    /// `LLE_ERROR_EXCEEDS_MAX_SIZE`: [`PoolError::ExceedsMaxSize`].
    ErrorExceedsMaxSize = -10,
    /// `LLE_ERROR_SHRINK_BELOW_USED`: [`PoolError::ShrinkBelowUsed`].
    ErrorShrinkBelowUsed = -11,
    /// `LLE_ERROR_SHRINK_BLOCKED`: [`PoolError::ShrinkBlocked`].
    ErrorShrinkBlocked = -12,
    /// `LLE_ERROR_OUT_OF_MEMORY`: [`PoolError::OutOfMemory`].
    ErrorOutOfMemory = -13,
    /// `LLE_ERROR_INVALID_CONFIG`: [`PoolError::InvalidConfig`].
    ErrorInvalidConfig = -14,
    /// `LLE_ERROR_CORRUPTED`: [`PoolError::Corrupted`] and
    /// [`PoolError::BlockCorrupted`].
    ErrorCorrupted = -15,
    /// `LLE_ERROR_INTERNAL`: the library panicked; the call had no effect
    /// that the caller can rely on.
    ErrorInternal = -16,
    /// `LLE_ERROR_REENTERED`: [`PoolError::Reentered`].
    ErrorReentered = -17,
}

impl From<&PoolError> for LleResult {
    fn from(error: &PoolError) -> Self {
        // Deliberately no wildcard arm: inside this crate `#[non_exhaustive]`
        // does not apply, so a new PoolError variant fails to compile here
        // until it is given its own C code.
        match error {
            PoolError::ZeroSize => LleResult::ErrorZeroSize,
            PoolError::SizeOverflow { .. } => LleResult::ErrorSizeOverflow,
            PoolError::InvalidAlignment { .. } => LleResult::ErrorInvalidAlignment,
            PoolError::AlignmentTooLarge { .. } => LleResult::ErrorAlignmentTooLarge,
            PoolError::ForeignPointer { .. } => LleResult::ErrorForeignPointer,
            PoolError::InteriorPointer { .. } => LleResult::ErrorInteriorPointer,
            PoolError::NotAllocated { .. } => LleResult::ErrorDoubleFree,
            PoolError::ExceedsMaxSize { .. } => LleResult::ErrorExceedsMaxSize,
            PoolError::ShrinkBelowUsed { .. } => LleResult::ErrorShrinkBelowUsed,
            PoolError::ShrinkBlocked { .. } => LleResult::ErrorShrinkBlocked,
            PoolError::OutOfMemory { .. } => LleResult::ErrorOutOfMemory,
            PoolError::InvalidConfig { .. } => LleResult::ErrorInvalidConfig,
            PoolError::Corrupted { .. } | PoolError::BlockCorrupted { .. } => LleResult::ErrorCorrupted,
            PoolError::Reentered => LleResult::ErrorReentered,
        }
    }
}

impl From<Result<(), PoolError>> for LleResult {
    fn from(result: Result<(), PoolError>) -> Self {
        match result {
            Ok(()) => LleResult::Success,
            Err(error) => LleResult::from(&error),
        }
    }
}

/// C `lle_fast_path_statistics_t`: mirrors [`crate::FastPathStats`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(1 << 20, 0, LLE_POOL_EVENT);
/// let mut stats = LlePoolStatistics::default();
/// unsafe {
///     let event = lle_pool_allocate_fast(pool, 64);
///     lle_get_pool_statistics(pool, &mut stats);
///     let fast: LleFastPathStatistics = stats.fast;
///     assert_eq!(fast.allocations, 1);
///     lle_pool_free_fast(pool, event);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LleFastPathStatistics {
    /// Blocks handed out from the caches, ever.
    pub allocations: u64,
    /// Cache blocks given back, on any thread, ever.
    pub frees: u64,
    /// Of those, the ones freed by a thread other than the block's owner.
    pub remote_frees: u64,
    /// Free blocks sitting in slabs, ready for the caches.
    pub cached_blocks: usize,
    /// Slabs held by the caches (or left behind by exited threads): live
    /// blocks of the shared pool, which are not allocations.
    pub slabs: usize,
    /// Bytes of the shared pool in those slabs (64 KiB each); part of
    /// `used`.
    pub slab_bytes: usize,
}

/// C `lle_pool_statistics_t`: mirrors [`PoolStats`], with durations as
/// nanoseconds (saturating at `u64::MAX`, about 584 years).
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_CUSTOM);
/// let mut stats = LlePoolStatistics::default();
/// unsafe {
///     lle_get_pool_statistics(pool, &mut stats);
///     lle_destroy_memory_pool(pool);
/// }
/// assert_eq!((stats.size, stats.used, stats.free), (4096, 0, 4096));
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LlePoolStatistics {
    /// Bytes mapped, in all regions.
    pub size: usize,
    /// Bytes in live blocks of the shared pool: the shared blocks callers
    /// hold, granule-rounded, plus `fast.slab_bytes`.
    pub used: usize,
    /// Bytes in free blocks: `size - used`.
    pub free: usize,
    /// The largest free block, in bytes.
    pub largest_free_block: usize,
    /// Free blocks: maximal runs of free memory.
    pub free_blocks: usize,
    /// Blocks handed to callers and not yet freed, on both paths; the
    /// caches' slabs do not count, so this is 0 once everything is freed.
    pub live_allocations: usize,
    /// The most bytes ever in use at once.
    pub peak_used: usize,
    /// Allocations from the shared pool, ever, cache slabs included.
    pub total_allocations: u64,
    /// Frees to the shared pool, ever, cache slabs included.
    pub total_frees: u64,
    /// Allocations refused, on either path.
    pub failed_allocations: u64,
    /// Times the pool grew.
    pub expansions: u64,
    /// Times compaction or a resize gave memory back.
    pub compactions: u64,
    /// Mean time of a sampled allocation, either path, in nanoseconds.
    pub avg_alloc_time_ns: u64,
    /// Mean time of a sampled free, either path, in nanoseconds.
    pub avg_free_time_ns: u64,
    /// The per-thread caches.
    pub fast: LleFastPathStatistics,
    /// Blocks a checked pool found damaged and holds back for good (see
    /// [`PoolStats::quarantined_blocks`]).
    pub quarantined_blocks: usize,
    /// Allocations the maximum size refused and the pool retried after
    /// compacting and calling the memory-pressure callback.
    pub low_memory_retries: u64,
    /// Of those, the retries that succeeded.
    pub low_memory_recoveries: u64,
}

fn duration_as_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl From<&PoolStats> for LlePoolStatistics {
    fn from(stats: &PoolStats) -> Self {
        LlePoolStatistics {
            size: stats.size,
            used: stats.used,
            free: stats.free,
            largest_free_block: stats.largest_free_block,
            free_blocks: stats.free_blocks,
            live_allocations: stats.live_allocations,
            peak_used: stats.peak_used,
            total_allocations: stats.total_allocations,
            total_frees: stats.total_frees,
            failed_allocations: stats.failed_allocations,
            expansions: stats.expansions,
            compactions: stats.compactions,
            avg_alloc_time_ns: duration_as_nanos(stats.avg_alloc_time),
            avg_free_time_ns: duration_as_nanos(stats.avg_free_time),
            fast: LleFastPathStatistics {
                allocations: stats.fast.allocations,
                frees: stats.fast.frees,
                remote_frees: stats.fast.remote_frees,
                cached_blocks: stats.fast.cached_blocks,
                slabs: stats.fast.slabs,
                slab_bytes: stats.fast.slab_bytes,
            },
            quarantined_blocks: stats.quarantined_blocks,
            low_memory_retries: stats.low_memory_retries,
            low_memory_recoveries: stats.low_memory_recoveries,
        }
    }
}

/// Runs `body`, turning a panic into `on_panic`: a panic reaching the edge of
/// an `extern "C"` function aborts the whole host process, and a C program
/// that called a memory pool deserves an error code instead.
///
/// `AssertUnwindSafe` is sound here in the sense that matters: no value
/// observed half-updated by the panic is touched again in this call, and the
/// pool's own invariants are its business (`check()` reports corruption).
fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        // Dropping the payload runs foreign Drop code that could itself
        // panic, outside any catch_unwind; leaking one small box on a path
        // that should never run is the safer trade.
        std::mem::forget(payload);
        on_panic
    })
}

fn pool_kind(pool_type: c_uint) -> Option<PoolKind> {
    Some(match pool_type {
        LLE_POOL_BUFFER => PoolKind::Buffer,
        LLE_POOL_EVENT => PoolKind::Event,
        LLE_POOL_STRING => PoolKind::String,
        LLE_POOL_TEMP => PoolKind::Temp,
        LLE_POOL_HISTORY => PoolKind::History,
        LLE_POOL_SYNTAX => PoolKind::Syntax,
        LLE_POOL_COMPLETION => PoolKind::Completion,
        LLE_POOL_CUSTOM => PoolKind::Custom,
        _ => return None,
    })
}

fn into_c_ptr(block: Result<NonNull<u8>, PoolError>) -> *mut c_void {
    block.map_or(ptr::null_mut(), |block| block.as_ptr().cast())
}

/// The configuration `lle_create_memory_pool_with_flags` makes a pool with,
/// or `None` for arguments it refuses.
fn pool_config(initial_size: usize, alignment: usize, pool_type: c_uint, flags: u32) -> Option<PoolConfig> {
    if flags & !KNOWN_FLAGS != 0 {
        return None;
    }
    let alignment = match alignment {
        0 => LLE_DEFAULT_ALIGNMENT,
        a if a.is_power_of_two() => a.max(LLE_DEFAULT_ALIGNMENT),
        _ => return None,
    };
    let flag = |bit: u32| flags & bit != 0;
    Some(
        PoolConfig::new(initial_size)
            .kind(pool_kind(pool_type)?)
            .alignment(alignment)
            .checked(flag(LLE_POOL_FLAG_CHECKED))
            .zero_on_free(flag(LLE_POOL_FLAG_ZERO_ON_FREE))
            .huge_pages(flag(LLE_POOL_FLAG_HUGE_PAGES))
            .report_leaks_on_drop(flag(LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP)),
    )
}

/// Creates a pool of `initial_size` bytes (the pool may round it up, and
/// grows on demand) whose `lle_pool_allocate` blocks are aligned to
/// `alignment` (0 means 16; powers of two below 16 are raised to 16), set
/// up by `flags`, a combination of `LLE_POOL_FLAG_*` bits (0 for the
/// default pool, the one [`PoolConfig::new`] makes). Returns NULL if
/// `alignment` is not a power of two or above 1 GiB, `pool_type` is not an
/// `LLE_POOL_*` value, `flags` has a bit that is no `LLE_POOL_FLAG_*`, or
/// the pool cannot be created.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(1 << 20, 0, LLE_POOL_EVENT, LLE_POOL_FLAG_CHECKED);
/// assert!(!pool.is_null());
/// assert!(lle_create_memory_pool_with_flags(4096, 0, LLE_POOL_EVENT, 1 << 31).is_null());
/// unsafe {
///     let block = lle_pool_allocate(pool, 100).cast::<u8>();
///     block.add(100).write(b'!'); // one byte past the end: the guard bytes see it
///     assert_eq!(lle_pool_free(pool, block.cast()), LleResult::ErrorCorrupted);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// None: any argument values are accepted. The returned pointer must be
/// released with [`lle_destroy_memory_pool`] exactly once.
#[unsafe(no_mangle)]
pub extern "C" fn lle_create_memory_pool_with_flags(
    initial_size: usize,
    alignment: usize,
    pool_type: c_uint,
    flags: u32,
) -> *mut MemoryPool {
    guard(ptr::null_mut(), || {
        let Some(config) = pool_config(initial_size, alignment, pool_type, flags) else {
            return ptr::null_mut();
        };
        MemoryPool::with_config(config).map_or(ptr::null_mut(), |pool| Box::into_raw(Box::new(pool)))
    })
}

/// [`lle_create_memory_pool_with_flags`] with no flags: the default pool,
/// which checks no block (a second free of a fast-path block is undefined
/// behaviour, as with `free(3)`; see [`LLE_POOL_FLAG_CHECKED`]).
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(1 << 20, 0, LLE_POOL_EVENT);
/// assert!(!pool.is_null());
/// assert!(lle_create_memory_pool(4096, 3, LLE_POOL_EVENT).is_null());
/// assert!(lle_create_memory_pool(4096, 1 << 31, LLE_POOL_EVENT).is_null());
/// unsafe { lle_destroy_memory_pool(pool) };
/// ```
///
/// # Safety
///
/// None: any argument values are accepted. The returned pointer must be
/// released with [`lle_destroy_memory_pool`] exactly once.
#[unsafe(no_mangle)]
pub extern "C" fn lle_create_memory_pool(initial_size: usize, alignment: usize, pool_type: c_uint) -> *mut MemoryPool {
    lle_create_memory_pool_with_flags(initial_size, alignment, pool_type, 0)
}

/// Destroys a pool and returns all its memory to the OS. NULL is ignored.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 16, LLE_POOL_TEMP);
/// unsafe {
///     lle_destroy_memory_pool(pool);
///     lle_destroy_memory_pool(std::ptr::null_mut());
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`] not yet
/// destroyed, and no other thread may be using it. Every block it handed out
/// becomes invalid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_destroy_memory_pool(pool: *mut MemoryPool) {
    if pool.is_null() {
        return;
    }
    guard((), || {
        // SAFETY: the caller guarantees `pool` came from Box::into_raw in
        // lle_create_memory_pool and that this is its only destruction.
        drop(unsafe { Box::from_raw(pool) });
    });
}

/// Borrows the pool behind a C handle.
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
unsafe fn pool_ref<'a>(pool: *const MemoryPool) -> Option<&'a MemoryPool> {
    // SAFETY: forwarded from the caller; a live pool is only ever shared
    // (every method takes &self), so handing out & references is sound.
    unsafe { pool.as_ref() }
}

/// Allocates `size` bytes aligned to the pool's alignment from the shared
/// pool. Returns NULL on failure, including `size == 0` and a NULL pool.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 64, LLE_POOL_BUFFER);
/// unsafe {
///     let block = lle_pool_allocate(pool, 100);
///     assert_eq!(block as usize % 64, 0);
///     assert!(lle_pool_allocate(pool, 0).is_null());
///     assert_eq!(lle_pool_free(pool, block), LleResult::Success);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_allocate(pool: *mut MemoryPool, size: usize) -> *mut c_void {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return ptr::null_mut();
    };
    guard(ptr::null_mut(), || into_c_ptr(pool.allocate(size)))
}

/// Allocates `size` bytes aligned to `alignment` (a power of two). Returns
/// NULL on failure, including `size == 0`, a bad alignment and a NULL pool.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(1 << 16, 0, LLE_POOL_BUFFER);
/// unsafe {
///     let page = lle_pool_allocate_aligned(pool, 100, 4096);
///     assert_eq!(page as usize % 4096, 0);
///     assert!(lle_pool_allocate_aligned(pool, 100, 3).is_null());
///     assert_eq!(lle_pool_free(pool, page), LleResult::Success);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_allocate_aligned(
    pool: *mut MemoryPool,
    size: usize,
    alignment: usize,
) -> *mut c_void {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return ptr::null_mut();
    };
    guard(ptr::null_mut(), || into_c_ptr(pool.allocate_aligned(size, alignment)))
}

/// Allocates `size` bytes through the calling thread's cache (sizes above
/// 1 KiB fall through to the shared pool). The block is aligned to 16, or to
/// the largest power of two dividing `size` if smaller: enough for any object
/// of that size, as with `malloc`. Returns NULL on failure.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(1 << 20, 0, LLE_POOL_EVENT);
/// unsafe {
///     let event = lle_pool_allocate_fast(pool, 48);
///     assert!(!event.is_null());
///     assert_eq!(lle_pool_free_fast(pool, event), LleResult::Success);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_allocate_fast(pool: *mut MemoryPool, size: usize) -> *mut c_void {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return ptr::null_mut();
    };
    // Outside the guard: see the module docs.
    if let Some(block) = pool.allocate_cached(size) {
        return block.as_ptr().cast();
    }
    allocate_fast_guarded(pool, size)
}

/// The rest of `lle_pool_allocate_fast`, under the guard. Out of line, so
/// that the common case saves no registers for it and reaches it with a
/// jump.
#[cold]
#[inline(never)]
fn allocate_fast_guarded(pool: &MemoryPool, size: usize) -> *mut c_void {
    guard(ptr::null_mut(), || into_c_ptr(pool.allocate_fast_slow(size)))
}

/// Which of the pool's two free paths a C call asked for.
#[derive(Clone, Copy)]
enum FreePath {
    Shared,
    Fast,
}

/// Shared body of the two free functions; inline, so that each function's
/// path is a constant.
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`];
/// if `block` is a live block of the pool, the caller gives it up, and
/// unless the pool is checked it must not be a fast-path block freed
/// already.
#[inline(always)]
unsafe fn free_block(pool: *mut MemoryPool, block: *mut c_void, path: FreePath) -> LleResult {
    // SAFETY: forwarded from the caller.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    // Outside the guard: see the module docs. NULL takes the full path,
    // which the inline one sends it to without a test of its own.
    if matches!(path, FreePath::Fast) {
        // SAFETY: forwarded from the caller.
        match unsafe { pool.free_cached(block.cast()) } {
            InlineFree::Freed => return LleResult::Success,
            InlineFree::SlabEmptied(slab) => return retire_guarded(slab),
            InlineFree::NotInline => {}
        }
    }
    let Some(block) = NonNull::new(block.cast::<u8>()) else {
        return LleResult::Success;
    };
    // SAFETY: forwarded from the caller.
    unsafe { free_guarded(pool, block, path) }
}

/// The end of an inline free that emptied a slab, under the guard: the
/// retirement goes to the shared pool, which is not panic-free code.
#[cold]
#[inline(never)]
fn retire_guarded(slab: EmptiedSlab) -> LleResult {
    guard(LleResult::ErrorInternal, || {
        slab.retire();
        LleResult::Success
    })
}

/// The rest of `free_block`, under the guard; out of line as
/// [`allocate_fast_guarded`] is.
///
/// # Safety
///
/// As [`free_block`].
#[cold]
#[inline(never)]
unsafe fn free_guarded(pool: &MemoryPool, block: NonNull<u8>, path: FreePath) -> LleResult {
    guard(LleResult::ErrorInternal, || {
        // SAFETY: the pool refuses, without touching it, any pointer that is
        // not one of its live blocks, and, checked, a second free of a
        // fast-path block; the caller promises the rest.
        let freed = unsafe {
            match path {
                FreePath::Shared => pool.free(block),
                FreePath::Fast => pool.free_fast_slow(block),
            }
        };
        LleResult::from(freed)
    })
}

/// Returns a block to the pool. Accepts blocks from any of the allocate
/// functions. Like `free(3)`, a NULL `ptr` is a no-op returning
/// `LLE_SUCCESS`; a pointer the pool did not hand out is refused with an
/// error code and nothing is freed.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_STRING);
/// unsafe {
///     let block = lle_pool_allocate(pool, 32);
///     assert_eq!(lle_pool_free(pool, block), LleResult::Success);
///     assert_ne!(lle_pool_free(pool, block), LleResult::Success); // double free refused
///     assert_eq!(lle_pool_free(pool, std::ptr::null_mut()), LleResult::Success);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
/// Once this returns `LLE_SUCCESS`, the block must no longer be used; in a
/// pool without [`LLE_POOL_FLAG_CHECKED`], freeing a fast-path block twice
/// is undefined behaviour (a shared-path block's second free is refused in
/// every pool).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_free(pool: *mut MemoryPool, ptr: *mut c_void) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    unsafe { free_block(pool, ptr, FreePath::Shared) }
}

/// The same as [`lle_pool_free`]: the pool sends every block back to where
/// it came from (a thread cache or the shared pool), whichever function
/// allocated it and whichever thread frees it.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(1 << 20, 0, LLE_POOL_EVENT, LLE_POOL_FLAG_CHECKED);
/// unsafe {
///     let event = lle_pool_allocate_fast(pool, 64);
///     assert_eq!(lle_pool_free_fast(pool, event), LleResult::Success);
///     assert_ne!(lle_pool_free_fast(pool, event), LleResult::Success); // double free refused (checked pool)
///     let mut on_stack = 0u8;
///     assert_ne!(lle_pool_free_fast(pool, (&mut on_stack as *mut u8).cast()), LleResult::Success);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
/// Once this returns `LLE_SUCCESS`, the block must no longer be used; in a
/// pool without [`LLE_POOL_FLAG_CHECKED`], freeing a fast-path block twice
/// is undefined behaviour (a shared-path block's second free is refused in
/// every pool).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_free_fast(pool: *mut MemoryPool, ptr: *mut c_void) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    unsafe { free_block(pool, ptr, FreePath::Fast) }
}

/// Grows the pool by `additional_size` bytes (the pool may round it up).
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_HISTORY);
/// unsafe {
///     assert_eq!(lle_expand_pool_memory(pool, 4096), LleResult::Success);
///     assert_eq!(lle_get_pool_size(pool), 8192);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_expand_pool_memory(pool: *mut MemoryPool, additional_size: usize) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    guard(LleResult::ErrorInternal, || pool.expand(additional_size).into())
}

/// Gives unused memory back to the OS. If `released` is not NULL, the
/// number of bytes given back is stored there (0 on failure).
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_SYNTAX);
/// unsafe {
///     lle_expand_pool_memory(pool, 1 << 20);
///     let mut released = 0usize;
///     assert_eq!(lle_compact_pool_memory(pool, &mut released), LleResult::Success);
///     assert_eq!(released, (1 << 20) + 4096);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`];
/// `released` must be NULL or valid for writing one `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_compact_pool_memory(pool: *mut MemoryPool, released: *mut usize) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    let (result, released_bytes) = guard((LleResult::ErrorInternal, 0), || match pool.compact() {
        Ok(bytes) => (LleResult::Success, bytes),
        Err(error) => (LleResult::from(&error), 0),
    });
    if !released.is_null() {
        // SAFETY: non-NULL `released` is valid for writes per the contract.
        unsafe { released.write(released_bytes) };
    }
    result
}

/// Sets the pool's size to `new_size` bytes, all or nothing: on failure the
/// pool is unchanged.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_COMPLETION);
/// unsafe {
///     assert_eq!(lle_atomic_pool_resize(pool, 64 * 1024), LleResult::Success);
///     assert_eq!(lle_get_pool_size(pool), 64 * 1024);
///     let block = lle_pool_allocate(pool, 40 * 1024);
///     assert_ne!(lle_atomic_pool_resize(pool, 4096), LleResult::Success);
///     assert_eq!(lle_get_pool_size(pool), 64 * 1024);
///     lle_pool_free(pool, block);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_atomic_pool_resize(pool: *mut MemoryPool, new_size: usize) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    guard(LleResult::ErrorInternal, || pool.resize(new_size).into())
}

/// Bytes the pool manages; 0 for a NULL pool (a compacted pool with nothing
/// live may also be empty).
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(10_000, 0, LLE_POOL_CUSTOM);
/// unsafe {
///     assert_eq!(lle_get_pool_size(pool), 12_288);
///     assert_eq!(lle_get_pool_size(std::ptr::null()), 0);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_get_pool_size(pool: *const MemoryPool) -> usize {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return 0;
    };
    guard(0, || pool.size())
}

/// Percentage (0 to 100) of the pool handed out; -1.0 for a NULL pool, so
/// the caller can tell "no pool" from "empty pool".
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_CUSTOM);
/// unsafe {
///     let half = lle_pool_allocate(pool, 2048);
///     assert_eq!(lle_calculate_pool_utilization(pool), 50.0);
///     lle_pool_free(pool, half);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_calculate_pool_utilization(pool: *const MemoryPool) -> f64 {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return -1.0;
    };
    guard(-1.0, || pool.utilization())
}

/// Copies the pool's statistics into `*out`. `*out` is left untouched on
/// failure.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_CUSTOM);
/// let mut stats = LlePoolStatistics::default();
/// unsafe {
///     let block = lle_pool_allocate(pool, 100);
///     assert_eq!(lle_get_pool_statistics(pool, &mut stats), LleResult::Success);
///     assert_eq!((stats.size, stats.used, stats.live_allocations), (4096, 112, 1));
///     assert_eq!(lle_get_pool_statistics(pool, std::ptr::null_mut()), LleResult::ErrorNullPointer);
///     lle_pool_free(pool, block);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`];
/// `out` must be NULL or valid for writing one `lle_pool_statistics_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_get_pool_statistics(pool: *const MemoryPool, out: *mut LlePoolStatistics) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    if out.is_null() {
        return LleResult::ErrorNullPointer;
    }
    guard(LleResult::ErrorInternal, || {
        let stats = LlePoolStatistics::from(&pool.stats());
        // SAFETY: `out` is non-NULL and valid for writes per the contract;
        // `write` does not read or drop the old (possibly uninitialised) value.
        unsafe { out.write(stats) };
        LleResult::Success
    })
}

/// C `LLE_NO_LIMIT` (`SIZE_MAX`): no soft limit, or no maximum size, in
/// [`LleMemoryPressureEvent`] and [`lle_pool_set_soft_limit`].
pub const LLE_NO_LIMIT: usize = usize::MAX;
/// C `LLE_PRESSURE_SOFT_LIMIT`: [`PressureReason::SoftLimit`].
pub const LLE_PRESSURE_SOFT_LIMIT: c_uint = 0;
/// C `LLE_PRESSURE_MAX_SIZE`: [`PressureReason::MaxSize`].
pub const LLE_PRESSURE_MAX_SIZE: c_uint = 1;

/// C `lle_memory_pressure_event_t`: mirrors [`PressureEvent`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let event = LleMemoryPressureEvent::default();
/// assert_eq!((event.soft_limit, event.reason), (LLE_NO_LIMIT, LLE_PRESSURE_SOFT_LIMIT));
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LleMemoryPressureEvent {
    /// Bytes in use when the callback is called.
    pub used: usize,
    /// The soft limit, or [`LLE_NO_LIMIT`].
    pub soft_limit: usize,
    /// The maximum size, or [`LLE_NO_LIMIT`].
    pub max_size: usize,
    /// For [`LLE_PRESSURE_MAX_SIZE`], the bytes the refused allocation
    /// asked for; 0 otherwise.
    pub requested: usize,
    /// [`LLE_PRESSURE_SOFT_LIMIT`] or [`LLE_PRESSURE_MAX_SIZE`].
    pub reason: c_uint,
}

impl Default for LleMemoryPressureEvent {
    fn default() -> Self {
        LleMemoryPressureEvent {
            used: 0,
            soft_limit: LLE_NO_LIMIT,
            max_size: LLE_NO_LIMIT,
            requested: 0,
            reason: LLE_PRESSURE_SOFT_LIMIT,
        }
    }
}

impl From<&PressureEvent> for LleMemoryPressureEvent {
    fn from(event: &PressureEvent) -> Self {
        let (reason, requested) = match event.reason {
            PressureReason::SoftLimit => (LLE_PRESSURE_SOFT_LIMIT, 0),
            PressureReason::MaxSize { requested } => (LLE_PRESSURE_MAX_SIZE, requested),
        };
        LleMemoryPressureEvent {
            used: event.used,
            soft_limit: event.soft_limit.unwrap_or(LLE_NO_LIMIT),
            max_size: event.max_size.unwrap_or(LLE_NO_LIMIT),
            requested,
            reason,
        }
    }
}

/// C `lle_memory_pressure_fn`: told of memory pressure, with the
/// `user_data` it was set with.
pub type LleMemoryPressureFn = unsafe extern "C" fn(event: *const LleMemoryPressureEvent, user_data: *mut c_void);

/// The `user_data` of a C callback, carried to whichever thread calls it.
struct UserData(*mut c_void);

impl UserData {
    /// The pointer, read through a method so that a closure captures the
    /// whole `UserData` (which is `Send`), not the raw pointer in it.
    fn get(&self) -> *mut c_void {
        self.0
    }
}

// SAFETY: the pool never dereferences the pointer; it only hands it back to
// the C callback, and the header makes the caller promise that the callback
// may be called with it on any thread that uses the pool.
unsafe impl Send for UserData {}
// SAFETY: as above: shared, it is only copied out and passed to C.
unsafe impl Sync for UserData {}

/// Sets the pool's memory-pressure callback, replacing the one set before;
/// `callback` NULL removes it. It is called, with `user_data`, when an
/// allocation takes the bytes in use above the soft limit (see
/// [`lle_pool_set_soft_limit`]), once per crossing, and when the maximum
/// size refuses an allocation, before the pool retries it once (see
/// [`MemoryPool::on_memory_pressure`]). It runs on the allocating thread,
/// outside the pool's lock: it may free and allocate from the pool, but
/// must not set the callback. Once this returns, the previous callback is
/// not running and will not be called again.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// use std::ffi::c_void;
///
/// unsafe extern "C" fn count(event: *const LleMemoryPressureEvent, calls: *mut c_void) {
///     assert_eq!(unsafe { (*event).reason }, LLE_PRESSURE_SOFT_LIMIT);
///     unsafe { *calls.cast::<usize>() += 1 };
/// }
///
/// let pool = lle_create_memory_pool(64 * 1024, 0, LLE_POOL_EVENT);
/// let mut calls = 0usize;
/// unsafe {
///     let user_data = (&mut calls as *mut usize).cast::<c_void>();
///     assert_eq!(lle_pool_set_memory_pressure_callback(pool, Some(count), user_data), LleResult::Success);
///     assert_eq!(lle_pool_set_soft_limit(pool, 1024), LleResult::Success);
///     let block = lle_pool_allocate(pool, 2048);
///     assert_eq!(calls, 1);
///     lle_pool_set_memory_pressure_callback(pool, None, std::ptr::null_mut());
///     lle_pool_free(pool, block);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
/// `callback`, if not NULL, must be safe to call with `user_data` on any
/// thread that uses the pool, until it is replaced or the pool destroyed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_set_memory_pressure_callback(
    pool: *mut MemoryPool,
    callback: Option<LleMemoryPressureFn>,
    user_data: *mut c_void,
) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    guard(LleResult::ErrorInternal, || {
        let callback = callback.map(|callback| {
            let user_data = UserData(user_data);
            Box::new(move |event: &PressureEvent| {
                let event = LleMemoryPressureEvent::from(event);
                // SAFETY: the caller of `lle_pool_set_memory_pressure_callback`
                // promised that `callback` may be called with `user_data` on
                // this thread; `event` lives across the call.
                unsafe { callback(&event, user_data.get()) };
            }) as Box<dyn Fn(&PressureEvent) + Send + Sync>
        });
        pool.inner.shared.pressure.replace(callback);
        LleResult::Success
    })
}

/// Sets the pool's soft limit in bytes (see [`PoolConfig::soft_limit`]);
/// [`LLE_NO_LIMIT`] removes it. `LLE_ERROR_INVALID_CONFIG` for a limit above
/// the pool's maximum size.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool(4096, 0, LLE_POOL_EVENT);
/// unsafe {
///     assert_eq!(lle_pool_set_soft_limit(pool, 2048), LleResult::Success);
///     assert_eq!(lle_pool_set_soft_limit(pool, LLE_NO_LIMIT), LleResult::Success);
///     assert_eq!(lle_pool_set_soft_limit(std::ptr::null_mut(), 0), LleResult::ErrorNullPointer);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_set_soft_limit(pool: *mut MemoryPool, soft_limit: usize) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    let soft_limit = (soft_limit != LLE_NO_LIMIT).then_some(soft_limit);
    guard(LleResult::ErrorInternal, || pool.set_soft_limit(soft_limit).into())
}

/// C `LLE_DAMAGE_OVERFLOW`: [`DamageKind::Overflow`].
pub const LLE_DAMAGE_OVERFLOW: c_uint = 0;
/// C `LLE_DAMAGE_WRITE_AFTER_FREE`: [`DamageKind::WriteAfterFree`].
pub const LLE_DAMAGE_WRITE_AFTER_FREE: c_uint = 1;

/// C `lle_block_damage_t`: mirrors [`BlockDamage`].
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let damage = LleBlockDamage { block: std::ptr::null_mut(), size: 20, usable: 32, offset: 20, kind: LLE_DAMAGE_OVERFLOW };
/// assert_eq!(damage.usable - damage.size, 12);
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LleBlockDamage {
    /// The damaged block.
    pub block: *mut c_void,
    /// The bytes asked for it (for a write after free, by the allocation
    /// that was about to receive it).
    pub size: usize,
    /// The bytes the block spans, guard bytes included.
    pub usable: usize,
    /// The first damaged byte, as an offset from `block`.
    pub offset: usize,
    /// [`LLE_DAMAGE_OVERFLOW`] or [`LLE_DAMAGE_WRITE_AFTER_FREE`].
    pub kind: c_uint,
}

impl From<&BlockDamage> for LleBlockDamage {
    fn from(damage: &BlockDamage) -> Self {
        // Deliberately no wildcard arm, as for `PoolError`: a new kind needs
        // its own C value.
        let kind = match damage.kind {
            DamageKind::Overflow => LLE_DAMAGE_OVERFLOW,
            DamageKind::WriteAfterFree => LLE_DAMAGE_WRITE_AFTER_FREE,
        };
        LleBlockDamage {
            block: damage.addr as *mut c_void,
            size: damage.size,
            usable: damage.usable,
            offset: damage.offset,
            kind,
        }
    }
}

/// C `lle_corruption_fn`: told of a damaged block, with the `user_data` it
/// was set with.
pub type LleCorruptionFn = unsafe extern "C" fn(damage: *const LleBlockDamage, user_data: *mut c_void);

/// Sets where a checked pool (see [`LLE_POOL_FLAG_CHECKED`]) reports a
/// write after free, replacing the callback set before; `callback` NULL
/// removes it. The allocation that finds a freed block written calls it,
/// with `user_data`, quarantines the block and goes on with another; with
/// no callback, that allocation returns NULL instead (and the library
/// writes the damage to standard error). It runs on the allocating thread,
/// outside the pool's locks (see [`MemoryPool::on_corruption`]): it may
/// allocate from and free to the pool, but must not set the callback. Once
/// this returns, the previous callback is not running and will not be
/// called again. An unchecked pool keeps the callback and never calls it.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// use std::ffi::c_void;
///
/// unsafe extern "C" fn note(damage: *const LleBlockDamage, seen: *mut c_void) {
///     unsafe { *seen.cast::<LleBlockDamage>() = *damage };
/// }
///
/// let pool = lle_create_memory_pool_with_flags(1 << 20, 0, LLE_POOL_EVENT, LLE_POOL_FLAG_CHECKED);
/// let mut seen = LleBlockDamage { block: std::ptr::null_mut(), size: 0, usable: 0, offset: 0, kind: 0 };
/// unsafe {
///     let user_data = (&mut seen as *mut LleBlockDamage).cast::<c_void>();
///     assert_eq!(lle_pool_set_corruption_callback(pool, Some(note), user_data), LleResult::Success);
///     let event = lle_pool_allocate_fast(pool, 64).cast::<u8>();
///     assert_eq!(lle_pool_free_fast(pool, event.cast()), LleResult::Success);
///     event.add(40).write(1); // a write after free
///     let next = lle_pool_allocate_fast(pool, 64);
///     assert!(!next.is_null() && next != event.cast());
///     assert_eq!((seen.block, seen.offset, seen.kind), (event.cast(), 40, LLE_DAMAGE_WRITE_AFTER_FREE));
///     assert_eq!(lle_pool_set_corruption_callback(std::ptr::null_mut(), None, user_data), LleResult::ErrorNullPointer);
///     lle_pool_set_corruption_callback(pool, None, std::ptr::null_mut());
///     lle_pool_free_fast(pool, next);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`].
/// `callback`, if not NULL, must be safe to call with `user_data` on any
/// thread that uses the pool, until it is replaced or the pool destroyed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_set_corruption_callback(
    pool: *mut MemoryPool,
    callback: Option<LleCorruptionFn>,
    user_data: *mut c_void,
) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    guard(LleResult::ErrorInternal, || {
        let handler = callback.map(|callback| {
            let user_data = UserData(user_data);
            CorruptionHandler::new(move |damage: &BlockDamage| {
                let damage = LleBlockDamage::from(damage);
                // SAFETY: the caller of `lle_pool_set_corruption_callback`
                // promised that `callback` may be called with `user_data` on
                // this thread; `damage` lives across the call.
                unsafe { callback(&damage, user_data.get()) };
            })
        });
        pool.inner.guards.replace_corruption_handler(handler);
        LleResult::Success
    })
}

/// Writes a summary of the pool's live blocks (see
/// [`write_leak_report`](crate::write_leak_report)) to the file descriptor
/// `fd`, unless it is negative, and stores how many there are in
/// `*live_blocks`, if it is not NULL. Only checked pools know their live
/// blocks (see [`LLE_POOL_FLAG_CHECKED`]): `LLE_ERROR_INVALID_CONFIG` for
/// any other. `LLE_ERROR_INVALID_PARAMETER` if the report could not be
/// written, after `*live_blocks` is set; `LLE_ERROR_OUT_OF_MEMORY` if the
/// list's memory could not be had.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// let pool = lle_create_memory_pool_with_flags(1 << 20, 0, LLE_POOL_CUSTOM, LLE_POOL_FLAG_CHECKED);
/// let unchecked = lle_create_memory_pool(1 << 20, 0, LLE_POOL_CUSTOM);
/// let mut live = 0;
/// unsafe {
///     assert_eq!(lle_pool_report_leaks(unchecked, -1, &mut live), LleResult::ErrorInvalidConfig);
///     lle_destroy_memory_pool(unchecked);
///     let block = lle_pool_allocate_fast(pool, 24);
///     assert_eq!(lle_pool_report_leaks(pool, -1, &mut live), LleResult::Success);
///     assert_eq!(live, 1);
///     lle_pool_free_fast(pool, block);
///     assert_eq!(lle_pool_report_leaks(pool, -1, &mut live), LleResult::Success);
///     assert_eq!(live, 0);
///     assert_eq!(lle_pool_report_leaks(std::ptr::null(), -1, &mut live), LleResult::ErrorNullPointer);
///     lle_destroy_memory_pool(pool);
/// }
/// ```
///
/// # Safety
///
/// `pool` must be NULL or a live pointer from [`lle_create_memory_pool`] or
/// [`lle_create_memory_pool_with_flags`];
/// `fd` negative or a file descriptor open for the whole call;
/// `live_blocks` NULL or valid for writing one `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lle_pool_report_leaks(
    pool: *const MemoryPool,
    fd: c_int,
    live_blocks: *mut usize,
) -> LleResult {
    // SAFETY: forwarded from this function's contract.
    let Some(pool) = (unsafe { pool_ref(pool) }) else {
        return LleResult::ErrorNullPointer;
    };
    guard(LleResult::ErrorInternal, || {
        let blocks = match pool.live_blocks() {
            Ok(blocks) => blocks,
            Err(error) => return LleResult::from(&error),
        };
        if !live_blocks.is_null() {
            // SAFETY: non-NULL, so valid for writes per the contract.
            unsafe { live_blocks.write(blocks.len()) };
        }
        if fd < 0 {
            return LleResult::Success;
        }
        // SAFETY: the caller keeps `fd` open for the whole call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // A descriptor of our own, so that writing through a `File` and
        // dropping it leaves the caller's open.
        let written = fd
            .try_clone_to_owned()
            .and_then(|owned| crate::write_leak_report(&blocks, std::io::BufWriter::new(File::from(owned))));
        match written {
            Ok(()) => LleResult::Success,
            Err(_) => LleResult::ErrorInvalidParameter,
        }
    })
}

/// Rounds `size` up to a multiple of `alignment` (a power of two). Returns 0
/// if `alignment` is not a power of two or the result would overflow; note
/// that `size == 0` also gives 0.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// assert_eq!(lle_align_memory_size(13, 8), 16);
/// assert_eq!(lle_align_memory_size(usize::MAX - 3, 16), 0);
/// assert_eq!(lle_align_memory_size(10, 3), 0);
/// ```
///
/// # Safety
///
/// None: any argument values are accepted.
#[unsafe(no_mangle)]
pub extern "C" fn lle_align_memory_size(size: usize, alignment: usize) -> usize {
    guard(0, || align_up(size, alignment).unwrap_or(0))
}

/// Limits `size` to `min_size..=max_size`. If `min_size > max_size`,
/// `max_size` wins, as with `MIN(MAX(size, min_size), max_size)`: a
/// caller's upper bound is the one that protects memory.
///
/// # Examples
///
/// ```
/// use lle_mempool::capi::*;
/// assert_eq!(lle_clamp_size(5, 16, 64), 16);
/// assert_eq!(lle_clamp_size(100, 16, 64), 64);
/// assert_eq!(lle_clamp_size(32, 16, 64), 32);
/// assert_eq!(lle_clamp_size(32, 64, 16), 16);
/// assert_eq!(lle_clamp_size(usize::MAX, 1, 10), 10);
/// ```
///
/// # Safety
///
/// None: any argument values are accepted.
#[unsafe(no_mangle)]
pub extern "C" fn lle_clamp_size(size: usize, min_size: usize, max_size: usize) -> usize {
    // `max` then `min`, not Rust's `clamp`: `clamp` panics on an inverted
    // range, a caller bug that C has no way to hear about.
    guard(max_size, || size.max(min_size).min(max_size))
}
