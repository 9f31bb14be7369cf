//! `PoolConfig::huge_pages`: regions start on a 2 MiB boundary and are
//! advised `MADV_HUGEPAGE`, as `/proc/self/smaps` shows (its `hg` flag),
//! and the kernel backs them with huge pages (`AnonHugePages`) where its
//! transparent huge pages are enabled; `compact` and the purge split huge
//! pages and keep every live block's data.

mod common;

use common::{assert_intact, fill, resident_pages};
use lle_mempool::{MemoryPool, PoolConfig};
use std::ops::Range;
use std::ptr::NonNull;
use std::time::Duration;

const HUGE_PAGE: usize = 2 << 20;

/// What the kernel says of the mappings that overlap `range`: whether all
/// of them are advised for huge pages, and the KiB of huge pages in them.
fn smaps_of(range: Range<usize>) -> (bool, usize) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let (mut all_advised, mut huge_kib, mut inside) = (true, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let bounds = first.split_once('-').and_then(|(start, end)| {
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        });
        if let Some((start, end)) = bounds.filter(|_| !first.ends_with(':')) {
            inside = start < range.end && range.start < end;
        } else if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                all_advised &= flags.split_whitespace().any(|flag| flag == "hg");
            } else if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                huge_kib += kib.trim().trim_end_matches("kB").trim().parse::<usize>().unwrap();
            }
        }
    }
    (all_advised, huge_kib)
}

/// The kernel's transparent huge page setting: the bracketed word of
/// `/sys/kernel/mm/transparent_hugepage/enabled`.
fn transparent_huge_pages() -> String {
    let setting = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    setting.split(['[', ']']).nth(1).unwrap_or("never").to_owned()
}

fn huge_page_pool(initial_size: usize) -> MemoryPool {
    MemoryPool::with_config(PoolConfig::new(initial_size).huge_pages(true)).unwrap()
}

#[test]
fn regions_start_on_a_huge_page_and_get_huge_pages() {
    let pool = huge_page_pool(1 << 20);
    // 16 MiB in blocks of 64 KiB, written: the pool grows from 1 MiB.
    let blocks: Vec<NonNull<u8>> = (0..256).map(|_| pool.allocate(64 << 10).unwrap()).collect();
    for (seed, &block) in blocks.iter().enumerate() {
        // SAFETY: a live block of 64 KiB.
        unsafe { fill(block, 64 << 10, seed as u64) };
    }
    let regions = pool.regions();
    assert_eq!(regions.len(), 1, "the reservation holds the pool");
    let region = regions[0].clone();
    assert_eq!(region.start % HUGE_PAGE, 0, "the region is not on a huge page boundary");
    let (advised, huge_kib) = smaps_of(region.clone());
    assert!(advised, "the region is not advised for huge pages");
    match transparent_huge_pages().as_str() {
        "never" => eprintln!("transparent huge pages are off (never): not checking AnonHugePages"),
        setting => {
            assert!(huge_kib >= 2048, "no huge page in the pool's region with THP {setting}: {huge_kib} KiB");
        }
    }
    for (seed, &block) in blocks.iter().enumerate() {
        // SAFETY: a live block of 64 KiB, filled above.
        unsafe { assert_intact(block, 64 << 10, seed as u64) };
    }

    // A pool without the setting asks for none.
    let plain = MemoryPool::new(4 << 20).unwrap();
    let (advised, _) = smaps_of(plain.regions()[0].clone());
    assert!(!advised, "a default pool's region is advised for huge pages");
}

#[test]
fn compact_and_the_purge_split_huge_pages_and_keep_live_data() {
    const SHARED: usize = 96 << 10;
    const CACHED: usize = 200;
    let pool =
        MemoryPool::with_config(PoolConfig::new(16 << 20).huge_pages(true).purge_delay(Some(Duration::ZERO))).unwrap();
    let allocate = |len: usize, seed: u64| {
        let block = if len > 1024 { pool.allocate(len) } else { pool.allocate_fast(len) }.unwrap();
        // SAFETY: a live block of `len` bytes.
        unsafe { fill(block, len, seed) };
        (block, len, seed)
    };
    // Shared blocks of 96 KiB (a huge page holds parts of several), and
    // groups of cache blocks between them, all written.
    let mut blocks = Vec::new();
    for group in 0..160u64 {
        blocks.push(allocate(SHARED, group));
        blocks.extend((0..64).map(|small| allocate(CACHED, 1_000 + group * 64 + small)));
    }
    let (_, huge_kib_before) = smaps_of(pool.regions()[0].clone());
    // Free two shared blocks in three and every other group of cache
    // blocks: free pages inside huge pages, which the purge (the delay is
    // zero) and `compact` drop.
    let (freed, mut live): (Vec<_>, Vec<_>) = blocks.iter().enumerate().partition(|&(index, &(_, len, _))| {
        let group = index / 65;
        if len == SHARED {
            group % 3 != 0
        } else {
            group % 2 == 1
        }
    });
    for &(_, &(block, _, _)) in &freed {
        // SAFETY: live blocks, freed once.
        unsafe { pool.free_fast(block).unwrap() };
    }
    pool.compact().unwrap();
    pool.check().unwrap();
    // The whole pages inside a freed shared block are purged, even where a
    // huge page held them.
    let purged = freed.iter().find(|&&(_, &(_, len, _))| len == SHARED).unwrap().1 .0;
    let inside = (purged.as_ptr() as usize).next_multiple_of(common::page_size());
    assert_eq!(resident_pages(NonNull::new(inside as *mut u8).unwrap(), 64 << 10), 0, "freed pages stay resident");
    let (_, huge_kib_after) = smaps_of(pool.regions()[0].clone());
    if transparent_huge_pages() != "never" {
        assert!(huge_kib_before > 0, "no huge pages to split");
        assert!(
            huge_kib_after < huge_kib_before,
            "purging split no huge page: {huge_kib_before} KiB, then {huge_kib_after}"
        );
    }
    // The purged memory serves again, and holds what is written to it.
    let freed_shared = freed.iter().filter(|&&(_, &(_, len, _))| len == SHARED).count() as u64;
    let again: Vec<_> = (0..freed_shared).map(|seed| allocate(SHARED, 1_000_000 + seed)).collect();
    live.extend(again.iter().enumerate());
    for &(_, &(block, len, seed)) in &live {
        // SAFETY: a live block, filled above.
        unsafe { assert_intact(block, len, seed) };
    }
    pool.check().unwrap();
    for &(_, &(block, _, _)) in &live {
        // SAFETY: live blocks, freed once.
        unsafe { pool.free_fast(block).unwrap() };
    }
    pool.compact().unwrap();
    pool.check().unwrap();
    assert_eq!(pool.stats().live_allocations, 0);
}
