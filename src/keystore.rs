//! The secrets as the server holds them: checked once at startup (fail closed),
//! then MODE0/MODE16 keys in memory and MODE32 keys read from disk per request.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::layout::{KeyLocation, Mode, KEY_LEN, MANIFEST_FILE_NAME};
use crate::mac::{self, Mac, PrecomputedKey};
use crate::manifest::Manifest;
use crate::metrics::KeyReadStats;

mod ring;
mod table;
use ring::KeyReadRing;
use table::KeyTable;

/// A batch is split into at most this many tasks on the blocking thread pool.
const BATCH_TASKS: usize = 64;
/// In-memory keys: smaller batches run as one task, as a hand-off costs more than a few MACs.
const BATCH_MIN_CHUNK_IN_MEMORY: usize = 256;
/// MODE32: key reads of one batch in flight at once, as many as a client's
/// concurrent `/hmac` requests in the benchmark.
const BATCH_READS_IN_FLIGHT: usize = 64;

/// File descriptors kept free for sockets and the rest when all MODE32 files are open.
const SPARE_FILE_DESCRIPTORS: u64 = 4096;

/// How MODE32 reads its keys from disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyReads {
    /// io_uring where the kernel allows it, else a thread pool.
    #[default]
    Auto,
    /// io_uring only: startup fails where it is unavailable.
    IoUring,
    /// A thread pool doing `pread` (slower: each read is handed to a thread).
    Threads,
}

/// Why the secrets directory cannot be served; always names the path and what to do.
#[derive(Debug)]
pub struct SecretsError(String);

