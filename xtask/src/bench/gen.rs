//! `cargo xtask bench gen`: the secret generator against its limits and its
//! predecessors, in one run on one filesystem:
//! - gen-secrets itself: the library writing the first MODE32 files (>= 4 GiB);
//! - the CSPRNG alone on every core, output discarded: ChaCha20 as gen-secrets
//!   uses it, and getrandom directly (the alternative to ChaCha20); and
//!   ChaCha20 plus the SHA-256 the manifest needs, gen-secrets' whole CPU work;
//! - the disk's sequential write bandwidth: one file of zeros, then fsync
//!   (alternating with gen-secrets, best of three each by default);
//! - the original design's recipes: its Python `urandom` loop on as many files, and
//!   `dd if=/dev/urandom bs=32 count=65536` per file on a few files (each
//!   makes 131,072 system calls, so the full count would take many minutes).
//!
//! Goals: gen-secrets >= 0.9x min(CSPRNG, disk), and >= 4x the original design's
//! Python loop.
//! A goal the machine itself puts out of reach (the best possible being the
//! slower of ChaCha20 + SHA-256 and the disk) is reported as such, not failed:
//! on a disk slower than about 4x one core's getrandom, the original loop is
//! disk-bound too; on tmpfs, hashing bounds gen-secrets below the bare CSPRNG.

use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cryptoserver::layout::{Mode, KEY_FILE_LEN};
use cryptoserver::secrets::generate::{fill_secret, FileWork};
use cryptoserver::secrets::jobs;
use cryptoserver::secrets::progress::ProgressOutput;
use cryptoserver::secrets::secret_dir::SecretDir;
use sha2::{Digest, Sha256};

use super::report::{thousands, Ceiling, Goal, Report, Row};
use super::scratch::{self, Scratch};
use crate::process::output;

/// The original design's MODE32 loop, unchanged but for stopping after `count` files and
/// syncing at the end, so its data is on disk like gen-secrets' when the clock stops.
const ORIGINAL_PYTHON_LOOP: &str = r#"
import os, sys
from itertools import islice, product
from os import urandom
HEXCHARS = "0123456789abcdef"
def hexchars():
    for a in HEXCHARS:
        for b in HEXCHARS:
            yield a + b
directory, count = sys.argv[1], int(sys.argv[2])
for name in islice(product(hexchars(), hexchars()), count):
    name = "".join(name)
    with open(f"{directory}/{name}", 'wb') as file:
        file.write(urandom(32 * 65536))
os.sync()
"#;

#[derive(clap::Args)]
pub struct GenBenchArgs {
    /// Directory to measure in, on the filesystem of interest; must not exist, and is removed
    /// afterwards [default: bench-gen in cargo's target directory]
    #[arg(long)]
    dir: Option<PathBuf>,

    /// GiB of MODE32 files gen-secrets writes (2 MiB each); the goals are defined for at least 4.
    #[arg(long, default_value_t = 4)]
    gib: u64,

    /// Parallel jobs of gen-secrets and of the CSPRNG runs [default: the number of cores].
    #[arg(long, short = 'j')]
    jobs: Option<NonZeroUsize>,

    /// Files the original design's dd recipe writes.
    #[arg(long, default_value_t = 64)]
    dd_files: usize,

    /// Runs of the disk and of gen-secrets, alternating; the fastest of each counts.
    #[arg(long, default_value = "3")]
    repeat: NonZeroUsize,
}

