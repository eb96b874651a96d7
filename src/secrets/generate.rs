//! The secret generator (`cryptoserver-secrets generate`, `cargo xtask gen-secrets`):
//! fills a secrets directory for a mode, fast, and never loses a secret.
//!
//! A run: lock the directory; check every final file of the mode (a wrong-sized
//! one, or a manifest of another mode, stops the run before anything is
//! written); remove temporary files a killed run left; check the free space;
//! write the missing files in parallel, each durably under a temporary name
//! (see [`SecretDir::create_file`]); hash the files that already existed; write
//! the manifest last. Complete files are never touched, so a run killed at any
//! moment is finished by running the same command again.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use indicatif::HumanBytes;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::error::{FileError, SecretsError, WrongFile};
use super::jobs;
use super::progress::{count, throughput, Progress, ProgressOutput};
use super::secret_dir::{hash_file, Owner, PendingFile, SecretDir};
use crate::layout::{Mode, MANIFEST_FILE_NAME};
use crate::manifest::Manifest;
use crate::sys::Space;

/// What to generate, where, and for whom.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub mode: Mode,
    /// Created with mode 0700 if absent; complete files in it are kept as they are.
    pub dir: PathBuf,
    /// Secrets computed in parallel; `None` for one per core.
    pub jobs: Option<NonZeroUsize>,
    /// User to own the directory and the files; `None` for the user running this.
    pub owner: Option<String>,
}

/// What a finished run did.
#[derive(Clone, Debug)]
pub struct Generated {
    pub mode: Mode,
    pub dir: PathBuf,
    /// Files this run wrote.
    pub written: usize,
    /// Files that were complete before this run, kept unchanged.
    pub kept: usize,
    /// Temporary files of an interrupted run, removed.
    pub stale_removed: usize,
    /// Whether the directory already had its manifest, so nothing was done.
    pub already_complete: bool,
    /// Time spent writing the new files.
    pub writing: Duration,
}

impl std::fmt::Display for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.dir.display();
        let mode = self.mode;
        if self.already_complete {
            return write!(
                f,
                "{dir} already holds all {} and its {MANIFEST_FILE_NAME}; nothing to do \
                 but re-apply their owner and permissions \
                 (`cryptoserver-secrets verify --dir {dir}` re-checks their contents)",
                count(self.kept, &format!("{mode} file"))
            );
        }
        let bytes = self.written as u64 * mode.file_len();
        write!(
            f,
            "{dir}: {mode} complete: wrote {}, {}; kept {} from before; wrote {MANIFEST_FILE_NAME}",
            count(self.written, "file"),
            throughput(bytes, self.writing),
            count(self.kept, "file"),
        )
    }
}

/// Generates every missing file of `options.mode` in `options.dir`, then the manifest.
pub fn generate(
    options: &GenerateOptions,
    output: ProgressOutput,
) -> Result<Generated, SecretsError> {
    let mode = options.mode;
    let jobs = options.jobs.unwrap_or_else(jobs::default_jobs);
    let owner = options.owner.as_deref().map(Owner::lookup).transpose()?;
    let dir = SecretDir::open_locked(&options.dir)?;
    let survey = survey(&dir, mode)?;
    let mut generated = Generated {
        mode,
        dir: options.dir.clone(),
        written: 0,
        kept: survey.present.len(),
        stale_removed: 0,
        already_complete: false,
        writing: Duration::ZERO,
    };
    if check_existing_manifest(&dir, mode, &survey)? {
        // A rebuilt image may give the owner another UID: without its ownership and
        // modes re-applied (never its contents) the server could not read its secrets.
        dir.secure(owner.as_ref())?;
        for name in mode.file_names().chain([MANIFEST_FILE_NAME.to_owned()]) {
            dir.secure_file(&name, owner.as_ref())?;
        }
        generated.already_complete = true;
        return Ok(generated);
    }

    dir.secure(owner.as_ref())?;
    for name in mode.file_names().chain([MANIFEST_FILE_NAME.to_owned()]) {
        generated.stale_removed += usize::from(dir.remove_temp(&name)?);
    }
    dir.sync()?;
    check_space(&dir, mode, survey.missing.len())?;

    output.note(&format!(
        "generating {} of the {} {mode} files ({}) in {} with {}; {} already complete{}",
        survey.missing.len(),
        mode.file_count(),
        HumanBytes(survey.missing.len() as u64 * mode.file_len()),
        options.dir.display(),
        count(jobs.get(), "job"),
        survey.present.len(),
        match generated.stale_removed {
            0 => String::new(),
            removed => format!(
                "; removed {} left by an interrupted run",
                count(removed, "temporary file")
            ),
        },
    ));
    let work = FileWork {
        dir: &dir,
        mode,
        jobs,
        owner: owner.as_ref(),
        output,
    };
    let (new_digests, writing) = work.write_files(&survey.missing)?;
    generated.written = survey.missing.len();
    generated.writing = writing;

    let kept_digests = work.hash_kept_files(&survey.present)?;
    let mut digests = vec![[0u8; 32]; mode.file_count()];
    for (index, digest) in survey
        .missing
        .iter()
        .zip(new_digests)
        .chain(survey.present.iter().zip(kept_digests))
    {
        digests[*index] = digest;
    }
    write_manifest(&dir, &Manifest::describe(mode, &digests), owner.as_ref())?;
    Ok(generated)
}

