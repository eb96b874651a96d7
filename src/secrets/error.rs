//! Why a secret tool stopped: one enum for the area, each variant saying what
//! failed, on which path, and what to do.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::progress::count;
use crate::layout::{Mode, MANIFEST_FILE_NAME};
use crate::manifest::ManifestError;
use crate::sys::{self, Space};

/// Why `generate` or `verify` stopped; each says what failed, where, and what to do.
#[derive(Debug)]
pub enum SecretsError {
    /// A system call on one path failed.
    File(FileError),
    Manifest(ManifestError),
    /// The directory's manifest cannot be read, so `generate` writes nothing.
    UnreadableManifest(ManifestError),
    UnknownOwner {
        name: String,
    },
    UserDatabase {
        name: String,
        source: io::Error,
    },
    /// Another generator holds the directory's lock.
    Locked {
        path: PathBuf,
    },
    /// Final files of the wrong size or type: the generator never repairs a secret.
    WrongFiles {
        mode: Mode,
        first: WrongFile,
        more: usize,
    },
    /// The manifest describes another mode than the one asked for.
    OtherModeManifest {
        manifest: PathBuf,
        holds: Mode,
        wanted: Mode,
    },
    /// The manifest describes a mode with the same files but another key rule.
    OtherKeyRule {
        manifest: PathBuf,
        holds: Mode,
        wanted: Mode,
    },
    /// A complete directory (it has its manifest) lost one of its files.
    LostFile {
        path: PathBuf,
        manifest: PathBuf,
        mode: Mode,
    },
    NotEnoughSpace {
        dir: PathBuf,
        mode: Mode,
        missing: usize,
        needed: Space,
        available: Space,
    },
    /// The operating system's random number generator failed.
    Random(getrandom::Error),
    /// A kept file changed size while it was hashed for the manifest.
    ChangedWhileHashing {
        path: PathBuf,
        len: u64,
    },
    /// Writing stopped part-way: the cause, and how far it got.
    Stopped {
        cause: Box<SecretsError>,
        dir: PathBuf,
        written: usize,
    },
    /// `verify` found no manifest to check against.
    NoManifest {
        path: PathBuf,
    },
    /// `fingerprint --mode` found a manifest of another mode.
    ManifestOfAnotherMode {
        manifest: PathBuf,
        holds: Mode,
        wanted: Mode,
    },
    /// `verify --copy-to` copies only into an empty directory (a fresh filesystem).
    CopyTargetNotEmpty {
        dir: PathBuf,
        entry: String,
    },
    /// `verify` found files that differ from the manifest.
    Mismatch {
        dir: PathBuf,
        mode: Mode,
        files: usize,
        problems: Vec<FileProblem>,
    },
}

/// A final file that cannot be a secret of its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrongFile {
    Size { path: PathBuf, len: u64 },
    NotRegular { path: PathBuf },
}

/// Problems listed one per line before the rest are only counted.
const PROBLEMS_SHOWN: usize = 20;

