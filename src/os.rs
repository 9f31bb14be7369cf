//! The operating system's memory calls, and nothing else.
//!
//! The pool asks the OS for anonymous private memory that it owns as a
//! [`Mapping`]: mapped zeroed, grown or cut back where it stands (never
//! moved: a live allocation never moves), its pages' contents dropped while
//! it stays mapped, and unmapped when the value is dropped. Outside the
//! models a `Mapping` is a `memmap2::MmapRaw`; what memmap2 does not offer
//! (the page size, `membarrier`, `pthread_atfork`, a plain `write` before an
//! abort) is called through libc here, and nowhere else. `docs/DESIGN.md`
//! says why each call goes where it does. Keeping it all behind this module lets the loom
//! and shuttle models swap in heap memory, which they can reason about, for
//! syscalls, which they can't.

/// Bytes per page; every mapping length is a multiple of it.
pub(crate) fn page_size() -> usize {
    imp::page_size()
}

/// Why the OS refused memory: the `errno` it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OsError(pub(crate) i32);

/// Only the fork handlers use this; the models have no processes.
#[cfg(not(lle_mempool_model))]
pub(crate) use imp::register_fork_handlers;
pub(crate) use imp::Mapping;
/// Only the biased lock uses these, and only outside the models and TSan.
#[cfg(not(any(lle_mempool_model, lle_mempool_tsan)))]
pub(crate) use imp::{heavy_barrier, heavy_barrier_available};

#[cfg(not(lle_mempool_model))]
mod imp {
    use super::OsError;
    use memmap2::{MmapOptions, MmapRaw, RemapOptions, UncheckedAdvice};
    use std::ptr::NonNull;

