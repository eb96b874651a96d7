//! Prometheus text-format metrics, kept with atomics so recording a request
//! takes no lock and touches as few shared cache lines as possible.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::limits::ReadBudget;
use crate::manifest::Fingerprint;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets; the last bucket counts what is
/// slower than every bound, so the total is the buckets' sum.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
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
        let count = cumulative + self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
}

/// Route patterns, the only values the `route` label takes: a path a client
/// chose never becomes a label.
const ROUTES: [&str; 11] = [
    "/hmac",
    "/hmac/batch",
    "/verify",
    "/whoami",
    "/healthz",
    "/readyz",
    "/metrics",
    VAULT_HMAC,
    VAULT_VERIFY,
    "/v1/sys/health",
    "unmatched",
];
/// Vault's transit routes, whatever key name and algorithm the path holds.
const VAULT_HMAC: &str = "/v1/transit/hmac/:name";
const VAULT_VERIFY: &str = "/v1/transit/verify/:name";

/// Every status code `http` can represent has its own counter per route.
const STATUS_CODES: std::ops::RangeInclusive<u16> = 100..=999;
const STATUS_SLOTS: usize = (*STATUS_CODES.end() - *STATUS_CODES.start() + 1) as usize;

/// A request's route label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Route(usize);

impl Route {
    /// The route a request path is served by: the path itself when it is one
    /// of the routes without parameters.
    pub fn of_path(path: &str) -> Route {
        let unmatched = ROUTES.len() - 1;
        let pattern = if path.starts_with("/v1/transit/hmac/") {
            VAULT_HMAC
        } else if path.starts_with("/v1/transit/verify/") {
            VAULT_VERIFY
        } else {
            path
        };
        Route(
            ROUTES[..unmatched]
                .iter()
                .position(|route| *route == pattern)
                .unwrap_or(unmatched),
        )
    }

    pub fn label(self) -> &'static str {
        ROUTES[self.0]
    }

    /// `/healthz`, `/readyz` and Vault's `/v1/sys/health`, which load
    /// balancers and health checkers ask.
    pub fn is_health(self) -> bool {
        matches!(self.label(), "/healthz" | "/readyz" | "/v1/sys/health")
    }

    /// Vault's routes, whose refusals take Vault's shape.
    pub fn is_vault(self) -> bool {
        self.label().starts_with("/v1/")
    }
}

/// Requests by route and status, one counter each.
pub struct RequestCounts(Box<[AtomicU64]>);

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts(
            (0..ROUTES.len() * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }
}

impl RequestCounts {
    fn slot(&self, route: Route, status: u16) -> &AtomicU64 {
        let status = status.clamp(*STATUS_CODES.start(), *STATUS_CODES.end());
        &self.0[route.0 * STATUS_SLOTS + usize::from(status - STATUS_CODES.start())]
    }
}

/// The statuses a client's requests are counted by; any other is `other`.
const CLIENT_STATUSES: [u16; 10] = [200, 400, 403, 404, 405, 408, 413, 429, 500, 503];
const CLIENT_STATUS_SLOTS: usize = CLIENT_STATUSES.len() + 1;

/// One client's counters, labelled with its name in the clients file (or its
/// digest's first 8 hex digits): a caller can never make a label of its own.
pub struct ClientCounters {
    /// By route and status: few statuses, so a client costs a few hundred bytes.
    requests: Box<[AtomicU64]>,
    pub macs: AtomicU64,
    pub rate_limited: AtomicU64,
}

