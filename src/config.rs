//! Server configuration: command-line flags, each backed by the environment
//! variable the original design named (`CRYPTOSERVER_MODE`, `_SECRETDIR`, `_BIND`)
//! or one in the same style. The only place the server's command line is parsed.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::keystore::KeyReads;
use crate::layout::Mode;
use crate::limits::{BatchReads, BatchReadsError, RateLimit, ReadLimits};
use crate::signed_clients::{Signer, SignerError};

// The values each numeric setting accepts. They are checked as the settings
// are parsed, so a value outside its range stops the server before the port is
// bound, with clap naming the flag; within them nothing the server computes
// from a setting overflows.
/// Timeouts: a zero one would fail every request, and an hour is beyond any client's patience.
const TIMEOUT_SECONDS: RangeInclusive<u64> = 1..=3600;
/// The shutdown grace: zero exits at once.
const GRACE_SECONDS: RangeInclusive<u64> = 0..=3600;
/// Requests and connections at once, and batch key reads.
const COUNTS: RangeInclusive<u64> = 1..=1 << 20;
/// Messages are held in memory whole.
const BODY_BYTES: RangeInclusive<u64> = 1..=1 << 30;
/// A smaller head would refuse ordinary requests.
const HEADER_BYTES: RangeInclusive<u64> = 1 << 10..=1 << 20;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "cryptoserver",
    version,
    about = "HMAC-SHA256 over HTTP, with the secrets sealed on this host",
    after_help = "Every flag can also be set by its environment variable; a flag beats the variable.\n\
                  RUST_LOG sets the log level (unset: no log output), e.g. RUST_LOG=info."
)]
pub struct Config {
    /// How many keys to use: MODE0 (one key, file `secret`), MODE16 (65,536 keys, file `0000`),
    /// MODE32 (2^32 keys, files `0000`..`ffff`) or MODE32X (MODE32's files, 8 keys per
    /// message: see the README); case-insensitive.
    #[arg(long, env = "CRYPTOSERVER_MODE", default_value = "MODE0")]
    pub mode: Mode,

