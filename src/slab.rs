//! Slabs: the unit in which per-thread caches take memory from the pool.
//!
//! A slab is one `SLAB_SIZE`-byte block of the shared pool, aligned to its
//! size, carved into equal blocks of one size class. Its header sits before
//! its blocks, at one of a few places chosen by the slab's address so that
//! headers do not all share the same cache sets (see `HEADER_COLORS`;
//! mimalloc keeps its page metadata in its segment): a free list only
//! the owning thread touches, with no atomics, and a second list that other
//! threads push freed blocks onto with one compare-and-swap, which the owner
//! takes whole with one swap when its own list runs dry (mimalloc's
//! `xthread_free`, rpmalloc's thread-free list). Blocks that have never been
//! handed out are not on any list: a bump index carves them lazily, so a new
//! slab costs nothing per block.
//!
//! Who owns a slab is the business of the layer above (`thread_cache`): the
//! slab keeps its owner as an opaque [`SlabOwner`], and the owning thread's
//! token, so that any thread can tell "mine" from "another's". What only the
//! owner may touch (the local list, the counts, the ring links) is reached
//! through an [`OwnedSlab`], a view whose existence proves that the calling
//! thread holds the owner's rights.
//!
//! A slab that keeps one live block keeps all its memory, so the owner can
//! give back the pages inside it that hold only free blocks
//! ([`OwnedSlab::purge_free_pages`]). A free block's link lives in its first
//! word, which a purge zeroes, so the blocks that start in a purged page are
//! taken off the free list and *parked*: the header records the page, not
//! the blocks, and all blocks that start in a parked page are free. When
//! the list and the never-handed-out blocks run out, `pop` relinks the
//! blocks of one parked page (which faults it back in) before it reports
//! the slab full. Free blocks at the end of the slab go back to the bump
//! index instead, which needs no links at all.

use crate::error::PoolError;
use crate::identity::current_thread_token;
use crate::model_cells::{forget_block_links, read_block_link, write_block_link};
use crate::os;
use crate::size_class::{class_size, MAX_FAST_SIZE};
use crate::sync::{compiler_fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::cell::Cell;
use std::ops::Deref;
use std::panic::Location;
use std::ptr::{self, NonNull};

/// Bytes per slab. Small under the models, so their regions stay tiny.
#[cfg(not(lle_mempool_model))]
pub(crate) const SLAB_SIZE: usize = 64 * 1024;
#[cfg(lle_mempool_model)]
pub(crate) const SLAB_SIZE: usize = 4096;
pub(crate) const SLAB_SHIFT: u32 = SLAB_SIZE.trailing_zeros();

/// The most blocks a slab holds (of the smallest class, 16 bytes).
const MAX_BLOCKS: usize = SLAB_SIZE / 16;
const BITMAP_WORDS: usize = MAX_BLOCKS / 64;

/// The smallest page a slab is purged in; with larger pages a slab has
/// fewer of them.
const MIN_PAGE_SIZE: usize = 4096;
/// One bit per page of a slab in [`Slab::parked_pages`].
type PageMask = u16;
const _: () = assert!(SLAB_SIZE / MIN_PAGE_SIZE <= PageMask::BITS as usize);

/// A free block's first word links it to the next.
#[repr(C)]
pub(crate) struct FreeBlock {
    next: *mut FreeBlock,
}

impl FreeBlock {
    /// The block after `block` on its list.
    ///
    /// # Safety
    /// `block` must be a free block of a slab, on a list the caller reads
    /// alone, whose link was written when it joined that list.
    #[inline(always)]
    unsafe fn next(block: *mut FreeBlock) -> *mut FreeBlock {
        // SAFETY: the caller guarantees a written link that nobody writes
        // meanwhile.
        unsafe { read_block_link(ptr::addr_of!((*block).next)) }
    }

    /// Links `block` to `next`.
    ///
    /// # Safety
    /// `block` must be a freed block of a slab that the caller alone holds.
    #[inline(always)]
    unsafe fn set_next(block: *mut FreeBlock, next: *mut FreeBlock) {
        // SAFETY: the caller holds the block, which is at least a pointer
        // wide and aligned (every class is a multiple of 16 bytes).
        unsafe { write_block_link(ptr::addr_of_mut!((*block).next), next) };
    }
}

/// A slab's list of blocks freed by other threads, as the one word they
/// update with a compare-and-swap: the list's length in the high half and
/// its first block's offset from the slab's start in the low half (0 for
/// none: no block starts at the header). The blocks link to one another
/// with full pointers, the last one to null. The length lets the owner take
/// the list without walking it; a push only ever replaces the word it read,
/// so a list taken and rebuilt to the same word in between links the pushed
/// chain correctly still.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct RemoteList(u64);

impl RemoteList {
    const EMPTY: RemoteList = RemoteList(0);

    #[inline]
    fn is_empty(self) -> bool {
        self == Self::EMPTY
    }

    #[inline]
    fn len(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The first block, in the slab at `base`; null for an empty list.
    #[inline]
    fn head(self, base: usize) -> *mut FreeBlock {
        let offset = self.0 as u32 as usize;
        if offset == 0 {
            ptr::null_mut()
        } else {
            (base + offset) as *mut FreeBlock
        }
    }

    /// The list after a chain of `len` blocks starting at `first_offset`
    /// is pushed onto it.
    #[inline]
    fn pushed(self, first_offset: usize, len: u32) -> RemoteList {
        debug_assert!((DATA_OFFSET..SLAB_SIZE).contains(&first_offset));
        RemoteList(u64::from(self.len() + len) << 32 | first_offset as u64)
    }
}

/// Whom a slab belongs to, in the terms of the layer that owns slabs (the
/// address of a thread's heap); the slab only keeps it and hands it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlabOwner(NonNull<()>);

impl SlabOwner {
    /// The owner named by `owner`'s address.
    pub(crate) fn of<T>(owner: &T) -> Self {
        SlabOwner(NonNull::from(owner).cast())
    }

    /// The address this owner was made from, as a `T`.
    #[inline]
    pub(crate) fn cast<T>(self) -> *const T {
        self.0.as_ptr().cast::<T>().cast_const()
    }
}

/// Links the freed block `block` to `next`, to build a chain for
/// [`Slab::push_remote_chain`].
///
/// # Safety
/// `block` must be a freed slab block that the caller alone holds.
#[inline]
pub(crate) unsafe fn link(block: NonNull<u8>, next: NonNull<u8>) {
    // SAFETY: the caller holds the block.
    unsafe { FreeBlock::set_next(block.as_ptr().cast(), next.as_ptr().cast()) };
}

/// Starts a new cache line inside a `repr(C)` struct: a zero-sized field
/// that places the field after it on the next 64-byte boundary.
#[repr(C, align(64))]
struct CacheLineStart;

/// The header of every slab, near its start (see [`HEADER_COLORS`]).
/// `repr(C)` in this order, in three cache lines by who uses them: the
/// owner's (its state, written on every allocate and free of the owning
/// thread, and the constants only its inline free reads, so that such a
/// free touches one line of the header), the constants any thread reads
/// (never written while the slab lives, so every thread that frees into the
/// slab keeps its copy of that line: a remote free classifies its pointer
/// without a miss on a line the owner keeps writing), and the list of
/// remote frees.
#[repr(C, align(64))]
pub(crate) struct Slab {
    // Owner-only state, reached through `OwnedSlab`: touched only by the
    // owning thread or, while the slab is abandoned, by the holder of the
    // list of abandoned slabs.
    local_free: Cell<*mut FreeBlock>,
    /// Blocks `bump..capacity` have never been handed out.
    bump: Cell<u32>,
    /// Blocks handed out and not yet back on `local_free`: blocks sitting on
    /// `thread_free` still count.
    used: Cell<u32>,
    /// Whether the slab is its owning heap's current slab of its class:
    /// mirrored here so a free that empties a slab can tell, from the line
    /// it already holds, whether to keep it.
    current: Cell<bool>,
    /// One bit per page of the slab whose free blocks are parked: every
    /// block that starts in the page is free, on no list, and below `bump`
    /// (see the module docs).
    parked_pages: Cell<PageMask>,
    /// Owner-only: the links of the ring of slabs the owner keeps it in.
    next: Cell<*mut Slab>,
    previous: Cell<*mut Slab>,
    // Fixed while the slab exists; the inline free's test of a block start.
    /// `ceil(2^64 / block_size)`: an offset below 2^16 is a multiple of the
    /// block size exactly when `offset * divisibility_magic` (wrapping) is
    /// below it (Lemire, Kaser and Kurz, "Faster remainder by direct
    /// computation", 2019): one multiply and one comparison, no division.
    divisibility_magic: u64,
    /// Where the blocks end, as an offset from the first block.
    blocks_end: u32,
    _constants: CacheLineStart,
    // Fixed while the slab exists (the owner words change only when the
    // slab changes hands); read by any thread.
    block_size: u32,
    capacity: u32,
    class: u32,
    /// The owning thread's `current_thread_token`, 0 while abandoned; set
    /// with `owner`.
    owner_thread: AtomicUsize,
    /// A [`SlabOwner`]'s address; null while abandoned by an exited thread.
    /// Only the holder of an `OwnedSlab` changes it.
    owner: AtomicPtr<()>,
    /// `ceil(2^32 / block_size)`: turns an offset into a block index with a
    /// multiply, exactly, because offsets and sizes are below 2^16.
    reciprocal: u32,
    checked: bool,
    /// With `checked`: whether the slab also keeps where each block was
    /// allocated (see [`Slab::record_caller`]).
    callers: bool,
    _remote: CacheLineStart,
    /// Blocks freed by other threads, as a [`RemoteList`] word; on its own
    /// cache line so remote frees do not bounce the owner's line.
    thread_free: AtomicU64,
}

/// With `checked`: one bit per block, set while the block is handed out.
/// Kept in a checked slab's last bytes, not in the header: only checked
/// pools have it, and the header's size is what its colors cost every slab.
type AllocatedBits = [AtomicU64; BITMAP_WORDS];

// The three groups of fields stay on three lines (the models' atomics are
// larger, and their layout measures nothing).
#[cfg(not(lle_mempool_model))]
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(Slab, blocks_end) + std::mem::size_of::<u32>() <= offset_of!(Slab, block_size));
    assert!(offset_of!(Slab, block_size) % 64 == 0);
    assert!(offset_of!(Slab, callers) < offset_of!(Slab, block_size) + 64);
    assert!(offset_of!(Slab, thread_free) == offset_of!(Slab, block_size) + 64);
    assert!(std::mem::size_of::<Slab>() == 3 * 64);
};

