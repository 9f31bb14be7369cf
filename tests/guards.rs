//! Checked pools' guard bytes, poisoning and double-free detection: each
//! bug put in on purpose, on each path, and the report asserted to name the
//! block it was put into.

use allocator_api2::alloc::{Allocator, Layout};
use lle_mempool::{BlockDamage, DamageKind, MemoryPool, PoolConfig, PoolError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

const POISON: u8 = 0xDF;

fn checked() -> MemoryPool {
    MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true)).unwrap()
}

/// A checked pool whose reports of writes after free land in the vector.
fn reporting() -> (MemoryPool, Arc<Mutex<Vec<BlockDamage>>>) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let config = PoolConfig::new(1 << 20).checked(true).on_corruption(move |damage| sink.lock().unwrap().push(*damage));
    (MemoryPool::with_config(config).unwrap(), reports)
}

/// The block damage a refused free reports.
fn damage_of(result: Result<(), PoolError>) -> BlockDamage {
    match result {
        Err(PoolError::BlockCorrupted { block }) => *block,
        other => panic!("expected a damaged block, got {other:?}"),
    }
}

fn fill(block: NonNull<u8>, len: usize, byte: u8) {
    // SAFETY: callers pass blocks of at least `len` bytes they hold.
    unsafe { block.as_ptr().write_bytes(byte, len) };
}

fn holds(block: NonNull<u8>, len: usize, byte: u8) -> bool {
    // SAFETY: callers pass blocks of at least `len` bytes they may read.
    unsafe { std::slice::from_raw_parts(block.as_ptr(), len) }.iter().all(|&found| found == byte)
}

/// Allocates `count` blocks of `size` with `allocate`, asserting none is at
/// `addr`, and frees them.
fn never_hands_out(pool: &MemoryPool, addr: usize, count: usize, allocate: impl Fn() -> NonNull<u8>) {
    let blocks: Vec<_> = (0..count).map(|_| allocate()).collect();
    assert!(blocks.iter().all(|block| block.as_ptr() as usize != addr), "a quarantined block came back");
    for block in blocks {
        // SAFETY: live blocks, freed once.
        unsafe { pool.free(block).unwrap() };
    }
}

#[test]
fn a_one_byte_overflow_of_a_cache_block_is_refused_and_quarantined() {
    let pool = checked();
    let neighbour = pool.allocate_fast(40).unwrap();
    let block = pool.allocate_fast(40).unwrap();
    fill(block, 41, 0x11); // the 41st byte is one too many
    let addr = block.as_ptr() as usize;
    // SAFETY: a live block, given up (and refused).
    let damage = damage_of(unsafe { pool.free_fast(block) });
    assert_eq!((damage.addr, damage.size, damage.offset, damage.kind), (addr, 40, 40, DamageKind::Overflow));
    assert_eq!(damage.usable, 48, "40 bytes plus an 8-byte canary: the 48-byte class");
    let stats = pool.stats();
    assert_eq!((stats.quarantined_blocks, stats.live_allocations), (1, 1), "only the neighbour is live");
    // SAFETY: the quarantined block again: refused as a double free.
    assert_eq!(unsafe { pool.free_fast(block) }, Err(PoolError::NotAllocated { addr }));
    assert_eq!(pool.usable_size(block), Err(PoolError::NotAllocated { addr }));
    never_hands_out(&pool, addr, 3000, || pool.allocate_fast(40).unwrap());
    // The block's data was left alone, and so was its neighbour.
    assert!(holds(block, 41, 0x11));
    // SAFETY: a live block, freed once.
    unsafe { pool.free_fast(neighbour).unwrap() };
    assert_eq!(pool.stats().live_allocations, 0);
}

