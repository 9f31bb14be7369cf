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
//!
//! The critical section is a closure ([`BiasedMutex::with`]), not a guard
//! handed back to the caller: a guard that holds either nothing (the
//! owner's path) or a `std` mutex guard is an enum, built in memory and
//! copied out in words. Its byte-wide parts, read back by those word-wide
//! copies, cannot be forwarded from the store buffer, so the copy waits for
//! every older store to reach the cache, the caller's cache-missing writes
//! into blocks included: the very wait the bias exists to avoid (measured:
//! about 60 ns of a 450 ns step at 100,000 live blocks). Inside `with`,
//! nothing is built but a reference that leaves the section on unwinding.
//!
//! Re-entry: a thread that locks again while it holds the lock (a signal
//! handler, or an allocator wrapper that calls back into the pool) gets
//! [`Reentered`] instead of a second `&mut`. The owner tests its own
//! `owner_inside` flag, a line it already holds; a thread on the slow path
//! tests `holder`, which only the mutex's holder writes. Under the models
//! and TSan the lock is a plain mutex, which deadlocks on re-entry instead.
//!
//! Fork: [`BiasedMutex::hold_for_fork`] excludes every thread, the owner
//! too, without giving up the bias for good: it takes the mutex and, if the
//! lock is still biased, revokes it for the duration of the fork, waiting
//! the owner out. The parent restores the bias. The child has one thread,
//! the one that forked, so the lock is biased to it afresh: no other thread
//! exists that could be inside, and a pre-fork server's single-threaded
//! children keep the owner's fast path.

#[cfg(not(any(lle_mempool_model, lle_mempool_tsan)))]
pub(crate) use biased::{BiasedMutex, ForkHold};
#[cfg(any(lle_mempool_model, lle_mempool_tsan))]
pub(crate) use plain::BiasedMutex;
#[cfg(all(lle_mempool_tsan, not(lle_mempool_model)))]
pub(crate) use plain::ForkHold;

/// The calling thread already holds the lock: entering again would make a
/// second `&mut` to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reentered;

