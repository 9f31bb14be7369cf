//! A heap's filter of the slabs it owns: proof of ownership from
//! thread-local memory alone.
//!
//! The inline free asks the filter whether the slab a pointer falls in is
//! one of its heap's, instead of asking the pool's slab map and the slab's
//! owner: one load from memory the thread already holds. The filter is a
//! direct-mapped set of slab addresses, one entry per slab-sized chunk
//! number modulo its length. An entry equal to a pointer's slab address is
//! the proof; a collision evicts the older slab, which only sends its frees
//! to the full path.

use crate::slab::SLAB_SIZE;
use std::cell::Cell;

/// Entries in the filter; a power of two. 512 cover 32 MiB of slabs
/// without a collision (4 KiB per heap), so that a server thread whose
/// live blocks span a few hundred slabs (the larson benchmark's do) keeps
/// its frees on the inline path.
const ENTRIES: usize = 512;
/// An empty entry: no slab starts at an odd address.
const NO_SLAB: usize = 1;

pub(super) struct OwnedFilter {
    entries: [Cell<usize>; ENTRIES],
}

/// The entry for the slab at `slab_address`.
#[inline(always)]
fn entry_of(slab_address: usize) -> usize {
    (slab_address >> SLAB_SIZE.trailing_zeros()) & (ENTRIES - 1)
}

impl OwnedFilter {
    pub(super) const fn new() -> Self {
        OwnedFilter { entries: [const { Cell::new(NO_SLAB) }; ENTRIES] }
    }

    /// The address of the slab that `address` lies in, if the filter holds
    /// that slab.
    #[inline(always)]
    pub(super) fn slab_of(&self, address: usize) -> Option<usize> {
        let slab_address = address & !(SLAB_SIZE - 1);
        (self.entries[entry_of(slab_address)].get() == slab_address).then_some(slab_address)
    }

    /// Records the slab at `slab_address`, evicting whichever shares its
    /// entry.
    pub(super) fn insert(&self, slab_address: usize) {
        debug_assert_eq!(slab_address % SLAB_SIZE, 0);
        self.entries[entry_of(slab_address)].set(slab_address);
    }

    /// Drops the slab at `slab_address`, which may or may not be held.
    pub(super) fn forget(&self, slab_address: usize) {
        let entry = &self.entries[entry_of(slab_address)];
        if entry.get() == slab_address {
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
        assert_eq!(filter.slab_of(BASE), None, "a new filter holds nothing");
        filter.insert(BASE + 3 * SLAB_SIZE);
        for offset in [0, 1, SLAB_SIZE / 2, SLAB_SIZE - 1] {
            assert_eq!(filter.slab_of(BASE + 3 * SLAB_SIZE + offset), Some(BASE + 3 * SLAB_SIZE));
        }
        assert_eq!(filter.slab_of(BASE + 2 * SLAB_SIZE + SLAB_SIZE - 1), None, "the chunk before");
        assert_eq!(filter.slab_of(BASE + 4 * SLAB_SIZE), None, "the chunk after");
        assert_eq!(filter.slab_of(NO_SLAB), None, "the empty marker is no slab");
    }

    #[test]
    fn a_colliding_slab_evicts_and_forgetting_spares_the_other() {
        let filter = OwnedFilter::new();
        let (first, colliding) = (BASE, BASE + ENTRIES * SLAB_SIZE);
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
