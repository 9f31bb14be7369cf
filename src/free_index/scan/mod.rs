//! The scans of one tree node: which of its sixteen entries reach a length,
//! and the largest of them with one replaced. They are the writer's inner
//! loop, so each target gets its own implementation, as hashbrown chooses
//! its group scans: SSE2 on x86-64, plain Rust elsewhere. The tests hold
//! the SSE2 versions to the plain ones.

use crate::free_index::FAN_OUT;

#[cfg(target_arch = "x86_64")]
mod sse2;
#[cfg(target_arch = "x86_64")]
use sse2 as imp;

#[cfg(any(not(target_arch = "x86_64"), all(test, not(lle_mempool_model))))]
pub(super) mod portable;
#[cfg(not(target_arch = "x86_64"))]
use portable as imp;

pub(super) use imp::{entries_at_least, largest_with};

/// The largest of `values`. Only readers, construction and the audit take
/// it; the writer's rescan is `largest_with`.
pub(super) fn largest(values: &[u32; FAN_OUT]) -> u32 {
    values.iter().fold(0, |largest, &value| largest.max(value))
}