#[cfg(not(any(lle_mempool_model, lle_mempool_tsan)))]
mod biased {
    use super::Reentered;
    use crate::identity::current_thread_serial;
    use crate::os;
    use crate::sync::{lock, Mutex, MutexGuard};
    use crossbeam_utils::Backoff;
    use std::cell::UnsafeCell;
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
        /// The `current_thread_serial` of the thread holding `mutex`, 0 when
        /// none does. Written only by that thread, under the mutex, so a
        /// thread that reads its own serial here holds the lock.
        holder: AtomicU64,
        mutex: Mutex<()>,
        value: UnsafeCell<T>,
    }

    // SAFETY: the value is only reached inside `with`, whose sections
    // exclude each other; the value moves between threads with it.
    unsafe impl<T: Send> Send for BiasedMutex<T> {}
    // SAFETY: as above: `&BiasedMutex` hands out `&mut T` to one thread at a
    // time, so `T: Send` suffices, as for `std::sync::Mutex`.
    unsafe impl<T: Send> Sync for BiasedMutex<T> {}

    /// The owner inside by its fast path; leaving (or unwinding) lets a
    /// revoker in.
    struct OwnerInside<'a, T>(&'a BiasedMutex<T>);

    impl<T> Drop for OwnerInside<'_, T> {
        fn drop(&mut self) {
            // Release: a revoker that sees `false` sees our writes.
            self.0.owner_inside.store(false, Ordering::Release);
        }
    }

    /// A thread inside through the mutex; cleared before the mutex unlocks.
    struct Holding<'a, T>(&'a BiasedMutex<T>);

    impl<T> Drop for Holding<'_, T> {
        fn drop(&mut self) {
            self.0.holder.store(0, Ordering::Relaxed);
        }
    }

    impl<T> BiasedMutex<T> {
        /// A lock biased to the calling thread, where the OS allows it.
        pub(crate) fn new(value: T) -> Self {
            let owner = if os::heavy_barrier_available() { current_thread_serial() } else { 0 };
            BiasedMutex {
                owner: AtomicU64::new(owner),
                owner_inside: AtomicBool::new(false),
                revoked: AtomicBool::new(owner == 0),
                holder: AtomicU64::new(0),
                mutex: Mutex::new(()),
                value: UnsafeCell::new(value),
            }
        }

        /// Runs `section` with the lock held, or refuses a thread that holds
        /// it already.
        #[inline]
        pub(crate) fn with<R>(&self, section: impl FnOnce(&mut T) -> R) -> Result<R, Reentered> {
            let owner = self.owner.load(Ordering::Relaxed);
            if owner != 0 && owner == current_thread_serial() {
                // Only the owner sets the flag, and only the holder of the
                // mutex writes `holder` (the owner holds it after a fork
                // restored its bias, see `with_mutex`): seeing either means
                // this thread is inside already.
                if self.owner_inside.load(Ordering::Relaxed) || self.holder.load(Ordering::Relaxed) == owner {
                    return Err(Reentered);
                }
                self.owner_inside.store(true, Ordering::Relaxed);
                // The owner's half of the handshake needs only the compiler
                // kept from reordering: the revoker's membarrier puts a full
                // fence into this thread wherever it is.
                compiler_fence(Ordering::SeqCst);
                if !self.revoked.load(Ordering::Relaxed) {
                    let _inside = OwnerInside(self);
                    // SAFETY: the handshake excludes every other section: a
                    // revoker that raised `revoked` before our store is seen
                    // above, and one after it waits for `owner_inside` to
                    // fall, which `_inside` does when the section ends.
                    return Ok(section(unsafe { &mut *self.value.get() }));
                }
                self.owner_inside.store(false, Ordering::Release);
            }
            self.with_mutex(section)
        }

        #[cold]
        fn with_mutex<R>(&self, section: impl FnOnce(&mut T) -> R) -> Result<R, Reentered> {
            let me = current_thread_serial();
            if me != 0 && self.holder.load(Ordering::Relaxed) == me {
                return Err(Reentered);
            }
            // Ignores poisoning, as every lock of the pool does (see
            // `sync::lock`).
            let _held = lock(&self.mutex);
            // The owner here holds the mutex, which every other thread
            // needs, and is not inside by the fast path (it is this
            // thread): it may enter without revoking its own bias.
            let is_owner = me != 0 && self.owner.load(Ordering::Relaxed) == me;
            if !self.revoked.load(Ordering::Relaxed) && !is_owner {
                self.revoked.store(true, Ordering::Relaxed);
                self.owner.store(0, Ordering::Relaxed);
                self.wait_owner_out();
            }
            self.holder.store(me, Ordering::Relaxed);
            // Declared after `_held`, so dropped (and `holder` cleared)
            // before the mutex unlocks.
            let _holding = Holding(self);
            // SAFETY: we hold the mutex, which every thread but a biased
            // owner needs, and the bias is revoked with the owner waited
            // out (or this thread is the owner): no other section runs.
            Ok(section(unsafe { &mut *self.value.get() }))
        }

        /// Called with the mutex held, after raising `revoked`: returns once
        /// the owner is out of its fast path and can no longer enter it.
        fn wait_owner_out(&self) {
            // After this every other thread has fenced: an owner that had
            // not stored `owner_inside` yet will see `revoked`.
            os::heavy_barrier();
            // Acquire: pairs with the owner's Release on leaving, so its
            // critical sections happen before ours.
            let backoff = Backoff::new();
            while self.owner_inside.load(Ordering::Acquire) {
                backoff.snooze();
            }
        }

        /// Excludes every thread, the owner too, until the hold is released
        /// by [`ForkHold::release_in_parent`] or
        /// [`ForkHold::release_in_child`]. The calling thread must not hold
        /// the lock.
        pub(crate) fn hold_for_fork(&self) -> ForkHold<'_, T> {
            let held = lock(&self.mutex);
            let was_biased = !self.revoked.load(Ordering::Relaxed);
            if was_biased {
                self.revoked.store(true, Ordering::Relaxed);
                // The owner forking is not inside: nothing to wait for.
                if self.owner.load(Ordering::Relaxed) != current_thread_serial() {
                    self.wait_owner_out();
                }
            }
            ForkHold { lock: self, held, was_biased }
        }
    }

    /// A lock held across a `fork()`: see [`BiasedMutex::hold_for_fork`].
    pub(crate) struct ForkHold<'a, T> {
        lock: &'a BiasedMutex<T>,
        held: MutexGuard<'a, ()>,
        /// The lock was biased before the fork, and is revoked only for it.
        was_biased: bool,
    }

    impl<T> ForkHold<'_, T> {
        /// In the parent: gives the bias back, if it had one, and unlocks.
        /// An owner that backed out to the mutex meanwhile finds itself the
        /// owner there and enters without revoking (see `with_mutex`).
        pub(crate) fn release_in_parent(self) {
            if self.was_biased {
                self.lock.revoked.store(false, Ordering::Relaxed);
            }
            drop(self.held);
        }

        /// In the child: biases the lock to the one thread there, the one
        /// that forked, and unlocks. No other thread exists, so none can be
        /// inside; the first thread the child starts revokes as usual.
        pub(crate) fn release_in_child(self) {
            let lock = self.lock;
            let owner = if os::heavy_barrier_available() { current_thread_serial() } else { 0 };
            lock.owner_inside.store(false, Ordering::Relaxed);
            lock.holder.store(0, Ordering::Relaxed);
            lock.owner.store(owner, Ordering::Relaxed);
            lock.revoked.store(owner == 0, Ordering::Relaxed);
            drop(self.held);
        }
    }
}

