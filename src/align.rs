//! Overflow-safe size arithmetic, public because C callers of the seed's API
//! use it too.

/// Rounds `size` up to a multiple of `align`.
///
/// Returns `None` if `align` is not a non-zero power of two or if the result
/// would not fit in `usize`; the seed's version wrapped `SIZE_MAX - 3` to 0.
///
/// # Examples
///
/// ```
/// use lle_mempool::align_up;
///
/// assert_eq!(align_up(13, 8), Some(16));
/// assert_eq!(align_up(16, 8), Some(16));
/// assert_eq!(align_up(usize::MAX - 3, 16), None);
/// assert_eq!(align_up(10, 3), None);
/// ```
pub fn align_up(size: usize, align: usize) -> Option<usize> {
    if !align.is_power_of_two() {
        return None;
    }
    let mask = align - 1;
    size.checked_add(mask).map(|bumped| bumped & !mask)
}

/// Clamps `size` into `min..=max`.
///
/// If `min > max`, `max` wins: a caller's upper bound is the one that
/// protects memory.
///
/// # Examples
///
/// ```
/// use lle_mempool::clamp_size;
///
/// assert_eq!(clamp_size(5, 16, 64), 16);
/// assert_eq!(clamp_size(100, 16, 64), 64);
/// assert_eq!(clamp_size(32, 16, 64), 32);
/// assert_eq!(clamp_size(32, 64, 16), 16);
/// ```
pub fn clamp_size(size: usize, min: usize, max: usize) -> usize {
    size.max(min).min(max)
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
        assert_eq!(align_up(8, 0), None);
        assert_eq!(align_up(8, 24), None);
    }

    #[test]
    fn clamp_size_stays_in_bounds() {
        assert_eq!(clamp_size(0, 1, 10), 1);
        assert_eq!(clamp_size(usize::MAX, 1, 10), 10);
        assert_eq!(clamp_size(7, 1, 10), 7);
    }
}