/// Stores the manifest atomically (see [`SecretDir::create_file`]); an
/// existing manifest is never replaced.
pub(super) fn write_manifest(
    dir: &SecretDir,
    manifest: &Manifest,
    owner: Option<&Owner>,
) -> Result<(), FileError> {
    dir.create_file(MANIFEST_FILE_NAME, &manifest.to_json(), owner)
}

/// Which files of the mode exist complete, and which are missing, by index.
#[derive(Debug, Default, PartialEq, Eq)]
struct Survey {
    present: Vec<usize>,
    missing: Vec<usize>,
}

/// Looks at every final file of `mode`; a file of the wrong size or type stops
/// the run here, before anything is written.
fn survey(dir: &SecretDir, mode: Mode) -> Result<Survey, SecretsError> {
    let mut survey = Survey::default();
    let mut wrong = Vec::new();
    for (index, name) in mode.file_names().enumerate() {
        let path = dir.path().join(&name);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_file() && metadata.len() == mode.file_len() => {
                survey.present.push(index)
            }
            Ok(metadata) if metadata.is_file() => wrong.push(WrongFile::Size {
                path,
                len: metadata.len(),
            }),
            Ok(_) => wrong.push(WrongFile::NotRegular { path }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                survey.missing.push(index)
            }
            Err(error) => Err(FileError::at(&path, "inspect")(error))?,
        }
    }
    let more = wrong.len().saturating_sub(1);
    match wrong.into_iter().next() {
        None => Ok(survey),
        Some(first) => Err(SecretsError::WrongFiles { mode, first, more }),
    }
}

/// Refuses a manifest of another mode, or one whose directory lost a file.
/// Returns whether the directory is already complete (manifest present).
fn check_existing_manifest(
    dir: &SecretDir,
    mode: Mode,
    survey: &Survey,
) -> Result<bool, SecretsError> {
    let manifest_path = Manifest::path(dir.path());
    let Some(manifest) = Manifest::read(dir.path()).map_err(SecretsError::UnreadableManifest)?
    else {
        return Ok(false);
    };
    if manifest.mode() != mode && manifest.mode().same_files_as(mode) {
        return Err(SecretsError::OtherKeyRule {
            manifest: manifest_path,
            holds: manifest.mode(),
            wanted: mode,
        });
    }
    if manifest.mode() != mode {
        return Err(SecretsError::OtherModeManifest {
            manifest: manifest_path,
            holds: manifest.mode(),
            wanted: mode,
        });
    }
    if let Some(&index) = survey.missing.first() {
        return Err(SecretsError::LostFile {
            path: dir.path().join(mode.file_name(index)),
            manifest: manifest_path,
            mode,
        });
    }
    Ok(true)
}

/// Refuses to start when the filesystem cannot hold the missing files and the manifest.
pub(super) fn check_space(dir: &SecretDir, mode: Mode, missing: usize) -> Result<(), SecretsError> {
    let available = dir.available_space()?;
    let needed = space_needed(mode, missing, available.block_size);
    if needed.bytes > available.bytes || needed.inodes > available.inodes {
        return Err(SecretsError::NotEnoughSpace {
            dir: dir.path().to_owned(),
            mode,
            missing,
            needed,
            available,
        });
    }
    Ok(())
}

