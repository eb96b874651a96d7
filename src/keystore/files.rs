//! MODE32's 65,536 files (MODE32X's too): kept open where the descriptor limit
//! allows, read one key at a time (through io_uring, else on the blocking
//! threads), checked after every read, and tracked from a failed read until
//! they read whole again, so `/readyz` can say so.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future;
use zeroize::Zeroizing;

use super::descriptors::{files_kept_open_under, open_files_wanted, raise_open_file_limit};
use super::ring::KeyReadRing;
use super::startup::{open_secret_file, warn_readable_by_others, LoadError, SecretFile};
use crate::layout::{namespace_key, KeyLocation, Mode, Probes, KEY_LEN};
use crate::limits::Work;
use crate::mac::{self, Mac};
use crate::metrics::KeyReadStats;
use crate::sys::{self, Access};

type Key = Zeroizing<[u8; KEY_LEN]>;

/// How often `/readyz` may probe the failing files again. It needs no token (a
/// load balancer's health check sends none), so what it costs must not grow
/// with how often it is asked.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Failed key reads are logged at most once per this interval, as one line
/// counting them: whoever sends requests must not be able to fill the log.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// A failing file is read whole again in pieces of this size.
const PROBE_CHUNK: usize = 64 << 10;

/// How MODE32 reads its keys from disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyReads {
    /// io_uring where the kernel allows it, else a thread pool.
    #[default]
    Auto,
    /// io_uring only: startup fails where it is unavailable.
    IoUring,
    /// A thread pool doing `pread` (slower: each read is handed to a thread).
    Threads,
}

impl KeyReads {
    pub const ALL: [KeyReads; 3] = [KeyReads::Auto, KeyReads::IoUring, KeyReads::Threads];

    /// The name operators write in `CRYPTOSERVER_KEY_READS`.
    pub fn name(self) -> &'static str {
        match self {
            KeyReads::Auto => "auto",
            KeyReads::IoUring => "io-uring",
            KeyReads::Threads => "threads",
        }
    }
}

impl fmt::Display for KeyReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key-read strategy that is none of auto, io-uring, threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKeyReads(pub String);

impl fmt::Display for UnknownKeyReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown key-read strategy '{}': use auto, io-uring or threads",
            self.0
        )
    }
}

impl std::error::Error for UnknownKeyReads {}

impl FromStr for KeyReads {
    type Err = UnknownKeyReads;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        KeyReads::ALL
            .into_iter()
            .find(|reads| reads.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| UnknownKeyReads(text.to_owned()))
    }
}

/// A MODE32 key could not be read; the request must fail rather than get a wrong MAC.
#[derive(Debug)]
pub struct KeyUnavailable {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for KeyUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: cannot read a key", self.path.display())
    }
}

impl std::error::Error for KeyUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a request got no MAC from the disk; never a wrong one instead.
#[derive(Debug)]
pub enum KeyError {
    Unavailable(KeyUnavailable),
    /// A key read had not finished after this long (CRYPTOSERVER_KEY_READ_TIMEOUT).
    TimedOut(Duration),
    /// Batches had every key read they may have in flight (CRYPTOSERVER_BATCH_READS):
    /// too many batches were admitted, or a message's reads did not come in time.
    BatchReadsBusy,
}

impl From<KeyUnavailable> for KeyError {
    fn from(error: KeyUnavailable) -> Self {
        KeyError::Unavailable(error)
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Unavailable(error) => error.fmt(f),
            KeyError::TimedOut(timeout) => write!(
                f,
                "a key read took longer than {} s (CRYPTOSERVER_KEY_READ_TIMEOUT)",
                timeout.as_secs_f64()
            ),
            KeyError::BatchReadsBusy => f.write_str(
                "batches have every key read they may have in flight (CRYPTOSERVER_BATCH_READS): \
                 too many batches are waiting, or none came free in this batch's turn in time",
            ),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Its message is this one's: go on with what caused it.
            KeyError::Unavailable(error) => error.source(),
            KeyError::TimedOut(_) | KeyError::BatchReadsBusy => None,
        }
    }
}

/// MODE32's files, as the key store reads them.
pub(super) struct KeyFiles {
    /// MODE32 or MODE32X: the same files, another rule for the key of a message.
    mode: Mode,
    dir: PathBuf,
    /// Files `0..open.len()`, opened once at startup: a key read is one read.
    /// All of them when RLIMIT_NOFILE allows; the rest are opened per read.
    /// A file that fails is reopened, so a restored file is picked up; a read
    /// in flight keeps the file it started on.
    open: Box<[RwLock<Arc<File>>]>,
    /// Reads of the files kept open, when io_uring is used.
    ring: Option<KeyReadRing>,
    /// Files a read failed in, until `/readyz`'s probe reads them whole again:
    /// another key of the file reading well says nothing of the one that failed.
    /// `/readyz` reports 503 while any is listed.
    failing: Mutex<BTreeSet<usize>>,
    failing_count: AtomicUsize,
    /// When `/readyz` last probed the failing files, and whether that probe
    /// still runs: at most one does, however long a stalled volume holds it.
    probe: Mutex<Probe>,
    errors_logged: Mutex<ErrorLog>,
    stats: KeyReadStats,
}

