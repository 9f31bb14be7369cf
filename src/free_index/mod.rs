//! The free-block index of one region: which granules are free, where live
//! blocks start, and a tree that answers "leftmost free run of at least `n`
//! granules" in O(log n).
//!
//! Memory is managed in 16-byte granules. Two bitmaps, interleaved word by
//! word, record, per granule, whether it is free and whether a live block
//! starts there; a free block is a maximal run of free granules, so
//! coalescing with both neighbours is implicit. A word of the bitmaps is a
//! *leaf*: 64 granules.
//!
//! Each free run belongs to the leaf it starts in. Per leaf the index keeps
//! the length of the longest run that starts there (its whole length, even
//! where it reaches into later leaves), and above those values a 16-ary
//! max-tree: a node is sixteen 32-bit entries, one cache line, each the
//! largest value below it. The leftmost leaf whose value fits holds the
//! leftmost fitting run, because runs are ordered by their starts: descending
//! through the first fitting entry of each node is address-ordered first fit
//! in `log16` steps, each one compare of a whole node.
//!
//! Lengths are attributed to where runs start, rather than summarised per
//! node as runs touching each edge (as Go's page allocator does), so that one
//! value per entry suffices and a free or an allocation changes the values
//! of at most two leaves: the run that grew or shrank, and the run that
//! stopped or started at the block's far end. Most changes stop one or two
//! levels up, where another entry of the node is larger. A run's length is
//! found from the bitmaps; the long ones, such as the free tail of a
//! region, cross wholly free leaves, which a second hierarchy of bitmaps
//! (one bit per leaf, set when it is all free; one per word of that, and so
//! on) skips 64 at a time per level.
//!
//! Every word is an atomic: writers (serialised by the pool's lock, inside a
//! seqlock bracket) store `Relaxed`, and lock-free readers (`stats`, `check`)
//! load `Relaxed` inside a seqlock read, so no read ever races. The writer
//! alone also reads whole tree nodes as plain memory
//! ([`read_exclusive`](tree::read_exclusive)), which lets the compiler compare sixteen
//! entries at once; that is why the writer's methods are `unsafe`.
//!
//! The parts live in one file each: `scan` compares a whole node (SSE2 on
//! x86-64), `tree` keeps the longest-run tree, `whole_leaves` the wholly
//! free leaves, and `audit` recounts both from the bitmaps.

mod audit;
mod scan;
#[cfg(all(test, not(lle_mempool_model)))]
mod tests;
mod tree;
mod whole_leaves;

use crate::fallible::try_boxed_slice;
use crate::sync::{AtomicU64, Ordering};
use std::collections::TryReserveError;
use tree::Node;
use whole_leaves::whole_leaf_levels;

/// The unit of allocation: every block starts and ends on a granule.
pub(crate) const GRANULE: usize = 16;
/// Granules per leaf: one word of each bitmap, 1 KiB.
pub(crate) const LEAF_GRANULES: usize = 64;
/// The most granules one region's index covers (16 GiB), so that every run
/// length fits in 32 bits, and below 2^31 as the vector compares need.
pub(crate) const MAX_REGION_GRANULES: usize = 1 << 30;
/// Entries in one node of the longest-run tree: 64 bytes, one cache line.
const FAN_OUT: usize = 16;
const WORD_BITS: usize = 64;
/// Levels of the longest-run tree for the largest region: 2^24 leaves, six
/// levels of sixteen.
const MAX_LEVELS: usize = 6;

/// The bits below `bit` (`bit` at most 64).
#[inline]
fn bits_below(bit: usize) -> u64 {
    debug_assert!(bit <= WORD_BITS);
    if bit == WORD_BITS {
        u64::MAX
    } else {
        (1u64 << bit) - 1
    }
}

/// `word` without its lowest run of set bits.
#[inline]
fn without_lowest_run(word: u64) -> u64 {
    word & (word | word.wrapping_sub(1)).wrapping_add(1)
}

/// How many units each level of a tree over `entries` entries has, `per_unit`
/// entries a unit, from the bottom up to a level of one unit.
fn level_lengths(entries: usize, per_unit: usize) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut below = entries;
    loop {
        let units = below.div_ceil(per_unit).max(1);
        lengths.push(units);
        if units == 1 {
            return lengths;
        }
        below = units;
    }
}

/// Whether the granules on either side of a block that was just claimed or
/// released are free, which the pool's count of free runs follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FreeNeighbours {
    pub(crate) before: bool,
    pub(crate) after: bool,
}

