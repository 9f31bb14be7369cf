//! A region: one anonymous mapping and the free-block index over it.
//!
//! A region's base never changes and its memory never moves. The pool's
//! writers hold each region as a [`MappedRegion`]: the mapping, which it
//! owns and which only writers touch, and a [`Region`], the description that
//! lock-free readers see. A description's length and index are fixed for
//! its life: growing or trimming a region in place changes the mapping where
//! it stands and builds a new description for the same base, which is
//! published, while readers that still hold the old one keep reading it
//! until the epoch collector frees it (see `shared_pool`). A region removed
//! whole is retired with its mapping, which is unmapped only then.

use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::free_index::{FreeIndex, GRANULE};
use crate::model_cells::ReclaimWitness;
use crate::os;
use std::cell::Cell;
use std::collections::TryReserveError;
use std::ops::Deref;
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
    /// The same mapping described with a new length, after the caller grew it
    /// in place or before it cuts the tail; the new part is free. Fails when
    /// the heap refuses the new index, and then the mapping is the caller's
    /// to restore.
    pub(crate) fn with_len(&self, len: usize) -> Result<Region, TryReserveError> {
        debug_assert!(len > 0 && len % os::page_size() == 0);
        let index = self.index.resized(len / GRANULE)?;
        Ok(Region { base: self.base, len, index, witness: ReclaimWitness::new() })
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

/// A region as the pool's writers hold it: the mapping, and the description
/// of it that readers see. Dropping it unmaps the memory, so a removed
/// region is dropped only once no reader can hold its description.
pub(crate) struct MappedRegion {
    /// Boxed so that its address, which published tables hold, survives the
    /// pool's vector of regions reallocating or shifting.
    description: Box<Region>,
    /// At least as long as the description says: a tail that the kernel
    /// refused to cut stays here, purged (see [`os::Mapping::cut_back`]);
    /// and it may hold address space reserved past that, to grow into.
    mapping: os::Mapping,
    /// The offset (a page boundary) from which the region's memory has
    /// never been handed out nor faulted in: every page past it is fresh,
    /// and its first write would fault (see [`fault_in_ahead`](Self::fault_in_ahead)).
    /// Only writers touch it, under the pool's lock.
    fresh_from: Cell<usize>,
}

/// How much fresh memory a block that reaches it has faulted in at once,
/// ahead of the blocks that will follow it there: first fit hands out a
/// region's memory from the bottom up, so a pool filling up takes one system
/// call per this many bytes instead of a fault per page. It bounds what is
/// resident beyond the blocks handed out, per region.
const FAULT_AHEAD: usize = 256 << 10;

impl MappedRegion {
    /// Maps a fresh region of `len` bytes (a whole number of pages), all
    /// free, with up to `reserve` bytes of address space reserved for it to
    /// grow into (see [`os::Mapping::new`]), asking for transparent huge
    /// pages with `huge_pages`. The index is built first, so that the heap
    /// refusing it maps nothing.
    pub(crate) fn map(len: usize, reserve: usize, huge_pages: bool) -> Result<MappedRegion, PoolError> {
        let index = FreeIndex::new(len / GRANULE).map_err(|_| out_of_memory(len))?;
        let mapping = os::Mapping::new(len, reserve, huge_pages)
            .map_err(|os::OsError(errno)| PoolError::OutOfMemory { requested: len, errno })?;
        let description = Box::new(Region { base: mapping.base(), len, index, witness: ReclaimWitness::new() });
        Ok(MappedRegion { description, mapping, fresh_from: Cell::new(0) })
    }

    /// Whether growing to `new_len` bytes stays inside the address space
    /// the mapping holds already, so that it only commits pages.
    pub(crate) fn has_room_for(&self, new_len: usize) -> bool {
        new_len <= self.mapping.reserved()
    }

    /// Grows the mapping to `new_len` bytes where it stands, for a
    /// description of that length to be published. `false`, with nothing
    /// changed, when the kernel has no room after it or no memory to commit.
    pub(crate) fn grow_in_place(&mut self, new_len: usize) -> bool {
        debug_assert!(new_len > self.len());
        self.mapping.grow_in_place(new_len)
    }

    /// Cuts the mapping back to `len` bytes, at once: readers that still
    /// hold a longer description read its index, never the memory.
    ///
    /// # Safety
    /// The bytes past `len` must be free memory that the current description,
    /// or the one published next, leaves out, and that the slab map does not
    /// mark as the pool's.
    pub(crate) unsafe fn cut_back(&mut self, len: usize) {
        debug_assert!(len <= self.len());
        // SAFETY: the caller guarantees nobody uses the bytes cut off.
        unsafe { self.mapping.cut_back(len) };
        self.fresh_from.set(self.fresh_from.get().min(len));
    }

    /// Called for a block just handed out that ends at offset `end`: if it
    /// reaches fresh memory, faults in the fresh pages up to
    /// [`FAULT_AHEAD`] past the first of them, in one call. A block that
    /// reaches further than that (a large one, whose caller may never
    /// write it all) moves the mark past itself and faults nothing in: its
    /// pages fault as they are written, as they would without this.
    pub(crate) fn fault_in_ahead(&self, end: usize) {
        let fresh = self.fresh_from.get();
        if end <= fresh {
            return;
        }
        let page = os::page_size();
        if end - fresh <= FAULT_AHEAD {
            let until = (fresh + FAULT_AHEAD).min(self.len());
            debug_assert!(until % page == 0 && until >= end);
            self.mapping.populate(fresh, until - fresh);
            self.fresh_from.set(until);
        } else {
            self.fresh_from.set(end.next_multiple_of(page).min(self.len()));
        }
    }

    /// Purges `addr..addr + len`, whole pages inside the region.
    ///
    /// # Safety
    /// The range must hold no data anybody still needs.
    pub(crate) unsafe fn purge(&self, addr: NonNull<u8>, len: usize) {
        debug_assert!(self.contains(addr.as_ptr() as usize) && addr.as_ptr() as usize + len <= self.end());
        // SAFETY: inside the mapping, which is at least as long as the
        // description; the caller guarantees the rest.
        unsafe { self.mapping.purge(addr.as_ptr() as usize - self.start(), len) };
    }

    /// Puts `description` (of this region's mapping, as it stands now) in
    /// place of the current one, which is returned for retiring.
    pub(crate) fn replace_description(&mut self, description: Box<Region>) -> Box<Region> {
        debug_assert!(description.base == self.description.base && description.len <= self.mapping.len());
        std::mem::replace(&mut self.description, description)
    }
}

impl Deref for MappedRegion {
    type Target = Region;

    fn deref(&self) -> &Region {
        &self.description
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
