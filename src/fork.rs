//! Every pool stays usable in the child of a `fork()` taken at any moment
//! by any thread.
//!
//! The child of a multithreaded process has one thread, the one that
//! forked; a lock that another thread held at the fork would stay held
//! there forever. So, as glibc's malloc, jemalloc and mimalloc do, the
//! process gets `pthread_atfork` handlers (registered with the first pool)
//! and keeps a registry of live pools behind one lock:
//!
//! - **prepare** takes the registry's lock, then every lock of every pool,
//!   one kind after another across all pools, in the order in which the
//!   pool's own code nests them: the memory-pressure callbacks (a callback
//!   may call anything, resize listeners included, and a listener never
//!   waits for them: see `pressure`), the resize listeners (a listener may
//!   call anything), the cache registry (a retiring heap flushes into the other
//!   two), the abandoned slabs (reclaiming one frees it to the shared pool),
//!   a checked pool's table of shared blocks (a checked free frees to the
//!   shared pool under it), and the shared pool's biased lock, which
//!   excludes its owner too (see `biased_lock`). A pool that serves the
//!   global allocator comes after all others, since every other pool's
//!   code may allocate through it while holding its own locks. Nothing is
//!   allocated while prepare holds a lock: the room for the held locks is
//!   reserved when a pool registers.
//! - **parent** releases them, and gives the biased locks their bias back.
//! - **child** releases them, biasing each pool's lock to the surviving
//!   thread; a `GlobalPool` that another thread was creating goes back to
//!   uninitialised; then the heaps of the threads that did not survive are
//!   retired as at thread exit, so their slabs become reclaimable. That
//!   runs marked as inside the pool, so allocations it makes go to the
//!   system allocator rather than back into a pool it is tidying.
//!
//! The heaps of vanished threads: such a thread was not inside any of the
//! locks above (prepare waited for those), but it may have stopped at any
//! instruction of an operation on its own heap, which takes none: the fast
//! paths, a remote free into its batch, a refill, an emptied slab leaving
//! its ring. The child reads that heap as the thread left it, its stores in
//! program order up to where it stopped (the kernel stops a thread between
//! instructions; the compiler keeps the order where it matters through
//! `sync::compiler_fence`, which costs no instruction). So retiring it is
//! safe at any instruction because every part it reads is valid after
//! every prefix of the stores that change it:
//!
//! - the remote batch names its slab only once the chain it holds is whole,
//!   and stops naming it before handing the chain over (`remote_batch`);
//! - a slab's local list takes a block only once the block is linked to it,
//!   and its count of used blocks at worst counts one block too many (the
//!   slab then stays unreclaimed) or misses one that nobody holds;
//! - a ring, a spare or the owned-slab filter changes only on a slow path
//!   that marks its class as being edited first and unmarks it after the
//!   last store (`thread_cache::heap`): the child leaves a marked class's
//!   slabs owned by the heap, which it then leaks, and retires the rest;
//! - the heap's counters are atomics, and its place in the pool's list of
//!   heaps changes only under the registry's lock, which prepare holds.
//!
//! What a stopped thread was moving is thus leaked in the child (no thread
//! holds it any more) or left unreclaimed; nothing is handed out twice.
//!
//! Epoch reclamation: a thread pinned by one of the pool's lock-free
//! readers (`stats`, `check`, `contains`) at the fork stays pinned in the
//! child, where it cannot advance its epoch. That cannot deadlock (nothing
//! waits for the epoch to advance), but whatever the child retires later
//! (old region tables and descriptions, removed regions) is then held back
//! rather than freed: the child's pool keeps working and only leaks that.
//!
//! Limits: a fork racing with the creation of the process's very first
//! pool, before the handlers are registered, is not covered; nor is a fork
//! from a thread inside a pool operation (from a signal handler or a resize
//! listener), nor other `pthread_atfork` prepare handlers, registered
//! before the first pool, that allocate through a `GlobalPool`. Nor is a
//! thread created in the child that frees a block of a slab left with a
//! heap caught editing its class: it may get a vanished thread's stack,
//! and with it that thread's token (see `identity`), and take the slab for
//! its own.
//!
//! None of this touches the allocation and free paths: a pool registers
//! once, when it is made.

#[cfg(not(lle_mempool_model))]
pub(crate) use handlers::{claim_initialisation, finish_initialisation, register, serves_global_allocator, unregister};
#[cfg(lle_mempool_model)]
pub(crate) use models::{claim_initialisation, finish_initialisation, register, serves_global_allocator, unregister};

