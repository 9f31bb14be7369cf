//! The operating system's memory calls, and nothing else.
//!
//! The pool asks the OS for four things: map fresh zeroed memory, grow a
//! mapping in place (never moving it: a live allocation never moves), give a
//! range back, and drop a range's contents while keeping it mapped. Keeping
//! them behind this module lets the loom and shuttle models swap in heap
//! memory, which they can reason about, for syscalls, which they can't.

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
pub(crate) use imp::{grow_in_place, map, purge, unmap};
/// Only the biased lock uses these, and only outside the models and TSan.
#[cfg(not(any(lle_mempool_model, lle_mempool_tsan)))]
pub(crate) use imp::{heavy_barrier, heavy_barrier_available};

#[cfg(not(lle_mempool_model))]
mod imp {
    use super::OsError;
    use std::ptr::NonNull;

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

    fn last_errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM)
    }

    /// Maps `len` bytes of private, zeroed, read-write memory.
    pub(crate) fn map(len: usize) -> Result<NonNull<u8>, OsError> {
        debug_assert!(len > 0 && len % page_size() == 0);
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing aliases nothing the program already owns.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(OsError(last_errno()));
        }
        NonNull::new(address.cast::<u8>()).ok_or(OsError(libc::ENOMEM))
    }

    /// Grows the mapping at `base` from `old_len` to `new_len` bytes without
    /// moving it. Returns `false` when the kernel can't (the pages after the
    /// mapping are taken), in which case nothing changed.
    ///
    /// # Safety
    /// `base..base + old_len` must be a mapping made by [`map`] and not yet
    /// unmapped.
    pub(crate) unsafe fn grow_in_place(base: NonNull<u8>, old_len: usize, new_len: usize) -> bool {
        debug_assert!(new_len > old_len && new_len % page_size() == 0);
        // SAFETY: the caller guarantees the mapping; without MREMAP_MAYMOVE
        // the kernel either extends it where it stands or fails, so no
        // pointer into it can dangle.
        let result = unsafe { libc::mremap(base.as_ptr().cast(), old_len, new_len, 0) };
        result != libc::MAP_FAILED
    }

    /// Gives `addr..addr + len` back to the OS.
    ///
    /// # Safety
    /// The range must be page-aligned, lie inside mappings made by [`map`],
    /// and nothing may access it afterwards.
    pub(crate) unsafe fn unmap(addr: NonNull<u8>, len: usize) {
        // SAFETY: the caller guarantees nobody uses the range any more.
        let result = unsafe { libc::munmap(addr.as_ptr().cast(), len) };
        debug_assert_eq!(result, 0, "munmap of a range the pool mapped failed");
    }

    /// Drops the contents of `addr..addr + len`, keeping it mapped: the pages
    /// stop counting as resident and read back as zeros.
    ///
    /// # Safety
    /// The range must be page-aligned, inside a mapping made by [`map`], and
    /// hold no data anybody still needs.
    pub(crate) unsafe fn purge(addr: NonNull<u8>, len: usize) {
        // SAFETY: the caller guarantees the range holds nothing live, and
        // MADV_DONTNEED on private anonymous memory only zero-fills it.
        let _ = unsafe { libc::madvise(addr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
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
    use std::sync::Mutex;

    const MODEL_PAGE_SIZE: usize = 4096;

    struct Reservation {
        base: usize,
        layout: Layout,
        /// Carved from this thread's arena (loom) rather than the heap.
        in_arena: bool,
    }

    // A plain std mutex: the registry is bookkeeping for the stand-in, not a
    // part of the pool whose interleavings the models explore, and nothing
    // yields to the model scheduler while it is held.
    static RESERVATIONS: Mutex<Vec<Reservation>> = Mutex::new(Vec::new());

    fn reservations() -> std::sync::MutexGuard<'static, Vec<Reservation>> {
        RESERVATIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn page_size() -> usize {
        MODEL_PAGE_SIZE
    }

    pub(crate) fn map(len: usize) -> Result<NonNull<u8>, OsError> {
        let layout = Layout::from_size_align(len.checked_mul(2).ok_or(OsError(12))?, MODEL_PAGE_SIZE)
            .map_err(|_| OsError(12))?;
        if let Some(base) = arena::take(layout.size()) {
            reservations().push(Reservation { base: base.as_ptr() as usize, layout, in_arena: true });
            return Ok(base);
        }
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(OsError(12))?;
        reservations().push(Reservation { base: base.as_ptr() as usize, layout, in_arena: false });
        Ok(base)
    }

    /// # Safety
    /// As for the real `grow_in_place`.
    pub(crate) unsafe fn grow_in_place(base: NonNull<u8>, _old_len: usize, new_len: usize) -> bool {
        reservations()
            .iter()
            .any(|reservation| reservation.base == base.as_ptr() as usize && new_len <= reservation.layout.size())
    }

    /// # Safety
    /// As for the real `unmap`.
    pub(crate) unsafe fn unmap(addr: NonNull<u8>, _len: usize) {
        let mut reservations = reservations();
        // Only unmapping from a reservation's base frees it: the pool unmaps
        // tails first and whole regions from their base.
        if let Some(index) = reservations.iter().position(|r| r.base == addr.as_ptr() as usize) {
            let reservation = reservations.swap_remove(index);
            if reservation.in_arena {
                arena::give_back();
            } else {
                // SAFETY: allocated above with this very layout.
                unsafe { std::alloc::dealloc(reservation.base as *mut u8, reservation.layout) };
            }
        }
    }

    /// # Safety
    /// As for the real `purge`.
    pub(crate) unsafe fn purge(addr: NonNull<u8>, len: usize) {
        // SAFETY: the caller guarantees the range is ours and holds nothing live.
        unsafe { std::ptr::write_bytes(addr.as_ptr(), 0, len) };
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
