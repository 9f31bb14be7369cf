//! The free-block index of one region: which granules are free, where live
//! blocks start, and a summary tree that answers "leftmost free run of at
//! least `n` granules" in O(log n).
//!
//! Memory is managed in 16-byte granules. Two bitmaps, interleaved word by
//! word, record, per granule, whether it is free and whether a live block
//! starts there; a free block is a maximal run of free granules, so
//! coalescing with both neighbours is implicit and O(1). Above the bitmaps
//! sits a complete binary tree (the augmented tree of DESIGN-NOTES §2, as in
//! Go's page allocator) whose nodes hold, for the granules they cover, the
//! free run touching their left edge, the free run touching their right edge
//! and the longest free run inside.
//! Descending to the leftmost node whose longest run fits is address-ordered
//! first fit without scanning free blocks.
//!
//! Every word is an atomic: writers (serialised by the pool's mutex, inside a
//! seqlock bracket) store `Relaxed`, and lock-free readers (`stats`, `check`)
//! load `Relaxed` inside a seqlock read, so no read ever races.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The unit of allocation: every block starts and ends on a granule.
pub(crate) const GRANULE: usize = 16;
const LEAF_GRANULES: usize = 64;
/// The most granules one region's index covers (16 GiB), so that every
/// summary fits in 32 bits.
pub(crate) const MAX_REGION_GRANULES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    /// Free granules at the node's low end.
    start: u32,
    /// Free granules at the node's high end.
    end: u32,
    /// The longest free run inside the node.
    longest: u32,
}

impl Summary {
    fn of_leaf(free_word: u64) -> Summary {
        // One step per run of free granules, of which a word has few.
        let mut longest = 0;
        let mut rest = free_word;
        while rest != 0 {
            rest >>= rest.trailing_zeros();
            let run = rest.trailing_ones();
            longest = longest.max(run);
            rest = rest.checked_shr(run).unwrap_or(0);
        }
        Summary { start: free_word.trailing_ones(), end: free_word.leading_ones(), longest }
    }

    /// The summary of two adjacent nodes, each `half` granules wide.
    fn combine(left: Summary, right: Summary, half: u32) -> Summary {
        Summary {
            start: if left.start == half { half + right.start } else { left.start },
            end: if right.end == half { half + left.end } else { right.end },
            longest: left.longest.max(right.longest).max(left.end + right.start),
        }
    }
}

pub(crate) struct FreeIndex {
    granules: usize,
    /// Leaves in the tree: a power of two, at least the leaves in use; the
    /// rest are padding that is never free.
    leaf_slots: usize,
    /// One entry per leaf: 64 granules.
    bits: Box<[LeafBits]>,
    /// The summary tree: root at 1, leaves from `leaf_slots`.
    tree: Box<[TreeNode]>,
}

/// A leaf's two bitmaps side by side: freeing a block reads both, and with
/// 100,000 live blocks the words are rarely in cache, so this makes one miss
/// of two (about one fewer per free+allocate in a 2 MiB cache simulation).
struct LeafBits {
    /// Bit `i` set: granule `i` is free.
    free: AtomicU64,
    /// Bit `i` set: a live block starts at granule `i`.
    start: AtomicU64,
}

/// One node's summary, in one place so a node is one cache access.
struct TreeNode {
    /// `start | end << 32`.
    edges: AtomicU64,
    longest: AtomicU32,
}

/// A mask of the bits `from..to` of a word (`to` at most 64).
fn bit_range(from: usize, to: usize) -> u64 {
    debug_assert!(from < to && to <= 64);
    let high = if to == 64 { u64::MAX } else { (1u64 << to) - 1 };
    high & !((1u64 << from) - 1)
}

impl FreeIndex {
    /// An index over `granules` granules, all free.
    pub(crate) fn new(granules: usize) -> FreeIndex {
        Self::with_bits(granules, |_| u64::MAX, |_| 0)
    }

