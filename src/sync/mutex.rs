//! How the pool takes a mutex: poisoning ignored, and, under ThreadSanitizer,
//! every lock and unlock reported to it.

use super::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning.
///
/// The pool never panics while holding a lock on purpose; if a user's resize
/// listener panics, the state the lock protects is still consistent (it is
/// only ever changed between `seqlock` write brackets that cannot unwind), so
/// recovering the guard is sound and keeps the pool usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    let guard = match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    #[cfg(all(lle_mempool_tsan, not(lle_mempool_model)))]
    let guard = tsan::MutexGuard::new(mutex, guard);
    guard
}

/// ThreadSanitizer's view of the pool's locks, under `--cfg lle_mempool_tsan`
/// (set by the ThreadSanitizer step of `.ci/run`, next to
/// `-Zsanitizer=thread`).
///
/// TSan orders two critical sections only if it sees the unlock and the
/// lock. `std`'s `Mutex` takes a contended lock inside the precompiled std,
/// which is not instrumented, so TSan misses that acquire and would report
/// every access to the pool's locked state as a race. Each guard therefore
/// tells TSan itself: an acquire on the mutex's address once locked, a
/// release on it just before unlocking. The lock is still `std`'s.
#[cfg(all(lle_mempool_tsan, not(lle_mempool_model)))]
pub(crate) mod tsan {
    use std::ffi::c_void;
    use std::ops::{Deref, DerefMut};

    extern "C" {
        fn __tsan_acquire(address: *mut c_void);
        fn __tsan_release(address: *mut c_void);
    }

    /// A `std` guard that reports its lock and unlock to TSan.
    pub(crate) struct MutexGuard<'a, T> {
        guard: std::sync::MutexGuard<'a, T>,
        /// The mutex's address, the name TSan knows the lock by.
        address: usize,
    }

    impl<'a, T> MutexGuard<'a, T> {
        pub(super) fn new(mutex: &'a std::sync::Mutex<T>, guard: std::sync::MutexGuard<'a, T>) -> Self {
            let address = mutex as *const std::sync::Mutex<T> as usize;
            // SAFETY: this cfg is only set with -Zsanitizer=thread, which
            // links the TSan runtime; the call only records that this thread
            // synchronised with the last release on `address`.
            unsafe { __tsan_acquire(address as *mut c_void) };
            MutexGuard { guard, address }
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.guard
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            // SAFETY: as in `new`. The std guard, a field, unlocks after this.
            unsafe { __tsan_release(self.address as *mut c_void) };
        }
    }
}
