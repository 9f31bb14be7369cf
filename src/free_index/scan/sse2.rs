//! The node scans by SSE2, part of the x86-64 baseline.

use crate::free_index::{FAN_OUT, MAX_REGION_GRANULES};

/// Bit `i` set where `values[i] >= wanted`, for `wanted` from 1 to
/// `MAX_REGION_GRANULES`: four SSE2 compares, their lanes narrowed to bytes
/// and one mask move. Left to itself the compiler built the mask lane by
/// lane, three times the instructions; it is half the search's work.
#[inline]
pub(crate) fn entries_at_least(values: &[u32; FAN_OUT], wanted: u32) -> u32 {
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
#[inline]
pub(crate) fn largest_with(values: &[u32; FAN_OUT], slot: usize, replacement: u32) -> u32 {
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