impl KeyFiles {
    pub(super) fn open(mode: Mode, dir: &Path, reads: KeyReads) -> Result<KeyFiles, LoadError> {
        assert!(
            mode.same_files_as(Mode::Mode32),
            "{mode} keeps its keys in memory"
        );
        let ring = match reads {
            KeyReads::Threads => None,
            KeyReads::IoUring => Some(KeyReadRing::new().map_err(LoadError::IoUringUnavailable)?),
            KeyReads::Auto => KeyReadRing::new()
                .inspect_err(|error| {
                    tracing::warn!(
                        %error,
                        "io_uring is unavailable; MODE32 key reads use a thread pool (slower)"
                    )
                })
                .ok(),
        };
        let wanted = open_files_wanted();
        let limit = raise_open_file_limit(wanted);
        let keep_open = files_kept_open_under(limit);
        if keep_open < mode.file_count() {
            tracing::warn!(
                limit,
                wanted,
                kept_open = keep_open,
                "RLIMIT_NOFILE is too low to keep all MODE32 files open; keys in the other files are read by \
                 opening the file per request (slower). Raise the hard limit (systemd: LimitNOFILE=131072)"
            );
        }
        let mut open = Vec::with_capacity(keep_open);
        let mut readable_by_others = 0;
        let mut example = PathBuf::new();
        for index in 0..mode.file_count() {
            let path = dir.join(mode.file_name(index));
            let secret = open_secret_file(mode, &path)?;
            if secret.readable_by_others {
                readable_by_others += 1;
                example = path;
            }
            if index < keep_open {
                // A 32-byte read must not pull a readahead window off the disk;
                // only a hint, so a refusal changes nothing but speed.
                let _ = sys::advise(&secret.file, Access::Random);
                open.push(RwLock::new(Arc::new(secret.file)));
            }
        }
        warn_readable_by_others(readable_by_others, &example);
        Ok(KeyFiles {
            mode,
            dir: dir.to_owned(),
            open: open.into(),
            ring,
            failing: Mutex::new(BTreeSet::new()),
            failing_count: AtomicUsize::new(0),
            probe: Mutex::default(),
            errors_logged: Mutex::default(),
            stats: KeyReadStats::default(),
        })
    }

    pub(super) fn stats(&self) -> &KeyReadStats {
        &self.stats
    }

    pub(super) fn any_failing(&self) -> bool {
        self.failing_count.load(Ordering::Relaxed) > 0
    }

    fn path(&self, file: usize) -> PathBuf {
        self.dir.join(self.mode.file_name(file))
    }

    /// The MAC of `message` under the key its mode picks: one read in MODE32;
    /// in MODE32X its 8 probe reads are issued together, and any that fails
    /// fails the MAC. Each read holds `work` until it has stopped, and fails
    /// after `timeout`.
    pub(super) async fn mac_async(
        files: &Arc<KeyFiles>,
        namespace: Option<&str>,
        message: &[u8],
        work: &Arc<Work>,
        timeout: Duration,
    ) -> Result<Mac, KeyError> {
        if files.mode == Mode::Mode32x {
            let probes = Probes::of(message);
            let reads = probes
                .locations()
                .map(|location| KeyFiles::read_key_async(files, location, work, timeout));
            let keys = future::try_join_all(reads).await?;
            return Ok(mac_in(namespace, &probes.derive_key(&keys), message));
        }
        let key =
            KeyFiles::read_key_async(files, files.mode.locate(message), work, timeout).await?;
        Ok(mac_in(namespace, &key, message))
    }

    /// [`read_key_untimed`](Self::read_key_untimed), failed after `timeout`.
    /// The read itself goes on, holding `work`, until it has stopped.
    async fn read_key_async(
        files: &Arc<KeyFiles>,
        location: KeyLocation,
        work: &Arc<Work>,
        timeout: Duration,
    ) -> Result<Key, KeyError> {
        match tokio::time::timeout(timeout, KeyFiles::read_key_untimed(files, location, work)).await
        {
            Ok(read) => Ok(read?),
            Err(_) => {
                files.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(KeyError::TimedOut(timeout))
            }
        }
    }

