//! Slabs: the unit in which per-thread caches take memory from the pool.
//!
//! A slab is one `SLAB_SIZE`-byte block of the shared pool, aligned to its
//! size, carved into equal blocks of one size class. Its header sits at its
//! start (as mimalloc's page metadata sits in its segment): a free list only
//! the owning thread touches, with no atomics, and a second list that other
//! threads push freed blocks onto with one compare-and-swap, which the owner
//! takes whole with one swap when its own list runs dry (mimalloc's
//! `xthread_free`, rpmalloc's thread-free list). Blocks that have never been
//! handed out are not on any list: a bump index carves them lazily, so a new
//! slab costs nothing per block.

use crate::error::PoolError;
use crate::identity::current_thread_token;
use crate::model_cells::{forget_block_links, read_block_link, write_block_link};
use crate::size_class::class_size;
use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::thread_cache::ThreadHeap;
use crossbeam_utils::CachePadded;
use std::cell::Cell;
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

/// The header at the start of every slab. `repr(C)` in this order: the
/// fields the inline allocate and free paths touch come first, so that both
/// read one cache line of the header.
#[repr(C, align(64))]
pub(crate) struct Slab {
    // Owner-only state: touched only by the owning thread or, while the slab
    // is abandoned, under the pool's abandoned-slab lock.
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
    // Fixed while the slab exists; read by any thread.
    block_size: u32,
    capacity: u32,
    /// Where the blocks end, as an offset from the first block.
    blocks_end: u32,
    /// `ceil(2^64 / block_size)`: an offset below 2^16 is a multiple of the
    /// block size exactly when `offset * divisibility_magic` (wrapping) is
    /// below it (Lemire, Kaser and Kurz, "Faster remainder by direct
    /// computation", 2019): one multiply and one comparison, no division.
    divisibility_magic: u64,
    /// The owning thread's `current_thread_token`, 0 while abandoned; set
    /// with `owner`.
    owner_token: AtomicUsize,
    class: u32,
    /// `ceil(2^32 / block_size)`: turns an offset into a block index with a
    /// multiply, exactly, because offsets and sizes are below 2^16.
    reciprocal: u32,
    checked: bool,
    /// The heap that owns the slab; null while abandoned by an exited thread.
    /// Only the owner (or, while abandoned, the holder of the pool's
    /// abandoned-slab lock) changes it.
    owner: AtomicPtr<ThreadHeap>,
    /// The owning heap's ring of slabs of this class.
    pub(crate) next: Cell<*mut Slab>,
    pub(crate) previous: Cell<*mut Slab>,
    /// Blocks freed by other threads; on its own cache line so remote frees
    /// do not bounce the owner's line.
    thread_free: CachePadded<AtomicPtr<FreeBlock>>,
    /// With `checked`: one bit per block, set while the block is handed out.
    allocated: [AtomicU64; BITMAP_WORDS],
}

/// The owner token a slab owned by `owner` on the calling thread carries.
fn owner_token_for(owner: *mut ThreadHeap) -> usize {
    if owner.is_null() {
        0
    } else {
        current_thread_token()
    }
}

/// Where the first block starts: right after the header.
const DATA_OFFSET: usize = std::mem::size_of::<Slab>();
// At most a quarter of the slab, so even the largest class gets three
// blocks. Under shuttle each atomic carries a vector clock (about 100 bytes),
// which puts the header at exactly a quarter of the models' 4 KiB slab.
const _: () = assert!(DATA_OFFSET % 64 == 0 && DATA_OFFSET <= SLAB_SIZE / 4);

