//! The wholly free leaves: one bit per leaf, set when all its granules are
//! free, and above them one bit per word of the level below, set when the
//! word is all ones, so that a long free run is crossed 64 leaves at a
//! time per level.

use super::{bits_below, level_lengths, FreeIndex, LeafBits, WORD_BITS};
use crate::fallible::{try_boxed_slice, try_collect};
use crate::sync::{AtomicU64, Ordering};
use std::collections::TryReserveError;

/// The whole-leaf levels over the leaves `bits`, from the bottom up to a
/// level of one word.
pub(super) fn whole_leaf_levels(bits: &[LeafBits]) -> Result<Box<[Box<[AtomicU64]>]>, TryReserveError> {
    let leaves = bits.len();
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
    debug_assert_eq!(whole_levels.len(), whole_levels.capacity());
    Ok(whole_levels.into_boxed_slice())
}

impl FreeIndex {
    /// The first leaf from `from` on that is not wholly free, or `None`.
    pub(super) fn next_partial_leaf(&self, from: usize) -> Option<usize> {
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
    pub(super) fn previous_partial_leaf(&self, before: usize) -> Option<usize> {
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
    pub(super) fn note_whole(&self, from: usize, to: usize, whole: bool) {
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
}
