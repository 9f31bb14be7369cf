//! `&MemoryPool` as an `allocator_api2` allocator: vectors, boxes and
//! hashbrown maps in the pool, zero-sized and over-aligned layouts, and
//! growing and shrinking in place.

use allocator_api2::alloc::{Allocator, Layout};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use lle_mempool::{MemoryPool, PoolConfig};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The pool seen only as an `Allocator`: `MemoryPool`'s own `allocate`
/// (by size) would otherwise win method resolution on `&MemoryPool`.
fn as_allocator(pool: &MemoryPool) -> impl Allocator + '_ {
    pool
}

fn fill(block: NonNull<[u8]>, len: usize, seed: u8) {
    let start = block.cast::<u8>().as_ptr();
    for offset in 0..len {
        // SAFETY: the tests fill only blocks they own, within their size.
        unsafe { start.add(offset).write(seed.wrapping_add(offset as u8)) };
    }
}

fn holds(block: NonNull<[u8]>, len: usize, seed: u8) -> bool {
    // SAFETY: as in `fill`.
    let bytes = unsafe { std::slice::from_raw_parts(block.cast::<u8>().as_ptr(), len) };
    bytes.iter().enumerate().all(|(offset, &byte)| byte == seed.wrapping_add(offset as u8))
}

fn address(block: NonNull<[u8]>) -> usize {
    block.cast::<u8>().as_ptr() as usize
}

#[test]
fn a_vector_grows_by_pushes_and_keeps_its_contents() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut numbers = Vec::new_in(&pool);
    for n in 0..100_000u64 {
        numbers.push(n * 3 + 1);
        if n % 10_000 == 0 {
            assert!(pool.contains(numbers.as_ptr().cast()));
        }
    }
    assert!(numbers.iter().enumerate().all(|(n, &value)| value == n as u64 * 3 + 1));
    assert!(pool.contains(numbers.as_ptr().cast()));
    pool.check().unwrap();
    let mut strings = Vec::new_in(&pool);
    for n in 0..2_000 {
        strings.push(format!("entry {n}"));
    }
    strings.truncate(1_000);
    strings.shrink_to_fit();
    assert_eq!(strings.capacity(), 1_000);
    assert!(strings.iter().enumerate().all(|(n, text)| *text == format!("entry {n}")));
    drop(numbers);
    drop(strings);
    assert_eq!(pool.stats().used, pool.stats().fast.slabs * 64 * 1024, "only cache slabs remain");
    pool.check().unwrap();
}

#[test]
fn boxes_live_in_the_pool_and_drop_their_values() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Counted(u64);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let pool = MemoryPool::new(1 << 20).unwrap();
    let boxes: std::vec::Vec<Box<Counted, &MemoryPool>> = (0..500).map(|n| Box::new_in(Counted(n), &pool)).collect();
    assert!(boxes
        .iter()
        .enumerate()
        .all(|(n, boxed)| boxed.0 == n as u64 && pool.contains((&**boxed as *const Counted).cast())));
    assert_eq!(pool.stats().fast.allocations, 500);
    drop(boxes);
    assert_eq!(DROPS.load(Ordering::SeqCst), 500);
    assert_eq!(pool.stats().fast.frees, 500);

    let big = Box::new_in([0x5Au8; 8192], &pool);
    assert!(pool.contains(big.as_ptr()));
    assert!(big.iter().all(|&byte| byte == 0x5A));
    assert_eq!(pool.stats().live_allocations, 1);
    drop(big);
    assert_eq!(pool.stats().live_allocations, 0);
    assert_eq!(pool.stats().used, pool.stats().fast.slab_bytes, "only cache slabs remain");
    pool.check().unwrap();
}

