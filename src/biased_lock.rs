//! The shared pool's lock, biased towards the thread that made the pool.
//!
//! Every `allocate` and `free` on the shared pool takes the lock. A `std`
//! mutex takes it with a locked read-modify-write, and on x86 that waits for
//! the store buffer to drain: when the caller has just written into a block
//! that was not in cache (as every real caller does), each lock waits out
//! that cache miss. Measured with 100,000 live blocks: about 200 ns of a
//! 800 ns free-plus-allocate step, which glibc, single-threaded, never pays.
//!
//! So the lock is biased, as the JVM's and Folly's asymmetric locks are: the
//! thread that created the pool (its owner) enters with a plain store and a
//! plain load, no read-modify-write. Any other thread first revokes the
//! bias, once: it raises `revoked`, runs `membarrier(2)`, which makes every
//! running thread execute a full fence, and waits until the owner is out.
//! That is Dekker's handshake with the owner's fence moved into the
//! revoker's system call: either the owner's load sees `revoked` and it
//! backs out to the mutex, or the revoker's load sees the owner inside and
//! waits. From then on everyone, the owner too, takes the mutex.
//!
//! The models cannot express `membarrier`, and ThreadSanitizer cannot see
//! the order it makes, so under loom, shuttle and `lle_mempool_tsan` (and on
//! kernels without private expedited barriers) the lock is never biased:
//! the same slow path as a plain mutex.

#[cfg(not(any(lle_mempool_loom, feature = "shuttle", lle_mempool_tsan)))]
pub(crate) use biased::{BiasedGuard, BiasedMutex};
#[cfg(any(lle_mempool_loom, feature = "shuttle", lle_mempool_tsan))]
pub(crate) use plain::{BiasedGuard, BiasedMutex};