    /// A key read that does not block the async worker: through io_uring from a
    /// file kept open, else on the blocking thread pool. Anything unusual (a
    /// failed read, a replaced file) takes the blocking path, which reopens the
    /// file and reports. Either way the read holds `work` until it has stopped,
    /// even when this future is dropped first.
    async fn read_key_untimed(
        files: &Arc<KeyFiles>,
        location: KeyLocation,
        work: &Arc<Work>,
    ) -> Result<Key, KeyUnavailable> {
        if let (Some(ring), Some(kept)) = (&files.ring, files.open.get(location.file)) {
            let started = Instant::now();
            let file = Arc::clone(&kept.read().expect("no panics while holding the lock"));
            let read = ring
                .read(Arc::clone(&file), location.offset, Arc::clone(work))
                .await;
            if let Ok(key) = read.and_then(|key| check_still_secret(&file).map(|()| key)) {
                files.stats.latency.observe(started.elapsed());
                return Ok(key);
            }
        }
        let (files, work) = (Arc::clone(files), Arc::clone(work));
        // A cold read can take milliseconds: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let _held_until_read = work;
            files.read_key(location)
        })
        .await
        .expect("key reads do not panic")
    }

    /// A key read on this thread, reopening the file once if the read fails.
    fn read_key(&self, location: KeyLocation) -> Result<Key, KeyUnavailable> {
        let started = Instant::now();
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let result = match self.open.get(location.file) {
            Some(kept) => self.read_kept(kept, location, &mut key),
            None => self
                .reopen(location.file)
                .and_then(|file| read_checked(&file, location, &mut key)),
        };
        self.stats.latency.observe(started.elapsed());
        match result {
            Ok(()) => Ok(key),
            Err(source) => {
                self.mark(location.file, true);
                self.failed(&source);
                Err(KeyUnavailable {
                    path: self.path(location.file),
                    source,
                })
            }
        }
    }

    /// Counts a failed read, and logs the failures at most once per
    /// [`ERROR_LOG_INTERVAL`]. No line names the file: in MODE32 its name is
    /// 16 bits of the message's SHA-256, and `cryptoserver-secrets verify`
    /// names the broken files.
    fn failed(&self, error: &io::Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let mut log = self
            .errors_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.unlogged += 1;
        if log.last.is_some_and(|at| at.elapsed() < ERROR_LOG_INTERVAL) {
            return;
        }
        tracing::error!(
            failed_reads = log.unlogged,
            failing_files = self.failing_count.load(Ordering::Relaxed),
            error = %error.kind(),
            mode = %self.mode,
            "key reads failing; keys in the failing files answer 503 until they read again \
             (cryptoserver-secrets verify names them)"
        );
        *log = ErrorLog {
            last: Some(Instant::now()),
            unlogged: 0,
        };
    }

    /// Reads from the file kept open; when that fails, the file may have been
    /// replaced or restored, so it is opened again once.
    fn read_kept(
        &self,
        kept: &RwLock<Arc<File>>,
        location: KeyLocation,
        key: &mut [u8; KEY_LEN],
    ) -> io::Result<()> {
        let first_try = read_checked(
            &kept.read().expect("no panics while holding the lock"),
            location,
            key,
        );
        let Err(first_error) = first_try else {
            return Ok(());
        };
        let reopened = self.reopen(location.file).map_err(|_| first_error)?;
        read_checked(&reopened, location, key)?;
        let _ = sys::advise(&reopened, Access::Random);
        *kept.write().expect("no panics while holding the lock") = Arc::new(reopened);
        Ok(())
    }

    /// Opens a file again, with the same checks as at startup.
    fn reopen(&self, file: usize) -> io::Result<File> {
        open_secret_file(self.mode, &self.path(file))
            .map(|SecretFile { file, .. }| file)
            .map_err(io::Error::other)
    }

    fn mark(&self, file: usize, failing: bool) {
        let mut set = self
            .failing
            .lock()
            .expect("no panics while holding the lock");
        if failing {
            set.insert(file);
        } else {
            set.remove(&file);
        }
        self.failing_count.store(set.len(), Ordering::Relaxed);
    }

    /// True while no file is failing. While some are, one probe at a time
    /// reads them whole again, at most once per [`PROBE_INTERVAL`]; every other caller
    /// answers not ready, as the last read of some file failed, and so does the
    /// caller whose probe takes longer than `timeout` (the probe goes on).
    pub(super) async fn is_ready(files: &Arc<KeyFiles>, timeout: Duration) -> bool {
        if !files.any_failing() {
            return true;
        }
        {
            let mut probe = files
                .probe
                .lock()
                .expect("no panics while holding the lock");
            // A probe that ended since the check above may have cleared them.
            if !files.any_failing() {
                return true;
            }
            if probe.running || probe.last.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
                return false;
            }
            *probe = Probe {
                last: Some(Instant::now()),
                running: true,
            };
        }
        let probing = Arc::clone(files);
        let probe = tokio::task::spawn_blocking(move || {
            let _ended = ProbeEnded(&probing.probe);
            probing.probe_failing()
        });
        // A probe stuck on a stalled volume answers "not ready" in time and
        // goes on alone; no other starts until it has ended.
        matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
    }

    /// Reads the failing files whole again, freshly opened, and clears each
    /// that reads; stops at the first that still fails. True when none fails.
    fn probe_failing(&self) -> bool {
        let failing: Vec<usize> = self
            .failing
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .copied()
            .collect();
        failing.into_iter().all(|file| {
            self.stats.probe_reads.fetch_add(1, Ordering::Relaxed);
            match self.reopen(file).and_then(|opened| read_whole(&opened)) {
                Ok(()) => {
                    self.mark(file, false);
                    true
                }
                Err(error) => {
                    self.failed(&error);
                    false
                }
            }
        })
    }
}

