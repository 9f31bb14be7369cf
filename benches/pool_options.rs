//! The pool options whose cost `fast_path.rs` and `shared_pool.rs` show,
//! one list for both: each runs as a peer named `lle_mempool_<option>`
//! beside the default pool.

use lle_mempool::PoolConfig;

/// Each option on its own over `base` (the bench's default configuration),
/// named as its peer.
pub fn option_configs(base: impl Fn() -> PoolConfig) -> [(&'static str, PoolConfig); 4] {
    [
        ("lle_mempool_checked", base().checked(true)),
        ("lle_mempool_track_callers", base().track_callers(true)),
        ("lle_mempool_zero_on_free", base().zero_on_free(true)),
        ("lle_mempool_huge_pages", base().huge_pages(true)),
    ]
}