impl Slab {
    /// Writes a fresh header for class `class` at `memory`.
    ///
    /// # Safety
    /// `memory` must be `SLAB_SIZE` bytes, aligned to `SLAB_SIZE`, owned by
    /// the caller and otherwise unused.
    pub(crate) unsafe fn create(memory: NonNull<u8>, class: usize, owner: *mut ThreadHeap, checked: bool) -> *mut Slab {
        debug_assert_eq!(memory.as_ptr() as usize % SLAB_SIZE, 0);
        let block_size = class_size(class);
        let capacity = (SLAB_SIZE - DATA_OFFSET) / block_size;
        let slab = memory.as_ptr().cast::<Slab>();
        let header = Slab {
            block_size: block_size as u32,
            capacity: capacity as u32,
            class: class as u32,
            reciprocal: ((1u64 << 32).div_ceil(block_size as u64)) as u32,
            blocks_end: (capacity * block_size) as u32,
            divisibility_magic: u64::MAX / block_size as u64 + 1,
            checked,
            owner: AtomicPtr::new(owner),
            owner_token: AtomicUsize::new(owner_token_for(owner)),
            local_free: Cell::new(ptr::null_mut()),
            bump: Cell::new(0),
            used: Cell::new(0),
            current: Cell::new(false),
            next: Cell::new(slab),
            previous: Cell::new(slab),
            thread_free: CachePadded::new(AtomicPtr::new(ptr::null_mut())),
            allocated: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        // SAFETY: the caller hands us SLAB_SIZE suitably aligned bytes, and
        // the header is far smaller than that.
        unsafe { ptr::write(slab, header) };
        // The memory may have held another slab, whose links are not this
        // one's.
        forget_block_links(slab as usize, slab as usize + SLAB_SIZE);
        slab
    }

    #[inline]
    pub(crate) fn class(&self) -> usize {
        self.class as usize
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    #[inline]
    pub(crate) fn owner(&self) -> *mut ThreadHeap {
        self.owner.load(Ordering::Relaxed)
    }

    /// Whether the calling thread owns the slab. A stale answer is
    /// impossible: only the owner changes the token, and it clears it before
    /// its thread (and token) can go away.
    #[inline]
    pub(crate) fn is_owned_by_current_thread(&self) -> bool {
        let token = self.owner_token.load(Ordering::Relaxed);
        token != 0 && token == current_thread_token()
    }

    /// Hands the slab to `owner` on the calling thread (null: abandoned).
    /// The caller must be the current owner, or hold the abandoned-slab lock.
    pub(crate) fn set_owner(&self, owner: *mut ThreadHeap) {
        self.owner_token.store(owner_token_for(owner), Ordering::Relaxed);
        self.owner.store(owner, Ordering::Relaxed);
    }

    /// Whether the slab is its owner's current slab. Owner only.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        self.current.get()
    }

    /// Records whether the slab is its owner's current slab. Owner only.
    pub(crate) fn set_current(&self, current: bool) {
        self.current.set(current);
    }

    #[inline]
    pub(crate) fn used(&self) -> usize {
        self.used.get() as usize
    }

    #[inline]
    fn base(&self) -> usize {
        self as *const Slab as usize
    }

    /// Whether a block of this slab starts at `addr`, which lies in the
    /// slab: the fast path's test, without the block's index.
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

    /// Takes a block. Owner only.
    #[inline]
    pub(crate) fn pop(&self) -> Option<NonNull<u8>> {
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

    /// Gives a block back to the owner's list; returns the blocks still used.
    /// Owner only; `block` must be a handed-out block of this slab.
    #[inline]
    pub(crate) fn push_local(&self, block: NonNull<u8>) -> usize {
        let block = block.as_ptr().cast::<FreeBlock>();
        // SAFETY: the block is ours to reuse: the caller just freed it.
        unsafe { FreeBlock::set_next(block, self.local_free.get()) };
        self.local_free.set(block);
        debug_assert!(self.used.get() > 0);
        let used = self.used.get() - 1;
        self.used.set(used);
        used as usize
    }

    /// Gives a block back from any thread.
    #[inline]
    pub(crate) fn push_remote(&self, block: NonNull<u8>) {
        // SAFETY: a single freed block is a chain from itself to itself.
        unsafe { self.push_remote_chain(block, block) };
    }

    /// Gives back, from any thread, the chain of freed blocks of this slab
    /// that runs from `first` to `last` through their links (see [`link`]).
    ///
    /// # Safety
    /// Every block on the chain must be a freed block of this slab that the
    /// caller alone holds, and following links from `first` must reach `last`.
    pub(crate) unsafe fn push_remote_chain(&self, first: NonNull<u8>, last: NonNull<u8>) {
        let (first, last) = (first.as_ptr().cast::<FreeBlock>(), last.as_ptr().cast::<FreeBlock>());
        let mut head = self.thread_free.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller holds the chain, so nobody else writes its
            // last link; the Release below publishes every link with it.
            unsafe { FreeBlock::set_next(last, head) };
            match self.thread_free.compare_exchange_weak(head, first, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Moves every remotely freed block onto the local list. Owner only.
    /// Returns whether there were any.
    pub(crate) fn collect_remote(&self) -> bool {
        if self.thread_free.load(Ordering::Relaxed).is_null() {
            return false;
        }
        // Acquire: the links the pushers wrote before their Release CAS.
        let head = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        if head.is_null() {
            return false;
        }
        let mut tail = head;
        let mut count = 1u32;
        // SAFETY: every block on the list was pushed by `push_remote`, which
        // wrote its link before publishing it.
        unsafe {
            loop {
                let next = FreeBlock::next(tail);
                if next.is_null() {
                    break;
                }
                tail = next;
                count += 1;
            }
            FreeBlock::set_next(tail, self.local_free.get());
        }
        self.local_free.set(head);
        debug_assert!(count <= self.used.get());
        self.used.set(self.used.get() - count);
        true
    }

    /// Whether the owner could take a block without a new slab.
    pub(crate) fn has_free_block(&self) -> bool {
        !self.local_free.get().is_null()
            || self.bump.get() < self.capacity
            || !self.thread_free.load(Ordering::Relaxed).is_null()
    }

    #[inline]
    pub(crate) fn is_checked(&self) -> bool {
        self.checked
    }

    /// With `checked`: records that block `index` was handed out.
    #[inline]
    pub(crate) fn mark_allocated(&self, index: usize) {
        let previous = self.allocated[index / 64].fetch_or(1 << (index % 64), Ordering::Relaxed);
        debug_assert_eq!(previous & (1 << (index % 64)), 0, "block handed out twice");
    }

    /// With `checked`: records that block `index` was freed; `false` if it
    /// was not handed out (a double free).
    #[inline]
    pub(crate) fn mark_freed(&self, index: usize) -> bool {
        let bit = 1u64 << (index % 64);
        self.allocated[index / 64].fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }

    /// The index of a block `pop` handed out.
    #[inline]
    pub(crate) fn index_of(&self, block: NonNull<u8>) -> usize {
        (block.as_ptr() as usize - self.base() - DATA_OFFSET) / self.block_size as usize
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crate::size_class::CLASS_COUNT;

    struct SlabMemory(*mut u8);

    impl SlabMemory {
        fn new() -> Self {
            let layout = std::alloc::Layout::from_size_align(SLAB_SIZE, SLAB_SIZE).unwrap();
            // SAFETY: non-zero size.
            SlabMemory(unsafe { std::alloc::alloc_zeroed(layout) })
        }
    }

    impl Drop for SlabMemory {
        fn drop(&mut self) {
            let layout = std::alloc::Layout::from_size_align(SLAB_SIZE, SLAB_SIZE).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.0, layout) };
        }
    }

    #[test]
    fn block_index_accepts_exactly_the_block_starts() {
        let memory = SlabMemory::new();
        for class in 0..CLASS_COUNT {
            // SAFETY: fresh, aligned, exclusively ours.
            let slab = unsafe { &*Slab::create(NonNull::new(memory.0).unwrap(), class, ptr::null_mut(), false) };
            let size = class_size(class);
            let base = memory.0 as usize;
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
        let slab = unsafe { &*Slab::create(NonNull::new(memory.0).unwrap(), 3, ptr::null_mut(), true) };
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
            slab.push_remote(block);
        }
        assert!(!slab.mark_freed(slab.index_of(remote[0])), "double free not caught");
        for &block in local {
            slab.push_local(block);
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
}