#[cfg(any(lle_mempool_model, lle_mempool_tsan))]
mod plain {
    use super::Reentered;
    #[cfg(not(lle_mempool_model))]
    use crate::sync::MutexGuard;
    use crate::sync::{lock, Mutex};

    /// Under the models and ThreadSanitizer: a plain mutex.
    pub(crate) struct BiasedMutex<T>(Mutex<T>);

    impl<T> BiasedMutex<T> {
        pub(crate) fn new(value: T) -> Self {
            BiasedMutex(Mutex::new(value))
        }

        /// Never refuses: a thread that locks again deadlocks, as on a
        /// `std` mutex (the models report it).
        pub(crate) fn with<R>(&self, section: impl FnOnce(&mut T) -> R) -> Result<R, Reentered> {
            Ok(section(&mut lock(&self.0)))
        }

        /// Holds the lock across a `fork()`.
        #[cfg(not(lle_mempool_model))]
        pub(crate) fn hold_for_fork(&self) -> ForkHold<'_, T> {
            ForkHold(lock(&self.0))
        }
    }

    /// A plain lock held across a `fork()`.
    #[cfg(not(lle_mempool_model))]
    pub(crate) struct ForkHold<'a, T>(MutexGuard<'a, T>);

    #[cfg(not(lle_mempool_model))]
    impl<T> ForkHold<'_, T> {
        pub(crate) fn release_in_parent(self) {
            drop(self.0);
        }

        /// The forking thread, the child's only one, unlocks its own lock.
        pub(crate) fn release_in_child(self) {
            drop(self.0);
        }
    }
}

