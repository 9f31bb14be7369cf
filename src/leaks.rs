//! Leak reports: the blocks a [checked](crate::PoolConfig::checked) pool
//! has handed out and not taken back, read from the records checked mode
//! keeps anyway (see `guard`): each checked slab's bitmap of handed-out
//! blocks and the sizes asked beside its blocks, and the table of live
//! shared blocks. With [`track_callers`](crate::PoolConfig::track_callers)
//! the records also hold where each block was allocated.
//!
//! A walk holds the table of shared blocks' lock, which a checked pool's
//! slab also takes to leave the pool: so every slab the walk finds stays
//! registered, its header readable, until the walk ends. The walk allocates
//! nothing while it holds that lock, since the pool may be the one that
//! serves its allocations.

use crate::error::PoolError;
use crate::guard;
use crate::slab::SLAB_SIZE;
use crate::slab_map::Owner;
use crate::PoolInner;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::panic::Location;

/// The path a block was allocated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AllocationPath {
    /// A thread cache's slab: [`allocate_fast`](crate::MemoryPool::allocate_fast)
    /// up to 1 KiB.
    Cache,
    /// The shared pool: [`allocate`](crate::MemoryPool::allocate),
    /// [`allocate_aligned`](crate::MemoryPool::allocate_aligned), and
    /// `allocate_fast` above the caches' sizes.
    Shared,
}

impl fmt::Display for AllocationPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllocationPath::Cache => "cache",
            AllocationPath::Shared => "shared",
        })
    }
}

/// A block handed out and not yet freed, as
/// [`MemoryPool::live_blocks`](crate::MemoryPool::live_blocks) lists it.
///
/// # Examples
///
/// ```
/// use lle_mempool::{AllocationPath, MemoryPool, PoolConfig};
///
/// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).checked(true))?;
/// let block = pool.allocate(100)?;
/// let live = pool.live_blocks()?;
/// assert_eq!(live.len(), 1);
/// assert_eq!(live[0].addr, block.as_ptr() as usize);
/// assert_eq!((live[0].size, live[0].path), (100, AllocationPath::Shared));
/// assert!(live[0].usable > 100, "the canary follows the bytes asked");
/// assert_eq!(live[0].caller, None, "callers are tracked only when asked");
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LiveBlock {
    /// The block's address.
    pub addr: usize,
    /// The bytes asked for it.
    pub size: usize,
    /// The bytes the block spans, its canary included.
    pub usable: usize,
    /// The path it was allocated on.
    pub path: AllocationPath,
    /// Where it was allocated, with
    /// [`track_callers`](crate::PoolConfig::track_callers).
    pub caller: Option<&'static Location<'static>>,
}

/// The blocks of `pool` handed out and not yet freed, by address (see
/// [`MemoryPool::live_blocks`](crate::MemoryPool::live_blocks)).
pub(crate) fn live_blocks(pool: &PoolInner) -> Result<Vec<LiveBlock>, PoolError> {
    if !pool.config.checked {
        return Err(PoolError::InvalidConfig { reason: "only a checked pool knows its live blocks" });
    }
    // Before the walk, which must not allocate: a region added since holds
    // only blocks allocated during the call.
    let regions = pool.shared.regions();
    let mut blocks = Vec::new();
    // Grown and walked again if the blocks outnumber it.
    let mut wanted = 256;
    loop {
        blocks.clear();
        blocks.try_reserve_exact(wanted).map_err(|_| crate::fallible::out_of_memory(wanted))?;
        let missed = guard::with_records_held(pool, |records| {
            let mut missed = 0;
            let mut push = |block| {
                if blocks.len() < blocks.capacity() {
                    blocks.push(block);
                } else {
                    missed += 1;
                }
            };
            records.for_each_live(|addr, size, usable, caller| {
                push(LiveBlock { addr, size, usable, path: AllocationPath::Shared, caller });
            });
            for &(start, len) in &regions {
                for_each_live_cache_block(pool, start, start + len, &mut push);
            }
            missed
        });
        if missed == 0 {
            break;
        }
        wanted = blocks.len() + missed + 64;
    }
    blocks.sort_unstable_by_key(|block| block.addr);
    Ok(blocks)
}

/// Visits the live blocks of the slabs that fill chunks of
/// `start..end`. The caller holds the records' lock (see the module docs).
fn for_each_live_cache_block(pool: &PoolInner, start: usize, end: usize, visit: &mut impl FnMut(LiveBlock)) {
    let mut chunk = start.next_multiple_of(SLAB_SIZE);
    while chunk + SLAB_SIZE <= end {
        // A slab found registered stays so while the caller holds the
        // records' lock, which its release takes.
        if let Owner::Slab(slab) = pool.classify(chunk) {
            debug_assert!(slab.is_checked());
            for index in slab.indices().filter(|&index| slab.is_allocated(index)) {
                // No size yet: the block is being handed out, and its taker
                // has not recorded it.
                let size = slab.asked(index);
                if size == 0 {
                    continue;
                }
                visit(LiveBlock {
                    addr: slab.block_address(index),
                    size,
                    usable: slab.block_size(),
                    path: AllocationPath::Cache,
                    caller: slab.caller(index),
                });
            }
        }
        chunk += SLAB_SIZE;
    }
}

