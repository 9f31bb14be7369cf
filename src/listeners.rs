//! Resize listeners: user callbacks told about every change of a pool's size.
//!
//! Listeners are called after the pool's own lock is released, so a
//! listener may call any of the pool's methods that do not add or remove
//! listeners (`size`, `stats`, `check`, even `allocate` or
//! `expand`). Calls are made while holding the listener list's lock, which
//! is what makes [`MemoryPool::remove_resize_listener`] a barrier: once it
//! returns, the listener is not running and will not run again. The price
//! is that a listener must not add or remove listeners itself. A listener
//! that changes the pool's size raises an event while its own thread holds
//! that lock; the event is queued on the thread and delivered, in order,
//! once every listener has seen the current one.
//!
//! [`MemoryPool::remove_resize_listener`]: crate::MemoryPool::remove_resize_listener

#[cfg(not(lle_mempool_model))]
use crate::sync::MutexGuard;
use crate::sync::{const_thread_local, lock, Mutex};
use std::cell::RefCell;

/// Names a registered resize listener, for removing it.
///
/// # Examples
///
/// ```
/// let pool = lle_mempool::MemoryPool::new(4096)?;
/// let id = pool.on_resize(|_| {});
/// assert!(pool.remove_resize_listener(id));
/// assert!(!pool.remove_resize_listener(id));
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// Why a pool changed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResizeReason {
    /// [`MemoryPool::expand`](crate::MemoryPool::expand) was called.
    Expand,
    /// An allocation found no room and the pool grew by its growth factor.
    AutoExpand,
    /// [`MemoryPool::compact`](crate::MemoryPool::compact) gave memory back.
    Compact,
    /// [`MemoryPool::resize`](crate::MemoryPool::resize) was called.
    Resize,
}

/// What a resize listener is told.
///
/// # Examples
///
/// ```
/// use lle_mempool::{MemoryPool, ResizeReason};
/// use std::sync::{Arc, Mutex};
///
/// let pool = MemoryPool::new(4096)?;
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// pool.on_resize(move |event| log.lock().unwrap().push(*event));
/// pool.expand(4096)?;
/// let events = seen.lock().unwrap();
/// assert_eq!((events[0].old_size, events[0].new_size, events[0].reason), (4096, 8192, ResizeReason::Expand));
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeEvent {
    /// The pool's size before, in bytes.
    pub old_size: usize,
    /// The pool's size after, in bytes.
    pub new_size: usize,
    /// What caused it.
    pub reason: ResizeReason,
}

type Listener = Box<dyn Fn(&ResizeEvent) + Send + Sync>;

const_thread_local! {
    /// The listener lists this thread is delivering to (by address), each
    /// with the events its listeners raised meanwhile, still to deliver.
    static DELIVERING: RefCell<Vec<(usize, Vec<ResizeEvent>)>> = RefCell::new(Vec::new());
}

pub(crate) struct Listeners {
    list: Mutex<ListenerList>,
}

pub(crate) struct ListenerList {
    next_id: u64,
    entries: Vec<(ListenerId, Listener)>,
}

/// Whether this thread is calling resize listeners now, of any pool.
pub(crate) fn delivering_on_this_thread() -> bool {
    DELIVERING.try_with(|delivering| !delivering.borrow().is_empty()).unwrap_or(false)
}

impl Listeners {
    pub(crate) fn new() -> Self {
        Listeners { list: Mutex::new(ListenerList { next_id: 1, entries: Vec::new() }) }
    }

    pub(crate) fn add(&self, listener: Listener) -> ListenerId {
        let mut list = lock(&self.list);
        let id = ListenerId(list.next_id);
        list.next_id += 1;
        list.entries.push((id, listener));
        id
    }

    pub(crate) fn remove(&self, id: ListenerId) -> bool {
        let mut list = lock(&self.list);
        let before = list.entries.len();
        list.entries.retain(|(entry, _)| *entry != id);
        list.entries.len() != before
    }

    #[cfg(not(lle_mempool_model))]
    /// Holds the list across a `fork()`, so that no thread is changing it
    /// or calling listeners at the fork.
    pub(crate) fn hold_for_fork(&self) -> MutexGuard<'_, ListenerList> {
        lock(&self.list)
    }

    pub(crate) fn count(&self) -> usize {
        lock(&self.list).entries.len()
    }

    /// Tells every listener, in registration order. A listener that panics
    /// is skipped, not propagated: the resize it reports has happened and
    /// the pool is consistent, so the caller's operation still succeeded.
    pub(crate) fn notify(&self, event: ResizeEvent) {
        if event.old_size == event.new_size {
            return;
        }
        let key = self as *const Listeners as usize;
        // Raised by one of our own listeners: this thread holds the list, so
        // locking it again would deadlock. The outer call delivers it.
        let queued = DELIVERING.try_with(|delivering| {
            let mut delivering = delivering.borrow_mut();
            let entry = delivering.iter_mut().find(|(list, _)| *list == key);
            entry.map(|(_, pending)| pending.push(event)).is_some()
        });
        if matches!(queued, Ok(true)) {
            return;
        }
        let list = lock(&self.list);
        let _ = DELIVERING.try_with(|delivering| delivering.borrow_mut().push((key, Vec::new())));
        let mut next = Some(event);
        while let Some(event) = next {
            for (_, listener) in &list.entries {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(&event)));
            }
            next = DELIVERING
                .try_with(|delivering| {
                    let mut delivering = delivering.borrow_mut();
                    let (_, pending) = delivering.iter_mut().rfind(|(list, _)| *list == key)?;
                    (!pending.is_empty()).then(|| pending.remove(0))
                })
                .ok()
                .flatten();
        }
        let _ = DELIVERING.try_with(|delivering| {
            let mut delivering = delivering.borrow_mut();
            if let Some(position) = delivering.iter().rposition(|(list, _)| *list == key) {
                delivering.remove(position);
            }
        });
    }
}
