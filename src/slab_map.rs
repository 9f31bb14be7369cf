//! From any address to what it is to the pool (a slab, a shared-pool block,
//! or memory the pool does not own) without locks, epochs or allocation.
//!
//! Slabs are aligned to their size, so `addr >> SLAB_SHIFT` names the only
//! chunk, and so the only slab, that could hold `addr`. A radix tree
//! (tcmalloc's page map) turns that number into one word per chunk:
//!
//! - a slab's header address, when a registered slab fills the chunk;
//! - a mask with the low bit set, whose other bits say which 4 KiB units of
//!   the chunk lie in one of the pool's shared regions. Regions start and end
//!   on page boundaries but not on chunk boundaries, so a chunk can hold the
//!   end of one region, the start of another and memory of neither;
//! - zero: nothing of the pool.
//!
//! That is how a free rejects foreign pointers, and `contains` answers,
//! without reading memory the pool does not own. Nodes are installed with a
//! compare-and-swap and live until the map is dropped (with the pool), so
//! a lookup needs no guard.
//!
//! # Who writes an entry
//!
//! Unit masks change only while the shared pool's writer lock is held (a
//! region mapped, grown, trimmed or removed), so mask updates never race
//! with each other. Slab entries change without that lock, when a thread
//! makes or releases a slab, but never race with a mask update of the same
//! entry: a slab is a live shared-pool block that fills its chunk, so its
//! chunk lies wholly inside one region (every unit marked). A region that is
//! mapped or grown covers only memory that no region held, never that chunk;
//! a trim takes only a free tail, never a unit of a live block. The slab's
//! block is freed only after its entry is back to the all-shared mask, and
//! allocated before it is registered, both under the writer lock, which
//! orders every mask update of that chunk before the registration or after
//! the release. `register`, `unregister`, `mark_shared` and `clear_shared`
//! `debug_assert` what they expect to find.

use crate::error::PoolError;
use crate::slab::{Slab, SLAB_SHIFT, SLAB_SIZE};
use crate::sync::{AtomicUsize, Ordering};
use std::alloc::Layout;
use std::ptr::{self, NonNull};

/// User-space addresses on the platforms we support fit in 48 bits.
const ADDRESS_BITS: u32 = 48;
/// Bits of a chunk number.
const INDEX_BITS: u32 = ADDRESS_BITS - SLAB_SHIFT;
/// Bits of the chunk number each level of the tree resolves. Under `std`,
/// two levels of 2^16 entries: a zeroed 512 KiB node costs only the pages a
/// lookup touches, and a lookup is two dependent loads. Under the models,
/// whose atomics are built one by one and explored one by one, nodes of 64
/// entries over six levels.
#[cfg(not(lle_mempool_model))]
const LEVEL_BITS: u32 = INDEX_BITS / 2;
#[cfg(lle_mempool_model)]
const LEVEL_BITS: u32 = 6;
const LEVELS: u32 = INDEX_BITS / LEVEL_BITS;
const FAN_OUT: usize = 1 << LEVEL_BITS;
const _: () = assert!(INDEX_BITS % LEVEL_BITS == 0 && LEVELS >= 1);

/// The unit of shared-pool memory an entry records: the smallest page size
/// of the platforms we support, so every region boundary is a unit boundary.
const UNIT_SHIFT: u32 = 12;
const UNIT: usize = 1 << UNIT_SHIFT;
/// Units per chunk: 16 under `std`; 1 under the models, whose slabs are one
/// page.
const UNITS: usize = SLAB_SIZE / UNIT;
const _: () = assert!(SLAB_SIZE % UNIT == 0 && UNITS >= 1 && UNITS < usize::BITS as usize);

/// Set in an entry that is a unit mask; clear in a slab header's address,
/// which is 64-byte aligned.
const MASK_TAG: usize = 1;
/// The entry of a chunk wholly inside a shared region.
const ALL_SHARED: usize = unit_bits(0, UNITS) | MASK_TAG;

/// The mask bits of units `first..end` of a chunk.
const fn unit_bits(first: usize, end: usize) -> usize {
    ((1 << end) - (1 << first)) << 1
}

/// The error for a range the map cannot record: beyond the 48-bit address
/// space, or no memory for a node.
fn no_room(requested: usize) -> PoolError {
    PoolError::OutOfMemory { requested, errno: libc::ENOMEM }
}

