//! A thread's table of its heaps, one per pool it uses, and the guard that
//! retires them when the thread exits.
//!
//! The table is keyed by pool id, most recently used first, so the inline
//! fast paths find their heap with one comparison. It has no drop glue, so
//! the fast path reads it with a plain thread-local access, without the
//! "destroyed yet?" test that a thread-local with a destructor costs on
//! every access; retiring the heaps at thread exit is the job of a second
//! thread-local, [`ExitGuard`], made before the first heap.
//!
//! The table never evicts a heap that may be in use: a heap in use further
//! up the stack (a resize listener may allocate from another pool) must stay.
//! With every slot taken by a live pool's heap, a new pool gets no heap, and
//! callers fall back to paths that need none. Only a dropped pool's heap is
//! surely unused, and its slot is reused.

use super::heap::ThreadHeap;
use crate::sync::{const_thread_local, zeroed_thread_local, Zeroable};
use std::cell::Cell;
use std::ptr;

/// Pools one thread keeps heaps for at once.
pub(super) const HEAPS_PER_THREAD: usize = 8;
/// The key of an empty slot: pool ids count up from 1.
const EMPTY: u64 = 0;

/// What a table holds: heaps it is given when made, and retires.
pub(super) trait TableEntry {
    /// Whether the entry's pool has been dropped: the entry is then surely
    /// not in use, and may be retired to free its slot.
    fn pool_is_dropped(&self) -> bool;

    /// Ends the entry's life.
    ///
    /// # Safety
    /// `entry` was given to a table, is in none any more, and is not used
    /// afterwards.
    unsafe fn retire(entry: *mut Self);
}

/// Heaps by pool id, most recently used first.
pub(super) struct HeapTable<H: TableEntry> {
    keys: [Cell<u64>; HEAPS_PER_THREAD],
    heaps: [Cell<*mut H>; HEAPS_PER_THREAD],
}

impl<H: TableEntry> HeapTable<H> {
    /// An empty table; a thread's own starts as all-zero bytes, the same.
    #[cfg(all(test, not(lle_mempool_model)))]
    pub(super) const fn new() -> Self {
        HeapTable {
            keys: [const { Cell::new(EMPTY) }; HEAPS_PER_THREAD],
            heaps: [const { Cell::new(ptr::null_mut()) }; HEAPS_PER_THREAD],
        }
    }

    /// The most recently used heap, if it is keyed `key`.
    #[inline(always)]
    pub(super) fn front(&self, key: u64) -> Option<*mut H> {
        (self.keys[0].get() == key).then(|| self.heaps[0].get())
    }

    /// The heap keyed `key` (a pool id, never 0), moved to the front; made
    /// with `make` if there is none and `may_make` allows it. `None` when
    /// every slot holds a live pool's heap.
    #[inline]
    pub(super) fn get_or_insert(
        &self,
        key: u64,
        may_make: impl FnOnce() -> bool,
        make: impl FnOnce() -> *mut H,
    ) -> Option<*mut H> {
        if let Some(heap) = self.front(key) {
            return Some(heap);
        }
        self.get_or_insert_slow(key, may_make, make)
    }

    #[cold]
    fn get_or_insert_slow(
        &self,
        key: u64,
        may_make: impl FnOnce() -> bool,
        make: impl FnOnce() -> *mut H,
    ) -> Option<*mut H> {
        debug_assert_ne!(key, EMPTY);
        let slot = match self.slot_of(key) {
            Some(slot) => slot,
            None => {
                if !may_make() {
                    return None;
                }
                let slot = self.free_slot()?;
                self.keys[slot].set(key);
                self.heaps[slot].set(make());
                slot
            }
        };
        // Rotate the entry to the front, keeping the others' order.
        let (key, heap) = (self.keys[slot].get(), self.heaps[slot].get());
        for position in (1..=slot).rev() {
            self.keys[position].set(self.keys[position - 1].get());
            self.heaps[position].set(self.heaps[position - 1].get());
        }
        self.keys[0].set(key);
        self.heaps[0].set(heap);
        Some(heap)
    }

    /// The heap keyed `key`, wherever it is; the order stays.
    pub(super) fn get(&self, key: u64) -> Option<*mut H> {
        self.slot_of(key).map(|slot| self.heaps[slot].get())
    }