#[cfg(all(test, not(any(lle_mempool_model, lle_mempool_tsan))))]
mod tests {
    use super::{BiasedMutex, Reentered};
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
                            lock.with(|value| *value += 1).unwrap();
                        }
                    })
                })
                .collect();
            start.wait();
            for _ in 0..ROUNDS {
                lock.with(|value| {
                    // A read, then a write a while later: the owner is
                    // inside nearly all the time, so the revocation lands
                    // mid-section, and a second thread let in meanwhile
                    // loses an increment.
                    let seen = *value;
                    for _ in 0..500 {
                        std::hint::spin_loop();
                    }
                    *value = std::hint::black_box(seen) + 1;
                })
                .unwrap();
            }
            for other in others {
                other.join().unwrap();
            }
            assert_eq!(
                lock.with(|value| *value).unwrap(),
                3 * ROUNDS,
                "an increment was lost: two threads held the lock"
            );
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
            lock.with(|values| values.push(value)).unwrap();
        }
        assert_eq!(lock.with(|values| values.len()).unwrap(), 1000);
        assert_eq!(lock.revoked.load(Ordering::Relaxed), !biased);
    }

    #[test]
    fn the_owner_locking_again_is_refused_not_given_a_second_reference() {
        let lock = BiasedMutex::new(0u64);
        lock.with(|value| {
            assert_eq!(lock.with(|_| ()), Err(Reentered), "a second entry on the thread that holds the lock");
            *value += 1;
        })
        .unwrap();
        lock.with(|value| *value += 1).unwrap();
        assert_eq!(lock.with(|value| *value).unwrap(), 2);
    }

    #[test]
    fn a_panicking_section_leaves_the_lock_free() {
        let lock = Arc::new(BiasedMutex::new(0u64));
        for thread in 0..2 {
            let lock = Arc::clone(&lock);
            // The owner's fast path first, then another thread's mutex path.
            let run = move || {
                let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    lock.with(|value| {
                        *value += 1;
                        panic!("inside the section");
                    })
                }));
                assert!(unwound.is_err());
                lock.with(|value| *value += 1).expect("the lock was left held");
            };
            if thread == 0 {
                run();
            } else {
                std::thread::spawn(run).join().unwrap();
            }
        }
        assert_eq!(lock.with(|value| *value).unwrap(), 4);
    }

    #[test]
    fn a_thread_holding_the_revoked_lock_locking_again_is_refused() {
        let lock = Arc::new(BiasedMutex::new(0u64));
        let other = Arc::clone(&lock);
        std::thread::spawn(move || {
            // Not the owner: takes the slow path (and revokes the bias).
            other
                .with(|value| {
                    assert_eq!(other.with(|_| ()), Err(Reentered), "a second entry on the thread that holds the lock");
                    *value += 1;
                })
                .unwrap();
        })
        .join()
        .unwrap();
        // The owner, now on the slow path too.
        lock.with(|value| {
            assert_eq!(lock.with(|_| ()), Err(Reentered), "a second entry on the owner after revocation");
            *value += 1;
        })
        .unwrap();
        assert_eq!(lock.with(|value| *value).unwrap(), 2);
    }

    #[test]
    fn a_fork_hold_excludes_everyone_and_the_parent_gets_its_bias_back() {
        let lock = Arc::new(BiasedMutex::new(0u64));
        let biased = !lock.revoked.load(Ordering::Relaxed);
        let other = Arc::clone(&lock);
        // Held by another thread than the owner, as a fork's prepare is.
        let hold = std::thread::spawn(move || {
            let hold = other.hold_for_fork();
            assert!(other.revoked.load(Ordering::Relaxed), "the owner could still enter by its fast path");
            hold.release_in_parent();
        });
        hold.join().unwrap();
        assert_eq!(lock.revoked.load(Ordering::Relaxed), !biased, "the parent's bias was not restored");
        lock.with(|value| *value += 1).unwrap();
        assert_eq!(lock.revoked.load(Ordering::Relaxed), !biased, "the owner revoked its own bias");
        assert_eq!(lock.with(|value| *value).unwrap(), 1);
    }

    #[test]
    fn the_owner_let_in_by_the_mutex_after_a_fork_locking_again_is_refused() {
        let lock = Arc::new(BiasedMutex::new(0u64));
        let other = Arc::clone(&lock);
        let held = Arc::new(Barrier::new(2));
        let holder_ready = Arc::clone(&held);
        let forker = std::thread::spawn(move || {
            let hold = other.hold_for_fork();
            holder_ready.wait();
            // Long enough for the owner to back out to the mutex, nearly
            // always; either way it must be refused below.
            std::thread::sleep(std::time::Duration::from_millis(50));
            hold.release_in_parent();
        });
        held.wait();
        // Sees the fork's revocation, waits on the mutex, and once the bias
        // is back enters through the mutex as its owner.
        lock.with(|value| {
            assert_eq!(lock.with(|_| ()), Err(Reentered), "a second entry on the owner");
            *value += 1;
        })
        .unwrap();
        forker.join().unwrap();
        assert_eq!(lock.with(|value| *value).unwrap(), 1);
    }
}