    /// An index over `granules` granules whose words come from `free_word`
    /// and `start_word`; bits past the end are cleared here.
    fn with_bits(granules: usize, free_word: impl Fn(usize) -> u64, start_word: impl Fn(usize) -> u64) -> FreeIndex {
        debug_assert!(granules > 0 && granules <= MAX_REGION_GRANULES);
        let leaves = granules.div_ceil(LEAF_GRANULES);
        let leaf_slots = leaves.next_power_of_two();
        let tail_bits = granules % LEAF_GRANULES;
        let in_range = |leaf: usize, word: u64| {
            if leaf + 1 == leaves && tail_bits != 0 {
                word & bit_range(0, tail_bits)
            } else {
                word
            }
        };
        let index = FreeIndex {
            granules,
            leaf_slots,
            bits: (0..leaves)
                .map(|leaf| LeafBits {
                    free: AtomicU64::new(in_range(leaf, free_word(leaf))),
                    start: AtomicU64::new(in_range(leaf, start_word(leaf))),
                })
                .collect(),
            tree: (0..2 * leaf_slots)
                .map(|_| TreeNode { edges: AtomicU64::new(0), longest: AtomicU32::new(0) })
                .collect(),
        };
        index.refresh_leaves(0, leaves - 1);
        index
    }

