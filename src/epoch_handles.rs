//! Epoch handles kept by a pool for its lock-free readers.
//!
//! A reader of the shared pool (`stats`, `check`) pins an epoch on the
//! pool's own collector while it looks at region tables and indexes.
//! Registering a handle for that allocates a participant and links it into
//! the collector's list, which costs far more than the reading; pinning a
//! registered handle costs one fence. So the pool keeps a few registered
//! handles in slots and lends them out: a reader takes one with a swap, pins
//! it as often as it needs, and puts it back with a compare-and-swap. When
//! every slot is empty (more readers at once than slots) the reader
//! registers a fresh handle and keeps it in a slot if one has emptied since.
//!
//! The handles belong to the pool, not to threads: they are dropped with the
//! pool, so a dropped pool leaves no participant behind on a thread that
//! used it, and its collector frees everything still deferred (tables,
//! descriptions, regions to unmap) as the pool is dropped. Nothing here touches a thread-local, so a pool used as
//! the global allocator does not depend on thread-exit order either.

use crate::sync::{AtomicPtr, Ordering};
use crossbeam_epoch::{Collector, LocalHandle};
use std::ptr;

/// Handles a pool keeps: as many readers as this run at once without
/// registering. Under the models one slot is enough and keeps the explored
/// interleavings few, while still letting two readers miss a slot.
const SLOTS: usize = if cfg!(lle_mempool_model) { 1 } else { 8 };

pub(crate) struct EpochHandles {
    /// Each slot is null or owns a boxed handle of the pool's collector that
    /// no thread is using.
    slots: [AtomicPtr<LocalHandle>; SLOTS],
}

impl EpochHandles {
    pub(crate) fn new() -> Self {
        EpochHandles { slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())) }
    }

    /// Runs `read` with a handle of `collector`, the collector of the pool
    /// that owns `self`, and returns its result. Lock-free: it never waits
    /// for another reader.
    pub(crate) fn with_handle<T>(&self, collector: &Collector, read: impl FnOnce(&LocalHandle) -> T) -> T {
        let handle = self.take().unwrap_or_else(|| Box::new(collector.register()));
        debug_assert!(handle.collector() == collector, "a handle of another collector");
        let value = read(&handle);
        self.put_back(handle);
        value
    }

    /// Takes a kept handle, if a slot holds one.
    fn take(&self) -> Option<Box<LocalHandle>> {
        self.slots.iter().find_map(|slot| {
            if slot.load(Ordering::Relaxed).is_null() {
                return None;
            }
            // Acquire: the uses by the thread that put the handle back
            // happen before ours.
            let handle = slot.swap(ptr::null_mut(), Ordering::Acquire);
            // SAFETY: a non-null slot owns a handle made by `Box::into_raw`
            // in `put_back`, and the swap moved that ownership to us alone.
            // A `LocalHandle` is not `Send` because its participant keeps
            // its pin count and garbage bag in unsynchronised cells: two
            // threads must never use one at once, and each use must see the
            // previous one. Only the thread that empties a slot uses the
            // handle until it puts it back, and the Release there with the
            // Acquire here orders each use before the next; every guard
            // pinned on the handle is dropped by the thread that pinned it,
            // inside `read`, before the handle is put back.
            (!handle.is_null()).then(|| unsafe { Box::from_raw(handle) })
        })
    }

    /// Keeps `handle` in an empty slot, or drops it when none is empty.
    fn put_back(&self, handle: Box<LocalHandle>) {
        let handle = Box::into_raw(handle);
        // Release: our uses of the handle happen before the next taker's.
        let kept = self
            .slots
            .iter()
            .any(|slot| slot.compare_exchange(ptr::null_mut(), handle, Ordering::Release, Ordering::Relaxed).is_ok());
        if !kept {
            // SAFETY: no slot took it, so `handle` is still ours alone, from
            // the `Box::into_raw` above.
            drop(unsafe { Box::from_raw(handle) });
        }
    }

    /// Handles in the slots now. For the unit tests.
    #[cfg(all(test, not(lle_mempool_model)))]
    fn kept(&self) -> usize {
        self.slots.iter().filter(|slot| !slot.load(Ordering::Relaxed).is_null()).count()
    }
}

impl Drop for EpochHandles {
    fn drop(&mut self) {
        for slot in &self.slots {
            let handle = slot.swap(ptr::null_mut(), Ordering::Acquire);
            if !handle.is_null() {
                // SAFETY: as in `take`: the slot owned the handle, and with
                // `&mut self` no reader is using any.
                drop(unsafe { Box::from_raw(handle) });
            }
        }
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use crossbeam_epoch::Owned;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn a_reader_reuses_the_kept_handle() {
        let collector = Collector::new();
        let handles = EpochHandles::new();
        let first = handles.with_handle(&collector, |handle| handle as *const LocalHandle as usize);
        assert_eq!(handles.kept(), 1);
        for _ in 0..100 {
            let again = handles.with_handle(&collector, |handle| {
                let _guard = handle.pin();
                handle as *const LocalHandle as usize
            });
            assert_eq!(again, first, "a new handle was registered though one was kept");
        }
        assert_eq!(handles.kept(), 1);
    }

    #[test]
    fn readers_beyond_the_slots_register_and_keep_at_most_the_slots() {
        let collector = Collector::new();
        let handles = EpochHandles::new();
        // Nested readers each need a handle of their own while the outer
        // ones hold theirs.
        fn nest(handles: &EpochHandles, collector: &Collector, depth: usize, seen: &mut Vec<usize>) {
            if depth == 0 {
                return;
            }
            handles.with_handle(collector, |handle| {
                let _guard = handle.pin();
                seen.push(handle as *const LocalHandle as usize);
                nest(handles, collector, depth - 1, seen);
            });
        }
        let mut seen = Vec::new();
        nest(&handles, &collector, SLOTS + 3, &mut seen);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), SLOTS + 3, "nested readers shared a handle");
        assert_eq!(handles.kept(), SLOTS);
    }

    #[test]
    fn handles_are_shared_between_threads_and_garbage_is_freed_with_them() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let collector = Collector::new();
        let handles = EpochHandles::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        handles.with_handle(&collector, |handle| {
                            let guard = handle.pin();
                            let garbage = Owned::new(Counted(Arc::clone(&dropped))).into_shared(&guard);
                            // SAFETY: never shared: nobody else can reach it.
                            unsafe { guard.defer_destroy(garbage) };
                        });
                    }
                });
            }
        });
        assert!(handles.kept() >= 1 && handles.kept() <= SLOTS);
        // The kept handles keep the collector alive; dropping them and the
        // collector runs everything still deferred.
        drop(handles);
        drop(collector);
        assert_eq!(dropped.load(Ordering::Relaxed), 4000);
    }
}
