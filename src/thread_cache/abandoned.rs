//! Slabs whose threads exited with blocks still out.
//!
//! An exiting thread cannot wait for its blocks to come home, so it leaves
//! each slab that still has live blocks here ([`abandon`]). Other threads
//! of the same pool take such slabs over when they need a slab of the class
//! ([`adopt`]), and `compact` gives back those whose blocks have all come
//! home, and the free pages inside the rest ([`reclaim`]). While a slab is listed, the list's lock stands in for
//! its owner: whoever holds the lock may use the slab's owner-only state.
//!
//! Abandoning runs at thread exit and must not fail, so the list never
//! grows then: room for every slab of the pool is reserved when a slab is
//! made ([`reserve`]), while its maker can still be told.
//!
//! [`abandon`]: AbandonedSlabs::abandon
//! [`adopt`]: AbandonedSlabs::adopt
//! [`reclaim`]: AbandonedSlabs::reclaim
//! [`reserve`]: AbandonedSlabs::reserve

use crate::slab::{OwnedSlab, Slab, SlabOwner};
#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::sync::{lock, Mutex};
use std::collections::TryReserveError;

pub(super) struct AbandonedSlabs {
    slabs: Mutex<Vec<*mut Slab>>,
}

/// The list held locked across a `fork()` (see `fork`).
#[cfg(not(lle_mempool_model))]
pub(crate) type AbandonedHold<'a> = MutexGuard<'a, Vec<*mut Slab>>;

// SAFETY: the slab pointers are only dereferenced under the lock, which
// owns the listed slabs.
unsafe impl Send for AbandonedSlabs {}
// SAFETY: as above.
unsafe impl Sync for AbandonedSlabs {}

/// The owner's view of a listed slab.
///
/// # Safety
/// `slab` must be in the list, and the caller must hold its lock for `'a`.
unsafe fn listed_view<'a>(slab: *mut Slab) -> OwnedSlab<'a> {
    // SAFETY: listed slabs are mapped, and the lock holder has their
    // owner's rights.
    unsafe { OwnedSlab::new(slab) }
}

impl AbandonedSlabs {
    pub(super) fn new() -> Self {
        AbandonedSlabs { slabs: Mutex::new(Vec::new()) }
    }

    /// Makes room for `slabs` slabs in all, so that abandoning that many
    /// needs no memory.
    pub(super) fn reserve(&self, slabs: usize) -> Result<(), TryReserveError> {
        let mut listed = lock(&self.slabs);
        let missing = slabs.saturating_sub(listed.len());
        listed.try_reserve(missing)
    }

    /// Leaves `slab` here for other threads, owned by nobody.
    ///
    /// # Safety
    /// The caller gives the slab up: nothing of its own (a ring, a filter,
    /// a view) refers to the slab afterwards. Room for it was reserved.
    pub(super) unsafe fn abandon(&self, slab: OwnedSlab<'_>) {
        let mut listed = lock(&self.slabs);
        slab.set_owner(None);
        debug_assert!(listed.len() < listed.capacity(), "room is reserved for every slab");
        listed.push(slab.as_ptr());
    }

