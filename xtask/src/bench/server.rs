//! `cargo xtask bench http|batch|mode32`: the release server over real TCP on
//! loopback, each figure next to a baseline measured in the same run:
//! - `http`: MODE0 and MODE16 `POST /hmac` against the HTTP floor
//!   (`examples/floor.rs`, axum answering 32 constant bytes), 64-byte messages,
//!   64 keep-alive connections; MODE16 again for a client in a namespace (its
//!   token checked, its keys derived at startup); plus MODE16's idle memory;
//! - `batch`: `POST /hmac/batch` MACs/s against the same MACs computed in this
//!   process on one core;
//! - `mode32`: startup with all 65,536 files checked, idle memory, and key reads
//!   from a cold page cache against fio reading the same blocks from the disk;
//!   MODE32X on the same files: warm against MODE32 warm, and cold (single and
//!   batched) against fio's rate divided by its 8 reads per MAC.
//!
//! The floor and the servers run side by side and are measured in interleaved
//! rounds, so load from elsewhere on the machine drifts into all of them alike;
//! each figure is the median of its rounds, and each ratio against the floor the
//! median of the rounds' ratios.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::bail;
use cryptoserver::batch::encode_frames;
use cryptoserver::keystore::{mode32_files_kept_open, KeyReads, KeyStore};
use cryptoserver::layout::{Mode, MODE32_FILE_COUNT};
use cryptoserver::secrets::generate::fill_secret;
use sha2::{Digest, Sha256};

use super::mode32::{Mode32Dir, MESSAGE_LEN};
use super::report::{thousands, Ceiling, Goal, Report, Row};
use super::scratch::{self, Scratch};
use super::tools::{free_address, with_cpu_seconds, CpuSpent, Server};
use super::wrk::{Load, LoadResult, Wrk};
use crate::process::{cargo, run, target_dir};
use crate::secrets;

/// Concurrent requests of the per-request measurements.
pub(super) const CONCURRENCY: usize = 64;
/// One wrk thread keeps the connections busy while taking as little CPU from the
/// server as the load generator can; more threads add load only where cores are
/// to spare.
pub(super) const PER_REQUEST_LOAD: Load = Load {
    connections: CONCURRENCY,
    threads: 1,
};
/// Distinct messages cycled through by the in-memory measurements.
pub(super) const MESSAGES: usize = 4096;
/// Messages per `/hmac/batch` request.
const BATCH_LEN: usize = 4096;
/// The token of the namespaced server's one client: a benchmark's, never a secret.
pub(super) const NAMESPACED_TOKEN: &str = "cryptoserver-bench-namespaced-client";
/// That client's namespace.
pub(super) const NAMESPACE: &str = "bench";
/// Batches in flight: enough to keep every core busy while bodies travel.
pub(super) const BATCH_LOAD: Load = Load {
    connections: 4,
    threads: 1,
};
pub(super) const WARM_UP: Duration = Duration::from_secs(1);
/// Starts of the MODE32 server timed; the median is reported.
const STARTS: usize = 3;
/// Messages per cold MODE32X `/hmac/batch` request: few, so the cold keys last.
const COLD_BATCH_LEN: usize = 256;

#[derive(clap::Args, Clone)]
pub struct ServerBenchArgs {
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 3)]
    seconds: u64,

    /// Interleaved rounds of each measurement; the median round is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,

    /// MODE32 messages whose keys are planted on disk, one 4 KiB block each (1 GiB
    /// for the default, kept in bench-mode32 in cargo's target directory for the
    /// next run); each cold run stops before it could run out of them.
    #[arg(long, default_value_t = 262_144)]
    pub(super) cold_keys: usize,

    /// Connections (and key reads in flight) of MODE32's cold runs and of the
    /// baselines they are set against. A cold request spends a disk read and an
    /// HTTP round in series, so by Little's law a few connections cap it below
    /// what the CPU allows, whatever the server does.
    #[arg(long, default_value_t = 256)]
    pub(super) cold_connections: usize,
}

pub(super) struct Bench {
    pub(super) work: Scratch,
    pub(super) wrk: Wrk,
    pub(super) args: ServerBenchArgs,
}