/// The bytes a checked slab keeps per block for the size asked of it (see
/// [`Slab::record_asked`]): a class holds at most `MAX_FAST_SIZE` bytes.
type AskedSize = u16;
const _: () = assert!(MAX_FAST_SIZE <= AskedSize::MAX as usize);

/// Where a block was allocated, as a slab that keeps callers records it:
/// null for none.
type CallerSlot = *mut Location<'static>;

/// What a slab records of each block it hands out, after its blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BlockRecords {
    /// Nothing: an unchecked pool's slab.
    None,
    /// The size asked: a checked pool's slab.
    Sizes,
    /// The size asked and where the block was allocated: a checked pool
    /// that tracks callers.
    SizesAndCallers,
}

impl BlockRecords {
    /// The bytes a slab keeps per block for these records.
    fn bytes_per_block(self) -> usize {
        match self {
            BlockRecords::None => 0,
            BlockRecords::Sizes => std::mem::size_of::<AskedSize>(),
            BlockRecords::SizesAndCallers => std::mem::size_of::<AskedSize>() + std::mem::size_of::<CallerSlot>(),
        }
    }
}

/// The owner's address and thread token a slab owned by `owner` on the
/// calling thread carries.
fn owner_words(owner: Option<SlabOwner>) -> (*mut (), usize) {
    match owner {
        Some(owner) => (owner.0.as_ptr(), current_thread_token()),
        None => (ptr::null_mut(), 0),
    }
}

/// How many places a slab's header may sit in, by the slab's address.
/// Slabs are aligned to their size, so headers at their start would all
/// fall in the same few sets of every cache (a 48 KiB, 12-way L1 holds a
/// given header line of only 12 of them, a 2 MiB, 16-way L2 of 32): a
/// program whose live blocks span a few hundred slabs would miss on a
/// header at most allocations and frees. Each color moves the header by its
/// size, so neighbouring slabs' headers fall in different sets. Four colors
/// take the room the header and the checked pools' bitmap took together
/// before the bitmap moved to the slab's end. Under the models one place:
/// their slabs are one page, and their layout measures nothing.
#[cfg(not(lle_mempool_model))]
const HEADER_COLORS: usize = 4;
#[cfg(lle_mempool_model)]
const HEADER_COLORS: usize = 1;
const HEADER_SIZE: usize = std::mem::size_of::<Slab>();
const BITMAP_SIZE: usize = std::mem::size_of::<AllocatedBits>();

/// Where the first block starts: after the header at its farthest place.
pub(crate) const DATA_OFFSET: usize = HEADER_COLORS * HEADER_SIZE;
// Headers sit at multiples of 64 (`Slab` is aligned to 64, so its size is a
// multiple of 64), and so do blocks; and at most a quarter of the slab, so
// even the largest class gets three blocks. Under shuttle each atomic
// carries a vector clock (about 100 bytes), which makes the header large.
const _: () = assert!(HEADER_SIZE % 64 == 0 && DATA_OFFSET <= SLAB_SIZE / 4);
// A checked slab's bitmap, at its end, is aligned: the slab's size is a
// multiple of the bitmap's alignment, and the bitmap's size of it.
const _: () = assert!(SLAB_SIZE % std::mem::align_of::<AllocatedBits>() == 0);

/// The number of blocks on the chain from `first` to `last` (see [`link`]).
///
/// # Safety
/// Following links from `first` must reach `last`, through freed blocks
/// that nobody writes meanwhile.
pub(crate) unsafe fn chain_length(first: *mut u8, last: *mut u8) -> u32 {
    let (mut block, last) = (first.cast::<FreeBlock>(), last.cast::<FreeBlock>());
    let mut length = 1;
    while block != last {
        // SAFETY: a block of the chain before `last`, whose link the
        // caller guarantees written and unchanging.
        block = unsafe { FreeBlock::next(block) };
        length += 1;
    }
    length
}

