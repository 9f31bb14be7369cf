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
//! ([`read_exclusive`]), which lets the compiler compare sixteen
//! entries at once; that is why the writer's methods are `unsafe`.

use crate::error::PoolError;
use crate::fallible::{out_of_memory, try_boxed_slice, try_collect};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::collections::TryReserveError;

/// Reads a whole array of atomics that no other thread stores to while this
/// runs, as plain memory, so that the compiler can vectorise what the caller
/// does with it (the free index's writer compares sixteen entries a node at
/// once). Under the models each element is an atomic load, which they track.
///
/// # Safety
///
/// No other thread may store to `array` during the call: the caller is the
/// only writer (it holds the lock that serialises writers), and every store
/// by earlier writers happens-before the call through that lock. Lock-free
/// readers may load the array meanwhile: two reads never race.
#[inline]
pub(crate) unsafe fn read_exclusive<const N: usize>(array: &[AtomicU32; N]) -> [u32; N] {
    #[cfg(not(lle_mempool_model))]
    {
        // SAFETY: `AtomicU32` has the size, alignment and bit validity of
        // `u32`; the caller guarantees that no store races with this read.
        unsafe { std::ptr::read(array.as_ptr().cast::<[u32; N]>()) }
    }
    #[cfg(lle_mempool_model)]
    {
        std::array::from_fn(|slot| array[slot].load(Ordering::Relaxed))
    }
}

/// Starts loading the cache line at `address` ahead of a use that is some
/// work away, so that its miss overlaps that work. A hint only: it never
/// faults, reads nothing a program can observe and may be dropped by the
/// CPU; any address is allowed.
#[inline(always)]
pub(crate) fn prefetch<T>(address: *const T) {
    #[cfg(all(target_arch = "x86_64", not(lle_mempool_model)))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch does
        // not dereference: it neither faults nor has observable effects.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(lle_mempool_model))))]
    let _ = address;
}

/// The unit of allocation: every block starts and ends on a granule.
pub(crate) const GRANULE: usize = 16;
const LEAF_GRANULES: usize = 64;
/// The most granules one region's index covers (16 GiB), so that every run
/// length fits in 32 bits, and below 2^31 as the vector compares need.
pub(crate) const MAX_REGION_GRANULES: usize = 1 << 30;
/// Entries in one node of the longest-run tree: 64 bytes, one cache line.
const FAN_OUT: usize = 16;
const WORD_BITS: usize = 64;
/// Levels of the longest-run tree for the largest region: 2^24 leaves, six
/// levels of sixteen.
const MAX_LEVELS: usize = 6;

/// One node of the longest-run tree.
#[repr(align(64))]
struct Node([AtomicU32; FAN_OUT]);

impl Node {
    fn new(values: [u32; FAN_OUT]) -> Node {
        Node(values.map(AtomicU32::new))
    }

    /// Every entry, by atomic loads: safe for lock-free readers.
    fn load(&self) -> [u32; FAN_OUT] {
        std::array::from_fn(|slot| self.0[slot].load(Ordering::Relaxed))
    }

    /// Every entry, as one plain read.
    ///
    /// # Safety
    ///
    /// No other thread stores to this node during the call: the caller
    /// holds the pool's lock, which serialises the index's writers.
    #[inline]
    unsafe fn load_exclusive(&self) -> [u32; FAN_OUT] {
        // SAFETY: forwarded from the caller.
        unsafe { read_exclusive(&self.0) }
    }
}

/// The node scans in plain Rust: what other targets use, and what the tests
/// hold the SSE2 versions to.
#[cfg(any(not(target_arch = "x86_64"), all(test, not(lle_mempool_model))))]
mod portable {
    use super::{FAN_OUT, MAX_REGION_GRANULES};

    /// Bit `i` set where `values[i] >= wanted`, for `wanted` from 1 to
    /// `MAX_REGION_GRANULES`.
    #[inline]
    pub(super) fn entries_at_least(values: &[u32; FAN_OUT], wanted: u32) -> u32 {
        debug_assert!(wanted > 0 && wanted as usize <= MAX_REGION_GRANULES);
        let mut mask = 0u32;
        for (slot, &value) in values.iter().enumerate() {
            mask |= u32::from(value >= wanted) << slot;
        }
        mask
    }

