//! The processes the server benchmarks start, stopped on every exit path.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cryptoserver::sys;

/// A loopback address with a port that was free a moment ago.
pub fn free_address() -> anyhow::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .context("cannot find a free port on 127.0.0.1")
}

/// A server process started by the benchmark; stopped (SIGTERM, then SIGKILL)
/// when dropped, so no exit path leaves it running.
pub struct Server {
    pub name: String,
    pub address: SocketAddr,
    /// The headers (names and values) requests to it carry beside the body:
    /// its token, if it has a clients file.
    pub headers: Vec<(String, String)>,
    child: Child,
}

impl Server {
    /// Starts `command` (which must listen on `address`) and waits until it
    /// accepts connections; returns it with the time that took.
    pub fn start(
        name: &str,
        command: &mut Command,
        address: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<(Server, Duration)> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        // SAFETY: the closure only makes one system call (prctl is
        // async-signal-safe) and touches only the new process. Should the
        // benchmark die without running its destructors, the kernel still
        // stops its servers.
        unsafe {
            command.pre_exec(sys::terminate_with_parent);
        }
        let started = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        let mut server = Server {
            name: name.to_owned(),
            address,
            headers: Vec::new(),
            child,
        };
        let deadline = started + Duration::from_secs(60);
        loop {
            if TcpStream::connect(address).is_ok() {
                return Ok((server, started.elapsed()));
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{name} exited with {status} before listening on {address}: {}",
                    std::fs::read_to_string(log).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {address} within a minute");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Resident memory now, from /proc/PID/status.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
    }

    /// CPU seconds (user and system, all its threads) the server has spent
    /// since it started, from /proc/PID/stat.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        parse_process_ticks(&stat)
            .map(|ticks| ticks as f64 / USER_HZ)
            .with_context(|| format!("no utime and stime in {path}: {stat}"))
    }

    /// How many files under `dir` the server holds open, from /proc/PID/fd.
    pub fn open_files_under(&self, dir: &Path) -> anyhow::Result<usize> {
        let fds = format!("/proc/{}/fd", self.child.id());
        let entries = std::fs::read_dir(&fds).with_context(|| format!("cannot list {fds}"))?;
        Ok(entries
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Our own child, not reaped yet, so its id is still its own.
        let _ = sys::terminate(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: {} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's clock ticks per second in `/proc/stat` (USER_HZ), 100 on every
/// architecture Linux runs on since 2.6.
const USER_HZ: f64 = 100.0;

/// CPU time spent by every process and the kernel since boot, all cores
/// together: `/proc/stat`'s busy columns (user, nice, system, irq, softirq,
/// steal; idle and I/O wait are not busy).
pub fn busy_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_busy_ticks(&stat)
        .map(|ticks| ticks as f64 / USER_HZ)
        .context("/proc/stat has no 'cpu' line with 8 numbers")
}

/// The busy ticks of `/proc/stat`'s first line.
fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

/// CPU seconds spent during a measured run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuSpent {
    /// By every process and the kernel (`/proc/stat`).
    pub all: f64,
    /// By the children of this process that ended during the run: the load
    /// generator the run waited for.
    pub ended_children: f64,
}

/// What `work` returned, with the CPU seconds spent meanwhile.
pub fn with_cpu_seconds<T>(
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, CpuSpent)> {
    let (all, children) = (busy_cpu_seconds()?, ended_children_cpu_seconds()?);
    let result = work()?;
    let spent = CpuSpent {
        all: busy_cpu_seconds()? - all,
        ended_children: ended_children_cpu_seconds()? - children,
    };
    Ok((result, spent))
}

/// User and system CPU seconds of this process's children that have ended
/// and been waited for (`getrusage(RUSAGE_CHILDREN)`).
fn ended_children_cpu_seconds() -> anyhow::Result<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the live buffer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_CHILDREN) failed");
    }
    // SAFETY: getrusage succeeded, so it filled the struct.
    let usage = unsafe { usage.assume_init() };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// utime + stime, in clock ticks, of a `/proc/PID/stat` line: its 14th and
/// 15th fields, counted after the command name's closing parenthesis (the
/// name may hold spaces and parentheses).
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // The first field after the name is the 3rd (the state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:   12345 kB` in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_busy_cpu_ticks() {
        let stat = "cpu  100 2 30 5000 40 5 6 7 0 0\ncpu0 50 1 15 2500 20 2 3 3 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(100 + 2 + 30 + 5 + 6 + 7));
        assert_eq!(parse_busy_ticks("cpu  1 2 3\n"), None);
        assert_eq!(parse_busy_ticks("intr 1 2 3 4 5 6 7 8\n"), None);
        assert!(busy_cpu_seconds().unwrap() > 0.0);
        let (_, spent) = with_cpu_seconds(|| {
            std::process::Command::new("sh")
                .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
                .status()?;
            Ok(())
        })
        .unwrap();
        assert!(spent.ended_children > 0.05, "{spent:?}");
        assert!(spent.all >= spent.ended_children * 0.5, "{spent:?}");
    }

    #[test]
    fn reads_a_process_cpu_ticks() {
        let stat =
            "4841 (bao (dev) x) S 1 4841 4841 0 -1 4194560 9021 0 0 0 1234 567 0 0 20 0 9 0 0\n";
        assert_eq!(parse_process_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_process_ticks("4841 (bao) S 1 2 3"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_process_ticks(&own).is_some(), "{own}");
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tcryptoserver\nVmPeak:\t  100 kB\nVmRSS:\t    9876 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(9876 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
