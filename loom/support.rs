//! Shared by the loom models: how they are run.
//!
//! Included with `#[path]` by each model file, which is its own test crate;
//! not every model uses every helper.
#![allow(dead_code)]

/// Scheduling and load decisions allowed in one execution. Loom's default
/// (1,000) is sized for hand-written lock-free structures; one pool call
/// makes hundreds (every word of the free-block index is an atomic, and
/// crossbeam-epoch pins are modelled too). The bound only stops runaway
/// executions; it does not widen the search.
const DEFAULT_MAX_BRANCHES: usize = 1_000_000;

/// Runs `body` under loom: every interleaving of its threads with at most
/// `preemption_bound` preemptions is explored, and any assertion failure,
/// deadlock, causality violation or leak fails the test.
///
/// Each model picks its bound: 3 where the whole run stays within a couple
/// of minutes on the CI machine, else 2. `LOOM_MAX_PREEMPTIONS`, when set,
/// overrides it (for a quick pass, or a deeper one).
pub fn model<F>(preemption_bound: usize, body: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&executions);
    let started = std::time::Instant::now();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemption_bound);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = DEFAULT_MAX_BRANCHES;
    }
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        body();
    });
    // Shown with `--nocapture`: how much of the space a run covered.
    eprintln!(
        "{} executions in {:.1?} (preemption bound {:?})",
        executions.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed(),
        builder.preemption_bound
    );
}

/// Steps aside so that the other threads run their writes before this
/// thread reads.
///
/// loom 0.7's DPOR only explores moving a load earlier than a store that
/// some execution ran first; it misses moving a store earlier than a load
/// when the storing thread loads the same word first (tokio-rs/loom#392 and
/// #166), which every counter update and seqlock bracket here does. So a
/// model must make the writers run first and the readers last: then loom
/// tries each read at every point of the writes. The main thread runs first
/// (loom starts other threads only when it blocks), and a spawned observer
/// calls this before it reads.
pub fn observe_later() {
    loom::thread::yield_now();
}

/// A block address as a pointer. Addresses cross threads as `usize`
/// because `NonNull` is not `Send`.
pub fn block(address: usize) -> std::ptr::NonNull<u8> {
    std::ptr::NonNull::new(address as *mut u8).expect("a block address is never null")
}