#[test]
fn an_overflow_into_a_shared_block_s_padding_is_refused_and_quarantined() {
    let pool = checked();
    let block = pool.allocate(100).unwrap();
    assert_eq!(pool.usable_size(block), Ok(100), "a checked pool's blocks hold the bytes asked");
    fill(block, 100, 0x22);
    // Not next to the data: the last byte of the granule padding.
    // SAFETY: the block spans 112 bytes.
    unsafe { block.as_ptr().add(111).write(0x22) };
    let addr = block.as_ptr() as usize;
    // SAFETY: a live block, given up (and refused).
    let damage = damage_of(unsafe { pool.free(block) });
    assert_eq!((damage.addr, damage.size, damage.usable, damage.offset), (addr, 100, 112, 111));
    assert_eq!(damage.kind, DamageKind::Overflow);
    let stats = pool.stats();
    assert_eq!((stats.quarantined_blocks, stats.live_allocations), (1, 0));
    // SAFETY: the quarantined block again: refused as a double free.
    assert_eq!(unsafe { pool.free(block) }, Err(PoolError::NotAllocated { addr }));
    never_hands_out(&pool, addr, 50, || pool.allocate(100).unwrap());
    assert!(holds(block, 100, 0x22));
    pool.check().unwrap();
}

#[test]
fn blocks_that_stay_in_bounds_free_cleanly_and_are_poisoned() {
    let pool = checked();
    for size in [1, 7, 15, 16, 17, 63, 64, 65, 1000, 1023, 1024, 1025, 5000] {
        for block in [pool.allocate_fast(size).unwrap(), pool.allocate(size).unwrap()] {
            assert_eq!(pool.usable_size(block), Ok(size));
            fill(block, size, 0x5A);
            assert!(holds(block, size, 0x5A));
            // SAFETY: a live block, freed once.
            unsafe { pool.free(block).unwrap() };
            // A cache block's first word is its free-list link.
            assert!(holds(NonNull::new(block.as_ptr().wrapping_add(8)).unwrap(), size.max(16) - 8, POISON));
        }
    }
    let stats = pool.stats();
    assert_eq!((stats.quarantined_blocks, stats.live_allocations), (0, 0));
    pool.check().unwrap();
}

#[test]
fn a_write_after_free_of_a_cache_block_is_reported_on_its_next_allocation() {
    let (pool, reports) = reporting();
    let block = pool.allocate_fast(64).unwrap();
    let addr = block.as_ptr() as usize;
    // SAFETY: a live block, freed once; then written, the bug.
    unsafe {
        pool.free_fast(block).unwrap();
        block.as_ptr().add(50).write(1);
    }
    let next = pool.allocate_fast(64).unwrap();
    assert_ne!(next, block);
    assert_eq!(pool.usable_size(next), Ok(64));
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    let damage = reports[0];
    assert_eq!((damage.addr, damage.size, damage.offset, damage.kind), (addr, 64, 50, DamageKind::WriteAfterFree));
    let stats = pool.stats();
    assert_eq!((stats.quarantined_blocks, stats.live_allocations), (1, 1));
    // SAFETY: the quarantined block was never handed out again.
    assert_eq!(unsafe { pool.free_fast(block) }, Err(PoolError::NotAllocated { addr }));
    never_hands_out(&pool, addr, 1000, || pool.allocate_fast(64).unwrap());
    // SAFETY: a live block, freed once.
    unsafe { pool.free_fast(next).unwrap() };
}

#[test]
fn a_write_after_free_of_a_shared_block_is_reported_on_its_next_allocation() {
    let (pool, reports) = reporting();
    let block = pool.allocate(300).unwrap();
    let addr = block.as_ptr() as usize;
    // SAFETY: a live block, freed once; then written, the bug.
    unsafe {
        pool.free(block).unwrap();
        block.as_ptr().add(200).write(0);
    }
    // First fit: the same address comes first, found damaged, and the
    // allocation goes on past it.
    let next = pool.allocate(300).unwrap();
    assert_ne!(next, block);
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    let damage = reports[0];
    assert_eq!((damage.addr, damage.size, damage.offset, damage.kind), (addr, 300, 200, DamageKind::WriteAfterFree));
    assert_eq!(pool.stats().quarantined_blocks, 1);
    // SAFETY: the quarantined block was never handed out again.
    assert_eq!(unsafe { pool.free(block) }, Err(PoolError::NotAllocated { addr }));
    // SAFETY: a live block, freed once.
    unsafe { pool.free(next).unwrap() };
    pool.check().unwrap();
}

