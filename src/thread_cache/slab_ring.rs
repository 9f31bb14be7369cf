//! A heap's ring of slabs of one size class, one of them current.
//!
//! Allocation pops the current slab; when it runs dry, the heap looks
//! around the ring for another slab with a free block before it takes a
//! new one. The ring is intrusive: its links live in the slabs' headers,
//! reached through [`OwnedSlab`], so it costs no memory of its own and
//! never allocates.
//!
//! Every slab in a ring is owned by the thread that uses the ring (it came
//! in as an `OwnedSlab` of that thread, and the ring, like the heap that
//! holds it, never leaves its thread); that is what lets the ring hand out
//! owners' views of its slabs. A slab leaves the ring only through
//! [`remove`](SlabRing::remove) or [`take_all`](SlabRing::take_all), before
//! its owner gives it up.

use crate::slab::{OwnedSlab, Slab};
use std::cell::Cell;
use std::ptr;

pub(super) struct SlabRing {
    /// The slab allocation pops from, null for an empty ring. Whenever it
    /// changes, the slabs' `current` marks change with it.
    current: Cell<*mut Slab>,
}

impl SlabRing {
    pub(super) const fn new() -> Self {
        SlabRing { current: Cell::new(ptr::null_mut()) }
    }

    /// An owner's view of `slab`, a slab of this ring.
    #[inline(always)]
    fn view(&self, slab: *mut Slab) -> OwnedSlab<'_> {
        debug_assert!(!slab.is_null());
        // SAFETY: slabs in the ring are owned by the thread using it (see
        // the module docs) and stay mapped while they are in it.
        unsafe { OwnedSlab::new(slab) }
    }

    /// The current slab; `None` while the ring is empty.
    #[inline(always)]
    pub(super) fn current(&self) -> Option<OwnedSlab<'_>> {
        let current = self.current.get();
        (!current.is_null()).then(|| self.view(current))
    }

    /// Links `slab`, which is in no ring, in after the current slab, which
    /// stays current; into an empty ring, as its current slab.
    pub(super) fn insert(&self, slab: OwnedSlab<'_>) {
        match self.current() {
            None => {
                slab.set_links(slab.as_ptr(), slab.as_ptr());
                slab.set_current(true);
                self.current.set(slab.as_ptr());
            }
            Some(current) => {
                let after = self.view(current.next());
                slab.set_links(current.as_ptr(), after.as_ptr());
                after.set_previous(slab.as_ptr());
                current.set_next(slab.as_ptr());
            }
        }
    }

    /// Makes `slab`, a slab of this ring, the current one.
    pub(super) fn make_current(&self, slab: OwnedSlab<'_>) {
        debug_assert!(self.holds(slab), "making a slab current that is not in the ring");
        if let Some(previous) = self.current() {
            previous.set_current(false);
        }
        slab.set_current(true);
        self.current.set(slab.as_ptr());
    }

    /// Unlinks `slab`, a slab of this ring that is not current.
    pub(super) fn remove(&self, slab: OwnedSlab<'_>) {
        debug_assert!(!slab.is_current() && self.holds(slab), "removing a current slab, or one not in the ring");
        let (previous, next) = (self.view(slab.previous()), self.view(slab.next()));
        previous.set_next(next.as_ptr());
        next.set_previous(previous.as_ptr());
    }

    /// The first of the (at most `limit`) slabs after the current one, in
    /// ring order, for which `visit` returns something, and what it
    /// returned.
    pub(super) fn find_after_current<'a, R>(
        &'a self,
        limit: usize,
        mut visit: impl FnMut(OwnedSlab<'a>) -> Option<R>,
    ) -> Option<R> {
        let current = self.current()?;
        let mut candidate = self.view(current.next());
        let mut scanned = 0;
        while candidate.as_ptr() != current.as_ptr() && scanned < limit {
            if let Some(found) = visit(candidate) {
                return Some(found);
            }
            candidate = self.view(candidate.next());
            scanned += 1;
        }
        None
    }

    /// Hands every slab of the ring, the current one first, to `visit`.
    pub(super) fn for_each(&self, mut visit: impl FnMut(OwnedSlab<'_>)) {
        let Some(current) = self.current() else { return };
        visit(current);
        self.find_after_current(usize::MAX, |slab| {
            visit(slab);
            None::<()>
        });
    }

    /// Empties the ring, handing every slab, out of the ring by then, to
    /// `take`, which may give it up.
    pub(super) fn take_all(&self, mut take: impl FnMut(OwnedSlab<'_>)) {
        let Some(first) = self.current() else { return };
        first.set_current(false);
        self.current.set(ptr::null_mut());
        let first = first.as_ptr();
        let mut slab = first;
        loop {
            let view = self.view(slab);
            // Read before `take` may give the slab up.
            let next = view.next();
            take(view);
            if next == first {
                break;
            }
            slab = next;
        }
    }

    /// Whether `slab` is in the ring: a walk, for debug assertions.
    fn holds(&self, slab: OwnedSlab<'_>) -> bool {
        let Some(current) = self.current() else { return false };
        let mut candidate = current;
        loop {
            if candidate.as_ptr() == slab.as_ptr() {
                return true;
            }
            candidate = self.view(candidate.next());
            if candidate.as_ptr() == current.as_ptr() {
                return false;
            }
        }
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::slab::test_support::SlabMemory;

    /// The ring's slabs from the current one on, by their index in `slabs`.
    fn order(ring: &SlabRing, slabs: &[OwnedSlab<'_>]) -> Vec<usize> {
        let index = |slab: OwnedSlab<'_>| slabs.iter().position(|known| known.as_ptr() == slab.as_ptr()).unwrap();
        let Some(current) = ring.current() else { return Vec::new() };
        let mut found = vec![index(current)];
        ring.find_after_current(usize::MAX, |slab| {
            found.push(index(slab));
            None::<()>
        });
        found
    }

    #[test]
    fn slabs_join_after_the_current_one_and_leave_in_place() {
        let memory = SlabMemory::many(4);
        let slabs: Vec<OwnedSlab<'_>> = memory.slabs(2);
        let ring = SlabRing::new();
        assert!(ring.current().is_none());

        ring.insert(slabs[0]);
        assert_eq!(ring.current().map(OwnedSlab::as_ptr), Some(slabs[0].as_ptr()), "the first slab is current");
        assert!(slabs[0].is_current());
        for &slab in &slabs[1..] {
            ring.insert(slab);
            assert!(!slab.is_current());
        }
        // Each joined right after the current slab, so the last came first.
        assert_eq!(order(&ring, &slabs), [0, 3, 2, 1]);

        ring.make_current(slabs[2]);
        assert!(slabs[2].is_current() && !slabs[0].is_current(), "one current mark, on the current slab");
        assert_eq!(order(&ring, &slabs), [2, 1, 0, 3]);

        ring.remove(slabs[0]);
        assert_eq!(order(&ring, &slabs), [2, 1, 3]);
        ring.remove(slabs[1]);
        ring.remove(slabs[3]);
        assert_eq!(order(&ring, &slabs), [2]);
        assert_eq!((slabs[2].next(), slabs[2].previous()), (slabs[2].as_ptr(), slabs[2].as_ptr()));
    }

    #[test]
    fn a_search_stops_at_the_limit_or_the_first_find() {
        let memory = SlabMemory::many(5);
        let slabs: Vec<OwnedSlab<'_>> = memory.slabs(0);
        let ring = SlabRing::new();
        for &slab in slabs.iter().rev() {
            ring.insert(slab);
        }
        ring.make_current(slabs[4]);
        // Ring order from the current slab: 4, 0, 1, 2, 3.
        let mut seen = Vec::new();
        let found = ring.find_after_current(2, |slab| {
            seen.push(slab.as_ptr());
            None::<()>
        });
        assert_eq!((found, seen), (None, vec![slabs[0].as_ptr(), slabs[1].as_ptr()]));
        let found = ring.find_after_current(10, |slab| (slab.as_ptr() == slabs[2].as_ptr()).then_some(2));
        assert_eq!(found, Some(2));
        assert_eq!(ring.find_after_current(10, |_| None::<()>), None, "the current slab is never visited");
    }

    #[test]
    fn taking_all_empties_the_ring_and_clears_the_current_mark() {
        let memory = SlabMemory::many(3);
        let slabs: Vec<OwnedSlab<'_>> = memory.slabs(5);
        let ring = SlabRing::new();
        for &slab in &slabs {
            ring.insert(slab);
        }
        ring.make_current(slabs[1]);
        let mut taken = Vec::new();
        ring.take_all(|slab| {
            assert!(!slab.is_current());
            taken.push(slab.as_ptr());
        });
        assert_eq!(taken, [slabs[1].as_ptr(), slabs[0].as_ptr(), slabs[2].as_ptr()]);
        assert!(ring.current().is_none());
        ring.take_all(|_| panic!("an empty ring has nothing to take"));
    }
}
