//! The longest-run tree: per leaf the longest free run that starts there,
//! and above those a 16-ary max-tree of one-cache-line nodes.

use super::scan::{entries_at_least, largest, largest_with};
use super::{level_lengths, without_lowest_run, FreeIndex, FAN_OUT, LEAF_GRANULES, MAX_LEVELS, MAX_REGION_GRANULES};
use crate::fallible::try_collect;
use crate::sync::{AtomicU32, Ordering};
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

/// One node of the longest-run tree.
#[repr(align(64))]
pub(super) struct Node([AtomicU32; FAN_OUT]);

impl Node {
    fn new(values: [u32; FAN_OUT]) -> Node {
        Node(values.map(AtomicU32::new))
    }

    /// Every entry, by atomic loads: safe for lock-free readers.
    pub(super) fn load(&self) -> [u32; FAN_OUT] {
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

impl FreeIndex {
    /// Builds the longest-run tree over the bitmaps of an index that has
    /// none yet: each free run counts for the leaf it starts in.
    pub(super) fn build_tree(&mut self) -> Result<(), TryReserveError> {
        let leaves = self.leaves();
        let mut entries: Vec<u32> = try_collect(leaves, std::iter::repeat(0))?;
        self.for_each_free_run(|first, count| {
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
            self.level_starts[level + 1] = nodes.len();
            entries = try_collect(length, nodes[self.level_starts[level]..].iter().map(|node| largest(&node.load())))?;
        }
        debug_assert_eq!(nodes.len(), nodes.capacity(), "the tree outgrew its reservation");
        self.levels = lengths.len();
        self.nodes = nodes.into_boxed_slice();
        Ok(())
    }

    /// The nodes of one level of the longest-run tree.
    pub(super) fn level(&self, level: usize) -> &[Node] {
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
    pub(super) fn raise_longest(&self, leaf: usize, length: usize) {
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
    pub(super) unsafe fn lower_longest(&self, leaf: usize, length: usize) {
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
}