    /// The largest of `values` with `values[slot]` taken to be `replacement`.
    #[inline]
    pub(super) fn largest_with(values: &[u32; FAN_OUT], slot: usize, replacement: u32) -> u32 {
        let others = values.iter().enumerate().filter(|&(index, _)| index != slot);
        others.fold(replacement, |largest, (_, &value)| largest.max(value))
    }
}

#[cfg(not(target_arch = "x86_64"))]
use portable::{entries_at_least, largest_with};

/// The largest of `values`. Only readers, construction and the audit take
/// it; the writer's rescan is `largest_with`.
fn largest(values: &[u32; FAN_OUT]) -> u32 {
    values.iter().fold(0, |largest, &value| largest.max(value))
}

/// Bit `i` set where `values[i] >= wanted`, for `wanted` from 1 to
/// `MAX_REGION_GRANULES`: four SSE2 compares, their lanes narrowed to bytes
/// and one mask move. Left to itself the compiler built the mask lane by
/// lane, three times the instructions; it is half the search's work.
#[cfg(target_arch = "x86_64")]
#[inline]
fn entries_at_least(values: &[u32; FAN_OUT], wanted: u32) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpgt_epi32, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16, _mm_packs_epi32, _mm_set1_epi32,
    };
    debug_assert!(wanted > 0 && wanted as usize <= MAX_REGION_GRANULES);
    // SAFETY: SSE2 is part of the x86-64 baseline, so the intrinsics'
    // target feature is there. `quarter * 4 + 3 < FAN_OUT`: each load reads
    // four lanes inside `values`, and needs no alignment.
    unsafe {
        // Entries and `wanted` are below 2^31, so the signed compare is exact.
        let threshold = _mm_set1_epi32(wanted as i32 - 1);
        let above =
            |quarter: usize| _mm_cmpgt_epi32(_mm_loadu_si128(values.as_ptr().add(quarter * 4).cast()), threshold);
        // Each lane is 0 or -1, which the saturating packs keep, in order.
        let bytes = _mm_packs_epi16(_mm_packs_epi32(above(0), above(1)), _mm_packs_epi32(above(2), above(3)));
        _mm_movemask_epi8(bytes) as u32
    }
}

/// One row per slot: all ones in that slot's lane, zero elsewhere.
#[cfg(target_arch = "x86_64")]
static SLOT_MASKS: [[u32; FAN_OUT]; FAN_OUT] = {
    let mut masks = [[0; FAN_OUT]; FAN_OUT];
    let mut slot = 0;
    while slot < FAN_OUT {
        masks[slot][slot] = u32::MAX;
        slot += 1;
    }
    masks
};

