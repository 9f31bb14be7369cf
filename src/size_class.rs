//! Size classes of the per-thread caches.
//!
//! Up to 64 bytes, classes step by 16; above, each doubling is split into
//! eight classes, so rounding a request up to its class wastes less than
//! 12.5% of it (mimalloc and jemalloc space theirs by four per doubling, at
//! up to 25%). A class's size is a multiple of 16 whenever the request was,
//! and blocks of a class are laid out at multiples of its size from a
//! 64-byte aligned start, so a block is aligned to
//! `min(16, largest power of two dividing the request)`, the natural
//! alignment of any Rust type of that size.

use std::alloc::Layout;

/// The largest request the caches serve; larger ones go to the shared pool.
pub(crate) const MAX_FAST_SIZE: usize = 1024;
/// How many classes there are.
pub(crate) const CLASS_COUNT: usize = 4 + 4 * 8;

/// The class of a request of `size` bytes, `1..=MAX_FAST_SIZE`.
#[inline]
pub(crate) fn class_of(size: usize) -> usize {
    debug_assert!(size > 0 && size <= MAX_FAST_SIZE);
    // `(size - 1) / 8` rather than `size.div_ceil(8)`: callers have just
    // tested `size - 1` against the range, and reuse it.
    CLASS_BY_EIGHTHS[(size - 1) / 8] as usize
}

/// The block size of class `class`.
#[inline]
pub(crate) const fn class_size(class: usize) -> usize {
    if class < 4 {
        (class + 1) * 16
    } else {
        let group = (class - 4) / 8;
        let within = (class - 4) % 8;
        (64 << group) + (within + 1) * (8 << group)
    }
}

/// The alignment a block of class `class` is guaranteed.
pub(crate) const fn class_alignment(class: usize) -> usize {
    let size = class_size(class);
    let natural = 1 << size.trailing_zeros();
    if natural < 16 {
        natural
    } else {
        16
    }
}

/// The class whose blocks serve `layout`: one whose size holds the layout
/// and whose blocks are aligned as it asks. `None` for layouts only the
/// shared pool serves: zero-sized, larger than [`MAX_FAST_SIZE`], or
/// aligned beyond 16. Every class is aligned to 8 (its size is a multiple
/// of 8), so up to 8 the size decides alone; an alignment of 16 takes the
/// smallest class of a multiple of 16 that holds the size.
#[inline]
pub(crate) fn class_for_layout(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size == 0 || size > MAX_FAST_SIZE {
        return None;
    }
    match layout.align() {
        ..=8 => Some(class_of(size)),
        16 => Some(class_of_aligned_16(size)),
        _ => None,
    }
}

/// The class of a request of `size` bytes, `1..=MAX_FAST_SIZE`, whose block
/// must be aligned to 16 (as C's `malloc` promises): the smallest class of
/// a multiple of 16 that holds it, by one table lookup.
#[inline]
pub(crate) fn class_of_aligned_16(size: usize) -> usize {
    debug_assert!(size > 0 && size <= MAX_FAST_SIZE);
    CLASS_BY_SIXTEENTHS[(size - 1) / 16] as usize
}

/// `class_of_aligned_16` by table, indexed as `CLASS_BY_EIGHTHS` but by
/// sixteenths: a request rounded up to a multiple of 16 gets a class of a
/// multiple of 16 (see the module docs), the smallest such that holds it.
static CLASS_BY_SIXTEENTHS: [u8; MAX_FAST_SIZE / 16] = {
    let mut table = [0u8; MAX_FAST_SIZE / 16];
    let mut index = 0;
    while index < MAX_FAST_SIZE / 16 {
        let class = compute_class((index + 1) * 16);
        assert!(class_alignment(class) == 16);
        table[index] = class as u8;
        index += 1;
    }
    table
};

const fn compute_class(size: usize) -> usize {
    let mut class = 0;
    while class_size(class) < size {
        class += 1;
    }
    class
}

/// `class_of` by table, indexed by the request in bytes less one, divided
/// by 8: every class boundary is a multiple of 8, so the requests of one
/// entry, `8 * index + 1 ..= 8 * (index + 1)`, share a class.
static CLASS_BY_EIGHTHS: [u8; MAX_FAST_SIZE / 8] = {
    let mut table = [0u8; MAX_FAST_SIZE / 8];
    let mut index = 0;
    while index < MAX_FAST_SIZE / 8 {
        table[index] = compute_class((index + 1) * 8) as u8;
        index += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_and_end_at_the_maximum() {
        for class in 1..CLASS_COUNT {
            assert!(class_size(class) > class_size(class - 1));
            assert_eq!(class_size(class) % 8, 0);
        }
        assert_eq!(class_size(CLASS_COUNT - 1), MAX_FAST_SIZE);
    }

    #[test]
    fn every_size_gets_the_smallest_class_that_fits_with_bounded_waste() {
        for size in 1..=MAX_FAST_SIZE {
            let class = class_of(size);
            assert!(class_size(class) >= size);
            assert!(class == 0 || class_size(class - 1) < size, "size {size} skipped a class");
            if size > 64 {
                let waste = class_size(class) - size;
                assert!(waste * 8 <= size, "size {size}: {waste} bytes wasted");
            }
            let natural = 1usize << size.trailing_zeros();
            assert!(class_alignment(class) >= natural.min(16), "size {size} under-aligned");
        }
    }

    #[test]
    fn layouts_get_a_class_only_when_its_blocks_hold_and_align_them() {
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_for_layout(layout(24, 8)), Some(class_of(24)));
        assert_eq!(class_for_layout(layout(MAX_FAST_SIZE, 16)), Some(CLASS_COUNT - 1));
        assert_eq!(class_for_layout(layout(0, 1)), None, "zero-sized");
        assert_eq!(class_for_layout(layout(MAX_FAST_SIZE + 1, 1)), None, "beyond the caches");
        assert_eq!(class_for_layout(layout(64, 32)), None, "classes align to 16 at most");
        // 48 bytes: a 48-byte class, aligned to 16, not 32.
        assert_eq!(class_for_layout(layout(48, 16)), Some(class_of(48)));
        assert_eq!(class_for_layout(layout(48, 32)), None);
        // 65 bytes aligned to 16: not the 72-byte class, aligned to 8.
        assert_eq!(class_size(class_for_layout(layout(65, 16)).unwrap()), 80);
        for size in 1..=MAX_FAST_SIZE {
            for align in [1, 2, 4, 8, 16] {
                let class = class_for_layout(layout(size, align)).expect("up to 16, every size has a class");
                assert!(class_size(class) >= size && class_alignment(class) >= align, "size {size} align {align}");
                // The smallest that serves.
                let mut smaller = (0..class).filter(|&smaller| class_alignment(smaller) >= align);
                assert!(smaller.all(|smaller| class_size(smaller) < size), "size {size} align {align}");
                // The class of the size padded to the alignment, which the
                // paths that work from a size use.
                assert_eq!(class, class_of(layout(size, align).pad_to_align().size()), "size {size} align {align}");
            }
            assert_eq!(class_for_layout(layout(size, 32)), None);
        }
    }
}