impl Default for ClientCounters {
    fn default() -> Self {
        ClientCounters {
            requests: (0..ROUTES.len() * CLIENT_STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            macs: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for ClientCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCounters")
            .field("macs", &self.macs)
            .field("rate_limited", &self.rate_limited)
            .finish_non_exhaustive()
    }
}

impl ClientCounters {
    pub fn count_request(&self, route: Route, status: u16) {
        self.requests[route.0 * CLIENT_STATUS_SLOTS + client_status_slot(status)]
            .fetch_add(1, Ordering::Relaxed);
    }
}

fn client_status_slot(status: u16) -> usize {
    CLIENT_STATUSES
        .iter()
        .position(|&known| known == status)
        .unwrap_or(CLIENT_STATUSES.len())
}

/// Refused requests logged per second at most: a flood of them must not fill the disk.
const AUDIT_LINES_PER_SECOND: u64 = 10;

/// How many audit lines may be written now.
pub struct AuditThrottle {
    started: Instant,
    /// The second (since `started`) being counted, and the lines written in it.
    second: AtomicU64,
    written: AtomicU64,
    held_back: AtomicU64,
}

impl Default for AuditThrottle {
    fn default() -> Self {
        AuditThrottle {
            started: Instant::now(),
            second: AtomicU64::new(0),
            written: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }
}

impl AuditThrottle {
    /// Whether a line may be written now, with the number of lines held back
    /// since the last one written; about [`AUDIT_LINES_PER_SECOND`] pass a second.
    pub fn admit(&self) -> Option<u64> {
        let now = self.started.elapsed().as_secs();
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < AUDIT_LINES_PER_SECOND {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: RequestCounts,
    pub request_latency: Histogram,
    pub bytes_hashed: AtomicU64,
    pub macs_computed: AtomicU64,
    pub unauthorized: AtomicU64,
    pub rate_limited: AtomicU64,
    pub shed: AtomicU64,
    pub connections_refused: AtomicU64,
    /// SIGHUPs whose clients file had an error.
    pub clients_reload_failures: AtomicU64,
    pub audit: AuditThrottle,
}

/// MODE32 and MODE32X key reads, counted by the key store.
#[derive(Default)]
pub struct KeyReadStats {
    pub latency: Histogram,
    pub errors: AtomicU64,
    /// Reads that had not finished within CRYPTOSERVER_KEY_READ_TIMEOUT.
    pub timeouts: AtomicU64,
    /// Failing files `/readyz`'s probes read whole again.
    pub probe_reads: AtomicU64,
}

impl Metrics {
    /// Counts a finished request.
    pub fn count_request(&self, route: Route, status: u16) {
        self.requests
            .slot(route, status)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The text `GET /metrics` answers; `in_flight` is the requests being served,
    /// `connections` the connections open to the main listener.
    /// `fingerprint` names the secrets served (empty for secrets made by hand).
    /// `clients` are the clients file's, by label.
    pub fn render(
        &self,
        mode: &str,
        fingerprint: Option<Fingerprint>,
        (in_flight, connections): (usize, usize),
        key_reads: Option<(&KeyReadStats, &ReadBudget)>,
        clients: &[(&str, &ClientCounters)],
    ) -> String {
        let mut out = String::with_capacity(4096);
        let fingerprint = fingerprint.map_or(String::new(), |fingerprint| fingerprint.to_string());
        let _ = writeln!(
            out,
            "# HELP cryptoserver_build_info Version, mode and secrets fingerprint of this server.\n\
             # TYPE cryptoserver_build_info gauge\n\
             cryptoserver_build_info{{version=\"{}\",mode=\"{mode}\",fingerprint=\"{fingerprint}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP cryptoserver_requests_total Requests by route and status.\n# TYPE cryptoserver_requests_total counter"
        );
        for route in (0..ROUTES.len()).map(Route) {
            for status in STATUS_CODES {
                let count = self.requests.slot(route, status).load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "cryptoserver_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                        route.label()
                    );
                }
            }
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
                in_flight as u64,
            ),
            (
                "cryptoserver_open_connections",
                "gauge",
                "Connections open to the main listener.",
                connections as u64,
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
            counter(
                "cryptoserver_connections_refused_total",
                "Connections closed at once, over the connection limits.",
                &self.connections_refused,
            ),
            counter(
                "cryptoserver_clients_reload_failures_total",
                "SIGHUPs whose clients file had an error (the clients in force stayed as they were).",
                &self.clients_reload_failures,
            ),
        ];
        for (name, kind, help, value) in gauges_and_counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        render_clients(&mut out, clients);
        if let Some((key_reads, batch_reads)) = key_reads {
            let key_read_counts = [
                counter(
                    "cryptoserver_key_read_errors_total",
                    "MODE32/MODE32X key reads that failed.",
                    &key_reads.errors,
                ),
                counter(
                    "cryptoserver_key_read_timeouts_total",
                    "MODE32/MODE32X key reads that took longer than CRYPTOSERVER_KEY_READ_TIMEOUT (their request got 503).",
                    &key_reads.timeouts,
                ),
                counter(
                    "cryptoserver_readyz_file_reads_total",
                    "Failing MODE32/MODE32X key files /readyz read whole again.",
                    &key_reads.probe_reads,
                ),
                (
                    "cryptoserver_batch_key_reads_in_flight",
                    "gauge",
                    "Key reads batches hold now, of CRYPTOSERVER_BATCH_READS.",
                    batch_reads.in_flight() as u64,
                ),
                (
                    "cryptoserver_batches_waiting_for_key_reads",
                    "gauge",
                    "Batches waiting now for key reads other batches hold.",
                    batch_reads.waiting() as u64,
                ),
                (
                    "cryptoserver_batches_refused_total",
                    "counter",
                    "Batches refused with 503: the queue for key reads was full, or none came within CRYPTOSERVER_KEY_READ_TIMEOUT.",
                    batch_reads.refused(),
                ),
            ];
            for (name, kind, help, value) in key_read_counts {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
            key_reads.latency.render(
                &mut out,
                "cryptoserver_key_read_duration_seconds",
                "MODE32/MODE32X key read latency.",
            );
        }
        out
    }
}

fn render_clients(out: &mut String, clients: &[(&str, &ClientCounters)]) {
    if clients.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP cryptoserver_client_requests_total Requests by client (its name in the clients file, \
         or its digest's first 8 hex digits), route and status.\n\
         # TYPE cryptoserver_client_requests_total counter"
    );
    for (client, counters) in clients {
        for route in (0..ROUTES.len()).map(Route) {
            for slot in 0..CLIENT_STATUS_SLOTS {
                let count =
                    counters.requests[route.0 * CLIENT_STATUS_SLOTS + slot].load(Ordering::Relaxed);
                if count > 0 {
                    let status = CLIENT_STATUSES
                        .get(slot)
                        .map_or("other".to_owned(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "cryptoserver_client_requests_total{{client=\"{client}\",route=\"{}\",status=\"{status}\"}} {count}",
                        route.label()
                    );
                }
            }
        }
    }
    type Counter = fn(&ClientCounters) -> &AtomicU64;
    let per_client: [(&str, &str, Counter); 2] = [
        (
            "cryptoserver_client_macs_total",
            "MACs computed by client (a batch counts each message).",
            |counters| &counters.macs,
        ),
        (
            "cryptoserver_client_rate_limited_total",
            "Requests refused by the client's rate limit, by client.",
            |counters| &counters.rate_limited,
        ),
    ];
    for (name, help, value) in per_client {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (client, counters) in clients {
            let _ = writeln!(
                out,
                "{name}{{client=\"{client}\"}} {}",
                value(counters).load(Ordering::Relaxed)
            );
        }
    }
}

fn counter(
    name: &'static str,
    help: &'static str,
    value: &AtomicU64,
) -> (&'static str, &'static str, &'static str, u64) {
    (name, "counter", help, value.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count_request(Route::of_path("/hmac"), 200);
        metrics.count_request(Route::of_path("/hmac"), 200);
        metrics.count_request(Route::of_path("/hmac/"), 404);
        metrics.count_request(Route::of_path("/readyz"), 1000);
        metrics.request_latency.observe(Duration::from_micros(300));
        metrics.request_latency.observe(Duration::from_secs(10));
        let text = metrics.render("MODE16", None, (3, 5), None, &[]);
        assert!(text.contains(&format!(
            "cryptoserver_build_info{{version=\"{}\",mode=\"MODE16\",fingerprint=\"\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("cryptoserver_requests_total{route=\"/hmac\",status=\"200\"} 2"));
        assert!(text.contains("cryptoserver_request_duration_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("cryptoserver_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("cryptoserver_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("cryptoserver_requests_total{route=\"unmatched\",status=\"404\"} 1"));
        assert!(text.contains("cryptoserver_requests_total{route=\"/readyz\",status=\"999\"} 1"));
        assert!(text.contains("cryptoserver_request_duration_seconds_count 2"));
        assert!(text.contains("cryptoserver_in_flight_requests 3"));
        assert!(text.contains("cryptoserver_open_connections 5"));
        assert!(!text.contains("cryptoserver_batch_key_reads_in_flight"));
        assert!(!text.contains("cryptoserver_client_"));
    }

    #[test]
    fn renders_clients_by_their_label_only() {
        let (billing, plain) = (ClientCounters::default(), ClientCounters::default());
        billing.count_request(Route::of_path("/hmac"), 200);
        billing.count_request(Route::of_path("/verify"), 403);
        billing.count_request(Route::of_path("/hmac"), 418);
        billing.macs.fetch_add(7, Ordering::Relaxed);
        plain.rate_limited.fetch_add(2, Ordering::Relaxed);
        let clients = [("billing", &billing), ("0a1b2c3d", &plain)];
        let text = Metrics::default().render("MODE0", None, (0, 0), None, &clients);
        for line in [
            "cryptoserver_client_requests_total{client=\"billing\",route=\"/hmac\",status=\"200\"} 1",
            "cryptoserver_client_requests_total{client=\"billing\",route=\"/verify\",status=\"403\"} 1",
            "cryptoserver_client_requests_total{client=\"billing\",route=\"/hmac\",status=\"other\"} 1",
            "cryptoserver_client_macs_total{client=\"billing\"} 7",
            "cryptoserver_client_macs_total{client=\"0a1b2c3d\"} 0",
            "cryptoserver_client_rate_limited_total{client=\"0a1b2c3d\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn audit_lines_are_throttled_and_say_how_many_were_held_back() {
        let throttle = AuditThrottle::default();
        let admitted = (0..1000).filter(|_| throttle.admit().is_some()).count() as u64;
        // Unless the second turned over in between.
        assert!((AUDIT_LINES_PER_SECOND..=2 * AUDIT_LINES_PER_SECOND).contains(&admitted));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(throttle.admit(), Some(1000 - admitted));
        assert_eq!(throttle.admit(), Some(0));
    }

    #[test]
    fn renders_key_reads_and_the_batch_budget() {
        use std::sync::Arc;

        use crate::limits::{take_now, BatchReads, ClientId, ReadBudget};

        let stats = KeyReadStats::default();
        stats.timeouts.fetch_add(2, Ordering::Relaxed);
        let budget = Arc::new(ReadBudget::new(
            BatchReads {
                total: 8,
                per_batch: 8,
            },
            8,
        ));
        let client = ClientId::Address(std::net::Ipv4Addr::LOCALHOST.into());
        let _reads = take_now(&budget, client, 5).unwrap();
        assert!(take_now(&budget, client, 8).is_none());
        let text = Metrics::default().render("MODE32", None, (0, 0), Some((&stats, &budget)), &[]);
        assert!(text.contains("cryptoserver_key_read_timeouts_total 2"));
        assert!(text.contains("cryptoserver_batch_key_reads_in_flight 5"));
        assert!(text.contains("cryptoserver_batches_refused_total 1"));
        assert!(text.contains("# TYPE cryptoserver_batch_key_reads_in_flight gauge"));
    }
}
