//! The pool behind collections: `impl Allocator for &MemoryPool`.
//!
//! [`allocator_api2`] mirrors the standard library's unstable `Allocator`
//! trait on stable Rust; its `Vec` and `Box`, and hashbrown's maps, take any
//! implementation. Small layouts whose alignment a size class guarantees
//! come from the thread caches; the rest from the shared pool, aligned as
//! asked. Growing and shrinking stay in place when they can: inside a
//! cache block while the new size fits its class, and for shared blocks
//! when the granules after the block are free (or, shrinking, always).

use crate::free_index::GRANULE;
use crate::size_class::{class_for_layout, class_of, class_size};
use crate::slab_map::Owner;
use crate::{MemoryPool, PoolError};
use allocator_api2::alloc::{AllocError, Allocator, Layout};
use std::ptr::{self, NonNull};

/// A block of `len` bytes at `block`, as the `Allocator` trait returns it.
fn block_slice(block: NonNull<u8>, len: usize) -> NonNull<[u8]> {
    NonNull::slice_from_raw_parts(block, len)
}

/// The empty block for a zero-sized layout: never allocated, never freed.
fn empty_block(align: usize) -> NonNull<[u8]> {
    // SAFETY: a layout's alignment is a non-zero power of two.
    let dangling = unsafe { NonNull::new_unchecked(ptr::without_provenance_mut::<u8>(align)) };
    block_slice(dangling, 0)
}

/// The bytes a block [`MemoryPool::allocate_for_layout`] returns for
/// `layout` can hold: a cache block holds its class's size (the shared
/// pool's stand-in, when the thread has no cache, holds at least as much);
/// a shared block, the size rounded up to whole granules.
fn usable_size(layout: Layout) -> usize {
    match class_for_layout(layout) {
        Some(class) => class_size(class),
        None => layout.size().next_multiple_of(GRANULE),
    }
}

/// Whether a cache block of `block_size` bytes should keep holding
/// `new_size` bytes rather than move: it must fit, and the class `new_size`
/// would get must be more than half the block, so moving would not even
/// halve the memory held.
pub(crate) fn stays_in_cache_block(new_size: usize, block_size: usize) -> bool {
    new_size > 0 && new_size <= block_size && class_size(class_of(new_size)) * 2 > block_size
}

impl MemoryPool {
    /// Allocates a block for `layout` (non-zero size): a cache block when a
    /// size class serves the layout's alignment, else a shared block aligned
    /// as asked. What a global allocator needs, and nothing more: the bytes
    /// the block holds are [`usable_size`]'s to work out, for callers that
    /// want them.
    #[inline]
    #[track_caller]
    pub(crate) fn allocate_for_layout(&self, layout: Layout) -> Result<NonNull<u8>, PoolError> {
        debug_assert!(layout.size() > 0);
        match class_for_layout(layout) {
            // Padded to its alignment, the size's own class is the layout's:
            // what the full path, which works from the size, allocates.
            Some(class) => self.allocate_in_class(layout.pad_to_align().size(), class),
            None => self.allocate_aligned(layout.size(), layout.align()),
        }
    }

    /// As [`allocate_for_layout`](Self::allocate_for_layout), with the
    /// bytes the block can hold.
    #[track_caller]
    pub(crate) fn allocate_layout(&self, layout: Layout) -> Result<(NonNull<u8>, usize), PoolError> {
        let block = self.allocate_for_layout(layout)?;
        // A checked pool's blocks hold the bytes asked: the rest is canary.
        let len = if self.inner.config.checked { layout.size() } else { usable_size(layout) };
        Ok((block, len))
    }

    /// Resizes the live block at `block` to `new_layout` without moving it,
    /// if the pool can; returns the block and the bytes it now holds. A
    /// shared block takes the shared pool's lock.
    pub(crate) fn resize_layout_in_place(&self, block: NonNull<u8>, new_layout: Layout) -> Option<NonNull<[u8]>> {
        let addr = block.as_ptr() as usize;
        let inner = &*self.inner;
        // A checked pool moves every resized block, so that each block's
        // canary is set where it is handed out.
        if addr % new_layout.align() != 0 || inner.config.checked {
            return None;
        }
        if let Owner::Slab(slab) = inner.classify(addr) {
            let block_size = class_size(slab.class());
            return stays_in_cache_block(new_layout.size(), block_size).then(|| block_slice(block, block_size));
        }
        // SAFETY: callers (the `Allocator` impl's `grow` and `shrink`, the
        // global allocator's `realloc`) pass a live block of the pool and
        // keep only the new layout's bytes of it.
        match unsafe { inner.resize_shared_in_place(block, new_layout.size()) } {
            Ok(Some(bytes)) => Some(block_slice(block, bytes)),
            Ok(None) => None,
            Err(error) => {
                debug_assert!(false, "resizing a block the allocator did not hand out: {error}");
                None
            }
        }
    }