#[test]
fn without_a_callback_a_write_after_free_panics_naming_the_block() {
    let pool = checked();
    for allocate in [MemoryPool::allocate_fast, MemoryPool::allocate] {
        let block = allocate(&pool, 128).unwrap();
        // SAFETY: a live block, freed once; then written, the bug.
        unsafe {
            pool.free(block).unwrap();
            block.as_ptr().add(100).write(9);
        }
        let panic = catch_unwind(AssertUnwindSafe(|| allocate(&pool, 128))).expect_err("the allocation panics");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(message.contains(&format!("block {:#x}", block.as_ptr() as usize)), "{message}");
        assert!(message.contains("offset 100"), "{message}");
        // The pool goes on, without the block.
        let next = allocate(&pool, 128).unwrap();
        assert_ne!(next, block);
        // SAFETY: a live block, freed once.
        unsafe { pool.free(next).unwrap() };
    }
    assert_eq!(pool.stats().quarantined_blocks, 2);
}

#[test]
fn double_frees_are_refused_on_both_paths() {
    let pool = checked();
    for allocate in [MemoryPool::allocate_fast, MemoryPool::allocate] {
        let block = allocate(&pool, 32).unwrap();
        let addr = block.as_ptr() as usize;
        // SAFETY: a live block, freed once, then again: the bug.
        unsafe {
            pool.free_fast(block).unwrap();
            assert_eq!(pool.free_fast(block), Err(PoolError::NotAllocated { addr }));
            assert_eq!(pool.free(block), Err(PoolError::NotAllocated { addr }));
        }
    }
    assert_eq!(pool.stats().live_allocations, 0);
    pool.check().unwrap();
}

#[test]
fn remote_double_frees_are_refused() {
    let pool = checked();
    let owned_then_remote = pool.allocate_fast(24).unwrap();
    let remote_twice = pool.allocate_fast(24).unwrap();
    let overflowed = pool.allocate_fast(24).unwrap();
    fill(overflowed, 25, 3);
    // SAFETY: a live block, freed once by its owner.
    unsafe { pool.free_fast(owned_then_remote).unwrap() };
    let [first, second, third] = [owned_then_remote, remote_twice, overflowed].map(|block| block.as_ptr() as usize);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let [first, second, third] = [first, second, third].map(|addr| NonNull::new(addr as *mut u8).unwrap());
            // SAFETY: double frees on purpose, from a thread that does not
            // own the slab, and a remote free of an overflowed block.
            unsafe {
                assert!(matches!(pool.free_fast(first), Err(PoolError::NotAllocated { .. })));
                pool.free_fast(second).unwrap();
                assert!(matches!(pool.free_fast(second), Err(PoolError::NotAllocated { .. })));
                let damage = damage_of(pool.free_fast(third));
                assert_eq!((damage.addr, damage.offset), (third.as_ptr() as usize, 24));
            }
        });
    });
    // SAFETY: the owner frees the block the other thread freed: a double
    // free, even though the block may still wait in a batch.
    assert_eq!(unsafe { pool.free_fast(remote_twice) }, Err(PoolError::NotAllocated { addr: second }));
    let stats = pool.stats();
    assert_eq!((stats.live_allocations, stats.quarantined_blocks), (0, 1));
}

#[test]
fn memory_freed_by_slabs_and_blocks_is_handed_out_again_without_false_reports() {
    // Panics on any report of a write after free.
    let pool = MemoryPool::with_config(PoolConfig::new(0).checked(true)).unwrap();
    for round in 0..3u8 {
        let cached: Vec<_> = (0..5000).map(|i| pool.allocate_fast(1 + i % 700).unwrap()).collect();
        let shared: Vec<_> = (0..200).map(|i| pool.allocate(1 + i * 97).unwrap()).collect();
        for (i, &block) in cached.iter().chain(&shared).enumerate() {
            fill(block, pool.usable_size(block).unwrap(), round ^ i as u8);
        }
        for block in cached.into_iter().chain(shared) {
            // SAFETY: live blocks, freed once each.
            unsafe { pool.free(block).unwrap() };
        }
        // Slabs go back to the shared pool, purged pages read as zeros.
        pool.compact().unwrap();
        pool.check().unwrap();
    }
    assert_eq!(pool.stats().quarantined_blocks, 0);
}