/// Failed key reads not yet logged, and when the last line was.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    unlogged: u64,
}

/// The state of `/readyz`'s probes of failing files.
#[derive(Default)]
struct Probe {
    last: Option<Instant>,
    running: bool,
}

/// Marks the probe ended when dropped, also if it panicked.
struct ProbeEnded<'a>(&'a Mutex<Probe>);

impl Drop for ProbeEnded<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .running = false;
    }
}

/// Every byte of a key file, then [`check_still_secret`]: a file with a bad
/// region fails here even where its other keys read well.
/// The MAC under the key of `namespace` derived from `key`, or under `key`.
fn mac_in(namespace: Option<&str>, key: &[u8; KEY_LEN], message: &[u8]) -> Mac {
    match namespace {
        Some(namespace) => mac::mac(&namespace_key(key, namespace), message),
        None => mac::mac(key, message),
    }
}

fn read_whole(file: &File) -> io::Result<()> {
    let length = file.metadata()?.len();
    let mut chunk = Zeroizing::new(vec![0u8; PROBE_CHUNK]);
    let mut offset = 0;
    while offset < length {
        let size = (length - offset).min(PROBE_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..size], offset)?;
        offset += size as u64;
    }
    check_still_secret(file)
}

/// One positioned read, then [`check_still_secret`].
fn read_checked(file: &File, location: KeyLocation, key: &mut [u8; KEY_LEN]) -> io::Result<()> {
    file.read_exact_at(key, location.offset)?;
    check_still_secret(file)
}

/// Checked after each read: a deleted file (no links left) or one made
/// unreadable (mode 0) fails, even though the open descriptor could still read it.
fn check_still_secret(file: &File) -> io::Result<()> {
    let metadata = file.metadata()?;
    if metadata.nlink() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the file was deleted",
        ));
    }
    if metadata.permissions().mode() & 0o444 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the file was made unreadable",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::limits::{ConcurrencyLimit, WorkGuard};

    /// MODE32's files, file 0 a socket kept open and read through io_uring:
    /// its read completes only once the peer writes, as on a stalled volume.
    fn files_reading_a_socket() -> (Arc<KeyFiles>, UnixStream) {
        let (socket, peer) = UnixStream::pair().unwrap();
        let files = KeyFiles {
            mode: Mode::Mode32,
            dir: std::env::temp_dir(),
            open: vec![RwLock::new(Arc::new(File::from(OwnedFd::from(socket))))].into(),
            ring: Some(KeyReadRing::new().unwrap()),
            failing: Mutex::new(BTreeSet::new()),
            failing_count: AtomicUsize::new(0),
            probe: Mutex::default(),
            errors_logged: Mutex::default(),
            stats: KeyReadStats::default(),
        };
        (Arc::new(files), peer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_past_its_timeout_fails_and_keeps_a_slot_until_it_has_read() {
        let (files, peer) = files_reading_a_socket();
        let limit = Arc::new(ConcurrencyLimit::new(1));
        assert!(limit.try_enter(), "the request's own slot");
        let guard = WorkGuard::new(&limit, None);
        let location = KeyLocation { file: 0, offset: 0 };
        let timeout = Duration::from_millis(100);
        let read = KeyFiles::read_key_async(&files, location, guard.work(), timeout).await;
        assert!(matches!(read, Err(KeyError::TimedOut(t)) if t == timeout));
        // The request answers 503 and gives its own slot back.
        drop(guard);
        limit.leave();
        assert_eq!(limit.in_flight(), 1, "the read in flight is not counted");
        assert!(!limit.try_enter());
        assert_eq!(files.stats.timeouts.load(Ordering::Relaxed), 1);
        assert!(!files.any_failing(), "a slow read is no broken file");
        (&peer).write_all(&[7; KEY_LEN]).unwrap();
        let started = Instant::now();
        while limit.in_flight() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the read completed and kept its slot"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