pub(crate) struct FreeIndex {
    granules: usize,
    /// One entry per leaf: 64 granules.
    bits: Box<[LeafBits]>,
    /// The longest-run tree, its levels one after another from the bottom.
    /// Level 0, entry `i`: the longest free run that starts in leaf `i`;
    /// level `k + 1`, entry `i`: the largest entry of node `i` of level `k`.
    /// The last level is one node, and entries past the end of a level are 0.
    nodes: Box<[Node]>,
    /// Level `k` is `nodes[level_starts[k]..level_starts[k + 1]]`.
    level_starts: [usize; MAX_LEVELS + 1],
    levels: usize,
    /// Wholly free leaves. `whole[0]`, bit `i`: leaf `i` is all free;
    /// `whole[k + 1]`, bit `i`: word `i` of `whole[k]` is all ones. The last
    /// level is one word, and bits past the end of a level are 0.
    whole: Box<[Box<[AtomicU64]>]>,
}

/// A leaf's two bitmaps side by side: freeing a block reads both, and with
/// 100,000 live blocks the words are rarely in cache, so this makes one miss
/// of two.
struct LeafBits {
    /// Bit `i` set: granule `i` is free.
    free: AtomicU64,
    /// Bit `i` set: a live block starts at granule `i`.
    start: AtomicU64,
}

impl FreeIndex {
    /// An index over `granules` granules, all free. Fails, having changed
    /// nothing, when the heap refuses the index's memory.
    pub(crate) fn new(granules: usize) -> Result<FreeIndex, TryReserveError> {
        Self::with_bits(granules, |_| u64::MAX, |_| 0)
    }

    /// An index over `granules` granules whose words come from `free_word`
    /// and `start_word`; bits past the end are cleared here. Every array it
    /// builds grows with the region, so each is allocated fallibly.
    fn with_bits(
        granules: usize,
        free_word: impl Fn(usize) -> u64,
        start_word: impl Fn(usize) -> u64,
    ) -> Result<FreeIndex, TryReserveError> {
        debug_assert!(granules > 0 && granules <= MAX_REGION_GRANULES);
        let leaves = granules.div_ceil(LEAF_GRANULES);
        let tail_bits = granules % LEAF_GRANULES;
        let in_range = |leaf: usize, word: u64| {
            if leaf + 1 == leaves && tail_bits != 0 {
                word & bits_below(tail_bits)
            } else {
                word
            }
        };
        let bits: Box<[LeafBits]> = try_boxed_slice(
            leaves,
            (0..leaves).map(|leaf| LeafBits {
                free: AtomicU64::new(in_range(leaf, free_word(leaf))),
                start: AtomicU64::new(in_range(leaf, start_word(leaf))),
            }),
        )?;
        let whole = whole_leaf_levels(&bits)?;
        let mut index =
            FreeIndex { granules, bits, nodes: Box::new([]), level_starts: [0; MAX_LEVELS + 1], levels: 0, whole };
        index.build_tree()?;
        Ok(index)
    }

    /// A copy of this index covering `granules` granules: granules beyond the
    /// old end are free; granules cut off must be free already. Fails, having
    /// changed nothing, when the heap refuses the copy's memory.
    pub(crate) fn resized(&self, granules: usize) -> Result<FreeIndex, TryReserveError> {
        let old_leaves = self.bits.len();
        let old_tail = self.granules % LEAF_GRANULES;
        let grown_part = |leaf: usize| -> u64 {
            if leaf < old_leaves - 1 || (leaf == old_leaves - 1 && old_tail == 0) {
                0
            } else if leaf == old_leaves - 1 {
                !bits_below(old_tail)
            } else {
                u64::MAX
            }
        };
        let copied = |leaf: usize, word: fn(&LeafBits) -> &AtomicU64| {
            self.bits.get(leaf).map_or(0, |bits| word(bits).load(Ordering::Relaxed))
        };
        Self::with_bits(
            granules,
            |leaf| copied(leaf, |bits| &bits.free) | grown_part(leaf),
            |leaf| copied(leaf, |bits| &bits.start),
        )
    }

    pub(crate) fn granules(&self) -> usize {
        self.granules
    }

    fn leaves(&self) -> usize {
        self.bits.len()
    }

    #[inline]
    fn free_word(&self, leaf: usize) -> u64 {
        self.bits[leaf].free.load(Ordering::Relaxed)
    }