    /// memmap2 keeps its page size to itself, so it is asked of libc.
    pub(crate) fn page_size() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
        let cached = PAGE_SIZE.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: sysconf has no preconditions.
        let reported = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let size = if reported > 0 { reported as usize } else { 4096 };
        PAGE_SIZE.store(size, Ordering::Relaxed);
        size
    }

    /// `membarrier(2)`, for the biased lock, which ThreadSanitizer builds
    /// leave out.
    #[cfg(not(lle_mempool_tsan))]
    mod membarrier {
        use std::sync::OnceLock;

        const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
        const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

        /// Whether [`heavy_barrier`] works here: private expedited barriers
        /// (Linux 4.14), registered on first use.
        pub(crate) fn heavy_barrier_available() -> bool {
            static REGISTERED: OnceLock<bool> = OnceLock::new();
            *REGISTERED.get_or_init(|| {
                // SAFETY: registering for private expedited barriers has no
                // preconditions; a kernel without it returns an error.
                let result =
                    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) };
                result == 0
            })
        }

        /// Makes every running thread of the process execute a full memory
        /// barrier before this returns; the calling thread too. Only called
        /// after [`heavy_barrier_available`] said yes.
        ///
        /// Aborts the process if the kernel refuses (a seccomp filter
        /// installed after registration can make it): the biased lock's
        /// owner enters with no fence of its own, so without this barrier
        /// two threads could be inside the pool at once, and no fence or
        /// wait on this side can stand in for the owner's.
        pub(crate) fn heavy_barrier() {
            // SAFETY: a membarrier command with no pointer arguments.
            let result = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
            if result != 0 {
                const MESSAGE: &[u8] =
                    b"lle-mempool: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed; aborting rather than letting two threads into a pool\n";
                // SAFETY: a valid buffer of that length; a plain write, since
                // the allocator may be the pool being revoked.
                let _ = unsafe { libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len()) };
                std::process::abort();
            }
        }
    }

    #[cfg(not(lle_mempool_tsan))]
    pub(crate) use membarrier::{heavy_barrier, heavy_barrier_available};

    /// Has `prepare` run before every `fork()` of the process, and `parent`
    /// and `child` after it, in the forking thread and in the child's only
    /// thread. `false` if the C library refused (out of memory).
    pub(crate) fn register_fork_handlers(
        prepare: unsafe extern "C" fn(),
        parent: unsafe extern "C" fn(),
        child: unsafe extern "C" fn(),
    ) -> bool {
        // SAFETY: the handlers are functions that live as long as the
        // process, as `pthread_atfork` requires.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) == 0 }
    }

    /// Anonymous, private, read-write memory that this value owns: dropping
    /// it unmaps the memory (memmap2's `MmapRaw` does, with the length it
    /// was last mapped or remapped to), so it cannot be unmapped twice, nor
    /// forgotten.
    pub(crate) struct Mapping(MmapRaw);

    impl From<std::io::Error> for OsError {
        fn from(error: std::io::Error) -> OsError {
            OsError(error.raw_os_error().unwrap_or(libc::ENOMEM))
        }
    }

    impl Mapping {
        /// Maps `len` bytes of private, zeroed, read-write memory.
        pub(crate) fn new(len: usize) -> Result<Mapping, OsError> {
            debug_assert!(len > 0 && len % page_size() == 0);
            let mapping = Mapping(MmapOptions::new().len(len).map_anon()?.into());
            // The kernel never places a mapping it chooses at address 0;
            // checked once here so that `base` can rely on it.
            if mapping.0.as_ptr().is_null() {
                return Err(OsError(libc::ENOMEM));
            }
            Ok(mapping)
        }

        /// Where the memory starts. It never changes: nothing here moves it.
        pub(crate) fn base(&self) -> NonNull<u8> {
            // SAFETY: `new` refused a null base, and remapping without
            // `may_move` keeps the base where it is.
            unsafe { NonNull::new_unchecked(self.0.as_mut_ptr()) }
        }

        /// The bytes this value owns, and unmaps when dropped.
        pub(crate) fn len(&self) -> usize {
            self.0.len()
        }

        /// Grows the mapping to `new_len` bytes without moving it. `false`
        /// when the kernel can't (the pages after the mapping are taken), in
        /// which case nothing changed.
        pub(crate) fn grow_in_place(&mut self, new_len: usize) -> bool {
            debug_assert!(new_len % page_size() == 0);
            if new_len <= self.len() {
                // A tail that `cut_back` could not cut is still ours, and
                // purged: it serves as fresh memory.
                return true;
            }
            // SAFETY: growing changes no byte the program can already reach,
            // and an anonymous mapping has no file whose end the new pages
            // could pass. Without `may_move` the kernel extends the mapping
            // where it stands or fails, so no pointer into it can dangle.
            unsafe { self.0.remap(new_len, RemapOptions::new().may_move(false)) }.is_ok()
        }

        /// Cuts the mapping back to `new_len` bytes (not zero), where it
        /// stands. If the kernel refuses (cutting would split its record of
        /// the mapping past `vm.max_map_count`, or it has no memory for the
        /// split), the bytes past `new_len` stay mapped and owned, unmapped
        /// with the rest on drop, and their pages are purged.
        ///
        /// # Safety
        /// Nothing may use the bytes past `new_len` any more.
        pub(crate) unsafe fn cut_back(&mut self, new_len: usize) {
            let len = self.len();
            debug_assert!(new_len > 0 && new_len <= len && new_len % page_size() == 0);
            if new_len == len {
                return;
            }
            // SAFETY: the caller guarantees nobody uses the bytes cut off;
            // without `may_move` the kernel shrinks the mapping where it
            // stands, so the bytes kept stay where they are.
            let cut = unsafe { self.0.remap(new_len, RemapOptions::new().may_move(false)) };
            if cut.is_err() {
                // SAFETY: the bytes past `new_len` are still mapped, and
                // the caller guarantees nobody needs them.
                unsafe { self.purge(new_len, len - new_len) };
            }
        }

        /// Drops the contents of bytes `offset..offset + len` (page-aligned),
        /// keeping them mapped: the pages stop counting as resident and read
        /// back as zeros.
        ///
        /// # Safety
        /// The range must lie inside the mapping and hold no data anybody
        /// still needs.
        pub(crate) unsafe fn purge(&self, offset: usize, len: usize) {
            debug_assert!(offset % page_size() == 0 && len % page_size() == 0 && offset + len <= self.len());
            // SAFETY: the caller guarantees the range holds nothing live, and
            // MADV_DONTNEED on private anonymous memory only zero-fills it.
            let _ = unsafe { self.0.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
        }
    }
}

/// Heap memory standing in for mappings under the models. Each "mapping"
/// reserves twice its length so that in-place growth succeeds once and then
/// fails, exercising both of the pool's growth paths.
#[cfg(lle_mempool_model)]
mod imp {
    use super::OsError;
    use std::alloc::Layout;
    use std::ptr::NonNull;

    const MODEL_PAGE_SIZE: usize = 4096;

    pub(crate) fn page_size() -> usize {
        MODEL_PAGE_SIZE
    }

    /// A heap reservation, of which the first `len` bytes are "mapped".
    pub(crate) struct Mapping {
        base: NonNull<u8>,
        len: usize,
        reservation: Layout,
        /// Carved from this thread's arena (loom) rather than the heap.
        in_arena: bool,
    }