impl SecretsError {
    /// Whether the filesystem (or the user's quota) ran out of space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SecretsError::File(error) => error.is_disk_full(),
            SecretsError::Stopped { cause, .. } => cause.is_disk_full(),
            _ => false,
        }
    }
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsError::File(error) => error.fmt(f),
            SecretsError::Manifest(error) => error.fmt(f),
            SecretsError::UnreadableManifest(error) => write!(
                f,
                "{error}; nothing was written. A manifest is only written once a directory is complete: \
                 check this directory by hand"
            ),
            SecretsError::UnknownOwner { name } => write!(
                f,
                "--owner {name}: no such user on this system; create the service user first"
            ),
            SecretsError::UserDatabase { name, source } => {
                write!(f, "--owner {name}: cannot read the user database: {source}")
            }
            SecretsError::Locked { path } => write!(
                f,
                "{}: another cryptoserver-secrets is working on this directory; wait for it to finish",
                path.display()
            ),
            SecretsError::WrongFiles { mode, first, more } => {
                match first {
                    WrongFile::Size { path, len } => write!(f, "{}: is {len} bytes", path.display())?,
                    WrongFile::NotRegular { path } => {
                        write!(f, "{}: is not a regular file", path.display())?
                    }
                }
                write!(
                    f,
                    ", but every {mode} secret file is a regular file of {} bytes{}; nothing was written. \
                     The generator never overwrites or repairs a secret: if this directory has never served \
                     MACs, delete it by hand and run again; otherwise restore the file",
                    mode.file_len(),
                    match more {
                        0 => String::new(),
                        more => format!(" ({more} more files are wrong too)"),
                    },
                )
            }
            SecretsError::OtherModeManifest {
                manifest,
                holds,
                wanted,
            } => write!(
                f,
                "{}: this directory holds {holds} secrets, not {wanted}; nothing was written. \
                 Generate {wanted} secrets in another directory",
                manifest.display()
            ),
            SecretsError::OtherKeyRule {
                manifest,
                holds,
                wanted,
            } => write!(
                f,
                "{}: this directory holds {holds} secrets; {wanted} uses the same files but derives each \
                 message's key another way, so every MAC made with them would change; nothing was written. \
                 Keep serving it as {holds}, or generate {wanted} secrets in another directory",
                manifest.display()
            ),
            SecretsError::LostFile {
                path,
                manifest,
                mode,
            } => write!(
                f,
                "{}: is missing, but {} records this directory as a complete {mode} set: a finished secret \
                 was deleted. A new one would silently change every MAC made with it, so nothing was written; \
                 restore the file (or, if this directory has never served MACs, delete it by hand and run again)",
                path.display(),
                manifest.display(),
            ),
            SecretsError::NotEnoughSpace {
                dir,
                mode,
                missing,
                needed,
                available,
            } => write!(
                f,
                "{}: not enough space for {} and the manifest: they need {} bytes ({}) \
                 and {} inodes, the filesystem has {} bytes ({}) and {} inodes available; nothing was written. \
                 Free space or use a larger volume, then run again",
                dir.display(),
                count(*missing, &format!("{mode} file")),
                needed.bytes,
                indicatif::HumanBytes(needed.bytes),
                needed.inodes,
                available.bytes,
                indicatif::HumanBytes(available.bytes),
                available.inodes,
            ),
            SecretsError::Random(error) => write!(
                f,
                "cannot read the operating system's random number generator (getrandom): {error}"
            ),
            SecretsError::ChangedWhileHashing { path, len } => write!(
                f,
                "{}: changed size to {len} bytes while this run was hashing it; nothing more was \
                 written. Stop whatever else writes to this directory and run again",
                path.display()
            ),
            SecretsError::Stopped {
                cause,
                dir,
                written,
            } => {
                match &**cause {
                    SecretsError::File(error) if error.is_disk_full() => write!(
                        f,
                        "{}: the filesystem is full (another process may have filled it since the space check)",
                        error.path.display()
                    )?,
                    cause => cause.fmt(f)?,
                }
                write!(
                    f,
                    ". This run completed {written} files before stopping; every complete file is kept \
                     and no partial file remains. {}, then run the same command again to resume",
                    if cause.is_disk_full() {
                        format!("Free space on the filesystem of {}", dir.display())
                    } else {
                        "Fix the cause".to_owned()
                    }
                )
            }
            SecretsError::NoManifest { path } => write!(
                f,
                "{}: not found, so there is nothing to verify against. Secrets made by hand (dd, Python) \
                 have none; `cryptoserver-secrets generate` on the complete directory writes one",
                path.display()
            ),
            SecretsError::ManifestOfAnotherMode {
                manifest,
                holds,
                wanted,
            } => write!(
                f,
                "{}: records {holds} secrets, not {wanted}: serve them as {holds} (CRYPTOSERVER_MODE), \
                 or use a secrets directory made for {wanted}",
                manifest.display()
            ),
            SecretsError::CopyTargetNotEmpty { dir, entry } => write!(
                f,
                "{}: holds '{entry}'; a copy is only made into an empty directory (a fresh filesystem), \
                 so that it holds nothing but verified files; nothing was written",
                dir.display()
            ),
            SecretsError::Mismatch {
                dir,
                mode,
                files,
                problems,
            } => {
                write!(
                    f,
                    "{}: {} of the {files} {mode} files do not match {MANIFEST_FILE_NAME}:",
                    dir.display(),
                    problems.len(),
                )?;
                for problem in problems.iter().take(PROBLEMS_SHOWN) {
                    write!(f, "\n  {problem}")?;
                }
                if problems.len() > PROBLEMS_SHOWN {
                    write!(f, "\n  ... and {} more", problems.len() - PROBLEMS_SHOWN)?;
                }
                f.write_str(
                    "\nA changed secret breaks every MAC made with it: do not serve this directory until \
                     the files are restored",
                )
            }
        }
    }
}

impl std::error::Error for SecretsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretsError::File(error) => Some(error),
            SecretsError::Manifest(error) | SecretsError::UnreadableManifest(error) => Some(error),
            SecretsError::UserDatabase { source, .. } => Some(source),
            SecretsError::Stopped { cause, .. } => Some(&**cause),
            _ => None,
        }
    }
}

impl From<FileError> for SecretsError {
    fn from(error: FileError) -> Self {
        SecretsError::File(error)
    }
}

impl From<ManifestError> for SecretsError {
    fn from(error: ManifestError) -> Self {
        SecretsError::Manifest(error)
    }
}

/// A system call on one path failed.
#[derive(Debug)]
pub struct FileError {
    pub path: PathBuf,
    /// What was being done, as in "cannot {action}".
    pub action: &'static str,
    pub source: io::Error,
}

impl FileError {
    /// Wraps the error of `action` on `path`: `.map_err(FileError::at(path, "open"))`.
    pub fn at<'a>(
        path: &'a Path,
        action: &'static str,
    ) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |source| FileError {
            path: path.to_owned(),
            action,
            source,
        }
    }

    /// The filesystem (or the user's quota) ran out of space.
    pub fn is_disk_full(&self) -> bool {
        sys::is_disk_full(&self.source)
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: cannot {}: {}",
            self.path.display(),
            self.action,
            self.source
        )
    }
}

/// The message already includes the cause, so it is not chained again.
impl std::error::Error for FileError {}

/// What is wrong with one file of the manifest.
#[derive(Debug)]
pub enum FileProblem {
    Missing {
        path: PathBuf,
    },
    Unreadable(FileError),
    Resized {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    Changed {
        path: PathBuf,
    },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Missing { path } => write!(f, "{}: is missing", path.display()),
            FileProblem::Unreadable(error) => error.fmt(f),
            FileProblem::Resized {
                path,
                len,
                expected,
            } => write!(
                f,
                "{}: is {len} bytes, the manifest says {expected}",
                path.display()
            ),
            FileProblem::Changed { path } => write!(
                f,
                "{}: content differs from its SHA-256 in the manifest",
                path.display()
            ),
        }
    }
}
