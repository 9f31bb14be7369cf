//! Low memory: a soft limit on the bytes in use, callbacks told when it is
//! crossed, and one retry of an allocation the maximum size refuses.
//!
//! The soft limit costs the shared pool's allocation one comparison, made
//! under the pool's lock where `used` has just grown: an allocation crosses
//! the limit when `used` was at most the limit before it and is above it
//! after. That is exactly one report per crossing, with no state to keep:
//! the report re-arms by itself once frees bring `used` back to the limit
//! or below. The thread caches never touch it: they reach the shared pool
//! only for slabs, whose allocation is measured like any other.
//!
//! An allocation the maximum size refuses is retried once, above every
//! locked section of the shared pool (`SharedPool::refused`): the pool's
//! owner first gives back what the thread caches can spare (this thread's
//! remote frees, exited threads' slabs whose blocks came home), the shared
//! pool compacts, and the callbacks are told; whatever they free, the
//! retry can use. The statistics count the retries and those that
//! succeeded. A refusal costs the hot path nothing: the shared pool tested
//! its result for the refusal counter already.
//!
//! The callbacks run after the pool's lock is released, on the thread whose
//! allocation crossed the limit (or was refused), so they may free, allocate
//! or compact. Calls are made while holding the callback list's lock, which
//! makes [`MemoryPool::remove_memory_pressure_callback`] a barrier, as for
//! resize listeners. To keep that lock out of every cycle, events raised
//! while the thread is already delivering pressure events (of any pool),
//! or resize events, are not delivered: a callback's own allocations, and
//! a resize listener's, never wait for a callback list. The pool still
//! compacts and retries for them.
//!
//! [`MemoryPool::remove_memory_pressure_callback`]: crate::MemoryPool::remove_memory_pressure_callback

use crate::listeners;
use crate::stats::Counter;
#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::sync::{const_thread_local, lock, AtomicUsize, Mutex, Ordering};
use std::cell::Cell;

/// Names a registered memory-pressure callback, for removing it.
///
/// # Examples
///
/// ```
/// let pool = lle_mempool::MemoryPool::new(4096)?;
/// let id = pool.on_memory_pressure(|_| {});
/// assert!(pool.remove_memory_pressure_callback(id));
/// assert!(!pool.remove_memory_pressure_callback(id));
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PressureCallbackId(u64);

/// Why a memory-pressure callback is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PressureReason {
    /// An allocation took the bytes in use above the soft limit (see
    /// [`PoolConfig::soft_limit`](crate::PoolConfig::soft_limit)).
    SoftLimit,
    /// The maximum size refused an allocation of `requested` bytes. The
    /// pool has compacted and handed over this thread's remote frees; once
    /// the callbacks return it retries the allocation once.
    MaxSize {
        /// The bytes the refused allocation asked the shared pool for.
        requested: usize,
    },
}

/// What a memory-pressure callback is told.
///
/// # Examples
///
/// ```
/// use lle_mempool::{MemoryPool, PoolConfig, PressureReason};
/// use std::sync::{Arc, Mutex};
///
/// let pool = MemoryPool::with_config(PoolConfig::new(64 * 1024).soft_limit(1024))?;
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// pool.on_memory_pressure(move |event| log.lock().unwrap().push(*event));
/// let block = pool.allocate(2000)?;
/// let event = seen.lock().unwrap()[0];
/// assert_eq!((event.used, event.soft_limit, event.reason), (2000, Some(1024), PressureReason::SoftLimit));
/// # unsafe { pool.free(block)? };
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressureEvent {
    /// Bytes in use (as [`PoolStats::used`](crate::PoolStats::used)) when
    /// the callbacks are called.
    pub used: usize,
    /// The soft limit, if the pool has one.
    pub soft_limit: Option<usize>,
    /// The maximum size, if the pool has one.
    pub max_size: Option<usize>,
    /// What caused the call.
    pub reason: PressureReason,
}

type Callback = Box<dyn Fn(&PressureEvent) + Send + Sync>;

const_thread_local! {
    /// Whether this thread is calling memory-pressure callbacks now.
    static DELIVERING: Cell<bool> = Cell::new(false);
}

/// Clears [`DELIVERING`] when delivery ends, panicking or not.
struct Delivering;

impl Drop for Delivering {
    fn drop(&mut self) {
        let _ = DELIVERING.try_with(|delivering| delivering.set(false));
    }
}