pub fn run(args: &GenBenchArgs) -> anyhow::Result<()> {
    if args.gib < 4 {
        eprintln!(
            "note: --gib {} is below the 4 GiB the goals are defined for",
            args.gib
        );
    }
    let jobs = args.jobs.unwrap_or_else(jobs::default_jobs);
    let files = ((args.gib << 30) / KEY_FILE_LEN) as usize;
    let bytes = files as u64 * KEY_FILE_LEN;
    let scratch = Scratch::create(
        args.dir
            .clone()
            .unwrap_or_else(|| scratch::default_path("gen")),
    )?;
    let available = SecretDir::open_locked(scratch.path())?
        .available_space()?
        .bytes;
    if available < bytes + (256 << 20) {
        bail!(
            "{}: the benchmark writes {bytes} bytes at a time but only {available} bytes are available; \
             free space, choose another --dir or a smaller --gib",
            scratch.path().display()
        );
    }
    eprintln!(
        "measuring in {} with {jobs} jobs: {files} files, {} GiB per run (takes a few minutes)",
        scratch.path().display(),
        args.gib
    );

    let mut report = Report::start();
    let on_all_cores = |name: &str, fill: &(dyn Fn(&mut [u8]) -> anyhow::Result<()> + Sync)| {
        measure(name, None, bytes, || fill_in_parallel(jobs, bytes, fill))
    };
    let chacha = on_all_cores(
        "CSPRNG: ChaCha20 seeded by getrandom (gen-secrets'), all cores",
        &|chunk| fill_secret(chunk).map_err(anyhow::Error::from),
    )?;
    let getrandom = on_all_cores("CSPRNG: getrandom directly, all cores", &|chunk| {
        getrandom::fill(chunk).map_err(|error| anyhow::anyhow!("getrandom failed: {error}"))
    })?;
    let chacha_sha = on_all_cores(
        "ChaCha20 + SHA-256 (gen-secrets' CPU work), all cores",
        &|chunk| {
            fill_secret(chunk)?;
            std::hint::black_box(Sha256::digest(&chunk[..]));
            Ok(())
        },
    )?;
    // The disk and gen-secrets alternate, best of `repeat` each, so that a burst of
    // other work on a shared machine does not decide the ratio between them.
    let mut disk_runs = Vec::new();
    let mut gen_runs = Vec::new();
    for _ in 0..args.repeat.get() {
        disk_runs.push(measure(
            "disk: one file of zeros, then fsync",
            None,
            bytes,
            || write_zeros(&scratch.path().join("zeros"), bytes),
        )?);
        scratch.empty()?;
        gen_runs.push(measure(
            "gen-secrets (library, first MODE32 files)",
            Some(files),
            bytes,
            || {
                let dir = SecretDir::open_locked(&scratch.path().join("gen"))?;
                let indices: Vec<usize> = (0..files).collect();
                let work = FileWork {
                    dir: &dir,
                    mode: Mode::Mode32,
                    jobs,
                    owner: None,
                    output: ProgressOutput::Hidden,
                };
                work.write_files(&indices)?;
                Ok(())
            },
        )?);
        scratch.empty()?;
    }
    let disk = fastest(disk_runs);
    let gen = fastest(gen_runs);
    let python_loop = scratch.write_file("original-loop.py", ORIGINAL_PYTHON_LOOP.as_bytes())?;
    let python = measure(
        "the original design's Python urandom loop (+ final sync)",
        Some(files),
        bytes,
        || {
            output(
                Command::new("python3")
                    .arg(&python_loop)
                    .arg(scratch.path())
                    .arg(files.to_string()),
            )
            .map(drop)
        },
    )?;
    scratch.empty()?;
    let dd_bytes = args.dd_files as u64 * KEY_FILE_LEN;
    let dd = measure(
        "the original design's dd bs=32 count=65536 per file (+ final sync)",
        Some(args.dd_files),
        dd_bytes,
        || {
            for index in 0..args.dd_files {
                let file = scratch.path().join(Mode::Mode32.file_name(index));
                let mut dd = Command::new("dd");
                dd.args(["if=/dev/urandom", "bs=32", "count=65536", "status=none"])
                    .arg(format!("of={}", file.display()));
                output(&mut dd)?;
            }
            output(Command::new("sync").arg("-f").arg(scratch.path())).map(drop)
        },
    )?;
    scratch.empty()?;

    // No generator doing gen-secrets' work (random bytes and their SHA-256 for the
    // manifest, written to this disk) can beat the slower of those two.
    let best_possible = chacha_sha.rate().min(disk.rate());
    let csprng_or_disk = chacha.rate().min(disk.rate());
    let ceiling = |baseline: f64| {
        Some(Ceiling {
            ratio: best_possible / baseline,
            set_by: "the slower of gen-secrets' CPU work and the disk",
        })
    };
    report.row(Row {
        what: format!("{}, fastest of {}", gen.name, args.repeat),
        value: gen.figure(),
        baseline: String::new(),
        goal: Goal::None,
    });
    for baseline in [&chacha, &getrandom, &chacha_sha, &disk] {
        report.row(gen.against(baseline, Goal::Ratio(gen.rate() / baseline.rate())));
    }
    report.row(Row {
        what: "gen-secrets vs min(its CSPRNG, disk)".to_owned(),
        value: mib_per_second(gen.rate()),
        baseline: mib_per_second(csprng_or_disk),
        goal: Goal::AtLeast {
            ratio: gen.rate() / csprng_or_disk,
            minimum: 0.9,
            ceiling: ceiling(csprng_or_disk),
        },
    });
    report.row(gen.against(
        &python,
        Goal::AtLeast {
            ratio: gen.rate() / python.rate(),
            minimum: 4.0,
            ceiling: ceiling(python.rate()),
        },
    ));
    report.row(gen.against(&dd, Goal::Ratio(gen.rate() / dd.rate())));
    report.finish()
}