#[cfg(not(lle_mempool_model))]
mod handlers {
    use crate::biased_lock::ForkHold;
    use crate::error::PoolError;
    use crate::global::InsidePool;
    use crate::guard::SharedRecords;
    use crate::listeners::ListenerList;
    use crate::os;
    use crate::pressure::CallbackList;
    use crate::shared_pool::PoolState;
    use crate::sync::{const_thread_local, lock, Mutex, MutexGuard};
    use crate::thread_cache::{retire_heaps_of_vanished_threads, AbandonedHold, RegistryState};
    use crate::PoolInner;
    use std::cell::Cell;
    // Statics need const constructors, and a `GlobalPool`'s state is a std
    // atomic (see `global`): these are std's. The models never compile
    // this module.
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    /// Locks one pool holds, one kind per pool.
    const LOCKS_PER_POOL: usize = 6;

    struct Registry {
        pools: Vec<Entry>,
        /// `GlobalPool` states claimed for creation, with the value that
        /// means uninitialised: in the child, the claiming thread is gone.
        initialising: Vec<(*const AtomicU8, u8)>,
        /// The locks prepare took, in order; room for every registered
        /// pool's is reserved in advance, so prepare never allocates.
        held: Vec<HeldLock>,
    }

    #[derive(Clone, Copy)]
    struct Entry {
        pool: *const PoolInner,
        serves_global_allocator: bool,
    }

