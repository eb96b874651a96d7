//! What work that outlives its request keeps taken until it has stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::concurrency::{ConcurrencyLimit, HeldSlot};
use super::reads::ReadPermits;

/// What a request's work (key reads, tasks on the blocking threads) keeps
/// taken until it has really stopped, which can be after the request has
/// ended: after a timeout, or when its client went away. Each piece of work
/// holds an `Arc` of it until it has stopped.
#[derive(Default)]
pub struct Work {
    stop: AtomicBool,
    /// A batch's key reads, given back with the last piece of work.
    reads: Option<ReadPermits>,
    /// Held from the end of the request until the last piece has stopped.
    slot: Mutex<Option<HeldSlot>>,
}

impl Work {
    /// True once the request has ended: work not yet started should not start.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The key reads this work may have in flight; `None` when unbudgeted.
    pub fn reads(&self) -> Option<usize> {
        self.reads.as_ref().map(ReadPermits::count)
    }
}

/// The request's side of its [`Work`]. Dropped before [`finish`](Self::finish)
/// (the request ended with work still running, or may have), it tells the work
/// to stop and makes it hold a place under the concurrency limit until its last
/// piece has stopped: work whose request has gone must still be counted.
pub struct WorkGuard<'a> {
    work: Arc<Work>,
    limit: &'a Arc<ConcurrencyLimit>,
    finished: bool,
}

impl<'a> WorkGuard<'a> {
    pub fn new(limit: &'a Arc<ConcurrencyLimit>, reads: Option<ReadPermits>) -> Self {
        WorkGuard {
            work: Arc::new(Work {
                reads,
                ..Work::default()
            }),
            limit,
            finished: false,
        }
    }

    pub fn work(&self) -> &Arc<Work> {
        &self.work
    }

    /// Every piece of the work has stopped: the request's own slot covered it.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for WorkGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.work.stop.store(true, Ordering::Relaxed);
            // If the work has all stopped already, the slot goes with this `Arc`.
            *self
                .work
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(self.limit.hold());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::reads::{take_now, ReadLimits};

    #[test]
    fn work_that_outlives_its_request_keeps_its_slot_and_reads_until_it_stops() {
        let limit = Arc::new(ConcurrencyLimit::new(4));
        let budget = ReadLimits::default().batches;
        // Finished: every piece stopped while the request's own slot counted it.
        let guard = WorkGuard::new(&limit, take_now(&budget, 3, 1));
        assert_eq!(guard.work().reads(), Some(3));
        guard.finish();
        assert_eq!((limit.in_flight(), budget.in_flight()), (0, 0));
        // Ended early with a read still in flight: it holds a slot and its reads.
        let guard = WorkGuard::new(&limit, take_now(&budget, 3, 1));
        let read_in_flight = Arc::clone(guard.work());
        drop(guard);
        assert!(read_in_flight.stopping());
        assert_eq!((limit.in_flight(), budget.in_flight()), (1, 3));
        drop(read_in_flight);
        assert_eq!((limit.in_flight(), budget.in_flight()), (0, 0));
        // Ended early with nothing in flight: nothing stays held.
        drop(WorkGuard::new(&limit, None));
        assert_eq!(limit.in_flight(), 0);
    }
}