    /// The first granule from `granule` on that is not free (the region's
    /// end if there is none): the end of the free run `granule` is in, or
    /// `granule` itself when it is in use.
    #[inline(always)]
    fn free_run_end(&self, granule: usize) -> usize {
        if granule >= self.granules {
            return self.granules;
        }
        let leaf = granule / LEAF_GRANULES;
        let used_from = !self.free_word(leaf) >> (granule % LEAF_GRANULES);
        if used_from != 0 {
            // Bits past the region's end are never free, so this stops there.
            return granule + used_from.trailing_zeros() as usize;
        }
        // Most runs end in the next leaf: look there before climbing.
        let next = leaf + 1;
        if next < self.leaves() {
            let used = !self.free_word(next);
            if used != 0 {
                return next * LEAF_GRANULES + used.trailing_zeros() as usize;
            }
        }
        match self.next_partial_leaf(leaf + 1) {
            Some(next) => (next * LEAF_GRANULES + (!self.free_word(next)).trailing_zeros() as usize).min(self.granules),
            None => self.granules,
        }
    }

    /// The first granule of the free run that ends just before `granule`:
    /// the lowest `first` with `first..granule` all free.
    #[inline(always)]
    fn free_run_start(&self, granule: usize) -> usize {
        debug_assert!(granule <= self.granules);
        let leaf = granule / LEAF_GRANULES;
        let bit = granule % LEAF_GRANULES;
        if bit > 0 {
            let used_before = !self.free_word(leaf) & bits_below(bit);
            if used_before != 0 {
                return leaf * LEAF_GRANULES + WORD_BITS - used_before.leading_zeros() as usize;
            }
        }
        // Most runs start in the leaf before: look there before climbing.
        let Some(previous) = leaf.checked_sub(1) else { return 0 };
        let used = !self.free_word(previous);
        if used != 0 {
            return previous * LEAF_GRANULES + WORD_BITS - used.leading_zeros() as usize;
        }
        match self.previous_partial_leaf(previous) {
            Some(previous) => {
                previous * LEAF_GRANULES + WORD_BITS - (!self.free_word(previous)).leading_zeros() as usize
            }
            None => 0,
        }
    }

    /// The free runs that start in `leaf`: the bits of `free` that are not
    /// the tail of a run from the leaf before, and where the run touching
    /// the leaf's high end starts (`None` if no run starting here does).
    #[inline]
    fn runs_starting_in(&self, leaf: usize) -> (u64, Option<usize>) {
        let free = self.free_word(leaf);
        let continued = leaf > 0 && self.free_word(leaf - 1) >> (WORD_BITS - 1) != 0;
        let own = if continued { free & free.wrapping_add(1) } else { free };
        if own >> (WORD_BITS - 1) == 0 {
            return (own, None);
        }
        let top_start = WORD_BITS - own.leading_ones() as usize;
        (own & bits_below(top_start), Some(top_start))
    }

    fn word_and_bit(granule: usize) -> (usize, u64) {
        (granule / LEAF_GRANULES, 1u64 << (granule % LEAF_GRANULES))
    }

    pub(crate) fn is_free(&self, granule: usize) -> bool {
        let (word, bit) = Self::word_and_bit(granule);
        granule < self.granules && self.bits[word].free.load(Ordering::Relaxed) & bit != 0
    }

    pub(crate) fn is_block_start(&self, granule: usize) -> bool {
        let (word, bit) = Self::word_and_bit(granule);
        granule < self.granules && self.bits[word].start.load(Ordering::Relaxed) & bit != 0
    }

    /// Marks `first..first + count` free or in use in the bitmaps.
    #[inline(always)]
    fn set_free_bits(&self, first: usize, count: usize, free: bool) {
        debug_assert!(count > 0 && first + count <= self.granules);
        let (first_leaf, last) = (first / LEAF_GRANULES, first + count - 1);
        let last_leaf = last / LEAF_GRANULES;
        let head = u64::MAX << (first % LEAF_GRANULES);
        let tail = u64::MAX >> (WORD_BITS - 1 - last % LEAF_GRANULES);
        if first_leaf == last_leaf {
            self.set_leaf_bits(first_leaf, head & tail, free);
            return;
        }
        self.set_leaf_bits(first_leaf, head, free);
        // The leaves in between are wholly covered: each goes from all in
        // use to all free or back, so their whole-leaf bits all flip, a word
        // of them at a time.
        let fill = if free { u64::MAX } else { 0 };
        for bits in &self.bits[first_leaf + 1..last_leaf] {
            debug_assert_eq!(bits.free.load(Ordering::Relaxed), !fill, "granules already in the target state");
            bits.free.store(fill, Ordering::Relaxed);
        }
        let mut leaf = first_leaf + 1;
        while leaf < last_leaf {
            let word_end = ((leaf / WORD_BITS + 1) * WORD_BITS).min(last_leaf);
            self.note_whole(leaf, word_end, free);
            leaf = word_end;
        }
        self.set_leaf_bits(last_leaf, tail, free);
    }