#[test]
fn collections_in_a_checked_pool_grow_and_keep_their_alignment() {
    let pool = checked();
    let mut vector = allocator_api2::vec::Vec::new_in(&pool);
    for value in 0..10_000u64 {
        vector.push(value);
    }
    assert!(vector.iter().enumerate().all(|(index, &value)| value == index as u64));
    vector.truncate(10);
    vector.shrink_to_fit();
    assert_eq!(vector[..], (0..10).collect::<Vec<u64>>()[..]);
    drop(vector);
    for size in 1..=1100 {
        for align in [1, 2, 4, 8, 16, 32, 64] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let block = Allocator::allocate(&&pool, layout).unwrap();
            assert_eq!(block.len(), size);
            assert_eq!(block.cast::<u8>().as_ptr() as usize % align, 0, "{layout:?}");
            // SAFETY: the block just allocated for `layout`.
            unsafe { Allocator::deallocate(&&pool, block.cast(), layout) };
        }
    }
    assert_eq!(pool.stats().quarantined_blocks, 0);
}

#[test]
fn refusals_name_the_size_asked_not_the_guarded_one() {
    let pool = checked();
    for size in [usize::MAX, usize::MAX - 15, isize::MAX as usize, 1 << 62] {
        assert_eq!(pool.allocate(size), Err(PoolError::SizeOverflow { size }));
        assert_eq!(pool.allocate_fast(size), Err(PoolError::SizeOverflow { size }));
        assert_eq!(pool.allocate_aligned(size, 64), Err(PoolError::SizeOverflow { size }));
    }
    assert_eq!(pool.stats().live_allocations, 0);
}

#[test]
fn unchecked_pools_keep_no_guards() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let block = pool.allocate_fast(40).unwrap();
    assert_eq!(pool.usable_size(block), Ok(48));
    fill(block, 48, 0x33);
    // SAFETY: a live block, freed once: its whole class is the caller's.
    unsafe { pool.free_fast(block).unwrap() };
    assert!(holds(NonNull::new(block.as_ptr().wrapping_add(8)).unwrap(), 40, 0x33), "not poisoned");
}

/// With the secure wipe on as well, a freed block holds poison, not zeros,
/// and no hand-out takes it for a write after free; compacting leaves the
/// checked slabs' pages, whose poison a purge would turn into zeros.
#[test]
fn a_checked_pool_that_also_wipes_reports_nothing_false() {
    let reports = Arc::new(Mutex::new(Vec::<BlockDamage>::new()));
    let sink = Arc::clone(&reports);
    let config = PoolConfig::new(1 << 20)
        .checked(true)
        .zero_on_free(true)
        .on_corruption(move |damage| sink.lock().unwrap().push(*damage));
    let pool = MemoryPool::with_config(config).unwrap();
    for round in 0..4u8 {
        let cache: Vec<NonNull<u8>> = (0..200).map(|_| pool.allocate_fast(48).unwrap()).collect();
        let shared: Vec<NonNull<u8>> = (0..20).map(|_| pool.allocate(3000).unwrap()).collect();
        for &block in &cache {
            fill(block, 48, round + 1);
        }
        for &block in &shared {
            fill(block, 3000, round + 1);
        }
        for &block in &cache {
            assert!(holds(block, 48, round + 1));
            // SAFETY: live blocks of this pool, freed once.
            unsafe { pool.free_fast(block).unwrap() };
        }
        for &block in &shared {
            assert!(holds(block, 3000, round + 1));
            // SAFETY: as above.
            unsafe { pool.free(block).unwrap() };
        }
        pool.compact().unwrap();
    }
    assert!(reports.lock().unwrap().is_empty(), "false reports: {:?}", reports.lock().unwrap());
    assert_eq!(pool.stats().quarantined_blocks, 0);
    pool.check().unwrap();
}
