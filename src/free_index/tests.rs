//! The index against a plain vector of booleans, and the SSE2 node scans
//! against the portable ones.

use super::scan::{entries_at_least, largest_with, portable};
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
        // SAFETY: the test's own index, on one thread: its only writer.
        let found = unsafe { self.index.find_first_fit(wanted) };
        assert_eq!(found, reference_first_fit(&self.reference, wanted), "wanted {wanted}");
        if let Some(first) = found {
            // SAFETY: the test's own index, on one thread: its only writer.
            unsafe { self.index.claim(first, wanted) };
            self.mark(first, wanted, false);
            self.blocks.push((first, wanted));
        }
    }

    fn free(&mut self, slot: usize) {
        let (first, count) = self.blocks.swap_remove(slot);
        assert_eq!(self.index.block_granules(first), count);
        // SAFETY: the test's own index, on one thread: its only writer.
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
            // SAFETY: the test's own index, on one thread: its only writer.
            unsafe { self.index.extend_block(end, extra) };
            self.mark(end, extra, false);
            self.blocks[slot].1 += extra;
        } else if count > 1 {
            let cut = 1 + amount % (count - 1);
            // SAFETY: the test's own index, on one thread: its only writer.
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
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(0, granules) };
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!((index.longest_free(), unsafe { index.find_first_fit(1) }), (0, None));
    assert_eq!(index.audit().unwrap(), (0, 0, 1));
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.release(0, granules) };
    assert_eq!(index.longest_free(), granules);
    // A block across the middle of the root splits the free space into
    // two runs, the right one longer; taking right-hand single granules
    // climbs odd nodes.
    let middle = granules / 2 - 6;
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(middle, 10) };
    assert_eq!(index.longest_free(), middle + 2);
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(middle) }, Some(0));
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(middle + 1) }, Some(middle + 10));
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(middle + 3) }, None);
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(granules - 1, 1) };
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(granules - 3, 1) };
    assert_eq!(index.audit().unwrap(), (granules - 12, 3, 3));
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(middle + 1) }, None);
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(middle) }, Some(0));
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(2) }, Some(0));
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.release(granules - 1, 1) };
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.release(middle, 10) };
    assert_eq!(index.audit().unwrap(), (granules - 1, 2, 1));
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(granules - 3) }, Some(0));
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { index.find_first_fit(granules - 2) }, None);
    assert_eq!(index.longest_free(), granules - 3);
}

#[test]
fn free_runs_and_trailing_free_are_exact() {
    let index = FreeIndex::new(300).unwrap();
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(0, 10) };
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(70, 60) };
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(200, 1) };
    let mut runs = Vec::new();
    index.for_each_free_run(|first, count| runs.push((first, count)));
    assert_eq!(runs, vec![(10, 60), (130, 70), (201, 99)]);
    assert_eq!(index.trailing_free(), 99);
    assert_eq!(index.block_granules(70), 60);
    assert_eq!(index.block_granules(200), 1);
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(201, 99) };
    assert_eq!(index.trailing_free(), 0);
    assert_eq!(index.block_granules(201), 99);
}

#[test]
fn blocks_extend_into_and_truncate_to_free_granules() {
    let index = FreeIndex::new(200).unwrap();
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(10, 5) };
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(100, 1) };
    assert_eq!(index.free_run_from(15, usize::MAX), 85);
    assert_eq!(index.free_run_from(15, 70), 70);
    assert_eq!(index.free_run_from(101, usize::MAX), 99);
    assert_eq!(index.free_run_from(100, usize::MAX), 0);
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.extend_block(15, 85) };
    assert_eq!(index.block_granules(10), 90);
    assert_eq!(index.audit().unwrap(), (10 + 99, 2, 2));
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.truncate_block(100, 89) };
    assert_eq!(index.block_granules(10), 1);
    assert_eq!(index.free_run_from(11, usize::MAX), 89);
    assert_eq!(index.audit().unwrap(), (10 + 89 + 99, 3, 2));
}

#[test]
fn resizing_keeps_blocks_and_frees_the_new_part() {
    let index = FreeIndex::new(100).unwrap();
    // SAFETY: the test's own index, on one thread: its only writer.
    unsafe { index.claim(0, 100) };
    let grown = index.resized(1000).unwrap();
    assert_eq!(grown.block_granules(0), 100);
    // SAFETY: the test's own index, on one thread: its only writer.
    assert_eq!(unsafe { grown.find_first_fit(900) }, Some(100));
    assert_eq!(grown.trailing_free(), 900);
    grown.audit().unwrap();
    let shrunk = grown.resized(130).unwrap();
    assert_eq!(shrunk.trailing_free(), 30);
    assert_eq!(shrunk.audit().unwrap(), (30, 1, 1));
}

#[test]
fn free_leaf_runs_cover_exactly_the_wholly_free_leaves() {
    let index = FreeIndex::new(300 * LEAF_GRANULES).unwrap();
    // Leaves 0-1 wholly free, leaf 2 partly used, leaves 3-9 free, leaf 10
    // used, 11-139 free (crossing two words of the whole-leaf bitmap),
    // 140 used, and a free tail to the end.
    for first in [2 * LEAF_GRANULES + 5, 10 * LEAF_GRANULES, 140 * LEAF_GRANULES + 63] {
        // SAFETY: the test's own index, on one thread: its only writer.
        unsafe { index.claim(first, 1) };
    }
    let leaf_runs = |min_leaves| {
        let mut runs = Vec::new();
        index.for_each_free_leaf_run(min_leaves, |first, count| {
            runs.push((first / LEAF_GRANULES, count / LEAF_GRANULES))
        });
        runs
    };
    assert_eq!(leaf_runs(1), vec![(0, 2), (3, 7), (11, 129), (141, 159)]);
    assert_eq!(leaf_runs(8), vec![(11, 129), (141, 159)], "shorter runs are skipped");
    assert_eq!(leaf_runs(159), vec![(141, 159)]);
    assert_eq!(leaf_runs(160), vec![]);
}