/// Space `missing` files of `mode` and the manifest take, each rounded up to whole blocks.
fn space_needed(mode: Mode, missing: usize, block_size: u64) -> Space {
    let on_disk = |len: u64| len.div_ceil(block_size) * block_size;
    let manifest_len = Manifest::describe(mode, &vec![[0; 32]; mode.file_count()])
        .to_json()
        .len() as u64;
    Space {
        bytes: missing as u64 * on_disk(mode.file_len()) + on_disk(manifest_len),
        inodes: missing as u64 + 1,
        block_size,
    }
}

/// Fills `secret` with fresh secret bytes: a ChaCha20 stream keyed with 32 bytes
/// from the operating system's CSPRNG (getrandom), which is as strong and several
/// times faster than getrandom for every byte (docs/design.md).
pub fn fill_secret(secret: &mut [u8]) -> Result<(), SecretsError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut()).map_err(SecretsError::Random)?;
    ChaCha20Rng::from_seed(*key).fill_bytes(secret);
    Ok(())
}

/// Writer threads per job: a disk (an EBS volume above all) writes fastest with
/// many files in flight, while each writer holds a 2 MiB buffer; more writers
/// cost memory and gain little once the disk's queue stays full.
const WRITERS_PER_JOB: usize = 4;

/// Files each writer starts before it finishes them as a group (see [`FileWork::write_files`]).
const FILES_IN_FLIGHT: usize = 4;

/// Per-file work on one secrets directory: which mode, how many files at a
/// time, for whom, with what progress.
#[derive(Clone, Copy)]
pub struct FileWork<'a> {
    pub dir: &'a SecretDir,
    pub mode: Mode,
    pub jobs: NonZeroUsize,
    pub owner: Option<&'a Owner>,
    pub output: ProgressOutput,
}

impl FileWork<'_> {
    /// Writes the files of `mode` with these indices into `dir`, each durably (see
    /// [`SecretDir::create_file`]). Returns their SHA-256 digests, in the order of
    /// `indices`, and the time taken. The benchmark drives this over a subset of MODE32.
    ///
    /// `jobs` threads compute the secrets and their digests while
    /// [`WRITERS_PER_JOB`] times as many writer threads write them, so that neither
    /// the CPU nor the disk waits for the other. Each writer starts the write-back
    /// of [`FILES_IN_FLIGHT`] files before it fsyncs, renames and commits them as a
    /// group, so the filesystem commits its journal once a group, not twice a file.
    pub fn write_files(
        &self,
        indices: &[usize],
    ) -> Result<(Vec<[u8; 32]>, Duration), SecretsError> {
        let file_len = self.mode.file_len();
        let (to_writers, queue) = mpsc::sync_channel(self.jobs.get());
        let writers = Writers {
            work: self,
            queue: Mutex::new(queue),
            spare_buffers: Mutex::new(Vec::new()),
            progress: Progress::start("generating", indices.len() as u64 * file_len, self.output),
            written: AtomicUsize::new(0),
            failure: Mutex::new(None),
        };
        let computed = std::thread::scope(|scope| {
            for _ in 0..(self.jobs.get() * WRITERS_PER_JOB).min(indices.len()) {
                scope.spawn(|| writers.run());
            }
            let computed = jobs::map(
                self.jobs,
                indices.len(),
                || (),
                |(), position| {
                    if writers.failed() {
                        return Err(());
                    }
                    let mut secret = writers.spare_buffer(file_len as usize);
                    fill_secret(&mut secret).map_err(|error| writers.fail(error))?;
                    let digest: [u8; 32] = Sha256::digest(&secret).into();
                    to_writers
                        .send((self.mode.file_name(indices[position]), secret))
                        .expect("the writers take files until the queue closes");
                    Ok(digest)
                },
            );
            drop(to_writers);
            computed
        });
        let Writers {
            progress,
            written,
            failure,
            ..
        } = writers;
        let elapsed = progress.finish();
        match failure.into_inner().expect("no writer panicked") {
            Some(cause) => Err(SecretsError::Stopped {
                cause: Box::new(cause),
                dir: self.dir.path().to_owned(),
                written: written.into_inner(),
            }),
            None => Ok((
                computed.expect("jobs stop early only after a failure"),
                elapsed,
            )),
        }
    }

    /// SHA-256 of the files complete before this run (for the manifest), which are
    /// also given mode 0400 and the owner; their content is only read.
    fn hash_kept_files(&self, indices: &[usize]) -> Result<Vec<[u8; 32]>, SecretsError> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let progress = Progress::start(
            "hashing the files kept from before",
            indices.len() as u64 * self.mode.file_len(),
            self.output,
        );
        let digests = jobs::map(self.jobs, indices.len(), Vec::new, |buffer, position| {
            let name = self.mode.file_name(indices[position]);
            self.dir.secure_file(&name, self.owner)?;
            let (digest, len) = hash_file(&self.dir.path().join(&name), buffer)?;
            if len != self.mode.file_len() {
                return Err(SecretsError::ChangedWhileHashing {
                    path: self.dir.path().join(&name),
                    len,
                });
            }
            progress.add(len);
            Ok(digest)
        })?;
        progress.finish();
        Ok(digests)
    }
}

