//! What work that outlives its request keeps taken until it has stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::concurrency::{ConcurrencyLimit, HeldSlot};
use super::reads::{BatchShare, ReadPermits};

/// What a request's work (key reads, tasks on the blocking threads) keeps
/// taken until it has really stopped, which can be after the request has
/// ended: after a timeout, or when its client went away. Each piece of work
/// holds an `Arc` of it until it has stopped.
#[derive(Default)]
pub struct Work {
    stop: AtomicBool,
    /// A batch's place in the read budget, given back with the last piece of work.
    batch: Option<BatchShare>,
    /// Reads of messages that ended with a read perhaps still in flight (failed,
    /// or dropped), given back with the last piece of work.
    reads_left: Mutex<Vec<ReadPermits>>,
    /// Held from the end of the request until the last piece has stopped.
    slot: Mutex<Option<HeldSlot>>,
}

impl Work {
    /// True once the request has ended: work not yet started should not start.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The batch whose messages take their key reads from the budget; `None`
    /// when unbudgeted.
    pub fn batch(&self) -> Option<&BatchShare> {
        self.batch.as_ref()
    }

    /// Holds one message's `reads` until [`MessageReads::done`]; if it is
    /// dropped before, its reads may still be in flight and stay taken until
    /// the last piece of work has stopped.
    pub fn message_reads(&self, reads: ReadPermits) -> MessageReads<'_> {
        MessageReads {
            work: self,
            reads: Some(reads),
        }
    }
}

/// One message's key reads, from [`Work::message_reads`].
pub struct MessageReads<'a> {
    work: &'a Work,
    reads: Option<ReadPermits>,
}

impl MessageReads<'_> {
    /// Every read of the message has completed: its reads are given back now.
    pub fn done(mut self) {
        self.reads = None;
    }
}

impl Drop for MessageReads<'_> {
    fn drop(&mut self) {
        if let Some(reads) = self.reads.take() {
            self.work
                .reads_left
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(reads);
        }
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
    pub fn new(limit: &'a Arc<ConcurrencyLimit>, batch: Option<BatchShare>) -> Self {
        WorkGuard {
            work: Arc::new(Work {
                batch,
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
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::limits::rate::ClientId;
    use crate::limits::reads::{take_now, ReadLimits};

    const CLIENT: ClientId = ClientId::Address(IpAddr::V4(Ipv4Addr::LOCALHOST));

    #[test]
    fn work_that_outlives_its_request_keeps_its_slot_and_reads_until_it_stops() {
        let limit = Arc::new(ConcurrencyLimit::new(4));
        let budget = ReadLimits::default().batches;
        // Finished: every piece stopped while the request's own slot counted it.
        let (batch, reads) = take_now(&budget, CLIENT, 3).unwrap();
        let guard = WorkGuard::new(&limit, Some(batch));
        guard.work().message_reads(reads).done();
        assert_eq!(
            budget.in_flight(),
            0,
            "a message's reads come back with its MAC"
        );
        guard.finish();
        assert_eq!((limit.in_flight(), budget.in_flight()), (0, 0));
        // Ended early with a read still in flight: it holds a slot and its reads.
        let (batch, reads) = take_now(&budget, CLIENT, 3).unwrap();
        let guard = WorkGuard::new(&limit, Some(batch));
        let read_in_flight = Arc::clone(guard.work());
        drop(guard.work().message_reads(reads));
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
