//! What can go wrong, as values.

use crate::guard::BlockDamage;
use std::fmt;

/// Why a pool operation was refused.
///
/// Every refusal leaves the pool exactly as it was: [`MemoryPool::check`]
/// passes afterwards and the pool stays usable. The one exception is an
/// allocation that the maximum size refuses: before refusing it, the pool
/// has compacted (given free memory back, as [`MemoryPool::compact`] does)
/// and tried once more (see [`MemoryPool::on_memory_pressure`]).
///
/// [`MemoryPool::check`]: crate::MemoryPool::check
/// [`MemoryPool::compact`]: crate::MemoryPool::compact
/// [`MemoryPool::on_memory_pressure`]: crate::MemoryPool::on_memory_pressure
///
/// # Examples
///
/// ```
/// use lle_mempool::{MemoryPool, PoolError};
///
/// let pool = MemoryPool::new(64 * 1024)?;
/// assert_eq!(pool.allocate(0), Err(PoolError::ZeroSize));
/// assert!(matches!(pool.allocate_aligned(64, 3), Err(PoolError::InvalidAlignment { align: 3 })));
///
/// // A second free and an address the pool never handed out look the same.
/// let block = pool.allocate(64)?;
/// let never_handed_out = unsafe { block.add(4096) };
/// unsafe { pool.free(block)? };
/// let addr = block.as_ptr() as usize;
/// assert_eq!(unsafe { pool.free(block) }, Err(PoolError::NotAllocated { addr }));
/// let addr = never_handed_out.as_ptr() as usize;
/// assert_eq!(unsafe { pool.free(never_handed_out) }, Err(PoolError::NotAllocated { addr }));
/// # Ok::<(), PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// A size of zero bytes was asked for.
    ZeroSize,
    /// The size, once rounded up to the pool's granule or alignment, does
    /// not fit in `usize` or exceeds the largest block a pool can hold.
    SizeOverflow {
        /// The size asked for.
        size: usize,
    },
    /// The alignment is zero or not a power of two.
    InvalidAlignment {
        /// The alignment asked for.
        align: usize,
    },
    /// The alignment is a power of two, but larger than the pool supports.
    AlignmentTooLarge {
        /// The alignment asked for.
        align: usize,
    },
    /// The pointer does not lie in any of this pool's regions.
    ForeignPointer {
        /// The pointer's address.
        addr: usize,
    },
    /// The pointer lies inside a live block but not at its start.
    InteriorPointer {
        /// The pointer's address.
        addr: usize,
    },
    /// The pointer lies in the pool but no live block starts there: a double
    /// free, or an address the pool never handed out. The pool cannot tell
    /// the two apart: freed space merges with the free space around it, so
    /// once a block is freed nothing records that a block ever started at
    /// its address.
    NotAllocated {
        /// The pointer's address.
        addr: usize,
    },
    /// Growing would take the pool past its configured maximum size. For an
    /// allocation, this is the answer after the pool compacted, called its
    /// memory-pressure callbacks and tried once more.
    ExceedsMaxSize {
        /// The size the pool would have reached.
        requested: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A resize asked for less than the bytes in live blocks.
    ShrinkBelowUsed {
        /// The size asked for.
        requested: usize,
        /// Bytes in use.
        used: usize,
    },
    /// A resize asked for a size that live blocks prevent: free space is not
    /// at the ends of regions, and live blocks never move.
    ShrinkBlocked {
        /// The size asked for.
        requested: usize,
        /// The smallest size reachable without moving a live block.
        reachable: usize,
    },
    /// The operating system refused memory, for blocks or for the
    /// bookkeeping that comes with them (free-block indexes, region tables).
    OutOfMemory {
        /// Bytes of the operation that needed the memory (the growth, or
        /// the region whose bookkeeping was refused).
        requested: usize,
        /// The `errno` it gave.
        errno: i32,
    },
    /// The configuration is unusable.
    InvalidConfig {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`MemoryPool::check`](crate::MemoryPool::check) found a broken
    /// invariant.
    Corrupted {
        /// Which invariant, and where.
        reason: String,
    },
    /// A [checked](crate::PoolConfig::checked) pool found a block's guard
    /// bytes overwritten: an overflow, found when the block was freed. The
    /// block is quarantined.
    BlockCorrupted {
        /// The block and its damage; boxed, so that every `PoolError` stays
        /// three words, which the hot paths return in registers.
        block: Box<BlockDamage>,
    },
    /// The calling thread is already inside an operation of this pool that
    /// holds its lock: a signal handler, or an allocator that calls back
    /// into the pool, interrupted it. The operation was refused rather than
    /// let two callers change the pool at once.
    Reentered,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::ZeroSize => write!(f, "cannot allocate zero bytes"),
            PoolError::SizeOverflow { size } => {
                write!(f, "size {size} overflows when rounded up to the pool's alignment")
            }
            PoolError::InvalidAlignment { align } => {
                write!(f, "alignment {align} is not a non-zero power of two")
            }
            PoolError::AlignmentTooLarge { align } => {
                write!(f, "alignment {align} is larger than the pool supports")
            }
            PoolError::ForeignPointer { addr } => {
                write!(f, "pointer {addr:#x} does not belong to this pool")
            }
            PoolError::InteriorPointer { addr } => {
                write!(f, "pointer {addr:#x} points inside a block, not at its start")
            }
            PoolError::NotAllocated { addr } => {
                write!(f, "pointer {addr:#x} is not a live block: freed already, or never handed out")
            }
            PoolError::ExceedsMaxSize { requested, max } => {
                write!(f, "growing to {requested} bytes would exceed the pool's maximum of {max} bytes")
            }
            PoolError::ShrinkBelowUsed { requested, used } => {
                write!(f, "cannot shrink to {requested} bytes: {used} bytes are in use")
            }
            PoolError::ShrinkBlocked { requested, reachable } => write!(
                f,
                "cannot shrink to {requested} bytes without moving live blocks; {reachable} bytes is the smallest reachable size"
            ),
            PoolError::OutOfMemory { requested, errno } => write!(
                f,
                "the operating system refused {requested} bytes ({})",
                std::io::Error::from_raw_os_error(*errno)
            ),
            PoolError::InvalidConfig { reason } => write!(f, "invalid pool configuration: {reason}"),
            PoolError::Corrupted { reason } => write!(f, "pool invariant broken: {reason}"),
            PoolError::BlockCorrupted { block } => write!(f, "{block}"),
            PoolError::Reentered => {
                write!(f, "the pool was re-entered by a thread already inside one of its operations")
            }
        }
    }
}

impl std::error::Error for PoolError {}

// Every fallible pool call returns one: a larger error costs the shared
// pool's allocation and free a few percent in copies.
const _: () = assert!(std::mem::size_of::<PoolError>() <= 3 * std::mem::size_of::<usize>());

impl From<crate::biased_lock::Reentered> for PoolError {
    fn from(_: crate::biased_lock::Reentered) -> Self {
        PoolError::Reentered
    }
}
