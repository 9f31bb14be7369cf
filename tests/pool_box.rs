//! `PoolBox`: owned values in pool memory, their drops, zero-sized and
//! over-aligned types, and boxes that move between threads.

use lle_mempool::{MemoryPool, PoolBox, PoolConfig, PoolError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Counts its drops in the counter it points at.
struct Counted<'a> {
    drops: &'a AtomicUsize,
    payload: [u64; 4],
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[repr(align(64))]
#[derive(Debug, PartialEq)]
struct CacheLine([u8; 64]);

#[repr(align(4096))]
struct Page([u32; 1024]);

fn address<T>(value: &T) -> usize {
    value as *const T as usize
}

#[test]
fn values_are_dropped_once_and_their_blocks_freed() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let drops = AtomicUsize::new(0);
    let boxes: Vec<PoolBox<'_, Counted<'_>>> = (0..1_000u64)
        .map(|n| pool.boxed(Counted { drops: &drops, payload: [n, n + 1, n + 2, n + 3] }).unwrap())
        .collect();
    assert!(boxes
        .iter()
        .enumerate()
        .all(|(n, boxed)| boxed.payload == [n as u64, n as u64 + 1, n as u64 + 2, n as u64 + 3]));
    assert!(boxes.iter().all(|boxed| pool.contains(address(&**boxed) as *const u8)));
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.total_allocations), (1_000, stats.fast.slabs as u64));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(boxes);
    assert_eq!(drops.load(Ordering::SeqCst), 1_000);
    assert_eq!(pool.stats().fast.frees, 1_000);
    pool.check().unwrap();
}

#[test]
fn boxes_can_be_changed_through_deref_mut() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let mut numbers = pool.boxed([0u32; 100]).unwrap();
    for (index, slot) in numbers.iter_mut().enumerate() {
        *slot = index as u32 * 7;
    }
    assert!(numbers.iter().enumerate().all(|(index, &value)| value == index as u32 * 7));
    let mut text = pool.boxed(String::from("pool")).unwrap();
    text.push_str("box");
    assert_eq!(*text, "poolbox");
}

#[test]
fn zero_sized_values_take_no_memory_but_are_still_dropped() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Marker;
    impl Drop for Marker {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let pool = MemoryPool::new(4096).unwrap();
    {
        let unit = pool.boxed(()).unwrap();
        assert_eq!(*unit, ());
        let markers: Vec<_> = (0..10).map(|_| pool.boxed(Marker).unwrap()).collect();
        assert_eq!(markers.len(), 10);
        #[repr(align(256))]
        struct AlignedNothing;
        let aligned = pool.boxed(AlignedNothing).unwrap();
        assert_eq!(address(&*aligned) % 256, 0);
        assert_eq!(DROPS.load(Ordering::SeqCst), 0);
    }
    assert_eq!(DROPS.load(Ordering::SeqCst), 10);
    let stats = pool.stats();
    assert_eq!((stats.total_allocations, stats.fast.allocations, stats.used), (0, 0, 0));
}

#[test]
fn over_aligned_values_are_aligned_as_their_type_asks() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let lines: Vec<_> = (0..50u8).map(|n| pool.boxed(CacheLine([n; 64])).unwrap()).collect();
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(address(&**line) % 64, 0);
        assert_eq!(**line, CacheLine([n as u8; 64]));
    }
    let pages: Vec<_> = (0..4u32).map(|n| pool.boxed(Page([n; 1024])).unwrap()).collect();
    for (n, page) in pages.iter().enumerate() {
        assert_eq!(address(&**page) % 4096, 0);
        assert!(page.0.iter().all(|&word| word == n as u32));
    }
    // Alignments above 16 bytes come from the shared pool, not the caches.
    assert_eq!(pool.stats().fast.allocations, 0);
    assert_eq!(pool.stats().live_allocations, 54);
    drop(lines);
    drop(pages);
    assert_eq!(pool.stats().used, 0);
    pool.check().unwrap();
}

#[test]
fn debug_output_is_the_values() {
    let pool = MemoryPool::new(4096).unwrap();
    assert_eq!(format!("{:?}", pool.boxed(42u8).unwrap()), "42");
    assert_eq!(format!("{:?}", pool.boxed(Some("event")).unwrap()), r#"Some("event")"#);
    assert_eq!(format!("{:?}", pool.boxed(CacheLine([1; 64])).unwrap()), format!("{:?}", CacheLine([1; 64])));
    assert_eq!(format!("{:#?}", pool.boxed((1, 2)).unwrap()), "(\n    1,\n    2,\n)");
}

#[test]
fn boxes_move_to_other_threads_and_are_freed_there() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let drops = AtomicUsize::new(0);
    let (sender, receiver) = mpsc::channel::<PoolBox<'_, Counted<'_>>>();
    std::thread::scope(|scope| {
        let consumer = scope.spawn(move || {
            let mut sum = 0u64;
            for boxed in receiver {
                assert_eq!(boxed.payload[1], boxed.payload[0] * 2);
                sum += boxed.payload[0];
            }
            sum
        });
        for n in 0..2_000u64 {
            sender.send(pool.boxed(Counted { drops: &drops, payload: [n, n * 2, 0, 0] }).unwrap()).unwrap();
        }
        drop(sender);
        assert_eq!(consumer.join().unwrap(), (0..2_000).sum::<u64>());
    });
    assert_eq!(drops.load(Ordering::SeqCst), 2_000);
    let stats = pool.stats();
    assert_eq!(stats.fast.frees, 2_000);
    assert_eq!(stats.fast.remote_frees, 2_000, "the consumer freed into the producer's slabs");
    pool.check().unwrap();
}

#[test]
fn raw_round_trips_and_into_inner_keep_the_value() {
    let pool = MemoryPool::new(1 << 20).unwrap();
    let raw = PoolBox::into_raw(pool.boxed(vec![1, 2, 3]).unwrap());
    assert!(pool.contains(raw.as_ptr().cast()));
    // SAFETY: from `into_raw` of a box of this pool, taken back once.
    let back = unsafe { PoolBox::from_raw(&pool, raw) };
    assert_eq!(*back, [1, 2, 3]);
    assert!(std::ptr::eq(PoolBox::pool(&back), &pool));
    let vector = PoolBox::into_inner(back);
    assert_eq!(vector, [1, 2, 3]);
    let stats = pool.stats();
    assert_eq!((stats.fast.allocations, stats.fast.frees), (1, 1));
}

#[test]
fn a_panicking_drop_still_frees_the_block() {
    struct Explodes(u64);
    impl Drop for Explodes {
        fn drop(&mut self) {
            panic!("drop failed");
        }
    }
    let pool = MemoryPool::new(1 << 20).unwrap();
    let boxed = pool.boxed(Explodes(1)).unwrap();
    assert_eq!(boxed.0, 1);
    assert!(catch_unwind(AssertUnwindSafe(|| drop(boxed))).is_err());
    assert_eq!(pool.stats().fast.frees, 1);
    pool.check().unwrap();
}

#[test]
fn a_full_pool_refuses_the_value_with_an_error() {
    let pool = MemoryPool::with_config(PoolConfig::new(4096).max_size(4096)).unwrap();
    let refused = pool.boxed(Page([0; 1024]));
    assert!(matches!(refused, Err(PoolError::ExceedsMaxSize { .. })));
    let small = pool.boxed(CacheLine([5; 64])).unwrap();
    assert_eq!(small.0[63], 5);
}
