//! The server-wide concurrency limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests being served, at most `max`: beyond it a request is refused at
/// once, since a queue would only add latency. One counter is both the limit
/// and the in-flight gauge, so a request costs two atomic additions.
pub struct ConcurrencyLimit {
    max: usize,
    in_flight: AtomicUsize,
}

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Self {
        ConcurrencyLimit {
            max,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Counts a request in, or refuses it (counting nothing) at the limit.
    /// A request refused at the same moment may briefly hold a slot too; that
    /// errs on the side of refusing, never of serving more than `max`.
    #[must_use]
    pub fn try_enter(&self) -> bool {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) < self.max {
            true
        } else {
            self.leave();
            false
        }
    }

    /// Counts out a request that [`try_enter`](Self::try_enter) let in.
    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts in work that is already running, even beyond the limit, until
    /// the slot is dropped: work whose request has gone must still be counted.
    pub fn hold(self: &Arc<Self>) -> HeldSlot {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        HeldSlot(Arc::clone(self))
    }
}

/// A place under the concurrency limit, given back when dropped.
pub struct HeldSlot(Arc<ConcurrencyLimit>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_limit_refuses_beyond_max_and_frees_on_leave() {
        let limit = ConcurrencyLimit::new(2);
        assert!(limit.try_enter());
        assert!(limit.try_enter());
        assert!(!limit.try_enter());
        assert_eq!(limit.in_flight(), 2);
        limit.leave();
        assert_eq!(limit.in_flight(), 1);
        assert!(limit.try_enter());
        let limit = Arc::new(limit);
        let held = limit.hold();
        assert_eq!(limit.in_flight(), 3);
        assert!(!limit.try_enter());
        drop(held);
        assert_eq!(limit.in_flight(), 2);
    }
}