    // SAFETY: as for the real mapping, which memmap2 makes Send and Sync:
    // the value owns its memory and hands out raw pointers only.
    unsafe impl Send for Mapping {}
    // SAFETY: as above; `&self` methods write through no pointer but
    // `purge`'s, whose caller guarantees the range is nobody's.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        pub(crate) fn new(len: usize) -> Result<Mapping, OsError> {
            let refused = OsError(libc::ENOMEM);
            let reservation =
                Layout::from_size_align(len.checked_mul(2).ok_or(refused)?, MODEL_PAGE_SIZE).map_err(|_| refused)?;
            if let Some(base) = arena::take(reservation.size()) {
                return Ok(Mapping { base, len, reservation, in_arena: true });
            }
            // SAFETY: the layout has a non-zero size.
            let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(reservation) }).ok_or(refused)?;
            Ok(Mapping { base, len, reservation, in_arena: false })
        }

        pub(crate) fn base(&self) -> NonNull<u8> {
            self.base
        }

        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// As the real one: succeeds while the reservation has room. The
        /// bytes it adds are zero, as `new` and `cut_back` leave them.
        pub(crate) fn grow_in_place(&mut self, new_len: usize) -> bool {
            if new_len > self.reservation.size() {
                return false;
            }
            self.len = self.len.max(new_len);
            true
        }

        /// # Safety
        /// As for the real `cut_back`.
        pub(crate) unsafe fn cut_back(&mut self, new_len: usize) {
            debug_assert!(new_len > 0 && new_len <= self.len);
            // Zeroed, as the kernel's fresh pages are when the mapping grows
            // over them again.
            // SAFETY: the bytes lie inside the reservation, and the caller
            // guarantees nobody uses them.
            unsafe { self.purge(new_len, self.len - new_len) };
            self.len = new_len;
        }

        /// # Safety
        /// As for the real `purge`.
        pub(crate) unsafe fn purge(&self, offset: usize, len: usize) {
            debug_assert!(offset + len <= self.len);
            // SAFETY: the caller guarantees the range is ours and holds
            // nothing live.
            unsafe { std::ptr::write_bytes(self.base.as_ptr().add(offset), 0, len) };
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            if self.in_arena {
                arena::give_back();
            } else {
                // SAFETY: allocated in `new` with this very layout.
                unsafe { std::alloc::dealloc(self.base.as_ptr(), self.reservation) };
            }
        }
    }

    /// Under loom, reservations are carved in address order from an arena
    /// that starts over whenever none of its reservations is live, so every
    /// execution of a model gets the same addresses. loom replays its
    /// scheduling and load choices by position, so every execution must make
    /// the same calls; with heap addresses, regions could sort differently
    /// from one execution to the next (first fit walks them in address
    /// order), and loom would replay choices onto the wrong operations.
    ///
    /// The arena belongs to the OS thread: a loom model runs all its threads
    /// on the test's own thread, and tests running side by side keep out of
    /// each other's way.
    #[cfg(lle_mempool_loom)]
    mod arena {
        use std::alloc::Layout;
        use std::cell::Cell;
        use std::ptr::NonNull;

        /// Far more than a model maps at once; a larger request, or an
        /// arena that cannot be had, falls back to the heap.
        const ARENA_SIZE: usize = 16 << 20;

        std::thread_local! {
            /// The arena's base (0 until first use), the bytes handed out
            /// since it last started over, and its live reservations.
            static ARENA: (Cell<usize>, Cell<usize>, Cell<usize>) = const { (Cell::new(0), Cell::new(0), Cell::new(0)) };
        }

        /// `size` zeroed bytes, aligned like the heap stand-in's layout.
        pub(super) fn take(size: usize) -> Option<NonNull<u8>> {
            ARENA.with(|(base, used, live)| {
                if base.get() == 0 {
                    let layout = Layout::from_size_align(ARENA_SIZE, super::MODEL_PAGE_SIZE).ok()?;
                    // SAFETY: the layout has a non-zero size. The arena is
                    // never freed: it serves every model this thread runs.
                    base.set(unsafe { std::alloc::alloc(layout) } as usize);
                }
                let offset = used.get();
                if base.get() == 0 || size > ARENA_SIZE - offset {
                    return None;
                }
                used.set(offset + size);
                live.set(live.get() + 1);
                let start = (base.get() + offset) as *mut u8;
                // SAFETY: `offset..offset + size` lies inside the arena and
                // no live reservation overlaps it: mappings start zeroed.
                unsafe { std::ptr::write_bytes(start, 0, size) };
                NonNull::new(start)
            })
        }

        /// A reservation from the arena was unmapped.
        pub(super) fn give_back() {
            ARENA.with(|(_, used, live)| {
                live.set(live.get() - 1);
                if live.get() == 0 {
                    used.set(0);
                }
            });
        }
    }

    /// Without loom every reservation comes from the heap.
    #[cfg(not(lle_mempool_loom))]
    mod arena {
        use std::ptr::NonNull;

        pub(super) fn take(_size: usize) -> Option<NonNull<u8>> {
            None
        }

        pub(super) fn give_back() {
            unreachable!("no reservation comes from an arena without loom");
        }
    }
}
