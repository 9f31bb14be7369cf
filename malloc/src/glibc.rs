//! glibc's allocator, called by the names it keeps for itself
//! (`__libc_malloc` and its kin), which preloading a `malloc` does not
//! replace.
//!
//! It serves what the pool does not: allocations made while the calling
//! thread is inside a pool operation (a thread's first heap registers a
//! thread-local destructor, and glibc's registration calls `calloc`),
//! allocations the pool refuses, and this library's own Rust heap, whose
//! default, `System`, would call `malloc`, which is now the pool's.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(count: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(block: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(block: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// The alignment of every block glibc's `malloc` returns on the 64-bit
/// targets this library builds for.
const MALLOC_ALIGNMENT: usize = 16;

/// glibc's allocator as a Rust allocator.
pub(crate) struct Glibc;

impl Glibc {
    /// Whether `malloc` and `calloc` alone serve `layout`: a block of at
    /// least its alignment is aligned to it, up to glibc's guarantee.
    fn malloc_serves(layout: Layout) -> bool {
        layout.align() <= MALLOC_ALIGNMENT && layout.align() <= layout.size()
    }
}

// SAFETY: every block comes from glibc's allocator, aligned as asked
// (`memalign` where `malloc`'s guarantee falls short), and goes back to it;
// `realloc` keeps to `malloc`'s guarantee, else takes the default move.
unsafe impl GlobalAlloc for Glibc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::malloc_serves(layout) {
            // SAFETY: any size may be asked of malloc.
            unsafe { __libc_malloc(layout.size()) }.cast()
        } else {
            // SAFETY: a layout's alignment is a power of two.
            unsafe { __libc_memalign(layout.align(), layout.size()) }.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::malloc_serves(layout) {
            // SAFETY: any size may be asked of calloc.
            return unsafe { __libc_calloc(1, layout.size()) }.cast();
        }
        // SAFETY: the caller's layout contract is `alloc`'s.
        let block = unsafe { self.alloc(layout) };
        if !block.is_null() {
            // SAFETY: a fresh block of `layout.size()` bytes.
            unsafe { block.write_bytes(0, layout.size()) };
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, _layout: Layout) {
        // SAFETY: a block of glibc's, which the caller gives up.
        unsafe { __libc_free(block.cast()) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's layout contract is valid for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if Self::malloc_serves(new_layout) {
            // SAFETY: a live block of glibc's, which the caller gives up on
            // success.
            return unsafe { __libc_realloc(block.cast(), new_size) }.cast();
        }
        // SAFETY: `alloc` into a new block, copy, and free the old one.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both hold the smaller size and don't overlap; the old
            // block is the caller's to give up.
            unsafe {
                moved.copy_from_nonoverlapping(block, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

/// Resizes `block`, one of glibc's, as glibc's `realloc`.
///
/// # Safety
/// `block` is a live block of glibc's, which the caller gives up if this
/// returns non-null.
pub(crate) unsafe fn realloc(block: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: as the caller guarantees.
    unsafe { __libc_realloc(block, size) }
}

/// Frees `block`, one of glibc's (or null).
///
/// # Safety
/// `block` is null or a live block of glibc's, which the caller gives up.
pub(crate) unsafe fn free(block: *mut c_void) {
    // SAFETY: as the caller guarantees.
    unsafe { __libc_free(block) }
}

/// glibc's `malloc_usable_size`, which keeps no name of its own beside the
/// one this library takes over: found once, past this library, with
/// `dlsym(RTLD_NEXT)`.
static USABLE_SIZE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// The bytes usable at `block`, one of glibc's; 0 if glibc's
/// `malloc_usable_size` can't be found.
///
/// # Safety
/// `block` is a live block of glibc's.
pub(crate) unsafe fn usable_size(block: *mut c_void) -> usize {
    let mut function = USABLE_SIZE.load(Ordering::Acquire);
    if function.is_null() {
        const NAME: &CStr = c"malloc_usable_size";
        // SAFETY: a valid, NUL-terminated name. `dlsym` may allocate; this
        // thread holds none of the pool's locks here, so that is served as
        // any other allocation. Racing threads find the same address.
        function = unsafe { libc::dlsym(libc::RTLD_NEXT, NAME.as_ptr().cast::<c_char>()) };
        if function.is_null() {
            return 0;
        }
        USABLE_SIZE.store(function, Ordering::Release);
    }
    // SAFETY: glibc's `malloc_usable_size`, whose C signature this is.
    let usable_size: unsafe extern "C" fn(*mut c_void) -> usize = unsafe { std::mem::transmute(function) };
    // SAFETY: a live block of glibc's, as the caller guarantees.
    unsafe { usable_size(block) }
}