impl Bench {
    /// Builds the release server and the floor, and makes the scratch directory
    /// and the load generator the measurements share.
    pub(super) fn prepare(args: &ServerBenchArgs) -> anyhow::Result<Bench> {
        run(cargo().args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "cryptoserver",
            "--example",
            "floor",
        ]))?;
        let work = Scratch::create(scratch::default_path("server"))?;
        Ok(Bench {
            wrk: Wrk::prepare(work.path())?,
            work,
            args: args.clone(),
        })
    }

    pub(super) fn seconds(&self) -> Duration {
        Duration::from_secs(self.args.seconds)
    }

    pub(super) fn http(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!("http: MODE0, MODE16 and namespaced MODE16 POST /hmac against the HTTP floor");
        let messages = self
            .work
            .write_file("messages-64.bin", &random_messages(MESSAGES)?)?;
        let floor = self.start_floor()?;
        let mode0 = self
            .start_server(Mode::Mode0, &self.secrets(Mode::Mode0)?)?
            .0;
        let (mode16, _) = self.start_server(Mode::Mode16, &self.secrets(Mode::Mode16)?)?;
        let mode16_rss = mode16.resident_bytes()?;
        let namespaced = self.start_namespaced_server(&self.secrets(Mode::Mode16)?)?;
        let targets = [&floor, &mode0, &mode16, &namespaced];
        for target in targets {
            self.post_hmac(target, &messages, WARM_UP)?;
        }
        let [floor_results, mode0_results, mode16_results, namespaced_results] = &self
            .interleaved(|index, round| {
                let target = targets[index];
                let result = self.post_hmac(target, &messages, self.seconds())?;
                eprintln!(
                    "  round {round}: {:<8} {:>7.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    target.name,
                    result.per_second(),
                    millis(result.p50),
                    millis(result.p99)
                );
                Ok(result)
            })?;
        let floor_rate = median(floor_results.iter().map(LoadResult::per_second));
        let floor_p50 = median(floor_results.iter().map(|r| millis(r.p50)));
        let floor_p99 = median(floor_results.iter().map(|r| millis(r.p99)));
        for (server, results) in [
            ("MODE0", mode0_results),
            ("MODE16", mode16_results),
            ("MODE16, a client in a namespace,", namespaced_results),
        ] {
            let ratio =
                |figure: fn(&LoadResult) -> f64| median_ratio(results, floor_results, figure);
            let rate = median(results.iter().map(LoadResult::per_second));
            let p50 = median(results.iter().map(|r| millis(r.p50)));
            let p99 = median(results.iter().map(|r| millis(r.p99)));
            report.row(Row {
                what: format!("{server} POST /hmac, requests/s (64 B, {CONCURRENCY} connections)"),
                value: thousands(rate),
                baseline: format!("floor {}", thousands(floor_rate)),
                goal: Goal::AtLeast {
                    ratio: ratio(LoadResult::per_second),
                    minimum: 0.95,
                    ceiling: None,
                },
            });
            report.row(Row {
                what: format!("{server} p50 latency"),
                value: format!("{p50:.2} ms"),
                baseline: format!("floor {floor_p50:.2} ms"),
                goal: Goal::Ratio(ratio(|r| millis(r.p50))),
            });
            report.row(Row {
                what: format!("{server} p99 latency"),
                value: format!("{p99:.2} ms"),
                baseline: format!("floor {floor_p99:.2} ms"),
                goal: Goal::AtMost {
                    ratio: ratio(|r| millis(r.p99)),
                    maximum: 1.1,
                },
            });
        }
        report.row(Row {
            what: "MODE16 idle RSS".to_owned(),
            value: mebibytes(mode16_rss),
            baseline: String::new(),
            goal: Goal::Below {
                value: mode16_rss as f64 / MIB,
                limit: 30.0,
                unit: "MiB",
            },
        });
        Ok(())
    }

    pub(super) fn batch(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!("batch: POST /hmac/batch against the same MACs in this process on one core");
        let dir = self.secrets(Mode::Mode16)?;
        let messages = random_messages(BATCH_LEN)?;
        let messages: Vec<&[u8]> = messages.chunks_exact(MESSAGE_LEN).collect();
        let body = encode_frames(&messages);
        let body_file = self.work.write_file("batch.bin", &body)?;
        let store = KeyStore::load(Mode::Mode16, &dir, KeyReads::Auto, &[])
            .map_err(|error| anyhow::anyhow!("cannot load the MODE16 secrets: {error}"))?;
        let (server, _) = self.start_server(Mode::Mode16, &dir)?;
        let post_batches = |duration| {
            self.wrk.run(
                (&server.url("/hmac/batch"), &[]),
                &body_file,
                body.len(),
                BATCH_LOAD,
                duration,
            )
        };
        post_batches(WARM_UP)?;
        let (mut over_http, mut in_process) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let local = macs_per_second_in_process(&store, &messages, self.seconds());
            let result = post_batches(self.seconds())?;
            let remote = result.per_second() * BATCH_LEN as f64;
            eprintln!(
                "  round {round}: {remote:.0} MACs/s over HTTP, {local:.0} MACs/s in process"
            );
            over_http.push(remote);
            in_process.push(local);
        }
        let (remote, local) = (median(over_http), median(in_process));
        let cores = available_cores();
        report.row(Row {
            what: format!(
                "MODE16 POST /hmac/batch, MACs/s ({BATCH_LEN} x 64 B, {} connections)",
                BATCH_LOAD.connections
            ),
            value: thousands(remote),
            baseline: format!("in process, 1 core: {}", thousands(local)),
            goal: Goal::PerCoreAtLeast {
                ratio: remote / cores as f64 / local,
                cores,
                minimum: 0.5,
            },
        });
        Ok(())
    }

    pub(super) fn mode32(&self, report: &mut Report) -> anyhow::Result<()> {
        eprintln!(
            "mode32: 65,536 sparse files with {} planted key blocks",
            self.args.cold_keys
        );
        let started = Instant::now();
        let kept_open = mode32_files_kept_open();
        let dir = Mode32Dir::reuse_or_create(
            &scratch::default_path("mode32"),
            self.args.cold_keys,
            MESSAGES,
            kept_open,
        )?;
        eprintln!("  ready in {:.1} s", started.elapsed().as_secs_f64());
        // Half the cold keys for the key store alone, half for the server over HTTP.
        let (store_keys, http_keys) = dir.cold.split_at(dir.cold.len() / 2);
        let cold_file = self
            .work
            .write_file("mode32-cold.bin", &http_keys.concat())?;
        let warm_up_file = self
            .work
            .write_file("mode32-warm-up.bin", &dir.warm_up.concat())?;

        let mut startups = Vec::new();
        for _ in 1..STARTS {
            startups.push(self.start_server(Mode::Mode32, &dir.path)?.1);
        }
        let (server, startup) = self.start_server(Mode::Mode32, &dir.path)?;
        startups.push(startup);
        let startup = median(startups.iter().map(Duration::as_secs_f64));
        let rss = server.resident_bytes()?;
        let server_kept_open = server.open_files_under(&dir.path)?;
        if server_kept_open < kept_open {
            bail!("the server keeps {server_kept_open} MODE32 files open, not {kept_open}: the cold keys would be read the slow way");
        }

        let cold_load = self.cold_load();
        let in_flight = cold_load.connections;
        eprintln!("  fio: the same blocks, 4 KiB direct reads, {in_flight} in flight");
        dir.evict()?;
        let fio = dir.fio_random_reads(&dir.cold, in_flight, self.work.path())?;
        eprintln!("  fio: {:.0} reads/s", fio.per_second());
        // Stop well before a run could use up its cold keys, even at 1.5x fio's rate.
        let duration = self.seconds().min(Duration::from_secs_f64(
            http_keys.len() as f64 / (1.5 * fio.per_second()),
        ));

        // What any HTTP server can do here at this load: the ceiling over HTTP.
        let floor = self.start_floor()?;
        let (floor, floor_cpu) =
            with_cpu_seconds(|| self.post_hmac_at(&floor, &warm_up_file, cold_load, duration))?;
        eprintln!("  HTTP floor: {:.0} requests/s", floor.per_second());

        dir.evict()?;
        let (store, store_cpu) = dir.key_store_reads(store_keys, in_flight, duration)?;
        eprintln!(
            "  key store in this process, no HTTP: {:.0} reads/s",
            store.per_second()
        );

        self.post_hmac(&server, &warm_up_file, WARM_UP)?;
        dir.evict()?;
        let (cold, cold_cpu) =
            with_cpu_seconds(|| self.post_hmac_at(&server, &cold_file, cold_load, duration))?;
        let cpu = CpuCost {
            floor: CpuSplit::per_request(floor_cpu, floor.requests),
            per_read: store_cpu / store.reads.max(1) as f64,
            cold: CpuSplit::per_request(cold_cpu, cold.requests),
        };
        if cold.repeated > 0 {
            bail!(
                "the cold run reused keys it had already read; raise --cold-keys above {}",
                self.args.cold_keys
            );
        }
        eprintln!(
            "  cryptoserver: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            cold.per_second(),
            millis(cold.p50),
            millis(cold.p99)
        );
        let fio_rate = fio.per_second();
        let fio_baseline = format!(
            "fio 4 KiB direct, {in_flight} in flight: {}",
            thousands(fio_rate)
        );
        report.row(Row {
            what: format!(
                "MODE32 cold page cache, requests/s \
                 ({in_flight} connections, keys in files kept open)"
            ),
            value: thousands(cold.per_second()),
            baseline: fio_baseline.clone(),
            goal: Goal::AtLeast {
                ratio: cold.per_second() / fio_rate,
                minimum: 0.8,
                ceiling: Some(cpu.fio_reachable(floor.per_second(), fio_rate)),
            },
        });
        report.row(Row {
            what: format!(
                "MODE32 cold, the key store alone (no HTTP), reads/s ({in_flight} at once)"
            ),
            value: thousands(store.per_second()),
            baseline: fio_baseline.clone(),
            goal: Goal::Ratio(store.per_second() / fio_rate),
        });
        report.row(Row {
            what: "HTTP floor at the same load (no key reads), requests/s".to_owned(),
            value: thousands(floor.per_second()),
            baseline: fio_baseline,
            goal: Goal::Ratio(floor.per_second() / fio_rate),
        });
        cpu.rows(report, cold.per_second(), floor.per_second(), fio_rate);
        report.row(Row {
            what: "MODE32 cold p50 / p99 latency".to_owned(),
            value: format!("{:.2} / {:.2} ms", millis(cold.p50), millis(cold.p99)),
            baseline: String::new(),
            goal: Goal::None,
        });
        report.row(Row {
            what: format!(
                "MODE32 startup, 65,536 files checked \
                 ({kept_open} kept open, the rest opened per read)"
            ),
            value: format!("{startup:.2} s"),
            baseline: String::new(),
            goal: Goal::Below {
                value: startup,
                limit: 1.0,
                unit: "s",
            },
        });
        report.row(Row {
            what: "MODE32 idle RSS".to_owned(),
            value: mebibytes(rss),
            baseline: String::new(),
            goal: Goal::Below {
                value: rss as f64 / MIB,
                limit: 50.0,
                unit: "MiB",
            },
        });
        let baselines = Mode32Baselines {
            server: &server,
            warm_up_file: &warm_up_file,
            fio_rate,
            floor_rate: floor.per_second(),
            kept_open,
        };
        self.mode32x(report, &dir, &baselines)
    }

    /// MODE32X on the MODE32 directory: warm requests/s against MODE32's, and
    /// cold requests and batches against fio's reads/s divided by 8.
    fn mode32x(
        &self,
        report: &mut Report,
        dir: &Mode32Dir,
        mode32: &Mode32Baselines,
    ) -> anyhow::Result<()> {
        eprintln!("  MODE32X: the same files, 8 key reads per MAC");
        // Its probes land in any file: where most are opened per read (a
        // RLIMIT_NOFILE below 65,536 + 4,096), the goals are out of reach, and
        // the reads per MAC that open their file say why.
        let all_open = mode32.kept_open == MODE32_FILE_COUNT;
        let files = if all_open {
            "every file kept open".to_owned()
        } else {
            format!("{} of 65,536 files kept open", mode32.kept_open)
        };
        let opened_per_mac = Mode::Mode32x.keys_per_mac() as f64
            * (1.0 - mode32.kept_open as f64 / MODE32_FILE_COUNT as f64);
        let goal = |ratio: f64, ceiling: Option<Ceiling>| {
            if all_open {
                Goal::AtLeast {
                    ratio,
                    minimum: 0.8,
                    ceiling,
                }
            } else {
                Goal::OutOfReach {
                    ratio,
                    minimum: 0.8,
                    because: format!(
                        "RLIMIT_NOFILE keeps {} of 65,536 files open: {opened_per_mac:.1} of a \
                         MAC's 8 reads open their file",
                        mode32.kept_open
                    ),
                }
            }
        };
        let (server, _) = self.start_server(Mode::Mode32x, &dir.path)?;
        let targets = [mode32.server, &server];
        for target in targets {
            self.post_hmac(target, mode32.warm_up_file, WARM_UP)?;
        }
        let [mode32_warm, mode32x_warm] = &self.interleaved(|index, round| {
            let rate = self
                .post_hmac(targets[index], mode32.warm_up_file, self.seconds())?
                .per_second();
            eprintln!(
                "  round {round}: {:<8} warm {rate:>7.0} req/s",
                targets[index].name
            );
            Ok(rate)
        })?;
        let warm_ratio = median(mode32x_warm.iter().zip(mode32_warm).map(|(x, m)| x / m));
        report.row(Row {
            what: format!(
                "MODE32X warm page cache, requests/s ({CONCURRENCY} connections, {files})"
            ),
            value: thousands(median(mode32x_warm.iter().copied())),
            baseline: format!(
                "MODE32 warm: {}",
                thousands(median(mode32_warm.iter().copied()))
            ),
            goal: goal(warm_ratio, None),
        });

        // 3/8 of the cold messages one per request, the rest in batches (which
        // keep more reads in flight): each run lasts at least wrk's one second,
        // and single requests reached 8,200 a second.
        let (single, batched) = dir.cold_x.split_at(dir.cold_x.len() * 3 / 8);
        let per_mac = mode32.fio_rate / Mode::Mode32x.keys_per_mac() as f64;
        let fio_baseline = format!("fio / 8: {}", thousands(per_mac));
        // Stop well before a run could use up its cold keys: with up to 8 times
        // fio's reads in flight the disk may serve several times fio's rate, so
        // even at 6 times fio / 8.
        let lasting = |messages: usize| {
            self.seconds()
                .min(Duration::from_secs_f64(messages as f64 / (6.0 * per_mac)))
        };
        let cold_file = self.work.write_file("mode32x-cold.bin", &single.concat())?;
        dir.evict()?;
        let cold = self.post_hmac(&server, &cold_file, lasting(single.len()))?;
        let batches: Vec<Vec<u8>> = batched.chunks(COLD_BATCH_LEN).map(encode_frames).collect();
        let batch_file = self
            .work
            .write_file("mode32x-cold-batches.bin", &batches.concat())?;
        dir.evict()?;
        let batch = self.wrk.run(
            (&server.url("/hmac/batch"), &[]),
            &batch_file,
            batches[0].len(),
            BATCH_LOAD,
            lasting(batched.len()),
        )?;
        for (run, result) in [("requests", &cold), ("batches", &batch)] {
            if result.repeated > 0 {
                bail!(
                    "the MODE32X cold {run} reused keys they had already read; raise --cold-keys above {}",
                    self.args.cold_keys
                );
            }
        }
        let batch_macs = batch.per_second() * COLD_BATCH_LEN as f64;
        eprintln!(
            "  MODE32X cold: {:.0} requests/s, p50 {:.2} ms; batches {batch_macs:.0} MACs/s",
            cold.per_second(),
            millis(cold.p50)
        );
        report.row(Row {
            what: format!(
                "MODE32X cold page cache, requests/s ({CONCURRENCY} connections, 8 reads each, {files})"
            ),
            value: thousands(cold.per_second()),
            baseline: fio_baseline.clone(),
            goal: goal(
                cold.per_second() / per_mac,
                Some(Ceiling {
                    ratio: mode32.floor_rate / per_mac,
                    set_by: "the HTTP floor itself",
                }),
            ),
        });
        report.row(Row {
            what: format!(
                "MODE32X cold POST /hmac/batch, MACs/s ({COLD_BATCH_LEN} x 64 B, {} connections)",
                BATCH_LOAD.connections
            ),
            value: thousands(batch_macs),
            baseline: fio_baseline,
            goal: Goal::Ratio(batch_macs / per_mac),
        });
        Ok(())
    }

    /// `measure(index, round)` for each of `N` targets in `--rounds`
    /// interleaved rounds, each round starting with the next target so that
    /// none is always measured first or last; each target's results in order.
    pub(super) fn interleaved<T, const N: usize>(
        &self,
        mut measure: impl FnMut(usize, usize) -> anyhow::Result<T>,
    ) -> anyhow::Result<[Vec<T>; N]> {
        let mut results = std::array::from_fn(|_| Vec::new());
        for round in 1..=self.args.rounds {
            for index in (0..N).map(|step| (round + step) % N) {
                results[index].push(measure(index, round)?);
            }
        }
        Ok(results)
    }

    /// `POST /hmac` with the 64-byte messages of `messages` in turn, at the
    /// per-request load.
    pub(super) fn post_hmac(
        &self,
        server: &Server,
        messages: &Path,
        duration: Duration,
    ) -> anyhow::Result<LoadResult> {
        self.post_hmac_at(server, messages, PER_REQUEST_LOAD, duration)
    }

    /// [`post_hmac`](Self::post_hmac) at another load.
    pub(super) fn post_hmac_at(
        &self,
        server: &Server,
        messages: &Path,
        load: Load,
        duration: Duration,
    ) -> anyhow::Result<LoadResult> {
        self.wrk.run(
            (&server.url("/hmac"), &server.headers),
            messages,
            MESSAGE_LEN,
            load,
            duration,
        )
    }

    /// The load of MODE32's cold runs: `--cold-connections` on two wrk
    /// threads. Cold answers come as their reads complete, a few at a time, so
    /// one thread spends its time waking up for them and its own latency caps
    /// the run below what the CPU allows.
    pub(super) fn cold_load(&self) -> Load {
        Load {
            connections: self.args.cold_connections,
            threads: 2,
        }
    }

    /// Development secrets of `mode`, made on first use in the work directory.
    pub(super) fn secrets(&self, mode: Mode) -> anyhow::Result<PathBuf> {
        let dir = self.work.path().join(mode.name().to_ascii_lowercase());
        secrets::make_quietly(mode, &dir)?;
        Ok(dir)
    }

    fn start_floor(&self) -> anyhow::Result<Server> {
        let address = free_address()?;
        let binary = target_dir().join("release/examples/floor");
        let mut command = Command::new(binary);
        command.arg(address.to_string());
        Ok(Server::start(
            "floor",
            &mut command,
            address,
            &self.work.path().join("floor.log"),
        )?
        .0)
    }

    /// The release MODE16 server with a clients file of one client, in a
    /// namespace, whose token the requests to it carry.
    pub(super) fn start_namespaced_server(&self, dir: &Path) -> anyhow::Result<Server> {
        let digest = hex::encode(Sha256::digest(NAMESPACED_TOKEN));
        let clients = self.work.write_file(
            "clients",
            format!("{digest} bench namespace={NAMESPACE}\n").as_bytes(),
        )?;
        let address = free_address()?;
        let mut command = self.server_command(Mode::Mode16, dir, address);
        command.env("CRYPTOSERVER_CLIENTS_FILE", clients);
        let log = self.work.path().join("mode16-namespaced.log");
        let (mut server, _) = Server::start("MODE16 ns", &mut command, address, &log)?;
        server.headers = vec![(
            "Authorization".to_owned(),
            format!("Bearer {NAMESPACED_TOKEN}"),
        )];
        Ok(server)
    }

    /// Starts the release server; returns it with the time until it accepted a connection.
    pub(super) fn start_server(
        &self,
        mode: Mode,
        dir: &Path,
    ) -> anyhow::Result<(Server, Duration)> {
        let address = free_address()?;
        let mut command = self.server_command(mode, dir, address);
        let log = self
            .work
            .path()
            .join(format!("{}.log", mode.name().to_ascii_lowercase()));
        Server::start(mode.name(), &mut command, address, &log)
    }

    /// The release server's command, serving `dir` in `mode` on `address`.
    fn server_command(&self, mode: Mode, dir: &Path, address: SocketAddr) -> Command {
        let mut command = Command::new(target_dir().join("release/cryptoserver"));
        command
            .env_clear()
            .env("CRYPTOSERVER_MODE", mode.name())
            .env("CRYPTOSERVER_SECRETDIR", dir)
            .env("CRYPTOSERVER_BIND", address.to_string())
            // Every wrk connection comes from one address: only the total
            // connection limit may apply, as it would to many clients.
            .env("CRYPTOSERVER_MAX_CONNECTIONS_PER_CLIENT", "1048576");
        command
    }
}