/// What an address is to the pool.
///
/// A found slab was registered when the map was read. It stays registered
/// while any of its blocks is live, so a caller that holds a live block of
/// it, or that only compares the variant (as `contains` does), may rely on
/// it; one that holds no block of it must not read its header, which its
/// owner may release and reuse at any time.
#[derive(Clone, Copy)]
pub(crate) enum Owner<'a> {
    /// In the registered slab with this header.
    Slab(&'a Slab),
    /// In a shared region of the pool, outside any registered slab.
    Shared,
    /// Not the pool's memory.
    Foreign,
}

impl std::fmt::Debug for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Slab(slab) => write!(f, "Slab({:p})", *slab),
            Owner::Shared => f.write_str("Shared"),
            Owner::Foreign => f.write_str("Foreign"),
        }
    }
}

/// One level of the tree. Above the leaves a slot holds a child node's
/// address (0: none yet); in a leaf it holds a chunk's entry.
#[repr(transparent)]
struct Node([AtomicUsize; FAN_OUT]);

impl Node {
    /// A node of empty slots, or `OutOfMemory`.
    fn allocate() -> Result<NonNull<Node>, PoolError> {
        let layout = Layout::new::<Node>();
        #[cfg(not(lle_mempool_model))]
        // SAFETY: non-zero size; all-zero bytes are zero `AtomicUsize`s, and
        // zeroed pages stay unmapped until an entry on them is written.
        let node = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Node>();
        #[cfg(lle_mempool_model)]
        // SAFETY: non-zero size. The model atomics each need constructing
        // (they register with the model), which the loop below does.
        let node = unsafe { std::alloc::alloc(layout) }.cast::<Node>();
        let node = NonNull::new(node).ok_or(no_room(layout.size()))?;
        #[cfg(lle_mempool_model)]
        for slot in 0..FAN_OUT {
            // SAFETY: `slot < FAN_OUT`, inside the fresh allocation, which
            // nobody else can see yet.
            unsafe { node.as_ptr().cast::<AtomicUsize>().add(slot).write(AtomicUsize::new(0)) };
        }
        Ok(node)
    }

    /// Frees `node` and, above the leaves, every node below it.
    ///
    /// # Safety
    /// `node` came from [`Node::allocate`], is at `level` (1: the root,
    /// [`LEVELS`]: a leaf), and nothing uses it or its children afterwards.
    unsafe fn free(node: NonNull<Node>, level: u32) {
        // SAFETY: the caller gives us the node, alive until now.
        let slots = unsafe { &node.as_ref().0 };
        if level < LEVELS {
            for slot in slots {
                if let Some(child) = NonNull::new(slot.load(Ordering::Relaxed) as *mut Node) {
                    // SAFETY: children of a node one level down, owned by it.
                    unsafe { Node::free(child, level + 1) };
                }
            }
        }
        // SAFETY: allocated in `allocate` with this layout; the atomics are
        // dropped first (under the models they deregister).
        unsafe {
            ptr::drop_in_place(node.as_ptr());
            std::alloc::dealloc(node.as_ptr().cast(), Layout::new::<Node>());
        }
    }
}

/// The slot of `node` that `chunk` goes through at `level`.
#[inline(always)]
fn slot_at<'a>(node: NonNull<Node>, chunk: usize, level: u32) -> &'a AtomicUsize {
    let digit = (chunk >> ((LEVELS - level) * LEVEL_BITS)) & (FAN_OUT - 1);
    // SAFETY: nodes live as long as the map, to which the callers tie the
    // returned reference.
    unsafe { &node.as_ref().0[digit] }
}

/// The map; the shared pool owns it, and the pool's free paths reach it
/// there.
pub(crate) struct SlabMap {
    root: NonNull<Node>,
}

// SAFETY: the map is made of atomics, and its node pointers are owned.
unsafe impl Send for SlabMap {}
// SAFETY: as above.
unsafe impl Sync for SlabMap {}

impl Drop for SlabMap {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no lookup can be running.
        unsafe { Node::free(self.root, 1) };
    }
}

impl SlabMap {
    /// An empty map: every address is foreign.
    pub(crate) fn new() -> Result<Self, PoolError> {
        let root = Node::allocate()?;
        Ok(SlabMap { root })
    }

    /// The leaf slot of `chunk`, if its leaf exists.
    #[inline(always)]
    fn slot(&self, chunk: usize) -> Option<&AtomicUsize> {
        if chunk >> INDEX_BITS != 0 {
            return None;
        }
        let mut node = self.root;
        for level in 1..LEVELS {
            // Acquire pairs with the install in `slot_or_build`: the child's
            // slots are initialised.
            node = NonNull::new(slot_at(node, chunk, level).load(Ordering::Acquire) as *mut Node)?;
        }
        Some(slot_at(node, chunk, LEVELS))
    }