    /// Directory holding the secrets.
    #[arg(
        long = "secret-dir",
        env = "CRYPTOSERVER_SECRETDIR",
        default_value = "/secrets"
    )]
    pub secret_dir: PathBuf,

    /// Socket address to listen on.
    #[arg(long, env = "CRYPTOSERVER_BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,

    /// Largest accepted message, in bytes, or with a KiB/MiB/GiB suffix (e.g. 512KiB); 1 byte to 1GiB.
    #[arg(long, env = "CRYPTOSERVER_MAX_BODY", default_value = "1MiB", value_parser = byte_size(BODY_BYTES))]
    pub max_body: usize,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT before exiting anyway; 0 to 3600.
    #[arg(long, env = "CRYPTOSERVER_SHUTDOWN_GRACE", default_value = "10", value_parser = seconds(GRACE_SECONDS))]
    pub shutdown_grace: Duration,

    /// The clients file: one line per allowed bearer token, `DIGEST [NAME [OPTION...]]`, its
    /// SHA-256 hex digest (`cargo xtask gen-token` makes one), a name, and namespace=, routes=,
    /// rate= (docs/clients.md). When set, every route but /healthz and /readyz needs
    /// `Authorization: Bearer <token>`.
    #[arg(long, env = "CRYPTOSERVER_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Another name for --tokens-file.
    #[arg(
        long,
        env = "CRYPTOSERVER_CLIENTS_FILE",
        conflicts_with = "tokens_file"
    )]
    pub clients_file: Option<PathBuf>,

    /// The operator's minisign public key (the base64 line minisign writes second in
    /// minisign.pub, starting with RW): serve PUT /admin/clients, which takes a clients file
    /// signed with its secret key (docs/clients.md). Needs a clients file.
    // A string, checked by `clients_signer`: clap would echo a bad value, and a
    // secret key pasted here by mistake must not reach a log.
    #[arg(long, env = "CRYPTOSERVER_CLIENTS_SIGNER")]
    pub clients_signer: Option<String>,

    /// Where the newest signed clients update is kept (clients.signed), for the next start.
    #[arg(
        long = "state-dir",
        env = "CRYPTOSERVER_STATE_DIR",
        default_value = "/var/lib/cryptoserver"
    )]
    pub state_dir: PathBuf,

    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, env = "CRYPTOSERVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the certificate.
    #[arg(long, env = "CRYPTOSERVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: require client certificates signed by them (mTLS).
    #[arg(long, env = "CRYPTOSERVER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Per-client rate limit as RATE[:BURST] requests per second (batch messages count
    /// one each; a fractional burst rounds down), keyed by token when authenticated, else
    /// by source IP (an IPv6 /64 is one client); RATE from 0.001 to 1000000000, BURST from 1
    /// to 4294967295. Unset: no limit.
    #[arg(long, env = "CRYPTOSERVER_RATE_LIMIT", value_parser = parse_rate_limit)]
    pub rate_limit: Option<RateLimit>,

    /// Requests served at once, 1 to 1048576; more are refused with 503 at once rather than
    /// queued. /healthz and /readyz take no place.
    #[arg(long, env = "CRYPTOSERVER_MAX_CONCURRENT", default_value = "1024", value_parser = count(COUNTS))]
    pub max_concurrent: usize,

    /// Connections open at once, 1 to 1048576; more are closed as soon as they are accepted.
    /// Default: the file descriptors RLIMIT_NOFILE leaves once the secrets are open, less those
    /// the server keeps for itself (files reopened by key reads, the metrics listener).
    #[arg(long, env = "CRYPTOSERVER_MAX_CONNECTIONS", value_parser = count(COUNTS))]
    pub max_connections: Option<usize>,

    /// Connections open at once from one client address (an IPv6 /64 counts as one), 1 to
    /// 1048576; more are closed as soon as they are accepted. Default: a quarter of the
    /// connection limit and a sixteenth of --max-concurrent, at most 256 and at least 8.
    #[arg(long, env = "CRYPTOSERVER_MAX_CONNECTIONS_PER_CLIENT", value_parser = count(COUNTS))]
    pub max_connections_per_client: Option<usize>,

    /// MODE32/MODE32X key reads that batches may have in flight, as ALL[:PER_BATCH]: ALL for
    /// every batch together (1 to 1048576, below --max-concurrent), PER_BATCH for one (default: half of ALL;
    /// at least 8 in MODE32X). Each message of a batch takes its reads in its client's turn (a
    /// client is its token, else its address), so a client's batch waits for a few reads, not
    /// for another client's batches; a batch gets 503 when too many are admitted (one client
    /// holds at most half the places) or a message's reads do not come within
    /// --key-read-timeout. Single requests never take from it. Default: 64:32, at most half of
    /// --max-concurrent.
    #[arg(long, env = "CRYPTOSERVER_BATCH_READS", value_parser = parse_batch_reads)]
    pub batch_reads: Option<BatchReads>,

    /// Seconds a MODE32/MODE32X key read may take, 1 to 3600; a slower one fails its request
    /// with 503 (the read keeps its place under the limits until it has really stopped).
    #[arg(long, env = "CRYPTOSERVER_KEY_READ_TIMEOUT", default_value_t = ReadLimits::DEFAULT_TIMEOUT.as_secs(), value_parser = whole_seconds(TIMEOUT_SECONDS))]
    pub key_read_timeout: u64,

    /// How MODE32 and MODE32X read keys: auto (io_uring where the kernel allows it, else a thread
    /// pool), io-uring (startup fails without it) or threads.
    #[arg(long, env = "CRYPTOSERVER_KEY_READS", default_value_t = KeyReads::Auto)]
    pub key_reads: KeyReads,

    /// Seconds a client gets to send a request's headers, and that an idle keep-alive connection
    /// stays open; 1 to 3600.
    #[arg(long, env = "CRYPTOSERVER_HEADER_TIMEOUT", default_value = "10", value_parser = seconds(TIMEOUT_SECONDS))]
    pub header_timeout: Duration,

    /// Seconds a client gets to send a request's body; 1 to 3600.
    #[arg(long, env = "CRYPTOSERVER_BODY_TIMEOUT", default_value = "30", value_parser = seconds(TIMEOUT_SECONDS))]
    pub body_timeout: Duration,

    /// Largest request head (request line and headers), in bytes or with KiB/MiB; 1KiB to 1MiB.
    #[arg(long, env = "CRYPTOSERVER_MAX_HEADER", default_value = "16KiB", value_parser = byte_size(HEADER_BYTES))]
    pub max_header: usize,

    /// Serve GET /metrics on this address too, without authentication (keep it private).
    #[arg(long, env = "CRYPTOSERVER_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Log format: text, or json for journald and CloudWatch.
    #[arg(long, env = "CRYPTOSERVER_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A flag's value that does not parse or is out of its range; clap names the