#[test]
fn a_hashbrown_map_with_many_entries_lives_in_the_pool() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut map = hashbrown::HashMap::new_in(&pool);
    for key in 0..50_000u64 {
        map.insert(key, key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    assert_eq!(map.len(), 50_000);
    assert!((0..50_000u64).all(|key| map[&key] == key.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    map.retain(|key, _| key % 2 == 0);
    assert_eq!(map.len(), 25_000);
    assert!((0..50_000u64).all(|key| map.get(&key).is_some() == (key % 2 == 0)));
    assert!(pool.stats().used >= 25_000 * 16, "the table is in the pool");
    map.shrink_to_fit();
    assert!((0..50_000u64).step_by(2).all(|key| map[&key] == key.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    pool.check().unwrap();
    drop(map);
    pool.check().unwrap();
}

#[test]
fn zero_sized_layouts_are_dangling_aligned_and_never_touch_the_pool() {
    let pool = MemoryPool::new(4096).unwrap();
    for align in [1usize, 8, 64, 4096] {
        let layout = Layout::from_size_align(0, align).unwrap();
        let block = as_allocator(&pool).allocate(layout).unwrap();
        assert_eq!(block.len(), 0);
        assert_eq!(address(block) % align, 0);
        // SAFETY: the block was allocated for this layout just now.
        unsafe { as_allocator(&pool).deallocate(block.cast(), layout) };
    }
    let mut units = Vec::new_in(&pool);
    units.extend(std::iter::repeat_n((), 1_000));
    assert_eq!(units.len(), 1_000);
    let empty_box = Box::new_in((), &pool);
    drop(empty_box);
    drop(units);
    let stats = pool.stats();
    assert_eq!((stats.total_allocations, stats.fast.allocations, stats.used), (0, 0, 0));
}

#[test]
fn small_layouts_use_the_fast_path_and_over_aligned_ones_are_aligned() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let small = as_allocator(&pool).allocate(Layout::from_size_align(40, 8).unwrap()).unwrap();
    assert_eq!(small.len(), 48, "a cache block reports its class size");
    assert_eq!(pool.stats().fast.allocations, 1);
    for align in [32usize, 256, 4096, 65536] {
        let layout = Layout::from_size_align(100, align).unwrap();
        let block = as_allocator(&pool).allocate(layout).unwrap();
        assert_eq!(address(block) % align, 0, "align {align}");
        assert_eq!(block.len(), 112);
        fill(block, 100, align as u8);
        assert!(holds(block, 100, align as u8));
        // SAFETY: allocated just now for this layout.
        unsafe { as_allocator(&pool).deallocate(block.cast(), layout) };
    }
    // SAFETY: allocated above for this layout.
    unsafe { as_allocator(&pool).deallocate(small.cast(), Layout::from_size_align(40, 8).unwrap()) };
    pool.check().unwrap();
}

#[test]
fn shared_blocks_grow_in_place_while_the_next_block_is_free() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let allocator = as_allocator(&pool);
    let small = Layout::from_size_align(2000, 8).unwrap();
    let block = allocator.allocate(small).unwrap();
    assert_eq!(block.len(), 2000);
    fill(block, 2000, 1);

    let larger = Layout::from_size_align(20_000, 8).unwrap();
    // SAFETY: a live block for `small`, which is no larger.
    let grown = unsafe { allocator.grow(block.cast(), small, larger) }.unwrap();
    assert_eq!(address(grown), address(block), "the free granules after it were taken");
    assert_eq!(grown.len(), 20_000);
    assert!(holds(grown, 2000, 1));
    assert_eq!(pool.usable_size(grown.cast()).unwrap(), 20_000);
    assert_eq!(pool.stats().used, 20_000);
    pool.check().unwrap();

    // A block right after it stops the next growth in place.
    let neighbour = pool.allocate(100).unwrap();
    assert_eq!(neighbour.as_ptr() as usize, address(grown) + 20_000);
    fill(grown, 20_000, 2);
    let largest = Layout::from_size_align(30_000, 8).unwrap();
    // SAFETY: a live block for `larger`.
    let moved = unsafe { allocator.grow(grown.cast(), larger, largest) }.unwrap();
    assert_ne!(address(moved), address(grown));
    assert!(holds(moved, 20_000, 2), "moving copied the contents");
    assert_eq!(pool.stats().used, 30_000 + 112);
    pool.check().unwrap();

    // Freeing the neighbour again lets the moved block grow in place.
    // SAFETY: allocated above and not used after.
    unsafe { pool.free(neighbour).unwrap() };
    let even_larger = Layout::from_size_align(34_000, 8).unwrap();
    // SAFETY: a live block for `largest`.
    let regrown = unsafe { allocator.grow(moved.cast(), largest, even_larger) }.unwrap();
    assert_eq!(address(regrown), address(moved));
    // SAFETY: a live block for `even_larger`.
    unsafe { allocator.deallocate(regrown.cast(), even_larger) };
    assert_eq!(pool.stats().used, 0);
    pool.check().unwrap();
}

#[test]
fn a_vector_reserving_more_stays_where_it_is_when_it_can() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut bytes: Vec<u8, &MemoryPool> = Vec::with_capacity_in(4096, &pool);
    bytes.extend((0..4096).map(|n| n as u8));
    let before = bytes.as_ptr();
    bytes.reserve_exact(60_000);
    assert_eq!(bytes.as_ptr(), before, "grew into the free space after it");
    assert!(bytes.capacity() >= 64_096);
    assert!(bytes.iter().enumerate().all(|(n, &byte)| byte == n as u8));
    bytes.truncate(100);
    bytes.shrink_to_fit();
    assert_eq!(bytes.as_ptr(), before, "shrank where it was");
    assert_eq!(pool.stats().used, 112);
    pool.check().unwrap();
}

#[test]
fn cache_blocks_grow_within_their_class_and_move_beyond_it() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let allocator = as_allocator(&pool);
    let layout = Layout::from_size_align(40, 8).unwrap();
    let block = allocator.allocate(layout).unwrap();
    fill(block, 40, 9);
    let fits = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a live block for `layout`.
    let same = unsafe { allocator.grow(block.cast(), layout, fits) }.unwrap();
    assert_eq!((address(same), same.len()), (address(block), 48));
    let beyond = Layout::from_size_align(300, 8).unwrap();
    // SAFETY: a live block for `fits`.
    let moved = unsafe { allocator.grow(same.cast(), fits, beyond) }.unwrap();
    assert_ne!(address(moved), address(block));
    assert!(holds(moved, 40, 9));
    assert_eq!(moved.len(), 320);
    assert_eq!(pool.stats().fast.frees, 1, "the old block went back");

    // Shrinking a little stays; shrinking to under half the class moves.
    let slightly = Layout::from_size_align(290, 8).unwrap();
    // SAFETY: a live block for `beyond`.
    let kept = unsafe { allocator.shrink(moved.cast(), beyond, slightly) }.unwrap();
    assert_eq!(address(kept), address(moved));
    let tiny = Layout::from_size_align(20, 8).unwrap();
    // SAFETY: a live block for `slightly`.
    let compacted = unsafe { allocator.shrink(kept.cast(), slightly, tiny) }.unwrap();
    assert_ne!(address(compacted), address(kept));
    assert_eq!(compacted.len(), 32);
    assert!(holds(compacted, 20, 9));
    // SAFETY: a live block for `tiny`.
    unsafe { allocator.deallocate(compacted.cast(), tiny) };
    let stats = pool.stats();
    assert_eq!(stats.fast.allocations, stats.fast.frees);
}

#[test]
fn shared_blocks_shrink_in_place_and_free_their_tail() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let allocator = as_allocator(&pool);
    let layout = Layout::from_size_align(16_000, 16).unwrap();
    let block = allocator.allocate(layout).unwrap();
    fill(block, 16_000, 3);
    let after = pool.allocate(64).unwrap();
    let smaller = Layout::from_size_align(5_000, 16).unwrap();
    // SAFETY: a live block for `layout`.
    let shrunk = unsafe { allocator.shrink(block.cast(), layout, smaller) }.unwrap();
    assert_eq!((address(shrunk), shrunk.len()), (address(block), 5_008));
    assert!(holds(shrunk, 5_000, 3));
    assert_eq!(pool.stats().used, 5_008 + 64);
    pool.check().unwrap();
    // The freed tail is a free block of its own, first in address order.
    let reused = pool.allocate(10_000).unwrap();
    assert_eq!(reused.as_ptr() as usize, address(shrunk) + 5_008);
    // To zero bytes: freed, and an empty block comes back.
    let nothing = Layout::from_size_align(0, 16).unwrap();
    // SAFETY: a live block for `smaller`.
    let empty = unsafe { allocator.shrink(shrunk.cast(), smaller, nothing) }.unwrap();
    assert_eq!(empty.len(), 0);
    // SAFETY: both allocated above and not used after.
    unsafe {
        pool.free(reused).unwrap();
        pool.free(after).unwrap();
    }
    assert_eq!(pool.stats().used, 0);
    pool.check().unwrap();
}

