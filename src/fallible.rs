//! Memory the pool allocates for its own bookkeeping, as a `Result`.
//!
//! Whatever grows with the pool (free-block indexes, region tables) is
//! allocated here, so that running out of memory reaches the caller as
//! [`PoolError::OutOfMemory`] instead of aborting the process, and the pool
//! is left as it was.

use crate::error::PoolError;
use std::collections::TryReserveError;

/// The error for bookkeeping memory the heap refused. The request's size is
/// unknown by the time the heap refuses, so `requested` is the size of the
/// operation that needed the memory.
pub(crate) fn out_of_memory(requested: usize) -> PoolError {
    PoolError::OutOfMemory { requested, errno: libc::ENOMEM }
}

/// A vector of exactly `len` items taken from `items` (which must yield at
/// least that many), in memory reserved up front: the only allocation is the
/// one that can fail.
pub(crate) fn try_collect<T>(len: usize, items: impl IntoIterator<Item = T>) -> Result<Vec<T>, TryReserveError> {
    let mut collected = Vec::new();
    collected.try_reserve_exact(len)?;
    collected.extend(items.into_iter().take(len));
    debug_assert_eq!(collected.len(), len, "the items ran out before the reserved length");
    Ok(collected)
}

/// As [`try_collect`], as a boxed slice. Reserving exactly `len` makes the
/// conversion free: a vector whose capacity equals its length is not
/// reallocated.
pub(crate) fn try_boxed_slice<T>(len: usize, items: impl IntoIterator<Item = T>) -> Result<Box<[T]>, TryReserveError> {
    let collected = try_collect(len, items)?;
    debug_assert_eq!(collected.capacity(), collected.len());
    Ok(collected.into_boxed_slice())
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    #[test]
    fn collects_exactly_the_reserved_length() {
        assert_eq!(try_collect(3, 10..).unwrap(), vec![10, 11, 12]);
        let boxed = try_boxed_slice(4, std::iter::repeat(7u32)).unwrap();
        assert_eq!(&*boxed, &[7, 7, 7, 7]);
        assert!(try_collect::<u64>(usize::MAX / 4, std::iter::repeat(0)).is_err());
    }
}
