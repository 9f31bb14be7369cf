//! `GlobalPool`: a pool as the program's `#[global_allocator]`.
//!
//! Four things make a pool usable as the global allocator:
//!
//! - **Lazy creation.** A `static` can't run code, so the pool is created by
//!   the first allocation: a state machine (uninitialised, initialising,
//!   ready, failed) lets exactly one thread create it, while every other
//!   allocation meanwhile goes to [`System`].
//! - **No re-entry.** The pool itself allocates: its thread heaps, its
//!   regions' indexes, crossbeam-epoch's bookkeeping. While a thread is
//!   inside a pool operation, a thread-local flag sends its nested
//!   allocations to [`System`]; otherwise they would re-enter the pool while
//!   it holds its own locks.
//! - **Exact routing of frees.** The pool serves every size: the thread
//!   caches the layouts a size class covers, the shared pool the rest.
//!   [`System`] serves only what the pool can't (the allocations above,
//!   and layouts the pool refuses). The pool's map of its memory, a
//!   lock-free radix table that never allocates, tells a slab's block, a
//!   shared block and anyone else's apart, so `dealloc` finds each block's
//!   home without reading the block or taking a lock.
//! - **No lock taken twice.** A shared block freed inside a pool operation
//!   (a nested free, or one in a closure given to
//!   [`with_pool`](GlobalPool::with_pool)) would take the shared pool's
//!   lock, which the operation underway may hold. It waits instead on a
//!   lock-free list, linked through the blocks themselves, until the next
//!   free of a shared block or the end of the outermost `with_pool`.