    /// A copy of this index covering `granules` granules: granules beyond the
    /// old end are free; granules cut off must be free already.
    pub(crate) fn resized(&self, granules: usize) -> FreeIndex {
        let old_leaves = self.bits.len();
        let old_tail = self.granules % LEAF_GRANULES;
        let grown_part = |leaf: usize| -> u64 {
            if leaf < old_leaves - 1 || (leaf == old_leaves - 1 && old_tail == 0) {
                0
            } else if leaf == old_leaves - 1 {
                !bit_range(0, old_tail)
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

    #[inline]
    fn node(&self, node: usize) -> &TreeNode {
        debug_assert!(node > 0 && node < self.tree.len());
        // SAFETY: every caller derives `node` from the tree's shape: the root,
        // the children of an internal node, or `leaf_slots + leaf` for a leaf
        // below `leaf_slots`, all below `2 * leaf_slots == tree.len()`.
        unsafe { self.tree.get_unchecked(node) }
    }

    #[inline]
    fn summary(&self, node: usize) -> Summary {
        let node = self.node(node);
        let edges = node.edges.load(Ordering::Relaxed);
        Summary { start: edges as u32, end: (edges >> 32) as u32, longest: node.longest.load(Ordering::Relaxed) }
    }

    /// Stores `summary` at `node`; returns whether it differed.
    #[inline]
    fn update_summary(&self, node: usize, summary: Summary) -> bool {
        let node = self.node(node);
        let edges = u64::from(summary.start) | (u64::from(summary.end) << 32);
        let changed =
            (node.edges.load(Ordering::Relaxed) != edges) | (node.longest.load(Ordering::Relaxed) != summary.longest);
        // Storing unchanged values too is cheaper than two branches that
        // follow the data and mispredict often.
        node.edges.store(edges, Ordering::Relaxed);
        node.longest.store(summary.longest, Ordering::Relaxed);
        changed
    }

    /// Recomputes the summaries of leaves `first..=last` and of the nodes
    /// above them.
    ///
    /// Stops climbing at the first level where no node changed: every node
    /// above is a function of nodes that did not change. That saves less
    /// than one might hope: under random churn the changed run is often the
    /// longest of its ancestors, and a refresh climbs about 80% of the way
    /// to the root (measured: 8.6 of 12 levels with 1,000 live blocks, 14 of
    /// 17 with 100,000). Hence the lean single-path climb below, where
    /// nearly all the levels are spent.
    fn refresh_leaves(&self, first: usize, last: usize) {
        debug_assert!(first <= last && last < self.bits.len());
        let mut changed = false;
        for (leaf, bits) in (first..).zip(&self.bits[first..=last]) {
            changed |= self.update_summary(self.leaf_slots + leaf, Summary::of_leaf(bits.free.load(Ordering::Relaxed)));
        }
        let (mut low, mut high) = (self.leaf_slots + first, self.leaf_slots + last);
        let mut half = LEAF_GRANULES as u32;
        // While the changed nodes are several, each level recomputes the
        // parents of all of them.
        while changed && low != high {
            low /= 2;
            high /= 2;
            changed = false;
            let mut node = low;
            while node <= high {
                let combined = Summary::combine(self.summary(2 * node), self.summary(2 * node + 1), half);
                changed |= self.update_summary(node, combined);
                node += 1;
            }
            // At most MAX_REGION_GRANULES / 2: no overflow.
            half *= 2;
        }
        if !changed {
            return;
        }
        // One node changed: climb its path. Both children are loaded (the
        // changed one was just stored, so that load is forwarded) rather
        // than choosing between the summary in hand and the sibling's: which
        // side the path comes from is random, and the branch mispredicted.
        let mut node = low / 2;
        while node > 0 {
            let combined = Summary::combine(self.summary(2 * node), self.summary(2 * node + 1), half);
            if !self.update_summary(node, combined) {
                return;
            }
            node /= 2;
            half *= 2;
        }
    }

    /// The longest free run, in granules.
    pub(crate) fn longest_free(&self) -> usize {
        self.summary(1).longest as usize
    }

    /// The first granule of the leftmost free run of at least `wanted`
    /// granules, or `None`.
    pub(crate) fn find_first_fit(&self, wanted: usize) -> Option<usize> {
        debug_assert!(wanted > 0);
        if wanted > self.longest_free() {
            return None;
        }
        let wanted = wanted as u32;
        let (mut node, mut offset, mut span) = (1usize, 0usize, self.leaf_slots * LEAF_GRANULES);
        while node < self.leaf_slots {
            let half = span / 2;
            // The right child matters only when the left one has no fit.
            let left = self.summary(2 * node);
            if left.longest >= wanted {
                node *= 2;
            } else if left.end + self.summary(2 * node + 1).start >= wanted {
                // The run crossing the middle starts further left than any
                // run inside the right half.
                return Some(offset + half - left.end as usize);
            } else {
                node = 2 * node + 1;
                offset += half;
            }
            span = half;
        }
        let word = self.bits[node - self.leaf_slots].free.load(Ordering::Relaxed);
        // Bit i of `fits` stays set while bits i..i+covered are all free.
        let (mut fits, mut covered) = (word, 1u32);
        while covered < wanted {
            let step = covered.min(wanted - covered);
            fits &= fits >> step;
            covered += step;
        }
        debug_assert!(fits != 0, "summary promised a run the leaf does not have");
        (fits != 0).then(|| offset + fits.trailing_zeros() as usize)
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

    /// Marks `first..first + count` free or in use and refreshes the tree.
    fn set_free(&self, first: usize, count: usize, free: bool) {
        debug_assert!(count > 0 && first + count <= self.granules);
        let end = first + count;
        let mut granule = first;
        while granule < end {
            let word = granule / LEAF_GRANULES;
            let from = granule % LEAF_GRANULES;
            let to = (end - word * LEAF_GRANULES).min(LEAF_GRANULES);
            let mask = bit_range(from, to);
            let old = self.bits[word].free.load(Ordering::Relaxed);
            debug_assert_eq!(old & mask, if free { 0 } else { mask }, "granules already in the target state");
            self.bits[word].free.store(if free { old | mask } else { old & !mask }, Ordering::Relaxed);
            granule = (word + 1) * LEAF_GRANULES;
        }
        self.refresh_leaves(first / LEAF_GRANULES, (end - 1) / LEAF_GRANULES);
    }

    fn set_block_start(&self, granule: usize, start: bool) {
        let (word, bit) = Self::word_and_bit(granule);
        let old = self.bits[word].start.load(Ordering::Relaxed);
        self.bits[word].start.store(if start { old | bit } else { old & !bit }, Ordering::Relaxed);
    }

    /// Makes `first..first + count`, which must be free, a live block.
    pub(crate) fn claim(&self, first: usize, count: usize) {
        self.set_free(first, count, false);
        self.set_block_start(first, true);
    }

    /// Frees the live block that starts at `first` and spans `count` granules.
    pub(crate) fn release(&self, first: usize, count: usize) {
        debug_assert!(self.is_block_start(first));
        self.set_block_start(first, false);
        self.set_free(first, count, true);
    }

    /// Turns the `count` free granules from `end` on into the tail of the
    /// live block that ends at `end`.
    pub(crate) fn extend_block(&self, end: usize, count: usize) {
        debug_assert!(!self.is_block_start(end));
        self.set_free(end, count, false);
    }

    /// Frees the last `count` granules of the live block that ends at `end`;
    /// the block keeps its start and the rest.
    pub(crate) fn truncate_block(&self, end: usize, count: usize) {
        debug_assert!(count < end && !self.is_block_start(end - count));
        self.set_free(end - count, count, true);
    }

    /// How many granules from `granule` on are free, counting at most
    /// `limit`: a word of the bitmap at a time.
    pub(crate) fn free_run_from(&self, granule: usize, limit: usize) -> usize {
        let mut counted = 0;
        let mut position = granule;
        while counted < limit && position < self.granules {
            let offset = position % LEAF_GRANULES;
            let free = self.bits[position / LEAF_GRANULES].free.load(Ordering::Relaxed) >> offset;
            let ones = free.trailing_ones() as usize;
            counted += ones;
            if offset + ones < LEAF_GRANULES {
                break;
            }
            position += ones;
        }
        counted.min(limit)
    }

    /// How many granules the live block starting at `first` spans: up to the
    /// next granule that is free or starts another block.
    pub(crate) fn block_granules(&self, first: usize) -> usize {
        debug_assert!(self.is_block_start(first));
        let boundary_word =
            |word: usize| self.bits[word].free.load(Ordering::Relaxed) | self.bits[word].start.load(Ordering::Relaxed);
        let mut word = first / LEAF_GRANULES;
        let mut boundaries = boundary_word(word) & !bit_range(0, first % LEAF_GRANULES + 1);
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
        let mut free = 0;
        let tail_bits = self.granules % LEAF_GRANULES;
        for (position, bits) in self.bits.iter().enumerate().rev() {
            let word = bits.free.load(Ordering::Relaxed);
            let width = if position + 1 == self.bits.len() && tail_bits != 0 { tail_bits } else { 64 };
            let ones = (word << (64 - width)).leading_ones() as usize;
            free += ones.min(width);
            if ones < width {
                break;
            }
        }
        free
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

    /// Recounts everything from the bitmaps and checks every tree node
    /// against its children. Returns `(free granules, free runs, live blocks)`.
    pub(crate) fn audit(&self) -> Result<(usize, usize, usize), String> {
        let leaves = self.bits.len();
        let tail_bits = self.granules % LEAF_GRANULES;
        let mut live_blocks = 0usize;
        for leaf in 0..leaves {
            let free = self.bits[leaf].free.load(Ordering::Relaxed);
            let starts = self.bits[leaf].start.load(Ordering::Relaxed);
            if leaf + 1 == leaves && tail_bits != 0 && (free | starts) & !bit_range(0, tail_bits) != 0 {
                return Err(format!("bits set past the end of the region in leaf {leaf}"));
            }
            if free & starts != 0 {
                return Err(format!("a free granule is marked as a block start in leaf {leaf}"));
            }
            live_blocks += starts.count_ones() as usize;
            if self.summary(self.leaf_slots + leaf) != Summary::of_leaf(free) {
                return Err(format!("leaf {leaf}'s summary disagrees with its bits"));
            }
        }
        for padding in leaves..self.leaf_slots {
            if self.summary(self.leaf_slots + padding) != Summary::of_leaf(0) {
                return Err(format!("padding leaf {padding} claims free space"));
            }
        }
        let mut half = LEAF_GRANULES as u32;
        let mut level_start = self.leaf_slots / 2;
        while level_start >= 1 {
            for node in level_start..2 * level_start {
                let expected = Summary::combine(self.summary(2 * node), self.summary(2 * node + 1), half);
                if self.summary(node) != expected {
                    return Err(format!("tree node {node} disagrees with its children"));
                }
            }
            half = half.saturating_mul(2);
            level_start /= 2;
        }
        // A granule in use that is not covered by a block start would be
        // lost memory: the first granule after every free run that is in use
        // must start a block, and so must granule 0 when it is in use.
        let mut free_granules = 0;
        let mut free_runs = 0;
        let mut orphan = None;
        self.for_each_free_run(|first, count| {
            free_granules += count;
            free_runs += 1;
            let after = first + count;
            if after < self.granules && !self.is_block_start(after) && orphan.is_none() {
                orphan = Some(after);
            }
        });
        if self.granules > 0 && !self.is_free(0) && !self.is_block_start(0) {
            orphan = Some(0);
        }
        if let Some(granule) = orphan {
            return Err(format!("granule {granule} is in use but belongs to no block"));
        }
        Ok((free_granules, free_runs, live_blocks))
    }
}

#[cfg(all(test, not(any(lle_mempool_loom, feature = "shuttle"))))]
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

    #[test]
    fn first_fit_matches_a_linear_scan() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for granules in [1usize, 63, 64, 65, 200, 1000, 4096 + 17] {
            let index = FreeIndex::new(granules);
            let mut reference = vec![true; granules];
            let mut blocks: Vec<(usize, usize)> = Vec::new();
            for _ in 0..2000 {
                if blocks.is_empty() || next() % 3 != 0 {
                    let wanted = 1 + (next() as usize % 150).min(granules - 1);
                    let found = index.find_first_fit(wanted);
                    assert_eq!(found, reference_first_fit(&reference, wanted), "granules {granules} wanted {wanted}");
                    if let Some(first) = found {
                        index.claim(first, wanted);
                        reference[first..first + wanted].iter_mut().for_each(|g| *g = false);
                        blocks.push((first, wanted));
                    }
                } else {
                    let (first, count) = blocks.swap_remove(next() as usize % blocks.len());
                    assert_eq!(index.block_granules(first), count);
                    index.release(first, count);
                    reference[first..first + count].iter_mut().for_each(|g| *g = true);
                }
                let (free, _, live) = index.audit().unwrap();
                assert_eq!(free, reference.iter().filter(|&&g| g).count());
                assert_eq!(live, blocks.len());
            }
        }
    }

    #[test]
    fn refreshing_one_path_or_many_leaves_keeps_the_tree_exact() {
        // 1024 leaves: eleven levels, so a change climbs both as a range of
        // leaves and as a single path, through left and right children.
        let granules = 1024 * LEAF_GRANULES;
        let index = FreeIndex::new(granules);
        index.claim(0, granules);
        assert_eq!((index.longest_free(), index.find_first_fit(1)), (0, None));
        assert_eq!(index.audit().unwrap(), (0, 0, 1));
        index.release(0, granules);
        assert_eq!(index.longest_free(), granules);
        // A block across the middle of the root splits the free space into
        // two runs, the right one longer; taking right-hand single granules
        // climbs odd nodes.
        let middle = granules / 2 - 6;
        index.claim(middle, 10);
        assert_eq!(index.longest_free(), middle + 2);
        assert_eq!(index.find_first_fit(middle), Some(0));
        assert_eq!(index.find_first_fit(middle + 1), Some(middle + 10));
        assert_eq!(index.find_first_fit(middle + 3), None);
        index.claim(granules - 1, 1);
        index.claim(granules - 3, 1);
        assert_eq!(index.audit().unwrap(), (granules - 12, 3, 3));
        assert_eq!(index.find_first_fit(middle + 1), None);
        assert_eq!(index.find_first_fit(middle), Some(0));
        assert_eq!(index.find_first_fit(2), Some(0));
        index.release(granules - 1, 1);
        index.release(middle, 10);
        assert_eq!(index.audit().unwrap(), (granules - 1, 2, 1));
        assert_eq!(index.find_first_fit(granules - 3), Some(0));
        assert_eq!(index.find_first_fit(granules - 2), None);
        assert_eq!(index.longest_free(), granules - 3);
    }

    #[test]
    fn free_runs_and_trailing_free_are_exact() {
        let index = FreeIndex::new(300);
        index.claim(0, 10);
        index.claim(70, 60);
        index.claim(200, 1);
        let mut runs = Vec::new();
        index.for_each_free_run(|first, count| runs.push((first, count)));
        assert_eq!(runs, vec![(10, 60), (130, 70), (201, 99)]);
        assert_eq!(index.trailing_free(), 99);
        assert_eq!(index.block_granules(70), 60);
        assert_eq!(index.block_granules(200), 1);
        index.claim(201, 99);
        assert_eq!(index.trailing_free(), 0);
        assert_eq!(index.block_granules(201), 99);
    }

    #[test]
    fn blocks_extend_into_and_truncate_to_free_granules() {
        let index = FreeIndex::new(200);
        index.claim(10, 5);
        index.claim(100, 1);
        assert_eq!(index.free_run_from(15, usize::MAX), 85);
        assert_eq!(index.free_run_from(15, 70), 70);
        assert_eq!(index.free_run_from(101, usize::MAX), 99);
        assert_eq!(index.free_run_from(100, usize::MAX), 0);
        index.extend_block(15, 85);
        assert_eq!(index.block_granules(10), 90);
        assert_eq!(index.audit().unwrap(), (10 + 99, 2, 2));
        index.truncate_block(100, 89);
        assert_eq!(index.block_granules(10), 1);
        assert_eq!(index.free_run_from(11, usize::MAX), 89);
        assert_eq!(index.audit().unwrap(), (10 + 89 + 99, 3, 2));
    }

    #[test]
    fn resizing_keeps_blocks_and_frees_the_new_part() {
        let index = FreeIndex::new(100);
        index.claim(0, 100);
        let grown = index.resized(1000);
        assert_eq!(grown.block_granules(0), 100);
        assert_eq!(grown.find_first_fit(900), Some(100));
        assert_eq!(grown.trailing_free(), 900);
        grown.audit().unwrap();
        let shrunk = grown.resized(130);
        assert_eq!(shrunk.trailing_free(), 30);
        assert_eq!(shrunk.audit().unwrap(), (30, 1, 1));
    }
}
