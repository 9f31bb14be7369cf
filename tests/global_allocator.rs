//! A `GlobalPool` as this whole test binary's global allocator: the test
//! harness, its threads, and every `Vec`, `String` and `HashMap` below
//! allocate through it. Not under the models: their primitives work only
//! inside a model run, and the harness allocates before any test starts.

#![cfg(not(lle_mempool_model))]

use lle_mempool::GlobalPool;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: GlobalPool = GlobalPool::new();

fn in_global_pool<T>(value: *const T) -> bool {
    GLOBAL.with_pool(|pool| pool.contains(value.cast())).expect("the global pool exists")
}

fn assert_global_pool_is_consistent() {
    let verdict = GLOBAL.with_pool(|pool| pool.check()).expect("the global pool exists");
    assert_eq!(verdict, Ok(()));
}

#[test]
fn threads_build_vectors_strings_and_maps_and_hand_them_over() {
    const THREADS: u64 = 4;
    const ENTRIES: u64 = 5_000;
    let (sender, receiver) = mpsc::channel::<(u64, HashMap<String, Vec<u64>>)>();
    let producers: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let sender = sender.clone();
            thread::spawn(move || {
                let mut map = HashMap::new();
                for key in 0..ENTRIES {
                    let values: Vec<u64> = (0..key % 17).map(|n| thread_index * 1_000_000 + key * 100 + n).collect();
                    map.insert(format!("thread {thread_index} key {key}"), values);
                }
                // Churn: replace half of the values, growing and shrinking strings.
                for key in (0..ENTRIES).step_by(2) {
                    let mut text = format!("thread {thread_index} key {key}");
                    let values = map.remove(&text).expect("inserted above");
                    text.push_str(" again");
                    text.truncate(text.len() - " again".len());
                    map.insert(text, values);
                }
                sender.send((thread_index, map)).expect("the receiver is alive");
            })
        })
        .collect();
    drop(sender);
    // The maps are dropped here, on another thread than made them: their
    // blocks go back to the producers' slabs, which may have exited.
    let mut seen = 0;
    for (thread_index, map) in receiver {
        assert_eq!(map.len() as u64, ENTRIES);
        for key in 0..ENTRIES {
            let values = &map[&format!("thread {thread_index} key {key}")];
            assert_eq!(values.len() as u64, key % 17);
            assert!(values
                .iter()
                .enumerate()
                .all(|(n, &value)| value == thread_index * 1_000_000 + key * 100 + n as u64));
        }
        seen += 1;
    }
    assert_eq!(seen, THREADS);
    for producer in producers {
        producer.join().unwrap();
    }
    assert_global_pool_is_consistent();
}

#[test]
fn blocks_of_every_size_and_alignment_come_from_the_pool() {
    let small = Box::new([7u64; 4]);
    let text = String::from("served by the pool's thread cache");
    let large = vec![1u8; 64 * 1024];
    let huge = vec![2u64; 1 << 20];
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let page = Box::new(Page([3; 4096]));
    assert!(in_global_pool(&*small));
    assert!(in_global_pool(text.as_ptr()));
    assert!(in_global_pool(large.as_ptr()));
    assert!(in_global_pool(huge.as_ptr()));
    assert!(in_global_pool(&*page));
    assert_eq!(&*page as *const Page as usize % 4096, 0);
    assert!(large.iter().all(|&byte| byte == 1) && small.iter().all(|&word| word == 7));
    assert!(huge.iter().all(|&word| word == 2) && page.0.iter().all(|&byte| byte == 3));
    let stats = GLOBAL.with_pool(|pool| pool.stats()).expect("the global pool exists");
    assert!(stats.fast.allocations > 0 && stats.fast.slabs > 0, "{stats:?}");
    assert!(stats.used >= 9 << 20, "the large blocks are the pool's: {stats:?}");
    assert_global_pool_is_consistent();
}

#[test]
fn vectors_grow_and_shrink_inside_the_pool() {
    let mut numbers: Vec<u32> = Vec::new();
    let mut in_pool_at = Vec::new();
    for n in 0..100_000u32 {
        let before = numbers.as_ptr();
        numbers.push(n);
        if numbers.as_ptr() != before {
            in_pool_at.push((numbers.capacity(), in_global_pool(numbers.as_ptr())));
        }
    }
    assert!(numbers.iter().enumerate().all(|(n, &value)| value == n as u32));
    assert!(in_pool_at.iter().all(|&(_, in_pool)| in_pool), "{in_pool_at:?}");
    numbers.truncate(10);
    numbers.shrink_to_fit();
    assert!(in_global_pool(numbers.as_ptr()));
    assert_eq!(numbers, (0..10).collect::<Vec<_>>());
}

