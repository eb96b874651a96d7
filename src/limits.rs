//! Per-client rate limiting (one token bucket per client: its token when
//! authenticated, else its source IP) and the server-wide concurrency limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::TokenDigest;

/// Buckets kept before full (idle) ones are dropped; a full bucket is the same as none.
const MAX_TRACKED_CLIENTS: usize = 100_000;

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

pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<ClientId, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens from `client`'s bucket, or says when to retry.
    pub fn take(&self, client: ClientId, cost: u32) -> Result<(), Refusal> {
        self.take_at(client, cost, Instant::now())
    }

    fn take_at(&self, client: ClientId, cost: u32, now: Instant) -> Result<(), Refusal> {
        let cost = f64::from(cost);
        if cost > self.limit.burst {
            return Err(Refusal::LargerThanBurst);
        }
        let mut buckets = self
            .buckets
            .lock()
            .expect("no panics while holding the lock");
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            let limit = self.limit;
            buckets.retain(|_, bucket| bucket.level(limit, now) < limit.burst);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.limit.burst,
            updated: now,
        });
        bucket.tokens = bucket.level(self.limit, now);
        bucket.updated = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            let wait = (cost - bucket.tokens) / self.limit.per_second;
            Err(Refusal::RetryAfter(Duration::from_secs_f64(wait)))
        }
    }
}

impl Bucket {
    fn level(&self, limit: RateLimit, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.updated).as_secs_f64() * limit.per_second;
        (self.tokens + refill).min(limit.burst)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: ClientId = ClientId::Address(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 3.0,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take_at(CLIENT, 1, start), Ok(()));
        }
        let Err(Refusal::RetryAfter(wait)) = limiter.take_at(CLIENT, 1, start) else {
            panic!("not limited")
        };
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(
            limiter.take_at(CLIENT, 1, start + Duration::from_millis(100)),
            Ok(())
        );
        // Another client has its own bucket.
        let other = ClientId::Token([1; 32]);
        assert_eq!(limiter.take_at(other, 3, start), Ok(()));
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
    }

    #[test]
    fn batches_cost_one_per_message() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 100.0,
        });
        let start = Instant::now();
        assert_eq!(limiter.take_at(CLIENT, 60, start), Ok(()));
        assert!(matches!(
            limiter.take_at(CLIENT, 60, start),
            Err(Refusal::RetryAfter(_))
        ));
        assert_eq!(
            limiter.take_at(CLIENT, 101, start),
            Err(Refusal::LargerThanBurst)
        );
    }
}
