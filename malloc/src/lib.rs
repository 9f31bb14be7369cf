//! `liblle_malloc.so`: the C library's allocation functions over one
//! [`GlobalPool`], for `LD_PRELOAD`.
//!
//! ```sh
//! cargo build --release -p lle-malloc
//! LD_PRELOAD=target/release/liblle_malloc.so python3 script.py
//! ```
//!
//! Every block comes from one process-wide pool: up to 1 KiB from the
//! calling thread's cache, the rest from the shared pool. What the pool
//! does not serve goes to glibc's allocator, by the names glibc keeps for
//! itself (see `glibc.rs`): allocations while the calling thread is inside a
//! pool operation (its first heap registers a thread-local destructor, and
//! glibc's registration calls `calloc`, back into this library), and
//! allocations the pool refuses. `free`, `realloc` and
//! `malloc_usable_size` ask the pool whether a pointer is its own (a
//! lookup that reads nothing at the pointer) and send any other, glibc's or
//! one allocated before the preload took effect, to glibc.
//!
//! Blocks are aligned to 16 bytes, as glibc's are on 64-bit targets: sizes
//! are rounded up to a multiple of 16, whose size class guarantees it.
//! glibc's conventions hold: `malloc(0)` returns a unique block,
//! `realloc(block, 0)` frees the block and returns null, failures set
//! `errno`. The pool's `pthread_atfork` handlers keep it usable in the
//! child of a `fork()` from any thread.
//!
//! Nothing here may unwind into C: each function is `extern "C"`, which
//! aborts on a panic, and the paths it takes do not panic.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod glibc;

use lle_mempool::GlobalPool;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_void};
use std::ptr::{self, NonNull};

/// This library's own Rust allocations: glibc's, since `malloc` is the
/// pool's, and the pool's bookkeeping must not allocate from itself.
#[global_allocator]
static RUST_HEAP: glibc::Glibc = glibc::Glibc;

/// The pool every function here allocates from.
static POOL: GlobalPool = GlobalPool::new();

/// The alignment every block gets: `max_align_t`'s.
const MIN_ALIGN: usize = 16;

/// The layout of a block of `size` bytes aligned to `align` (a power of
/// two): the size rounded up to a non-zero multiple of [`MIN_ALIGN`], so
/// that the size class serving it aligns its blocks to 16 bytes, and the
/// alignment raised to it. `None` for sizes no layout holds.
#[inline(always)]
fn block_layout(size: usize, align: usize) -> Option<Layout> {
    debug_assert!(align.is_power_of_two());
    let size = size.max(1).checked_next_multiple_of(MIN_ALIGN)?;
    Layout::from_size_align(size, align.max(MIN_ALIGN)).ok()
}

/// A block for `layout` from the pool, else from glibc; null (with
/// `errno` set by glibc) if neither has one.
#[inline(always)]
fn allocate(layout: Layout) -> *mut c_void {
    match POOL.allocate(layout) {
        Some(block) => block.as_ptr().cast(),
        None => allocate_from_glibc(layout),
    }
}

#[cold]
#[inline(never)]
fn allocate_from_glibc(layout: Layout) -> *mut c_void {
    // SAFETY: a layout of non-zero size (see `block_layout`).
    unsafe { glibc::Glibc.alloc(layout) }.cast()
}

/// [`allocate`] for `size` bytes aligned to `align` (a power of two), or
/// null with `errno` ENOMEM for a size no block can have.
#[inline(always)]
fn allocate_sized(size: usize, align: usize) -> *mut c_void {
    match block_layout(size, align) {
        Some(layout) => allocate(layout),
        None => fail(libc::ENOMEM),
    }
}

/// Sets `errno` to `code` and returns null.
#[cold]
fn fail(code: c_int) -> *mut c_void {
    // SAFETY: `__errno_location` returns this thread's `errno`, valid for
    // the thread's life.
    unsafe { *libc::__errno_location() = code };
    ptr::null_mut()
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Allocates `size` bytes aligned to 16; `malloc(0)` returns a unique
/// block. Null with `errno` ENOMEM if no memory is left.
///
/// # Safety
/// Callable from C at any time.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // `MIN_ALIGN` is 16: the pool's path for that alignment, with no
    // layout built.
    match POOL.allocate_aligned_16(size.max(1)) {
        Some(block) => block.as_ptr().cast(),
        None => allocate_elsewhere(size),
    }
}

/// `malloc`'s fallback for a size the pool refused: glibc's block, or
/// null with `errno` ENOMEM for a size no block can have.
#[cold]
#[inline(never)]
fn allocate_elsewhere(size: usize) -> *mut c_void {
    match block_layout(size, MIN_ALIGN) {
        Some(layout) => allocate_from_glibc(layout),
        None => fail(libc::ENOMEM),
    }
}

/// Frees a block of any of these functions, or a block of glibc's; null
/// is ignored.
///
/// # Safety
/// `block` is null or a live block, which the caller gives up.
#[no_mangle]
pub unsafe extern "C" fn free(block: *mut c_void) {
    let Some(nonnull) = NonNull::new(block) else { return };
    // SAFETY: a live block the caller gives up, taken by the pool if it is
    // the pool's, else glibc's.
    unsafe { POOL.free_or_else(nonnull.cast(), free_foreign) }
}