/// CPU seconds, of all processes and the kernel together, that the two halves
/// of a cold MODE32 request cost when measured apart in the same run.
struct CpuCost {
    /// Per request of the HTTP floor at the cold run's load: the floor and
    /// the kernel, then wrk.
    floor: CpuSplit,
    /// Per read of the key store alone, from a cold page cache.
    per_read: f64,
    /// Per request of the cold run: cryptoserver and the kernel, then wrk.
    cold: CpuSplit,
}

/// CPU seconds per request, split between the server side and the load generator.
struct CpuSplit {
    server: f64,
    client: f64,
}

impl CpuSplit {
    fn per_request(spent: CpuSpent, requests: u64) -> CpuSplit {
        let requests = requests.max(1) as f64;
        CpuSplit {
            server: (spent.all - spent.ended_children) / requests,
            client: spent.ended_children / requests,
        }
    }
}

impl CpuCost {
    /// How close to fio any server can come here: at most the HTTP floor's
    /// rate, and at most what the CPU allows (the goal's CPU-cost ceiling).
    fn fio_reachable(&self, floor: f64, fio_rate: f64) -> Ceiling {
        let by_cpu = self.ceiling(available_cores(), self.cold.client, fio_rate);
        if floor < by_cpu {
            Ceiling {
                ratio: floor / fio_rate,
                set_by: "the HTTP floor itself",
            }
        } else {
            Ceiling {
                ratio: by_cpu / fio_rate,
                set_by: "the CPU-cost ceiling",
            }
        }
    }

