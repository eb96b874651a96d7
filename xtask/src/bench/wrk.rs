//! The HTTP load generator: `wrk`, with a Lua script that POSTs request bodies
//! taken in turn from a file, with the headers it is given, and prints one
//! machine-readable summary line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::process::{ensure_installed, output};

/// Keeps `count` requests in flight per thread from `wrk.thread:get("id")`'s
/// share of the bodies (every `threads`-th body of the file). `rounds` counts
/// how often a thread started its share over, so a caller that needs every
/// request to carry a fresh body (cold keys) can see whether any body repeated.
/// The arguments after the thread count are header names and values in turn;
/// the content type is raw bytes unless one of them says otherwise.
const SCRIPT: &str = r#"
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, file_name = args[1], args[2]
  local body_len, thread_count = tonumber(args[3]), tonumber(args[4])
  local file = assert(io.open(file_name, "rb"))
  local data = file:read("*a")
  file:close()
  local headers = { ["Content-Type"] = "application/octet-stream" }
  for index = 5, #args - 1, 2 do
    headers[args[index]] = args[index + 1]
  end
  bodies = {}
  for index = wrk.thread:get("id"), #data / body_len - 1, thread_count do
    local body = data:sub(index * body_len + 1, (index + 1) * body_len)
    table.insert(bodies, wrk.format("POST", path, headers, body))
  end
  next_body = 0
  rounds = 0
end

function request()
  next_body = next_body + 1
  if next_body > #bodies then
    next_body = 1
    rounds = rounds + 1
  end
  return bodies[next_body]
end

function done(summary, latency, requests)
  local repeated = 0
  for _, thread in ipairs(threads) do
    repeated = repeated + thread:get("rounds")
  end
  local errors = summary.errors
  io.write(string.format(
    "cryptoserver-bench requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d repeated=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.status + errors.timeout, repeated))
end
"#;

const SUMMARY_PREFIX: &str = "cryptoserver-bench ";

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadResult {
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Failed connections, reads, writes, timeouts and non-2xx/3xx answers.
    pub errors: u64,
    /// Times a thread ran out of bodies and started its share again.
    pub repeated: u64,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// One load shape: `connections` keep-alive connections over `threads` wrk threads.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: usize,
    pub threads: usize,
}

/// Runs wrk with its script written once in the benchmark's work directory.
pub struct Wrk {
    script: PathBuf,
}

impl Wrk {
    /// Installs wrk if missing and writes the script into `work_dir`.
    pub fn prepare(work_dir: &Path) -> anyhow::Result<Wrk> {
        ensure_installed("wrk", "wrk")?;
        let script = work_dir.join("post-bodies.lua");
        std::fs::write(&script, SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        Ok(Wrk { script })
    }

    /// POSTs the `body_len`-byte bodies of `bodies` to `url` for `duration`,
    /// each with `headers` (names and values). Any failed request fails the
    /// run: a benchmark of errors measures nothing.
    pub fn run(
        &self,
        (url, headers): (&str, &[(String, String)]),
        bodies: &Path,
        body_len: usize,
        load: Load,
        duration: Duration,
    ) -> anyhow::Result<LoadResult> {
        let (base, path) = split_url(url)?;
        let stdout = output(
            Command::new("wrk")
                .arg(format!("--threads={}", load.threads))
                .arg(format!("--connections={}", load.connections))
                // wrk counts time in whole seconds at best.
                .arg(format!("--duration={}s", duration.as_secs().max(1)))
                .arg("--timeout=10s")
                .arg(format!("--script={}", self.script.display()))
                .arg(base)
                .arg("--")
                .arg(path)
                .arg(bodies)
                .arg(body_len.to_string())
                .arg(load.threads.to_string())
                .args(headers.iter().flat_map(|(name, value)| [name, value])),
        )?;
        let result = parse_summary(&stdout)
            .with_context(|| format!("wrk against {url} printed no summary: {stdout}"))?;
        if result.errors > 0 {
            bail!(
                "{} of {} requests to {url} failed (see the server's log by running it by hand)",
                result.errors,
                result.requests
            );
        }
        Ok(result)
    }
}

/// `http://host:port/path` into the base URL wrk connects to and the path.
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let after_scheme = url
        .strip_prefix("http://")
        .with_context(|| format!("'{url}' is not an http:// URL"))?;
    let path_at = after_scheme.find('/').unwrap_or(after_scheme.len());
    let split = "http://".len() + path_at;
    Ok((
        &url[..split],
        if split == url.len() {
            "/"
        } else {
            &url[split..]
        },
    ))
}

/// Reads the script's summary line out of wrk's output.
fn parse_summary(output: &str) -> anyhow::Result<LoadResult> {
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix(SUMMARY_PREFIX))
        .context("no summary line")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let value = line
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}= in '{line}'"))?;
        value
            .parse()
            .with_context(|| format!("{name}={value} is not a whole number"))
    };
    Ok(LoadResult {
        requests: field("requests")?,
        elapsed: Duration::from_micros(field("duration_us")?),
        p50: Duration::from_micros(field("p50_us")?),
        p99: Duration::from_micros(field("p99_us")?),
        errors: field("errors")?,
        repeated: field("repeated")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_among_wrk_output() {
        let output = "Running 5s test @ http://127.0.0.1:8080\n  1 threads and 64 connections\n\
             cryptoserver-bench requests=150000 duration_us=5000000 p50_us=1200 p99_us=4100 errors=0 repeated=3\n";
        assert_eq!(
            parse_summary(output).unwrap(),
            LoadResult {
                requests: 150_000,
                elapsed: Duration::from_secs(5),
                p50: Duration::from_micros(1200),
                p99: Duration::from_micros(4100),
                errors: 0,
                repeated: 3,
            }
        );
        assert_eq!(parse_summary(output).unwrap().per_second(), 30_000.0);
    }

    #[test]
    fn a_missing_or_bad_field_is_named() {
        assert!(parse_summary("Running 5s test").is_err());
        let error = parse_summary("cryptoserver-bench requests=1 duration_us=x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("duration_us=x"), "{error}");
        let error = parse_summary("cryptoserver-bench requests=1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no duration_us="), "{error}");
    }

    #[test]
    fn urls_split_into_base_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/hmac/batch").unwrap(),
            ("http://127.0.0.1:8080", "/hmac/batch")
        );
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            ("http://127.0.0.1:8080", "/")
        );
        assert!(split_url("https://example").is_err());
    }
}