impl Slab {
    /// Writes a fresh header for class `class` at `memory`, owned by `owner`
    /// on the calling thread (`None`: by nobody yet), and returns the
    /// caller's view of it.
    ///
    /// # Safety
    /// `memory` must be `SLAB_SIZE` bytes, aligned to `SLAB_SIZE`, owned by
    /// the caller and otherwise unused, and stay so for `'a`.
    pub(crate) unsafe fn create<'a>(
        memory: NonNull<u8>,
        class: usize,
        owner: Option<SlabOwner>,
        records: BlockRecords,
    ) -> OwnedSlab<'a> {
        debug_assert_eq!(memory.as_ptr() as usize % SLAB_SIZE, 0);
        let (owner, owner_thread) = owner_words(owner);
        let block_size = class_size(class);
        // A checked slab keeps its records of each block after its blocks,
        // where only checked pools pay for them: the sizes first, then the
        // callers, aligned, which may take a few bytes of padding.
        let per_block = block_size + records.bytes_per_block();
        let padding = if records == BlockRecords::SizesAndCallers { std::mem::align_of::<CallerSlot>() } else { 0 };
        // A checked slab's bitmap takes its last bytes.
        let bitmap = if records == BlockRecords::None { 0 } else { BITMAP_SIZE };
        let capacity = (SLAB_SIZE - DATA_OFFSET - padding - bitmap) / per_block;
        let base = memory.as_ptr() as usize;
        // SAFETY: the header's place lies in the first quarter of the
        // caller's memory.
        let slab = unsafe { memory.as_ptr().add(Slab::header_address(base) - base) }.cast::<Slab>();
        let header = Slab {
            block_size: block_size as u32,
            capacity: capacity as u32,
            class: class as u32,
            reciprocal: ((1u64 << 32).div_ceil(block_size as u64)) as u32,
            blocks_end: (capacity * block_size) as u32,
            divisibility_magic: u64::MAX / block_size as u64 + 1,
            checked: records != BlockRecords::None,
            callers: records == BlockRecords::SizesAndCallers,
            owner: AtomicPtr::new(owner),
            owner_thread: AtomicUsize::new(owner_thread),
            local_free: Cell::new(ptr::null_mut()),
            bump: Cell::new(0),
            used: Cell::new(0),
            current: Cell::new(false),
            parked_pages: Cell::new(0),
            next: Cell::new(slab),
            previous: Cell::new(slab),
            _constants: CacheLineStart,
            _remote: CacheLineStart,
            thread_free: AtomicU64::new(RemoteList::EMPTY.0),
        };
        // SAFETY: the caller hands us SLAB_SIZE bytes aligned to SLAB_SIZE,
        // and the header's place, aligned to 64, lies before the blocks.
        unsafe { ptr::write(slab, header) };
        if bitmap > 0 {
            // SAFETY: the slab's last bytes, which `capacity` left free of
            // blocks and records, aligned (see `BITMAP_SIZE`).
            unsafe { ptr::write(Slab::bitmap_address(base), std::array::from_fn(|_| AtomicU64::new(0))) };
        }
        // The memory may have held another slab, whose links are not this
        // one's.
        forget_block_links(base, base + SLAB_SIZE);
        // Nor are its records: a walk of the live blocks may read a block's
        // records as soon as the block is marked handed out, before its
        // taker writes them, and must find no size and no caller there.
        let records_start = base + DATA_OFFSET + capacity * block_size;
        // SAFETY: the records lie in the slab's memory, past its blocks, in
        // the room `per_block` and `padding` left; nobody else knows of the
        // slab yet.
        unsafe { ptr::write_bytes(records_start as *mut u8, 0, capacity * records.bytes_per_block() + padding) };
        // SAFETY: the header was just written in memory the caller owns for
        // `'a`, and nobody else knows of it.
        unsafe { OwnedSlab::new(slab) }
    }

    #[inline]
    pub(crate) fn class(&self) -> usize {
        self.class as usize
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// The slab's owner; `None` while abandoned. Meaningful to the caller
    /// only while it holds an [`OwnedSlab`] or a block of the slab.
    #[inline]
    pub(crate) fn owner(&self) -> Option<SlabOwner> {
        NonNull::new(self.owner.load(Ordering::Relaxed)).map(SlabOwner)
    }

    /// The owner's view of the slab if the calling thread owns it. A stale
    /// answer is impossible: only the owner changes the owning thread, and
    /// it clears it before its thread (and token) can go away.
    #[inline]
    pub(crate) fn owned_by_current_thread(&self) -> Option<OwnedSlab<'_>> {
        let token = self.owner_thread.load(Ordering::Relaxed);
        // SAFETY: the calling thread is the slab's owner, which is what an
        // `OwnedSlab` stands for.
        (token != 0 && token == current_thread_token()).then(|| unsafe { OwnedSlab::new(self) })
    }

    /// The address of the header of the slab whose chunk holds `addr`:
    /// the one place a pointer is turned into its slab (see
    /// `HEADER_COLORS`).
    #[inline(always)]
    // One color under the models.
    #[allow(clippy::modulo_one)]
    pub(crate) fn header_address(addr: usize) -> usize {
        let base = addr & !(SLAB_SIZE - 1);
        base + (base >> SLAB_SHIFT) % HEADER_COLORS * HEADER_SIZE
    }

    /// Where the slab's memory starts: the start of its chunk.
    #[inline]
    pub(crate) fn base(&self) -> usize {
        let base = self as *const Slab as usize & !(SLAB_SIZE - 1);
        debug_assert_eq!(Slab::header_address(base), self as *const Slab as usize);
        base
    }

    /// Whether a block of this slab starts at `addr`, which lies in the
    /// slab: the inline free's test, without the block's index, from the
    /// owner's line (another thread would pull that line from the owner).
    #[inline]
    pub(crate) fn is_block_start(&self, addr: usize) -> bool {
        debug_assert_eq!(addr & !(SLAB_SIZE - 1), self.base());
        // Below the first block (the header) the offset wraps and is huge.
        let offset = (addr & (SLAB_SIZE - 1)).wrapping_sub(DATA_OFFSET) as u64;
        offset < u64::from(self.blocks_end) && offset.wrapping_mul(self.divisibility_magic) < self.divisibility_magic
    }

    /// The index of the block that starts at `addr`, which lies in this
    /// slab, or why `addr` is no block start.
    #[inline]
    pub(crate) fn block_index(&self, addr: usize) -> Result<usize, PoolError> {
        let offset = addr.wrapping_sub(self.base() + DATA_OFFSET);
        if offset >= SLAB_SIZE {
            // Before the first block: the header.
            return Err(PoolError::InteriorPointer { addr });
        }
        let index = ((offset as u64 * u64::from(self.reciprocal)) >> 32) as usize;
        if index * self.block_size as usize != offset || index >= self.capacity as usize {
            return Err(PoolError::InteriorPointer { addr });
        }
        Ok(index)
    }

    /// Gives a block back from any thread.
    ///
    /// # Safety
    /// `block` must be a handed-out block of this slab, which the caller
    /// gives up.
    #[inline]
    pub(crate) unsafe fn push_remote(&self, block: NonNull<u8>) {
        // SAFETY: a single freed block is a chain from itself to itself.
        unsafe { self.push_remote_chain(block, block, 1) };
    }

    /// Gives back, from any thread, the chain of `len` freed blocks of
    /// this slab that runs from `first` to `last` through their links (see
    /// [`link`]).
    ///
    /// # Safety
    /// Every block on the chain must be a freed block of this slab that the
    /// caller alone holds, and following links from `first` must reach
    /// `last` in `len` blocks.
    pub(crate) unsafe fn push_remote_chain(&self, first: NonNull<u8>, last: NonNull<u8>, len: u32) {
        debug_assert!(len > 0 && len <= self.capacity);
        let first_offset = first.as_ptr() as usize - self.base();
        let last = last.as_ptr().cast::<FreeBlock>();
        let mut word = self.thread_free.load(Ordering::Relaxed);
        loop {
            let list = RemoteList(word);
            // SAFETY: the caller holds the chain, so nobody else writes its
            // last link; the Release below publishes every link with it.
            unsafe { FreeBlock::set_next(last, list.head(self.base())) };
            let pushed = list.pushed(first_offset, len);
            match self.thread_free.compare_exchange_weak(word, pushed.0, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(current) => word = current,
            }
        }
    }

    #[inline]
    pub(crate) fn is_checked(&self) -> bool {
        self.checked
    }

    /// Where the bitmap of a checked slab at `base` sits: its last bytes.
    fn bitmap_address(base: usize) -> *mut AllocatedBits {
        (base + SLAB_SIZE - BITMAP_SIZE) as *mut AllocatedBits
    }

    /// A checked slab's bitmap of handed-out blocks.
    #[inline]
    fn allocated_bits(&self) -> &AllocatedBits {
        debug_assert!(self.checked, "only checked slabs keep a bitmap");
        // SAFETY: `create` wrote the bitmap there with the header of a
        // checked slab, and it lives as long as the header.
        unsafe { &*Slab::bitmap_address(self.base()) }
    }

    /// With `checked`: records that block `index` was handed out.
    #[inline]
    pub(crate) fn mark_allocated(&self, index: usize) {
        let previous = self.allocated_bits()[index / 64].fetch_or(1 << (index % 64), Ordering::Relaxed);
        debug_assert_eq!(previous & (1 << (index % 64)), 0, "block handed out twice");
    }

    /// With `checked`: records that block `index` was freed; `false` if it
    /// was not handed out (a double free).
    #[inline]
    pub(crate) fn mark_freed(&self, index: usize) -> bool {
        let bit = 1u64 << (index % 64);
        self.allocated_bits()[index / 64].fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }

    /// With `checked`: whether block `index` is handed out.
    #[inline]
    pub(crate) fn is_allocated(&self, index: usize) -> bool {
        self.allocated_bits()[index / 64].load(Ordering::Relaxed) & (1 << (index % 64)) != 0
    }

    /// The bytes of each block.
    #[inline]
    pub(crate) fn block_size(&self) -> usize {
        self.block_size as usize
    }

    /// Where the blocks start, and how many bytes they span.
    pub(crate) fn block_area(&self) -> (usize, usize) {
        (self.base() + DATA_OFFSET, self.blocks_end as usize)
    }

    /// Whether the slab keeps where each block was allocated.
    #[inline]
    pub(crate) fn keeps_callers(&self) -> bool {
        self.callers
    }

    /// With callers: where the caller of block `index` is kept, past the
    /// last block and the sizes, aligned.
    #[inline]
    fn caller_slot(&self, index: usize) -> *mut CallerSlot {
        debug_assert!(self.callers && index < self.capacity as usize);
        let sizes_end = self.base()
            + DATA_OFFSET
            + self.blocks_end as usize
            + self.capacity as usize * std::mem::size_of::<AskedSize>();
        let callers = sizes_end.next_multiple_of(std::mem::align_of::<CallerSlot>());
        (callers + index * std::mem::size_of::<CallerSlot>()) as *mut CallerSlot
    }

    /// With `checked`: where the size asked of block `index` is kept, past
    /// the last block.
    #[inline]
    fn asked_size_slot(&self, index: usize) -> *mut AskedSize {
        debug_assert!(self.checked && index < self.capacity as usize);
        (self.base() + DATA_OFFSET + self.blocks_end as usize + index * std::mem::size_of::<AskedSize>())
            as *mut AskedSize
    }

    /// With `checked`: records that block `index`, being handed out, was
    /// asked for `size` bytes. The block's taker writes it, and whoever
    /// frees the block reads it: the handing over of the block, which
    /// every free needs anyway, orders the two. A walk of the live blocks
    /// may read it at any time, which the slot's atomic access allows.
    #[inline]
    pub(crate) fn record_asked(&self, index: usize, size: usize) {
        debug_assert!(size <= self.block_size as usize);
        // SAFETY: the slot lies in the slab, past its blocks, in room
        // `create` left for it, aligned for its type; only the taker of
        // block `index` writes it.
        unsafe { record_slot::store_size(self.asked_size_slot(index), size as AskedSize) };
    }

    /// With `checked`: the size [`record_asked`](Self::record_asked)
    /// recorded for block `index`.
    #[inline]
    pub(crate) fn asked(&self, index: usize) -> usize {
        // SAFETY: as in `record_asked`; the block's free, or its holder,
        // reads what its taker wrote.
        usize::from(unsafe { record_slot::load_size(self.asked_size_slot(index)) })
    }

    /// With callers: records that block `index`, being handed out, was
    /// allocated at `caller`, as [`record_asked`](Self::record_asked)
    /// records its size.
    #[inline]
    pub(crate) fn record_caller(&self, index: usize, caller: &'static Location<'static>) {
        let caller = caller as *const Location<'static> as CallerSlot;
        // SAFETY: as in `record_asked`, for the caller slot.
        unsafe { record_slot::store_caller(self.caller_slot(index), caller) };
    }

    /// Where block `index` was allocated: what
    /// [`record_caller`](Self::record_caller) recorded, if the slab keeps
    /// callers.
    #[inline]
    pub(crate) fn caller(&self, index: usize) -> Option<&'static Location<'static>> {
        if !self.callers {
            return None;
        }
        // SAFETY: as in `record_asked`, for the caller slot.
        let caller = unsafe { record_slot::load_caller(self.caller_slot(index)) };
        // SAFETY: a non-null slot holds a `&'static Location` that
        // `record_caller` wrote.
        unsafe { caller.cast_const().as_ref() }
    }

    /// Every block index of the slab.
    #[inline]
    pub(crate) fn indices(&self) -> std::ops::Range<usize> {
        0..self.capacity as usize
    }

    /// The index of a block `pop` handed out.
    #[inline]
    pub(crate) fn index_of(&self, block: NonNull<u8>) -> usize {
        self.index_at(block.as_ptr() as usize)
    }

    /// The index of the block that starts at `addr`.
    #[inline]
    fn index_at(&self, addr: usize) -> usize {
        (addr - self.base() - DATA_OFFSET) / self.block_size as usize
    }

    /// The address of block `index`.
    #[inline]
    pub(crate) fn block_address(&self, index: usize) -> usize {
        self.base() + DATA_OFFSET + index * self.block_size as usize
    }

    /// The blocks whose first byte lies in page `page` of the slab
    /// (`page_size` bytes each, past the header's), as a range of indices.
    fn blocks_starting_in(&self, page: usize, page_size: usize) -> std::ops::Range<usize> {
        debug_assert!(page * page_size >= DATA_OFFSET, "page {page} holds the header");
        let size = self.block_size as usize;
        let (start, end) = (page * page_size - DATA_OFFSET, (page + 1) * page_size - DATA_OFFSET);
        start.div_ceil(size).min(self.capacity())..end.div_ceil(size).min(self.capacity())
    }

    /// The blocks that overlap page `page` (as [`blocks_starting_in`]), as
    /// a range of indices.
    ///
    /// [`blocks_starting_in`]: Self::blocks_starting_in
    fn blocks_overlapping(&self, page: usize, page_size: usize) -> std::ops::Range<usize> {
        let size = self.block_size as usize;
        let start = (page * page_size - DATA_OFFSET) / size;
        start.min(self.capacity())..self.blocks_starting_in(page, page_size).end
    }
}

