//! How every benchmark reports: a Markdown table under a line naming the
//! machine, each row a figure next to a baseline measured in the same run, with
//! their ratio and the goal it is judged by; then how much other work competed
//! for the CPU meanwhile. A missed goal fails the benchmark; a goal the
//! machine's own baselines put out of reach is said to be, not failed.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;

/// One row of the table.
pub struct Row {
    pub what: String,
    /// The figure measured, with its unit.
    pub value: String,
    /// What the figure is compared with, measured in the same run.
    pub baseline: String,
    pub goal: Goal,
}

/// What a row's figure is judged by.
pub enum Goal {
    /// Nothing: the row shows a figure only.
    None,
    /// A ratio to the baseline, shown without a goal.
    Ratio(f64),
    /// The ratio to the baseline must reach `minimum`; `ceiling`, where known,
    /// is the highest ratio the machine allows.
    AtLeast {
        ratio: f64,
        minimum: f64,
        ceiling: Option<Ceiling>,
    },
    /// A goal of at least `minimum` that this machine cannot reach, `because`
    /// (the subject of "out of reach here, ...").
    OutOfReach {
        ratio: f64,
        minimum: f64,
        because: String,
    },
    /// The ratio to the baseline must stay at or below `maximum`.
    AtMost { ratio: f64, maximum: f64 },
    /// `ratio` is the figure per core (divided by `cores`) over the baseline.
    PerCoreAtLeast {
        ratio: f64,
        cores: usize,
        minimum: f64,
    },
    /// An absolute figure, in `unit`, that must stay below `limit`.
    Below {
        value: f64,
        limit: f64,
        unit: &'static str,
    },
}

/// The highest ratio a goal can reach on this machine, as a baseline caps it.
pub struct Ceiling {
    pub ratio: f64,
    /// What caps it, as the subject of "... reaches 0.80x".
    pub set_by: &'static str,
}

/// A goal as the table shows it.
struct Judged {
    ratio: String,
    goal: String,
    missed: bool,
}

impl Goal {
    fn judge(&self) -> Judged {
        let judged = |ratio: String, goal: String, met: bool| Judged {
            ratio,
            goal: format!("{goal}: {}", if met { "met" } else { "MISSED" }),
            missed: !met,
        };
        match *self {
            Goal::OutOfReach {
                ratio,
                minimum,
                ref because,
            } => Judged {
                ratio: format!("{ratio:.2}x"),
                goal: format!(">= {minimum}x: out of reach here, {because}"),
                missed: false,
            },
            Goal::None => Judged {
                ratio: String::new(),
                goal: String::new(),
                missed: false,
            },
            Goal::Ratio(ratio) => Judged {
                ratio: format!("{ratio:.2}x"),
                goal: String::new(),
                missed: false,
            },
            Goal::AtLeast {
                ratio,
                minimum,
                ceiling:
                    Some(Ceiling {
                        ratio: best,
                        set_by,
                    }),
            } if ratio < minimum && best < minimum => Judged {
                ratio: format!("{ratio:.2}x"),
                goal: format!(">= {minimum}x: out of reach here, {set_by} reaches {best:.2}x"),
                missed: false,
            },
            Goal::AtLeast { ratio, minimum, .. } => judged(
                format!("{ratio:.2}x"),
                format!(">= {minimum}x"),
                ratio >= minimum,
            ),
            Goal::AtMost { ratio, maximum } => judged(
                format!("{ratio:.2}x"),
                format!("<= {maximum}x"),
                ratio <= maximum,
            ),
            Goal::PerCoreAtLeast {
                ratio,
                cores,
                minimum,
            } => judged(
                format!("{ratio:.2}x per core ({cores} cores)"),
                format!(">= {minimum}x per core"),
                ratio >= minimum,
            ),
            Goal::Below { value, limit, unit } => {
                judged(String::new(), format!("< {limit} {unit}"), value < limit)
            }
        }
    }
}

/// The rows of one benchmark run, and the CPU contention since it started.
pub struct Report {
    rows: Vec<[String; 5]>,
    missed: Vec<String>,
    pressure: CpuPressure,
}

