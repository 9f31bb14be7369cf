//! Helpers shared by the integration tests: block patterns and process
//! memory figures.

#![allow(dead_code)]

use lle_mempool::MemoryPool;
use std::ops::Range;
use std::ptr::NonNull;

/// The pattern word at `index` of the block stamped with `seed`: distinct
/// per block and per position, so a block overwritten by a neighbour, moved,
/// or handed out twice reads back wrong.
fn pattern_word(seed: u64, index: usize) -> u64 {
    let mut value =
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add((index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    value ^= value >> 29;
    value.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1
}

/// Fills `len` bytes at `block` with the pattern of `seed`.
///
/// # Safety
/// `block` must be valid for writes of `len` bytes.
pub unsafe fn fill(block: NonNull<u8>, len: usize, seed: u64) {
    let base = block.as_ptr();
    let words = len / 8;
    for index in 0..words {
        // SAFETY: inside the block, per the caller.
        unsafe { base.add(index * 8).cast::<u64>().write_unaligned(pattern_word(seed, index)) };
    }
    let tail = pattern_word(seed, words).to_le_bytes();
    for offset in words * 8..len {
        // SAFETY: as above.
        unsafe { base.add(offset).write(tail[offset - words * 8]) };
    }
}

/// Checks that `len` bytes at `block` still hold the pattern of `seed`;
/// describes the first difference.
///
/// # Safety
/// `block` must be valid for reads of `len` bytes.
pub unsafe fn verify(block: NonNull<u8>, len: usize, seed: u64) -> Result<(), String> {
    let base = block.as_ptr();
    let words = len / 8;
    for index in 0..words {
        // SAFETY: inside the block, per the caller.
        let found = unsafe { base.add(index * 8).cast::<u64>().read_unaligned() };
        let expected = pattern_word(seed, index);
        if found != expected {
            return Err(format!(
                "block {:#x} (len {len}, seed {seed}): word {index} is {found:#x}, expected {expected:#x}",
                base as usize
            ));
        }
    }
    let tail = pattern_word(seed, words).to_le_bytes();
    for offset in words * 8..len {
        // SAFETY: as above.
        let found = unsafe { base.add(offset).read() };
        if found != tail[offset - words * 8] {
            return Err(format!("block {:#x} (len {len}, seed {seed}): byte {offset} is {found:#x}", base as usize));
        }
    }
    Ok(())
}

/// Fills, then panics with the difference if `verify` fails.
///
/// # Safety
/// As [`verify`].
pub unsafe fn assert_intact(block: NonNull<u8>, len: usize, seed: u64) {
    // SAFETY: per the caller.
    if let Err(difference) = unsafe { verify(block, len, seed) } {
        panic!("{difference}");
    }
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let reported = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(reported).unwrap_or(4096)
}

/// The resident pages among the whole pages of `block..block + len`.
pub fn resident_pages(block: NonNull<u8>, len: usize) -> usize {
    let page = page_size();
    let start = (block.as_ptr() as usize).next_multiple_of(page);
    let end = (block.as_ptr() as usize + len) / page * page;
    if end <= start {
        return 0;
    }
    let mut residency = vec![0u8; (end - start) / page];
    // SAFETY: the range is whole pages of the pool's mapping, which the
    // pool keeps mapped while it lives; mincore only reads page tables
    // and writes one byte per page into `residency`, which is that long.
    let status = unsafe { libc::mincore(start as *mut libc::c_void, end - start, residency.as_mut_ptr()) };
    assert_eq!(status, 0, "mincore: {}", std::io::Error::last_os_error());
    residency.iter().filter(|&&byte| byte & 1 != 0).count()
}

/// The process's resident memory, in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let resident_pages: usize = statm
        .split_whitespace()
        .nth(1)
        .expect("statm has a resident field")
        .parse()
        .expect("statm's resident field is a number");
    resident_pages * page_size()
}

/// `size` rounded up to the pool's 16-byte granule.
pub fn granule_round(size: usize) -> usize {
    size.div_ceil(16) * 16
}

/// `size` rounded up to whole pages.
pub fn page_round(size: usize) -> usize {
    size.div_ceil(page_size()) * page_size()
}

/// Raises a stop flag when dropped. Created inside a `thread::scope`
/// closure, it stops the threads that loop on the flag even when the
/// closure panics: the scope waits for every thread before it passes the
/// panic on, and would otherwise wait forever, turning a failed assertion
/// into a hung test.
pub struct RaiseOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for RaiseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A block crossing threads: a raw pointer is not `Send`, its address is.
/// Carries what its contents must be.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub addr: usize,
    pub len: usize,
    pub seed: u64,
}

impl Sent {
    /// The block's pointer.
    pub fn pointer(self) -> NonNull<u8> {
        NonNull::new(self.addr as *mut u8).expect("blocks are non-null")
    }
}

/// Blocks of a pool, each stamped with its own pattern when added.
#[derive(Default)]
pub struct Live {
    /// Each block, its length and the seed it was stamped with.
    pub blocks: Vec<(NonNull<u8>, usize, u64)>,
}

impl Live {
    pub fn new() -> Live {
        Live::default()
    }

    /// Stamps `block`, a fresh block of at least `len` bytes, and keeps it.
    pub fn add(&mut self, block: NonNull<u8>, len: usize) {
        let seed = self.blocks.len() as u64 + 1;
        // SAFETY: a fresh block of at least `len` bytes.
        unsafe { fill(block, len, seed) };
        self.blocks.push((block, len, seed));
    }

    pub fn assert_intact(&self) {
        for &(block, len, seed) in &self.blocks {
            // SAFETY: live blocks of `len` bytes.
            unsafe { assert_intact(block, len, seed) };
        }
    }

    /// Every block lies inside `range`.
    pub fn assert_inside(&self, range: &Range<usize>) {
        for &(block, len, _) in &self.blocks {
            let start = block.as_ptr() as usize;
            assert!(
                range.contains(&start) && start + len <= range.end,
                "block {start:#x} ({len} bytes) outside {range:#x?}"
            );
        }
    }

    /// Frees the blocks from `first` on (shared-path blocks only).
    pub fn free_from(&mut self, pool: &MemoryPool, first: usize) {
        for (block, _, _) in self.blocks.drain(first..) {
            // SAFETY: live blocks, freed once.
            unsafe { pool.free(block).unwrap() };
        }
    }

    /// Frees every block (shared-path blocks only).
    pub fn free_all(mut self, pool: &MemoryPool) {
        self.free_from(pool, 0);
    }
}
