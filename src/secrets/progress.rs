//! Progress of the long secret-file jobs (generate, hash, verify): a bar with
//! bytes/s and ETA on a terminal, a plain line every few seconds otherwise
//! (systemd's journal, CI logs), so an operator always sees that work advances.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Where progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressOutput {
    /// A bar on stderr if it is a terminal, plain lines on stderr otherwise.
    Stderr,
    /// Nothing (benchmarks print their own results).
    Hidden,
}

impl ProgressOutput {
    /// Prints one line about the job on stderr (nothing when hidden).
    pub fn note(self, message: &str) {
        if self == ProgressOutput::Stderr {
            eprintln!("{message}");
        }
    }
}

/// Counts the bytes a job has processed out of a known total.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    line_printer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Progress {
    /// Starts reporting on a job of `total_bytes` described by `label` ("generating", "verifying").
    pub fn start(label: &str, total_bytes: u64, output: ProgressOutput) -> Progress {
        let terminal = output == ProgressOutput::Stderr && std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(total_bytes),
            if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        )
        .with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        )
        .with_message(label.to_owned());
        let line_printer = (output == ProgressOutput::Stderr && !terminal).then(|| {
            let (stop, stopped) = mpsc::channel();
            let bar = bar.clone();
            let label = label.to_owned();
            let printer = std::thread::spawn(move || {
                while stopped.recv_timeout(LINE_INTERVAL) == Err(mpsc::RecvTimeoutError::Timeout) {
                    eprintln!("{}", plain_line(&label, &bar));
                }
            });
            (stop, printer)
        });
        Progress {
            bar,
            started: Instant::now(),
            line_printer,
        }
    }

    /// Records `bytes` more processed.
    pub fn add(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Stops reporting; returns the time since the start.
    pub fn finish(mut self) -> Duration {
        self.stop();
        self.started.elapsed()
    }

    fn stop(&mut self) {
        self.bar.finish_and_clear();
        if let Some((stop, printer)) = self.line_printer.take() {
            drop(stop);
            printer.join().expect("the progress printer does not panic");
        }
    }
}

impl Drop for Progress {
    /// An interrupted job (an error) also stops its printer, so no line follows the error.
    fn drop(&mut self) {
        self.stop();
    }
}

fn plain_line(label: &str, bar: &ProgressBar) -> String {
    let done = bar.position();
    let total = bar.length().unwrap_or(done).max(1);
    format!(
        "{label}: {} of {} ({}%), {}/s, about {} left",
        HumanBytes(done),
        HumanBytes(total),
        done * 100 / total,
        HumanBytes(bar.per_sec() as u64),
        HumanDuration(bar.eta()),
    )
}

/// `bytes` over `elapsed`, for summaries: "2.00 GiB in 7.3 s (280.55 MiB/s)".
pub fn throughput(bytes: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let time = if seconds < 100.0 {
        format!("{seconds:.1} s")
    } else {
        HumanDuration(elapsed).to_string()
    };
    let per_second = bytes as f64 / seconds.max(1e-9);
    format!(
        "{} in {time} ({}/s)",
        HumanBytes(bytes),
        HumanBytes(per_second as u64)
    )
}

/// "1 file", "2 files".
pub fn count(number: usize, noun: &str) -> String {
    format!("{number} {noun}{}", if number == 1 { "" } else { "s" })
}
