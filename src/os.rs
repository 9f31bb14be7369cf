//! The operating system's memory calls, and nothing else.
//!
//! The pool asks the OS for anonymous private memory that it owns as a
//! [`Mapping`]: mapped zeroed, grown or cut back where it stands (never
//! moved: a live allocation never moves), its pages' contents dropped while
//! it stays mapped, and unmapped when the value is dropped. A mapping may
//! hold address space beyond its read-write front, reserved: growth commits
//! it, and cutting back decommits into it. Outside the models a `Mapping`
//! without a reservation is a `memmap2::MmapRaw`; what memmap2 does not
//! offer (a reservation and the protection changes that commit it, the page
//! size, `membarrier`, `pthread_atfork`, a plain `write` before an abort) is
//! called through libc here, and nowhere else. A mapping may ask for
//! transparent huge pages; it is then placed on a huge page boundary. `docs/DESIGN.md` says why
//! each call goes where it does. Keeping it all behind this module lets the
//! loom and shuttle models swap in heap memory, which they can reason about,
//! for syscalls, which they can't.

/// Bytes per page; every mapping length is a multiple of it.
pub(crate) fn page_size() -> usize {
    imp::page_size()
}

/// A point in time, as the time since a fixed point of the clock
/// [`coarse_monotonic_now`] reads.
pub(crate) type Timestamp = std::time::Duration;

/// The time now, from a monotonic clock that is cheap to read, at the
/// kernel tick's resolution (1 to 10 ms): `CLOCK_MONOTONIC_COARSE`, a value
/// the kernel publishes for the vDSO to copy, where `std::time::Instant`
/// reads the time-stamp counter, which costs tens of nanoseconds in a
/// virtual machine. For the purge delays, measured in seconds, which their
/// schedules check on slow paths that a busy thread takes often. Zero if
/// the kernel has no such clock (older than Linux 2.6.32): the delays then
/// never pass, and only `compact` purges.
pub(crate) fn coarse_monotonic_now() -> Timestamp {
    imp::coarse_monotonic_now()
}

/// Why the OS refused memory: the `errno` it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OsError(pub(crate) i32);

/// Only the fork handlers use this; the models have no processes.
#[cfg(not(lle_mempool_model))]
pub(crate) use imp::register_fork_handlers;
pub(crate) use imp::Mapping;

/// Drops the contents of the page-aligned range `start..start + len` of the
/// pool's memory, which stays mapped: the pages stop counting as resident
/// and read back as zeros. For ranges inside a live block of a mapping
/// (a cache slab purging its own free pages), which need neither the
/// mapping nor the pool's lock: a live block's memory stays mapped where it
/// is.
///
/// # Safety
/// The range must lie inside the read-write front of a live [`Mapping`] and
/// hold no data anybody still needs.
pub(crate) unsafe fn purge_pool_memory(start: std::ptr::NonNull<u8>, len: usize) {
    debug_assert!(start.as_ptr() as usize % page_size() == 0 && len % page_size() == 0);
    // SAFETY: as the caller guarantees.
    unsafe { imp::purge_range(start, len) };
}

/// Only the biased lock uses these, and only outside the models and TSan.
#[cfg(not(any(lle_mempool_model, lle_mempool_tsan)))]
pub(crate) use imp::{heavy_barrier, heavy_barrier_available};

#[cfg(not(lle_mempool_model))]
mod imp {
    use super::OsError;
    use memmap2::{Advice, MmapOptions, MmapRaw, RemapOptions, UncheckedAdvice};
    use std::ptr::NonNull;