impl SecretsError {
    fn at(path: &Path, problem: impl fmt::Display) -> Self {
        SecretsError(format!("{}: {problem}", path.display()))
    }
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecretsError {}

/// A MODE32 key could not be read; the request must fail rather than get a wrong MAC.
#[derive(Debug)]
pub struct KeyUnavailable {
    pub path: PathBuf,
    pub error: io::Error,
}

/// Cheap to clone: the keys are shared.
#[derive(Clone)]
pub struct KeyStore {
    mode: Mode,
    keys: Keys,
}

#[derive(Clone)]
enum Keys {
    /// MODE0 and MODE16: every key, with its HMAC pads already hashed.
    InMemory(Arc<KeyTable>),
    /// MODE32: 128 GiB stays on disk.
    OnDisk(Arc<KeyFiles>),
}

impl KeyStore {
    /// Checks the secrets directory for `mode` and loads it; `reads` applies to
    /// MODE32 only. Blocking: call before serving.
    pub fn load(mode: Mode, dir: &Path, reads: KeyReads) -> Result<KeyStore, SecretsError> {
        check_directory(dir)?;
        let manifest = read_manifest(mode, dir)?;
        let keys = match mode {
            Mode::Mode0 | Mode::Mode16 => {
                Keys::InMemory(Arc::new(load_in_memory(mode, dir, manifest.as_ref())?))
            }
            Mode::Mode32 => Keys::OnDisk(Arc::new(KeyFiles::open(dir, reads)?)),
        };
        Ok(KeyStore { mode, keys })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The MAC of `message` under the key the layout rule picks for it.
    pub async fn mac(&self, message: &[u8]) -> Result<Mac, KeyUnavailable> {
        match &self.keys {
            Keys::InMemory(_) => self.mac_blocking(message),
            Keys::OnDisk(files) => {
                let key = KeyFiles::read_key_async(files, self.mode.locate(message)).await?;
                Ok(mac::mac(&key, message))
            }
        }
    }

    /// The MACs of the messages at `frames` in `body`, concatenated in order.
    pub async fn mac_batch(
        &self,
        body: Bytes,
        frames: Vec<Range<usize>>,
    ) -> Result<Vec<u8>, KeyUnavailable> {
        match &self.keys {
            Keys::OnDisk(files) if files.ring.is_some() => {
                // The key reads are in flight together, not one after another
                // (io_uring submits the queued ones in one call); each MAC is
                // computed as its key arrives, and the output stays in order.
                let macs: Vec<Mac> = stream::iter(frames)
                    .map(|range| {
                        let message = &body[range];
                        async move {
                            let location = self.mode.locate(message);
                            let key = KeyFiles::read_key_async(files, location).await?;
                            Ok::<_, KeyUnavailable>(mac::mac(&key, message))
                        }
                    })
                    .buffered(BATCH_READS_IN_FLIGHT)
                    .try_collect()
                    .await?;
                Ok(macs.concat())
            }
            _ => self.mac_batch_on_threads(body, frames).await,
        }
    }

    /// Spread over blocking threads, so a large batch uses every core and
    /// leaves the async workers free; without io_uring, MODE32's reads are in
    /// flight together this way (a hand-off per read would cost twice as much).
    async fn mac_batch_on_threads(
        &self,
        body: Bytes,
        frames: Vec<Range<usize>>,
    ) -> Result<Vec<u8>, KeyUnavailable> {
        let min_chunk = match self.keys {
            Keys::InMemory(_) => BATCH_MIN_CHUNK_IN_MEMORY,
            Keys::OnDisk(_) => 1,
        };
        let chunk_len = frames.len().div_ceil(BATCH_TASKS).max(min_chunk);
        // Spawned tasks start at once; awaiting them in order keeps the output in order.
        let tasks: Vec<_> = frames
            .chunks(chunk_len)
            .map(|chunk| {
                let (store, body, chunk) = (self.clone(), body.clone(), chunk.to_vec());
                tokio::task::spawn_blocking(move || {
                    chunk
                        .into_iter()
                        .map(|range| store.mac_blocking(&body[range]))
                        .collect::<Result<Vec<Mac>, _>>()
                })
            })
            .collect();
        let mut macs = Vec::with_capacity(frames.len() * mac::MAC_LEN);
        for task in tasks {
            macs.extend(task.await.expect("MAC computations do not panic")?.concat());
        }
        Ok(macs)
    }

    fn mac_blocking(&self, message: &[u8]) -> Result<Mac, KeyUnavailable> {
        let location = self.mode.locate(message);
        match &self.keys {
            Keys::InMemory(keys) => Ok(keys[slot(location)].mac(message)),
            Keys::OnDisk(files) => Ok(mac::mac(&*files.read_key(location)?, message)),
        }
    }

    /// MODE32's key-read counters; `None` for keys held in memory.
    pub fn read_stats(&self) -> Option<&KeyReadStats> {
        match &self.keys {
            Keys::InMemory(_) => None,
            Keys::OnDisk(files) => Some(&files.stats),
        }
    }

    /// True while every key can be read: MODE32 files that failed are probed again,
    /// so readiness comes back by itself once they can be read.
    pub async fn is_ready(&self) -> bool {
        match &self.keys {
            Keys::InMemory(_) => true,
            Keys::OnDisk(files) if files.failing_count.load(Ordering::Relaxed) == 0 => true,
            Keys::OnDisk(files) => {
                let files = Arc::clone(files);
                tokio::task::spawn_blocking(move || files.probe_failing())
                    .await
                    .expect("probes do not panic")
            }
        }
    }
}

/// Index of an in-memory key: its slot in the one MODE0/MODE16 file.
fn slot(location: KeyLocation) -> usize {
    (location.offset / KEY_LEN as u64) as usize
}

fn check_directory(dir: &Path) -> Result<(), SecretsError> {
    let metadata = std::fs::metadata(dir).map_err(|error| {
        SecretsError::at(
            dir,
            format!(
                "cannot use the secrets directory ({error}); create it and generate the secrets"
            ),
        )
    })?;
    if !metadata.is_dir() {
        return Err(SecretsError::at(
            dir,
            "is not a directory; CRYPTOSERVER_SECRETDIR must name the secrets directory",
        ));
    }
    check_not_writable_by_others(dir, &metadata)
}

/// Anyone who can write a secret can change every MAC made with it.
fn check_not_writable_by_others(path: &Path, metadata: &Metadata) -> Result<(), SecretsError> {
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(SecretsError::at(
            path,
            format!(
                "is writable by group or others (mode {mode:04o}); run `chmod go-w {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn read_manifest(mode: Mode, dir: &Path) -> Result<Option<Manifest>, SecretsError> {
    let manifest = Manifest::read(dir).map_err(|error| SecretsError(error.to_string()))?;
    match &manifest {
        None => tracing::warn!(
            dir = %dir.display(),
            "no {MANIFEST_FILE_NAME}: serving secrets made by hand; they cannot be checked for changes"
        ),
        Some(manifest) if manifest.mode() != mode => {
            return Err(SecretsError::at(
                dir,
                format!(
                    "holds {} secrets (per {MANIFEST_FILE_NAME}) but the server is configured for {mode}; \
                     set CRYPTOSERVER_MODE={} or point CRYPTOSERVER_SECRETDIR at a {mode} directory",
                    manifest.mode(),
                    manifest.mode()
                ),
            ))
        }
        Some(_) => {}
    }
    Ok(manifest)
}

/// Opens a secret file without following a FIFO into a blocking open, and checks
/// its type, size and permissions. Returns whether others may read it.
fn open_secret_file(mode: Mode, path: &Path) -> Result<(File, bool), SecretsError> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
    // O_NOATIME: a key read costs no inode update. Only the file's owner may ask.
    let file = open(libc::O_NONBLOCK | libc::O_NOATIME)
        .or_else(|error| match error.raw_os_error() {
            Some(libc::EPERM) => open(libc::O_NONBLOCK),
            _ => Err(error),
        })
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => SecretsError::at(
                path,
                format!(
                    "is missing; {mode} needs {} file(s) of {} bytes",
                    mode.file_count(),
                    mode.file_len()
                ),
            ),
            _ => SecretsError::at(path, format!("cannot open: {error}")),
        })?;
    let metadata = file
        .metadata()
        .map_err(|error| SecretsError::at(path, format!("cannot stat: {error}")))?;
    if !metadata.is_file() {
        return Err(SecretsError::at(path, "is not a regular file"));
    }
    clear_nonblocking(&file)
        .map_err(|error| SecretsError::at(path, format!("cannot fcntl: {error}")))?;
    if metadata.len() != mode.file_len() {
        return Err(SecretsError::at(
            path,
            format!(
                "is {} bytes, but {mode} needs exactly {}; a truncated or padded file is not a secret",
                metadata.len(),
                mode.file_len()
            ),
        ));
    }
    check_not_writable_by_others(path, &metadata)?;
    Ok((file, metadata.permissions().mode() & 0o004 != 0))
}

fn warn_readable_by_others(count: usize, example: &Path) {
    if count > 0 {
        tracing::warn!(
            files = count,
            example = %example.display(),
            "secret files are readable by other users; run `chmod o-r` on them"
        );
    }
}

fn load_in_memory(
    mode: Mode,
    dir: &Path,
    manifest: Option<&Manifest>,
) -> Result<KeyTable, SecretsError> {
    let path = dir.join(mode.file_name(0));
    let (mut file, readable_by_others) = open_secret_file(mode, &path)?;
    warn_readable_by_others(usize::from(readable_by_others), &path);
    let mut content = Zeroizing::new(Vec::with_capacity(mode.file_len() as usize));
    file.read_to_end(&mut content)
        .map_err(|error| SecretsError::at(&path, format!("cannot read: {error}")))?;
    if content.len() as u64 != mode.file_len() {
        return Err(SecretsError::at(&path, "changed size while being read"));
    }
    if let Some(slot) = content
        .chunks_exact(KEY_LEN)
        .position(|key| key.iter().all(|&b| b == 0))
    {
        return Err(SecretsError::at(
            &path,
            format!("key slot {slot} is all zeros; a sparse or zero-filled file is not a secret"),
        ));
    }
    if let Some(manifest) = manifest {
        let expected = &manifest.files[0].sha256;
        if hex::encode(Sha256::digest(content.as_slice())) != *expected {
            return Err(SecretsError::at(
                &path,
                format!(
                    "content does not match its SHA-256 in {MANIFEST_FILE_NAME}: the secret changed after it was \
                     generated; restore it from a backup (never regenerate: every MAC issued depends on it)"
                ),
            ));
        }
    }
    Ok(KeyTable::new(content.chunks_exact(KEY_LEN).map(|key| {
        PrecomputedKey::new(key.try_into().expect("chunks are KEY_LEN long"))
    })))
}

/// The 65,536 MODE32 files.
struct KeyFiles {
    dir: PathBuf,
    /// Files `0..open.len()`, opened once at startup: a key read is one read.
    /// All of them when RLIMIT_NOFILE allows; the rest are opened per read.
    /// A file that fails is reopened, so a restored file is picked up; a read
    /// in flight keeps the file it started on.
    open: Box<[RwLock<Arc<File>>]>,
    /// Reads of the files kept open, when io_uring is used.
    ring: Option<KeyReadRing>,
    /// Files whose last read failed; `/readyz` reports 503 while any is listed.
    failing: Mutex<BTreeSet<usize>>,
    failing_count: AtomicUsize,
    stats: KeyReadStats,
}

impl KeyFiles {
    fn open(dir: &Path, reads: KeyReads) -> Result<KeyFiles, SecretsError> {
        let mode = Mode::Mode32;
        let ring = match reads {
            KeyReads::Threads => None,
            KeyReads::IoUring => Some(KeyReadRing::new().map_err(|error| {
                SecretsError(format!(
                    "cannot set up io_uring for MODE32 key reads: {error}; \
                     use CRYPTOSERVER_KEY_READS=auto or threads where the kernel or a seccomp filter forbids it"
                ))
            })?),
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
            let (file, readable) = open_secret_file(mode, &path)?;
            if readable {
                readable_by_others += 1;
                example = path;
            }
            if index < keep_open {
                advise_random_access(&file);
                open.push(RwLock::new(Arc::new(file)));
            }
        }
        warn_readable_by_others(readable_by_others, &example);
        Ok(KeyFiles {
            dir: dir.to_owned(),
            open: open.into(),
            ring,
            failing: Mutex::new(BTreeSet::new()),
            failing_count: AtomicUsize::new(0),
            stats: KeyReadStats::default(),
        })
    }

