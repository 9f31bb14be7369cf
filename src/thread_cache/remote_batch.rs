//! Blocks a thread freed into one slab it does not own, chained through
//! their first words and not yet handed to the slab.
//!
//! A consumer thread frees runs of blocks that a producer carved one after
//! another from the same slab; handing each over with its own
//! compare-and-swap on a line the owner keeps taking back would pay a
//! cache-line transfer per block. Batching pays one per run (snmalloc's
//! remote-deallocation cache does the same). The batch is bounded, handed
//! over when a block of another slab arrives, and whenever its heap asks
//! (when its thread refills a slab, calls `compact`, or exits); until then
//! its blocks count as in use, so their slab can be neither released nor
//! reclaimed.
//!
//! A forked child hands over the batches of threads that did not survive
//! the fork, which may have stopped at any instruction of [`add`] or
//! [`hand_over`] (see `fork`). So the batch is valid after every prefix of
//! their stores: `slab` is what says the batch holds blocks, published
//! after the chain it names is complete and cleared before that chain
//! goes to the slab; a block is linked to the chain before it becomes its
//! `first`. Only `len` may trail the chain, by the block being added, so
//! the child counts the chain instead ([`hand_over_counted`]): a slab must
//! learn exactly how many blocks came home. A thread stopped partway leaks
//! at most what it was moving, the block it was adding or the chain it was
//! handing over (nobody holds them; their slab stays unreclaimed), and
//! never hands a block over twice.
//!
//! [`add`]: RemoteBatch::add
//! [`hand_over`]: RemoteBatch::hand_over
//! [`hand_over_counted`]: RemoteBatch::hand_over_counted

use crate::slab::{chain_length, link, Slab};
use crate::sync::{compiler_fence, Ordering};
use std::cell::Cell;
use std::ptr::{self, NonNull};

/// Blocks a batch collects for one slab before handing them over with a
/// single compare-and-swap.
pub(super) const REMOTE_BATCH_LIMIT: u32 = 64;

pub(super) struct RemoteBatch {
    /// The slab the blocks belong to; null for an empty batch. While it is
    /// not null, `first`, `last` and `len` describe a whole chain.
    slab: Cell<*const Slab>,
    /// The block freed last: the chain runs from it to `last`.
    first: Cell<*mut u8>,
    /// The block freed first, whose link gets the slab's list.
    last: Cell<*mut u8>,
    len: Cell<u32>,
}

impl RemoteBatch {
    pub(super) const fn new() -> Self {
        RemoteBatch {
            slab: Cell::new(ptr::null()),
            first: Cell::new(ptr::null_mut()),
            last: Cell::new(ptr::null_mut()),
            len: Cell::new(0),
        }
    }

    /// Adds `block`, just freed into `slab`, handing the batch over first
    /// if it holds another slab's blocks, and after if it is full.
    ///
    /// # Safety
    /// `block` must be a handed-out block of `slab`, which the caller gives
    /// up.
    #[inline]
    pub(super) unsafe fn add(&self, slab: &Slab, block: NonNull<u8>) {
        let len = if !ptr::eq(self.slab.get(), slab) {
            self.hand_over();
            // A chain of one, whole before `slab` says the batch has it.
            self.first.set(block.as_ptr());
            self.last.set(block.as_ptr());
            self.len.set(1);
            compiler_fence(Ordering::Release);
            self.slab.set(slab);
            1
        } else {
            // SAFETY: the caller gives `block` up, so this thread alone
            // holds it; the batch's first block is live in the batch.
            unsafe { link(block, NonNull::new_unchecked(self.first.get())) };
            // Linked before it heads the chain.
            compiler_fence(Ordering::Release);
            self.first.set(block.as_ptr());
            let len = self.len.get() + 1;
            self.len.set(len);
            len
        };
        if len >= REMOTE_BATCH_LIMIT {
            self.hand_over();
        }
    }

    /// Hands the batch to its slab, if there is one.
    pub(super) fn hand_over(&self) {
        self.hand_over_with(|| {
            let len = self.len.get();
            // SAFETY: as in `hand_over_counted`; this thread's own batch.
            debug_assert_eq!(len, unsafe { chain_length(self.first.get(), self.last.get()) });
            len
        });
    }

    /// [`hand_over`](Self::hand_over) for a batch whose thread may have
    /// stopped at any instruction (in a forked child): counts the blocks on
    /// the chain rather than trusting `len`.
    #[cfg(not(lle_mempool_model))]
    pub(super) fn hand_over_counted(&self) {
        self.hand_over_with(|| {
            // SAFETY: called while `slab` is set, so `first` and `last`
            // name a whole chain of freed blocks (see the module docs),
            // which nobody else reads or writes.
            unsafe { chain_length(self.first.get(), self.last.get()) }
        });
    }