    /// Every heap in the table (null for empty slots).
    #[cfg(not(lle_mempool_model))]
    pub(super) fn heaps(&self) -> [*mut H; HEAPS_PER_THREAD] {
        std::array::from_fn(|slot| self.heaps[slot].get())
    }

    /// The slot keyed `key`, if any.
    fn slot_of(&self, key: u64) -> Option<usize> {
        (0..HEAPS_PER_THREAD).find(|&slot| self.keys[slot].get() == key)
    }

    /// An empty slot, or one freed by retiring the heap of a dropped pool.
    fn free_slot(&self) -> Option<usize> {
        if let Some(slot) = self.slot_of(EMPTY) {
            return Some(slot);
        }
        let slot = (0..HEAPS_PER_THREAD).find(|&slot| {
            // SAFETY: heaps in the table are alive until retired by it.
            unsafe { &*self.heaps[slot].get() }.pool_is_dropped()
        })?;
        let heap = self.heaps[slot].replace(ptr::null_mut());
        self.keys[slot].set(EMPTY);
        // SAFETY: out of the table now; its pool is gone, so nothing uses it.
        unsafe { H::retire(heap) };
        Some(slot)
    }

    /// Retires every heap in the table (at thread exit).
    pub(super) fn retire_all(&self) {
        for slot in 0..HEAPS_PER_THREAD {
            let heap = self.heaps[slot].replace(ptr::null_mut());
            self.keys[slot].set(EMPTY);
            if !heap.is_null() {
                // SAFETY: out of the table now, and the thread is exiting:
                // nothing uses its heaps any more.
                unsafe { H::retire(heap) };
            }
        }
    }
}

// Under the models a thread's locals are destroyed in an order that changes
// from one execution to the next, so the table may go before the guard;
// then the table retires its heaps itself. (Retiring twice is harmless: the
// first pass empties the table.)
#[cfg(lle_mempool_model)]
impl<H: TableEntry> Drop for HeapTable<H> {
    fn drop(&mut self) {
        self.retire_all();
    }
}

/// Made before a thread's first heap; its destructor retires the thread's
/// heaps.
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Fails only under the models, where the table may already be gone
        // and has then retired its heaps itself.
        let _ = THREAD_LOCALS.try_with(|locals| locals.heaps.retire_all());
    }
}

/// A thread's state that the inline fast paths read, in one thread-local,
/// whose address the compiler works out once for both fields.
struct ThreadLocals {
    heaps: HeapTable<ThreadHeap>,
    /// Whether the thread is inside an operation of a `GlobalPool`'s pool
    /// (see `global::InsidePool`), which a global allocator's inline path
    /// checks beside the table.
    inside_global_pool: Cell<bool>,
}

// SAFETY: zero bytes are empty slots (`EMPTY` keys, null heaps) and a
// clear flag: a thread's table and flag as it starts.
unsafe impl Zeroable for ThreadLocals {}
const _: () = assert!(EMPTY == 0, "a zeroed table's slots must be empty");

zeroed_thread_local! {
    static THREAD_LOCALS: ThreadLocals;
}

const_thread_local! {
    static EXIT_GUARD: ExitGuard = ExitGuard;
}

/// Runs `use_table` with this thread's table; `None` once the thread's
/// locals are being destroyed, which only the models' thread-locals are
/// (elsewhere the table has no destructor and lives as long as its thread).
#[inline(always)]
pub(super) fn with_thread_heaps<R>(use_table: impl FnOnce(&HeapTable<ThreadHeap>) -> R) -> Option<R> {
    THREAD_LOCALS.try_with(|locals| use_table(&locals.heaps)).ok()
}

/// Runs `use_flag` with this thread's inside-a-`GlobalPool` flag; `None`
/// once the thread's locals are being destroyed (under the models only, as
/// for `with_thread_heaps`).
#[inline(always)]
pub(crate) fn with_inside_global_pool<R>(use_flag: impl FnOnce(&Cell<bool>) -> R) -> Option<R> {
    THREAD_LOCALS.try_with(|locals| use_flag(&locals.inside_global_pool)).ok()
}

