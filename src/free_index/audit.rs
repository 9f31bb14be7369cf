//! The recount behind `check`: everything the index keeps incrementally,
//! derived again from the bitmaps and compared.

use super::{bits_below, FreeIndex, FAN_OUT, GRANULE, LEAF_GRANULES, WORD_BITS};
use crate::error::PoolError;
use crate::fallible::out_of_memory;
use crate::sync::{AtomicU64, Ordering};

impl FreeIndex {
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