    fn path(&self, file: usize) -> PathBuf {
        self.dir.join(Mode::Mode32.file_name(file))
    }

    /// A key read that does not block the async worker: through io_uring from a
    /// file kept open, else on the blocking thread pool. Anything unusual (a
    /// failed read, a replaced file) takes the blocking path, which reopens the
    /// file and reports.
    async fn read_key_async(
        files: &Arc<KeyFiles>,
        location: KeyLocation,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyUnavailable> {
        if let (Some(ring), Some(kept)) = (&files.ring, files.open.get(location.file)) {
            let started = Instant::now();
            let file = Arc::clone(&kept.read().expect("no panics while holding the lock"));
            let read = ring.read(Arc::clone(&file), location.offset).await;
            if let Ok(key) = read.and_then(|key| check_still_secret(&file).map(|()| key)) {
                files.stats.latency.observe(started.elapsed());
                files.note_success(location.file);
                return Ok(key);
            }
        }
        let files = Arc::clone(files);
        // A cold read can take milliseconds: keep it off the async workers.
        tokio::task::spawn_blocking(move || files.read_key(location))
            .await
            .expect("key reads do not panic")
    }

    fn read_key(&self, location: KeyLocation) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyUnavailable> {
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
            Ok(()) => {
                self.note_success(location.file);
                Ok(key)
            }
            Err(error) => {
                let path = self.path(location.file);
                tracing::error!(path = %path.display(), %error, "cannot read a MODE32 key; answering 503");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.mark(location.file, true);
                Err(KeyUnavailable { path, error })
            }
        }
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
        if first_try.is_ok() {
            return first_try;
        }
        let reopened = self
            .reopen(location.file)
            .map_err(|_| first_try.unwrap_err())?;
        read_checked(&reopened, location, key)?;
        advise_random_access(&reopened);
        *kept.write().expect("no panics while holding the lock") = Arc::new(reopened);
        Ok(())
    }