#[test]
fn with_pool_sends_its_own_allocations_to_the_system() {
    let outcome = GLOBAL.with_pool(|pool| {
        // Inside, the global allocator must not re-enter the pool: this
        // vector comes from the system, and compact's own allocations too.
        // Several: a nested allocation must leave the mark in place for
        // the next one.
        let scratch: Vec<Vec<u8>> = (0..4).map(|n| vec![n; 16]).collect();
        let scratch_in_pool = scratch.iter().any(|bytes| pool.contains(bytes.as_ptr()));
        let compacted = pool.compact();
        let nested = GLOBAL.with_pool(|same| std::ptr::eq(same, pool));
        (scratch_in_pool, compacted.is_ok(), nested)
    });
    assert_eq!(outcome, Some((false, true, Some(true))));
    // Outside again, small allocations are the pool's.
    let after = Box::new(5u64);
    assert!(in_global_pool(&*after));
    assert_global_pool_is_consistent();
}

#[test]
fn blocks_outlive_the_threads_that_allocated_them() {
    let handles: Vec<_> = (0..8u64)
        .map(|thread_index| {
            thread::spawn(move || (0..500u64).map(|n| Box::new(thread_index * 1_000 + n)).collect::<Vec<_>>())
        })
        .collect();
    let boxes: Vec<Vec<Box<u64>>> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
    for (thread_index, values) in boxes.iter().enumerate() {
        assert!(values.iter().enumerate().all(|(n, value)| **value == thread_index as u64 * 1_000 + n as u64));
        assert!(in_global_pool(&*values[0]));
    }
    drop(boxes);
    GLOBAL.with_pool(|pool| pool.compact()).expect("the global pool exists").unwrap();
    assert_global_pool_is_consistent();
}

#[test]
fn a_second_global_pool_serves_and_routes_each_call() {
    let local = GlobalPool::with_initial_size(256 * 1024);
    let small = Layout::from_size_align(40, 8).unwrap();
    // SAFETY (whole test): every block is used within its layout and given
    // back once, to the allocator that made it, with its current layout.
    unsafe {
        let block = local.alloc(small);
        assert!(local.with_pool(|pool| pool.contains(block)).unwrap());
        block.write_bytes(0xC3, 40);

        let same = local.realloc(block, small, 48);
        assert_eq!(same, block, "48 bytes still fit the 48-byte class");
        let moved = local.realloc(same, Layout::from_size_align(48, 8).unwrap(), 600);
        assert_ne!(moved, block);
        assert!(local.with_pool(|pool| pool.contains(moved)).unwrap());
        assert!(std::slice::from_raw_parts(moved, 40).iter().all(|&byte| byte == 0xC3));

        let shared = local.realloc(moved, Layout::from_size_align(600, 8).unwrap(), 5000);
        assert!(local.with_pool(|pool| pool.contains(shared)).unwrap());
        assert!(std::slice::from_raw_parts(shared, 40).iter().all(|&byte| byte == 0xC3));
        let used = || local.with_pool(|pool| pool.stats().used).unwrap();
        let used_at_5000 = used();
        // Shrinking a shared block frees its tail where it is.
        let back = local.realloc(shared, Layout::from_size_align(5000, 8).unwrap(), 64);
        assert_eq!(back, shared, "shrunk in place");
        assert_eq!(used(), used_at_5000 - 5008 + 64);
        assert!(std::slice::from_raw_parts(back, 40).iter().all(|&byte| byte == 0xC3));
        local.dealloc(back, Layout::from_size_align(64, 8).unwrap());
        assert_eq!(used(), used_at_5000 - 5008);

        let dirty = local.alloc(small);
        dirty.write_bytes(0xFF, 40);
        local.dealloc(dirty, small);
        let zeroed = local.alloc_zeroed(small);
        assert_eq!(zeroed, dirty, "the same cache block, reused");
        assert!(std::slice::from_raw_parts(zeroed, 40).iter().all(|&byte| byte == 0));
        local.dealloc(zeroed, small);

        let over_aligned = Layout::from_size_align(64, 64).unwrap();
        let aligned = local.alloc(over_aligned);
        assert_eq!(aligned as usize % 64, 0);
        assert!(local.with_pool(|pool| pool.contains(aligned)).unwrap(), "the shared pool aligns as asked");
        local.dealloc(aligned, over_aligned);

        // Beyond what the pool aligns: the system's.
        let beyond = Layout::from_size_align(64, 2 << 30).unwrap();
        let far = local.alloc(beyond);
        if !far.is_null() {
            assert_eq!(far as usize % (2 << 30), 0);
            assert!(!local.with_pool(|pool| pool.contains(far)).unwrap());
            local.dealloc(far, beyond);
        }
    }
    let stats = local.with_pool(|pool| pool.stats()).unwrap();
    assert_eq!((stats.fast.allocations, stats.fast.frees), (4, 4), "{stats:?}");
    assert_eq!(local.with_pool(|pool| pool.check()), Some(Ok(())));
}

