//! From any address to the slab that holds it, without locks or epochs.
//!
//! Slabs are aligned to their size, so `addr >> SLAB_SHIFT` names the only
//! slab that could hold `addr`. A two-level radix table (tcmalloc's page
//! map) turns that number into the slab's header, or null when the memory
//! there is not a slab of this pool: that is how the fast path rejects
//! foreign pointers without reading memory it does not own. Leaves are
//! installed with a compare-and-swap and live until the pool is dropped, so
//! a lookup needs no guard; zeroed allocations keep the untouched parts of
//! the table from ever becoming resident.

use crate::slab::{Slab, SLAB_SHIFT};

pub(crate) use imp::SlabMap;

#[cfg(not(any(lle_mempool_loom, feature = "shuttle")))]
mod imp {
    use super::{Slab, SLAB_SHIFT};
    use crate::error::PoolError;
    use crate::fallible::out_of_memory;
    use crate::sync::{AtomicPtr, Ordering};
    use std::alloc::Layout;
    use std::ptr;

    /// User-space addresses on the platforms we support fit in 48 bits.
    const ADDRESS_BITS: u32 = 48;
    const INDEX_BITS: u32 = ADDRESS_BITS - SLAB_SHIFT;
    const LEAF_BITS: u32 = INDEX_BITS / 2;
    const ROOT_LEN: usize = 1 << (INDEX_BITS - LEAF_BITS);
    const LEAF_LEN: usize = 1 << LEAF_BITS;

    type Leaf = [AtomicPtr<Slab>; LEAF_LEN];

    pub(crate) struct SlabMap {
        root: *mut AtomicPtr<Leaf>,
    }

    // SAFETY: the table is made of atomics; the raw pointers are owned.
    unsafe impl Send for SlabMap {}
    // SAFETY: as above.
    unsafe impl Sync for SlabMap {}

    fn root_layout() -> Layout {
        Layout::array::<AtomicPtr<Leaf>>(ROOT_LEN).expect("root table layout")
    }

    impl SlabMap {
        pub(crate) fn new() -> Result<Self, PoolError> {
            // SAFETY: non-zero size; all-zero bytes are valid null AtomicPtrs.
            let root = unsafe { std::alloc::alloc_zeroed(root_layout()) }.cast::<AtomicPtr<Leaf>>();
            if root.is_null() {
                return Err(out_of_memory(root_layout().size()));
            }
            Ok(SlabMap { root })
        }

        fn root_entry(&self, index: usize) -> &AtomicPtr<Leaf> {
            debug_assert!(index < ROOT_LEN);
            // SAFETY: index < ROOT_LEN, and the root lives as long as self.
            unsafe { &*self.root.add(index) }
        }

        /// The slab holding `addr`, or null.
        #[inline]
        pub(crate) fn lookup(&self, addr: usize) -> *mut Slab {
            let index = addr >> SLAB_SHIFT;
            if index >> INDEX_BITS != 0 {
                return ptr::null_mut();
            }
            // Acquire pairs with `register`: a found slab's header is initialised.
            let leaf = self.root_entry(index >> LEAF_BITS).load(Ordering::Acquire);
            if leaf.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: leaves live until the map is dropped.
            unsafe { (*leaf)[index & (LEAF_LEN - 1)].load(Ordering::Acquire) }
        }

        /// The entry for `addr`, installing its leaf if need be; fails when
        /// the heap refuses the leaf.
        fn slot(&self, addr: usize) -> Result<&AtomicPtr<Slab>, PoolError> {
            let index = addr >> SLAB_SHIFT;
            assert!(index >> INDEX_BITS == 0, "pool memory above the 48-bit address space");
            let entry = self.root_entry(index >> LEAF_BITS);
            let mut leaf = entry.load(Ordering::Acquire);
            if leaf.is_null() {
                let layout = Layout::new::<Leaf>();
                // SAFETY: non-zero size; zero bytes are null AtomicPtrs.
                let fresh = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Leaf>();
                if fresh.is_null() {
                    return Err(out_of_memory(layout.size()));
                }
                leaf = match entry.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => fresh,
                    Err(installed) => {
                        // SAFETY: ours, never shared.
                        unsafe { std::alloc::dealloc(fresh.cast(), layout) };
                        installed
                    }
                };
            }
            // SAFETY: leaves live until the map is dropped.
            Ok(unsafe { &(*leaf)[index & (LEAF_LEN - 1)] })
        }

        pub(crate) fn register(&self, slab: *mut Slab) -> Result<(), PoolError> {
            // Release: the header written before this is visible to lookups.
            self.slot(slab as usize)?.store(slab, Ordering::Release);
            Ok(())
        }

        pub(crate) fn unregister(&self, slab: *mut Slab) {
            // A registered slab's leaf is installed, so this allocates nothing.
            let slot = self.slot(slab as usize);
            debug_assert!(slot.is_ok(), "unregistering a slab that was never registered");
            if let Ok(slot) = slot {
                slot.store(ptr::null_mut(), Ordering::Release);
            }
        }
    }

    impl Drop for SlabMap {
        fn drop(&mut self) {
            for index in 0..ROOT_LEN {
                let leaf = self.root_entry(index).load(Ordering::Relaxed);
                if !leaf.is_null() {
                    // SAFETY: allocated in `slot` with this layout.
                    unsafe { std::alloc::dealloc(leaf.cast(), Layout::new::<Leaf>()) };
                }
            }
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.root.cast(), root_layout()) };
        }
    }
}

/// Under the models: a locked list, which loom and shuttle can explore
/// (their atomics cannot live in zeroed memory, and a radix table of them
/// would dwarf the model).
#[cfg(any(lle_mempool_loom, feature = "shuttle"))]
mod imp {
    use super::{Slab, SLAB_SHIFT};
    use crate::error::PoolError;
    use crate::sync::{lock, Mutex};

    pub(crate) struct SlabMap {
        slabs: Mutex<Vec<usize>>,
    }

    impl SlabMap {
        pub(crate) fn new() -> Result<Self, PoolError> {
            Ok(SlabMap { slabs: Mutex::new(Vec::new()) })
        }

        pub(crate) fn lookup(&self, addr: usize) -> *mut Slab {
            let base = addr >> SLAB_SHIFT << SLAB_SHIFT;
            if lock(&self.slabs).contains(&base) {
                base as *mut Slab
            } else {
                std::ptr::null_mut()
            }
        }

        pub(crate) fn register(&self, slab: *mut Slab) -> Result<(), PoolError> {
            lock(&self.slabs).push(slab as usize);
            Ok(())
        }

        pub(crate) fn unregister(&self, slab: *mut Slab) {
            lock(&self.slabs).retain(|&base| base != slab as usize);
        }
    }
}