/// flag and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    RateLimit(String),
    SizeUnit(String),
    Size(String, RangeInclusive<u64>),
    Seconds(String, RangeInclusive<u64>),
    Count(String, RangeInclusive<u64>),
    BatchReads(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::RateLimit(text) => write!(
                f,
                "'{text}' is not RATE or RATE:BURST with RATE from {} to {} requests per second \
                 and BURST from {} to {}, e.g. 100 or 100:500",
                RateLimit::RATES.start(),
                RateLimit::RATES.end(),
                RateLimit::BURSTS.start(),
                RateLimit::BURSTS.end()
            ),
            ValueError::SizeUnit(unit) => {
                write!(
                    f,
                    "unknown unit '{unit}': write bytes, or use KiB, MiB or GiB"
                )
            }
            ValueError::Size(text, range) => write!(
                f,
                "'{text}' is not a size from {} to {}, e.g. 1048576 or 1MiB",
                size_text(*range.start()),
                size_text(*range.end())
            ),
            ValueError::Seconds(text, range) => write!(
                f,
                "'{text}' is not a whole number of seconds from {} to {}",
                range.start(),
                range.end()
            ),
            ValueError::Count(text, range) => write!(
                f,
                "'{text}' is not a whole number from {} to {}",
                range.start(),
                range.end()
            ),
            ValueError::BatchReads(text) => write!(
                f,
                "'{text}' is not ALL or ALL:PER_BATCH with whole numbers from {} to {} and \
                 PER_BATCH at most ALL, e.g. 64 or 64:32",
                COUNTS.start(),
                COUNTS.end()
            ),
        }
    }
}

impl std::error::Error for ValueError {}

/// `bytes` as the largest unit that writes it whole: `1MiB`, `1000 bytes`.
fn size_text(bytes: u64) -> String {
    match bytes {
        0 => "0 bytes".into(),
        _ if bytes % (1 << 30) == 0 => format!("{}GiB", bytes >> 30),
        _ if bytes % (1 << 20) == 0 => format!("{}MiB", bytes >> 20),
        _ if bytes % (1 << 10) == 0 => format!("{}KiB", bytes >> 10),
        1 => "1 byte".into(),
        _ => format!("{bytes} bytes"),
    }
}

fn parse_rate_limit(text: &str) -> Result<RateLimit, ValueError> {
    RateLimit::parse(text).ok_or_else(|| ValueError::RateLimit(text.to_owned()))
}

/// Parses `64` (64 for all batches, 32 per batch) or `64:16`.
fn parse_batch_reads(text: &str) -> Result<BatchReads, ValueError> {
    let count = |part: &str| {
        part.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| COUNTS.contains(n))
            .map(|n| n as usize)
    };
    let parsed = match text.split_once(':') {
        Some((total, per_batch)) => count(total).zip(count(per_batch)),
        None => count(text).map(|total| (total, total.div_ceil(2))),
    };
    match parsed {
        Some((total, per_batch)) if per_batch <= total => Ok(BatchReads { total, per_batch }),
        _ => Err(ValueError::BatchReads(text.to_owned())),
    }
}

/// A parser of `1048576`, `1024KiB` or `1MiB` into a byte count within `range`.
fn byte_size(
    range: RangeInclusive<u64>,
) -> impl Fn(&str) -> Result<usize, ValueError> + Clone + Send + Sync + 'static {
    move |text| {
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => text.split_at(at),
            None => (text, ""),
        };
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            _ => return Err(ValueError::SizeUnit(unit.to_owned())),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(multiplier))
            .filter(|bytes| range.contains(bytes))
            .map(|bytes| bytes as usize)
            .ok_or_else(|| ValueError::Size(text.to_owned(), range.clone()))
    }
}

/// A parser of a whole number within `range`.
fn count(
    range: RangeInclusive<u64>,
) -> impl Fn(&str) -> Result<usize, ValueError> + Clone + Send + Sync + 'static {
    move |text| {
        text.parse::<u64>()
            .ok()
            .filter(|count| range.contains(count))
            .map(|count| count as usize)
            .ok_or_else(|| ValueError::Count(text.to_owned(), range.clone()))
    }
}

/// A parser of a whole number of seconds within `range`.
fn whole_seconds(
    range: RangeInclusive<u64>,
) -> impl Fn(&str) -> Result<u64, ValueError> + Clone + Send + Sync + 'static {
    move |text| {
        text.parse::<u64>()
            .ok()
            .filter(|seconds| range.contains(seconds))
            .ok_or_else(|| ValueError::Seconds(text.to_owned(), range.clone()))
    }
}