/// The pages a slab is purged in: those of the OS's size, from the first
/// that holds no byte of the header, while the slab has at most one bit of
/// [`PageMask`] per page. `None`: the slab has no such page.
fn purgeable_pages() -> Option<(usize, std::ops::Range<usize>)> {
    let page_size = os::page_size();
    if !(MIN_PAGE_SIZE..=SLAB_SIZE).contains(&page_size) {
        return None;
    }
    let pages = DATA_OFFSET.div_ceil(page_size)..SLAB_SIZE / page_size;
    (!pages.is_empty()).then_some((page_size, pages))
}

/// One bit per block of a slab.
struct BlockBitmap([u64; BITMAP_WORDS]);

impl BlockBitmap {
    fn set(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn get(&self, index: usize) -> bool {
        self.0[index / 64] & 1 << (index % 64) != 0
    }

    fn all(&self, mut indices: std::ops::Range<usize>) -> bool {
        indices.all(|index| self.get(index))
    }
}

/// A slab seen by its owner: the only way to its owner-only state (the
/// local list, the counts, the `current` mark, the ring links).
///
/// Holding one proves that the calling thread may use that state: it owns
/// the slab, or the slab is abandoned and the thread holds the list of
/// abandoned slabs. A view never leaves its thread (a `&Slab` is not
/// `Send`), and whoever hands a slab on (abandons, releases or gives it to
/// another owner) stops using its views: the functions that do so are
/// `unsafe` and say it.
#[derive(Clone, Copy)]
pub(crate) struct OwnedSlab<'a>(&'a Slab);

impl Deref for OwnedSlab<'_> {
    type Target = Slab;

    #[inline(always)]
    fn deref(&self) -> &Slab {
        self.0
    }
}

impl std::fmt::Debug for OwnedSlab<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnedSlab({:p})", self.0)
    }
}