    /// Marks the granules of `mask` in `leaf` free or in use.
    #[inline]
    fn set_leaf_bits(&self, leaf: usize, mask: u64, free: bool) {
        let bits = &self.bits[leaf].free;
        let old = bits.load(Ordering::Relaxed);
        debug_assert_eq!(old & mask, if free { 0 } else { mask }, "granules already in the target state");
        let new = if free { old | mask } else { old & !mask };
        bits.store(new, Ordering::Relaxed);
        if (old == u64::MAX) != (new == u64::MAX) {
            self.note_whole(leaf, leaf + 1, new == u64::MAX);
        }
    }

    /// Marks `first..end` free or in use, then returns the free run around
    /// it: the start of the one ending at `first` and the end of the one
    /// starting at `end` (`first` and `end` themselves where there is none).
    #[inline(always)]
    fn set_free_bits_and_bound(&self, first: usize, end: usize, free: bool) -> (usize, usize) {
        self.set_free_bits(first, end - first, free);
        (self.free_run_start(first), self.free_run_end(end))
    }

    /// Frees `first..first + count`, which is in use and whose granule
    /// before is free or ends a block, and updates the tree: the run it
    /// joins grows, and the run that began right after it no longer starts
    /// there.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call.
    #[inline(always)]
    unsafe fn mark_free(&self, first: usize, count: usize) -> FreeNeighbours {
        let end = first + count;
        let (run_start, run_end) = self.set_free_bits_and_bound(first, end, true);
        let start_leaf = run_start / LEAF_GRANULES;
        self.raise_longest(start_leaf, run_end - run_start);
        let right_leaf = end / LEAF_GRANULES;
        if run_end > end && right_leaf != start_leaf {
            // SAFETY: forwarded from the caller.
            unsafe { self.lower_longest(right_leaf, run_end - end) };
        }
        FreeNeighbours { before: run_start < first, after: run_end > end }
    }

    /// Takes `first..first + count`, which is free, into use and updates
    /// the tree: the run it was part of shrinks to the part before it, and
    /// the part after it is a run of its own.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call.
    #[inline(always)]
    unsafe fn mark_used(&self, first: usize, count: usize) -> FreeNeighbours {
        let end = first + count;
        let (run_start, run_end) = self.set_free_bits_and_bound(first, end, false);
        // SAFETY: forwarded from the caller.
        unsafe { self.lower_longest(run_start / LEAF_GRANULES, run_end - run_start) };
        if run_end > end {
            self.raise_longest(end / LEAF_GRANULES, run_end - end);
        }
        FreeNeighbours { before: run_start < first, after: run_end > end }
    }

    #[inline]
    fn set_block_start(&self, granule: usize, start: bool) {
        let (word, bit) = Self::word_and_bit(granule);
        let old = self.bits[word].start.load(Ordering::Relaxed);
        self.bits[word].start.store(if start { old | bit } else { old & !bit }, Ordering::Relaxed);
    }

    /// Makes `first..first + count`, which must be free, a live block.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call: the caller holds
    /// the pool's lock.
    #[inline(always)]
    pub(crate) unsafe fn claim(&self, first: usize, count: usize) -> FreeNeighbours {
        self.set_block_start(first, true);
        // SAFETY: forwarded from the caller.
        unsafe { self.mark_used(first, count) }
    }

    /// Frees the live block that starts at `first` and spans `count` granules.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call: the caller holds
    /// the pool's lock.
    #[inline(always)]
    pub(crate) unsafe fn release(&self, first: usize, count: usize) -> FreeNeighbours {
        debug_assert!(self.is_block_start(first));
        self.set_block_start(first, false);
        // SAFETY: forwarded from the caller.
        unsafe { self.mark_free(first, count) }
    }

