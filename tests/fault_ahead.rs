//! Fresh memory is faulted in ahead of the blocks that reach it, in one
//! system call per 256 KiB, instead of a fault per page as each is first
//! written; a block too large for that is left to fault as it is written.
//! Residency is read per page with `mincore`.

mod common;

use common::{assert_intact, fill, page_size, resident_pages};
use lle_mempool::{MemoryPool, PoolConfig};
use std::ptr::NonNull;

/// How far ahead of a block that reaches fresh memory the pool faults in.
const AHEAD: usize = 256 << 10;
/// A block that reaches past the page it starts in.
const NEXT: usize = 8192;

fn offset(block: NonNull<u8>, bytes: usize) -> NonNull<u8> {
    // SAFETY: the callers stay inside the pool's 8 MiB region.
    unsafe { NonNull::new_unchecked(block.as_ptr().add(bytes)) }
}

#[test]
fn a_small_block_faults_in_what_follows_it_and_a_large_one_does_not() {
    let page = page_size();
    let pool = MemoryPool::with_config(PoolConfig::new(8 << 20).purge_delay(None)).unwrap();

    let first = pool.allocate(64).unwrap();
    let start = first.as_ptr() as usize;
    assert_eq!(start % page, 0, "the first block of a fresh pool starts its region");
    // Nothing was written yet, and the whole stretch ahead is resident.
    assert_eq!(resident_pages(first, AHEAD), AHEAD / page, "the stretch ahead of the first block");
    assert_eq!(resident_pages(offset(first, AHEAD), AHEAD), 0, "past the stretch");
    // SAFETY: `first` is a live 64-byte block.
    unsafe { fill(first, 64, 1) };

    // First fit puts it right after `first`, reaching 2 MiB past the
    // faulted stretch: nothing more is faulted in for it.
    let large = pool.allocate(2 << 20).unwrap();
    assert_eq!(large.as_ptr() as usize, start + 64, "first fit");
    assert_eq!(resident_pages(offset(first, AHEAD), 2 << 20), 0, "the large block was faulted in");

    // A block after the large one that reaches past the large one's last
    // page reaches fresh memory again: the stretch from there is faulted in.
    let next = pool.allocate(NEXT).unwrap();
    assert_eq!(next.as_ptr() as usize, start + 64 + (2 << 20), "first fit");
    let fresh = (start + 64 + (2 << 20)).next_multiple_of(page);
    let stretch = NonNull::new(fresh as *mut u8).unwrap();
    assert_eq!(resident_pages(stretch, AHEAD), AHEAD / page, "the stretch ahead of the next block");
    assert_eq!(resident_pages(offset(stretch, AHEAD), AHEAD), 0, "past the stretch");

    // Faulting in changed no contents.
    // SAFETY: the blocks are live and as long as written.
    unsafe {
        fill(large, 2 << 20, 2);
        fill(next, NEXT, 3);
        assert_intact(first, 64, 1);
        assert_intact(large, 2 << 20, 2);
        assert_intact(next, NEXT, 3);
    }
    pool.check().unwrap();
    for block in [first, large, next] {
        // SAFETY: live blocks of this pool, freed once.
        unsafe { pool.free(block).unwrap() };
    }
    pool.check().unwrap();
}
