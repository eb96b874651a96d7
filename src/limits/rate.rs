//! Per-client rate limiting: one token bucket per client, its token when
//! authenticated, else its source address.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
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

impl RateLimit {
    /// Requests per second: one per 1,000 s to one per nanosecond, the bucket's resolution.
    pub const RATES: RangeInclusive<f64> = 0.001..=1e9;
    /// The token bucket counts requests in a u32.
    pub const BURSTS: RangeInclusive<f64> = 1.0..=u32::MAX as f64;

    /// `100` (100 requests/s, burst 100) or `100:500` (burst 500), within
    /// [`RATES`](Self::RATES) and [`BURSTS`](Self::BURSTS).
    pub fn parse(text: &str) -> Option<RateLimit> {
        let (rate, burst) = text.split_once(':').unwrap_or((text, text));
        let within = |part: &str, range: &RangeInclusive<f64>| {
            part.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| range.contains(n))
        };
        Some(RateLimit {
            per_second: within(rate, &Self::RATES)?,
            burst: within(burst, &Self::BURSTS)?,
        })
    }
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
    limit: RateLimit,
    buckets: DefaultKeyedRateLimiter<ClientId>,
    requests: AtomicUsize,
    /// Clients tracked at which the next sweep runs.
    sweep_at: AtomicUsize,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
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
            limit,
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

    /// The limit each client's bucket has.
    pub fn limit(&self) -> RateLimit {
        self.limit
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
}