    /// The leaf slot of `chunk`, building the nodes on the way.
    fn slot_or_build(&self, chunk: usize) -> Result<&AtomicUsize, PoolError> {
        if chunk >> INDEX_BITS != 0 {
            return Err(no_room(SLAB_SIZE));
        }
        let mut node = self.root;
        for level in 1..LEVELS {
            let slot = slot_at(node, chunk, level);
            // Acquire, as in `slot`: the callers order their calls today (the
            // writer lock, or an allocation under it), but the map does not
            // rely on that.
            let mut child = slot.load(Ordering::Acquire);
            if child == 0 {
                let fresh = Node::allocate()?;
                // Release: a lookup that finds the node sees its slots
                // initialised. Acquire on failure: so does a builder that
                // finds another's node.
                child = match slot.compare_exchange(0, fresh.as_ptr() as usize, Ordering::Release, Ordering::Acquire) {
                    Ok(_) => fresh.as_ptr() as usize,
                    Err(installed) => {
                        // SAFETY: ours, never shared.
                        unsafe { Node::free(fresh, level + 1) };
                        installed
                    }
                };
            }
            // SAFETY: a non-zero child slot holds a node's address.
            node = unsafe { NonNull::new_unchecked(child as *mut Node) };
        }
        Ok(slot_at(node, chunk, LEVELS))
    }

    /// What `addr` is to the pool. Lock-free and allocation-free; reads
    /// nothing at `addr`.
    #[inline]
    pub(crate) fn classify(&self, addr: usize) -> Owner<'_> {
        let Some(slot) = self.slot(addr >> SLAB_SHIFT) else { return Owner::Foreign };
        // Acquire pairs with `register`: a found slab's header is initialised.
        let entry = slot.load(Ordering::Acquire);
        if entry & MASK_TAG != 0 {
            let unit = (addr & (SLAB_SIZE - 1)) >> UNIT_SHIFT;
            if entry & unit_bits(unit, unit + 1) != 0 {
                Owner::Shared
            } else {
                Owner::Foreign
            }
        } else if entry == 0 {
            Owner::Foreign
        } else {
            // SAFETY: a slab entry is a registered slab's header, which stays
            // mapped and initialised while the slab is registered (see
            // `Owner` for what callers may rely on after that).
            Owner::Slab(unsafe { &*(entry as *const Slab) })
        }
    }

    /// The slab holding `addr`, or null.
    #[cfg(all(test, not(lle_mempool_model)))]
    pub(crate) fn lookup(&self, addr: usize) -> *mut Slab {
        match self.classify(addr) {
            Owner::Slab(slab) => slab as *const Slab as *mut Slab,
            Owner::Shared | Owner::Foreign => ptr::null_mut(),
        }
    }

    /// Records `start..start + len` (unit-aligned, memory no region held) as
    /// shared-pool memory. The caller holds the shared pool's writer lock.
    /// On error nothing is recorded.
    pub(crate) fn mark_shared(&self, start: usize, len: usize) -> Result<(), PoolError> {
        if len == 0 {
            return Ok(());
        }
        let end = start.checked_add(len).filter(|&end| (end - 1) >> SLAB_SHIFT >> INDEX_BITS == 0);
        let end = end.ok_or(no_room(len))?;
        let mut marked = start;
        for (chunk, units) in chunk_units(start, end) {
            let slot = match self.slot_or_build(chunk) {
                Ok(slot) => slot,
                Err(error) => {
                    self.clear_shared(start, marked - start);
                    return Err(error);
                }
            };
            let entry = slot.load(Ordering::Relaxed);
            debug_assert!(entry == 0 || entry & MASK_TAG != 0, "marking memory inside a slab");
            debug_assert_eq!(entry & units, 0, "marking memory already marked");
            // Relaxed: nothing is published with a mask. Whoever frees or
            // asks about a block of this memory got it from an allocation
            // that took the writer lock after this store.
            slot.store(entry | units | MASK_TAG, Ordering::Relaxed);
            marked = ((chunk + 1) << SLAB_SHIFT).min(end);
        }
        Ok(())
    }

    /// Forgets `start..start + len` (unit-aligned, marked by
    /// [`mark_shared`](Self::mark_shared), no unit inside a live block),
    /// before the memory goes back to the OS. The caller holds the shared
    /// pool's writer lock.
    pub(crate) fn clear_shared(&self, start: usize, len: usize) {
        for (chunk, units) in chunk_units(start, start + len) {
            let Some(slot) = self.slot(chunk) else {
                debug_assert!(false, "clearing memory that was never marked");
                continue;
            };
            let entry = slot.load(Ordering::Relaxed);
            debug_assert!(entry & MASK_TAG != 0 && entry & units == units, "clearing memory not marked shared");
            let rest = entry & !units;
            // Relaxed: the memory is free; a free of a pointer into it is
            // refused whichever entry it reads (the writer lock decides).
            slot.store(if rest == MASK_TAG { 0 } else { rest }, Ordering::Relaxed);
        }
    }

    /// Makes lookups in `slab`'s chunk find it.
    ///
    /// # Safety
    /// `slab` is a written slab header in a live shared-pool
    /// block that fills its chunk, and stays so until
    /// [`unregister`](Self::unregister): lookups hand out references to it.
    pub(crate) unsafe fn register(&self, slab: *mut Slab) -> Result<(), PoolError> {
        let addr = slab as usize;
        debug_assert_eq!(Slab::header_address(addr), addr);
        let slot = self.slot_or_build(addr >> SLAB_SHIFT)?;
        debug_assert_eq!(
            slot.load(Ordering::Relaxed),
            ALL_SHARED,
            "a slab outside a shared region, or registered twice"
        );
        // Release: a lookup that finds the slab sees the header written
        // before this.
        slot.store(addr, Ordering::Release);
        Ok(())
    }

    /// Makes `slab`'s chunk plain shared memory again, before its block is
    /// freed.
    pub(crate) fn unregister(&self, slab: *mut Slab) {
        let addr = slab as usize;
        let Some(slot) = self.slot(addr >> SLAB_SHIFT) else {
            debug_assert!(false, "unregistering a slab that was never registered");
            return;
        };
        debug_assert_eq!(slot.load(Ordering::Relaxed), addr, "unregistering a slab that is not registered");
        // Relaxed: the slab is empty and still its releaser's; nobody may
        // read the header through the map any more.
        slot.store(ALL_SHARED, Ordering::Relaxed);
    }
}

