//! Per-client rate limiting (one token bucket per client: its token when
//! authenticated, else its source address), the server-wide concurrency limit,
//! and the limits on open connections, in all and per client address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, InsufficientCapacity, Quota};

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