    /// Turns the `count` free granules from `end` on into the tail of the
    /// live block that ends at `end`.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call: the caller holds
    /// the pool's lock.
    pub(crate) unsafe fn extend_block(&self, end: usize, count: usize) -> FreeNeighbours {
        debug_assert!(!self.is_block_start(end));
        // SAFETY: forwarded from the caller.
        unsafe { self.mark_used(end, count) }
    }

    /// Frees the last `count` granules of the live block that ends at `end`;
    /// the block keeps its start and the rest.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call: the caller holds
    /// the pool's lock.
    pub(crate) unsafe fn truncate_block(&self, end: usize, count: usize) -> FreeNeighbours {
        debug_assert!(count < end && !self.is_block_start(end - count));
        // SAFETY: forwarded from the caller.
        unsafe { self.mark_free(end - count, count) }
    }

    /// How many granules from `granule` on are free, counting at most
    /// `limit`.
    pub(crate) fn free_run_from(&self, granule: usize, limit: usize) -> usize {
        (self.free_run_end(granule) - granule.min(self.granules)).min(limit)
    }

    /// How many granules the live block starting at `first` spans: up to the
    /// next granule that is free or starts another block.
    #[inline]
    pub(crate) fn block_granules(&self, first: usize) -> usize {
        debug_assert!(self.is_block_start(first));
        let boundary_word =
            |word: usize| self.bits[word].free.load(Ordering::Relaxed) | self.bits[word].start.load(Ordering::Relaxed);
        let mut word = first / LEAF_GRANULES;
        let mut boundaries = boundary_word(word) & !bits_below(first % LEAF_GRANULES + 1);
        loop {
            if boundaries != 0 {
                let end = word * LEAF_GRANULES + boundaries.trailing_zeros() as usize;
                return end - first;
            }
            word += 1;
            if word >= self.bits.len() {
                return self.granules - first;
            }
            boundaries = boundary_word(word);
        }
    }

    /// Free granules at the end of the region.
    pub(crate) fn trailing_free(&self) -> usize {
        self.granules - self.free_run_start(self.granules)
    }

    /// Calls `visit(first, count)` for every maximal free run, in address
    /// order. Safe to call from a seqlock reader: it only reads.
    pub(crate) fn for_each_free_run(&self, visit: impl FnMut(usize, usize)) {
        let words = self.bits.iter().map(|bits| bits.free.load(Ordering::Relaxed));
        for_each_run_of_ones(words, self.granules, visit);
    }

    /// Calls `visit(first, count)`, in granules, for every maximal run of
    /// wholly free leaves that is at least `min_leaves` leaves long, in
    /// address order. It reads one bit per leaf, so it crosses a region 64
    /// times faster than [`for_each_free_run`](Self::for_each_free_run):
    /// what a walk over the free pages needs, since a page lies in a free
    /// run exactly when all its leaves are wholly free.
    pub(crate) fn for_each_free_leaf_run(&self, min_leaves: usize, mut visit: impl FnMut(usize, usize)) {
        debug_assert!(min_leaves > 0);
        let words = self.whole[0].iter().map(|word| word.load(Ordering::Relaxed));
        for_each_run_of_ones(words, self.leaves(), |first, count| {
            if count >= min_leaves {
                visit(first * LEAF_GRANULES, count * LEAF_GRANULES);
            }
        });
    }
}

/// Calls `visit(first, count)` for every maximal run of set bits among the
/// first `len` bits of `words` (bit `i` of word `w` is bit `64 * w + i`),
/// in order. Bits past `len` must be clear, or past the end of `words`.
fn for_each_run_of_ones(words: impl Iterator<Item = u64>, len: usize, mut visit: impl FnMut(usize, usize)) {
    let mut run_start: Option<usize> = None;
    for (position, word) in words.enumerate() {
        let base = position * WORD_BITS;
        // Most words lie wholly inside or wholly outside a run.
        match (run_start, word) {
            (None, 0) | (Some(_), u64::MAX) => continue,
            _ => {}
        }
        let mut bit = 0usize;
        while bit < WORD_BITS {
            let rest = word >> bit;
            match run_start {
                Some(start) => {
                    let ones = rest.trailing_ones() as usize;
                    if bit + ones < WORD_BITS {
                        visit(start, base + bit + ones - start);
                        run_start = None;
                    }
                    bit += ones;
                }
                None => {
                    let zeros = rest.trailing_zeros() as usize;
                    if bit + zeros < WORD_BITS {
                        run_start = Some(base + bit + zeros);
                    }
                    bit += zeros;
                }
            }
        }
    }
    if let Some(start) = run_start {
        visit(start, len - start);
    }
}
