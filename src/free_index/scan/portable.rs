//! The node scans in plain Rust: what other targets use, and what the tests
//! hold the SSE2 versions to.

use crate::free_index::{FAN_OUT, MAX_REGION_GRANULES};

/// Bit `i` set where `values[i] >= wanted`, for `wanted` from 1 to
/// `MAX_REGION_GRANULES`.
#[inline]
pub(crate) fn entries_at_least(values: &[u32; FAN_OUT], wanted: u32) -> u32 {
    debug_assert!(wanted > 0 && wanted as usize <= MAX_REGION_GRANULES);
    let mut mask = 0u32;
    for (slot, &value) in values.iter().enumerate() {
        mask |= u32::from(value >= wanted) << slot;
    }
    mask
}

/// The largest of `values` with `values[slot]` taken to be `replacement`.
#[inline]
pub(crate) fn largest_with(values: &[u32; FAN_OUT], slot: usize, replacement: u32) -> u32 {
    let others = values.iter().enumerate().filter(|&(index, _)| index != slot);
    others.fold(replacement, |largest, (_, &value)| largest.max(value))
}