/// The writer threads of [`FileWork::write_files`] and what they share.
struct Writers<'a> {
    work: &'a FileWork<'a>,
    /// Secrets to write, by file name.
    queue: Mutex<mpsc::Receiver<(String, Vec<u8>)>>,
    /// Buffers already written, for the next secrets.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    progress: Progress,
    written: AtomicUsize,
    /// The first failure; once set, nothing more is computed or started.
    failure: Mutex<Option<SecretsError>>,
}

impl Writers<'_> {
    /// One writer: takes secrets until the queue closes, writing them in groups.
    /// After a failure it only drains the queue, so no job blocks on it.
    fn run(&self) {
        let mut group = Vec::new();
        loop {
            let next = self.queue.lock().expect("no writer panics").recv();
            let Ok((name, secret)) = next else { break };
            if !self.failed() {
                match self.work.dir.start_file(&name, &secret, self.work.owner) {
                    Ok(pending) => group.push(pending),
                    Err(error) => self.fail(error.into()),
                }
            }
            self.spare_buffers
                .lock()
                .expect("no writer panics")
                .push(secret);
            if group.len() == FILES_IN_FLIGHT {
                self.finish(std::mem::take(&mut group));
            }
        }
        self.finish(group);
    }

    /// Makes a group of started files final (complete files are kept even after a failure).
    fn finish(&self, group: Vec<PendingFile>) {
        let count = group.len();
        if count == 0 {
            return;
        }
        match self.work.dir.finish_files(group) {
            Ok(()) => {
                self.written.fetch_add(count, Ordering::Relaxed);
                self.progress.add(count as u64 * self.work.mode.file_len());
            }
            Err(error) => self.fail(error.into()),
        }
    }

    fn spare_buffer(&self, len: usize) -> Vec<u8> {
        let spare = self.spare_buffers.lock().expect("no writer panics").pop();
        spare.unwrap_or_else(|| vec![0; len])
    }

    fn fail(&self, cause: SecretsError) {
        self.failure
            .lock()
            .expect("no writer panics")
            .get_or_insert(cause);
    }

    fn failed(&self) -> bool {
        self.failure.lock().expect("no writer panics").is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_needed_counts_whole_blocks_and_the_manifest() {
        let mode32 = space_needed(Mode::Mode32, 65_536, 4096);
        assert_eq!(mode32.inodes, 65_537);
        let manifest = mode32.bytes - (128 << 30);
        // About 150 bytes a file: a few MiB, rounded to blocks.
        assert!(
            manifest % 4096 == 0 && (5 << 20..15 << 20).contains(&manifest),
            "{manifest}"
        );
        // A 32-byte MODE0 secret still takes a whole block.
        assert_eq!(space_needed(Mode::Mode0, 1, 4096).bytes, 2 * 4096);
        assert_eq!(space_needed(Mode::Mode16, 0, 4096).inodes, 1);
    }

    #[test]
    fn every_secret_is_fresh() {
        let mut first = vec![0u8; 4096];
        let mut second = vec![0u8; 4096];
        fill_secret(&mut first).unwrap();
        fill_secret(&mut second).unwrap();
        assert_ne!(first, second);
        assert!(first
            .chunks(32)
            .all(|slot| slot.iter().any(|&byte| byte != 0)));
    }

    fn args(dir: &std::path::Path, mode: Mode) -> GenerateOptions {
        GenerateOptions {
            mode,
            dir: dir.to_owned(),
            jobs: NonZeroUsize::new(2),
            owner: None,
        }
    }

    #[test]
    fn a_manifest_is_never_replaced() {
        let parent = tempfile::tempdir().unwrap();
        let dir = SecretDir::open_locked(parent.path()).unwrap();
        let manifest = Manifest::describe(Mode::Mode16, &[[0xab; 32]]);
        write_manifest(&dir, &manifest, None).unwrap();
        let other = Manifest::describe(Mode::Mode0, &[[0; 32]]);
        let error = write_manifest(&dir, &other, None).unwrap_err();
        assert_eq!(error.source.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(Manifest::read(parent.path()).unwrap().unwrap(), manifest);
    }

    #[test]
    fn a_run_writes_the_mode_and_a_second_run_changes_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("secrets");
        let first = generate(&args(&dir, Mode::Mode16), ProgressOutput::Hidden).unwrap();
        assert_eq!(
            (first.written, first.kept, first.already_complete),
            (1, 0, false)
        );
        let secret = std::fs::read(dir.join("0000")).unwrap();
        let manifest = Manifest::read(&dir).unwrap().unwrap();
        assert_eq!(
            manifest.files[0].sha256,
            hex::encode(Sha256::digest(&secret))
        );

        let second = generate(&args(&dir, Mode::Mode16), ProgressOutput::Hidden).unwrap();
        assert!(second.already_complete);
        assert_eq!(std::fs::read(dir.join("0000")).unwrap(), secret);
        assert_eq!(Manifest::read(&dir).unwrap().unwrap(), manifest);
    }

    #[test]
    fn a_complete_directory_gets_its_permissions_back_and_keeps_its_contents() {
        use crate::secrets::secret_dir::{DIR_MODE, FILE_MODE};
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("secrets");
        generate(&args(&dir, Mode::Mode16), ProgressOutput::Hidden).unwrap();
        let secret = std::fs::read(dir.join("0000")).unwrap();
        let mode_of =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for (path, mode) in [
            (dir.join("0000"), 0o644),
            (dir.join(MANIFEST_FILE_NAME), 0o666),
            (dir.clone(), 0o755),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let again = generate(&args(&dir, Mode::Mode16), ProgressOutput::Hidden).unwrap();
        assert!(again.already_complete);
        assert_eq!(mode_of(&dir.join("0000")), FILE_MODE);
        assert_eq!(mode_of(&dir.join(MANIFEST_FILE_NAME)), FILE_MODE);
        assert_eq!(mode_of(&dir), DIR_MODE);
        assert_eq!(std::fs::read(dir.join("0000")).unwrap(), secret);
    }

    #[test]
    fn a_wrong_sized_file_stops_the_run_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("0000"), b"short").unwrap();
        let error =
            generate(&args(parent.path(), Mode::Mode16), ProgressOutput::Hidden).unwrap_err();
        assert!(matches!(
            error,
            SecretsError::WrongFiles {
                first: WrongFile::Size { len: 5, .. },
                more: 0,
                ..
            }
        ));
        assert_eq!(std::fs::read(parent.path().join("0000")).unwrap(), b"short");
        assert!(!Manifest::path(parent.path()).exists());
    }

    #[test]
    fn a_manifest_of_another_mode_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        generate(&args(parent.path(), Mode::Mode0), ProgressOutput::Hidden).unwrap();
        let error =
            generate(&args(parent.path(), Mode::Mode16), ProgressOutput::Hidden).unwrap_err();
        assert!(matches!(
            error,
            SecretsError::OtherModeManifest {
                holds: Mode::Mode0,
                wanted: Mode::Mode16,
                ..
            }
        ));
        assert!(!parent.path().join("0000").exists());
    }

    #[test]
    fn a_complete_directory_that_lost_a_file_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        generate(&args(parent.path(), Mode::Mode0), ProgressOutput::Hidden).unwrap();
        std::fs::remove_file(parent.path().join("secret")).unwrap();
        let error =
            generate(&args(parent.path(), Mode::Mode0), ProgressOutput::Hidden).unwrap_err();
        assert!(
            matches!(error, SecretsError::LostFile { path, .. } if path == parent.path().join("secret"))
        );
        assert!(!parent.path().join("secret").exists());
    }
}
