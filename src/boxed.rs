//! `PoolBox`: one owned value in pool memory.

use crate::{MemoryPool, PoolError};
use std::alloc::Layout;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};

/// A value of type `T` owned in a [`MemoryPool`], like a `Box` whose memory
/// is the pool's.
///
/// Made with [`MemoryPool::boxed`]. Small values live in the calling
/// thread's cache (the pool's fast path); zero-sized values take no memory;
/// values aligned beyond what a size class guarantees (16 bytes at most)
/// come from the shared pool, aligned as their type needs. Dropping the box
/// drops the value, then frees its block, on whatever thread that happens.
/// The `'pool` borrow keeps the pool alive meanwhile.
///
/// # Examples
///
/// ```
/// use lle_mempool::MemoryPool;
///
/// #[derive(Debug)]
/// struct Event {
///     key: u32,
///     text: [u8; 40],
/// }
///
/// let pool = MemoryPool::new(1 << 20)?;
/// let mut event = pool.boxed(Event { key: 7, text: [b'a'; 40] })?;
/// event.key += 1;
/// assert_eq!(event.key, 8);
/// assert!(pool.contains((&*event as *const Event).cast()));
/// drop(event);
/// assert_eq!(pool.stats().fast.frees, 1);
/// # Ok::<(), lle_mempool::PoolError>(())
/// ```
pub struct PoolBox<'pool, T> {
    value: NonNull<T>,
    pool: &'pool MemoryPool,
    /// The box owns a `T`: dropping it drops one (for the drop checker).
    _owns: PhantomData<T>,
}

// SAFETY: a PoolBox owns its T exclusively, so sending it sends the T; the
// pool it borrows is Sync, and its blocks may be freed from any thread.
unsafe impl<T: Send> Send for PoolBox<'_, T> {}
// SAFETY: shared access to a PoolBox is shared access to its T; the pool is
// Sync.
unsafe impl<T: Sync> Sync for PoolBox<'_, T> {}

impl MemoryPool {
    /// Moves `value` into the pool and returns the owning box: served by
    /// the fast path when `T` is at most 1 KiB and aligned to at most 16
    /// bytes, by the shared pool (aligned to `T`) otherwise, and by no
    /// memory at all when `T` is zero-sized.
    ///
    /// # Errors
    ///
    /// The pool's allocation errors ([`PoolError::ExceedsMaxSize`],
    /// [`PoolError::OutOfMemory`], ...); `value` is dropped then.
    ///
    /// # Examples
    ///
    /// ```
    /// #[repr(align(4096))]
    /// struct Page([u8; 4096]);
    ///
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// let page = pool.boxed(Page([1; 4096]))?;
    /// assert_eq!(&*page as *const Page as usize % 4096, 0);
    /// assert_eq!(page.0[4095], 1);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn boxed<T>(&self, value: T) -> Result<PoolBox<'_, T>, PoolError> {
        let layout = Layout::new::<T>();
        let memory = if layout.size() == 0 { NonNull::dangling() } else { self.allocate_layout(layout)?.0.cast::<T>() };
        // SAFETY: the block is fresh, aligned to and large enough for a T
        // (`allocate_layout`), or T is zero-sized and the pointer aligned.
        unsafe { memory.as_ptr().write(value) };
        Ok(PoolBox { value: memory, pool: self, _owns: PhantomData })
    }
}

impl<'pool, T> PoolBox<'pool, T> {
    /// The pool the value lives in.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// let number = pool.boxed(5u64)?;
    /// assert!(std::ptr::eq(lle_mempool::PoolBox::pool(&number), &pool));
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn pool(this: &Self) -> &'pool MemoryPool {
        this.pool
    }

    /// Moves the value out of the pool and frees its block.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// let name = pool.boxed(String::from("event"))?;
    /// let name: String = lle_mempool::PoolBox::into_inner(name);
    /// assert_eq!(name, "event");
    /// assert_eq!(pool.stats().fast.frees, 1);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn into_inner(this: Self) -> T {
        let this = ManuallyDrop::new(this);
        // SAFETY: the box owns an initialised T; `this` is not dropped, so
        // the value is read out exactly once, and its block freed once.
        unsafe {
            let value = this.value.as_ptr().read();
            this.free_block();
            value
        }
    }

    /// Gives up the box without dropping the value or freeing its block,
    /// and returns the value's address. [`from_raw`](Self::from_raw) with
    /// the same pool makes it a box again.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::PoolBox;
    ///
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// let raw = PoolBox::into_raw(pool.boxed([3u32; 8])?);
    /// // The pointer can cross an FFI boundary or an intrusive list here.
    /// let back = unsafe { PoolBox::from_raw(&pool, raw) };
    /// assert_eq!(*back, [3; 8]);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub fn into_raw(this: Self) -> NonNull<T> {
        ManuallyDrop::new(this).value
    }

    /// Takes back ownership of a value given up by
    /// [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// `raw` must come from `PoolBox::into_raw` of a box of `pool` holding
    /// a `T`, and be taken back only once.
    ///
    /// # Examples
    ///
    /// ```
    /// use lle_mempool::PoolBox;
    ///
    /// let pool = lle_mempool::MemoryPool::new(1 << 20)?;
    /// let raw = PoolBox::into_raw(pool.boxed(String::from("kept"))?);
    /// let back = unsafe { PoolBox::from_raw(&pool, raw) };
    /// assert_eq!(back.as_str(), "kept");
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    pub unsafe fn from_raw(pool: &'pool MemoryPool, raw: NonNull<T>) -> Self {
        PoolBox { value: raw, pool, _owns: PhantomData }
    }

    /// Frees the block, whose value has been dropped or moved out.
    ///
    /// # Safety
    /// Called once, after which the box is not used or dropped.
    unsafe fn free_block(&self) {
        if mem::size_of::<T>() == 0 {
            return;
        }
        // SAFETY: the block came from this pool and is live; the caller
        // makes this the last use of it.
        let freed = unsafe { self.pool.free_fast(self.value.cast::<u8>()) };
        debug_assert!(freed.is_ok(), "a PoolBox's block was not live: {freed:?}");
    }
}

impl<T> Deref for PoolBox<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the box owns an initialised T, borrowed along with it.
        unsafe { self.value.as_ref() }
    }
}

impl<T> DerefMut for PoolBox<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, exclusively.
        unsafe { self.value.as_mut() }
    }
}

impl<T> Drop for PoolBox<'_, T> {
    fn drop(&mut self) {
        // Frees the block even if T's destructor panics.
        struct FreeOnExit<'a, 'pool, T>(&'a PoolBox<'pool, T>);
        impl<T> Drop for FreeOnExit<'_, '_, T> {
            fn drop(&mut self) {
                // SAFETY: runs once, as the box is dropped.
                unsafe { self.0.free_block() };
            }
        }
        let free_on_exit = FreeOnExit(self);
        // SAFETY: the box owns an initialised T and is being dropped, so it
        // is dropped exactly once and never read again.
        unsafe { ptr::drop_in_place(free_on_exit.0.value.as_ptr()) };
    }
}

impl<T: fmt::Debug> fmt::Debug for PoolBox<'_, T> {
    /// Formats the value, as `Box` does.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = lle_mempool::MemoryPool::new(4096)?;
    /// assert_eq!(format!("{:?}", pool.boxed((1, "two"))?), r#"(1, "two")"#);
    /// # Ok::<(), lle_mempool::PoolError>(())
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