/// Where a pool's soft limit and pressure callbacks live.
pub(crate) struct MemoryPressure {
    /// The least bytes in use above the soft limit: the limit plus one,
    /// or `usize::MAX`, which `used` never reaches, for none.
    first_over: AtomicUsize,
    callbacks: Mutex<CallbackList>,
    /// Allocations the maximum size refused, retried after relief.
    pub(crate) retries: Counter<u64>,
    /// Of those, the retries that succeeded.
    pub(crate) recoveries: Counter<u64>,
}

pub(crate) struct CallbackList {
    next_id: u64,
    entries: Vec<(PressureCallbackId, Callback)>,
    /// The callback set through the C API, which replaces its predecessor.
    #[cfg(feature = "capi")]
    replaceable: Option<PressureCallbackId>,
}

impl CallbackList {
    fn add(&mut self, callback: Callback) -> PressureCallbackId {
        let id = PressureCallbackId(self.next_id);
        self.next_id += 1;
        self.entries.push((id, callback));
        id
    }

    fn remove(&mut self, id: PressureCallbackId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(entry, _)| *entry != id);
        self.entries.len() != before
    }
}

impl MemoryPressure {
    pub(crate) fn new(soft_limit: Option<usize>) -> Self {
        MemoryPressure {
            first_over: AtomicUsize::new(Self::first_over_for(soft_limit)),
            callbacks: Mutex::new(CallbackList {
                next_id: 1,
                entries: Vec::new(),
                #[cfg(feature = "capi")]
                replaceable: None,
            }),
            retries: Counter::new(0),
            recoveries: Counter::new(0),
        }
    }

    fn first_over_for(soft_limit: Option<usize>) -> usize {
        soft_limit.map_or(usize::MAX, |limit| limit.saturating_add(1))
    }

    /// The soft limit; a limit of `usize::MAX - 1` or more, which `used`
    /// can never pass, reads as none.
    pub(crate) fn soft_limit(&self) -> Option<usize> {
        match self.first_over.load(Ordering::Relaxed) {
            usize::MAX => None,
            first_over => Some(first_over - 1),
        }
    }

    pub(crate) fn set_soft_limit(&self, soft_limit: Option<usize>) {
        self.first_over.store(Self::first_over_for(soft_limit), Ordering::Relaxed);
    }

    /// Whether growing the bytes in use by `added` (non-zero) to `used`
    /// crossed the soft limit: `used - added <= limit < used`. Below the
    /// limit, and with none, that is one comparison; the second is made
    /// above it only.
    #[inline(always)]
    pub(crate) fn crossed_by(&self, used: usize, added: usize) -> bool {
        debug_assert!(added > 0 && used >= added);
        let first_over = self.first_over.load(Ordering::Relaxed);
        used >= first_over && used - added < first_over
    }

    pub(crate) fn add(&self, callback: Callback) -> PressureCallbackId {
        lock(&self.callbacks).add(callback)
    }

    pub(crate) fn remove(&self, id: PressureCallbackId) -> bool {
        lock(&self.callbacks).remove(id)
    }

    /// Replaces the callback that the last call set (none, the first
    /// time) with `callback`, or with nothing: the C API's one callback
    /// per pool. A barrier, as [`remove`](Self::remove) is.
    #[cfg(feature = "capi")]
    pub(crate) fn replace(&self, callback: Option<Callback>) {
        let mut list = lock(&self.callbacks);
        if let Some(previous) = list.replaceable.take() {
            list.remove(previous);
        }
        list.replaceable = callback.map(|callback| list.add(callback));
    }

    pub(crate) fn count(&self) -> usize {
        lock(&self.callbacks).entries.len()
    }

    /// Holds the list across a `fork()`, so that no thread is changing it
    /// or calling callbacks at the fork.
    #[cfg(not(lle_mempool_model))]
    pub(crate) fn hold_for_fork(&self) -> MutexGuard<'_, CallbackList> {
        lock(&self.callbacks)
    }

    /// Calls every callback, in registration order, unless this thread is
    /// delivering pressure or resize events already (see the module docs).
    /// A callback that panics is skipped, not propagated, as resize
    /// listeners are.
    pub(crate) fn notify(&self, event: PressureEvent) {
        if DELIVERING.try_with(Cell::get).unwrap_or(true) || listeners::delivering_on_this_thread() {
            return;
        }
        let list = lock(&self.callbacks);
        let _ = DELIVERING.try_with(|delivering| delivering.set(true));
        let _delivering = Delivering;
        for (_, callback) in &list.entries {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&event)));
        }
    }
}