/// Arms the exit guard; `false` if the thread is too far into its exit for
/// that, when it must make no heap (none may outlive its thread unretired).
pub(super) fn arm_exit_guard() -> bool {
    EXIT_GUARD.try_with(|_| ()).is_ok()
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A heap that notes its retirement in a shared log.
    struct TestHeap {
        pool: u64,
        dropped_pools: Rc<RefCell<Vec<u64>>>,
        retired: Rc<RefCell<Vec<u64>>>,
    }

    impl TableEntry for TestHeap {
        fn pool_is_dropped(&self) -> bool {
            self.dropped_pools.borrow().contains(&self.pool)
        }

        unsafe fn retire(entry: *mut Self) {
            // SAFETY: made by `Harness::make` with `Box::into_raw`.
            let heap = unsafe { Box::from_raw(entry) };
            heap.retired.borrow_mut().push(heap.pool);
        }
    }

    #[derive(Default)]
    struct Harness {
        dropped_pools: Rc<RefCell<Vec<u64>>>,
        retired: Rc<RefCell<Vec<u64>>>,
    }

    impl Harness {
        fn make(&self, pool: u64) -> *mut TestHeap {
            Box::into_raw(Box::new(TestHeap {
                pool,
                dropped_pools: Rc::clone(&self.dropped_pools),
                retired: Rc::clone(&self.retired),
            }))
        }

        fn heap(&self, table: &HeapTable<TestHeap>, pool: u64) -> Option<u64> {
            // SAFETY: heaps in the table are alive.
            table.get_or_insert(pool, || true, || self.make(pool)).map(|heap| unsafe { (*heap).pool })
        }
    }

    fn keys(table: &HeapTable<TestHeap>) -> Vec<u64> {
        table.keys.iter().map(Cell::get).collect()
    }

    #[test]
    fn the_heap_used_last_is_in_front_and_the_others_keep_their_order() {
        let harness = Harness::default();
        let table = HeapTable::new();
        for pool in 1..=3 {
            assert_eq!(harness.heap(&table, pool), Some(pool));
        }
        assert_eq!(keys(&table)[..4], [3, 2, 1, EMPTY]);
        let second = table.front(3).unwrap();
        assert_eq!(harness.heap(&table, 1), Some(1), "found, not made again");
        assert_eq!(keys(&table)[..4], [1, 3, 2, EMPTY]);
        assert_eq!(table.front(3), None, "only the front entry answers `front`");
        assert_eq!(table.get(3), Some(second), "`get` finds it where it is");
        assert_eq!(keys(&table)[..3], [1, 3, 2], "and moves nothing");
        assert!(harness.retired.borrow().is_empty());
        table.retire_all();
        assert_eq!(*harness.retired.borrow(), [1, 3, 2]);
        assert!(keys(&table).iter().all(|&key| key == EMPTY));
    }

    #[test]
    fn a_full_table_makes_room_only_by_retiring_a_dropped_pools_heap() {
        let harness = Harness::default();
        let table = HeapTable::new();
        for pool in 1..=HEAPS_PER_THREAD as u64 {
            harness.heap(&table, pool).unwrap();
        }
        let newcomer = HEAPS_PER_THREAD as u64 + 1;
        assert_eq!(harness.heap(&table, newcomer), None, "every heap may be in use");
        assert!(harness.retired.borrow().is_empty());

        harness.dropped_pools.borrow_mut().push(3);
        assert_eq!(harness.heap(&table, newcomer), Some(newcomer));
        assert_eq!(*harness.retired.borrow(), [3], "the dropped pool's heap, and only it, was retired");
        assert_eq!(table.get(3), None);
        assert_eq!(keys(&table)[0], newcomer);
        table.retire_all();
    }

    #[test]
    fn nothing_is_made_where_making_is_not_allowed() {
        let harness = Harness::default();
        let table = HeapTable::new();
        assert_eq!(table.get_or_insert(5, || false, || panic!("made anyway")), None);
        assert_eq!(harness.heap(&table, 5), Some(5));
        let found = table.get_or_insert(5, || panic!("asked, though found"), || panic!("made again"));
        assert!(found.is_some());
        table.retire_all();
    }
}