impl OwnedSlab<'_> {
    /// The owner's view of the slab at `slab`.
    ///
    /// # Safety
    /// `slab` is a slab header, mapped while the view lives, whose
    /// owner-only state the calling thread may use meanwhile: it owns the
    /// slab (the slab is in one of its heaps), or holds the list of
    /// abandoned slabs that the slab is in.
    #[inline(always)]
    pub(crate) unsafe fn new(slab: *const Slab) -> Self {
        // SAFETY: the caller guarantees a header mapped while the view lives.
        OwnedSlab(unsafe { &*slab })
    }

    /// The slab's address, which [`OwnedSlab::new`] takes back.
    #[inline(always)]
    pub(crate) fn as_ptr(self) -> *mut Slab {
        ptr::from_ref(self.0).cast_mut()
    }

    /// Hands the slab to `owner` on the calling thread, or to nobody
    /// (`None`: abandoned).
    pub(crate) fn set_owner(self, owner: Option<SlabOwner>) {
        let (owner, owner_thread) = owner_words(owner);
        self.owner_thread.store(owner_thread, Ordering::Relaxed);
        self.owner.store(owner, Ordering::Relaxed);
    }

    /// Whether the slab is its owner's current slab.
    #[inline]
    pub(crate) fn is_current(self) -> bool {
        self.current.get()
    }

    /// Records whether the slab is its owner's current slab.
    #[inline]
    pub(crate) fn set_current(self, current: bool) {
        self.current.set(current);
    }

    /// Blocks handed out and not yet back on the local list.
    #[inline]
    pub(crate) fn used(self) -> usize {
        self.used.get() as usize
    }

    /// The next slab in the ring the owner keeps this one in.
    #[inline]
    pub(crate) fn next(self) -> *mut Slab {
        self.next.get()
    }

    /// The previous slab in the ring the owner keeps this one in.
    #[inline]
    pub(crate) fn previous(self) -> *mut Slab {
        self.previous.get()
    }

    /// Sets the ring links.
    #[inline]
    pub(crate) fn set_links(self, previous: *mut Slab, next: *mut Slab) {
        self.previous.set(previous);
        self.next.set(next);
    }

    /// Sets the link to the next slab in the ring.
    #[inline]
    pub(crate) fn set_next(self, next: *mut Slab) {
        self.next.set(next);
    }

    /// Sets the link to the previous slab in the ring.
    #[inline]
    pub(crate) fn set_previous(self, previous: *mut Slab) {
        self.previous.set(previous);
    }

    /// Takes a block; from a parked page (see the module docs) once the
    /// local list and the bump index have run out.
    #[inline]
    pub(crate) fn pop(self) -> Option<NonNull<u8>> {
        match self.pop_ready() {
            Some(block) => Some(block),
            None => self.pop_parked(),
        }
    }

    /// Takes a block from the local list or the bump index, never from a
    /// parked page: the inline fast path's `pop`, which makes no call and so
    /// keeps its caller's registers; a `None` sends it to the full path,
    /// which uses [`pop`](Self::pop).
    #[inline]
    pub(crate) fn pop_ready(self) -> Option<NonNull<u8>> {
        let head = self.local_free.get();
        let block = if !head.is_null() {
            // SAFETY: blocks on the local list are free blocks of this slab,
            // whose first word the owner wrote when it pushed them.
            self.local_free.set(unsafe { FreeBlock::next(head) });
            head.cast::<u8>()
        } else {
            let bump = self.bump.get();
            if bump == self.capacity {
                return None;
            }
            self.bump.set(bump + 1);
            (self.base() + DATA_OFFSET + bump as usize * self.block_size as usize) as *mut u8
        };
        self.used.set(self.used.get() + 1);
        // SAFETY: both branches produce an address inside the slab.
        Some(unsafe { NonNull::new_unchecked(block) })
    }

    /// Gives a block back to the local list; returns the blocks still used.
    ///
    /// # Safety
    /// `block` must be a handed-out block of this slab, which the caller
    /// gives up.
    #[inline]
    pub(crate) unsafe fn push_local(self, block: NonNull<u8>) -> usize {
        let block = block.as_ptr().cast::<FreeBlock>();
        // SAFETY: the block is ours to reuse: the caller gives it up.
        unsafe { FreeBlock::set_next(block, self.local_free.get()) };
        // Linked before it heads the list: a forked child takes the slab
        // over from a thread that may have stopped between the two (see
        // `fork`). No instruction, only the compiler's order.
        compiler_fence(Ordering::Release);
        self.local_free.set(block);
        debug_assert!(self.used.get() > 0);
        let used = self.used.get() - 1;
        self.used.set(used);
        used as usize
    }

    /// Moves every remotely freed block onto the local list. Returns
    /// whether there were any.
    ///
    /// The list's word carries its length, so when the local list is empty
    /// (as when a refill finds the current slab used up) the remote list
    /// becomes the local one without a walk: the walk would take a miss
    /// per block on lines the freeing threads wrote last, which the owner's
    /// `pop` takes anyway, one per allocation.
    pub(crate) fn collect_remote(self) -> bool {
        if RemoteList(self.thread_free.load(Ordering::Relaxed)).is_empty() {
            return false;
        }
        // Acquire: the links the pushers wrote before their Release CAS.
        let list = RemoteList(self.thread_free.swap(RemoteList::EMPTY.0, Ordering::Acquire));
        if list.is_empty() {
            return false;
        }
        let head = list.head(self.base());
        let count = list.len();
        let local = self.local_free.get();
        if !local.is_null() {
            let mut tail = head;
            let mut walked = 1u32;
            // SAFETY: every block on the list was pushed by
            // `push_remote_chain`, which wrote its link before publishing it.
            unsafe {
                loop {
                    let next = FreeBlock::next(tail);
                    if next.is_null() {
                        break;
                    }
                    tail = next;
                    walked += 1;
                }
                FreeBlock::set_next(tail, local);
            }
            debug_assert_eq!(walked, count, "the remote list's length is not its word's");
        }
        self.local_free.set(head);
        debug_assert!(count <= self.used.get());
        self.used.set(self.used.get() - count);
        true
    }

    /// Whether the owner could take a block without a new slab, once it
    /// collects the remote frees.
    pub(crate) fn has_free_block(self) -> bool {
        self.has_block_to_pop() || !RemoteList(self.thread_free.load(Ordering::Relaxed)).is_empty()
    }

    /// Whether [`pop`](Self::pop) would hand out a block now, without
    /// collecting the remote frees: other threads may push onto the
    /// thread-free list at any moment, so a test that counted it could be
    /// true when `pop` finds nothing.
    pub(crate) fn has_block_to_pop(self) -> bool {
        !self.local_free.get().is_null() || self.bump.get() < self.capacity || self.parked_pages.get() != 0
    }

    /// `pop` once the local list and the bump index have run out: relinks
    /// the blocks of the lowest parked page, if any, and takes one of them.
    #[cold]
    #[inline(never)]
    fn pop_parked(self) -> Option<NonNull<u8>> {
        let parked = self.parked_pages.get();
        if parked == 0 {
            return None;
        }
        let page = parked.trailing_zeros() as usize;
        let (page_size, _) = purgeable_pages()?;
        // The page leaves the mask before its blocks join the list: a
        // forked child that finds this thread stopped in between loses
        // them, rather than handing them out twice.
        self.parked_pages.set(parked & (parked - 1));
        let blocks = self.blocks_starting_in(page, page_size);
        debug_assert!(!blocks.is_empty(), "a parked page without blocks");
        debug_assert!(self.local_free.get().is_null());
        // SAFETY: the blocks starting in a parked page are free blocks of
        // this slab on no list, which the owner alone may link.
        let head = unsafe { self.link_blocks(blocks.rev(), ptr::null_mut()) };
        compiler_fence(Ordering::Release);
        self.local_free.set(head);
        self.pop_ready()
    }

    /// Links `blocks` (indices, last to first) into a list ending in
    /// `tail`, and returns its head, which the caller stores.
    ///
    /// # Safety
    /// The blocks are free blocks of this slab, on no list (or on the local
    /// list, which the caller then replaces), in pages that are mapped.
    unsafe fn link_blocks(self, blocks: impl Iterator<Item = usize>, tail: *mut FreeBlock) -> *mut FreeBlock {
        let mut head = tail;
        for index in blocks {
            let block = self.block_address(index) as *mut FreeBlock;
            // SAFETY: as the caller guarantees.
            unsafe { FreeBlock::set_next(block, head) };
            head = block;
        }
        head
    }

    /// Gives back to the OS the pages of the slab (past the header's) that
    /// hold free blocks only, and returns how many it purged. Frees by other
    /// threads are collected first. The free blocks that start in a purged
    /// page are parked, the free blocks at the slab's end go back to the bump
    /// index, and the rest are relinked in address order; `used` does not
    /// change.
    pub(crate) fn purge_free_pages(self) -> usize {
        // A checked slab's free blocks hold poison, which a purged page
        // would turn into zeros (read as writes after free), and its last
        // page holds the sizes its live blocks were asked for.
        if self.is_checked() {
            return 0;
        }
        self.collect_remote();
        let Some((page_size, pages)) = purgeable_pages() else { return 0 };
        let capacity = self.capacity();
        let mut free = BlockBitmap([0; BITMAP_WORDS]);
        let mut head = self.local_free.get();
        while !head.is_null() {
            let index = self.index_at(head as usize);
            debug_assert!(!free.get(index), "block {index} twice on the local list");
            free.set(index);
            // SAFETY: blocks on the local list are free blocks of this slab,
            // whose links the owner wrote.
            head = unsafe { FreeBlock::next(head) };
        }
        (self.bump.get() as usize..capacity).for_each(|index| free.set(index));
        let parked = self.parked_pages.get();
        for page in pages.clone().filter(|&page| parked & 1 << page != 0) {
            self.blocks_starting_in(page, page_size).for_each(|index| free.set(index));
        }

        // The free blocks at the end need no link: they go to the bump
        // index. A page whose blocks start below it parks them, and all the
        // blocks that start in it: the bump index moves past the page.
        let mut bump = (0..capacity).rev().find(|&index| !free.get(index)).map_or(0, |index| index + 1);
        let (mut purged, mut now_parked): (PageMask, PageMask) = (0, 0);
        for page in pages.clone() {
            let purgeable = free.all(self.blocks_overlapping(page, page_size));
            if purgeable {
                purged |= 1 << page;
            }
            let starting = self.blocks_starting_in(page, page_size);
            if (purgeable || parked & 1 << page != 0) && !starting.is_empty() && starting.start < bump {
                now_parked |= 1 << page;
                bump = bump.max(starting.end);
            }
        }
        // Linked last to first, so that the list runs in address order.
        let listed = (0..bump).rev().filter(|&index| {
            let page = (self.block_address(index) - self.base()) / page_size;
            free.get(index) && now_parked & 1 << page == 0
        });
        // SAFETY: the listed blocks are free, on the local list (or beyond
        // the old bump index, handed out by nobody) and in no parked page,
        // so mapped and holding nothing; the list is replaced whole below.
        let head = unsafe { self.link_blocks(listed, ptr::null_mut()) };
        compiler_fence(Ordering::Release);
        self.local_free.set(head);
        debug_assert!(pages
            .clone()
            .all(|page| { now_parked & 1 << page == 0 || self.blocks_starting_in(page, page_size).end <= bump }));
        self.bump.set(bump as u32);
        self.parked_pages.set(now_parked);

        let mut page = pages.start;
        while page < pages.end {
            if purged & 1 << page == 0 {
                page += 1;
                continue;
            }
            let run_start = page;
            while page < pages.end && purged & 1 << page != 0 {
                page += 1;
            }
            let (start, end) = (self.base() + run_start * page_size, self.base() + page * page_size);
            // SAFETY: the pages lie in this slab's memory, a live block of
            // the pool, and hold free blocks only, none of them on a list.
            unsafe { os::purge_pool_memory(NonNull::new(start as *mut u8).expect("non-null"), end - start) };
            forget_block_links(start, end);
        }
        purged.count_ones() as usize
    }
}