#[test]
fn a_shared_block_grows_in_place_while_the_memory_after_it_is_free() {
    let local = GlobalPool::with_initial_size(256 * 1024);
    let layout = |size| Layout::from_size_align(size, 8).unwrap();
    let used = || local.with_pool(|pool| pool.stats().used).unwrap();
    // SAFETY: each block is used within its layout and given back once, to
    // the allocator that made it, with its current layout.
    unsafe {
        // The pool's first block: all the pool's memory follows it.
        let first = local.alloc(layout(5000));
        first.write_bytes(0x5A, 5000);
        let grown = local.realloc(first, layout(5000), 20_000);
        assert_eq!(grown, first, "grown in place");
        assert_eq!(used(), 20_000);
        let next = local.alloc(layout(3000));
        assert_eq!(next as usize, first as usize + 20_000, "first fit, right after it");
        // Now the memory after it is taken: it moves, with its contents.
        let moved = local.realloc(grown, layout(20_000), 40_000);
        assert_ne!(moved, first);
        assert!(local.with_pool(|pool| pool.contains(moved)).unwrap());
        assert!(std::slice::from_raw_parts(moved, 5000).iter().all(|&byte| byte == 0x5A));
        assert_eq!(used(), 40_000 + 3008);
        local.dealloc(moved, layout(40_000));
        local.dealloc(next, layout(3000));
    }
    assert_eq!(local.with_pool(|pool| (pool.stats().used, pool.check())), Some((0, Ok(()))));
}

#[test]
fn blocks_freed_inside_with_pool_are_given_back_when_it_returns() {
    let local = GlobalPool::with_initial_size(256 * 1024);
    let large = Layout::from_size_align(8192, 8).unwrap();
    let small = Layout::from_size_align(32, 8).unwrap();
    // SAFETY: each block is given back once, to the allocator that made it.
    unsafe {
        let (shared, cached) = (local.alloc(large), local.alloc(small));
        assert!(local.with_pool(|pool| pool.contains(shared) && pool.contains(cached)).unwrap());
        let used_before = local.with_pool(|pool| pool.stats().used).unwrap();
        let used_inside = local.with_pool(|pool| {
            // Inside, as in any pool operation, a free must not take the
            // shared pool's lock: the shared block waits.
            local.dealloc(shared, large);
            local.dealloc(cached, small);
            pool.stats().used
        });
        assert_eq!(used_inside, Some(used_before), "the shared block waits while inside");
        let used_after = local.with_pool(|pool| pool.stats().used).unwrap();
        assert_eq!(used_after, used_before - 8192, "and is freed when the outermost with_pool returns");
        // Its memory serves again.
        let again = local.alloc(large);
        assert_eq!(again, shared);
        local.dealloc(again, large);
    }
    assert_eq!(local.with_pool(|pool| pool.check()), Some(Ok(())));
}

#[test]
fn a_thread_that_frees_a_shared_block_frees_those_waiting_too() {
    let local = GlobalPool::with_initial_size(256 * 1024);
    let large = Layout::from_size_align(4096, 16).unwrap();
    // SAFETY: each block is given back once, to the allocator that made it.
    unsafe {
        let blocks: Vec<usize> = (0..3).map(|_| local.alloc(large) as usize).collect();
        let used = || local.with_pool(|pool| pool.stats().used).unwrap();
        let used_before = used();
        // A nested with_pool: the outer one is still running, so the blocks
        // freed inside wait past the inner one's end.
        let used_inside = local.with_pool(|_| {
            local.with_pool(|_| {
                local.dealloc(blocks[0] as *mut u8, large);
                local.dealloc(blocks[1] as *mut u8, large);
            });
            thread::scope(|scope| {
                // Another thread, outside any pool operation, frees the
                // third and with it the two waiting.
                scope.spawn(|| local.dealloc(blocks[2] as *mut u8, large));
            });
            local.with_pool(|pool| pool.stats().used).unwrap()
        });
        assert_eq!(used_inside, Some(used_before - 3 * 4096));
    }
    assert_eq!(local.with_pool(|pool| pool.check()), Some(Ok(())));
}
