//! Overflow-safe rounding of sizes up to an alignment: the pool rounds its
//! growth to pages with it, and the C API's `lle_align_memory_size` is it.

/// Rounds `size` up to a multiple of `align`.
///
/// Returns `None` if `align` is not a non-zero power of two or if the result
/// would not fit in `usize`.
pub(crate) fn align_up(size: usize, align: usize) -> Option<usize> {
    if !align.is_power_of_two() {
        return None;
    }
    let mask = align - 1;
    size.checked_add(mask).map(|bumped| bumped & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_rounds_and_refuses_overflow() {
        for align in [1usize, 2, 16, 4096, 1 << 40] {
            for size in [0usize, 1, align - 1, align, align + 1, 12345] {
                let rounded = align_up(size, align).unwrap();
                assert_eq!(rounded % align, 0);
                assert!(rounded >= size && rounded - size < align);
            }
            assert_eq!(align_up(usize::MAX, align), if align == 1 { Some(usize::MAX) } else { None });
        }
        assert_eq!((align_up(13, 8), align_up(16, 8), align_up(usize::MAX - 3, 16)), (Some(16), Some(16), None));
        assert_eq!(align_up(8, 0), None);
        assert_eq!(align_up(8, 24), None);
    }
}
