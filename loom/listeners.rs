#![cfg(lle_mempool_loom)]
//! Model 6, resize listeners: one thread registers a listener and removes it
//! while another resizes the pool.
//!
//! A listener registered before the resize starts is called exactly once,
//! with the sizes before and after; a listener is never called after
//! `remove_resize_listener` has returned for it (and, with it still
//! registered when the resize reports, at most once).
//!
//! Breaks this model catches (each tried by hand):
//! - calling the listeners after letting go of the listener list's lock
//!   (`Listeners::notify` taking a snapshot of the list and calling it
//!   unlocked): a listener removed meanwhile still runs after its removal
//!   returned.

#[path = "support.rs"]
mod support;

use lle_mempool::{MemoryPool, ResizeEvent, ResizeReason};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

const INITIAL_SIZE: usize = 4096;
const GROWTH: usize = 4096;

fn is_the_expansion(event: &ResizeEvent) -> bool {
    (event.old_size, event.new_size, event.reason) == (INITIAL_SIZE, INITIAL_SIZE + GROWTH, ResizeReason::Expand)
}

#[test]
fn removal_against_a_resize() {
    support::model(3, || {
        let pool = Arc::new(MemoryPool::new(INITIAL_SIZE).expect("pool"));
        // Registered before the resize starts: must hear about it once.
        let early_calls = Arc::new(AtomicUsize::new(0));
        {
            let early_calls = Arc::clone(&early_calls);
            pool.on_resize(move |event| {
                assert!(is_the_expansion(event), "{event:?}");
                early_calls.fetch_add(1, Ordering::Relaxed);
                // Listeners are called in registration order: let the other
                // thread act between this call and the next listener's.
                thread::yield_now();
            });
        }

        // Listener failures are recorded, not asserted, where they happen:
        // the pool catches a listener's panic.
        let late_calls = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let removed = Arc::new(AtomicBool::new(false));
        let remover = {
            let (pool, late_calls, calls, removed) =
                (Arc::clone(&pool), Arc::clone(&late_calls), Arc::clone(&calls), Arc::clone(&removed));
            thread::spawn(move || {
                let id = {
                    let removed = Arc::clone(&removed);
                    pool.on_resize(move |event| {
                        if removed.load(Ordering::Acquire) || !is_the_expansion(event) {
                            late_calls.fetch_add(1, Ordering::Relaxed);
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                    })
                };
                assert!(pool.remove_resize_listener(id), "the listener was registered");
                removed.store(true, Ordering::Release);
                assert!(!pool.remove_resize_listener(id), "removed twice");
            })
        };
        pool.expand(GROWTH).expect("expand");
        remover.join().expect("remover");

        assert_eq!(early_calls.load(Ordering::Relaxed), 1, "the early listener hears the resize once");
        assert_eq!(late_calls.load(Ordering::Relaxed), 0, "a listener ran after its removal returned");
        assert!(calls.load(Ordering::Relaxed) <= 1, "the listener heard one resize twice");
        assert_eq!(pool.resize_listener_count(), 1);
        assert_eq!(pool.size(), INITIAL_SIZE + GROWTH);
    });
}
