//! `cargo xtask bench [benchmark]`: every speed goal is a ratio against
//! baselines measured in the same run on the same machine, never an absolute
//! number. Benchmarks measure optimised code: a debug xtask re-runs itself with
//! `--release`. Each benchmark lives in its own module under `bench/` and reports
//! through [`Measurement`] and [`Goal`]; the server benchmarks print one table of
//! their own. Without a benchmark named, all of them run.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::process::cargo;

mod gen;
mod mode32;
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
    /// Secret generation against the CSPRNG alone, the disk's write bandwidth and the seed's recipes
    Gen(gen::GenBenchArgs),
    /// MODE0 and MODE16 POST /hmac against the HTTP floor (axum answering constant bytes), and MODE16's idle memory
    Http(server::ServerBenchArgs),
    /// POST /hmac/batch against the same MACs computed in this process on one core
    Batch(server::ServerBenchArgs),
    /// MODE32: startup, idle memory, and key reads from a cold page cache against fio on the same blocks
    Mode32(server::ServerBenchArgs),
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
        Some(Benchmark::Http(args)) => server::run_parts(&[server::Part::Http], args),
        Some(Benchmark::Batch(args)) => server::run_parts(&[server::Part::Batch], args),
        Some(Benchmark::Mode32(args)) => server::run_parts(&[server::Part::Mode32], args),
        None => run_all(),
    }
}

/// Every benchmark with its defaults; one failing does not stop the others.
fn run_all() -> anyhow::Result<()> {
    let results = [
        ("gen", gen::run(&default_args())),
        (
            "http, batch, mode32",
            server::run_parts(&server::Part::ALL, &default_args()),
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

/// One timed run: `bytes` processed in `elapsed`.
pub struct Measurement {
    pub name: String,
    /// Files written, where that is what the run does.
    pub files: Option<usize>,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Measurement {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

/// Prints `rows` as a Markdown table (ready for the README), each rate also
/// relative to the row `reference`.
pub fn print_table(rows: &[Measurement], reference: &Measurement) {
    println!(
        "| measurement | files | data | time | MiB/s | relative to {} |",
        reference.name
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.2} GiB | {:.2} s | {:.0} | {:.2}x |",
            row.name,
            row.files.map_or("-".to_owned(), |files| files.to_string()),
            row.bytes as f64 / (1u64 << 30) as f64,
            row.elapsed.as_secs_f64(),
            row.rate() / (1u64 << 20) as f64,
            row.rate() / reference.rate()
        );
    }
}

/// A speed goal: `ratio` must reach `minimum`. `best_possible` is the highest
/// ratio the machine allows (from the baselines): where even that is below the
/// minimum, the goal is out of reach here, which is said rather than failed.
pub struct Goal {
    pub what: String,
    pub ratio: f64,
    pub minimum: f64,
    pub best_possible: f64,
}

impl Goal {
    fn verdict(&self) -> Verdict {
        Verdict::of(self.ratio, self.minimum, self.best_possible)
    }
}

/// How a ratio fares against its minimum on this machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Met,
    /// Missed, but even the best ratio the baselines allow is below the minimum.
    OutOfReach,
    Missed,
}

impl Verdict {
    pub fn of(ratio: f64, minimum: f64, best_possible: f64) -> Verdict {
        if ratio >= minimum {
            Verdict::Met
        } else if best_possible < minimum {
            Verdict::OutOfReach
        } else {
            Verdict::Missed
        }
    }
}

/// Prints every goal with its verdict; fails naming the missed ones.
pub fn check_goals(goals: &[Goal]) -> anyhow::Result<()> {
    println!();
    for goal in goals {
        let verdict = match goal.verdict() {
            Verdict::Met => "met".to_owned(),
            Verdict::OutOfReach => format!(
                "out of reach on this machine: its baselines allow at most {:.2}x",
                goal.best_possible
            ),
            Verdict::Missed => "MISSED".to_owned(),
        };
        println!(
            "- {}: {:.2}x (goal >= {:.2}x; {:.0}% of the best possible here): {verdict}",
            goal.what,
            goal.ratio,
            goal.minimum,
            100.0 * goal.ratio / goal.best_possible
        );
    }
    let missed: Vec<_> = goals
        .iter()
        .filter(|goal| goal.verdict() == Verdict::Missed)
        .map(|goal| goal.what.as_str())
        .collect();
    if !missed.is_empty() {
        bail!("speed goals missed: {}", missed.join("; "));
    }
    Ok(())
}

/// How much the machine's other work competed for the CPU during a benchmark,
/// from the kernel's pressure stall information (`/proc/pressure/cpu`): on a
/// shared machine, ratios that involve CPU work are pessimistic when it is high.
pub struct CpuPressure {
    stalled_at_start: Option<Duration>,
    started: std::time::Instant,
}

impl CpuPressure {
    pub fn start() -> CpuPressure {
        CpuPressure {
            stalled_at_start: cpu_stall_total(),
            started: std::time::Instant::now(),
        }
    }

    /// Prints the share of the run during which some task waited for a CPU.
    pub fn report(&self) {
        let (Some(start), Some(end)) = (self.stalled_at_start, cpu_stall_total()) else {
            return;
        };
        let share = (end - start).as_secs_f64() / self.started.elapsed().as_secs_f64();
        println!(
            "\nCPU contention: during {:.0}% of the run some task waited for a CPU \
             (/proc/pressure/cpu); ratios involving CPU work are pessimistic when this is high.",
            100.0 * share.min(1.0)
        );
    }
}

/// Total time some task waited for a CPU since boot.
fn cpu_stall_total() -> Option<Duration> {
    let pressure = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = pressure.lines().find(|line| line.starts_with("some "))?;
    let micros = some
        .split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?;
    Some(Duration::from_micros(micros.parse().ok()?))
}
