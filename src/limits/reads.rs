//! The key reads batches may have in flight, the queue of batches waiting
//! for them, and how long a key read may take.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::concurrency::ConcurrencyLimit;

/// Key reads batches may have in flight: `total` for all batches together,
/// `per_batch` for one. Single requests never take from it, so however many
/// batches arrive, a `/hmac` key read waits behind at most `total` of theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReads {
    pub total: usize,
    pub per_batch: usize,
}

impl BatchReads {
    /// Enough to keep a gp3 volume busy (at 1 ms a read, 64 in flight make
    /// 64,000 reads/s, above its 16,000 IOPS at most) while a single request's
    /// read waits behind at most 64 of the batches' (about 21 ms at the 3,000
    /// IOPS baseline).
    pub const DEFAULT: BatchReads = BatchReads {
        total: 64,
        per_batch: 32,
    };

    /// The default under `max_concurrent`: half of it at most, so batches
    /// (each holding at least one read) leave single requests half the slots,
    /// and never fewer than one message needs, `reads_per_message`.
    pub fn default_under(max_concurrent: usize, reads_per_message: usize) -> BatchReads {
        let total = BatchReads::DEFAULT
            .total
            .min(max_concurrent / 2)
            .max(reads_per_message);
        BatchReads {
            total,
            per_batch: BatchReads::DEFAULT.per_batch.min(total),
        }
    }

    /// Batches that may wait for reads under `max_concurrent`: as many as may
    /// read, and never more than half the slots that reading batches leave, so
    /// batches reading and waiting together never hold most of the slots (none
    /// wait, and a batch finding no read free is refused, when too few are left).
    pub fn waiting_under(self, max_concurrent: usize) -> usize {
        self.total
            .min(max_concurrent.saturating_sub(self.total) / 2)
    }

    /// Why these reads cannot serve: fewer per batch than one message needs,
    /// or so many that batches alone could fill the concurrency limit.
    pub fn check(
        self,
        reads_per_message: usize,
        max_concurrent: usize,
    ) -> Result<(), BatchReadsError> {
        if self.per_batch < reads_per_message {
            return Err(BatchReadsError::FewerThanAMessage {
                per_batch: self.per_batch,
                reads_per_message,
            });
        }
        if self.total >= max_concurrent {
            return Err(BatchReadsError::NotBelowConcurrency {
                total: self.total,
                max_concurrent,
            });
        }
        Ok(())
    }
}

impl fmt::Display for BatchReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.total, self.per_batch)
    }
}

/// A [`BatchReads`] that does not fit the mode or the concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchReadsError {
    FewerThanAMessage {
        per_batch: usize,
        reads_per_message: usize,
    },
    NotBelowConcurrency {
        total: usize,
        max_concurrent: usize,
    },
}

impl fmt::Display for BatchReadsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchReadsError::FewerThanAMessage {
                per_batch,
                reads_per_message,
            } => write!(
                f,
                "CRYPTOSERVER_BATCH_READS allows {per_batch} key reads per batch, fewer than one message \
                 reads at once in this mode ({reads_per_message}): allow at least {reads_per_message}"
            ),
            BatchReadsError::NotBelowConcurrency {
                total,
                max_concurrent,
            } => write!(
                f,
                "CRYPTOSERVER_BATCH_READS allows {total} key reads for all batches, not below \
                 CRYPTOSERVER_MAX_CONCURRENT ({max_concurrent}): batches alone could fill it and \
                 refuse every single request; lower it or raise CRYPTOSERVER_MAX_CONCURRENT"
            ),
        }
    }
}

impl std::error::Error for BatchReadsError {}

/// How the key store's reads are bounded: how long one may take, the reads
/// batches may have in flight, and the concurrency limit that work which
/// outlives its request (a read that timed out, a batch whose client went
/// away) keeps a place under until it has stopped.
pub struct ReadLimits {
    pub timeout: Duration,
    pub batches: Arc<ReadBudget>,
    pub concurrency: Arc<ConcurrencyLimit>,
}