    /// Moves the block at `block` into a new one for `new_layout`, copying
    /// `keep` bytes, and frees the old one.
    ///
    /// # Safety
    /// `block` is a live block of this pool allocated for `old_layout`, and
    /// `keep` is at most both layouts' sizes.
    unsafe fn relocate(
        &self,
        block: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
        keep: usize,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let moved = Allocator::allocate(&self, new_layout)?;
        // SAFETY: both blocks hold at least `keep` bytes, and the new one is
        // fresh, so they don't overlap; the old one is ours to free.
        unsafe {
            ptr::copy_nonoverlapping(block.as_ptr(), moved.cast::<u8>().as_ptr(), keep);
            Allocator::deallocate(&self, block, old_layout);
        }
        Ok(moved)
    }
}

/// Lets `allocator_api2` collections and hashbrown maps live in a pool.
///
/// Zero-sized layouts get a dangling, well-aligned pointer and never touch
/// the pool. Blocks report the bytes they really hold (a size class, or the
/// request rounded to 16 bytes), which vectors use as spare capacity.
///
/// # Examples
///
/// ```
/// use allocator_api2::boxed::Box;
/// use allocator_api2::vec::Vec;
/// use lle_mempool::MemoryPool;
///
/// let pool = MemoryPool::new(1 << 20)?;
/// let mut squares = Vec::new_in(&pool);
/// squares.extend((0..1000u64).map(|n| n * n));
/// assert!(pool.contains(squares.as_ptr().cast()));
/// assert_eq!(squares[999], 998_001);
///
/// let boxed = Box::new_in([7u8; 64], &pool);
/// assert!(pool.contains(boxed.as_ptr()));
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
// SAFETY: blocks stay valid until freed or the pool is dropped, which the
// borrow in `&MemoryPool` prevents while any collection uses it; each block
// is aligned to and holds at least its layout (see `allocate_layout`); and
// the pool hands a block to one owner at a time.
unsafe impl Allocator for &MemoryPool {
    #[track_caller]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(empty_block(layout.align()));
        }
        let (block, len) = self.allocate_layout(layout).map_err(|_| AllocError)?;
        Ok(block_slice(block, len))
    }

    unsafe fn deallocate(&self, block: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        // SAFETY: the caller gives back a live block of this allocator.
        let freed = unsafe { self.free_fast(block) };
        debug_assert!(freed.is_ok(), "deallocating a block the allocator did not hand out: {freed:?}");
    }

    unsafe fn grow(
        &self,
        block: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        debug_assert!(new_layout.size() >= old_layout.size());
        if old_layout.size() == 0 {
            return Allocator::allocate(self, new_layout);
        }
        if let Some(grown) = self.resize_layout_in_place(block, new_layout) {
            return Ok(grown);
        }
        // SAFETY: the caller gives a live block for `old_layout`, and the
        // old size is the smaller.
        unsafe { self.relocate(block, old_layout, new_layout, old_layout.size()) }
    }

    unsafe fn grow_zeroed(
        &self,
        block: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract is grow's.
        let grown = unsafe { self.grow(block, old_layout, new_layout) }?;
        // Everything past the old layout may be stale: a moved block is
        // fresh, and a block grown in place holds whatever the granules it
        // took held before.
        // SAFETY: the grown block holds `grown.len()` bytes.
        unsafe {
            let start = grown.cast::<u8>().as_ptr().add(old_layout.size());
            start.write_bytes(0, grown.len() - old_layout.size());
        }
        Ok(grown)
    }

    unsafe fn shrink(
        &self,
        block: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        debug_assert!(new_layout.size() <= old_layout.size());
        if new_layout.size() == 0 {
            // SAFETY: the caller gives a live block for `old_layout`.
            unsafe { Allocator::deallocate(self, block, old_layout) };
            return Ok(empty_block(new_layout.align()));
        }
        if let Some(shrunk) = self.resize_layout_in_place(block, new_layout) {
            return Ok(shrunk);
        }
        // SAFETY: as in `grow`; the new size is the smaller.
        unsafe { self.relocate(block, old_layout, new_layout, new_layout.size()) }
    }
}