    /// Takes over a listed slab of `class` that has a free block, for
    /// `owner` on the calling thread, and returns the new owner's view.
    /// Remote frees that arrived while it was listed are collected.
    pub(super) fn adopt(&self, class: usize, owner: SlabOwner) -> Option<OwnedSlab<'_>> {
        let mut listed = lock(&self.slabs);
        let position = listed.iter().position(|&slab| {
            // SAFETY: listed, and the lock is held.
            let slab = unsafe { listed_view(slab) };
            // What `pop` can take once the remote frees are collected: a
            // remote free arriving after the collection lands on the
            // thread-free list, which `pop` does not read.
            slab.class() == class && {
                slab.collect_remote();
                slab.has_block_to_pop()
            }
        })?;
        // SAFETY: as above; once the owner is set below, the slab is the
        // calling thread's, for as long as the pool lives.
        let slab = unsafe { listed_view(listed.swap_remove(position)) };
        slab.set_owner(Some(owner));
        Some(slab)
    }

    /// Hands every listed slab whose blocks have all come home to
    /// `release`, out of the list by then, and purges the free pages inside
    /// the slabs that stay.
    pub(super) fn reclaim(&self, mut release: impl FnMut(OwnedSlab<'_>)) {
        let mut listed = lock(&self.slabs);
        listed.retain(|&slab| {
            // SAFETY: listed, and the lock is held.
            let slab = unsafe { listed_view(slab) };
            slab.collect_remote();
            let home = slab.used() == 0;
            if home {
                release(slab);
            } else {
                slab.purge_free_pages();
            }
            !home
        });
    }

    /// Holds the list across a `fork()`, so that no thread is changing it
    /// at the fork.
    #[cfg(not(lle_mempool_model))]
    pub(super) fn hold_for_fork(&self) -> AbandonedHold<'_> {
        lock(&self.slabs)
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::slab::test_support::SlabMemory;
    use crate::slab::{BlockRecords, OwnedSlab};

    /// Abandons `slab` with `live` of its blocks still out (freed by "other
    /// threads" later), returning them.
    fn abandon_with(list: &AbandonedSlabs, slab: OwnedSlab<'_>, live: usize) -> Vec<std::ptr::NonNull<u8>> {
        let blocks = (0..live).map(|_| slab.pop().unwrap()).collect();
        // SAFETY: the test gives the slab up and only touches it again
        // through the list.
        unsafe { list.abandon(slab) };
        blocks
    }

    #[test]
    fn adoption_takes_a_slab_of_the_class_with_room_and_makes_it_the_adopters() {
        let memory = SlabMemory::many(2);
        // SAFETY: fresh slab memory, the test's alone.
        let (full, other) = unsafe {
            (
                Slab::create(memory.base(0), 4, None, BlockRecords::None),
                Slab::create(memory.base(1), 7, None, BlockRecords::None),
            )
        };
        // A full slab needs blocks back before it has room.
        let full_blocks: Vec<_> = std::iter::from_fn(|| full.pop()).collect();
        let list = AbandonedSlabs::new();
        list.reserve(3).unwrap();
        let live = abandon_with(&list, other, 1);
        // SAFETY: as in `abandon_with`.
        unsafe { list.abandon(full) };
        let heap = 1u8;
        let owner = SlabOwner::of(&heap);
        assert!(list.adopt(4, owner).is_none(), "the class-4 slab is full, the other is of class 7");

        // SAFETY: a handed-out block of the full slab, given up.
        unsafe { full.push_remote(full_blocks[0]) };
        let adopted = list.adopt(4, owner).expect("a remote free made room");
        assert_eq!(adopted.as_ptr(), full.as_ptr());
        assert_eq!(adopted.owner(), Some(owner));
        assert!(adopted.owned_by_current_thread().is_some());
        assert_eq!(adopted.pop(), Some(full_blocks[0]), "the remote free was collected");
        assert!(list.adopt(4, owner).is_none(), "adopted slabs leave the list");
        // SAFETY: a handed-out block of the other slab, given up.
        unsafe { other.push_remote(live[0]) };
        assert_eq!(list.adopt(7, owner).map(OwnedSlab::as_ptr), Some(other.as_ptr()));
    }

    #[test]
    fn reclaiming_releases_exactly_the_slabs_whose_blocks_came_home() {
        let memory = SlabMemory::many(3);
        let slabs = memory.slabs(2);
        let list = AbandonedSlabs::new();
        list.reserve(slabs.len()).unwrap();
        let out: Vec<Vec<_>> =
            slabs.iter().zip([0, 2, 1]).map(|(&slab, live)| abandon_with(&list, slab, live)).collect();
        let mut released = Vec::new();
        list.reclaim(|slab| released.push(slab.as_ptr()));
        assert_eq!(released, [slabs[0].as_ptr()], "only the slab with nothing out");

        for &block in &out[1] {
            // SAFETY: handed out, given up.
            unsafe { slabs[1].push_remote(block) };
        }
        // SAFETY: as above.
        unsafe { slabs[2].push_remote(out[2][0]) };
        released.clear();
        list.reclaim(|slab| {
            assert_eq!(slab.used(), 0);
            released.push(slab.as_ptr());
        });
        released.sort();
        let mut expected = vec![slabs[1].as_ptr(), slabs[2].as_ptr()];
        expected.sort();
        assert_eq!(released, expected);
        list.reclaim(|_| panic!("the list is empty"));
    }
}