impl ReadLimits {
    /// A read that has not finished after this long fails its request: a
    /// cold read takes about a millisecond, so only a stalled or saturated
    /// volume comes near it, and the client's retry may find another host.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Default for ReadLimits {
    /// The defaults, with no concurrency limit (for tools and tests).
    fn default() -> Self {
        ReadLimits {
            timeout: ReadLimits::DEFAULT_TIMEOUT,
            batches: Arc::new(ReadBudget::new(
                BatchReads::DEFAULT,
                BatchReads::DEFAULT.total,
            )),
            concurrency: Arc::new(ConcurrencyLimit::new(usize::MAX)),
        }
    }
}

/// The key reads batches have in flight under [`BatchReads`]. A batch takes
/// its share when it starts or waits for reads to be given back, in a
/// bounded queue for a bounded time: batches that arrive together while the
/// volume is busy are served in turn instead of refused, and batches waiting
/// hold at most `max_waiting` concurrency slots, so single requests keep theirs.
pub struct ReadBudget {
    limits: BatchReads,
    max_waiting: usize,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
    refused: AtomicU64,
}

impl ReadBudget {
    pub fn new(limits: BatchReads, max_waiting: usize) -> Self {
        ReadBudget {
            limits,
            max_waiting,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            refused: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> BatchReads {
        self.limits
    }

    /// Takes as many reads as are free, up to `wanted` and the per-batch
    /// limit, once at least `at_least` are. Waits up to `wait` for them, unless
    /// `max_waiting` batches wait already; `None` (counted as a refusal) when
    /// the queue is full or the wait runs out.
    pub async fn take(
        self: &Arc<Self>,
        wanted: usize,
        at_least: usize,
        wait: Duration,
    ) -> Option<ReadPermits> {
        if let Some(permits) = self.take_free(wanted, at_least) {
            return Some(permits);
        }
        let queued = Waiting::enter(&self.waiting, self.max_waiting);
        if queued.is_some() {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                // Registered before looking, so reads given back in between wake it.
                freed.as_mut().enable();
                if let Some(permits) = self.take_free(wanted, at_least) {
                    return Some(permits);
                }
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    break;
                }
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn take_free(self: &Arc<Self>, wanted: usize, at_least: usize) -> Option<ReadPermits> {
        let wanted = wanted.min(self.limits.per_batch);
        let mut in_flight = self.in_flight.load(Ordering::Relaxed);
        loop {
            let count = wanted.min(self.limits.total.saturating_sub(in_flight));
            if count < at_least.max(1) {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                in_flight,
                in_flight + count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ReadPermits {
                        budget: Arc::clone(self),
                        count,
                    })
                }
                Err(now) => in_flight = now,
            }
        }
    }

    /// Reads taken now (by batches running, or by their reads still in flight).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Batches waiting for reads now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Batches refused so far: the queue was full, or reads did not come in time.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A batch's place in the [`ReadBudget`]'s queue, given up when dropped
/// (served, timed out, or its request gone).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Waiting<'a>> {
        waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()
            .map(|_| Waiting(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`ReadBudget::take`] without waiting, for tests outside an async runtime.
#[cfg(test)]
pub(crate) fn take_now(
    budget: &Arc<ReadBudget>,
    wanted: usize,
    at_least: usize,
) -> Option<ReadPermits> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
        .block_on(budget.take(wanted, at_least, Duration::ZERO))
}

/// Reads taken from a [`ReadBudget`], given back when dropped.
pub struct ReadPermits {
    budget: Arc<ReadBudget>,
    count: usize,
}

impl ReadPermits {
    pub fn count(&self) -> usize {
        self.count
    }
}

impl Drop for ReadPermits {
    fn drop(&mut self) {
        self.budget
            .in_flight
            .fetch_sub(self.count, Ordering::Relaxed);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize, per_batch: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget::new(BatchReads { total, per_batch }, total))
    }

    #[test]
    fn batches_share_the_read_budget_and_are_refused_when_it_is_spent() {
        let budget = budget(64, 32);
        let first = take_now(&budget, 65_536, 1).unwrap();
        assert_eq!(first.count(), 32, "a batch takes at most its own share");
        let small = take_now(&budget, 5, 1).unwrap();
        assert_eq!(small.count(), 5, "a small batch takes only what it reads");
        let rest = take_now(&budget, 65_536, 8).unwrap();
        assert_eq!(
            rest.count(),
            27,
            "what is free, when it is enough for a message"
        );
        assert_eq!(budget.in_flight(), 64);
        assert!(take_now(&budget, 1, 1).is_none());
        drop(small);
        assert!(
            take_now(&budget, 800, 8).is_none(),
            "fewer reads free than a MODE32X message needs"
        );
        assert_eq!(budget.refused(), 2);
        let after = take_now(&budget, 800, 1).unwrap();
        assert_eq!(after.count(), 5);
        drop((first, rest, after));
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_batch_waits_for_reads_given_back_then_takes_them() {
        let budget = budget(8, 8);
        let first = budget.take(100, 1, Duration::ZERO).await.unwrap();
        let waiter = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.take(4, 1, Duration::from_secs(10)).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when reads were given back")
            .unwrap()
            .expect("served, not refused");
        assert_eq!(
            (second.count(), budget.waiting(), budget.refused()),
            (4, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_wait_ends_at_its_time() {
        let budget = Arc::new(ReadBudget::new(
            BatchReads {
                total: 2,
                per_batch: 2,
            },
            1,
        ));
        let _all = budget.take(2, 1, Duration::ZERO).await.unwrap();
        let started = std::time::Instant::now();
        let queued = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.take(1, 1, Duration::from_millis(300)).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            budget.take(1, 1, Duration::from_secs(60)).await.is_none(),
            "the queue holds one batch"
        );
        assert!(started.elapsed() < Duration::from_millis(300));
        assert!(queued.await.unwrap().is_none(), "no read came back in time");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!((budget.waiting(), budget.refused()), (0, 2));
    }

    #[tokio::test]
    async fn a_batch_whose_request_is_dropped_leaves_the_queue() {
        let budget = budget(1, 1);
        let _all = budget.take(1, 1, Duration::ZERO).await.unwrap();
        let queued = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.take(1, 1, Duration::from_secs(60)).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        queued.abort();
        let _ = queued.await;
        assert_eq!(budget.waiting(), 0);
    }

    #[test]
    fn waiting_batches_leave_single_requests_most_slots() {
        assert_eq!(BatchReads::DEFAULT.waiting_under(1024), 64);
        let reads = BatchReads {
            total: 60,
            per_batch: 32,
        };
        assert_eq!(reads.waiting_under(100), 20);
        assert_eq!(reads.waiting_under(61), 0, "one slot left: no queue");
    }

    #[test]
    fn concurrent_batches_never_take_more_than_the_budget() {
        let budget = budget(50, 7);
        let most = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for wanted in 1..2000 {
                        if let Some(permits) = take_now(&budget, wanted, 1) {
                            assert!(permits.count() <= 7);
                            most.fetch_max(budget.in_flight(), Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::Relaxed) <= 50);
        assert_eq!(budget.in_flight(), 0);
    }

    #[test]
    fn batch_reads_fit_the_mode_and_the_concurrency_limit() {
        assert_eq!(BatchReads::default_under(1024, 1), BatchReads::DEFAULT);
        assert_eq!(
            BatchReads::default_under(40, 8),
            BatchReads {
                total: 20,
                per_batch: 20
            }
        );
        assert_eq!(
            BatchReads::default_under(4, 8),
            BatchReads {
                total: 8,
                per_batch: 8
            }
        );
        let reads = BatchReads {
            total: 64,
            per_batch: 4,
        };
        assert_eq!(reads.check(1, 1024), Ok(()));
        let error = reads.check(8, 1024).unwrap_err();
        assert!(error.to_string().contains("at least 8"), "{error}");
        let error = BatchReads::DEFAULT.check(1, 64).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("CRYPTOSERVER_MAX_CONCURRENT (64)"),
            "{error}"
        );
    }
}