    /// The rate a server doing both for every request can reach at most on
    /// this machine's cores, with the client spending `client` per request,
    /// and never more than the disk (fio).
    fn ceiling(&self, cores: usize, client: f64, fio_rate: f64) -> f64 {
        (cores as f64 / (self.floor.server + client + self.per_read)).min(fio_rate)
    }

    /// The CPU-cost ceiling with the client's CPU per request as in the
    /// floor's run and as in the cold run, cold MODE32 against both, and
    /// against the lower of the HTTP floor and fio.
    fn rows(&self, report: &mut Report, cold: f64, floor: f64, fio_rate: f64) {
        let cores = available_cores();
        let micros = |seconds: f64| seconds * 1e6;
        report.row(Row {
            what: format!(
                "CPU per request (µs): HTTP floor {:.1} + wrk {:.1}; key-store read {:.1}; \
                 cold MODE32 {:.1} + wrk {:.1}",
                micros(self.floor.server),
                micros(self.floor.client),
                micros(self.per_read),
                micros(self.cold.server),
                micros(self.cold.client),
            ),
            value: format!("{:.1}", micros(self.cold.server)),
            baseline: format!(
                "floor + key-store read {:.1}",
                micros(self.floor.server + self.per_read)
            ),
            goal: Goal::Ratio(self.cold.server / (self.floor.server + self.per_read)),
        });
        // The goal's ceiling charges wrk what it spent per cold request; the
        // one with wrk as in the floor's run is shown beside it.
        for (client, when, against, goal) in [
            (self.floor.client, "the floor's run", "that ceiling", None),
            (
                self.cold.client,
                "the cold run",
                "the CPU-cost ceiling",
                Some(0.9),
            ),
        ] {
            let ceiling = self.ceiling(cores, client, fio_rate);
            report.row(Row {
                what: format!(
                    "CPU-cost ceiling: {cores} cores / (floor + wrk as in {when} + key-store read), at most fio"
                ),
                value: thousands(ceiling),
                baseline: format!("fio {}", thousands(fio_rate)),
                goal: Goal::Ratio(ceiling / fio_rate),
            });
            let ratio = cold / ceiling;
            report.row(Row {
                what: format!("MODE32 cold against {against}, requests/s"),
                value: thousands(cold),
                baseline: format!("ceiling {}", thousands(ceiling)),
                goal: match goal {
                    Some(minimum) => Goal::AtLeast {
                        ratio,
                        minimum,
                        ceiling: None,
                    },
                    None => Goal::Ratio(ratio),
                },
            });
        }
        let lower = floor.min(fio_rate);
        report.row(Row {
            what: "MODE32 cold against min(HTTP floor, fio), requests/s".to_owned(),
            value: thousands(cold),
            baseline: format!("min {}", thousands(lower)),
            goal: Goal::Ratio(cold / lower),
        });
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What MODE32X is measured against, from the MODE32 part of the run.
struct Mode32Baselines<'a> {
    /// The MODE32 server, for warm requests side by side.
    server: &'a Server,
    warm_up_file: &'a Path,
    /// fio's random 4 KiB reads per second on the cold blocks.
    fio_rate: f64,
    /// The HTTP floor's requests/s at the same load.
    floor_rate: f64,
    /// MODE32 files the server keeps open; the others cost an `open` per read.
    kept_open: usize,
}

/// `count` random messages of MESSAGE_LEN bytes, concatenated.
pub(super) fn random_messages(count: usize) -> anyhow::Result<Vec<u8>> {
    let mut messages = vec![0u8; count * MESSAGE_LEN];
    fill_secret(&mut messages)?;
    Ok(messages)
}

/// The MACs `/hmac/batch` computes for `messages`, computed here through the
/// server's own key store on this thread, for at least `duration`.
fn macs_per_second_in_process(store: &KeyStore, messages: &[&[u8]], duration: Duration) -> f64 {
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        for message in messages {
            let mac = completed(store.mac(None, std::hint::black_box(message)))
                .expect("MODE16 keys are in memory");
            std::hint::black_box(mac);
        }
        count += messages.len() as u64;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// The output of a future that completes when first polled, as the key store's
/// in-memory MACs do; no runtime needed.
fn completed<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an in-memory MAC never waits"),
    }
}