/// One timed run: `bytes` processed in `elapsed`.
struct Measurement {
    name: String,
    /// Files written, where that is what the run does.
    files: Option<usize>,
    bytes: u64,
    elapsed: Duration,
}

impl Measurement {
    /// Bytes per second.
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }

    /// The rate, with what was written in what time.
    fn figure(&self) -> String {
        let files = self
            .files
            .map_or(String::new(), |files| format!("{files} files, "));
        format!(
            "{} ({files}{:.2} GiB in {:.2} s)",
            mib_per_second(self.rate()),
            self.bytes as f64 / (1u64 << 30) as f64,
            self.elapsed.as_secs_f64()
        )
    }

    /// A row comparing this run (gen-secrets) with `baseline`.
    fn against(&self, baseline: &Measurement, goal: Goal) -> Row {
        Row {
            what: format!("gen-secrets vs {}", baseline.name),
            value: mib_per_second(self.rate()),
            baseline: baseline.figure(),
            goal,
        }
    }
}

fn mib_per_second(bytes_per_second: f64) -> String {
    format!(
        "{} MiB/s",
        thousands(bytes_per_second / (1u64 << 20) as f64)
    )
}

fn fastest(runs: Vec<Measurement>) -> Measurement {
    runs.into_iter()
        .min_by(|a, b| a.elapsed.cmp(&b.elapsed))
        .expect("at least one run")
}

fn measure(
    name: &str,
    files: Option<usize>,
    bytes: u64,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Measurement> {
    eprintln!("- {name} ...");
    let started = Instant::now();
    work().with_context(|| format!("benchmark step '{name}' failed"))?;
    let elapsed = started.elapsed();
    eprintln!("  {:.2} s", elapsed.as_secs_f64());
    Ok(Measurement {
        name: name.to_owned(),
        files,
        bytes,
        elapsed: elapsed.max(Duration::from_nanos(1)),
    })
}

/// Fills `bytes` of 2 MiB buffers with `fill` on `jobs` threads; the output is discarded.
fn fill_in_parallel(
    jobs: NonZeroUsize,
    bytes: u64,
    fill: impl Fn(&mut [u8]) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let remaining = AtomicU64::new(bytes / KEY_FILE_LEN);
    jobs::map::<_, _, anyhow::Error>(
        jobs,
        jobs.get(),
        || vec![0u8; KEY_FILE_LEN as usize],
        |buffer, _| {
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
            {
                fill(buffer)?;
                std::hint::black_box(&buffer);
            }
            Ok(())
        },
    )?;
    Ok(())
}

fn write_zeros(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let zeros = vec![0u8; 8 << 20];
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let chunk = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..chunk])
            .with_context(|| format!("cannot write {}", path.display()))?;
        left -= chunk as u64;
    }
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_both_rates_with_what_they_measured() {
        let run = |name: &str, files, seconds| Measurement {
            name: name.to_owned(),
            files,
            bytes: 4 << 30,
            elapsed: Duration::from_secs(seconds),
        };
        let gen = run("gen-secrets", Some(2048), 8);
        let row = gen.against(&run("disk", None, 4), Goal::None);
        assert_eq!(row.what, "gen-secrets vs disk");
        assert_eq!(row.value, "512 MiB/s");
        assert_eq!(row.baseline, "1,024 MiB/s (4.00 GiB in 4.00 s)");
        assert_eq!(gen.figure(), "512 MiB/s (2048 files, 4.00 GiB in 8.00 s)");
    }
}