/// The largest of `values` (all below 2^31) with `values[slot]` taken to be
/// `replacement`, by SSE2 compares and selects (SSE2 has no 32-bit `max`;
/// the compiler's own version took twice the instructions). The slot is
/// masked out by a row of [`SLOT_MASKS`] rather than written over in a
/// copy: a vector load of memory just written through a narrower store
/// cannot take the data from the store buffer and waits for the store to
/// retire.
#[cfg(target_arch = "x86_64")]
#[inline]
fn largest_with(values: &[u32; FAN_OUT], slot: usize, replacement: u32) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cmpgt_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_or_si128,
        _mm_shuffle_epi32,
    };
    let mask = &SLOT_MASKS[slot];
    // SAFETY: SSE2 is part of the x86-64 baseline, so the intrinsics'
    // target feature is there; each load reads four lanes inside `values`
    // or `mask`, and needs no alignment.
    let others = unsafe {
        let quarter = |index: usize| {
            let lanes = _mm_loadu_si128(values.as_ptr().add(index * 4).cast());
            _mm_andnot_si128(_mm_loadu_si128(mask.as_ptr().add(index * 4).cast()), lanes)
        };
        let max = |left: __m128i, right: __m128i| {
            let left_larger = _mm_cmpgt_epi32(left, right);
            _mm_or_si128(_mm_and_si128(left_larger, left), _mm_andnot_si128(left_larger, right))
        };
        let lanes = max(max(quarter(0), quarter(1)), max(quarter(2), quarter(3)));
        let lanes = max(lanes, _mm_shuffle_epi32::<0b01_00_11_10>(lanes));
        let lanes = max(lanes, _mm_shuffle_epi32::<0b10_11_00_01>(lanes));
        _mm_cvtsi128_si32(lanes) as u32
    };
    others.max(replacement)
}

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

        // Wholly free leaves, then each level from the one below.
        let whole_lengths = level_lengths(leaves, WORD_BITS);
        let mut whole_levels: Vec<Box<[AtomicU64]>> = Vec::new();
        whole_levels.try_reserve_exact(whole_lengths.len())?;
        let mut below: Vec<bool> =
            try_collect(leaves, bits.iter().map(|leaf| leaf.free.load(Ordering::Relaxed) == u64::MAX))?;
        for &words in &whole_lengths {
            let level = try_boxed_slice(
                words,
                (0..words).map(|word| {
                    let members = below.iter().skip(word * WORD_BITS).take(WORD_BITS);
                    AtomicU64::new(members.enumerate().fold(0u64, |acc, (bit, &set)| acc | (u64::from(set) << bit)))
                }),
            )?;
            below = try_collect(words, level.iter().map(|word| word.load(Ordering::Relaxed) == u64::MAX))?;
            whole_levels.push(level);
        }

        // Each free run counts for the leaf it starts in.
        let mut index = FreeIndex {
            granules,
            bits,
            nodes: Box::new([]),
            level_starts: [0; MAX_LEVELS + 1],
            levels: 0,
            whole: Box::new([]),
        };
        let mut entries: Vec<u32> = try_collect(leaves, std::iter::repeat(0))?;
        index.for_each_free_run(|first, count| {
            let entry = &mut entries[first / LEAF_GRANULES];
            *entry = (*entry).max(count as u32);
        });
        let lengths = level_lengths(leaves, FAN_OUT);
        debug_assert!(lengths.len() <= MAX_LEVELS);
        let mut nodes: Vec<Node> = Vec::new();
        nodes.try_reserve_exact(lengths.iter().sum())?;
        for (level, &length) in lengths.iter().enumerate() {
            let level_nodes = (0..length).map(|node| {
                Node::new(std::array::from_fn(|slot| entries.get(node * FAN_OUT + slot).copied().unwrap_or(0)))
            });
            nodes.extend(level_nodes);
            index.level_starts[level + 1] = nodes.len();
            entries = try_collect(length, nodes[index.level_starts[level]..].iter().map(|node| largest(&node.load())))?;
        }
        debug_assert_eq!(nodes.len(), nodes.capacity(), "the tree outgrew its reservation");
        index.levels = lengths.len();
        index.nodes = nodes.into_boxed_slice();
        debug_assert_eq!(whole_levels.len(), whole_levels.capacity());
        index.whole = whole_levels.into_boxed_slice();
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

    /// The nodes of one level of the longest-run tree.
    fn level(&self, level: usize) -> &[Node] {
        &self.nodes[self.level_starts[level]..self.level_starts[level + 1]]
    }

    /// Node `node` of level `level`, which must exist: callers derive both
    /// from the tree's shape (a leaf below `leaves()`, a parent of a node,
    /// or a fitting entry, which is never padding since padding is 0).
    #[inline]
    fn node(&self, level: usize, node: usize) -> &Node {
        debug_assert!(level < self.levels && self.level_starts[level] + node < self.level_starts[level + 1]);
        // SAFETY: `level < self.levels <= MAX_LEVELS`, so `level_starts`
        // has the entry; the node is inside its level (as asserted), and
        // every level is inside `nodes`.
        unsafe { self.nodes.get_unchecked(self.level_starts.get_unchecked(level) + node) }
    }

    #[inline]
    fn entry(&self, level: usize, position: usize) -> &AtomicU32 {
        &self.node(level, position / FAN_OUT).0[position % FAN_OUT]
    }

    /// The first leaf from `from` on that is not wholly free, or `None`.
    fn next_partial_leaf(&self, from: usize) -> Option<usize> {
        let mut position = from;
        let mut level = 0;
        // Climb while the rest of each word is all ones...
        loop {
            let word = self.whole[level].get(position / WORD_BITS)?.load(Ordering::Relaxed);
            let partial = !word & (u64::MAX << (position % WORD_BITS));
            if partial != 0 {
                position = position / WORD_BITS * WORD_BITS + partial.trailing_zeros() as usize;
                break;
            }
            level += 1;
            if level == self.whole.len() {
                return None;
            }
            position = position / WORD_BITS + 1;
        }
        // ...then descend through the first partial word of each level.
        // A clear bit past the end of the level below is padding.
        while level > 0 {
            level -= 1;
            let word = self.whole[level].get(position)?.load(Ordering::Relaxed);
            position = position * WORD_BITS + (!word).trailing_zeros() as usize;
        }
        (position < self.leaves()).then_some(position)
    }

    /// The last leaf before `before` that is not wholly free, or `None`.
    fn previous_partial_leaf(&self, before: usize) -> Option<usize> {
        let mut position = before.checked_sub(1)?;
        let mut level = 0;
        loop {
            let word = self.whole[level][position / WORD_BITS].load(Ordering::Relaxed);
            let partial = !word & bits_below(position % WORD_BITS + 1);
            if partial != 0 {
                position = position / WORD_BITS * WORD_BITS + (WORD_BITS - 1 - partial.leading_zeros() as usize);
                break;
            }
            level += 1;
            if level == self.whole.len() {
                return None;
            }
            position = (position / WORD_BITS).checked_sub(1)?;
        }
        while level > 0 {
            level -= 1;
            let word = self.whole[level][position].load(Ordering::Relaxed);
            position = position * WORD_BITS + (WORD_BITS - 1 - (!word).leading_zeros() as usize);
        }
        Some(position)
    }

    /// Records that leaves `from..to`, all in one word of `whole[0]`,
    /// became wholly free or stopped being so.
    fn note_whole(&self, from: usize, to: usize, whole: bool) {
        debug_assert!(from < to && (to - 1) / WORD_BITS == from / WORD_BITS);
        let mut position = from;
        let mut bits = bits_below(to - from) << (from % WORD_BITS);
        for level in self.whole.iter() {
            let word = &level[position / WORD_BITS];
            let old = word.load(Ordering::Relaxed);
            let new = if whole { old | bits } else { old & !bits };
            word.store(new, Ordering::Relaxed);
            // The level above records only whether this word is all ones.
            if (old == u64::MAX) == (new == u64::MAX) {
                return;
            }
            position /= WORD_BITS;
            bits = 1u64 << (position % WORD_BITS);
        }
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

    /// The longest free run that starts in `leaf`, in granules, whole.
    fn longest_starting_in(&self, leaf: usize) -> u32 {
        let (mut inner, top_start) = self.runs_starting_in(leaf);
        let mut longest = match top_start {
            Some(start) => self.free_run_end((leaf + 1) * LEAF_GRANULES) - (leaf * LEAF_GRANULES + start),
            None => 0,
        };
        while inner != 0 {
            longest = longest.max((inner >> inner.trailing_zeros()).trailing_ones() as usize);
            inner = without_lowest_run(inner);
        }
        longest as u32
    }

    /// Records a free run of `length` starting in `leaf`. Raising an entry
    /// changes its parent only where the parent was smaller, so the climb
    /// stops at the first entry at least as large; nothing needs rescanning.
    fn raise_longest(&self, leaf: usize, length: usize) {
        let value = length as u32;
        let mut position = leaf;
        for level in 0..self.levels {
            let entry = self.entry(level, position);
            if entry.load(Ordering::Relaxed) >= value {
                return;
            }
            entry.store(value, Ordering::Relaxed);
            position /= FAN_OUT;
        }
    }

    /// Recomputes `leaf`'s longest run if the run of `length` that started
    /// there, which is gone or shorter now, may have been it, and lowers
    /// the entries above as far as they change. Lowering an entry changes
    /// its parent only where it was the largest of its node; then the node
    /// is rescanned, sixteen entries at once.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call.
    unsafe fn lower_longest(&self, leaf: usize, length: usize) {
        let mut node = self.node(0, leaf / FAN_OUT);
        let entry = &node.0[leaf % FAN_OUT];
        if entry.load(Ordering::Relaxed) != length as u32 {
            return;
        }
        let mut value = self.longest_starting_in(leaf);
        debug_assert!(value <= length as u32);
        let mut position = leaf;
        for level in 0..self.levels {
            let slot = position % FAN_OUT;
            // The whole node is read before the store into it: a vector
            // load of a line with a store still in flight cannot take its
            // data from the store buffer and waits for the store to retire
            // (perf put a sixth of the pool's time on these loads when
            // they came after).
            // SAFETY: forwarded from the caller.
            let entries = unsafe { node.load_exclusive() };
            let old = entries[slot];
            if old == value {
                return;
            }
            node.0[slot].store(value, Ordering::Relaxed);
            if level + 1 == self.levels {
                return;
            }
            position /= FAN_OUT;
            let parent_node = self.node(level + 1, position / FAN_OUT);
            if parent_node.0[position % FAN_OUT].load(Ordering::Relaxed) != old {
                return;
            }
            // The largest entry shrank: another may now be the largest.
            value = largest_with(&entries, slot, value);
            node = parent_node;
        }
    }

    /// The longest free run, in granules. Safe for lock-free readers.
    pub(crate) fn longest_free(&self) -> usize {
        largest(&self.node(self.levels - 1, 0).load()) as usize
    }

    /// The first granule of the leftmost free run of at least `wanted`
    /// granules, or `None`.
    ///
    /// # Safety
    ///
    /// No other thread writes this index during the call: the caller holds
    /// the pool's lock.
    #[inline(always)]
    pub(crate) unsafe fn find_first_fit(&self, wanted: usize) -> Option<usize> {
        debug_assert!(wanted > 0);
        if wanted > MAX_REGION_GRANULES {
            return None;
        }
        let wanted = wanted as u32;
        let mut position = 0;
        for level in (0..self.levels).rev() {
            // SAFETY: forwarded from the caller.
            let node = unsafe { self.node(level, position).load_exclusive() };
            let fits = entries_at_least(&node, wanted);
            if fits == 0 {
                // Only the root can fail: every entry below is the largest
                // of a node, so a fitting entry has a fitting child.
                debug_assert!(position == 0);
                return None;
            }
            position = position * FAN_OUT + fits.trailing_zeros() as usize;
        }
        let leaf = position;
        // The runs that end inside the leaf lie left of the one that
        // touches its high end; if none of them fits, that one does.
        let (mut inner, top_start) = self.runs_starting_in(leaf);
        if wanted as usize <= LEAF_GRANULES {
            while inner != 0 {
                let start = inner.trailing_zeros();
                if (inner >> start).trailing_ones() >= wanted {
                    return Some(leaf * LEAF_GRANULES + start as usize);
                }
                inner = without_lowest_run(inner);
            }
        }
        let first = leaf * LEAF_GRANULES + top_start?;
        debug_assert!(self.free_run_end(first) - first >= wanted as usize, "the tree promised a run the leaf lacks");
        Some(first)
    }

    /// Starts loading the tree node that a free of the block at `granule`
    /// will update, so that its cache miss overlaps the bitmap's instead of
    /// following it. A hint only: it reads nothing and changes nothing.
    #[inline(always)]
    pub(crate) fn prefetch_tree_for(&self, granule: usize) {
        if let Some(node) = self.nodes.get(granule / LEAF_GRANULES / FAN_OUT) {
            prefetch(node);
        }
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
    pub(crate) fn for_each_free_run(&self, mut visit: impl FnMut(usize, usize)) {
        let mut run_start: Option<usize> = None;
        for (position, bits) in self.bits.iter().enumerate() {
            let free = bits.free.load(Ordering::Relaxed);
            let base = position * LEAF_GRANULES;
            let mut bit = 0usize;
            while bit < LEAF_GRANULES {
                let rest = free >> bit;
                match run_start {
                    Some(start) => {
                        let ones = rest.trailing_ones() as usize;
                        if bit + ones < LEAF_GRANULES {
                            visit(start, base + bit + ones - start);
                            run_start = None;
                        }
                        bit += ones;
                    }
                    None => {
                        let zeros = rest.trailing_zeros() as usize;
                        if bit + zeros < LEAF_GRANULES {
                            run_start = Some(base + bit + zeros);
                        }
                        bit += zeros;
                    }
                }
            }
        }
        if let Some(start) = run_start {
            visit(start, self.granules - start);
        }
    }

    /// Recounts everything from the bitmaps and checks both hierarchies
    /// above them. Returns `(free granules, free runs, live blocks)`, else
    /// [`PoolError::Corrupted`] for what is wrong, or
    /// [`PoolError::OutOfMemory`] when the heap refuses the reference copy.
    /// Safe to call from a seqlock reader: it only reads.
    pub(crate) fn audit(&self) -> Result<(usize, usize, usize), PoolError> {
        let broken = |reason: String| Err(PoolError::Corrupted { reason });
        let leaves = self.bits.len();
        let tail_bits = self.granules % LEAF_GRANULES;
        let mut live_blocks = 0usize;
        for leaf in 0..leaves {
            let free = self.bits[leaf].free.load(Ordering::Relaxed);
            let starts = self.bits[leaf].start.load(Ordering::Relaxed);
            if leaf + 1 == leaves && tail_bits != 0 && (free | starts) & !bits_below(tail_bits) != 0 {
                return broken(format!("bits set past the end of the region in leaf {leaf}"));
            }
            if free & starts != 0 {
                return broken(format!("a free granule is marked as a block start in leaf {leaf}"));
            }
            live_blocks += starts.count_ones() as usize;
        }

        let mut free_granules = 0;
        let mut free_runs = 0;
        let mut orphan = None;
        self.for_each_free_run(|first, count| {
            free_granules += count;
            free_runs += 1;
            // A granule in use that is not covered by a block start would be
            // lost memory: the first granule after every free run that is
            // in use must start a block.
            let after = first + count;
            if after < self.granules && !self.is_block_start(after) && orphan.is_none() {
                orphan = Some(after);
            }
        });
        if self.granules > 0 && !self.is_free(0) && !self.is_block_start(0) {
            orphan = Some(0);
        }
        if let Some(granule) = orphan {
            return broken(format!("granule {granule} is in use but belongs to no block"));
        }

        // Both hierarchies as construction derives them from these bitmaps;
        // the incremental updates must have kept ours equal to them.
        let load = |word: &AtomicU64| word.load(Ordering::Relaxed);
        let rebuilt =
            Self::with_bits(self.granules, |leaf| load(&self.bits[leaf].free), |leaf| load(&self.bits[leaf].start))
                .map_err(|_| out_of_memory(self.granules * GRANULE))?;
        for (level, (words, expected)) in self.whole.iter().zip(rebuilt.whole.iter()).enumerate() {
            for (position, (word, expected)) in words.iter().zip(expected.iter()).enumerate() {
                let wrong = load(word) ^ load(expected);
                if wrong != 0 {
                    let bit = position * WORD_BITS + wrong.trailing_zeros() as usize;
                    return broken(format!("whole-leaf level {level}, bit {bit} is wrong"));
                }
            }
        }
        for level in 0..self.levels {
            for (node, (entries, expected)) in self.level(level).iter().zip(rebuilt.level(level)).enumerate() {
                let (entries, expected) = (entries.load(), expected.load());
                if let Some(slot) = (0..FAN_OUT).find(|&slot| entries[slot] != expected[slot]) {
                    let (position, value, wanted) = (node * FAN_OUT + slot, entries[slot], expected[slot]);
                    return broken(format!("longest-run level {level}, entry {position} is {value}, not {wanted}"));
                }
            }
        }
        Ok((free_granules, free_runs, live_blocks))
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    /// A reference first fit over a plain vector of booleans.
    fn reference_first_fit(free: &[bool], wanted: usize) -> Option<usize> {
        let mut run = 0;
        for (granule, &is_free) in free.iter().enumerate() {
            run = if is_free { run + 1 } else { 0 };
            if run == wanted {
                return Some(granule + 1 - wanted);
            }
        }
        None
    }

    /// A seeded xorshift generator: random but repeatable choices.
    fn xorshift(mut seed: u64) -> impl FnMut() -> usize {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        }
    }

    /// The index under test beside a plain vector of booleans, with the
    /// blocks it holds.
    struct Checked {
        index: FreeIndex,
        reference: Vec<bool>,
        blocks: Vec<(usize, usize)>,
    }

    impl Checked {
        fn new(granules: usize) -> Checked {
            Checked { index: FreeIndex::new(granules).unwrap(), reference: vec![true; granules], blocks: Vec::new() }
        }

        fn mark(&mut self, first: usize, count: usize, free: bool) {
            self.reference[first..first + count].iter_mut().for_each(|granule| *granule = free);
        }

        /// First fit for `wanted`, which must agree with the reference;
        /// claims the block it finds.
        fn allocate(&mut self, wanted: usize) {
            let found = unsafe { self.index.find_first_fit(wanted) };
            assert_eq!(found, reference_first_fit(&self.reference, wanted), "wanted {wanted}");
            if let Some(first) = found {
                unsafe { self.index.claim(first, wanted) };
                self.mark(first, wanted, false);
                self.blocks.push((first, wanted));
            }
        }

        fn free(&mut self, slot: usize) {
            let (first, count) = self.blocks.swap_remove(slot);
            assert_eq!(self.index.block_granules(first), count);
            unsafe { self.index.release(first, count) };
            self.mark(first, count, true);
        }

        /// Grows or shrinks block `slot` in place, as `grow` and the free
        /// run after it allow.
        fn resize(&mut self, slot: usize, grow: bool, amount: usize) {
            let (first, count) = self.blocks[slot];
            let end = first + count;
            let free_after = self.index.free_run_from(end, usize::MAX);
            assert_eq!(free_after, self.reference[end..].iter().take_while(|&&granule| granule).count());
            if grow && free_after > 0 {
                let extra = 1 + amount % free_after;
                unsafe { self.index.extend_block(end, extra) };
                self.mark(end, extra, false);
                self.blocks[slot].1 += extra;
            } else if count > 1 {
                let cut = 1 + amount % (count - 1);
                unsafe { self.index.truncate_block(end, cut) };
                self.mark(end - cut, cut, true);
                self.blocks[slot].1 -= cut;
            }
        }

        /// `audit` passes and every count agrees with the reference.
        fn verify(&self) {
            let (free, _, live) = self.index.audit().unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(free, self.reference.iter().filter(|&&granule| granule).count());
            assert_eq!(live, self.blocks.len());
            let trailing = self.reference.iter().rev().take_while(|&&granule| granule).count();
            assert_eq!(self.index.trailing_free(), trailing);
            let mut longest = 0;
            let mut run = 0;
            for &is_free in &self.reference {
                run = if is_free { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            assert_eq!(self.index.longest_free(), longest);
        }
    }

    #[test]
    fn node_scans_agree_with_plain_loops() {
        let mut next = xorshift(0x6A09_E667_F3BC_C908);
        for round in 0..10_000 {
            // Small values make ties and equal-to-wanted entries common.
            let limit = if round % 2 == 0 { 8 } else { MAX_REGION_GRANULES };
            let values: [u32; FAN_OUT] = std::array::from_fn(|_| (next() % (limit + 1)) as u32);
            let wanted = 1 + (next() % limit) as u32;
            let (slot, replacement) = (next() % FAN_OUT, (next() % (limit + 1)) as u32);
            assert_eq!(entries_at_least(&values, wanted), portable::entries_at_least(&values, wanted));
            assert_eq!(largest_with(&values, slot, replacement), portable::largest_with(&values, slot, replacement));
        }
    }

    #[test]
    fn first_fit_matches_a_linear_scan() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        for granules in [1usize, 63, 64, 65, 200, 1000, 4096 + 17] {
            let mut checked = Checked::new(granules);
            for _ in 0..2000 {
                if checked.blocks.is_empty() || next() % 3 != 0 {
                    checked.allocate(1 + (next() % 150).min(granules - 1));
                } else {
                    let slot = next() % checked.blocks.len();
                    checked.free(slot);
                }
                checked.verify();
            }
        }
    }

    /// Blocks from one granule to a hundred thousand in a region of 5,000
    /// leaves: runs cross many wholly free leaves (both levels of that
    /// hierarchy) and the tree has four levels. Blocks also grow and shrink
    /// in place. After every step the first fit agrees with a linear scan
    /// and `audit` recomputes both hierarchies.
    #[test]
    fn long_runs_and_deep_trees_match_a_linear_scan() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut checked = Checked::new(5000 * LEAF_GRANULES + 13);
        for _ in 0..1500 {
            let choice = next() % 8;
            if checked.blocks.is_empty() || choice < 4 {
                let wanted = match next() % 4 {
                    0 => 1 + next() % 100_000,
                    1 => 60 + next() % 200,
                    _ => 1 + next() % 40,
                };
                checked.allocate(wanted);
            } else if choice < 7 {
                let slot = next() % checked.blocks.len();
                checked.free(slot);
            } else {
                let slot = next() % checked.blocks.len();
                let (grow, amount) = (next() % 2 == 0, next());
                checked.resize(slot, grow, amount);
            }
            checked.verify();
        }
    }

    #[test]
    fn runs_across_the_middle_and_the_ends_stay_exact() {
        // 1024 leaves: three levels of sixteen, and runs that start in one
        // subtree and end in another.
        let granules = 1024 * LEAF_GRANULES;
        let index = FreeIndex::new(granules).unwrap();
        unsafe { index.claim(0, granules) };
        assert_eq!((index.longest_free(), unsafe { index.find_first_fit(1) }), (0, None));
        assert_eq!(index.audit().unwrap(), (0, 0, 1));
        unsafe { index.release(0, granules) };
        assert_eq!(index.longest_free(), granules);
        // A block across the middle of the root splits the free space into
        // two runs, the right one longer; taking right-hand single granules
        // climbs odd nodes.
        let middle = granules / 2 - 6;
        unsafe { index.claim(middle, 10) };
        assert_eq!(index.longest_free(), middle + 2);
        assert_eq!(unsafe { index.find_first_fit(middle) }, Some(0));
        assert_eq!(unsafe { index.find_first_fit(middle + 1) }, Some(middle + 10));
        assert_eq!(unsafe { index.find_first_fit(middle + 3) }, None);
        unsafe { index.claim(granules - 1, 1) };
        unsafe { index.claim(granules - 3, 1) };
        assert_eq!(index.audit().unwrap(), (granules - 12, 3, 3));
        assert_eq!(unsafe { index.find_first_fit(middle + 1) }, None);
        assert_eq!(unsafe { index.find_first_fit(middle) }, Some(0));
        assert_eq!(unsafe { index.find_first_fit(2) }, Some(0));
        unsafe { index.release(granules - 1, 1) };
        unsafe { index.release(middle, 10) };
        assert_eq!(index.audit().unwrap(), (granules - 1, 2, 1));
        assert_eq!(unsafe { index.find_first_fit(granules - 3) }, Some(0));
        assert_eq!(unsafe { index.find_first_fit(granules - 2) }, None);
        assert_eq!(index.longest_free(), granules - 3);
    }

    #[test]
    fn free_runs_and_trailing_free_are_exact() {
        let index = FreeIndex::new(300).unwrap();
        unsafe { index.claim(0, 10) };
        unsafe { index.claim(70, 60) };
        unsafe { index.claim(200, 1) };
        let mut runs = Vec::new();
        index.for_each_free_run(|first, count| runs.push((first, count)));
        assert_eq!(runs, vec![(10, 60), (130, 70), (201, 99)]);
        assert_eq!(index.trailing_free(), 99);
        assert_eq!(index.block_granules(70), 60);
        assert_eq!(index.block_granules(200), 1);
        unsafe { index.claim(201, 99) };
        assert_eq!(index.trailing_free(), 0);
        assert_eq!(index.block_granules(201), 99);
    }

    #[test]
    fn blocks_extend_into_and_truncate_to_free_granules() {
        let index = FreeIndex::new(200).unwrap();
        unsafe { index.claim(10, 5) };
        unsafe { index.claim(100, 1) };
        assert_eq!(index.free_run_from(15, usize::MAX), 85);
        assert_eq!(index.free_run_from(15, 70), 70);
        assert_eq!(index.free_run_from(101, usize::MAX), 99);
        assert_eq!(index.free_run_from(100, usize::MAX), 0);
        unsafe { index.extend_block(15, 85) };
        assert_eq!(index.block_granules(10), 90);
        assert_eq!(index.audit().unwrap(), (10 + 99, 2, 2));
        unsafe { index.truncate_block(100, 89) };
        assert_eq!(index.block_granules(10), 1);
        assert_eq!(index.free_run_from(11, usize::MAX), 89);
        assert_eq!(index.audit().unwrap(), (10 + 89 + 99, 3, 2));
    }

    #[test]
    fn resizing_keeps_blocks_and_frees_the_new_part() {
        let index = FreeIndex::new(100).unwrap();
        unsafe { index.claim(0, 100) };
        let grown = index.resized(1000).unwrap();
        assert_eq!(grown.block_granules(0), 100);
        assert_eq!(unsafe { grown.find_first_fit(900) }, Some(100));
        assert_eq!(grown.trailing_free(), 900);
        grown.audit().unwrap();
        let shrunk = grown.resized(130).unwrap();
        assert_eq!(shrunk.trailing_free(), 30);
        assert_eq!(shrunk.audit().unwrap(), (30, 1, 1));
    }
}