    /// Opens a file again, with the same checks as at startup.
    fn reopen(&self, file: usize) -> io::Result<File> {
        open_secret_file(Mode::Mode32, &self.path(file))
            .map(|(file, _)| file)
            .map_err(|error| io::Error::other(error.to_string()))
    }

    fn note_success(&self, file: usize) {
        if self.failing_count.load(Ordering::Relaxed) > 0 {
            self.mark(file, false);
        }
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

    fn probe_failing(&self) -> bool {
        let failing: Vec<usize> = self
            .failing
            .lock()
            .expect("no panics while holding the lock")
            .iter()
            .copied()
            .collect();
        failing
            .into_iter()
            .all(|file| self.read_key(KeyLocation { file, offset: 0 }).is_ok())
    }
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

/// How many MODE32 files a server started by this process keeps open, as
/// RLIMIT_NOFILE's hard limit allows; keys in the others cost an `open` per read.
pub fn mode32_files_kept_open() -> usize {
    let hard = open_file_limits().map_or(0, |limit| limit.rlim_max);
    files_kept_open_under(hard.min(open_files_wanted()))
}

/// Every MODE32 file, and room for the sockets.
fn open_files_wanted() -> u64 {
    Mode::Mode32.file_count() as u64 + SPARE_FILE_DESCRIPTORS
}

fn files_kept_open_under(limit: u64) -> usize {
    limit
        .saturating_sub(SPARE_FILE_DESCRIPTORS)
        .min(Mode::Mode32.file_count() as u64) as usize
}

fn open_file_limits() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed in.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Raises the soft RLIMIT_NOFILE towards `wanted`, as far as the hard limit allows;
/// returns the soft limit in force afterwards.
fn raise_open_file_limit(wanted: u64) -> u64 {
    let Some(mut limit) = open_file_limits() else {
        return 0;
    };
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct passed in.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    limit.rlim_cur
}

/// O_NONBLOCK only kept the open of a FIFO from hanging. On a filesystem
/// without non-blocking reads, io_uring would fail a read of an O_NONBLOCK
/// file with EAGAIN instead of waiting for the disk.
fn clear_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor with integer arguments only.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A 32-byte read must not pull a readahead window off the disk.
fn advise_random_access(file: &File) {
    // SAFETY: the descriptor is valid for the lifetime of `file`; the call has no memory effects.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
    }
}
