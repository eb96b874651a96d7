//! The per-client rate limiter's cost per request (`cargo bench --bench rate_limit`):
//! one client, and a million distinct clients, each request from the next one,
//! as an address scan or a botnet would send them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cryptoserver::limits::{ClientId, RateLimit, RateLimiter};

const CLIENTS: u32 = 1_000_000;

/// A limit each request leaves short for a second: no client may be forgotten
/// during a run, the worst case for tracking them (and the one where a limiter
/// that scans its clients degrades).
const LIMIT: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 10.0,
};

fn client(n: u32) -> ClientId {
    ClientId::Address(IpAddr::V4(Ipv4Addr::from(n)))
}

fn rate_limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate limiter");
    group.throughput(Throughput::Elements(1));
    let limiter = RateLimiter::new(LIMIT);
    group.bench_function("one client", |b| {
        b.iter(|| limiter.take(black_box(client(1)), 1))
    });
    // Every client already known, so each request finds its bucket among a million.
    let limiter = RateLimiter::new(LIMIT);
    for n in 0..CLIENTS {
        let _ = limiter.take(client(n), 1);
    }
    let mut next = 0;
    group.bench_function("1,000,000 distinct clients, each known", |b| {
        b.iter(|| {
            next = (next + 1) % CLIENTS;
            limiter.take(black_box(client(next)), 1)
        })
    });
    // A million new clients, one request each, from an empty limiter: the
    // whole cost of tracking them, sweeps included, divided per request.
    group.throughput(Throughput::Elements(u64::from(CLIENTS)));
    group.sample_size(10);
    group.bench_function("1,000,000 new clients, one request each", |b| {
        b.iter_batched(
            || RateLimiter::new(LIMIT),
            |limiter| {
                for n in 0..CLIENTS {
                    let _ = limiter.take(black_box(client(n)), 1);
                }
                limiter
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, rate_limiter);
criterion_main!(benches);
