//! Prometheus text-format metrics, kept with atomics so recording costs no lock
//! on the hot path (the per-status request count takes one short lock).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub request_latency: Histogram,
    pub in_flight: AtomicI64,
    pub bytes_hashed: AtomicU64,
    pub macs_computed: AtomicU64,
    pub unauthorized: AtomicU64,
    pub rate_limited: AtomicU64,
    pub shed: AtomicU64,
}

/// MODE32 key reads, counted by the key store.
#[derive(Default)]
pub struct KeyReadStats {
    pub latency: Histogram,
    pub errors: AtomicU64,
}

impl Metrics {
    /// Counts a finished request; `route` is a route pattern, never a client-chosen path.
    pub fn count_request(&self, route: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .expect("no panics while holding the lock")
            .entry((route, status))
            .or_default() += 1;
    }

    pub fn render(&self, mode: &str, key_reads: Option<&KeyReadStats>) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP cryptoserver_build_info Version and mode of this server.\n# TYPE cryptoserver_build_info gauge\n\
             cryptoserver_build_info{{version=\"{}\",mode=\"{mode}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP cryptoserver_requests_total Requests by route and status.\n# TYPE cryptoserver_requests_total counter"
        );
        for ((route, status), count) in self
            .requests
            .lock()
            .expect("no panics while holding the lock")
            .iter()
        {
            let _ = writeln!(
                out,
                "cryptoserver_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        self.request_latency.render(
            &mut out,
            "cryptoserver_request_duration_seconds",
            "Request latency.",
        );
        let gauges_and_counters = [
            (
                "cryptoserver_in_flight_requests",
                "gauge",
                "Requests being served.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            counter(
                "cryptoserver_hashed_bytes_total",
                "Message bytes MACed.",
                &self.bytes_hashed,
            ),
            counter(
                "cryptoserver_macs_total",
                "MACs computed (a batch counts each message).",
                &self.macs_computed,
            ),
            counter(
                "cryptoserver_unauthorized_total",
                "Requests refused for a missing or unknown token.",
                &self.unauthorized,
            ),
            counter(
                "cryptoserver_rate_limited_total",
                "Requests refused by the per-client rate limit.",
                &self.rate_limited,
            ),
            counter(
                "cryptoserver_shed_total",
                "Requests refused at the concurrency limit.",
                &self.shed,
            ),
        ];
        for (name, kind, help, value) in gauges_and_counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(key_reads) = key_reads {
            let (name, kind, help, value) = counter(
                "cryptoserver_key_read_errors_total",
                "MODE32 key reads that failed.",
                &key_reads.errors,
            );
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
            key_reads.latency.render(
                &mut out,
                "cryptoserver_key_read_duration_seconds",
                "MODE32 key read latency.",
            );
        }
        out
    }
}

fn counter(
    name: &'static str,
    help: &'static str,
    value: &AtomicU64,
) -> (&'static str, &'static str, &'static str, i64) {
    (name, "counter", help, value.load(Ordering::Relaxed) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count_request("/hmac", 200);
        metrics.count_request("/hmac", 200);
        metrics.request_latency.observe(Duration::from_micros(300));
        metrics.request_latency.observe(Duration::from_secs(10));
        let text = metrics.render("MODE16", None);
        assert!(text.contains(&format!(
            "cryptoserver_build_info{{version=\"{}\",mode=\"MODE16\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("cryptoserver_requests_total{route=\"/hmac\",status=\"200\"} 2"));
        assert!(text.contains("cryptoserver_request_duration_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("cryptoserver_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("cryptoserver_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("cryptoserver_in_flight_requests 0"));
    }
}
