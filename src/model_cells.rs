//! Plain memory made visible to the loom models.
//!
//! loom checks only its own atomics and cells. Two kinds of plain memory
//! matter to the pool's correctness: the links threads hand to one another
//! inside free blocks, and the memory lock-free readers reach through the
//! epoch-protected region table. Under `--cfg lle_mempool_loom` each gets a
//! loom cell beside it, read and written with it; elsewhere these compile to
//! nothing (or to the plain access).

/// Marks memory that lock-free readers reach through the epoch-protected
/// region table (a table, a region's description and index), so that the
/// loom models can see a use after free.
///
/// loom checks accesses to its `UnsafeCell` for causality: under
/// `--cfg lle_mempool_loom` a reader records a read of the witness each time
/// it reaches the memory, and dropping the memory records a write. If the
/// epoch scheme ever let the memory go while a reader could still be looking
/// at it, the drop would not happen after that read and loom would report
/// it. Elsewhere the witness is empty and its methods compile to nothing.
#[cfg(lle_mempool_loom)]
pub(crate) struct ReclaimWitness(loom::cell::UnsafeCell<()>);

#[cfg(lle_mempool_loom)]
impl ReclaimWitness {
    pub(crate) fn new() -> Self {
        ReclaimWitness(loom::cell::UnsafeCell::new(()))
    }

    /// A lock-free reader is looking at the memory.
    pub(crate) fn reading(&self) {
        self.0.with(|_| ());
    }
}

#[cfg(lle_mempool_loom)]
impl Drop for ReclaimWitness {
    fn drop(&mut self) {
        self.0.with_mut(|_| ());
    }
}

#[cfg(not(lle_mempool_loom))]
pub(crate) struct ReclaimWitness;

#[cfg(not(lle_mempool_loom))]
impl ReclaimWitness {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        ReclaimWitness
    }

    #[inline(always)]
    pub(crate) fn reading(&self) {}
}

/// Reads the link a free block keeps in its first word: the next block on a
/// list that threads hand to one another through the pool's atomics (a
/// slab's thread-free list).
///
/// Such a link is plain memory, so a model cannot see it by itself: an
/// ordering too weak to publish it would pass. Under `--cfg lle_mempool_loom`
/// every link therefore has a loom `UnsafeCell` beside it (see
/// `block_links`), and each read and write of the link is also a read and
/// write of that cell, which loom checks for causality. shuttle checks no
/// causality, so there, as with `std`, a link is only the word in the block.
///
/// # Safety
///
/// `link` must point to the first word of a free block whose link was
/// written (with [`write_block_link`]) since its slab was created, and that
/// word must not be written during the call.
#[inline(always)]
pub(crate) unsafe fn read_block_link<T>(link: *const *mut T) -> *mut T {
    // SAFETY: the caller guarantees that the word is a written link that
    // nothing writes meanwhile.
    let value = unsafe { link.read() };
    #[cfg(lle_mempool_loom)]
    block_links::read(link as usize, value as usize);
    value
}

/// Writes the link in a free block's first word: the next block on its
/// list. Under loom also a write of the link's cell (see
/// [`read_block_link`]).
///
/// # Safety
///
/// `link` must point to the first word of a block inside a slab that the
/// caller alone holds (freed, not on any list yet, or on a list only the
/// caller reaches).
#[inline(always)]
pub(crate) unsafe fn write_block_link<T>(link: *mut *mut T, next: *mut T) {
    #[cfg(lle_mempool_loom)]
    block_links::write(link as usize, next as usize);
    // SAFETY: the caller holds the block, which is at least a word long and
    // aligned.
    unsafe { link.write(next) };
}

/// Forgets every link kept in `start..end`, memory whose contents are
/// dropped (a slab being created, or pages of a slab purged): its blocks
/// begin with no link. Nothing without loom.
#[inline(always)]
pub(crate) fn forget_block_links(start: usize, end: usize) {
    #[cfg(lle_mempool_loom)]
    block_links::forget(start, end);
    #[cfg(not(lle_mempool_loom))]
    let _ = (start, end);
}

/// The loom cells that stand beside free blocks' links, by the link's
/// address.
///
/// The table belongs to the OS thread, like the models' memory arena in
/// `os.rs`: a loom model runs all its threads on the test's own thread, so
/// they all see one table, and accessing it adds no ordering between them
/// (a loom static would order every thread after its initialisation). Its
/// cells are loom objects of the execution that made them; each execution
/// makes its slabs anew, and making a slab forgets the cells of its memory,
/// so a link never meets a cell from an earlier execution, or from a slab
/// that its memory held before (whose hand-over to the new slab the shared
/// pool orders, not the links).
#[cfg(lle_mempool_loom)]
mod block_links {
    use loom::cell::UnsafeCell;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    std::thread_local! {
        static CELLS: RefCell<BTreeMap<usize, UnsafeCell<usize>>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// A read of the link at `address`, which holds `value`.
    pub(super) fn read(address: usize, value: usize) {
        CELLS.with(|cells| {
            let cells = cells.borrow();
            let cell = cells.get(&address);
            debug_assert!(cell.is_some(), "a free block's link is read before it was written");
            if let Some(cell) = cell {
                // SAFETY: only this module reaches the cell's value, and loom
                // checks the access's causality as it starts.
                let kept = cell.with(|kept| unsafe { *kept });
                debug_assert_eq!(kept, value, "a free block's link was overwritten outside the free lists");
            }
        });
    }

    /// A write of `value` to the link at `address`.
    pub(super) fn write(address: usize, value: usize) {
        CELLS.with(|cells| {
            let mut cells = cells.borrow_mut();
            let cell = cells.entry(address).or_insert_with(|| UnsafeCell::new(0));
            // SAFETY: only this module reaches the cell's value, and loom
            // checks the access's causality as it starts.
            cell.with_mut(|kept| unsafe { *kept = value });
        });
    }

    /// Drops the cells of the links in `start..end`.
    pub(super) fn forget(start: usize, end: usize) {
        CELLS.with(|cells| {
            let mut cells = cells.borrow_mut();
            let mut from_start = cells.split_off(&start);
            let mut from_end = from_start.split_off(&end);
            cells.append(&mut from_end);
        });
    }
}