/// The chunks that `start..end` touches, each with the mask bits of the
/// units it covers there.
fn chunk_units(start: usize, end: usize) -> impl Iterator<Item = (usize, usize)> {
    debug_assert!(start % UNIT == 0 && end % UNIT == 0 && start <= end);
    let chunks = if start == end { 1..1 } else { (start >> SLAB_SHIFT)..((end - 1) >> SLAB_SHIFT) + 1 };
    chunks.map(move |chunk| {
        let chunk_start = chunk << SLAB_SHIFT;
        let first = start.max(chunk_start) - chunk_start;
        let last = end.min(chunk_start + SLAB_SIZE) - chunk_start;
        (chunk, unit_bits(first >> UNIT_SHIFT, last >> UNIT_SHIFT))
    })
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::slab::BlockRecords;

    /// A chunk-aligned address far from anything the test process maps; the
    /// map never reads memory at shared or foreign addresses.
    const BASE: usize = 0x5a5a_0000_0000;
    const PAGE: usize = 4096;

    fn is(map: &SlabMap, addr: usize, expected: &str) {
        assert_eq!(format!("{:?}", map.classify(addr)), expected, "at {addr:#x}");
    }

    fn entry(map: &SlabMap, addr: usize) -> usize {
        map.slot(addr >> SLAB_SHIFT).map_or(0, |slot| slot.load(Ordering::Relaxed))
    }

    #[test]
    fn region_edges_are_exact_to_the_unit() {
        let map = SlabMap::new().unwrap();
        // Three units into the first chunk, to five units into the third.
        let (start, end) = (BASE + 3 * PAGE, BASE + 2 * SLAB_SIZE + 5 * PAGE);
        map.mark_shared(start, end - start).unwrap();
        is(&map, start - 1, "Foreign");
        is(&map, BASE, "Foreign");
        is(&map, start, "Shared");
        is(&map, start + PAGE - 1, "Shared");
        is(&map, BASE + SLAB_SIZE, "Shared");
        is(&map, BASE + 2 * SLAB_SIZE - 1, "Shared");
        is(&map, end - 1, "Shared");
        is(&map, end, "Foreign");
        is(&map, BASE + 3 * SLAB_SIZE, "Foreign");
        assert_eq!(entry(&map, BASE + SLAB_SIZE), ALL_SHARED);

        map.clear_shared(start, end - start);
        for addr in [start, BASE + SLAB_SIZE, end - 1] {
            is(&map, addr, "Foreign");
            assert_eq!(entry(&map, addr), 0, "a cleared chunk reads as never marked");
        }
    }

    #[test]
    fn small_regions_share_a_chunk_with_foreign_memory() {
        let map = SlabMap::new().unwrap();
        map.mark_shared(BASE, 2 * PAGE).unwrap();
        map.mark_shared(BASE + 4 * PAGE, PAGE).unwrap();
        map.mark_shared(BASE + 15 * PAGE, 2 * PAGE).unwrap();
        let expected = [(0, "Shared"), (1, "Shared"), (2, "Foreign"), (3, "Foreign"), (4, "Shared"), (5, "Foreign")];
        for (page, what) in expected {
            is(&map, BASE + page * PAGE + 100, what);
        }
        is(&map, BASE + 14 * PAGE, "Foreign");
        is(&map, BASE + 15 * PAGE, "Shared");
        is(&map, BASE + 16 * PAGE, "Shared");
        is(&map, BASE + 17 * PAGE, "Foreign");

        // Removing one region leaves its neighbours in the chunk.
        map.clear_shared(BASE, 2 * PAGE);
        is(&map, BASE, "Foreign");
        is(&map, BASE + 4 * PAGE, "Shared");
        is(&map, BASE + 15 * PAGE, "Shared");
        map.clear_shared(BASE + 4 * PAGE, PAGE);
        map.clear_shared(BASE + 15 * PAGE, 2 * PAGE);
        assert_eq!((entry(&map, BASE), entry(&map, BASE + SLAB_SIZE)), (0, 0));
    }

    #[test]
    fn a_registered_slab_owns_its_chunk_until_unregistered() {
        let layout = Layout::from_size_align(SLAB_SIZE, SLAB_SIZE).unwrap();
        // SAFETY: non-zero size.
        let memory = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
        // SAFETY: SLAB_SIZE bytes aligned to SLAB_SIZE, ours alone.
        let slab = unsafe { Slab::create(memory, 3, None, BlockRecords::None) }.as_ptr();
        let base = memory.as_ptr() as usize;
        let map = SlabMap::new().unwrap();
        // The slab's chunk and a page either side, as one region.
        map.mark_shared(base - PAGE, SLAB_SIZE + 2 * PAGE).unwrap();
        // SAFETY: the header is written, and stays until `memory` is freed,
        // after `unregister`.
        unsafe { map.register(slab) }.unwrap();
        for addr in [base, base + 1000, base + SLAB_SIZE - 1] {
            match map.classify(addr) {
                Owner::Slab(found) => {
                    assert_eq!(found as *const Slab, slab as *const Slab);
                    assert_eq!(found.class(), 3, "the header is the one written");
                }
                other => panic!("{addr:#x}: {other:?}"),
            }
            assert_eq!(map.lookup(addr), slab);
        }
        is(&map, base - 1, "Shared");
        is(&map, base + SLAB_SIZE, "Shared");
        is(&map, base - PAGE - 1, "Foreign");

        map.unregister(slab);
        is(&map, base, "Shared");
        assert!(map.lookup(base).is_null());
        map.clear_shared(base - PAGE, SLAB_SIZE + 2 * PAGE);
        is(&map, base + 1000, "Foreign");
        // SAFETY: allocated above with this layout; the header holds nothing
        // that needs dropping beyond its memory.
        unsafe { std::alloc::dealloc(memory.as_ptr(), layout) };
    }

    #[test]
    fn addresses_beyond_the_map_are_foreign_and_refused() {
        let map = SlabMap::new().unwrap();
        let beyond = 1usize << ADDRESS_BITS;
        is(&map, beyond, "Foreign");
        is(&map, usize::MAX, "Foreign");
        assert!(matches!(map.mark_shared(beyond - PAGE, 2 * PAGE), Err(PoolError::OutOfMemory { .. })));
        is(&map, beyond - PAGE, "Foreign");
        assert!(matches!(map.mark_shared(usize::MAX - PAGE + 1, PAGE), Err(PoolError::OutOfMemory { .. })));
        // The last unit below the limit is fine.
        map.mark_shared(beyond - PAGE, PAGE).unwrap();
        is(&map, beyond - 1, "Shared");
    }
}