/// Reads and writes of a checked slab's per-block records. A block's taker
/// writes them while a walk of the pool's live blocks may read them, so
/// under `std` they are relaxed atomic accesses (each record is read whole;
/// the block's allocation bit says whether it is current). The models'
/// atomics cannot be laid over plain memory, and the models walk no live
/// blocks beside allocations, so there they are plain accesses.
mod record_slot {
    use super::{AskedSize, CallerSlot};
    #[cfg(not(lle_mempool_model))]
    use crate::sync::{AtomicPtr, AtomicU16, Ordering};

    /// # Safety
    /// `slot` is valid and aligned for its type, and no plain access
    /// races with this one.
    #[inline]
    pub(super) unsafe fn store_size(slot: *mut AskedSize, size: AskedSize) {
        // SAFETY: as the caller guarantees.
        #[cfg(not(lle_mempool_model))]
        unsafe { AtomicU16::from_ptr(slot) }.store(size, Ordering::Relaxed);
        // SAFETY: as the caller guarantees.
        #[cfg(lle_mempool_model)]
        unsafe {
            slot.write(size)
        };
    }

    /// # Safety
    /// As [`store_size`].
    #[inline]
    pub(super) unsafe fn load_size(slot: *mut AskedSize) -> AskedSize {
        // SAFETY: as the caller guarantees.
        #[cfg(not(lle_mempool_model))]
        return unsafe { AtomicU16::from_ptr(slot) }.load(Ordering::Relaxed);
        // SAFETY: as the caller guarantees.
        #[cfg(lle_mempool_model)]
        return unsafe { slot.read() };
    }

    /// # Safety
    /// As [`store_size`].
    #[inline]
    pub(super) unsafe fn store_caller(slot: *mut CallerSlot, caller: CallerSlot) {
        // SAFETY: as the caller guarantees.
        #[cfg(not(lle_mempool_model))]
        unsafe { AtomicPtr::from_ptr(slot) }.store(caller, Ordering::Relaxed);
        // SAFETY: as the caller guarantees.
        #[cfg(lle_mempool_model)]
        unsafe {
            slot.write(caller)
        };
    }

    /// # Safety
    /// As [`store_size`].
    #[inline]
    pub(super) unsafe fn load_caller(slot: *mut CallerSlot) -> CallerSlot {
        // SAFETY: as the caller guarantees.
        #[cfg(not(lle_mempool_model))]
        return unsafe { AtomicPtr::from_ptr(slot) }.load(Ordering::Relaxed);
        // SAFETY: as the caller guarantees.
        #[cfg(lle_mempool_model)]
        return unsafe { slot.read() };
    }
}

/// Slab-sized, slab-aligned memory for unit tests of the layers above.
#[cfg(all(test, not(lle_mempool_model)))]
pub(crate) mod test_support {
    use super::{BlockRecords, OwnedSlab, Slab, SLAB_SIZE};
    use std::alloc::Layout;
    use std::ptr::NonNull;

    /// `count` slabs' worth of zeroed memory, freed on drop.
    pub(crate) struct SlabMemory {
        base: NonNull<u8>,
        count: usize,
    }

    impl SlabMemory {
        pub(crate) fn new() -> Self {
            Self::many(1)
        }

        pub(crate) fn many(count: usize) -> Self {
            // SAFETY: non-zero size.
            let base = unsafe { std::alloc::alloc_zeroed(Self::layout(count)) };
            SlabMemory { base: NonNull::new(base).expect("test memory"), count }
        }

        fn layout(count: usize) -> Layout {
            Layout::from_size_align(count * SLAB_SIZE, SLAB_SIZE).unwrap()
        }

        /// The start of slab `index`.
        pub(crate) fn base(&self, index: usize) -> NonNull<u8> {
            assert!(index < self.count);
            // SAFETY: inside the allocation.
            unsafe { NonNull::new_unchecked(self.base.as_ptr().add(index * SLAB_SIZE)) }
        }

