//! Purging on a delay: when the shared pool gives free pages back to the OS
//! without being asked to `compact`.
//!
//! Reading the clock costs more than a whole free, so the free path never
//! does: each free under the pool's lock counts its bytes down from a
//! budget, a subtraction and a branch on a plain field behind the lock, and
//! only a free that exhausts the budget asks [`PurgeSchedule::purge_now`].
//! The budget is [`purge_threshold`] bytes, scaled to the pool's size, so
//! the walk over the pool that a purge makes is paid for by at least an
//! eighth of the pool having been freed since the last one. Once the delay
//! has passed since the last purge, whole free pages in free runs of at
//! least [`PURGE_MIN_RUN`] bytes are purged; before that, the budget is
//! refilled with a smaller [`recheck_step`], so that a program whose frees
//! have slowed down still gets its memory back soon after the delay.
//!
//! Nothing runs in the background: memory freed just before a program goes
//! quiet stays resident until later frees reach the budget, or until
//! `compact` purges it at once.
//!
//! A thread's cache purges the free pages inside its own slabs on the same
//! delay ([`HeapPurgeSchedule`]), looked at only when the thread's cache
//! takes its slow path (a slab runs dry), never on the fast path.

use crate::os::{coarse_monotonic_now, Timestamp};
use crate::slab::SLAB_SIZE;
use std::time::Duration;

/// The least bytes freed between two checks of the clock, whatever the
/// pool's size: a few MiB, so that a small pool under heavy churn reads the
/// clock rarely.
const MIN_PURGE_THRESHOLD: usize = 4 << 20;

/// The shortest free run whose pages the delay purges: one cache slab, so
/// that an empty slab given back by a thread cache qualifies, while the
/// smaller holes between live blocks, which the pool is likely to fill
/// again soon, are not purged only to fault back in.
pub(crate) const PURGE_MIN_RUN: usize = SLAB_SIZE;

/// Bytes freed between two purges, for a pool of `pool_size` bytes.
pub(crate) fn purge_threshold(pool_size: usize) -> usize {
    MIN_PURGE_THRESHOLD.max(pool_size / 8)
}

/// Bytes freed between two looks at the clock while a purge waits for its
/// delay: an eighth of the threshold.
fn recheck_step(pool_size: usize) -> usize {
    purge_threshold(pool_size) / 8
}

/// When the shared pool next purges free pages on its own. Kept behind the
/// pool's lock: one writer, plain fields.
pub(crate) struct PurgeSchedule {
    /// `None`: purge only on `compact`.
    delay: Option<Duration>,
    /// Bytes still to be freed before the next look at the clock.
    bytes_until_check: usize,
    /// When free pages were last purged (or the pool was made).
    last_purge: Timestamp,
}

impl PurgeSchedule {
    /// A schedule for a pool of `pool_size` bytes that purges `delay` after
    /// the last purge.
    pub(crate) fn new(delay: Option<Duration>, pool_size: usize) -> PurgeSchedule {
        let mut schedule = PurgeSchedule { delay, bytes_until_check: 0, last_purge: coarse_monotonic_now() };
        schedule.restart(schedule.last_purge, pool_size);
        schedule
    }

    /// Counts `bytes` freed. `true` when the budget is spent and
    /// [`purge_now`](Self::purge_now) must decide.
    #[inline(always)]
    pub(crate) fn count_freed(&mut self, bytes: usize) -> bool {
        match self.bytes_until_check.checked_sub(bytes) {
            Some(left) => {
                self.bytes_until_check = left;
                false
            }
            None => true,
        }
    }

    /// Whether to purge now, once [`count_freed`](Self::count_freed) said
    /// the budget is spent: `true` when the delay has passed since the last
    /// purge, and then the schedule counts the purge as done. Otherwise the
    /// budget is refilled for a later look.
    #[cold]
    pub(crate) fn purge_now(&mut self, pool_size: usize) -> bool {
        let Some(delay) = self.delay else {
            self.bytes_until_check = usize::MAX;
            return false;
        };
        let now = coarse_monotonic_now();
        if delay_passed(delay, self.last_purge, now) {
            self.restart(now, pool_size);
            true
        } else {
            self.bytes_until_check = recheck_step(pool_size);
            false
        }
    }

    /// Records a purge made at `now` (by the delay or by `compact`), after
    /// which the full threshold is counted again.
    pub(crate) fn restart(&mut self, now: Timestamp, pool_size: usize) {
        self.last_purge = now;
        self.bytes_until_check = match self.delay {
            Some(_) => purge_threshold(pool_size),
            None => usize::MAX,
        };
    }
}