    /// Hands the batch over as a chain of `length()` blocks.
    fn hand_over_with(&self, length: impl FnOnce() -> u32) {
        if self.slab.get().is_null() {
            return;
        }
        let len = length();
        let slab = self.slab.replace(ptr::null());
        // Empty before the chain leaves: a thread stopped from here on
        // leaves a batch that hands nothing over again.
        compiler_fence(Ordering::Release);
        debug_assert!(self.len.get() > 0 && !self.first.get().is_null() && !self.last.get().is_null());
        self.len.set(0);
        // SAFETY: the batch's blocks still count as used in `slab`, so the
        // slab is mapped and not reused; `first` and `last` are non-null
        // while `slab` is (see the field), and `add` linked `first` to
        // `last` through blocks of the slab that the caller of `add` gave
        // up.
        unsafe {
            (*slab).push_remote_chain(
                NonNull::new_unchecked(self.first.replace(ptr::null_mut())),
                NonNull::new_unchecked(self.last.replace(ptr::null_mut())),
                len,
            )
        };
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::slab::test_support::SlabMemory;
    use crate::slab::OwnedSlab;

    /// Takes `count` blocks of `slab`, each holding its index past its link.
    fn take(slab: OwnedSlab<'_>, count: usize) -> Vec<NonNull<u8>> {
        (0..count)
            .map(|index| {
                let block = slab.pop().unwrap();
                // SAFETY: a live 16-byte block of the test's slab.
                unsafe { block.as_ptr().add(8).write(index as u8) };
                block
            })
            .collect()
    }

    /// The blocks the slab's owner gets back by collecting, in order.
    fn collected(slab: OwnedSlab<'_>) -> Vec<NonNull<u8>> {
        let before = slab.used();
        if !slab.collect_remote() {
            return Vec::new();
        }
        (0..before - slab.used()).map(|_| slab.pop().unwrap()).collect()
    }

    #[test]
    fn a_batch_reaches_its_slab_whole_when_another_slab_comes() {
        let memory = SlabMemory::many(2);
        let slabs = memory.slabs(0);
        let (first, second) = (take(slabs[0], 3), take(slabs[1], 1));
        let batch = RemoteBatch::new();
        for &block in &first {
            // SAFETY: handed out above and given up here.
            unsafe { batch.add(&slabs[0], block) };
        }
        assert!(collected(slabs[0]).is_empty(), "nothing handed over while the batch collects");
        assert_eq!(slabs[0].used(), 3);
        // SAFETY: as above.
        unsafe { batch.add(&slabs[1], second[0]) };
        // The chain comes back newest first, every block intact past its
        // link.
        let back = collected(slabs[0]);
        assert_eq!(back, [first[2], first[1], first[0]]);
        for (block, index) in back.iter().zip([2u8, 1, 0]) {
            // SAFETY: handed out again by the slab.
            assert_eq!(unsafe { block.as_ptr().add(8).read() }, index);
        }
        batch.hand_over();
        assert_eq!(collected(slabs[1]), second);
        batch.hand_over();
        assert!(collected(slabs[1]).is_empty(), "handing over an empty batch does nothing");
    }

    /// The state a thread leaves when it stops after the first `stores`
    /// of the stores `add` makes for `block`, in `add`'s order: for a block
    /// of another slab than the batch's (after handing the batch over),
    /// `first`, `last`, `len`, `slab`; for a block of the batch's slab, the
    /// block's link, `first`, `len`.
    fn add_stopped_after(batch: &RemoteBatch, slab: &Slab, block: NonNull<u8>, stores: usize) {
        if !ptr::eq(batch.slab.get(), slab) {
            batch.hand_over();
            let steps: [&dyn Fn(); 4] = [
                &|| batch.first.set(block.as_ptr()),
                &|| batch.last.set(block.as_ptr()),
                &|| batch.len.set(1),
                &|| batch.slab.set(slab),
            ];
            steps.iter().take(stores).for_each(|step| step());
        } else {
            let steps: [&dyn Fn(); 3] = [
                // SAFETY: a block the test gave up, and the batch's first
                // block is live in the batch.
                &|| unsafe { link(block, NonNull::new_unchecked(batch.first.get())) },
                &|| batch.first.set(block.as_ptr()),
                &|| batch.len.set(batch.len.get() + 1),
            ];
            steps.iter().take(stores).for_each(|step| step());
        }
    }

    /// The state a thread leaves when it stops after the first `stores` of
    /// `hand_over`'s stores: `slab`, `len`, `first`, `last`, then the chain
    /// onto the slab.
    fn hand_over_stopped_after(batch: &RemoteBatch, stores: usize) {
        if stores >= 5 {
            batch.hand_over();
            return;
        }
        let steps: [&dyn Fn(); 4] =
            [&|| batch.slab.set(ptr::null()), &|| batch.len.set(0), &|| batch.first.set(ptr::null_mut()), &|| {
                batch.last.set(ptr::null_mut())
            }];
        steps.iter().take(stores).for_each(|step| step());
    }

    /// Whether every block in `blocks` still holds its index past its link.
    fn intact(blocks: &[NonNull<u8>], indices: impl IntoIterator<Item = usize>) -> bool {
        // SAFETY: blocks handed out again by their slab.
        blocks.iter().zip(indices).all(|(block, index)| unsafe { block.as_ptr().add(8).read() } == index as u8)
    }

    #[test]
    fn a_batch_left_by_a_thread_stopped_in_add_hands_over_exactly_its_whole_blocks() {
        for stores in 0..=4 {
            // A batch of two blocks of the first slab, then a block of the
            // second: the first two reach their slab whatever the stop.
            let memory = SlabMemory::many(2);
            let slabs = memory.slabs(0);
            let (first, second) = (take(slabs[0], 2), take(slabs[1], 1));
            let batch = RemoteBatch::new();
            for &block in &first {
                // SAFETY: handed out above and given up here.
                unsafe { batch.add(&slabs[0], block) };
            }
            add_stopped_after(&batch, &slabs[1], second[0], stores);
            // What the forked child does with the heap's batch.
            batch.hand_over_counted();
            let back = collected(slabs[0]);
            assert_eq!(back, [first[1], first[0]], "stopped after {stores} stores");
            assert!(intact(&back, [1, 0]));
            let expected = if stores == 4 { second.clone() } else { Vec::new() };
            assert_eq!(collected(slabs[1]), expected, "stopped after {stores} stores: the block is whole or leaked");
            batch.hand_over();
            assert!(collected(slabs[0]).is_empty() && collected(slabs[1]).is_empty(), "nothing handed over twice");
        }
        for stores in 0..=3 {
            // A block of the batch's own slab, after two.
            let memory = SlabMemory::new();
            let slab = memory.slabs(0)[0];
            let blocks = take(slab, 3);
            let batch = RemoteBatch::new();
            for &block in &blocks[..2] {
                // SAFETY: handed out above and given up here.
                unsafe { batch.add(&slab, block) };
            }
            add_stopped_after(&batch, &slab, blocks[2], stores);
            batch.hand_over_counted();
            let back = collected(slab);
            let expected: &[NonNull<u8>] =
                if stores >= 2 { &[blocks[2], blocks[1], blocks[0]] } else { &[blocks[1], blocks[0]] };
            assert_eq!(back, expected, "stopped after {stores} stores");
            assert!(intact(&back, (0..back.len()).rev()));
            batch.hand_over();
            assert!(collected(slab).is_empty(), "nothing handed over twice");
        }
    }

    #[test]
    fn a_batch_left_by_a_thread_stopped_in_hand_over_never_hands_a_block_twice() {
        for stores in 0..=5 {
            let memory = SlabMemory::new();
            let slab = memory.slabs(0)[0];
            let blocks = take(slab, 2);
            let batch = RemoteBatch::new();
            for &block in &blocks {
                // SAFETY: handed out above and given up here.
                unsafe { batch.add(&slab, block) };
            }
            hand_over_stopped_after(&batch, stores);
            // What the forked child does with the heap's batch.
            batch.hand_over_counted();
            let back = collected(slab);
            // Stopped after emptying the batch and before the chain went
            // out: the two blocks are leaked.
            let expected: &[NonNull<u8>] = if (1..5).contains(&stores) { &[] } else { &[blocks[1], blocks[0]] };
            assert_eq!(back, expected, "stopped after {stores} stores");
            assert!(intact(&back, [1, 0]));
            batch.hand_over();
            assert!(collected(slab).is_empty(), "nothing handed over twice");
        }
    }

    #[test]
    fn a_full_batch_is_handed_over_by_itself() {
        let memory = SlabMemory::new();
        let slab = memory.slabs(0)[0];
        let blocks = take(slab, REMOTE_BATCH_LIMIT as usize + 1);
        let batch = RemoteBatch::new();
        for &block in &blocks[..REMOTE_BATCH_LIMIT as usize - 1] {
            // SAFETY: handed out above and given up here.
            unsafe { batch.add(&slab, block) };
        }
        assert!(collected(slab).is_empty());
        // SAFETY: as above.
        unsafe { batch.add(&slab, blocks[REMOTE_BATCH_LIMIT as usize - 1]) };
        assert_eq!(collected(slab).len(), REMOTE_BATCH_LIMIT as usize, "the limit-th block sends the batch");
        // SAFETY: as above.
        unsafe { batch.add(&slab, blocks[REMOTE_BATCH_LIMIT as usize]) };
        batch.hand_over();
        assert_eq!(collected(slab), [blocks[REMOTE_BATCH_LIMIT as usize]], "a fresh batch after the full one");
    }
}
