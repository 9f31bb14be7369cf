//! A region: one anonymous mapping and the free-block index over it.
//!
//! A region's base never changes and its memory never moves. Its length and
//! index are fixed for the life of a `Region` value: growing or trimming a
//! region in place builds a new `Region` for the same base and publishes it,
//! while readers that still hold the old one keep reading it until the epoch
//! collector frees it (see `shared_pool`).

use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::free_index::{FreeIndex, GRANULE};
use crate::model_cells::ReclaimWitness;
use crate::os;
use std::collections::TryReserveError;
use std::ptr::NonNull;

pub(crate) struct Region {
    base: NonNull<u8>,
    len: usize,
    pub(crate) index: FreeIndex,
    /// Lets the loom models catch a reader using a retired region.
    pub(crate) witness: ReclaimWitness,
}

// SAFETY: a Region is a description of memory (an address, a length and an
// index made of atomics); the memory itself is handed out as raw pointers,
// so sharing the description between threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above; every shared-access method reads atomics only.
unsafe impl Sync for Region {}

impl Region {
    /// Maps a fresh region of `len` bytes (a whole number of pages), all free.
    /// The index is built first, so that the heap refusing it leaves nothing
    /// to undo.
    pub(crate) fn map(len: usize) -> Result<Region, PoolError> {
        let index = FreeIndex::new(len / GRANULE).map_err(|_| out_of_memory(len))?;
        let base = os::map(len).map_err(|os::OsError(errno)| PoolError::OutOfMemory { requested: len, errno })?;
        Ok(Region { base, len, index, witness: ReclaimWitness::new() })
    }

    /// The same mapping described with a new length, after the caller grew it
    /// in place or before it trims the tail; the new part is free. Fails when
    /// the heap refuses the new index, and then the mapping is the caller's
    /// to restore.
    pub(crate) fn with_len(&self, len: usize) -> Result<Region, TryReserveError> {
        debug_assert!(len > 0 && len % os::page_size() == 0);
        let index = self.index.resized(len / GRANULE)?;
        Ok(Region { base: self.base, len, index, witness: ReclaimWitness::new() })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn start(&self) -> usize {
        self.base.as_ptr() as usize
    }

    pub(crate) fn end(&self) -> usize {
        self.start() + self.len
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, addr: usize) -> bool {
        (self.start()..self.end()).contains(&addr)
    }

    pub(crate) fn address_of(&self, granule: usize) -> NonNull<u8> {
        debug_assert!(granule < self.index.granules());
        // SAFETY: the granule lies inside the mapping, so the offset stays in
        // bounds of one allocated object and cannot wrap to null.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(granule * GRANULE)) }
    }

    pub(crate) fn granule_of(&self, addr: usize) -> usize {
        debug_assert!(self.contains(addr));
        (addr - self.start()) / GRANULE
    }

    /// Free bytes at the end that whole pages could give back.
    pub(crate) fn releasable_tail(&self) -> usize {
        let page = os::page_size();
        let in_use_end = self.len - self.index.trailing_free() * GRANULE;
        self.len - in_use_end.div_ceil(page) * page
    }
}

/// The regions as lock-free readers see them, sorted by address.
pub(crate) struct RegionTable {
    pub(crate) regions: Vec<*const Region>,
    /// Lets the loom models catch a reader using a retired table.
    pub(crate) witness: ReclaimWitness,
}

impl RegionTable {
    pub(crate) fn new(regions: Vec<*const Region>) -> RegionTable {
        RegionTable { regions, witness: ReclaimWitness::new() }
    }
}

// SAFETY: the pointers are to Regions (Send + Sync) kept alive by the epoch
// scheme: a table and the regions it names are retired together.
unsafe impl Send for RegionTable {}
// SAFETY: as above.
unsafe impl Sync for RegionTable {}

/// Where `addr` falls in address-sorted `regions`, if anywhere.
pub(crate) fn find_region<R: std::ops::Deref<Target = Region>>(regions: &[R], addr: usize) -> Option<usize> {
    let after = regions.partition_point(|region| region.start() <= addr);
    let candidate = after.checked_sub(1)?;
    regions[candidate].contains(addr).then_some(candidate)
}