/// How many of the largest blocks a leak report names.
const LARGEST_LISTED: usize = 10;

/// Writes a summary of `blocks` (as [`MemoryPool::live_blocks`] lists
/// them) to `out`: how many, their bytes, the ten largest, with where they
/// were allocated if the pool tracks callers, and how many there are of
/// each size, by path. It is what a pool with
/// [`report_leaks_on_drop`](crate::PoolConfig::report_leaks_on_drop)
/// writes to standard error when it is dropped with live blocks.
///
/// [`MemoryPool::live_blocks`]: crate::MemoryPool::live_blocks
///
/// # Errors
///
/// Those of `out`.
///
/// # Examples
///
/// ```
/// use lle_mempool::{write_leak_report, MemoryPool, PoolConfig};
///
/// let pool = MemoryPool::with_config(PoolConfig::new(1 << 20).track_callers(true))?;
/// let _leaked = pool.allocate_fast(24)?;
/// let mut report = Vec::new();
/// write_leak_report(&pool.live_blocks()?, &mut report).unwrap();
/// let report = String::from_utf8(report).unwrap();
/// assert!(report.starts_with("memory pool leak report: 1 live block, 24 bytes asked"));
/// assert!(report.contains(file!()));
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
pub fn write_leak_report(blocks: &[LiveBlock], mut out: impl io::Write) -> io::Result<()> {
    let asked: usize = blocks.iter().map(|block| block.size).sum();
    let usable: usize = blocks.iter().map(|block| block.usable).sum();
    let plural = if blocks.len() == 1 { "" } else { "s" };
    writeln!(
        out,
        "memory pool leak report: {} live block{plural}, {asked} bytes asked ({usable} usable)",
        blocks.len()
    )?;
    if blocks.is_empty() {
        return Ok(());
    }
    let mut largest: Vec<&LiveBlock> = blocks.iter().collect();
    largest.sort_by(|a, b| b.size.cmp(&a.size).then(a.addr.cmp(&b.addr)));
    writeln!(out, "largest:")?;
    for block in largest.iter().take(LARGEST_LISTED) {
        write!(out, "  {:#x}: {} bytes ({} usable, {})", block.addr, block.size, block.usable, block.path)?;
        match block.caller {
            Some(caller) => writeln!(out, " allocated at {caller}")?,
            None => writeln!(out)?,
        }
    }
    let mut by_size = BTreeMap::<(AllocationPath, usize), usize>::new();
    for block in blocks {
        *by_size.entry((block.path, block.usable)).or_default() += 1;
    }
    writeln!(out, "by size:")?;
    for ((path, usable), count) in by_size {
        let plural = if count == 1 { "" } else { "s" };
        writeln!(out, "  {path} {usable} bytes: {count} block{plural}")?;
    }
    Ok(())
}

/// Writes the leak report of a pool being dropped to standard error, if it
/// has live blocks.
pub(crate) fn report_on_drop(pool: &PoolInner) {
    let Ok(blocks) = live_blocks(pool) else { return };
    if !blocks.is_empty() {
        // A pool being dropped has nowhere to report a failed write.
        let _ = write_leak_report(&blocks, io::stderr().lock());
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    fn block(addr: usize, size: usize, usable: usize, path: AllocationPath) -> LiveBlock {
        LiveBlock { addr, size, usable, path, caller: None }
    }

    #[test]
    fn the_report_counts_lists_the_ten_largest_and_groups_by_size() {
        let mut blocks: Vec<_> =
            (0..12).map(|i| block(0x1000 + i * 0x100, 10 + i, 32, AllocationPath::Cache)).collect();
        blocks.push(block(0x9000, 5000, 5008, AllocationPath::Shared));
        let mut out = Vec::new();
        write_leak_report(&blocks, &mut out).unwrap();
        let report = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = report.lines().collect();
        let asked: usize = (10..22).sum::<usize>() + 5000;
        assert_eq!(
            lines[0],
            format!("memory pool leak report: 13 live blocks, {asked} bytes asked ({} usable)", 12 * 32 + 5008)
        );
        assert_eq!(lines[1], "largest:");
        assert_eq!(lines[2], "  0x9000: 5000 bytes (5008 usable, shared)");
        assert_eq!(lines[3], "  0x1b00: 21 bytes (32 usable, cache)");
        // Ten named, the two smallest not.
        assert_eq!(lines[11], "  0x1300: 13 bytes (32 usable, cache)");
        assert_eq!(lines[12], "by size:");
        assert_eq!(&lines[13..], ["  cache 32 bytes: 12 blocks", "  shared 5008 bytes: 1 block"]);
    }

    #[test]
    fn an_empty_report_is_one_line() {
        let mut out = Vec::new();
        write_leak_report(&[], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "memory pool leak report: 0 live blocks, 0 bytes asked (0 usable)\n"
        );
    }
}