/// [`whole_seconds`] as a duration.
fn seconds(
    range: RangeInclusive<u64>,
) -> impl Fn(&str) -> Result<Duration, ValueError> + Clone + Send + Sync + 'static {
    let whole = whole_seconds(range);
    move |text| whole(text).map(Duration::from_secs)
}

impl Config {
    /// The clients file, by either of its names.
    pub fn clients_file(&self) -> Option<&Path> {
        self.tokens_file.as_deref().or(self.clients_file.as_deref())
    }

    /// The signer of clients updates, if one is set; it needs a clients file.
    pub fn clients_signer(&self) -> Result<Option<Signer>, SignerError> {
        let Some(text) = &self.clients_signer else {
            return Ok(None);
        };
        let signer = Signer::parse(text)?;
        match self.clients_file() {
            Some(_) => Ok(Some(signer)),
            None => Err(SignerError::NoClientsFile),
        }
    }

    /// The batches' key reads: as configured, checked against the mode and
    /// the concurrency limit, or the default that fits them.
    pub fn batch_reads(&self) -> Result<BatchReads, BatchReadsError> {
        let per_message = self.mode.keys_per_mac();
        match self.batch_reads {
            Some(reads) => reads
                .check(per_message, self.max_concurrent)
                .map(|()| reads),
            None => Ok(BatchReads::default_under(self.max_concurrent, per_message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("cryptoserver").chain(args.iter().copied()))
    }

    #[test]
    fn byte_sizes() {
        let body = byte_size(BODY_BYTES);
        assert_eq!(body("1048576"), Ok(1 << 20));
        assert_eq!(body("1MiB"), Ok(1 << 20));
        assert_eq!(body("64kib"), Ok(64 << 10));
        assert_eq!(body("1GiB"), Ok(1 << 30));
        assert_eq!(body("0"), Err(ValueError::Size("0".into(), BODY_BYTES)));
        assert_eq!(
            body("12 parsecs"),
            Err(ValueError::SizeUnit(" parsecs".into()))
        );
        for bad in ["99999999999999999999GiB", "2GiB", "1073741825"] {
            assert!(matches!(body(bad), Err(ValueError::Size(..))), "{bad}");
        }
        let error = byte_size(HEADER_BYTES)("100").unwrap_err().to_string();
        assert_eq!(
            error,
            "'100' is not a size from 1KiB to 1MiB, e.g. 1048576 or 1MiB"
        );
    }

    #[test]
    fn rate_limits() {
        assert_eq!(
            parse_rate_limit("100"),
            Ok(RateLimit {
                per_second: 100.0,
                burst: 100.0
            })
        );
        assert_eq!(
            parse_rate_limit("0.5:10"),
            Ok(RateLimit {
                per_second: 0.5,
                burst: 10.0
            })
        );
        for bad in [
            "",
            "0",
            "-1",
            "10:0.5",
            "fast",
            "10:",
            "nan",
            "inf",
            "1e-300:10",
            "0.0009",
            "2e9",
            "10:4294967296",
        ] {
            assert_eq!(
                parse_rate_limit(bad),
                Err(ValueError::RateLimit(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn batch_reads_parse_and_are_checked_against_the_mode() {
        let reads = |total, per_batch| Ok(BatchReads { total, per_batch });
        assert_eq!(parse_batch_reads("64"), reads(64, 32));
        assert_eq!(parse_batch_reads("9"), reads(9, 5));
        assert_eq!(parse_batch_reads("100:100"), reads(100, 100));
        for bad in [
            "", "0", "-4", "8:16", "64:0", "lots", "64:", ":8", "2000000",
        ] {
            assert_eq!(
                parse_batch_reads(bad),
                Err(ValueError::BatchReads(bad.into())),
                "{bad}"
            );
        }
        let config = parse(&["--mode", "MODE32X", "--batch-reads", "64:4"]).unwrap();
        let error = config.batch_reads().unwrap_err().to_string();
        assert!(error.contains("fewer than one message"), "{error}");
        let config = parse(&["--max-concurrent", "16", "--batch-reads", "16"]).unwrap();
        assert!(config.batch_reads().is_err());
        let config = parse(&["--max-concurrent", "16"]).unwrap();
        assert_eq!(config.batch_reads().ok(), reads(8, 8).ok());
        for bad in ["0", "3601", "18446744073709551615"] {
            let error = parse(&["--key-read-timeout", bad]).unwrap_err().to_string();
            assert!(
                error.contains("--key-read-timeout")
                    && error.contains(&format!(
                        "'{bad}' is not a whole number of seconds from 1 to 3600"
                    )),
                "{error}"
            );
        }
    }

    #[test]
    fn flags_parse_and_bad_values_are_named() {
        let config = parse(&["--mode", "Mode32", "--bind", "127.0.0.1:9000"]).unwrap();
        assert_eq!(config.mode, Mode::Mode32);
        assert_eq!(config.bind, "127.0.0.1:9000".parse().unwrap());
        let error = parse(&["--mode", "MODE8"]).unwrap_err().to_string();
        assert!(
            error.contains("MODE8") && error.contains("MODE0, MODE16, MODE32 and MODE32X"),
            "{error}"
        );
        let error = parse(&["--bind", "localhost"]).unwrap_err().to_string();
        assert!(error.contains("localhost"), "{error}");
        let error = parse(&["--max-connections", "0"]).unwrap_err().to_string();
        assert!(
            error.contains("'0' is not a whole number from 1 to 1048576"),
            "{error}"
        );
        for flag in ["--header-timeout", "--body-timeout"] {
            let error = parse(&[flag, "0"]).unwrap_err().to_string();
            assert!(
                error.contains(flag) && error.contains("from 1 to 3600"),
                "{error}"
            );
        }
        assert_eq!(
            parse(&["--shutdown-grace", "0"]).unwrap().shutdown_grace,
            Duration::ZERO
        );
    }

    #[test]
    fn a_signer_is_checked_and_needs_a_clients_file() {
        let key = "RWRgWJPvorhPZTm6sw6UC3T/1lJz5MajAUCIqXCqj2DwCH8ft7HWaAGo";
        let config = parse(&["--clients-signer", key, "--clients-file", "/c"]).unwrap();
        assert!(config.clients_signer().unwrap().is_some());
        assert_eq!(config.state_dir, Path::new("/var/lib/cryptoserver"));
        assert!(parse(&[]).unwrap().clients_signer().unwrap().is_none());
        let error = parse(&["--clients-signer", key]).unwrap().clients_signer();
        assert!(matches!(error, Err(SignerError::NoClientsFile)));
        let config = parse(&["--clients-signer", "RWQAAEIysecret", "--tokens-file", "/c"]).unwrap();
        let error = config.clients_signer().unwrap_err().to_string();
        assert!(
            error.starts_with("CRYPTOSERVER_CLIENTS_SIGNER is not a minisign public key")
                && error.contains("SECRET key")
                && !error.contains("RWQAAEIysecret"),
            "{error}"
        );
    }

    /// Every numeric flag, with what the server does with its value: a value
    /// the parser lets through must not make that panic or overflow.
    const NUMERIC_FLAGS: [&str; 11] = [
        "--max-body",
        "--shutdown-grace",
        "--rate-limit",
        "--max-concurrent",
        "--max-connections",
        "--max-connections-per-client",
        "--batch-reads",
        "--key-read-timeout",
        "--header-timeout",
        "--body-timeout",
        "--max-header",
    ];

    fn use_like_the_server(config: &Config) {
        if let Some(limit) = config.rate_limit {
            crate::limits::RateLimiter::new(limit);
        }
        for timeout in [config.header_timeout, config.body_timeout] {
            assert!(!timeout.is_zero(), "would fail every request");
        }
        assert!(config.key_read_timeout > 0);
        let now = std::time::Instant::now();
        for timeout in [
            config.shutdown_grace,
            config.header_timeout,
            config.body_timeout,
            Duration::from_secs(config.key_read_timeout),
        ] {
            assert!(now.checked_add(timeout).is_some());
            assert!(tokio::time::Instant::now().checked_add(timeout).is_some());
        }
        if let Ok(reads) = config.batch_reads() {
            let _ = reads.waiting_under(config.max_concurrent) + reads.total;
        }
    }

    proptest! {
        #[test]
        fn numbers_are_in_range_or_refused_naming_the_flag(
            flag in prop::sample::select(NUMERIC_FLAGS.as_slice()),
            number in prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
                (any::<f64>(), any::<f64>()).prop_map(|(a, b)| format!("{a}:{b}")),
                (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("{a}:{b}")),
                (0u64..5000).prop_map(|n| n.to_string()),
                (0u64..5000, prop::sample::select(vec!["KiB", "MiB", "GiB"]))
                    .prop_map(|(n, unit)| format!("{n}{unit}")),
            ],
        ) {
            match parse(&[&format!("{flag}={number}")]) {
                Ok(config) => use_like_the_server(&config),
                Err(error) => {
                    let error = error.to_string();
                    prop_assert!(error.contains(flag), "{}", error);
                    prop_assert!(error.contains(&format!("'{number}'")), "{}", error);
                }
            }
        }
    }
}