#[test]
fn grow_zeroed_clears_everything_past_the_old_size() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let allocator = as_allocator(&pool);
    // Dirty the memory the block will grow into.
    let scratch = pool.allocate(8192).unwrap();
    // SAFETY: a live block of 8192 bytes.
    unsafe {
        scratch.as_ptr().write_bytes(0xFF, 8192);
        pool.free(scratch).unwrap();
    }
    let layout = Layout::from_size_align(2048, 16).unwrap();
    let block = allocator.allocate(layout).unwrap();
    fill(block, 2048, 4);
    let larger = Layout::from_size_align(6000, 16).unwrap();
    // SAFETY: a live block for `layout`.
    let grown = unsafe { allocator.grow_zeroed(block.cast(), layout, larger) }.unwrap();
    assert_eq!(address(grown), address(block));
    assert!(holds(grown, 2048, 4));
    // SAFETY: the grown block holds `grown.len()` bytes.
    let tail = unsafe { std::slice::from_raw_parts(grown.cast::<u8>().as_ptr().add(2048), grown.len() - 2048) };
    assert!(tail.iter().all(|&byte| byte == 0));
    // SAFETY: a live block for `larger`.
    unsafe { allocator.deallocate(grown.cast(), larger) };
    pool.check().unwrap();
}

#[test]
fn a_full_pool_refuses_with_an_error_not_a_crash() {
    let pool = MemoryPool::with_config(PoolConfig::new(256 * 1024).max_size(256 * 1024)).unwrap();
    let allocator = as_allocator(&pool);
    assert!(allocator.allocate(Layout::from_size_align(1 << 20, 16).unwrap()).is_err());
    let mut bytes: Vec<u8, &MemoryPool> = Vec::new_in(&pool);
    assert!(bytes.try_reserve(1 << 20).is_err());
    bytes.try_reserve(1000).unwrap();
    bytes.extend(std::iter::repeat_n(7, 1000));
    assert!(bytes.iter().all(|&byte| byte == 7));
    assert!(pool.stats().failed_allocations >= 2);
    pool.check().unwrap();
}