impl Report {
    /// Starts a report; the contention it reports counts from here.
    pub fn start() -> Report {
        Report {
            rows: Vec::new(),
            missed: Vec::new(),
            pressure: CpuPressure::start(),
        }
    }

    pub fn row(&mut self, row: Row) {
        let judged = row.goal.judge();
        if judged.missed {
            self.missed.push(row.what.clone());
        }
        self.rows
            .push([row.what, row.value, row.baseline, judged.ratio, judged.goal]);
    }

    /// Prints the table and the CPU contention; fails naming the missed goals.
    pub fn finish(&self) -> anyhow::Result<()> {
        print!("{}", self.table(&machine()));
        self.pressure.report();
        if !self.missed.is_empty() {
            bail!("speed goals missed: {}", self.missed.join("; "));
        }
        Ok(())
    }

    fn table(&self, machine: &str) -> String {
        let mut out = format!("\n{machine}\n\n");
        out.push_str("| measurement | cryptoserver | baseline (same run) | ratio | goal |\n");
        out.push_str("|---|---:|---:|---:|---|\n");
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// Cores, CPU model and kernel, for the table's heading.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown kernel".to_owned(), |r| r.trim().to_owned());
    format!("Machine: {cores} cores ({cpu}), Linux {kernel}")
}

/// `31234.6` as `31,235`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// How much the machine's other work competed for the CPU during a benchmark,
/// from the kernel's pressure stall information (`/proc/pressure/cpu`): on a
/// shared machine, ratios that involve CPU work are pessimistic when it is high.
struct CpuPressure {
    stalled_at_start: Option<Duration>,
    started: Instant,
}

impl CpuPressure {
    fn start() -> CpuPressure {
        CpuPressure {
            stalled_at_start: cpu_stall_total(),
            started: Instant::now(),
        }
    }

    /// Prints the share of the run during which some task waited for a CPU.
    fn report(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(what: &str, value: &str, baseline: &str, goal: Goal) -> Row {
        Row {
            what: what.into(),
            value: value.into(),
            baseline: baseline.into(),
            goal,
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(31234.6), "31,235");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }

    #[test]
    fn missed_goals_fail_the_report() {
        let mut report = Report::start();
        report.row(row(
            "fast",
            "2",
            "1",
            Goal::AtLeast {
                ratio: 2.0,
                minimum: 0.95,
                ceiling: None,
            },
        ));
        report.row(row(
            "small",
            "60 MiB",
            "",
            Goal::Below {
                value: 60.0,
                limit: 50.0,
                unit: "MiB",
            },
        ));
        report.row(row(
            "slow",
            "1",
            "2",
            Goal::AtMost {
                ratio: 2.0,
                maximum: 1.1,
            },
        ));
        report.row(row(
            "per core",
            "3",
            "1",
            Goal::PerCoreAtLeast {
                ratio: 0.75,
                cores: 4,
                minimum: 0.5,
            },
        ));
        report.row(row("shown", "1", "4", Goal::Ratio(0.25)));
        let table = report.table("Machine: test");
        for line in [
            "| fast | 2 | 1 | 2.00x | >= 0.95x: met |",
            "| small | 60 MiB |  |  | < 50 MiB: MISSED |",
            "| slow | 1 | 2 | 2.00x | <= 1.1x: MISSED |",
            "| per core | 3 | 1 | 0.75x per core (4 cores) | >= 0.5x per core: met |",
            "| shown | 1 | 4 | 0.25x |  |",
        ] {
            assert!(table.contains(line), "{line} in {table}");
        }
        assert_eq!(report.missed, ["small", "slow"]);
    }

    #[test]
    fn a_goal_the_baselines_put_out_of_reach_is_not_missed() {
        let goal = |ratio, best| Goal::AtLeast {
            ratio,
            minimum: 0.8,
            ceiling: Some(Ceiling {
                ratio: best,
                set_by: "the HTTP floor itself",
            }),
        };
        let capped = goal(0.5, 0.6).judge();
        assert_eq!(
            capped.goal,
            ">= 0.8x: out of reach here, the HTTP floor itself reaches 0.60x"
        );
        assert!(!capped.missed);
        assert!(goal(0.5, 0.9).judge().missed);
        assert_eq!(goal(0.85, 0.6).judge().goal, ">= 0.8x: met");
    }
}