        /// A fresh slab of `class` in each slab's worth, owned by nobody:
        /// the test thread has the memory to itself.
        pub(crate) fn slabs(&self, class: usize) -> Vec<OwnedSlab<'_>> {
            // SAFETY: each piece is SLAB_SIZE bytes, aligned, the test's
            // alone, and mapped while `self` lives.
            (0..self.count)
                .map(|index| unsafe { Slab::create(self.base(index), class, None, BlockRecords::None) })
                .collect()
        }
    }

    impl Drop for SlabMemory {
        fn drop(&mut self) {
            // SAFETY: allocated in `many` with this layout.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), Self::layout(self.count)) };
        }
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::test_support::SlabMemory;
    use super::*;
    use crate::size_class::CLASS_COUNT;

    #[test]
    fn neighbouring_slabs_take_every_color_and_header_blocks_records_and_bitmap_stay_apart() {
        let memory = SlabMemory::many(2 * HEADER_COLORS);
        let here = Location::caller();
        let mut offsets = Vec::new();
        for index in 0..2 * HEADER_COLORS {
            let base = memory.base(index).as_ptr() as usize;
            // The smallest class has the most blocks, so the most records.
            // SAFETY: fresh, aligned, exclusively ours.
            let slab = unsafe { Slab::create(memory.base(index), 0, None, BlockRecords::SizesAndCallers) };
            let header = slab.as_ptr() as usize;
            offsets.push(header - base);
            assert!(header - base + HEADER_SIZE <= DATA_OFFSET, "the header ends before the blocks");
            for addr in [base, header, base + DATA_OFFSET, base + SLAB_SIZE - 1] {
                assert_eq!(Slab::header_address(addr), header, "every address of the chunk finds its header");
            }
            assert_eq!(slab.base(), base);
            assert_eq!(slab.capacity(), (SLAB_SIZE - DATA_OFFSET - 8 - BITMAP_SIZE) / 26);
            // Every block written and every record set, every other block
            // marked handed out: the header, the blocks, the records and the
            // bitmap keep their values.
            for block in slab.indices() {
                // SAFETY: a block of the slab, which the test owns.
                unsafe { (slab.block_address(block) as *mut u8).write_bytes(0xa5, slab.block_size()) };
                slab.record_asked(block, 1 + block % 16);
                slab.record_caller(block, here);
            }
            for block in slab.indices().step_by(2) {
                slab.mark_allocated(block);
            }
            assert_eq!((slab.class(), slab.block_size()), (0, 16));
            assert!(slab.indices().all(|block| slab.is_allocated(block) == (block % 2 == 0)));
            assert!(slab
                .indices()
                .all(|block| slab.asked(block) == 1 + block % 16 && slab.caller(block) == Some(here)));
            // SAFETY: the slab's memory, which the test owns.
            let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, SLAB_SIZE) };
            let (start, len) = slab.block_area();
            assert!(bytes[start - base..start - base + len].iter().all(|&byte| byte == 0xa5));
        }
        let mut colors = offsets.clone();
        colors.sort_unstable();
        colors.dedup();
        assert_eq!(colors.len(), HEADER_COLORS, "{offsets:?}");
        assert!(offsets.windows(2).all(|pair| pair[0] != pair[1]), "neighbours differ: {offsets:?}");
    }

    #[test]
    fn block_index_accepts_exactly_the_block_starts() {
        let memory = SlabMemory::new();
        for class in 0..CLASS_COUNT {
            // SAFETY: fresh, aligned, exclusively ours.
            let slab = unsafe { Slab::create(memory.base(0), class, None, BlockRecords::None) };
            let size = class_size(class);
            let base = memory.base(0).as_ptr() as usize;
            for addr in base..base + SLAB_SIZE {
                let offset = addr as isize - (base + DATA_OFFSET) as isize;
                let expected = offset >= 0 && offset as usize % size == 0 && (offset as usize / size) < slab.capacity();
                assert_eq!(slab.block_index(addr).is_ok(), expected, "class {class} addr offset {offset}");
                assert_eq!(slab.is_block_start(addr), expected, "class {class} addr offset {offset}");
                if expected {
                    assert_eq!(slab.block_index(addr).unwrap(), offset as usize / size);
                }
            }
        }
    }

    #[test]
    fn pop_push_and_remote_lists_hand_each_block_out_once() {
        let memory = SlabMemory::new();
        // SAFETY: fresh, aligned, exclusively ours.
        let slab = unsafe { Slab::create(memory.base(0), 3, None, BlockRecords::Sizes) };
        let mut blocks = Vec::new();
        while let Some(block) = slab.pop() {
            slab.mark_allocated(slab.index_of(block));
            blocks.push(block);
        }
        assert_eq!(blocks.len(), slab.capacity());
        let mut sorted: Vec<usize> = blocks.iter().map(|b| b.as_ptr() as usize).collect();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), blocks.len());
        let (remote, local) = blocks.split_at(blocks.len() / 2);
        for &block in remote {
            assert!(slab.mark_freed(slab.index_of(block)));
            // SAFETY: handed out above, given up here.
            unsafe { slab.push_remote(block) };
        }
        assert!(!slab.mark_freed(slab.index_of(remote[0])), "double free not caught");
        for &block in local {
            // SAFETY: as above.
            unsafe { slab.push_local(block) };
        }
        assert_eq!(slab.used(), remote.len());
        assert!(slab.collect_remote());
        assert_eq!(slab.used(), 0);
        let mut again = 0;
        while slab.pop().is_some() {
            again += 1;
        }
        assert_eq!(again, slab.capacity());
    }

    #[test]
    fn only_the_owning_thread_sees_itself_as_owner() {
        let memory = SlabMemory::new();
        let heap = 7u64;
        let owner = SlabOwner::of(&heap);
        // SAFETY: fresh, aligned, exclusively ours.
        let slab = unsafe { Slab::create(memory.base(0), 0, Some(owner), BlockRecords::None) };
        assert_eq!(slab.owner(), Some(owner));
        assert_eq!(slab.owner().map(|owner| owner.cast::<u64>()), Some(&heap as *const u64));
        let address = slab.as_ptr() as usize;
        let mine = slab.owned_by_current_thread().map(|view| view.as_ptr() as usize);
        assert_eq!(mine, Some(address), "the creating thread owns the slab");
        let elsewhere = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: the header stays mapped until `memory` drops,
                    // after the scope; this thread only reads what any
                    // thread may.
                    let header = unsafe { &*(address as *const Slab) };
                    header.owned_by_current_thread().is_some()
                })
                .join()
                .unwrap()
        });
        assert!(!elsewhere, "another thread does not own it");
        slab.set_owner(None);
        assert_eq!(slab.owner(), None);
        assert!(slab.owned_by_current_thread().is_none(), "abandoned: nobody owns it");
        slab.set_owner(Some(owner));
        assert!(slab.owned_by_current_thread().is_some(), "adopted back");
    }

    #[test]
    fn remote_chains_arrive_whole_and_count_as_freed_when_collected() {
        let memory = SlabMemory::new();
        // SAFETY: fresh, aligned, exclusively ours.
        let slab = unsafe { Slab::create(memory.base(0), 1, None, BlockRecords::None) };
        let blocks: Vec<NonNull<u8>> = (0..5).map(|_| slab.pop().unwrap()).collect();
        for (index, block) in blocks.iter().enumerate() {
            // SAFETY: handed out above; 32-byte blocks.
            unsafe { block.as_ptr().add(8).write_bytes(index as u8, 24) };
        }
        // A chain of three, linked newest first as a remote batch is.
        // SAFETY: the blocks are handed out and given up here.
        unsafe {
            link(blocks[2], blocks[1]);
            link(blocks[1], blocks[0]);
            slab.push_remote_chain(blocks[2], blocks[0], 3);
        }
        assert_eq!(slab.used(), 5, "remote frees count until collected");
        assert!(slab.collect_remote());
        assert!(!slab.collect_remote(), "the list was taken whole");
        assert_eq!(slab.used(), 2);
        // The local list hands the chain back newest first, past the link
        // word, with the rest of each block as it was.
        for expected in [2usize, 1, 0] {
            let block = slab.pop().unwrap();
            assert_eq!(block, blocks[expected]);
            // SAFETY: handed out again; 32-byte blocks.
            let rest = unsafe { std::slice::from_raw_parts(block.as_ptr().add(8), 24) };
            assert!(rest.iter().all(|&byte| byte == expected as u8));
        }
    }

    /// A full slab whose only free block another thread has just pushed:
    /// the owner could have it back, but `pop` cannot hand it out until it
    /// is collected, which is what adopting an abandoned slab relies on.
    #[test]
    fn a_remote_free_alone_is_not_a_block_to_pop() {
        let memory = SlabMemory::new();
        // SAFETY: fresh, aligned, exclusively ours.
        let slab = unsafe { Slab::create(memory.base(0), CLASS_COUNT - 1, None, BlockRecords::None) };
        let blocks: Vec<NonNull<u8>> = std::iter::from_fn(|| slab.pop()).collect();
        assert!(!slab.has_free_block() && !slab.has_block_to_pop());
        // SAFETY: handed out above, given up here.
        unsafe { slab.push_remote(blocks[3]) };
        assert!(slab.has_free_block(), "the owner can collect it");
        assert!(!slab.has_block_to_pop(), "but pop would find nothing");
        assert!(slab.pop().is_none());
        assert!(slab.collect_remote());
        assert!(slab.has_block_to_pop());
        assert_eq!(slab.pop(), Some(blocks[3]));
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod purge_tests {
    use super::test_support::SlabMemory;
    use super::*;
    use crate::size_class::CLASS_COUNT;
    use std::collections::BTreeSet;

    /// Block `index`'s bytes, as `(start, end)` offsets in the slab.
    fn extent(slab: OwnedSlab<'_>, index: usize) -> (usize, usize) {
        let start = slab.block_address(index) - slab.base();
        (start, start + slab.block_size as usize)
    }

    fn fill(block: NonNull<u8>, size: usize, value: u8) {
        // SAFETY: a handed-out block of `size` bytes.
        unsafe { block.as_ptr().write_bytes(value, size) };
    }

    fn holds(block: NonNull<u8>, size: usize, value: u8) -> bool {
        // SAFETY: as in `fill`.
        unsafe { std::slice::from_raw_parts(block.as_ptr(), size) }.iter().all(|&byte| byte == value)
    }

    /// The pattern of block `index`: never zero, so a purge shows.
    fn pattern(index: usize) -> u8 {
        (index % 251) as u8 + 1
    }

    /// Fills a slab of `class`, frees every block `keep` refuses (every
    /// third of them from "another thread"), purges, and takes blocks until
    /// the slab is full again: the purge must give back exactly the data
    /// pages that no live block touches, leave the live blocks alone, and
    /// every free block must come back exactly once. Then frees the blocks
    /// taken last and purges once more, with some pages still parked.
    fn purge_and_refill(class: usize, keep: impl Fn(usize, usize) -> bool) {
        let memory = SlabMemory::new();
        // Unchecked, as only those slabs are purged, so with no hand-out
        // bitmap: the test keeps its own, which catches a block handed out
        // twice.
        // SAFETY: fresh, aligned, exclusively ours.
        let slab = unsafe { Slab::create(memory.base(0), class, None, BlockRecords::None) };
        let (size, capacity) = (slab.block_size as usize, slab.capacity());
        let mut handed_out = vec![false; capacity];
        let hand_out = |handed_out: &mut [bool], index: usize| {
            assert!(!std::mem::replace(&mut handed_out[index], true), "class {class}: block {index} handed out twice");
        };
        let blocks: Vec<NonNull<u8>> = std::iter::from_fn(|| slab.pop()).collect();
        assert_eq!(blocks.len(), capacity);
        for (index, &block) in blocks.iter().enumerate() {
            hand_out(&mut handed_out, index);
            fill(block, size, pattern(index));
        }
        let live: BTreeSet<usize> = (0..capacity).filter(|&index| keep(index, capacity)).collect();
        for (index, &block) in blocks.iter().enumerate().filter(|(index, _)| !live.contains(index)) {
            handed_out[index] = false;
            // SAFETY: handed out above, given up here.
            unsafe {
                if index % 3 == 0 {
                    slab.push_remote(block);
                } else {
                    slab.push_local(block);
                }
            }
        }

        let page = os::page_size();
        let touched = |index: usize| {
            let (start, end) = extent(slab, index);
            start / page..end.div_ceil(page)
        };
        let busy: BTreeSet<usize> = live.iter().flat_map(|&index| touched(index)).collect();
        let expected: Vec<usize> =
            (DATA_OFFSET.div_ceil(page)..SLAB_SIZE / page).filter(|p| !busy.contains(p)).collect();
        assert_eq!(slab.purge_free_pages(), expected.len(), "class {class}: the pages no live block touches");
        assert_eq!(slab.used(), live.len(), "parked blocks are free");
        let base = slab.base();
        for &purged in &expected {
            // SAFETY: a page of the test's memory; reading it is harmless.
            let bytes = unsafe { std::slice::from_raw_parts((base + purged * page) as *const u8, page) };
            assert!(bytes.iter().all(|&byte| byte == 0), "class {class}: page {purged} was purged");
        }
        for &index in &live {
            assert!(holds(blocks[index], size, pattern(index)), "class {class}: live block {index} intact");
        }

        let mut again: Vec<NonNull<u8>> = Vec::new();
        while let Some(block) = slab.pop() {
            let index = slab.block_index(block.as_ptr() as usize).expect("a block start");
            assert!(!live.contains(&index), "class {class}: live block {index} handed out");
            hand_out(&mut handed_out, index);
            fill(block, size, pattern(index));
            again.push(block);
        }
        let distinct: BTreeSet<usize> = again.iter().map(|block| block.as_ptr() as usize).collect();
        assert_eq!((again.len(), distinct.len()), (capacity - live.len(), again.len()), "class {class}: each once");
        assert!(!slab.has_free_block());
        for (index, &block) in blocks.iter().enumerate() {
            assert!(holds(block, size, pattern(index)), "class {class}: block {index} intact after refilling");
        }

        // A second purge with parked pages left over: free what the refill
        // took last (the blocks of the pages it unparked last), purge, and
        // take them all back.
        let returned = again.len() / 2;
        for &block in &again[again.len() - returned..] {
            handed_out[slab.index_of(block)] = false;
            // SAFETY: handed out above, given up here.
            unsafe { slab.push_local(block) };
        }
        slab.purge_free_pages();
        let mut last: BTreeSet<usize> = BTreeSet::new();
        while let Some(block) = slab.pop() {
            hand_out(&mut handed_out, slab.index_of(block));
            assert!(last.insert(block.as_ptr() as usize), "class {class}: handed out twice");
        }
        let expected: BTreeSet<usize> =
            again[again.len() - returned..].iter().map(|block| block.as_ptr() as usize).collect();
        assert_eq!(last, expected, "class {class}: exactly the returned blocks come back");
    }

    #[test]
    fn parked_blocks_come_back_exactly_once_in_every_class() {
        let page = os::page_size();
        for class in 0..CLASS_COUNT {
            let size = class_size(class);
            let page_of = |index: usize| (DATA_OFFSET + index * size) / page;
            // A live block in every third page, and the last block: whole
            // free pages between live ones, blocks straddling their edges.
            purge_and_refill(class, |index, capacity| page_of(index) % 3 == 1 || index == capacity - 1);
            // Live blocks at the start only: the free end goes back to the
            // bump index.
            purge_and_refill(class, |index, _| index < 2);
            // Nothing live: every data page goes.
            purge_and_refill(class, |_, _| false);
            // Everything live: nothing goes.
            purge_and_refill(class, |_, _| true);
        }
    }

    #[test]
    fn a_free_block_reaching_into_a_purged_page_stays_listed() {
        // 1024-byte blocks: the page after the header holds blocks that
        // start before it and reach into it.
        let class = (0..CLASS_COUNT).find(|&class| class_size(class) == 1024).unwrap();
        let page = os::page_size();
        let memory = SlabMemory::new();
        // SAFETY: fresh, aligned, exclusively ours.
        let slab = unsafe { Slab::create(memory.base(0), class, None, BlockRecords::None) };
        let blocks: Vec<NonNull<u8>> = std::iter::from_fn(|| slab.pop()).collect();
        // Keep the first block and the last: pages 1 onward are free but for
        // the last block's pages.
        let straddler = (0..blocks.len())
            .find(|&index| {
                let (start, end) = extent(slab, index);
                start / page == 0 && end > page
            })
            .expect("a block from the header's page into the next");
        for (index, &block) in blocks.iter().enumerate() {
            if index != 0 && index != blocks.len() - 1 {
                // SAFETY: handed out above, given up here.
                unsafe { slab.push_local(block) };
            }
        }
        assert!(slab.purge_free_pages() > 0);
        // The list runs in address order: the free blocks that start in the
        // header's page come first, the straddler last of them.
        let first: Vec<_> = (1..=straddler).map(|_| slab.pop()).collect();
        let expected: Vec<_> = blocks[1..=straddler].iter().copied().map(Some).collect();
        assert_eq!(first, expected, "its link lies in the header's page: listed");
    }
}