/// Whether `delay` has passed between `last_purge` and `now`: the one
/// test both schedules make.
fn delay_passed(delay: Duration, last_purge: Timestamp, now: Timestamp) -> bool {
    now.saturating_sub(last_purge) >= delay
}

/// When a thread's cache next purges the free pages inside its slabs on its
/// own. Its thread alone uses it; it is asked only on the cache's slow path,
/// which is rare enough to read the clock each time: the coarse clock,
/// which costs a few loads (see `os::coarse_monotonic_now`).
#[derive(Clone, Copy)]
pub(crate) struct HeapPurgeSchedule {
    /// `None`: purge only on `compact`.
    delay: Option<Duration>,
    /// When the cache last purged (or was made).
    last_purge: Timestamp,
}

impl HeapPurgeSchedule {
    /// A schedule that purges `delay` after the last purge.
    pub(crate) fn new(delay: Option<Duration>) -> HeapPurgeSchedule {
        HeapPurgeSchedule { delay, last_purge: coarse_monotonic_now() }
    }

    /// Whether to purge now: `true` when the delay has passed since the last
    /// purge, and then the schedule counts the purge as done.
    pub(crate) fn purge_now(&mut self) -> bool {
        let Some(delay) = self.delay else { return false };
        let now = coarse_monotonic_now();
        let due = delay_passed(delay, self.last_purge, now);
        if due {
            self.last_purge = now;
        }
        due
    }

    /// Records a purge made by `compact`.
    pub(crate) fn restart(&mut self) {
        self.last_purge = coarse_monotonic_now();
    }
}

#[cfg(all(test, not(lle_mempool_model)))]
mod tests {
    use super::*;

    const POOL: usize = 64 << 20;

    #[test]
    fn the_clock_is_read_only_once_the_threshold_is_freed() {
        let threshold = purge_threshold(POOL);
        assert_eq!(threshold, 8 << 20, "an eighth of a 64 MiB pool");
        assert_eq!(purge_threshold(1 << 20), MIN_PURGE_THRESHOLD, "a small pool still frees a few MiB first");
        let mut schedule = PurgeSchedule::new(Some(Duration::ZERO), POOL);
        for _ in 0..threshold / 4096 {
            assert!(!schedule.count_freed(4096));
        }
        assert!(schedule.count_freed(1), "one byte past the threshold");
        assert!(schedule.purge_now(POOL), "a zero delay has always passed");
        assert!(!schedule.count_freed(threshold - 1), "the purge restarted the count");
    }

    #[test]
    fn before_the_delay_a_spent_budget_is_refilled_with_the_recheck_step() {
        let mut schedule = PurgeSchedule::new(Some(Duration::from_secs(3600)), POOL);
        assert!(schedule.count_freed(purge_threshold(POOL) + 1));
        assert!(!schedule.purge_now(POOL), "an hour has not passed");
        let step = recheck_step(POOL);
        assert!(!schedule.count_freed(step));
        assert!(schedule.count_freed(1), "the next look comes after the recheck step");
    }

    #[test]
    fn a_heap_purges_once_per_delay() {
        let mut zero = HeapPurgeSchedule::new(Some(Duration::ZERO));
        assert!(zero.purge_now() && zero.purge_now(), "a zero delay has always passed");
        assert!(!HeapPurgeSchedule::new(Some(Duration::from_secs(3600))).purge_now(), "an hour has not passed");
        assert!(!HeapPurgeSchedule::new(None).purge_now(), "no delay: only compact purges");

        let mut short = HeapPurgeSchedule::new(Some(Duration::from_millis(20)));
        let made = short.last_purge;
        std::thread::sleep(Duration::from_millis(25));
        assert!(short.purge_now(), "the delay has passed");
        assert!(short.last_purge > made, "the purge restarted the delay");
        let purged = short.last_purge;
        // Past the coarse clock's tick, a few milliseconds.
        std::thread::sleep(Duration::from_millis(25));
        short.restart();
        assert!(short.last_purge > purged, "compact restarts it too");
    }

    #[test]
    fn without_a_delay_the_pool_never_purges_on_its_own() {
        let mut schedule = PurgeSchedule::new(None, POOL);
        assert!(!schedule.count_freed(1 << 40));
        assert!(!schedule.count_freed(usize::MAX / 2));
        assert!(schedule.count_freed(usize::MAX / 2 + 1));
        assert!(!schedule.purge_now(POOL));
        assert!(!schedule.count_freed(1 << 40), "the budget is refilled");
    }
}