fn free_foreign(block: NonNull<u8>) {
    // SAFETY: a live block the pool did not hand out: glibc's.
    unsafe { glibc::free(block.as_ptr().cast()) }
}

/// `free`, by its old name.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(block: *mut c_void) {
    // SAFETY: as the caller guarantees.
    unsafe { free(block) }
}

/// Allocates `count * size` zeroed bytes; null with `errno` ENOMEM if the
/// product overflows or no memory is left.
///
/// # Safety
/// Callable from C at any time.
#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    let Some(layout) = count.checked_mul(size).and_then(|bytes| block_layout(bytes, MIN_ALIGN)) else {
        return fail(libc::ENOMEM);
    };
    match POOL.allocate(layout) {
        Some(block) => {
            // SAFETY: the block holds `layout.size()` bytes; the pool reuses
            // memory, so it must be cleared.
            unsafe { block.as_ptr().write_bytes(0, layout.size()) };
            block.as_ptr().cast()
        }
        // SAFETY: a layout of non-zero size; glibc's calloc zeroes.
        None => unsafe { glibc::Glibc.alloc_zeroed(layout) }.cast(),
    }
}

/// Resizes `block` to `size` bytes, keeping its contents up to the smaller
/// size: in place when the pool can, else into a new block. A null `block`
/// allocates; a zero `size` frees `block` and returns null, as glibc's
/// does. On failure, null with `errno` ENOMEM, and `block` is unchanged.
/// glibc's blocks stay glibc's.
///
/// # Safety
/// `block` is null or a live block, which the caller gives up if this
/// returns non-null (or `size` is 0).
#[no_mangle]
pub unsafe extern "C" fn realloc(block: *mut c_void, size: usize) -> *mut c_void {
    let Some(nonnull) = NonNull::new(block.cast::<u8>()) else { return allocate_sized(size, MIN_ALIGN) };
    if size == 0 {
        // SAFETY: as the caller guarantees.
        unsafe { free(block) };
        return ptr::null_mut();
    }
    if !POOL.owns(nonnull.as_ptr()) {
        // SAFETY: a live block the pool did not hand out: glibc's.
        return unsafe { glibc::realloc(block, size) };
    }
    let Some(layout) = block_layout(size, MIN_ALIGN) else { return fail(libc::ENOMEM) };
    // SAFETY: a live block of the pool, of which the caller keeps `size`
    // bytes.
    if unsafe { POOL.resize_in_place(nonnull, layout) } {
        return block;
    }
    // Before anything moves: a block whose size cannot be read now (the
    // thread is inside a pool operation) stays where it is, and the call
    // fails as `realloc` does when memory runs out.
    let Some(usable) = POOL.usable_size(nonnull.as_ptr()) else { return fail(libc::ENOMEM) };
    let moved = allocate(layout);
    if !moved.is_null() {
        let kept = usable.min(size);
        // SAFETY: the old block holds at least `kept` bytes and the new one
        // `size`; the new one is fresh, so they don't overlap, and the old
        // one is the caller's to give up.
        unsafe {
            ptr::copy_nonoverlapping(block.cast::<u8>(), moved.cast::<u8>(), kept);
            POOL.free(nonnull);
        }
    }
    moved
}

/// Whether `align` can be asked of the alignment functions: a power of two.
fn valid_alignment(align: usize) -> bool {
    align.is_power_of_two()
}

/// Stores in `*out` a block of `size` bytes aligned to `align`, a power of
/// two and a multiple of the pointer size; returns 0, EINVAL for another
/// alignment, or ENOMEM if no memory is left (leaving `*out` unchanged).
///
/// # Safety
/// `out` is valid for a pointer's write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !valid_alignment(align) || align % size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let block = allocate_sized(size, align);
    if block.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: as the caller guarantees.
    unsafe { out.write(block) };
    0
}

/// A block of `size` bytes aligned to `align`, a power of two; null with
/// `errno` EINVAL for another alignment, ENOMEM if no memory is left.
///
/// # Safety
/// Callable from C at any time.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !valid_alignment(align) {
        return fail(libc::EINVAL);
    }
    allocate_sized(size, align)
}

/// A block of `size` bytes aligned to `align` rounded up to a power of two,
/// as glibc's `memalign` does (0 asks for no alignment); null with `errno`
/// EINVAL when no power of two is that large, ENOMEM if no memory is left.
///
/// # Safety
/// Callable from C at any time.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.max(1).checked_next_power_of_two() {
        Some(align) => allocate_sized(size, align),
        None => fail(libc::EINVAL),
    }
}

/// A page-aligned block of `size` bytes.
///
/// # Safety
/// Callable from C at any time.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    allocate_sized(size, page_size())
}

/// A page-aligned block of `size` bytes rounded up to whole pages (one page
/// for 0); null with `errno` ENOMEM if the rounding overflows.
///
/// # Safety
/// Callable from C at any time.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(pages) => allocate_sized(pages, page),
        None => fail(libc::ENOMEM),
    }
}

/// The bytes usable at `block`, a live block of these functions or of
/// glibc's (at least the size asked); 0 for null.
///
/// # Safety
/// `block` is null or a live block.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(block: *mut c_void) -> usize {
    if block.is_null() {
        return 0;
    }
    match POOL.usable_size(block.cast()) {
        Some(bytes) => bytes,
        // SAFETY: a live block the pool did not hand out: glibc's.
        None => unsafe { glibc::usable_size(block) },
    }
}
