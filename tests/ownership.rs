//! Which memory is the pool's: `contains`, `free` and `usable_size` tell
//! blocks of either path, free pool memory and foreign memory apart as the
//! pool grows and gives memory back; `contains` without allocating.

mod common;

use common::{assert_intact, fill, page_size};
use lle_mempool::{MemoryPool, PoolError};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::Range;
use std::ptr::NonNull;

/// Counts this thread's allocations, so a test can tell that a call made
/// none (other tests' threads keep their own counts).
struct CountingAllocator;

std::thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; counting touches
// only a const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: CountingAllocator = CountingAllocator;

fn allocations_on_this_thread() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn in_any(regions: &[Range<usize>], addr: usize) -> bool {
    regions.iter().any(|region| region.contains(&addr))
}

fn at(addr: usize) -> NonNull<u8> {
    NonNull::new(addr as *mut u8).expect("not null")
}

/// Every page of every region, and the bytes either side of each region,
/// classify as the regions say.
fn assert_contains_exactly(pool: &MemoryPool, regions: &[Range<usize>]) {
    let page = page_size();
    for region in regions {
        for addr in region.clone().step_by(page) {
            assert!(pool.contains(addr as *const u8), "page {addr:#x} of {region:x?}");
            assert!(pool.contains((addr + page - 1) as *const u8), "end of page {addr:#x} of {region:x?}");
        }
        for edge in [region.start - 1, region.end] {
            assert_eq!(pool.contains(edge as *const u8), in_any(regions, edge), "edge {edge:#x} of {region:x?}");
        }
    }
}

#[test]
fn contains_and_free_follow_the_regions_across_grow_and_compact() {
    let page = page_size();
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let small = pool.allocate(100).unwrap();
    let cached = pool.allocate_fast(48).unwrap();
    // SAFETY: live blocks of these sizes.
    unsafe {
        fill(small, 100, 1);
        fill(cached, 48, 2);
    }
    pool.expand(1 << 20).unwrap();
    let large = pool.allocate(600 * 1024).unwrap();
    // SAFETY: as above.
    unsafe { fill(large, 600 * 1024, 3) };
    let grown = pool.regions();
    assert_contains_exactly(&pool, &grown);
    for block in [small, cached, large] {
        assert!(pool.contains(block.as_ptr()));
    }

    // Foreign memory: the heap, the stack; refused without being read.
    let heap = Box::new([0u8; 64]);
    let mut stack = 0u8;
    for foreign in [heap.as_ptr() as usize, &mut stack as *mut u8 as usize] {
        assert!(!pool.contains(foreign as *const u8));
        assert_eq!(pool.usable_size(at(foreign)), Err(PoolError::ForeignPointer { addr: foreign }));
        // SAFETY: refused, whatever the pointer.
        assert_eq!(unsafe { pool.free(at(foreign)) }, Err(PoolError::ForeignPointer { addr: foreign }));
        // SAFETY: as above.
        assert_eq!(unsafe { pool.free_fast(at(foreign)) }, Err(PoolError::ForeignPointer { addr: foreign }));
    }
    // Inside the pool but not at a block's start.
    let interior = large.as_ptr() as usize + 16;
    // SAFETY: refused: an interior pointer.
    assert_eq!(unsafe { pool.free(at(interior)) }, Err(PoolError::InteriorPointer { addr: interior }));
    let interior = cached.as_ptr() as usize + 16;
    // SAFETY: as above.
    assert_eq!(unsafe { pool.free_fast(at(interior)) }, Err(PoolError::InteriorPointer { addr: interior }));

    // Give the large block's memory back: its pages are foreign again.
    // SAFETY: live, no longer used.
    unsafe {
        assert_intact(large, 600 * 1024, 3);
        pool.free(large).unwrap();
    }
    assert!(pool.compact().unwrap() > 0, "nothing was given back");
    let compacted = pool.regions();
    assert_contains_exactly(&pool, &compacted);
    let mut given_back = 0;
    for region in &grown {
        for addr in region.clone().step_by(page).filter(|&addr| !in_any(&compacted, addr)) {
            given_back += 1;
            assert!(!pool.contains(addr as *const u8), "page {addr:#x} was given back");
            assert!(!pool.contains((addr + page - 1) as *const u8), "page {addr:#x} was given back");
            // SAFETY: refused: not the pool's memory any more.
            assert_eq!(unsafe { pool.free(at(addr)) }, Err(PoolError::ForeignPointer { addr }));
            assert_eq!(pool.usable_size(at(addr)), Err(PoolError::ForeignPointer { addr }));
        }
    }
    assert!(given_back > 0);

    // The blocks that stayed are still the pool's, intact, and free.
    // SAFETY: live blocks, no longer used after this.
    unsafe {
        assert_intact(small, 100, 1);
        assert_intact(cached, 48, 2);
        assert_eq!(pool.usable_size(small), Ok(112));
        pool.free(small).unwrap();
        assert_eq!(pool.free(small), Err(PoolError::NotAllocated { addr: small.as_ptr() as usize }));
        pool.free_fast(cached).unwrap();
    }
    pool.compact().unwrap();
    assert_contains_exactly(&pool, &pool.regions());
    pool.check().unwrap();
}

#[test]
fn contains_does_not_allocate() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let shared = pool.allocate(256).unwrap();
    let cached = pool.allocate_fast(32).unwrap();
    let heap = Box::new(0u64);
    let probes = [shared.as_ptr() as usize, cached.as_ptr() as usize, &*heap as *const u64 as usize, 0, usize::MAX];
    let before = allocations_on_this_thread();
    let mut contained = 0;
    for _ in 0..1_000 {
        for probe in probes {
            contained += usize::from(pool.contains(probe as *const u8));
        }
    }
    assert_eq!(allocations_on_this_thread(), before, "contains allocated");
    assert_eq!(contained, 2 * 1_000);
    // SAFETY: live blocks, no longer used.
    unsafe {
        pool.free(shared).unwrap();
        pool.free_fast(cached).unwrap();
    }
}

#[test]
fn readers_classify_while_the_pool_grows_and_shrinks() {
    let pool = MemoryPool::new(64 * 1024).unwrap();
    let resident = pool.allocate(1000).unwrap();
    // SAFETY: a live block of 1000 bytes.
    unsafe { fill(resident, 1000, 7) };
    let resident_addr = resident.as_ptr() as usize;
    let heap = Box::new([0u8; 256]);
    let heap_addr = heap.as_ptr() as usize;
    std::thread::scope(|scope| {
        let pool = &pool;
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(move || {
                    for _ in 0..20_000 {
                        assert!(pool.contains(resident_addr as *const u8), "a live block left the pool");
                        assert!(!pool.contains(heap_addr as *const u8), "heap memory joined the pool");
                        assert_eq!(pool.usable_size(at(resident_addr)), Ok(1008));
                    }
                })
            })
            .collect();
        for round in 0..40 {
            pool.expand(256 * 1024).unwrap();
            let block = pool.allocate(200 * 1024).unwrap();
            // SAFETY: a live block of that size.
            unsafe { fill(block, 200 * 1024, round) };
            assert!(pool.contains(block.as_ptr()));
            // SAFETY: live, no longer used after the check.
            unsafe {
                assert_intact(block, 200 * 1024, round);
                pool.free(block).unwrap();
            }
            pool.compact().unwrap();
        }
        for reader in readers {
            reader.join().unwrap();
        }
    });
    // SAFETY: live, no longer used.
    unsafe {
        assert_intact(resident, 1000, 7);
        pool.free(resident).unwrap();
    }
    pool.check().unwrap();
}