#[cfg(not(any(lle_mempool_loom, feature = "shuttle", lle_mempool_tsan)))]
mod biased {
    use crate::os;
    use crate::sync::{current_thread_serial, lock, Mutex, MutexGuard};
    use crossbeam_utils::Backoff;
    use std::cell::UnsafeCell;
    use std::ops::{Deref, DerefMut};
    use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};

    pub(crate) struct BiasedMutex<T> {
        /// The owner's `current_thread_serial`, or 0 once revoked (or never
        /// biased). Serials are never reused, so a thread that starts after
        /// the owner ended can't mistake itself for it.
        owner: AtomicU64,
        /// The owner is in, or entering, a critical section by the fast path.
        owner_inside: AtomicBool,
        /// Set, under `mutex`, by the first thread that revoked the bias.
        pub(super) revoked: AtomicBool,
        mutex: Mutex<()>,
        value: UnsafeCell<T>,
    }

    // SAFETY: the value is only reached through a guard, and guards exclude
    // each other (see `lock`); the value moves between threads with it.
    unsafe impl<T: Send> Send for BiasedMutex<T> {}
    // SAFETY: as above: `&BiasedMutex` hands out `&mut T` to one thread at a
    // time, so `T: Send` suffices, as for `std::sync::Mutex`.
    unsafe impl<T: Send> Sync for BiasedMutex<T> {}

    pub(crate) struct BiasedGuard<'a, T> {
        lock: &'a BiasedMutex<T>,
        /// `None` on the owner's fast path.
        held: Option<MutexGuard<'a, ()>>,
    }

    impl<T> BiasedMutex<T> {
        /// A lock biased to the calling thread, where the OS allows it.
        pub(crate) fn new(value: T) -> Self {
            let owner = if os::heavy_barrier_available() { current_thread_serial() } else { 0 };
            BiasedMutex {
                owner: AtomicU64::new(owner),
                owner_inside: AtomicBool::new(false),
                revoked: AtomicBool::new(owner == 0),
                mutex: Mutex::new(()),
                value: UnsafeCell::new(value),
            }
        }

        #[inline]
        pub(crate) fn lock(&self) -> BiasedGuard<'_, T> {
            let owner = self.owner.load(Ordering::Relaxed);
            if owner != 0 && owner == current_thread_serial() {
                self.owner_inside.store(true, Ordering::Relaxed);
                // The owner's half of the handshake needs only the compiler
                // kept from reordering: the revoker's membarrier puts a full
                // fence into this thread wherever it is.
                compiler_fence(Ordering::SeqCst);
                if !self.revoked.load(Ordering::Relaxed) {
                    return BiasedGuard { lock: self, held: None };
                }
                self.owner_inside.store(false, Ordering::Release);
            }
            self.lock_slow()
        }

        #[cold]
        fn lock_slow(&self) -> BiasedGuard<'_, T> {
            // Ignores poisoning, as every lock of the pool does (see
            // `sync::lock`).
            let held = lock(&self.mutex);
            if !self.revoked.load(Ordering::Relaxed) {
                self.revoked.store(true, Ordering::Relaxed);
                self.owner.store(0, Ordering::Relaxed);
                // After this every other thread has fenced: an owner that
                // had not stored `owner_inside` yet will see `revoked`.
                os::heavy_barrier();
                // Acquire: pairs with the owner's Release on leaving, so its
                // critical sections happen before ours.
                let backoff = Backoff::new();
                while self.owner_inside.load(Ordering::Acquire) {
                    backoff.snooze();
                }
            }
            BiasedGuard { lock: self, held: Some(held) }
        }

        pub(crate) fn get_mut(&mut self) -> &mut T {
            self.value.get_mut()
        }
    }

    impl<T> Deref for BiasedGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            // SAFETY: the guard excludes every other guard (fast path: the
            // handshake; slow path: the mutex, and the revocation that
            // waited for the owner), so no `&mut T` exists meanwhile.
            unsafe { &*self.lock.value.get() }
        }
    }

    impl<T> DerefMut for BiasedGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`, and `&mut self` makes this the only
            // reference through this guard.
            unsafe { &mut *self.lock.value.get() }
        }
    }

    impl<T> Drop for BiasedGuard<'_, T> {
        fn drop(&mut self) {
            if self.held.is_none() {
                // Release: a revoker that sees `false` sees our writes.
                self.lock.owner_inside.store(false, Ordering::Release);
            }
            // On the slow path the mutex guard, a field, unlocks after this.
        }
    }
}

#[cfg(any(lle_mempool_loom, feature = "shuttle", lle_mempool_tsan))]
mod plain {
    use crate::sync::{lock, Mutex, MutexGuard};

    /// Under the models and ThreadSanitizer: a plain mutex.
    pub(crate) struct BiasedMutex<T>(Mutex<T>);

    pub(crate) type BiasedGuard<'a, T> = MutexGuard<'a, T>;

    impl<T> BiasedMutex<T> {
        pub(crate) fn new(value: T) -> Self {
            BiasedMutex(Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> BiasedGuard<'_, T> {
            lock(&self.0)
        }

        pub(crate) fn get_mut(&mut self) -> &mut T {
            match self.0.get_mut() {
                Ok(value) => value,
                Err(poisoned) => poisoned.into_inner(),
            }
        }
    }
}

#[cfg(all(test, not(any(lle_mempool_loom, feature = "shuttle", lle_mempool_tsan))))]
mod tests {
    use super::BiasedMutex;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Barrier};

    /// The owner and other threads increment a plain counter under the lock
    /// while the bias is revoked mid-way: no increment may be lost.
    #[test]
    fn owner_and_others_exclude_each_other_across_revocation() {
        const ROUNDS: u64 = 2_000;
        for _ in 0..40 {
            let lock = Arc::new(BiasedMutex::new(0u64));
            let biased = !lock.revoked.load(Ordering::Relaxed);
            // Everyone starts together, so the owner is inside its fast path
            // when the others revoke the bias.
            let start = Arc::new(Barrier::new(3));
            let others: Vec<_> = (0..2)
                .map(|_| {
                    let (lock, start) = (Arc::clone(&lock), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..ROUNDS {
                            *lock.lock() += 1;
                        }
                    })
                })
                .collect();
            start.wait();
            for _ in 0..ROUNDS {
                let mut value = lock.lock();
                // A read, then a write a while later: the owner is inside
                // nearly all the time, so the revocation lands mid-section,
                // and a second thread let in meanwhile loses an increment.
                let seen = *value;
                for _ in 0..500 {
                    std::hint::spin_loop();
                }
                *value = std::hint::black_box(seen) + 1;
            }
            for other in others {
                other.join().unwrap();
            }
            assert_eq!(*lock.lock(), 3 * ROUNDS, "an increment was lost: two threads held the lock");
            if biased {
                assert!(lock.revoked.load(Ordering::Relaxed), "another thread locked without revoking the bias");
            }
        }
    }

    #[test]
    fn the_owner_alone_never_revokes() {
        let lock = BiasedMutex::new(Vec::new());
        let biased = !lock.revoked.load(Ordering::Relaxed);
        for value in 0..1000 {
            lock.lock().push(value);
        }
        assert_eq!(lock.lock().len(), 1000);
        assert_eq!(lock.revoked.load(Ordering::Relaxed), !biased);
    }
}
