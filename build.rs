//! Names the one condition the crate's code asks about its models.
//!
//! The models are chosen with `--cfg`: `lle_mempool_loom` (the loom models in
//! `loom/`) or `lle_mempool_shuttle` (tests/shuttle.rs). Each swaps every
//! primitive in `src/sync.rs`, and both need the same things elsewhere (heap
//! memory for mappings, smaller slabs, no SIMD, no process-wide statics), so
//! the code asks one question, `cfg(lle_mempool_model)`, set here when either
//! is on.
//!
//! It also names where the inline paths' thread-locals are declared by hand
//! and reached with the initial-exec TLS model (`src/sync/zeroed_local.rs`):
//! `cfg(lle_mempool_initial_exec_tls)`, on 64-bit x86 Linux with glibc, not
//! under a model or Miri. musl's `dlopen` refuses initial-exec references
//! into a library's own thread-locals, and x32's pointers are 32 bits.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lle_mempool_model)");
    println!("cargo::rerun-if-changed=build.rs");
    let under_loom = std::env::var_os("CARGO_CFG_LLE_MEMPOOL_LOOM").is_some();
    let under_shuttle = std::env::var_os("CARGO_CFG_LLE_MEMPOOL_SHUTTLE").is_some();
    if under_loom || under_shuttle {
        println!("cargo::rustc-cfg=lle_mempool_model");
    }
    println!("cargo::rustc-check-cfg=cfg(lle_mempool_initial_exec_tls)");
    let cfg = |name: &str| std::env::var(format!("CARGO_CFG_{name}")).unwrap_or_default();
    let initial_exec = cfg("TARGET_ARCH") == "x86_64"
        && cfg("TARGET_OS") == "linux"
        && cfg("TARGET_ENV") == "gnu"
        && cfg("TARGET_POINTER_WIDTH") == "64"
        && std::env::var_os("CARGO_CFG_MIRI").is_none()
        && !(under_loom || under_shuttle);
    if initial_exec {
        println!("cargo::rustc-cfg=lle_mempool_initial_exec_tls");
    }
}
