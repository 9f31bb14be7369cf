//! Names the one condition the crate's code asks about its models.
//!
//! The models are chosen with `--cfg`: `lle_mempool_loom` (the loom models in
//! `loom/`) or `lle_mempool_shuttle` (tests/shuttle.rs). Each swaps every
//! primitive in `src/sync.rs`, and both need the same things elsewhere (heap
//! memory for mappings, smaller slabs, no SIMD, no process-wide statics), so
//! the code asks one question, `cfg(lle_mempool_model)`, set here when either
//! is on.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lle_mempool_model)");
    println!("cargo::rerun-if-changed=build.rs");
    let under_loom = std::env::var_os("CARGO_CFG_LLE_MEMPOOL_LOOM").is_some();
    let under_shuttle = std::env::var_os("CARGO_CFG_LLE_MEMPOOL_SHUTTLE").is_some();
    if under_loom || under_shuttle {
        println!("cargo::rustc-cfg=lle_mempool_model");
    }
}