    pub(super) fn coarse_monotonic_now() -> super::Timestamp {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given, and only it.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } != 0 {
            return super::Timestamp::ZERO;
        }
        super::Timestamp::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
    }

    /// The transparent huge page of x86-64 and of arm64 with 4 KiB pages:
    /// the span one page-middle-directory entry maps.
    const HUGE_PAGE_SIZE: usize = 2 << 20;

    /// # Safety
    /// As for [`super::purge_pool_memory`].
    pub(super) unsafe fn purge_range(start: NonNull<u8>, len: usize) {
        // SAFETY: per the caller; MADV_DONTNEED on private anonymous memory
        // only zero-fills it.
        let _ = unsafe { libc::madvise(start.as_ptr().cast(), len, libc::MADV_DONTNEED) };
    }

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

    /// Anonymous, private memory that this value owns: `len` bytes at the
    /// front are read-write, and any address space it holds past them is a
    /// reservation, which growth commits before it asks the kernel for more.
    /// Dropping the value unmaps all of it, so it cannot be unmapped twice,
    /// nor forgotten.
    pub(crate) struct Mapping {
        memory: Memory,
        /// The read-write bytes at the front of `memory`.
        len: usize,
    }

    /// The address space a [`Mapping`] holds, and who maps and unmaps it.
    enum Memory {
        /// All of it read-write: memmap2's `MmapRaw`, which unmaps it with
        /// the length it was last mapped or remapped to.
        Whole(MmapRaw),
        /// Read-write at the front, reserved past it. memmap2 maps nothing
        /// `PROT_NONE` and changes no protection, so this is libc's.
        Reserved(Reservation),
    }

    impl From<std::io::Error> for OsError {
        fn from(error: std::io::Error) -> OsError {
            OsError(error.raw_os_error().unwrap_or(libc::ENOMEM))
        }
    }

    /// The error of the libc call that just failed.
    fn last_error() -> OsError {
        std::io::Error::last_os_error().into()
    }

    impl Mapping {
        /// Maps `len` bytes of private, zeroed, read-write memory at the
        /// front of `reserve` bytes of address space (both whole pages). A
        /// reservation the kernel refuses (an address-space limit, a small
        /// address space) is halved until it fits; one no larger than `len`
        /// is no reservation, and the memory is mapped as it is.
        ///
        /// With `huge_pages`, address space of at least a huge page (2 MiB)
        /// starts on a huge page boundary and is advised `MADV_HUGEPAGE`,
        /// so that the kernel can back each 2 MiB-aligned stretch of it
        /// that is read-write whole with one huge page. Such a mapping
        /// without a reservation is a reservation of its own length, all
        /// committed: memmap2 maps where the kernel chooses, and only a
        /// reservation can be placed (see [`Reservation::new`]).
        pub(crate) fn new(len: usize, reserve: usize, huge_pages: bool) -> Result<Mapping, OsError> {
            let page = page_size();
            debug_assert!(len > 0 && len % page == 0 && reserve % page == 0);
            let huge = |bytes: usize| huge_pages && bytes >= HUGE_PAGE_SIZE;
            let mut reserve = reserve;
            while reserve > len {
                if let Ok(reservation) = Reservation::new(reserve, huge(reserve)) {
                    reservation.commit(0, len)?;
                    return Ok(Mapping { memory: Memory::Reserved(reservation), len });
                }
                reserve = reserve / 2 / page * page;
            }
            if huge(len) {
                if let Ok(reservation) = Reservation::new(len, true) {
                    reservation.commit(0, len)?;
                    return Ok(Mapping { memory: Memory::Reserved(reservation), len });
                }
            }
            let mapping = Mapping { memory: Memory::Whole(MmapOptions::new().len(len).map_anon()?.into()), len };
            // The kernel never places a mapping it chooses at address 0;
            // checked once here so that `base` can rely on it.
            if mapping.memory.base().is_null() {
                return Err(OsError(libc::ENOMEM));
            }
            if huge(len) {
                if let Memory::Whole(whole) = &mapping.memory {
                    // The kernel refused the aligned reservation: the advice
                    // still serves the 2 MiB-aligned stretches inside.
                    // Best effort, as in `Reservation::advise_huge_pages`.
                    let _ = whole.advise(Advice::HugePage);
                }
            }
            Ok(mapping)
        }

        /// Where the memory starts. It never changes: nothing here moves it.
        pub(crate) fn base(&self) -> NonNull<u8> {
            // SAFETY: `new` and `Reservation::new` refused a null base, and
            // nothing here remaps with `may_move`, so the base stays put.
            unsafe { NonNull::new_unchecked(self.memory.base()) }
        }

        /// The read-write bytes at the front.
        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// The address space this value holds, read-write or reserved:
        /// growth up to here only commits pages, which the kernel refuses
        /// only when it has no memory to promise.
        pub(crate) fn reserved(&self) -> usize {
            self.memory.len()
        }

        /// Grows the read-write front to `new_len` bytes without moving it:
        /// inside the reservation by committing pages, past it by extending
        /// the mapping where it stands. `false` when the kernel can't (no
        /// memory to commit, or the pages after the mapping are taken), in
        /// which case nothing changed.
        pub(crate) fn grow_in_place(&mut self, new_len: usize) -> bool {
            debug_assert!(new_len % page_size() == 0);
            if new_len <= self.len {
                // A tail that `cut_back` could not give back is still ours,
                // and purged: it serves as fresh memory.
                return true;
            }
            let held = self.memory.len();
            if new_len <= held {
                if self.memory.commit(self.len, new_len - self.len).is_err() {
                    return false;
                }
            } else {
                // The kernel extends a mapping only from a single record of
                // it, which a reservation half read-write is not: the rest
                // of the reservation is committed first.
                if self.memory.commit(self.len, held - self.len).is_err() {
                    return false;
                }
                if !self.memory.extend(new_len) {
                    // SAFETY: the pages were committed just now and nobody
                    // uses them. If the kernel will not take them back they
                    // stay read-write past `len`, untouched: zero, and not
                    // resident.
                    let _ = unsafe { self.memory.decommit(self.len, held - self.len) };
                    return false;
                }
            }
            self.len = new_len;
            true
        }

        /// Cuts the read-write front back to `new_len` bytes (not zero),
        /// where it stands: the pages past it are unmapped, or, inside a
        /// reservation, decommitted, so that the reservation stays whole
        /// for growth. If the kernel refuses (the cut would split its
        /// record of the mapping past `vm.max_map_count`, or it has no
        /// memory for the split), the bytes past `new_len` stay read-write
        /// and owned, released with the rest on drop, and their pages are
        /// purged.
        ///
        /// # Safety
        /// Nothing may use the bytes past `new_len` any more.
        pub(crate) unsafe fn cut_back(&mut self, new_len: usize) {
            let len = self.len;
            debug_assert!(new_len > 0 && new_len <= len && new_len % page_size() == 0);
            if new_len == len {
                return;
            }
            // SAFETY: the caller guarantees nobody uses the bytes cut off;
            // neither call moves the bytes kept.
            if unsafe { self.memory.decommit(new_len, len - new_len) }.is_ok() {
                self.len = new_len;
            } else {
                // SAFETY: the bytes past `new_len` are still read-write, and
                // the caller guarantees nobody needs them.
                unsafe { self.purge(new_len, len - new_len) };
            }
        }

        /// Drops the contents of bytes `offset..offset + len` (page-aligned),
        /// keeping them mapped: the pages stop counting as resident and read
        /// back as zeros.
        ///
        /// # Safety
        /// The range must lie inside the read-write front and hold no data
        /// anybody still needs.
        pub(crate) unsafe fn purge(&self, offset: usize, len: usize) {
            debug_assert!(offset % page_size() == 0 && len % page_size() == 0 && offset + len <= self.len);
            // SAFETY: per the caller.
            unsafe { self.memory.purge(offset, len) };
        }

        /// Faults in bytes `offset..offset + len` of the read-write front in
        /// one call, where the kernel can (`MADV_POPULATE_WRITE`, Linux
        /// 5.14): one system call instead of a fault per page. Best effort:
        /// a kernel without it, or without the memory, leaves the pages to
        /// fault one by one when they are first written, as they would
        /// anyway. Contents do not change.
        pub(crate) fn populate(&self, offset: usize, len: usize) {
            debug_assert!(offset % page_size() == 0 && len % page_size() == 0 && offset + len <= self.len);
            static UNSUPPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if len == 0 || UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if let Err(OsError(libc::EINVAL)) = self.memory.populate(offset, len) {
                // The kernel does not know the advice: never ask again.
                UNSUPPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    impl Memory {
        fn base(&self) -> *mut u8 {
            match self {
                Memory::Whole(mapping) => mapping.as_mut_ptr(),
                Memory::Reserved(reservation) => reservation.base.as_ptr(),
            }
        }

        /// The address space held.
        fn len(&self) -> usize {
            match self {
                Memory::Whole(mapping) => mapping.len(),
                Memory::Reserved(reservation) => reservation.len,
            }
        }

        /// Faults in bytes `offset..offset + len`, which are read-write.
        fn populate(&self, offset: usize, len: usize) -> Result<(), OsError> {
            match self {
                Memory::Whole(mapping) => Ok(mapping.advise_range(Advice::PopulateWrite, offset, len)?),
                Memory::Reserved(reservation) => reservation.populate(offset, len),
            }
        }

        /// Makes bytes `offset..offset + len` read-write.
        fn commit(&self, offset: usize, len: usize) -> Result<(), OsError> {
            debug_assert!(offset + len <= self.len());
            match self {
                // All of it is read-write already.
                Memory::Whole(_) => Ok(()),
                Memory::Reserved(reservation) => reservation.commit(offset, len),
            }
        }

        /// Gives the pages of bytes `offset..offset + len` back: a whole
        /// mapping is cut there (the range must be its tail), a reservation
        /// keeps the range, reserved again.
        ///
        /// # Safety
        /// Nothing may use the range any more.
        unsafe fn decommit(&mut self, offset: usize, len: usize) -> Result<(), OsError> {
            if len == 0 {
                return Ok(());
            }
            match self {
                Memory::Whole(mapping) => {
                    debug_assert_eq!(offset + len, mapping.len());
                    // SAFETY: the caller guarantees nobody uses the tail cut
                    // off; without `may_move` the kernel shrinks the mapping
                    // where it stands, so the bytes kept stay where they are.
                    Ok(unsafe { mapping.remap(offset, RemapOptions::new().may_move(false)) }?)
                }
                // SAFETY: per the caller.
                Memory::Reserved(reservation) => unsafe { reservation.decommit(offset, len) },
            }
        }

        /// Extends the mapping to `new_len` bytes where it stands; the new
        /// bytes are read-write. `false`, with nothing changed, when the
        /// kernel can't.
        fn extend(&mut self, new_len: usize) -> bool {
            match self {
                // SAFETY: growing changes no byte the program can already
                // reach, and an anonymous mapping has no file whose end the
                // new pages could pass. Without `may_move` the kernel extends
                // the mapping where it stands or fails, so no pointer into it
                // can dangle.
                Memory::Whole(mapping) => {
                    unsafe { mapping.remap(new_len, RemapOptions::new().may_move(false)) }.is_ok()
                }
                Memory::Reserved(reservation) => reservation.extend(new_len),
            }
        }

        /// # Safety
        /// As for [`Mapping::purge`].
        unsafe fn purge(&self, offset: usize, len: usize) {
            match self {
                Memory::Whole(mapping) => {
                    // SAFETY: the caller guarantees the range holds nothing
                    // live, and MADV_DONTNEED on private anonymous memory
                    // only zero-fills it.
                    let _ = unsafe { mapping.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
                }
                // SAFETY: as above.
                Memory::Reserved(reservation) => unsafe { reservation.purge(offset, len) },
            }
        }
    }

    /// Address space mapped `PROT_NONE` with `MAP_NORESERVE`: no page and
    /// no commit charge until a range is committed (made read-write), and
    /// decommitting maps a range afresh the same way, which drops its pages
    /// and its charge. Unmapped whole on drop.
    struct Reservation {
        base: NonNull<u8>,
        len: usize,
        /// Advised `MADV_HUGEPAGE`, and so every range mapped afresh is.
        huge_pages: bool,
    }

    impl Reservation {
        /// Reserves `len` bytes; with `huge_pages`, from a huge page
        /// boundary, and advised for huge pages.
        fn new(len: usize, huge_pages: bool) -> Result<Reservation, OsError> {
            // The kernel places a mapping on a page boundary only: a huge
            // page boundary is found inside a reservation longer by all but
            // a page of a huge page, and the slack around it given back.
            let slack = if huge_pages { HUGE_PAGE_SIZE - page_size() } else { 0 };
            let mapped_len = len.checked_add(slack).ok_or(OsError(libc::ENOMEM))?;
            // SAFETY: a new anonymous mapping where the kernel likes: it
            // replaces nothing.
            let mapped = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    mapped_len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(last_error());
            }
            if mapped.is_null() {
                // The kernel never places a mapping it chooses at address 0;
                // `Mapping::base` relies on that.
                // SAFETY: the mapping just made, which nothing uses.
                unsafe { libc::munmap(mapped, mapped_len) };
                return Err(OsError(libc::ENOMEM));
            }
            let before =
                if huge_pages { (mapped as usize).next_multiple_of(HUGE_PAGE_SIZE) - mapped as usize } else { 0 };
            // SAFETY: `before` is less than a huge page, and so than the
            // slack: the pointer stays inside the mapping, past its start.
            let base = unsafe { NonNull::new_unchecked(mapped.cast::<u8>().add(before)) };
            let after = slack - before;
            // SAFETY: the slack before and after the kept range, whole pages
            // at the ends of the mapping just made, which nothing uses.
            // Cutting a mapping's ends splits nothing, so it needs no memory;
            // were it refused, the slack would stay reserved, unused.
            unsafe {
                if before > 0 {
                    libc::munmap(mapped, before);
                }
                if after > 0 {
                    libc::munmap(base.as_ptr().add(len).cast(), after);
                }
            }
            let reservation = Reservation { base, len, huge_pages };
            reservation.advise_huge_pages(0, len);
            Ok(reservation)
        }

        /// Asks for transparent huge pages on a range of a reservation made
        /// for them; the kernel keeps the advice on the range as it is
        /// committed, decommitted or extended, but not when it is mapped
        /// afresh. Best effort: a kernel without transparent huge pages
        /// says `EINVAL`, and the memory comes in ordinary pages.
        fn advise_huge_pages(&self, offset: usize, len: usize) {
            if self.huge_pages {
                // SAFETY: the range lies inside the reservation; the advice
                // changes how pages are backed, never their contents.
                let _ = unsafe { libc::madvise(self.at(offset), len, libc::MADV_HUGEPAGE) };
            }
        }

        fn at(&self, offset: usize) -> *mut libc::c_void {
            // SAFETY: callers pass offsets inside the reservation, so the
            // pointer stays inside one mapping.
            unsafe { self.base.as_ptr().add(offset).cast() }
        }

        fn commit(&self, offset: usize, len: usize) -> Result<(), OsError> {
            debug_assert!(offset % page_size() == 0 && len % page_size() == 0);
            if len == 0 {
                return Ok(());
            }
            // SAFETY: the range lies inside the reservation, which this value
            // owns; making reserved pages read-write changes no byte.
            match unsafe { libc::mprotect(self.at(offset), len, libc::PROT_READ | libc::PROT_WRITE) } {
                0 => Ok(()),
                _ => Err(last_error()),
            }
        }

        /// # Safety
        /// Nothing may use the range any more.
        unsafe fn decommit(&self, offset: usize, len: usize) -> Result<(), OsError> {
            debug_assert!(offset % page_size() == 0 && len % page_size() == 0 && offset + len <= self.len);
            // SAFETY: `MAP_FIXED` replaces the range, which lies inside the
            // reservation this value owns, and whose contents the caller
            // gives up; nothing outside it changes.
            let mapped = unsafe {
                libc::mmap(
                    self.at(offset),
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(last_error());
            }
            debug_assert_eq!(mapped, self.at(offset));
            // The fresh range would otherwise lack the advice, and split the
            // kernel's record of the reservation where its neighbours have it.
            self.advise_huge_pages(offset, len);
            Ok(())
        }

        /// Extends the reservation's mapping to `new_len` bytes where it
        /// stands, read-write like its last page.
        fn extend(&mut self, new_len: usize) -> bool {
            // SAFETY: remapping without `MREMAP_MAYMOVE` extends the mapping
            // where it stands or fails: no byte moves and no pointer into it
            // can dangle; the new pages are fresh and zero.
            let result = unsafe { libc::mremap(self.base.as_ptr().cast(), self.len, new_len, 0) };
            if result == libc::MAP_FAILED {
                return false;
            }
            self.len = new_len;
            true
        }

        /// # Safety
        /// The range must be read-write and hold no data anybody needs.
        unsafe fn purge(&self, offset: usize, len: usize) {
            // SAFETY: per the caller; MADV_DONTNEED on private anonymous
            // memory only zero-fills it.
            let _ = unsafe { libc::madvise(self.at(offset), len, libc::MADV_DONTNEED) };
        }

        /// Faults in a read-write range; its contents do not change.
        fn populate(&self, offset: usize, len: usize) -> Result<(), OsError> {
            // SAFETY: the range lies inside the reservation; populating
            // writes nothing a reader could see (it maps the zero-filled or
            // existing pages as they are).
            match unsafe { libc::madvise(self.at(offset), len, libc::MADV_POPULATE_WRITE) } {
                0 => Ok(()),
                _ => Err(last_error()),
            }
        }
    }

    impl Drop for Reservation {
        fn drop(&mut self) {
            // SAFETY: the whole reservation is this value's, mapped since
            // `new` at this length (`extend` records every change), and
            // nothing is used once the value is dropped.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        }
    }

    // SAFETY: as memmap2 makes `MmapRaw`: the value owns its memory and
    // hands out raw pointers only.
    unsafe impl Send for Reservation {}
    // SAFETY: as above; the `&self` methods that change memory (`commit`,
    // `purge`) have callers that own the range.
    unsafe impl Sync for Reservation {}
}

/// Heap memory standing in for mappings under the models. Each "mapping"
/// reserves twice its length, whatever reservation the pool asks for (the
/// pool's default would be more memory than a model can hold), so that
/// in-place growth succeeds once and then fails, exercising both of the
/// pool's growth paths.
#[cfg(lle_mempool_model)]
mod imp {
    use super::OsError;
    use std::alloc::Layout;
    use std::ptr::NonNull;

    /// The models' time: std's clock, from the first call.
    pub(super) fn coarse_monotonic_now() -> super::Timestamp {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }

    const MODEL_PAGE_SIZE: usize = 4096;

    pub(crate) fn page_size() -> usize {
        MODEL_PAGE_SIZE
    }

    /// Zero-fills, as the kernel's purged pages read back.
    ///
    /// # Safety
    /// As for [`super::purge_pool_memory`].
    pub(super) unsafe fn purge_range(start: NonNull<u8>, len: usize) {
        // SAFETY: the caller guarantees the range is mapped and holds
        // nothing live.
        unsafe { std::ptr::write_bytes(start.as_ptr(), 0, len) };
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
        pub(crate) fn new(len: usize, _reserve: usize, _huge_pages: bool) -> Result<Mapping, OsError> {
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

        pub(crate) fn reserved(&self) -> usize {
            self.reservation.size()
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

        /// Heap memory has no pages to fault in ahead.
        pub(crate) fn populate(&self, offset: usize, len: usize) {
            debug_assert!(offset + len <= self.len);
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

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::{page_size, Mapping};

    /// Bytes `offset..offset + len` of `mapping`'s read-write front.
    fn bytes(mapping: &Mapping, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= mapping.len());
        // SAFETY: inside the read-write front, which the test owns.
        unsafe { std::slice::from_raw_parts(mapping.base().as_ptr().add(offset), len) }
    }

    fn fill(mapping: &mut Mapping, offset: usize, len: usize, value: u8) {
        assert!(offset + len <= mapping.len());
        // SAFETY: as in `bytes`.
        unsafe { mapping.base().as_ptr().add(offset).write_bytes(value, len) };
    }

    /// Whether `addr` is mapped read-write, per `/proc/self/maps`.
    fn read_write(addr: usize) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
        maps.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next().and_then(|range| range.split_once('-'));
            let Some((start, end)) = range else { return false };
            let (start, end) = (usize::from_str_radix(start, 16).unwrap(), usize::from_str_radix(end, 16).unwrap());
            (start..end).contains(&addr) && fields.next().is_some_and(|permissions| permissions.starts_with("rw"))
        })
    }

    #[test]
    fn growth_inside_the_reservation_commits_and_cutting_back_decommits() {
        let page = page_size();
        let mut mapping = Mapping::new(page, 8 * page, false).unwrap();
        let base = mapping.base().as_ptr() as usize;
        assert_eq!((mapping.len(), mapping.reserved()), (page, 8 * page));
        assert!(read_write(base) && !read_write(base + page), "only the front is committed");
        fill(&mut mapping, 0, page, 0xA1);

        assert!(mapping.grow_in_place(4 * page));
        assert_eq!((mapping.len(), mapping.reserved()), (4 * page, 8 * page));
        assert_eq!(mapping.base().as_ptr() as usize, base);
        assert!(read_write(base + 3 * page) && !read_write(base + 4 * page));
        assert!(bytes(&mapping, page, 3 * page).iter().all(|&byte| byte == 0), "committed pages are zero");
        fill(&mut mapping, page, 3 * page, 0xB2);

        // SAFETY: nothing uses the pages past the first.
        unsafe { mapping.cut_back(page) };
        assert_eq!((mapping.len(), mapping.reserved()), (page, 8 * page), "the reservation is kept");
        assert!(!read_write(base + page), "the tail is reserved again");
        assert!(bytes(&mapping, 0, page).iter().all(|&byte| byte == 0xA1), "the front is intact");

        // Recommitted, the decommitted pages read zero: their contents went.
        assert!(mapping.grow_in_place(8 * page));
        assert_eq!(mapping.len(), 8 * page);
        assert!(bytes(&mapping, page, 7 * page).iter().all(|&byte| byte == 0), "a decommitted page kept its data");
        assert!(bytes(&mapping, 0, page).iter().all(|&byte| byte == 0xA1));
        fill(&mut mapping, 0, 8 * page, 0xC3);

        // Past the reservation the mapping is extended where it stands, or
        // stays as it was.
        if mapping.grow_in_place(16 * page) {
            assert_eq!((mapping.len(), mapping.reserved()), (16 * page, 16 * page));
            assert!(bytes(&mapping, 8 * page, 8 * page).iter().all(|&byte| byte == 0));
            // SAFETY: nothing uses the pages past the eighth.
            unsafe { mapping.cut_back(8 * page) };
            assert_eq!((mapping.len(), mapping.reserved()), (8 * page, 16 * page), "cut back into a reservation");
        } else {
            assert_eq!((mapping.len(), mapping.reserved()), (8 * page, 8 * page));
        }
        assert_eq!(mapping.base().as_ptr() as usize, base);
        assert!(bytes(&mapping, 0, 8 * page).iter().all(|&byte| byte == 0xC3));
    }

    #[test]
    fn purged_pages_read_zero_and_stay_committed() {
        let page = page_size();
        let mut mapping = Mapping::new(2 * page, 4 * page, false).unwrap();
        fill(&mut mapping, 0, 2 * page, 0x5A);
        // SAFETY: the second page holds nothing the test needs.
        unsafe { mapping.purge(page, page) };
        assert!(bytes(&mapping, 0, page).iter().all(|&byte| byte == 0x5A));
        assert!(bytes(&mapping, page, page).iter().all(|&byte| byte == 0));
        assert_eq!(mapping.len(), 2 * page);
    }

    /// The kernel's record of the mapping that holds `addr`, from
    /// `/proc/self/smaps`: its range, its `VmFlags` and its `AnonHugePages`
    /// in KiB.
    fn smaps_entry(addr: usize) -> Option<(std::ops::Range<usize>, String, usize)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut found = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
                if let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                    if found.is_some() {
                        break;
                    }
                    if (start..end).contains(&addr) {
                        found = Some((start..end, String::new(), 0));
                    }
                    continue;
                }
            }
            if let Some((_, flags, huge)) = found.as_mut() {
                if let Some(rest) = line.strip_prefix("VmFlags:") {
                    *flags = rest.trim().to_owned();
                } else if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                    *huge = rest.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        found
    }

    #[test]
    fn huge_page_mappings_start_on_a_huge_page_and_keep_the_advice() {
        const HUGE: usize = 2 << 20;
        let advised = |addr: usize| smaps_entry(addr).unwrap().1.split(' ').any(|flag| flag == "hg");
        // A reservation, part committed; and a region without one.
        for (len, reserve) in [(HUGE / 2, 8 * HUGE), (3 * HUGE, 0)] {
            let mut mapping = Mapping::new(len, reserve, true).unwrap();
            let base = mapping.base().as_ptr() as usize;
            assert_eq!(base % HUGE, 0, "not on a huge page boundary");
            assert_eq!((mapping.len(), mapping.reserved()), (len, reserve.max(len)));
            assert!(advised(base), "the front is not advised for huge pages");
            fill(&mut mapping, 0, len, 0x3C);
            // Inside what the mapping holds: past it, the kernel may have
            // placed another mapping.
            let grown = mapping.reserved().min(4 * HUGE);
            assert!(mapping.grow_in_place(grown));
            fill(&mut mapping, len, grown - len, 0x4D);
            assert!(advised(base + grown - HUGE), "grown memory is not advised");
            // SAFETY: nothing uses the bytes past the first huge page.
            unsafe { mapping.cut_back(HUGE) };
            assert!(mapping.grow_in_place(2 * HUGE));
            assert!(advised(base + HUGE), "memory committed again lost the advice");
            assert!(bytes(&mapping, 0, len.min(HUGE)).iter().all(|&byte| byte == 0x3C));
            assert!(bytes(&mapping, HUGE, HUGE).iter().all(|&byte| byte == 0), "a decommitted page kept its data");
        }
        // Below a huge page there is nothing to ask for.
        let small = Mapping::new(HUGE / 2, 0, true).unwrap();
        assert!(!advised(small.base().as_ptr() as usize));
        let plain = Mapping::new(HUGE, 4 * HUGE, false).unwrap();
        assert!(!advised(plain.base().as_ptr() as usize));
    }

    #[test]
    fn a_reservation_no_larger_than_the_length_is_none() {
        let page = page_size();
        for reserve in [0, page, 2 * page] {
            let mut mapping = Mapping::new(2 * page, reserve, false).unwrap();
            assert_eq!((mapping.len(), mapping.reserved()), (2 * page, 2 * page));
            fill(&mut mapping, 0, 2 * page, 0x11);
            // SAFETY: nothing uses the second page.
            unsafe { mapping.cut_back(page) };
            assert_eq!((mapping.len(), mapping.reserved()), (page, page), "without a reservation the tail is unmapped");
            assert!(bytes(&mapping, 0, page).iter().all(|&byte| byte == 0x11));
        }
    }
}
