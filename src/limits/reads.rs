//! The key reads batches may have in flight, shared between clients in turn,
//! and how long a key read may take.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::concurrency::ConcurrencyLimit;
use super::rate::ClientId;

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

    /// Batches admitted beyond `total` under `max_concurrent`: as many as may
    /// read, and never more than half the slots that reading batches leave, so
    /// batches admitted never hold most of the slots (none beyond `total`
    /// when too few are left).
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

/// The key reads batches have in flight under [`BatchReads`], shared fairly
/// between clients. A batch is admitted, or refused at once when
/// `total + max_waiting` batches are admitted already or its client holds half
/// of those places; then each of its messages takes its reads when it starts
/// and gives them back when its MAC is done. While reads are short, waiting
/// messages are served one per client in turn, so a client's small batch waits
/// for a few reads, never for another client's whole batch, however large or
/// many its batches are. A message that gets no reads within its wait fails its
/// batch. Batches admitted hold at most `total + max_waiting` concurrency slots,
/// so single requests keep theirs.
pub struct ReadBudget {
    limits: BatchReads,
    max_batches: usize,
    shared: Mutex<Shared>,
    waiting: AtomicUsize,
    refused: AtomicU64,
}

#[derive(Default)]
struct Shared {
    in_flight: usize,
    batches: usize,
    clients: HashMap<ClientId, ClientShare>,
    /// Clients with a message waiting, in the order they are served.
    turns: VecDeque<ClientId>,
}

#[derive(Default)]
struct ClientShare {
    batches: usize,
    waiting: VecDeque<Waiter>,
}

/// A message waiting for `count` reads, which are sent to it.
struct Waiter {
    count: usize,
    grant: oneshot::Sender<ReadPermits>,
}