use crate::fork;
use crate::size_class::{class_for_layout, class_of_aligned_16, MAX_FAST_SIZE};
use crate::slab_map::Owner;
use crate::thread_cache;
use crate::{MemoryPool, PoolConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::mem::{self, MaybeUninit};
use std::ptr::{self, NonNull};
// The state lives in a `static` and needs a const constructor, and a global
// allocator must not be modelled by loom or shuttle (their own runtimes
// allocate through it): so these are std's, not `crate::sync`'s.
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

const UNINITIALISED: u8 = 0;
const INITIALISING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

/// Marks the current thread as inside the pool while it lives. The mark is
/// a thread-local flag kept beside the thread's heaps (see `thread_cache`),
/// so that the inline paths of [`GlobalPool::allocate`] and
/// [`GlobalPool::free`] reach both with one thread-local access; it is
/// const-initialised and without a destructor, so reading it never
/// allocates and works until the thread is gone.
pub(crate) struct InsidePool;

impl InsidePool {
    /// `None` if the thread is inside the pool already: the caller is a
    /// nested allocation and must not use the pool.
    pub(crate) fn enter() -> Option<InsidePool> {
        let entered = thread_cache::with_inside_global_pool(|inside| !inside.replace(true)).unwrap_or(false);
        // Not `then_some`: it would build, and so drop, a guard either way,
        // clearing the mark of the outer operation.
        if entered {
            Some(InsidePool)
        } else {
            None
        }
    }

    /// Whether the thread is inside the pool (or exiting, past the point
    /// where it could tell).
    #[inline]
    fn is_set() -> bool {
        thread_cache::with_inside_global_pool(Cell::get).unwrap_or(true)
    }
}

impl Drop for InsidePool {
    fn drop(&mut self) {
        let _ = thread_cache::with_inside_global_pool(|inside| inside.set(false));
    }
}

/// Aborts the process if dropped: armed by [`abort_on_unwind`] and defused
/// by `mem::forget`.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

/// Runs `body`, aborting the process if it unwinds: for pool code in the
/// allocator's entry points, which must not unwind (a panic escaping a
/// global allocator is undefined behaviour). Costs no instruction when
/// `body` returns.
#[inline(always)]
fn abort_on_unwind<R>(body: impl FnOnce() -> R) -> R {
    let guard = AbortOnUnwind;
    let result = body();
    mem::forget(guard);
    result
}

/// A [`MemoryPool`] usable as the `#[global_allocator]`.
///
/// The pool is created by the first allocation, with
/// [`PoolConfig::new`]`(initial_size)`, and grows as the program needs.
/// Allocations of at most 1 KiB whose alignment a size class guarantees
/// (any Rust type up to 1 KiB aligned to at most 16 bytes) come from the
/// calling thread's cache, all others from the shared pool, aligned as
/// asked. [`System`] serves only allocations made while the pool is being
/// created, those the pool itself makes internally, and any the pool
/// refuses (an alignment above 1 GiB, or no memory left to map). Frees find
/// their way back to whichever served them; `realloc` grows and shrinks
/// shared blocks in place when the memory after them allows.
///
/// A shared block freed while its thread is inside the pool (in a closure
/// given to [`with_pool`](Self::with_pool), say) stays counted as used
/// until the next free of a shared block, or the end of that `with_pool`.
///
/// The pool is never dropped while the `GlobalPool` lives, and a `static`
/// lives for the whole program. Use [`with_pool`](Self::with_pool) to
/// read its statistics or call its methods.
///
/// An allocator with a fallback of its own (a C `malloc` that hands what
/// the pool can't serve to the C library's, say) builds on
/// [`allocate`](Self::allocate), [`free`](Self::free),
/// [`owns`](Self::owns), [`usable_size`](Self::usable_size) and
/// [`resize_in_place`](Self::resize_in_place): the same routing, with
/// `None` or `false` where this type's [`GlobalAlloc`] methods turn to
/// [`System`].
///
/// # Examples
///
/// ```
/// use lle_mempool::GlobalPool;
///
/// #[global_allocator]
/// static GLOBAL: GlobalPool = GlobalPool::new();
///
/// fn main() {
///     let words: Vec<String> = (0..100).map(|n| format!("word {n}")).collect();
///     assert_eq!(words[42], "word 42");
///     let page = vec![0u8; 64 * 1024];
///     let (served, in_pool) =
///         GLOBAL.with_pool(|pool| (pool.stats().fast.allocations, pool.contains(page.as_ptr()))).unwrap();
///     assert!(served >= 100 && in_pool);
/// }
/// ```
pub struct GlobalPool {
    state: AtomicU8,
    /// The pool's inline key (see `thread_cache::InlineKey`) once it is
    /// ready, no heap's before: the inline paths compare it with the
    /// thread's front heap and need not read `state`, since a thread has a
    /// heap of the pool only once the pool is ready.
    inline_key: AtomicU64,
    initial_size: usize,
    /// Written once, by the thread that moves `state` from initialising to
    /// ready; read only after seeing ready.
    pool: UnsafeCell<MaybeUninit<MemoryPool>>,
    /// Shared blocks freed inside a pool operation, waiting for a free
    /// outside one: a stack linked through each block's first word, pushed
    /// one at a time and taken whole, so no block is ever popped alone and
    /// reused while another thread reads its link.
    waiting_frees: AtomicPtr<u8>,
}

// SAFETY: `pool` is written once, before `state` becomes READY with Release
// ordering, and only read (as a shared `&MemoryPool`, which is Sync) after
// an Acquire load sees READY.
unsafe impl Sync for GlobalPool {}

/// The pool's size when created by [`GlobalPool::new`].
const DEFAULT_INITIAL_SIZE: usize = 1 << 20;

impl GlobalPool {
    /// A global pool that starts with 1 MiB once created.
    ///
    /// # Examples
    ///
    /// ```
    /// static GLOBAL: lle_mempool::GlobalPool = lle_mempool::GlobalPool::new();
    /// assert_eq!(GLOBAL.with_pool(|pool| pool.size()), Some(1 << 20));
    /// ```
    pub const fn new() -> Self {
        Self::with_initial_size(DEFAULT_INITIAL_SIZE)
    }

    /// A global pool that starts with `initial_size` bytes (rounded up to
    /// pages) once created; `0` maps memory on first use.
    ///
    /// # Examples
    ///
    /// ```
    /// static GLOBAL: lle_mempool::GlobalPool = lle_mempool::GlobalPool::with_initial_size(8 << 20);
    /// assert_eq!(GLOBAL.with_pool(|pool| pool.size()), Some(8 << 20));
    /// ```
    pub const fn with_initial_size(initial_size: usize) -> Self {
        GlobalPool {
            state: AtomicU8::new(UNINITIALISED),
            inline_key: AtomicU64::new(thread_cache::InlineKey::NONE.to_bits()),
            initial_size,
            pool: UnsafeCell::new(MaybeUninit::uninit()),
            waiting_frees: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Runs `use_pool` with the pool, creating it if no allocation has yet,
    /// and returns its result; `None` if the pool could not be created.
    ///
    /// While `use_pool` runs, this thread's allocations through the global
    /// allocator go to [`System`], so it may call any of the pool's methods:
    /// they allocate internally, and would otherwise re-enter the pool while
    /// it holds its own locks. Shared blocks it frees are given back when
    /// the outermost `with_pool` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// static GLOBAL: lle_mempool::GlobalPool = lle_mempool::GlobalPool::new();
    ///
    /// let checked = GLOBAL.with_pool(|pool| {
    ///     let block = pool.allocate_fast(64)?;
    ///     unsafe { pool.free_fast(block)? };
    ///     pool.check()
    /// });
    /// assert_eq!(checked, Some(Ok(())));
    /// ```
    pub fn with_pool<R>(&self, use_pool: impl FnOnce(&MemoryPool) -> R) -> Option<R> {
        // Nested in another `with_pool`, the outer mark stays in force.
        let outermost = InsidePool::enter();
        let pool = loop {
            match self.state.load(Ordering::Acquire) {
                READY => break self.ready_pool()?,
                UNINITIALISED => {
                    self.initialise();
                }
                INITIALISING => std::thread::yield_now(),
                _ => return None,
            }
        };
        let result = use_pool(pool);
        if outermost.is_some() {
            // `use_pool` has returned, so this thread holds none of the
            // pool's locks.
            abort_on_unwind(|| self.free_waiting(pool));
        }
        Some(result)
    }

    #[inline]
    fn ready_pool(&self) -> Option<&MemoryPool> {
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY is stored (Release) only after the pool is written,
        // and the pool is never written again.
        Some(unsafe { (*self.pool.get()).assume_init_ref() })
    }

    /// The pool, created now if this is the first allocation. Called inside
    /// the pool, so that creating it allocates from [`System`].
    fn pool_or_initialise(&self) -> Option<&MemoryPool> {
        match self.state.load(Ordering::Acquire) {
            READY => self.ready_pool(),
            UNINITIALISED => self.initialise(),
            _ => None,
        }
    }

    /// Creates the pool. The claim and the outcome go through the fork
    /// registry, so that a child forked meanwhile, where the creating thread
    /// does not exist, finds the pool uninitialised rather than forever
    /// initialising.
    #[cold]
    fn initialise(&self) -> Option<&MemoryPool> {
        if !fork::claim_initialisation(&self.state, UNINITIALISED, INITIALISING) {
            return self.ready_pool();
        }
        match MemoryPool::with_config(PoolConfig::new(self.initial_size)) {
            Ok(pool) => {
                fork::serves_global_allocator(&pool.inner);
                // SAFETY: winning the claim above makes this thread the
                // only writer, and nobody reads before READY.
                let pool = unsafe { (*self.pool.get()).write(pool) };
                self.inline_key.store(pool.inline_key.to_bits(), Ordering::Relaxed);
                fork::finish_initialisation(&self.state, READY);
                self.ready_pool()
            }
            Err(_) => {
                fork::finish_initialisation(&self.state, FAILED);
                None
            }
        }
    }

    /// A block of the pool for `layout`, or `None` for the caller's
    /// fallback allocator to serve it: for a zero size, inside a pool
    /// operation, while the pool is being created, or when the pool refuses.
    /// The block is aligned to `layout.align()` and holds at least
    /// `layout.size()` bytes. Creates the pool on first use.
    ///
    /// The common case, a layout a size class serves on a thread whose
    /// cache has a block ready, is inline, with one thread-local access;
    /// the rest is out of line.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    ///
    /// let global = lle_mempool::GlobalPool::new();
    /// let block = global.allocate(Layout::from_size_align(48, 16).unwrap()).unwrap();
    /// assert_eq!(block.as_ptr() as usize % 16, 0);
    /// assert!(global.owns(block.as_ptr()));
    /// assert_eq!(global.allocate(Layout::new::<()>()), None, "zero-sized: the fallback's");
    /// assert!(unsafe { global.free(block) });
    /// ```
    #[inline]
    pub fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        if let Some(block) = class_for_layout(layout).and_then(|class| self.allocate_inline(class)) {
            return Some(block);
        }
        self.allocate_from_pool(layout)
    }

    /// A block of at least `size` bytes aligned to 16, as C's `malloc`
    /// returns on 64-bit targets: what [`allocate`](Self::allocate) returns
    /// for that layout (`None` where it does, and for a size no layout
    /// has), with the size class found by one table lookup and no layout
    /// built on the inline path.
    ///
    /// # Examples
    ///
    /// ```
    /// let global = lle_mempool::GlobalPool::new();
    /// let block = global.allocate_aligned_16(65).unwrap();
    /// assert_eq!(block.as_ptr() as usize % 16, 0);
    /// assert!(global.usable_size(block.as_ptr()).unwrap() >= 65);
    /// assert_eq!(global.allocate_aligned_16(0), None, "zero-sized: the fallback's");
    /// assert_eq!(global.allocate_aligned_16(usize::MAX), None);
    /// assert!(unsafe { global.free(block) });
    /// ```
    #[inline]
    pub fn allocate_aligned_16(&self, size: usize) -> Option<NonNull<u8>> {
        // `size - 1` wraps for 0, which the pool's path refuses.
        if size.wrapping_sub(1) < MAX_FAST_SIZE {
            if let Some(block) = self.allocate_inline(class_of_aligned_16(size)) {
                return Some(block);
            }
        }
        self.allocate_from_pool(Layout::from_size_align(size, 16).ok()?)
    }

    /// The inline path of the allocations: a block of `class` from this
    /// thread's cache, if it has one ready.
    #[inline(always)]
    fn allocate_inline(&self, class: usize) -> Option<NonNull<u8>> {
        // The inline path takes no lock and calls nothing that could
        // allocate, so it needs no mark of its own: only the check that no
        // pool operation of this thread is underway, whose heap it might be
        // changing. The key is read first: an atomic load between the two
        // thread-local reads would make the compiler work out the
        // thread-local's address twice.
        let key = self.inline_key();
        if InsidePool::is_set() {
            return None;
        }
        thread_cache::try_allocate_cached(key, class)
    }

    /// The key of the pool's heaps, or of no heap before the pool is ready.
    #[inline(always)]
    fn inline_key(&self) -> thread_cache::InlineKey {
        thread_cache::InlineKey::from_bits(self.inline_key.load(Ordering::Relaxed))
    }

    /// [`allocate`](Self::allocate) past its inline path: marked inside the
    /// pool, which it creates if need be.
    #[inline(never)]
    fn allocate_from_pool(&self, layout: Layout) -> Option<NonNull<u8>> {
        if layout.size() == 0 {
            return None;
        }
        let _inside = InsidePool::enter()?;
        abort_on_unwind(|| self.pool_or_initialise().and_then(|pool| pool.allocate_for_layout(layout).ok()))
    }

    /// Gives `block` back to the pool and returns `true` if the pool
    /// handed it out; returns `false`, touching nothing, for any other
    /// pointer (the fallback allocator's, say), which the caller then frees
    /// where it came from.
    ///
    /// The common case, a block of a slab this thread owns, is inline;
    /// others take the pool's map.
    ///
    /// # Safety
    ///
    /// If `block` is the pool's, it is a live block that
    /// [`allocate`](Self::allocate) (or this type's [`GlobalAlloc`]
    /// methods) returned, and the caller gives it up.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    ///
    /// let global = lle_mempool::GlobalPool::new();
    /// let block = global.allocate(Layout::from_size_align(4096, 64).unwrap()).unwrap();
    /// let mut elsewhere = Box::new(7u64);
    /// unsafe {
    ///     assert!(!global.free(std::ptr::NonNull::from(&mut *elsewhere).cast()), "not the pool's");
    ///     assert!(global.free(block));
    /// }
    /// ```
    #[inline]
    pub unsafe fn free(&self, block: NonNull<u8>) -> bool {
        // SAFETY: as the caller guarantees.
        unsafe { self.free_inline(block) || self.free_classified(block) }
    }

    /// [`free`](Self::free) for a caller that frees the pointers the pool
    /// did not hand out elsewhere (its fallback allocator): they go to
    /// `free_elsewhere`. The common case stays inline and keeps nothing
    /// for later: the rest, the pool's map and the fallback, is one call
    /// out of line.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free); `free_elsewhere` may free any pointer it is
    /// given.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout, System};
    ///
    /// let global = lle_mempool::GlobalPool::new();
    /// let layout = Layout::new::<u64>();
    /// let theirs = std::ptr::NonNull::new(unsafe { System.alloc(layout) }).unwrap();
    /// let ours = global.allocate(layout).unwrap();
    /// let mut elsewhere = Vec::new();
    /// unsafe {
    ///     global.free_or_else(ours, |block| elsewhere.push(block));
    ///     global.free_or_else(theirs, |block| elsewhere.push(block));
    /// }
    /// assert_eq!(elsewhere, [theirs]);
    /// unsafe { System.dealloc(theirs.as_ptr(), layout) };
    /// ```
    #[inline]
    pub unsafe fn free_or_else(&self, block: NonNull<u8>, free_elsewhere: impl FnOnce(NonNull<u8>)) {
        // SAFETY: as the caller guarantees.
        if !unsafe { self.free_inline(block) } {
            // SAFETY: as the caller guarantees.
            unsafe { self.free_classified_or_else(block, free_elsewhere) }
        }
    }

    /// [`free_or_else`](Self::free_or_else) past its inline path.
    ///
    /// # Safety
    /// As [`free_or_else`](Self::free_or_else).
    #[inline(never)]
    unsafe fn free_classified_or_else(&self, block: NonNull<u8>, free_elsewhere: impl FnOnce(NonNull<u8>)) {
        // SAFETY: as the caller guarantees.
        if !unsafe { self.free_classified(block) } {
            free_elsewhere(block);
        }
    }

    /// The inline path of the frees: `true` if `block` was a block of a
    /// slab this thread owns, and is free now.
    ///
    /// # Safety
    /// As [`free`](Self::free).
    #[inline(always)]
    unsafe fn free_inline(&self, block: NonNull<u8>) -> bool {
        // As in `allocate_inline`: the inline path allocates nothing. (Its
        // rare tail, a slab that empties going back to the shared pool,
        // takes the pool's lock unmarked; a nested call there is refused as
        // re-entry and served by the fallback.)
        // The key first, as there.
        let key = self.inline_key();
        // SAFETY: as the caller guarantees.
        !InsidePool::is_set() && unsafe { thread_cache::try_free_cached(key, block.as_ptr()) }.finish()
    }

    /// [`free`](Self::free) past its inline path.
    ///
    /// # Safety
    /// As [`free`](Self::free).
    #[inline(never)]
    unsafe fn free_classified(&self, block: NonNull<u8>) -> bool {
        match self.pool_owning(block.as_ptr()) {
            Some((pool, owner)) => {
                // SAFETY: the caller gives up a live block of the pool,
                // which `owner` classifies.
                unsafe { self.free_to_pool(pool, owner, block) };
                true
            }
            None => false,
        }
    }

    /// Whether `ptr` lies in the pool's memory, so that the pool handed it
    /// out if it is a live block at all. Lock-free, allocation-free, and it
    /// never reads memory at `ptr`; `false` before the pool exists.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    ///
    /// let global = lle_mempool::GlobalPool::new();
    /// assert!(!global.owns(&0u8));
    /// let block = global.allocate(Layout::new::<[u64; 3]>()).unwrap();
    /// assert!(global.owns(block.as_ptr()));
    /// unsafe { global.free(block) };
    /// ```
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.pool_owning(ptr.cast_mut()).is_some()
    }

    /// The bytes usable at `block` if it is a live block of the pool (its
    /// size class's size, or a shared block's granule-rounded size);
    /// `None` for pointers the pool does not own, or that start no block.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    ///
    /// let global = lle_mempool::GlobalPool::new();
    /// let block = global.allocate(Layout::from_size_align(100, 4).unwrap()).unwrap();
    /// assert_eq!(global.usable_size(block.as_ptr()), Some(104), "its size class");
    /// assert_eq!(global.usable_size(&0u8), None);
    /// unsafe { global.free(block) };
    /// ```
    pub fn usable_size(&self, block: *const u8) -> Option<usize> {
        let (pool, _) = self.pool_owning(block.cast_mut())?;
        pool.usable_size(NonNull::new(block.cast_mut())?).ok()
    }

    /// Resizes `block`, a block of the pool, to `new_layout` without moving
    /// it, if the pool can: a cache block while the new size still fits its
    /// class without wasting half of it, a shared block when the memory
    /// after it allows. `false` if it can't, inside a pool operation, and
    /// for pointers the pool does not own; the block is then unchanged.
    ///
    /// # Safety
    ///
    /// If `block` is the pool's, it is a live block that
    /// [`allocate`](Self::allocate) returned, and the caller keeps only
    /// `new_layout.size()` bytes of it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    ///
    /// let global = lle_mempool::GlobalPool::new();
    /// let layout = |size| Layout::from_size_align(size, 16).unwrap();
    /// let block = global.allocate(layout(4096)).unwrap();
    /// unsafe {
    ///     assert!(global.resize_in_place(block, layout(2048)), "a shared block shrinks in place");
    ///     assert!(!global.resize_in_place(std::ptr::NonNull::from(&mut 0u8), layout(1)));
    ///     assert!(global.free(block));
    /// }
    /// ```
    pub unsafe fn resize_in_place(&self, block: NonNull<u8>, new_layout: Layout) -> bool {
        self.pool_owning(block.as_ptr()).is_some_and(|(pool, _)| Self::resize_in_pool(pool, block, new_layout))
    }

    /// The pool and what `block` is to it (a slab's block or a shared
    /// block), if the pool served it; `None` for [`System`]'s blocks.
    #[inline]
    fn pool_owning(&self, block: *mut u8) -> Option<(&MemoryPool, Owner<'_>)> {
        let pool = self.ready_pool()?;
        match pool.inner.classify(block as usize) {
            Owner::Foreign => None,
            owner => Some((pool, owner)),
        }
    }

    /// Gives a block back to the pool that served it, where `owner` says.
    ///
    /// # Safety
    /// `block` is a live block of `pool`, which `owner` classifies, and the
    /// caller gives it up.
    unsafe fn free_to_pool(&self, pool: &MemoryPool, owner: Owner<'_>, block: NonNull<u8>) {
        debug_assert!(!matches!(owner, Owner::Foreign));
        abort_on_unwind(|| match (InsidePool::enter(), owner) {
            (Some(_inside), owner) => {
                if matches!(owner, Owner::Shared) {
                    self.free_waiting(pool);
                }
                // SAFETY: as the caller guarantees.
                let freed = unsafe { pool.inner.free_classified(block, owner) };
                debug_assert!(freed.is_ok(), "freeing a block the pool did not hand out: {freed:?}");
            }
            // Nested in a pool operation, which may be using this thread's
            // heap.
            // SAFETY: as the caller guarantees: a live block of the slab.
            (None, Owner::Slab(slab)) => unsafe { thread_cache::free_without_heap(&pool.inner, slab, block) },
            // Nested in a pool operation, which may hold the shared lock.
            // SAFETY: as the caller guarantees: a live shared block.
            (None, _) => unsafe { self.wait_to_free(block) },
        })
    }

    /// Puts a shared block on the list of those waiting to be freed.
    ///
    /// # Safety
    /// `block` is a live shared block of the pool, which the caller gives
    /// up.
    unsafe fn wait_to_free(&self, block: NonNull<u8>) {
        let link = block.as_ptr().cast::<*mut u8>();
        let mut head = self.waiting_frees.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is the caller's to give up, and a shared
            // block is at least a 16-byte granule, aligned to one: its first
            // word is free to hold the link.
            unsafe { link.write(head) };
            // Release publishes the link to the thread that takes the list.
            match self.waiting_frees.compare_exchange_weak(head, block.as_ptr(), Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Frees the shared blocks waiting on the list. Called inside the pool
    /// by a thread that holds none of its locks.
    fn free_waiting(&self, pool: &MemoryPool) {
        if self.waiting_frees.load(Ordering::Relaxed).is_null() {
            return;
        }
        let mut next = self.waiting_frees.swap(ptr::null_mut(), Ordering::Acquire);
        while let Some(block) = NonNull::new(next) {
            // SAFETY: the swap took the whole list, so this thread alone
            // holds its blocks; each link was written before the Release
            // that pushed its block, which the Acquire above saw.
            next = unsafe { block.as_ptr().cast::<*mut u8>().read() };
            // SAFETY: a live shared block, given up when it was queued.
            let freed = unsafe { pool.inner.free_classified(block, Owner::Shared) };
            debug_assert!(freed.is_ok(), "a waiting free was not a live shared block: {freed:?}");
        }
    }

    /// Resizes a block of the pool to `new_layout` without moving it, if
    /// the pool can; `false` inside a pool operation, which may hold the
    /// shared lock that resizing a shared block takes.
    fn resize_in_pool(pool: &MemoryPool, block: NonNull<u8>, new_layout: Layout) -> bool {
        let Some(_inside) = InsidePool::enter() else { return false };
        abort_on_unwind(|| pool.resize_layout_in_place(block, new_layout).is_some())
    }
}

impl Default for GlobalPool {
    /// As [`GlobalPool::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// let global = lle_mempool::GlobalPool::default();
    /// assert_eq!(global.with_pool(|pool| pool.size()), Some(1 << 20));
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for GlobalPool {
    /// Drops the pool, if it was created. Never happens to a `static`;
    /// a `GlobalPool` used otherwise must outlive its blocks, as a
    /// [`MemoryPool`] must.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout};
    ///
    /// let local = lle_mempool::GlobalPool::new();
    /// let layout = Layout::new::<[u64; 4]>();
    /// unsafe {
    ///     let block = local.alloc(layout);
    ///     local.dealloc(block, layout);
    /// }
    /// drop(local); // unmaps the pool's memory
    /// ```
    fn drop(&mut self) {
        if *self.state.get_mut() == READY {
            // SAFETY: READY means the pool was written, and `&mut self`
            // means nobody is using it.
            unsafe { self.pool.get_mut().assume_init_drop() };
        }
    }
}

impl fmt::Debug for GlobalPool {
    /// The initial size and whether the pool exists yet.
    ///
    /// # Examples
    ///
    /// ```
    /// let global = lle_mempool::GlobalPool::new();
    /// assert!(format!("{global:?}").contains("uninitialised"));
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state.load(Ordering::Acquire) {
            UNINITIALISED => "uninitialised",
            INITIALISING => "initialising",
            READY => "ready",
            _ => "failed",
        };
        f.debug_struct("GlobalPool").field("initial_size", &self.initial_size).field("state", &state).finish()
    }
}

/// The global allocator's entry points; usable directly too, as below.
///
/// # Examples
///
/// ```
/// use std::alloc::{GlobalAlloc, Layout};
///
/// let global = lle_mempool::GlobalPool::new();
/// let small = Layout::from_size_align(24, 8).unwrap();
/// unsafe {
///     let block = global.alloc(small);
///     assert!(global.with_pool(|pool| pool.contains(block)).unwrap());
///     // Still fits its 32-byte size class: stays where it is.
///     assert_eq!(global.realloc(block, small, 32), block);
///     // 4 KiB is beyond the caches: moved to the shared pool.
///     let moved = global.realloc(block, Layout::from_size_align(32, 8).unwrap(), 4096);
///     assert!(global.with_pool(|pool| pool.contains(moved)).unwrap());
///     // Shrinking a shared block frees its tail where it is.
///     let shrunk = global.realloc(moved, Layout::from_size_align(4096, 8).unwrap(), 2048);
///     assert_eq!(shrunk, moved);
///     global.dealloc(shrunk, Layout::from_size_align(2048, 8).unwrap());
/// }
/// ```
// SAFETY: blocks come from the pool (aligned to and at least as large as the
// layout: `allocate_for_layout` picks a size class only when its blocks are, and
// asks the shared pool for the layout's alignment otherwise) or from
// `System`; `dealloc` and `realloc` send each block back to the one that
// served it, told apart by the pool's map, which marks exactly the pool's
// memory. Nothing unwinds out: pool code runs under `abort_on_unwind`.
unsafe impl GlobalAlloc for GlobalPool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // The inline path's invariant checks (debug builds) must not unwind
        // out of the allocator either.
        match abort_on_unwind(|| self.allocate(layout)) {
            Some(block) => block.as_ptr(),
            // SAFETY: the caller's layout contract is System's.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // As in `alloc`.
        match abort_on_unwind(|| self.allocate(layout)) {
            Some(block) => {
                // SAFETY: the block holds at least `layout.size()` bytes;
                // the pool reuses memory, so it must be cleared.
                unsafe { block.as_ptr().write_bytes(0, layout.size()) };
                block.as_ptr()
            }
            // SAFETY: as in `alloc`; calloc gets fresh pages pre-zeroed.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: a block handed out by `alloc` or `realloc` is never null.
        let block = unsafe { NonNull::new_unchecked(block) };
        // As in `alloc`.
        // SAFETY: the caller gives up a live block, which `free` takes if
        // the pool handed it out.
        if !abort_on_unwind(|| unsafe { self.free(block) }) {
            // SAFETY: not the pool's, so System's, for this layout.
            unsafe { System.dealloc(block.as_ptr(), layout) };
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match self.pool_owning(block) {
            Some((pool, _)) => {
                // SAFETY: non-null, as a block the pool handed out.
                if Self::resize_in_pool(pool, unsafe { NonNull::new_unchecked(block) }, new_layout) {
                    return block;
                }
            }
            None => {
                if self.ready_pool().is_none() || InsidePool::is_set() {
                    // System's block stays System's while the pool can't
                    // take it: let it grow in place.
                    // SAFETY: the caller's contract is System's.
                    return unsafe { System.realloc(block, layout, new_size) };
                }
            }
        }
        // Out of the system into the pool, or where it can't stay.
        // SAFETY: a valid layout of non-zero size, as the caller guarantees.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks hold the smaller size and don't overlap;
            // the old one is the caller's to give up.
            unsafe {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Every size up to the caches' largest, aligned to 16, on a thread's
    /// first allocation of each class (the full path) and on later ones
    /// (the inline path), through `allocate` and `allocate_aligned_16`:
    /// each block is aligned, holds its bytes, and keeps them.
    #[test]
    fn blocks_aligned_to_16_are_on_every_path_and_hold_their_bytes() {
        let global = GlobalPool::new();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut blocks = Vec::new();
                for size in 1..=MAX_FAST_SIZE {
                    for block in [
                        global.allocate(Layout::from_size_align(size, 16).unwrap()).unwrap(),
                        global.allocate_aligned_16(size).unwrap(),
                    ] {
                        assert_eq!(block.as_ptr() as usize % 16, 0, "{size} bytes");
                        assert!(global.usable_size(block.as_ptr()).unwrap() >= size);
                        // SAFETY: a live block of at least `size` bytes.
                        unsafe { block.as_ptr().write_bytes(size as u8, size) };
                        blocks.push((block, size));
                    }
                }
                for (block, size) in blocks {
                    // SAFETY: as above, written above.
                    let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size) };
                    assert!(bytes.iter().all(|&byte| byte == size as u8), "{size} bytes");
                    // SAFETY: live, given up.
                    assert!(unsafe { global.free(block) });
                }
            });
        });
    }

    /// A child forked while another thread is creating a `GlobalPool`
    /// (here: this test's thread holds the claim across the fork) finds it
    /// uninitialised, not forever initialising, and creates its own.
    #[test]
    fn a_global_pool_claimed_by_a_thread_gone_in_the_child_is_created_there() {
        // Registers the fork handlers, as the process's first pool does.
        let _first = MemoryPool::new(0).unwrap();
        let global = GlobalPool::new();
        assert!(fork::claim_initialisation(&global.state, UNINITIALISED, INITIALISING));
        // SAFETY: the child only asks for the pool and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let created = global.with_pool(|pool| {
                let block = pool.allocate_fast(64).ok()?;
                // SAFETY: a live block, freed once.
                unsafe { pool.free_fast(block) }.ok()?;
                pool.check().ok()
            });
            // SAFETY: ends the child without running the parent's cleanup.
            unsafe { libc::_exit(if created == Some(Some(())) { 0 } else { 1 }) };
        }
        fork::finish_initialisation(&global.state, UNINITIALISED);
        let started = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: our child; a valid out-pointer.
            let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if waited == pid {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                // SAFETY: our child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!("the child hung waiting for a GlobalPool that nobody there creates");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child could not use the pool: {status:#x}"
        );
    }

    /// Slabs emptied by `free`'s inline path go back to the shared pool,
    /// as those emptied by `MemoryPool::free_fast` do.
    #[test]
    fn slabs_emptied_by_inline_frees_go_back() {
        const BLOCKS: usize = 8000;
        let global = GlobalPool::new();
        let layout = Layout::from_size_align(64, 16).unwrap();
        let blocks: Vec<NonNull<u8>> = (0..BLOCKS)
            .map(|index| {
                let block = global.allocate(layout).expect("a block");
                // SAFETY: a live 64-byte block of ours.
                unsafe { block.as_ptr().write_bytes(index as u8, 64) };
                block
            })
            .collect();
        let slabs = || global.with_pool(|pool| pool.stats().fast.slabs).unwrap();
        let full = slabs();
        assert!(full >= 7, "about a thousand 64-byte blocks fill a slab: {full} slabs");
        for (index, &block) in blocks.iter().enumerate() {
            // SAFETY: live blocks of ours, each freed once.
            unsafe {
                assert!(std::slice::from_raw_parts(block.as_ptr(), 64).iter().all(|&byte| byte == index as u8));
                assert!(global.free(block));
            }
        }
        // What stays: the class's current slab and one spare.
        assert!(slabs() <= 2, "{} of {full} slabs stayed", slabs());
    }
}
