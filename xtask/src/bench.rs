//! `cargo xtask bench [benchmark]`: every speed goal is a ratio against
//! baselines measured in the same run on the same machine, never an absolute
//! number (only memory and startup time have absolute limits). Benchmarks
//! measure optimised code: a debug xtask re-runs itself with `--release`. Each
//! benchmark lives in its own module under `bench/` and reports through
//! [`report::Report`]. Without a benchmark named, all of them run.

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context};

use crate::process::cargo;
use ebs::EbsShape;
use report::Report;
use server::{Bench, ServerBenchArgs};

mod ebs;
mod gen;
mod mode32;
mod peers;
mod report;
mod scratch;
mod server;
mod tools;
mod wrk;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    benchmark: Option<Benchmark>,
}

#[derive(clap::Subcommand)]
enum Benchmark {
    /// Secret generation against the CSPRNG alone, the disk's write bandwidth and the original design's recipes
    Gen(gen::GenBenchArgs),
    /// MODE0 and MODE16 POST /hmac against the HTTP floor (axum answering constant bytes), and MODE16's idle memory
    Http(ServerBenchArgs),
    /// POST /hmac/batch against the same MACs computed in this process on one core
    Batch(ServerBenchArgs),
    /// MODE32: startup, idle memory, and key reads from a cold page cache against fio on the same blocks
    /// and the CPU-cost ceiling; with --ebs-iops, on an EBS-shaped volume and a hot copy instead
    Mode32(Mode32Args),
    /// cryptoserver MODE16 against OpenBao's transit engine on the same machine: single HMACs,
    /// 400-message batches, and OpenBao with a file audit device
    Peers(ServerBenchArgs),
}

#[derive(clap::Args)]
struct Mode32Args {
    #[command(flatten)]
    server: ServerBenchArgs,
    #[command(flatten)]
    ebs: ebs::EbsArgs,
}

pub fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("benchmarks measure optimised code: re-running with --release");
        let error = cargo()
            .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
            .args(std::env::args_os().skip(1))
            .exec();
        return Err(error).context("cannot re-run the benchmark with cargo --release");
    }
    match &args.benchmark {
        Some(Benchmark::Gen(args)) => gen::run(args),
        Some(Benchmark::Http(args)) => run_parts(&[Part::Http], args),
        Some(Benchmark::Batch(args)) => run_parts(&[Part::Batch], args),
        Some(Benchmark::Peers(args)) => run_parts(&[Part::Peers], args),
        Some(Benchmark::Mode32(args)) => {
            let part = match args.ebs.shape() {
                Some(shape) => {
                    ebs::require_root()?;
                    Part::Ebs(shape)
                }
                None => Part::Mode32,
            };
            run_parts(&[part], &args.server)
        }
        None => run_all(),
    }
}

/// Which of the server benchmarks to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Http,
    Batch,
    Mode32,
    /// MODE32 on an EBS-shaped volume and a hot copy (`mode32 --ebs-iops`).
    Ebs(EbsShape),
    Peers,
}

impl Part {
    const ALL: [Part; 4] = [Part::Http, Part::Batch, Part::Mode32, Part::Peers];
}

/// Runs `parts`, prints one table of their results and fails if a goal was missed.
fn run_parts(parts: &[Part], args: &ServerBenchArgs) -> anyhow::Result<()> {
    let bench = Bench::prepare(args)?;
    let mut report = Report::start();
    for part in parts {
        match part {
            Part::Http => bench.http(&mut report)?,
            Part::Batch => bench.batch(&mut report)?,
            Part::Mode32 => bench.mode32(&mut report)?,
            Part::Ebs(shape) => bench.ebs(&mut report, *shape)?,
            Part::Peers => bench.peers(&mut report)?,
        }
    }
    report.finish()
}

/// Every benchmark with its defaults; one failing does not stop the others.
fn run_all() -> anyhow::Result<()> {
    let results = [
        ("gen", gen::run(&default_args())),
        (
            "http, batch, mode32, peers",
            run_parts(&Part::ALL, &default_args()),
        ),
    ];
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|error| format!("{name}: {error:#}")))
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// A benchmark's arguments as `cargo xtask bench <benchmark>` alone gives them.
fn default_args<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("bench"));
    T::from_arg_matches(&command.get_matches_from(["bench"]))
        .expect("every benchmark option has a default")
}