impl ReadBudget {
    pub fn new(limits: BatchReads, max_waiting: usize) -> Self {
        ReadBudget {
            limits,
            max_batches: limits.total + max_waiting,
            shared: Mutex::new(Shared::default()),
            waiting: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> BatchReads {
        self.limits
    }

    /// Admits a batch of `client`, or refuses it (counted) when the batches
    /// admitted, or that client's, are at their limit.
    pub fn admit(self: &Arc<Self>, client: ClientId) -> Option<BatchShare> {
        let per_client = (self.max_batches / 2).max(1);
        let mut shared = self.lock();
        let admitted = shared.clients.get(&client).map_or(0, |share| share.batches);
        if shared.batches >= self.max_batches || admitted >= per_client {
            drop(shared);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        shared.batches += 1;
        shared.clients.entry(client).or_default().batches += 1;
        Some(BatchShare {
            budget: Arc::clone(self),
            client,
            waiting: AtomicUsize::new(0),
            refused: AtomicBool::new(false),
        })
    }

    /// Reads taken now (by batches running, or by their reads still in flight).
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Batches with a message waiting for reads now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Batches refused so far: too many admitted, or reads did not come in time.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the free reads to the waiting messages, one client's at a time in
    /// turn, for as long as the next one's fit.
    fn dispatch(self: &Arc<Self>, shared: &mut Shared) {
        while let Some(&client) = shared.turns.front() {
            let share = shared
                .clients
                .get_mut(&client)
                .expect("a client in turn is admitted");
            while share
                .waiting
                .front()
                .is_some_and(|waiter| waiter.grant.is_closed())
            {
                share.waiting.pop_front();
            }
            let Some(next) = share.waiting.front() else {
                shared.turns.pop_front();
                continue;
            };
            if next.count > self.limits.total - shared.in_flight {
                return;
            }
            let waiter = share.waiting.pop_front().expect("looked at above");
            shared.turns.pop_front();
            if !share.waiting.is_empty() {
                shared.turns.push_back(client);
            }
            shared.in_flight += waiter.count;
            let permits = ReadPermits {
                budget: Arc::clone(self),
                count: waiter.count,
            };
            // Its wait ended in between: the reads stay free.
            if let Err(mut permits) = waiter.grant.send(permits) {
                shared.in_flight -= permits.count;
                permits.count = 0;
            }
        }
    }
}

/// A batch admitted to the [`ReadBudget`], whose messages take their reads
/// from it; its place is given back when dropped.
pub struct BatchShare {
    budget: Arc<ReadBudget>,
    client: ClientId,
    /// Messages of this batch waiting now.
    waiting: AtomicUsize,
    /// A message of this batch got no reads in time: the batch fails, counted once.
    refused: AtomicBool,
}

impl BatchShare {
    /// Messages of `reads_per_message` reads each that may read at once.
    pub fn messages_at_once(&self, reads_per_message: usize) -> usize {
        (self.budget.limits.per_batch / reads_per_message).max(1)
    }

    /// Takes `count` reads for one message, waiting up to `wait` for them in
    /// the client's turn; `None` (the batch counted as refused, once) when they
    /// do not come.
    pub async fn take(&self, count: usize, wait: Duration) -> Option<ReadPermits> {
        let granted = {
            let mut shared = self.budget.lock();
            if shared.turns.is_empty() && count <= self.budget.limits.total - shared.in_flight {
                shared.in_flight += count;
                return Some(ReadPermits {
                    budget: Arc::clone(&self.budget),
                    count,
                });
            }
            let (grant, granted) = oneshot::channel();
            let share = shared
                .clients
                .get_mut(&self.client)
                .expect("a batch's client is admitted while it is");
            share.waiting.push_back(Waiter { count, grant });
            if share.waiting.len() == 1 {
                shared.turns.push_back(self.client);
            }
            self.budget.dispatch(&mut shared);
            granted
        };
        let _waiting = WaitingMark::enter(self);
        match tokio::time::timeout(wait, granted).await {
            Ok(Ok(permits)) => Some(permits),
            _ => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    self.budget.refused.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }
}

impl Drop for BatchShare {
    fn drop(&mut self) {
        let mut shared = self.budget.lock();
        shared.batches -= 1;
        let share = shared
            .clients
            .get_mut(&self.client)
            .expect("a batch's client is admitted while it is");
        share.batches -= 1;
        if share.batches == 0 {
            // Its messages have all gone: none of its waiters can be served.
            shared.clients.remove(&self.client);
            shared.turns.retain(|client| *client != self.client);
            self.budget.dispatch(&mut shared);
        }
    }
}

/// A batch counted among those waiting while one of its messages is.
struct WaitingMark<'a>(&'a BatchShare);

impl<'a> WaitingMark<'a> {
    fn enter(batch: &'a BatchShare) -> Self {
        if batch.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            batch.budget.waiting.fetch_add(1, Ordering::Relaxed);
        }
        WaitingMark(batch)
    }
}

impl Drop for WaitingMark<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.budget.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A batch of `client` admitted, and its first message's reads taken without
/// waiting, for tests outside an async runtime.
#[cfg(test)]
pub(crate) fn take_now(
    budget: &Arc<ReadBudget>,
    client: ClientId,
    count: usize,
) -> Option<(BatchShare, ReadPermits)> {
    let batch = budget.admit(client)?;
    let permits = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
        .block_on(batch.take(count, Duration::ZERO))?;
    Some((batch, permits))
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
        if self.count == 0 {
            return;
        }
        let budget = Arc::clone(&self.budget);
        let mut shared = budget.lock();
        shared.in_flight -= self.count;
        budget.dispatch(&mut shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize, per_batch: usize, max_waiting: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget::new(
            BatchReads { total, per_batch },
            max_waiting,
        ))
    }

    fn client(n: u32) -> ClientId {
        ClientId::Address(std::net::IpAddr::V4(n.into()))
    }

    #[test]
    fn messages_take_their_reads_from_the_budget_and_give_them_back() {
        let budget = budget(16, 8, 0);
        let (batch, first) = take_now(&budget, client(1), 8).unwrap();
        assert_eq!(batch.messages_at_once(8), 1);
        assert_eq!(batch.messages_at_once(1), 8);
        let (_other, second) = take_now(&budget, client(2), 8).unwrap();
        assert_eq!(
            (first.count(), second.count(), budget.in_flight()),
            (8, 8, 16)
        );
        assert!(
            take_now(&budget, client(3), 1).is_none(),
            "no read free, and no wait"
        );
        drop((first, second));
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(budget.refused(), 1);
    }

    #[test]
    fn batches_beyond_the_limit_or_their_clients_half_are_refused_at_once() {
        let budget = budget(2, 2, 2);
        let first = budget.admit(client(1)).unwrap();
        let _second = budget.admit(client(1)).unwrap();
        assert!(
            budget.admit(client(1)).is_none(),
            "one client holds at most half the places"
        );
        let _third = budget.admit(client(2)).unwrap();
        let _fourth = budget.admit(client(3)).unwrap();
        assert!(
            budget.admit(client(4)).is_none(),
            "all four places are taken"
        );
        drop(first);
        assert!(budget.admit(client(4)).is_some());
        assert_eq!(budget.refused(), 2);
    }

    #[tokio::test]
    async fn a_small_batch_waits_for_a_few_reads_not_for_another_clients_batch() {
        let budget = budget(2, 2, 8);
        let busy = Arc::new(budget.admit(client(1)).unwrap());
        let held = busy.take(2, Duration::ZERO).await.unwrap();
        // The busy client's next messages queue first.
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let busy = Arc::clone(&busy);
                tokio::spawn(async move { busy.take(2, Duration::from_secs(10)).await })
            })
            .collect();
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let small = budget.admit(client(2)).unwrap();
        let small = tokio::spawn(async move {
            let reads = small.take(2, Duration::from_secs(10)).await;
            (small, reads)
        });
        while budget.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        // Reads come back once: one message of the busy client's, then the small
        // batch's in its turn, before the busy client's other messages.
        let mut queued = queued.into_iter();
        let next = queued.next().unwrap().await.unwrap().expect("served");
        drop(next);
        let (_small, reads) = tokio::time::timeout(Duration::from_secs(5), small)
            .await
            .expect("served in its turn")
            .unwrap();
        let reads = reads.expect("served, not refused");
        assert_eq!((reads.count(), budget.in_flight()), (2, 2));
        let rest: Vec<_> = queued.collect();
        assert!(rest.iter().all(|task| !task.is_finished()));
        for task in rest {
            task.abort();
        }
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_time_and_a_dropped_one_leaves_the_queue() {
        let budget = budget(1, 1, 1);
        let batch = budget.admit(client(1)).unwrap();
        let held = batch.take(1, Duration::ZERO).await.unwrap();
        let started = std::time::Instant::now();
        assert!(batch.take(1, Duration::from_millis(300)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            batch.take(1, Duration::ZERO).await.is_none(),
            "a batch already refused is not counted again"
        );
        let other = Arc::new(budget.admit(client(2)).unwrap());
        let queued = tokio::spawn({
            let other = Arc::clone(&other);
            async move { other.take(1, Duration::from_secs(60)).await }
        });
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        queued.abort();
        let _ = queued.await;
        assert_eq!(budget.waiting(), 0);
        drop(held);
        assert_eq!(
            budget.in_flight(),
            0,
            "no read went to the wait that was dropped"
        );
        assert!(other.take(1, Duration::ZERO).await.is_some());
        assert_eq!(budget.refused(), 1);
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
        let budget = budget(50, 7, 50);
        let most = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|n| {
                    let (budget, most) = (Arc::clone(&budget), Arc::clone(&most));
                    tokio::spawn(async move {
                        let batch = budget.admit(client(n % 3)).unwrap();
                        for count in 1..200 {
                            let reads = batch.take(count % 7 + 1, Duration::from_secs(10)).await;
                            assert!(reads.is_some(), "served in turn");
                            most.fetch_max(budget.in_flight(), Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
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
