//! Thread-locals that start as all-zero bytes and are reached without a
//! call, in every kind of build.
//!
//! The fast paths read a thread-local on every call. Built into an
//! executable, `thread_local!` compiles to an offset from the thread
//! pointer. Built into a shared library (`cdylib`: the C API's
//! `liblle_mempool.so`, a preloaded drop-in malloc) it is the
//! general-dynamic TLS model: a call to `__tls_get_addr` per access, and,
//! even in a static library whose linker turns that call into two plain
//! instructions, registers saved around a call that is no longer there.
//! Stable Rust cannot ask for another model. On x86-64 Linux with glibc
//! (`cfg(lle_mempool_initial_exec_tls)`, set by `build.rs`) this module
//! declares the thread-local itself, in assembly, and reaches it with the
//! initial-exec model, as C allocators do with
//! `__attribute__((tls_model("initial-exec")))`: the thread pointer plus
//! an offset the dynamic linker fixes at load time. The cost is that a
//! library using it takes a little of the static TLS space glibc keeps for
//! libraries loaded later (`dlopen`); the pool's locals are a few hundred
//! bytes of the 1,664 or more reserved, and `dlopen` of such a library
//! fails ("cannot allocate memory in static TLS block") once that space is
//! used up.
//!
//! Elsewhere, and under the models (whose thread-locals are their own),
//! the same macro declares a `const`-initialised `thread_local!`.

/// Types whose all-zero bytes are a valid value: the one a thread starts
/// with.
///
/// # Safety
///
/// Every byte of the type may be zero, and the all-zero value must be the
/// value the thread-local is meant to start as.
pub(crate) unsafe trait Zeroable {}

// SAFETY: zero is a `u8`.
unsafe impl Zeroable for u8 {}

/// Declares `static NAME: Type;`, a thread-local that starts as all-zero
/// bytes (`Type: Zeroable`), accessed with `NAME.try_with(|value| ...)` as
/// a `thread_local!` is. It has no destructor, so `try_with` succeeds for
/// as long as the thread runs; the error is kept for the models, whose
/// thread-locals go away while a thread exits.
macro_rules! zeroed_thread_local {
    ($(#[$attribute:meta])* static $name:ident: $type:ty;) => {
        #[cfg(lle_mempool_initial_exec_tls)]
        core::arch::global_asm!(
            concat!(".pushsection .tbss.lle_mempool.", stringify!($name), ",\"awT\",@nobits"),
            ".globl {anchor}.tls",
            ".hidden {anchor}.tls",
            ".type {anchor}.tls,@object",
            ".size {anchor}.tls,{size}",
            ".balign {align}",
            "{anchor}.tls:",
            ".zero {size}",
            ".popsection",
            anchor = sym $name::ANCHOR,
            size = const core::mem::size_of::<$type>(),
            align = const core::mem::align_of::<$type>(),
        );

        // The variable's symbol is its anchor's name with `.tls` added: the
        // anchor is a static of this crate, whose mangled name no other
        // crate, nor another copy or version of this one, has. The function
        // that finds this thread's copy is a trait method of a type of its
        // own, so calls to it are static and inline; the module shares the
        // static's name (modules and values have separate namespaces) and
        // sees the caller's types through `super`.
        #[cfg(lle_mempool_initial_exec_tls)]
        #[allow(non_snake_case, unused_imports)]
        mod $name {
            use super::*;

            pub(super) struct Key;

            /// Names the variable's symbol; never read.
            pub(super) static ANCHOR: u8 = 0;

            // SAFETY: `address` returns this thread's copy of the variable
            // declared above, in `.tbss`, so zeroed when the thread starts.
            unsafe impl crate::sync::zeroed_local::InitialExecKey for Key {
                type Value = $type;

                #[inline(always)]
                fn address() -> *const $type {
                    const _: () = crate::sync::zeroed_local::assert_zeroable::<$type>();
                    let address: *const $type;
                    // SAFETY: reads the thread pointer's self-reference
                    // (the word at fs:0, which the x86-64 TLS ABI keeps
                    // there) and the GOT entry the dynamic linker filled
                    // with this variable's offset from it; no other state
                    // is touched. `pure, readonly`: the result is the same
                    // for the whole life of the thread.
                    unsafe {
                        core::arch::asm!(
                            "mov {address}, qword ptr fs:[0]",
                            "add {address}, qword ptr [rip + {anchor}.tls@GOTTPOFF]",
                            address = out(reg) address,
                            anchor = sym ANCHOR,
                            options(pure, readonly, nostack),
                        );
                    }
                    address
                }
            }
        }

        #[cfg(lle_mempool_initial_exec_tls)]
        $(#[$attribute])*
        static $name: crate::sync::zeroed_local::InitialExecLocal<$name::Key> =
            crate::sync::zeroed_local::InitialExecLocal::new();

        #[cfg(not(lle_mempool_initial_exec_tls))]
        crate::sync::const_thread_local! {
            $(#[$attribute])*
            static $name: $type = {
                const _: () = crate::sync::zeroed_local::assert_zeroable::<$type>();
                // SAFETY: the type is `Zeroable` (asserted above).
                unsafe { core::mem::zeroed() }
            };
        }
    };
}
pub(crate) use zeroed_thread_local;

/// Compiles only for `Zeroable` types.
pub(crate) const fn assert_zeroable<T: Zeroable>() {}

/// How an [`InitialExecLocal`] finds this thread's copy: a type per
/// variable, made by [`zeroed_thread_local!`].
///
/// # Safety
///
/// `address` must return the address of the calling thread's copy of a
/// variable of type `Value` that lives as long as the thread, started as
/// all-zero bytes, and is only ever read through shared references.
#[cfg(lle_mempool_initial_exec_tls)]
pub(crate) unsafe trait InitialExecKey {
    /// The variable's type.
    type Value: Zeroable + 'static;

    /// This thread's copy's address.
    fn address() -> *const Self::Value;
}

/// A thread-local declared in assembly (see the module docs), found
/// through `K`.
#[cfg(lle_mempool_initial_exec_tls)]
pub(crate) struct InitialExecLocal<K> {
    key: std::marker::PhantomData<fn() -> K>,
}

#[cfg(lle_mempool_initial_exec_tls)]
impl<K: InitialExecKey> InitialExecLocal<K> {
    pub(crate) const fn new() -> Self {
        InitialExecLocal { key: std::marker::PhantomData }
    }

    /// Runs `use_value` with this thread's value. Never fails: the
    /// variable lives as long as its thread and has no destructor.
    #[inline(always)]
    pub(crate) fn try_with<R>(
        &'static self,
        use_value: impl FnOnce(&K::Value) -> R,
    ) -> Result<R, std::convert::Infallible> {
        // SAFETY: the address is this thread's copy of the variable, which
        // lives until the thread is gone and started as all-zero bytes, a
        // valid value (`Zeroable`). Only shared references to it are made,
        // and none outlives the thread, since `use_value` runs on it now.
        Ok(use_value(unsafe { &*K::address() }))
    }
}
