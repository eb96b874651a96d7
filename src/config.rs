//! Server configuration: command-line flags, each backed by the seed's environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::layout::Mode;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "cryptoserver",
    version,
    about = "HMAC-SHA256 over HTTP, with the secrets sealed on this host",
    after_help = "Every flag can also be set by its environment variable; a flag beats the variable.\n\
                  RUST_LOG sets the log level (unset: no log output), e.g. RUST_LOG=info."
)]
pub struct Config {
    /// How many keys to use: MODE0 (one key, file `secret`), MODE16 (65,536 keys, file `0000`)
    /// or MODE32 (2^32 keys, files `0000`..`ffff`); case-insensitive.
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

    /// Largest accepted message, in bytes, or with a KiB/MiB suffix (e.g. 512KiB).
    #[arg(long, env = "CRYPTOSERVER_MAX_BODY", default_value = "1MiB", value_parser = parse_byte_size)]
    pub max_body: usize,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "CRYPTOSERVER_SHUTDOWN_GRACE", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
}

/// Parses `1048576`, `1024KiB` or `1MiB` into a byte count.
fn parse_byte_size(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit '{unit}': write bytes, or use KiB, MiB or GiB"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|count| count.checked_mul(multiplier))
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("'{text}' is not a positive size, e.g. 1048576 or 1MiB"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("'{text}' is not a whole number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("cryptoserver").chain(args.iter().copied()))
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("64kib"), Ok(64 << 10));
        assert!(parse_byte_size("0").is_err());
        assert!(parse_byte_size("12 parsecs").is_err());
        assert!(parse_byte_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn flags_parse_and_bad_values_are_named() {
        let config = parse(&["--mode", "Mode32", "--bind", "127.0.0.1:9000"]).unwrap();
        assert_eq!(config.mode, Mode::Mode32);
        assert_eq!(config.bind, "127.0.0.1:9000".parse().unwrap());
        let error = parse(&["--mode", "MODE8"]).unwrap_err().to_string();
        assert!(
            error.contains("MODE8") && error.contains("MODE0, MODE16 and MODE32"),
            "{error}"
        );
        let error = parse(&["--bind", "localhost"]).unwrap_err().to_string();
        assert!(error.contains("localhost"), "{error}");
    }
}
