//! Per-client rate limiting (one token bucket per client: its token when
//! authenticated, else its source address), the server-wide concurrency limit,
//! the key reads batches may have in flight and how long a key read may take,
//! what work that outlives its request keeps taken, and the limits on open
//! connections, in all and per client address.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, InsufficientCapacity, Quota};
use tokio::sync::Notify;

use crate::access::TokenDigest;

/// Clients tracked before the first sweep drops those whose bucket is full
/// again (a full bucket is the same as none).
const SWEEP_FROM: usize = 100_000;
/// Requests between two looks at how many clients are tracked.
const SWEEP_CHECK_EVERY: usize = 1024;

/// A token bucket: `per_second` tokens refill each second, up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientId {
    Token(TokenDigest),
    Address(IpAddr),
}

/// Why a request was refused by the limiter.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Come back after this long.
    RetryAfter(Duration),
    /// More than the burst at once: this request can never pass as it is.
    LargerThanBurst,
}

/// One token bucket per client (GCRA, as `governor` keeps it: one atomic
/// word per client in a sharded map). The map is swept of clients whose bucket
/// is full again whenever it has doubled since the last sweep, so a request
/// costs O(1) amortised however many clients there are, and memory is bounded
/// by the clients seen while their buckets refill.
pub struct RateLimiter {
    buckets: DefaultKeyedRateLimiter<ClientId>,
    requests: AtomicUsize,
    /// Clients tracked at which the next sweep runs.
    sweep_at: AtomicUsize,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        // Rates of a billion a second and more round to one token per nanosecond.
        let period = Duration::from_secs_f64(1.0 / limit.per_second).max(Duration::from_nanos(1));
        let burst =
            NonZeroU32::new(limit.burst.min(f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .expect("the period is positive")
            .allow_burst(burst);
        RateLimiter {
            buckets: DefaultKeyedRateLimiter::dashmap(quota),
            requests: AtomicUsize::new(0),
            sweep_at: AtomicUsize::new(SWEEP_FROM),
        }
    }

    /// Takes `cost` tokens from `client`'s bucket, or says when to retry.
    pub fn take(&self, client: ClientId, cost: u32) -> Result<(), Refusal> {
        let Some(cost) = NonZeroU32::new(cost) else {
            return Ok(());
        };
        let taken = match self.buckets.check_key_n(&client, cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Refusal::RetryAfter(
                not_until.wait_time_from(self.buckets.clock().now()),
            )),
            Err(InsufficientCapacity(_)) => Err(Refusal::LargerThanBurst),
        };
        if self.requests.fetch_add(1, Ordering::Relaxed) % SWEEP_CHECK_EVERY == 0 {
            self.sweep_if_grown();
        }
        taken
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn sweep_if_grown(&self) {
        let sweep_at = self.sweep_at.load(Ordering::Relaxed);
        if self.buckets.len() < sweep_at {
            return;
        }
        // One request sweeps; the others go on.
        if self
            .sweep_at
            .compare_exchange(sweep_at, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.buckets.retain_recent();
        let next = (2 * self.buckets.len()).max(SWEEP_FROM);
        self.sweep_at.store(next, Ordering::Relaxed);
    }
}

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

/// The address a client is known by: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64, so single IPv6 addresses cost it nothing).
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Open connections: at most `max` in all and `per_client` from one
/// [`client_address`]. Taken once per connection, so a lock is cheap enough.
pub struct ConnectionLimit {
    max: usize,
    per_client: usize,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
pub struct ConnectionPermit {
    limit: Arc<ConnectionLimit>,
    client: IpAddr,
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRefusal {
    Total,
    PerClient,
}

impl ConnectionLimit {
    pub fn new(max: usize, per_client: usize) -> Self {
        ConnectionLimit {
            max,
            per_client,
            open: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn per_client(&self) -> usize {
        self.per_client
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, ConnectionRefusal> {
        let client = client_address(peer);
        let mut by_client = self
            .by_client
            .lock()
            .expect("no panics while holding the lock");
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(ConnectionRefusal::Total);
        }
        let count = by_client.entry(client).or_insert(0);
        if *count >= self.per_client {
            return Err(ConnectionRefusal::PerClient);
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limit: Arc::clone(self),
            client,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut by_client = self
            .limit
            .by_client
            .lock()
            .expect("no panics while holding the lock");
        if let Some(count) = by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                by_client.remove(&self.client);
            }
        }
        self.limit.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const CLIENT: ClientId = ClientId::Address(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert_eq!(limiter.take(CLIENT, 1), Ok(()));
        }
        let Err(Refusal::RetryAfter(wait)) = limiter.take(CLIENT, 1) else {
            panic!("not limited")
        };
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::from_millis(50),
            "{wait:?}"
        );
        std::thread::sleep(wait);
        assert_eq!(limiter.take(CLIENT, 1), Ok(()));
        // Another client has its own bucket.
        let other = ClientId::Token([1; 32]);
        assert_eq!(limiter.take(other, 3), Ok(()));
        assert_eq!(limiter.take(other, 0), Ok(()));
    }

    fn budget(total: usize, per_batch: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget::new(BatchReads { total, per_batch }, total))
    }

    fn address(n: u32) -> ClientId {
        ClientId::Address(IpAddr::V4(n.into()))
    }

    #[test]
    fn many_distinct_clients_cost_the_same_as_few() {
        // A slow refill: every bucket taken from stays short for the whole
        // test, so no client may be forgotten.
        let limiter = RateLimiter::new(RateLimit {
            per_second: 0.001,
            burst: 1.0,
        });
        let started = Instant::now();
        for n in 0..3 * SWEEP_FROM as u32 {
            assert_eq!(limiter.take(address(n), 1), Ok(()));
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{n} clients took 20 s: each new client costs more than the last"
            );
        }
        assert_eq!(limiter.tracked(), 3 * SWEEP_FROM);
        assert!(limiter.take(address(0), 1).is_err());
    }

    #[test]
    fn clients_whose_bucket_is_full_again_are_forgotten() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 1000.0,
            burst: 1.0,
        });
        for n in 0..3 * SWEEP_FROM as u32 {
            assert_eq!(limiter.take(address(n), 1), Ok(()));
        }
        // Each bucket is full again a millisecond after its request.
        let tracked = limiter.tracked();
        assert!(tracked <= SWEEP_FROM + SWEEP_CHECK_EVERY, "{tracked}");
    }

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
    fn work_that_outlives_its_request_keeps_its_slot_and_reads_until_it_stops() {
        let limit = Arc::new(ConcurrencyLimit::new(4));
        let budget = budget(64, 32);
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

    #[test]
    fn batches_cost_one_per_message() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 100.0,
        });
        assert_eq!(limiter.take(CLIENT, 60), Ok(()));
        assert!(matches!(
            limiter.take(CLIENT, 60),
            Err(Refusal::RetryAfter(_))
        ));
        assert_eq!(limiter.take(CLIENT, 101), Err(Refusal::LargerThanBurst));
    }

    #[test]
    fn connections_are_limited_in_all_and_per_client() {
        let limit = Arc::new(ConnectionLimit::new(3, 2));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "2001:db8::1".parse().unwrap();
        let two_neighbour: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let a = limit.admit(one).unwrap();
        let _b = limit.admit(one).unwrap();
        assert_eq!(limit.admit(one).err(), Some(ConnectionRefusal::PerClient));
        let _c = limit.admit(two).unwrap();
        assert_eq!(
            limit.admit(two_neighbour).err(),
            Some(ConnectionRefusal::Total)
        );
        assert_eq!(limit.open(), 3);
        drop(a);
        assert_eq!(limit.open(), 2);
        // Same /64: one client.
        let _d = limit.admit(two_neighbour).unwrap();
        assert_eq!(
            limit.admit("192.0.2.2".parse().unwrap()).err(),
            Some(ConnectionRefusal::Total)
        );
    }

    #[test]
    fn client_addresses() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_address(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(
            client_address(v6),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