    /// A lock prepare took. The guards are never read, only dropped: that
    /// is what unlocks them.
    #[allow(dead_code)]
    enum HeldLock {
        Pressure(MutexGuard<'static, CallbackList>),
        Listeners(MutexGuard<'static, ListenerList>),
        Caches(MutexGuard<'static, RegistryState>),
        Abandoned(AbandonedHold<'static>),
        Guards(MutexGuard<'static, SharedRecords>),
        Shared(ForkHold<'static, PoolState>),
    }

    // SAFETY: the pool pointers are only dereferenced under the registry's
    // lock, while the pools are registered (a pool unregisters under the
    // lock before it is dropped). The held guards are made in prepare and
    // released in parent or child, all three run by the forking thread (in
    // the child, its copy), so no guard is released by another thread.
    unsafe impl Send for Registry {}

    static REGISTRY: Mutex<Registry> =
        Mutex::new(Registry { pools: Vec::new(), initialising: Vec::new(), held: Vec::new() });

    static HANDLERS_REGISTERED: AtomicBool = AtomicBool::new(false);

    const_thread_local! {
        /// The registry, locked by prepare, until parent or child.
        static HELD_REGISTRY: Cell<Option<MutexGuard<'static, Registry>>> = Cell::new(None);
    }

    fn register_handlers_once() {
        if HANDLERS_REGISTERED.swap(true, Ordering::AcqRel) {
            return;
        }
        // Settled before any fork can need it: a child must not find it
        // half-initialised by a thread that is gone.
        #[cfg(not(lle_mempool_tsan))]
        let _ = os::heavy_barrier_available();
        if !os::register_fork_handlers(prepare, parent, child) {
            // Out of memory in the C library: the next pool tries again.
            HANDLERS_REGISTERED.store(false, Ordering::Release);
        }
    }

    fn out_of_memory() -> PoolError {
        PoolError::OutOfMemory { requested: std::mem::size_of::<HeldLock>() * LOCKS_PER_POOL, errno: libc::ENOMEM }
    }

    /// Adds a new pool to the registry, which forks then keep consistent.
    pub(crate) fn register(pool: &PoolInner) -> Result<(), PoolError> {
        register_handlers_once();
        let mut registry = lock(&REGISTRY);
        let locks = (registry.pools.len() + 1) * LOCKS_PER_POOL;
        let reserve = locks.saturating_sub(registry.held.len());
        registry.pools.try_reserve(1).map_err(|_| out_of_memory())?;
        registry.held.try_reserve(reserve).map_err(|_| out_of_memory())?;
        registry.pools.push(Entry { pool, serves_global_allocator: false });
        Ok(())
    }

    /// Removes a pool about to be dropped.
    pub(crate) fn unregister(pool: &PoolInner) {
        let address: *const PoolInner = pool;
        lock(&REGISTRY).pools.retain(|entry| entry.pool != address);
    }

    /// Marks `pool` as the one a `GlobalPool` allocates from: its locks are
    /// taken after every other pool's.
    pub(crate) fn serves_global_allocator(pool: &PoolInner) {
        let address: *const PoolInner = pool;
        let mut registry = lock(&REGISTRY);
        if let Some(entry) = registry.pools.iter_mut().find(|entry| entry.pool == address) {
            entry.serves_global_allocator = true;
        }
    }

    /// Moves `state` from `uninitialised` to `initialising`; `false` if it
    /// was not uninitialised. Until [`finish_initialisation`], a child forked
    /// meanwhile finds `state` uninitialised again.
    pub(crate) fn claim_initialisation(state: &AtomicU8, uninitialised: u8, initialising: u8) -> bool {
        let mut registry = lock(&REGISTRY);
        // Without room to record the claim, the state is left alone: the
        // allocation that wanted the pool goes to the system allocator.
        if registry.initialising.try_reserve(1).is_err() {
            return false;
        }
        let claimed = state.compare_exchange(uninitialised, initialising, Ordering::Acquire, Ordering::Acquire).is_ok();
        if claimed {
            registry.initialising.push((state, uninitialised));
        }
        claimed
    }

    /// Stores the outcome of a creation claimed by [`claim_initialisation`].
    pub(crate) fn finish_initialisation(state: &AtomicU8, outcome: u8) {
        let address: *const AtomicU8 = state;
        let mut registry = lock(&REGISTRY);
        registry.initialising.retain(|&(claimed, _)| claimed != address);
        state.store(outcome, Ordering::Release);
    }

    /// Before `fork()`: takes every lock of every registered pool.
    unsafe extern "C" fn prepare() {
        // Touched first: its first use may allocate, which must not happen
        // with a pool's lock held.
        let _ = HELD_REGISTRY.try_with(|_| ());
        let mut registry = lock(&REGISTRY);
        for serves_global_allocator in [false, true] {
            for kind in 0..LOCKS_PER_POOL {
                for position in 0..registry.pools.len() {
                    let entry = registry.pools[position];
                    if entry.serves_global_allocator != serves_global_allocator {
                        continue;
                    }
                    // SAFETY: registered pools are alive while the registry
                    // is locked, and this lock is released (in parent or
                    // child) only after every guard below.
                    let pool: &'static PoolInner = unsafe { &*entry.pool };
                    let held = match kind {
                        0 => HeldLock::Pressure(pool.shared.pressure.hold_for_fork()),
                        1 => HeldLock::Listeners(pool.shared.listeners.hold_for_fork()),
                        2 => HeldLock::Caches(pool.caches.hold_registry_for_fork()),
                        3 => HeldLock::Abandoned(pool.caches.hold_abandoned_for_fork()),
                        // Before the shared pool's lock, which a checked
                        // free takes inside it.
                        4 => HeldLock::Guards(pool.guards.hold_for_fork()),
                        _ => HeldLock::Shared(pool.shared.hold_for_fork()),
                    };
                    debug_assert!(registry.held.len() < registry.held.capacity(), "prepare allocating");
                    registry.held.push(held);
                }
            }
        }
        let _ = HELD_REGISTRY.try_with(|held| held.set(Some(registry)));
    }

    /// Releases the locks prepare took, last first.
    fn release(registry: &mut Registry, in_child: bool) {
        while let Some(held) = registry.held.pop() {
            match held {
                HeldLock::Shared(hold) if in_child => hold.release_in_child(),
                HeldLock::Shared(hold) => hold.release_in_parent(),
                other => drop(other),
            }
        }
    }

    /// After `fork()`, in the parent.
    unsafe extern "C" fn parent() {
        let Some(mut registry) = HELD_REGISTRY.try_with(Cell::take).ok().flatten() else { return };
        release(&mut registry, false);
    }

    /// After `fork()`, in the child.
    unsafe extern "C" fn child() {
        let Some(mut registry) = HELD_REGISTRY.try_with(Cell::take).ok().flatten() else { return };
        release(&mut registry, true);
        for (state, uninitialised) in registry.initialising.drain(..) {
            // SAFETY: a claimed state stays alive until its claim finishes,
            // and that claim's thread does not exist here.
            unsafe { &*state }.store(uninitialised, Ordering::Release);
        }
        let _inside = InsidePool::enter();
        for position in 0..registry.pools.len() {
            // SAFETY: as in prepare: registered, and the registry is locked.
            retire_heaps_of_vanished_threads(unsafe { &*registry.pools[position].pool });
        }
    }
}

/// The models have no processes: nothing to register, and a plain
/// compare-and-swap claims a `GlobalPool`'s creation.
#[cfg(lle_mempool_model)]
mod models {
    use crate::error::PoolError;
    use crate::PoolInner;
    use std::sync::atomic::{AtomicU8, Ordering};

    pub(crate) fn register(_pool: &PoolInner) -> Result<(), PoolError> {
        Ok(())
    }

    pub(crate) fn unregister(_pool: &PoolInner) {}

    pub(crate) fn serves_global_allocator(_pool: &PoolInner) {}

    pub(crate) fn claim_initialisation(state: &AtomicU8, uninitialised: u8, initialising: u8) -> bool {
        state.compare_exchange(uninitialised, initialising, Ordering::Acquire, Ordering::Acquire).is_ok()
    }

    pub(crate) fn finish_initialisation(state: &AtomicU8, outcome: u8) {
        state.store(outcome, Ordering::Release);
    }
}
