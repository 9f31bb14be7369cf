//! A heap's filter of the slabs it owns: proof of ownership from
//! thread-local memory alone.
//!
//! The inline free asks the filter whether the slab a pointer falls in is
//! one of its heap's, instead of asking the pool's slab map and the slab's
//! owner: one load from memory the thread already holds. The filter is a
//! direct-mapped set of slab headers, one entry per slab-sized chunk number
//! modulo its length. An entry holding a header in the pointer's chunk is
//! the proof, and the header is the answer; a collision evicts the older
//! slab, which only sends its frees to the full path.

use crate::slab::{Slab, DATA_OFFSET, SLAB_SIZE};
use std::cell::Cell;

/// Entries in the filter; a power of two. 512 cover 32 MiB of slabs
/// without a collision (4 KiB per heap), so that a server thread whose
/// live blocks span a few hundred slabs (the larson benchmark's do) keeps
/// its frees on the inline path.
const ENTRIES: usize = 512;
/// An empty entry: in chunk 0, past every place a header takes there, so
/// no address finds it (the test in `slab_of`).
const NO_SLAB: usize = SLAB_SIZE - 1;
const _: () = assert!(NO_SLAB >= DATA_OFFSET);

pub(super) struct OwnedFilter {
    entries: [Cell<usize>; ENTRIES],
}

/// The entry for the slab whose chunk holds `address`.
#[inline(always)]
fn entry_of(address: usize) -> usize {
    (address >> SLAB_SIZE.trailing_zeros()) & (ENTRIES - 1)
}

impl OwnedFilter {
    pub(super) const fn new() -> Self {
        OwnedFilter { entries: [const { Cell::new(NO_SLAB) }; ENTRIES] }
    }

    /// The header of the slab that `address` lies in, if the filter holds
    /// that slab.
    #[inline(always)]
    pub(super) fn slab_of(&self, address: usize) -> Option<usize> {
        let header = self.entries[entry_of(address)].get();
        // A header lies in the first `DATA_OFFSET` bytes of its chunk.
        (header.wrapping_sub(address & !(SLAB_SIZE - 1)) < DATA_OFFSET).then_some(header)
    }

    /// Records the slab whose header is at `header`, evicting whichever
    /// shares its entry.
    pub(super) fn insert(&self, header: usize) {
        debug_assert_eq!(Slab::header_address(header), header);
        self.entries[entry_of(header)].set(header);
    }

    /// Drops the slab whose header is at `header`, which may or may not be
    /// held.
    pub(super) fn forget(&self, header: usize) {
        let entry = &self.entries[entry_of(header)];
        if entry.get() == header {
            entry.set(NO_SLAB);
        }
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    const BASE: usize = 0x7f00_0000_0000;

    #[test]
    fn every_address_of_a_held_slab_finds_it_and_no_other_does() {
        let filter = OwnedFilter::new();
        for address in [0, 1, 64, DATA_OFFSET - 1, NO_SLAB, BASE] {
            assert_eq!(filter.slab_of(address), None, "a new filter holds nothing: {address:#x}");
        }
        let chunk = BASE + 3 * SLAB_SIZE;
        let header = Slab::header_address(chunk);
        assert_ne!(header, chunk, "the third chunk's header is not at its start");
        filter.insert(header);
        for offset in [0, 1, header - chunk, SLAB_SIZE / 2, SLAB_SIZE - 1] {
            assert_eq!(filter.slab_of(chunk + offset), Some(header));
        }
        assert_eq!(filter.slab_of(chunk - 1), None, "the chunk before");
        assert_eq!(filter.slab_of(chunk + SLAB_SIZE), None, "the chunk after");
    }

    #[test]
    fn a_colliding_slab_evicts_and_forgetting_spares_the_other() {
        let filter = OwnedFilter::new();
        let (first, colliding) = (Slab::header_address(BASE), Slab::header_address(BASE + ENTRIES * SLAB_SIZE));
        filter.insert(first);
        filter.insert(colliding);
        assert_eq!(filter.slab_of(first), None, "evicted by the slab sharing its entry");
        assert_eq!(filter.slab_of(colliding), Some(colliding));
        filter.forget(first);
        assert_eq!(filter.slab_of(colliding), Some(colliding), "forgetting an evicted slab keeps the entry");
        filter.forget(colliding);
        assert_eq!(filter.slab_of(colliding), None);
    }
}