const MIB: f64 = (1 << 20) as f64;

pub(super) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// The median of the rounds' ratios of `figure` between `results` and
/// `baselines`: the two figures of a round were measured seconds apart, under
/// the same load from elsewhere, where the medians of each were not.
pub(super) fn median_ratio(
    results: &[LoadResult],
    baselines: &[LoadResult],
    figure: impl Fn(&LoadResult) -> f64,
) -> f64 {
    median(
        results
            .iter()
            .zip(baselines)
            .map(|(result, baseline)| figure(result) / figure(baseline)),
    )
}

pub(super) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    assert!(!values.is_empty(), "a median needs at least one value");
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost() -> CpuCost {
        // 20 µs per floor request (15 of them wrk's), 20 µs per key read,
        // 30 µs per cold request (20 of them wrk's).
        let spent = |all: f64, ended_children: f64| CpuSpent {
            all,
            ended_children,
        };
        CpuCost {
            floor: CpuSplit::per_request(spent(2.0, 1.5), 100_000),
            per_read: 20e-6,
            cold: CpuSplit::per_request(spent(1.5, 1.0), 50_000),
        }
    }

    #[test]
    fn the_cpu_cost_ceiling_adds_both_halves_and_stops_at_fio() {
        let cost = cost();
        assert!((cost.floor.server - 5e-6).abs() < 1e-12);
        assert!((cost.cold.client - 20e-6).abs() < 1e-12);
        // 2 cores / (5 + 15 + 20 µs), then with the client's 20 µs of the cold run.
        assert!((cost.ceiling(2, cost.floor.client, 1e6) - 50_000.0).abs() < 1e-6);
        assert!((cost.ceiling(2, cost.cold.client, 1e6) - 2.0 / 45e-6).abs() < 1e-6);
        assert_eq!(cost.ceiling(2, cost.floor.client, 25_000.0), 25_000.0);
    }

    #[test]
    fn fio_is_out_of_reach_below_the_floor_or_the_cpu_cost_ceiling() {
        let cost = cost();
        let cores = available_cores() as f64;
        // 5 µs floor + 20 µs wrk (as in the cold run) + 20 µs key read.
        let by_cpu = cores / 45e-6;
        let reachable = cost.fio_reachable(by_cpu * 2.0, by_cpu * 4.0);
        assert_eq!(reachable.set_by, "the CPU-cost ceiling");
        assert!((reachable.ratio - 0.25).abs() < 1e-9);
        let reachable = cost.fio_reachable(by_cpu / 2.0, by_cpu * 4.0);
        assert_eq!(reachable.set_by, "the HTTP floor itself");
        assert!((reachable.ratio - 0.125).abs() < 1e-9);
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
