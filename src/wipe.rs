//! Zeroing freed blocks with writes the compiler must keep
//! ([`PoolConfig::zero_on_free`](crate::PoolConfig::zero_on_free)).
//!
//! A plain `write_bytes` into memory that is freed right after, and that the
//! program never reads again, is a dead store: the optimizer may drop it,
//! and does for a `memset` before a `free`. Volatile writes are observable
//! behaviour in Rust's memory model (as in C's): the compiler must emit each
//! of them, of the size written and in program order, whatever it can prove
//! about later reads, so none of them can be removed or merged away. The
//! compiler fence after them keeps the pool's own later accesses (the link
//! word of a cache block's free list, the release that publishes the free)
//! from being moved above the wipe; the atomics that publish a free order it
//! for other threads as they order any write before them.
//! `core::hint::black_box` would be the other way, but it is documented as a
//! best effort only, so it cannot promise the zeros.

use crate::sync::{compiler_fence, Ordering};
use std::ptr::NonNull;

/// Bytes a wipe writes with each word-sized store.
const WORD: usize = std::mem::size_of::<usize>();

/// Zeroes `len` bytes from `block`.
///
/// # Safety
/// `block..block + len` must be writable memory that nobody else uses, and
/// `block` aligned to a word (every block of the pool is: shared blocks to
/// 16 bytes, cache blocks to their size class's alignment, at least 8).
pub(crate) unsafe fn wipe(block: NonNull<u8>, len: usize) {
    let start = block.as_ptr();
    debug_assert_eq!(start as usize % WORD, 0, "an unaligned block");
    let words = len / WORD;
    for word in 0..words {
        // SAFETY: inside the range the caller hands over, aligned to a word.
        unsafe { start.cast::<usize>().add(word).write_volatile(0) };
    }
    for byte in words * WORD..len {
        // SAFETY: inside the range the caller hands over.
        unsafe { start.add(byte).write_volatile(0) };
    }
    compiler_fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::wipe;
    use std::ptr::NonNull;

    #[test]
    fn wipes_exactly_the_range() {
        for len in [0, 1, 7, 8, 9, 24, 100] {
            let mut memory = [u64::from_ne_bytes([0xA5; 8]); 16];
            let start = NonNull::new(memory.as_mut_ptr().cast::<u8>()).unwrap();
            // SAFETY: `len` bytes of the test's own array, word-aligned.
            unsafe { wipe(start, len) };
            // SAFETY: the array's bytes, read as bytes.
            let bytes = unsafe { std::slice::from_raw_parts(start.as_ptr(), 128) };
            assert!(bytes[..len].iter().all(|&byte| byte == 0), "len {len}");
            assert!(bytes[len..].iter().all(|&byte| byte == 0xA5), "len {len}: wrote past the range");
        }
    }
}
