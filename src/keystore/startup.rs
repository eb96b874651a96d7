//! The checks a secrets directory passes before it is served (fail closed):
//! the directory and every file of the mode, their sizes and permissions, the
//! manifest's mode, and the in-memory keys' contents.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::table::{InMemoryKeys, KeyTable};
use crate::layout::{namespace_key, Mode, KEY_LEN, MANIFEST_FILE_NAME};
use crate::mac::PrecomputedKey;
use crate::manifest::{Manifest, ManifestError};
use crate::sys;

/// Why the secrets directory cannot be served; each names the path and what to do.
#[derive(Debug)]
pub enum LoadError {
    /// The directory cannot be reached at all (missing, no permission).
    DirectoryUnusable {
        path: PathBuf,
        source: io::Error,
    },
    NotADirectory {
        path: PathBuf,
    },
    /// Anyone who can write a secret can change every MAC made with it.
    WritableByOthers {
        path: PathBuf,
        mode: u32,
    },
    /// A file the mode needs is absent.
    Missing {
        path: PathBuf,
        mode: Mode,
    },
    /// A system call on a secret file failed: `action` as in "cannot {action}".
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    NotRegularFile {
        path: PathBuf,
    },
    WrongSize {
        path: PathBuf,
        len: u64,
        mode: Mode,
    },
    ChangedSizeWhileRead {
        path: PathBuf,
    },
    /// An all-zero slot: a truncated, sparse or zero-filled file is not a secret.
    ZeroSlot {
        path: PathBuf,
        slot: usize,
    },
    /// The content's SHA-256 differs from the manifest's.
    ChangedSinceGenerated {
        path: PathBuf,
    },
    Manifest(ManifestError),
    /// The manifest describes another mode than the configured one.
    ModeMismatch {
        dir: PathBuf,
        holds: Mode,
        configured: Mode,
    },
    /// The manifest's mode has the same files as the configured one but
    /// another key rule (MODE32 and MODE32X): serving would change every MAC.
    KeyRuleMismatch {
        dir: PathBuf,
        holds: Mode,
        configured: Mode,
    },
    /// `CRYPTOSERVER_KEY_READS=io-uring` on a host that forbids io_uring.
    IoUringUnavailable(io::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::DirectoryUnusable { path, source } => write!(
                f,
                "{}: cannot use the secrets directory ({source}); create it and generate the secrets",
                path.display()
            ),
            LoadError::NotADirectory { path } => write!(
                f,
                "{}: is not a directory; CRYPTOSERVER_SECRETDIR must name the secrets directory",
                path.display()
            ),
            LoadError::WritableByOthers { path, mode } => write!(
                f,
                "{}: is writable by group or others (mode {mode:04o}); run `chmod go-w {}`",
                path.display(),
                path.display()
            ),
            LoadError::Missing { path, mode } => write!(
                f,
                "{}: is missing; {mode} needs {} file(s) of {} bytes",
                path.display(),
                mode.file_count(),
                mode.file_len()
            ),
            LoadError::Io {
                path,
                action,
                source,
            } => write!(f, "{}: cannot {action}: {source}", path.display()),
            LoadError::NotRegularFile { path } => {
                write!(f, "{}: is not a regular file", path.display())
            }
            LoadError::WrongSize { path, len, mode } => write!(
                f,
                "{}: is {len} bytes, but {mode} needs exactly {}; a truncated or padded file is not a secret",
                path.display(),
                mode.file_len()
            ),
            LoadError::ChangedSizeWhileRead { path } => {
                write!(f, "{}: changed size while being read", path.display())
            }
            LoadError::ZeroSlot { path, slot } => write!(
                f,
                "{}: key slot {slot} is all zeros; a sparse or zero-filled file is not a secret",
                path.display()
            ),
            LoadError::ChangedSinceGenerated { path } => write!(
                f,
                "{}: content does not match its SHA-256 in {MANIFEST_FILE_NAME}: the secret changed after it \
                 was generated; restore it from a backup (never regenerate: every MAC issued depends on it)",
                path.display()
            ),
            LoadError::Manifest(error) => error.fmt(f),
            LoadError::ModeMismatch {
                dir,
                holds,
                configured,
            } => write!(
                f,
                "{}: holds {holds} secrets (per {MANIFEST_FILE_NAME}) but the server is configured for \
                 {configured}; set CRYPTOSERVER_MODE={holds} or point CRYPTOSERVER_SECRETDIR at a \
                 {configured} directory",
                dir.display()
            ),
            LoadError::KeyRuleMismatch {
                dir,
                holds,
                configured,
            } => write!(
                f,
                "{}: was generated for {holds} (per {MANIFEST_FILE_NAME}) but the server is configured for \
                 {configured}: the files are the same, but {configured} derives each message's key another way, \
                 so every MAC would change. Set CRYPTOSERVER_MODE={holds}",
                dir.display()
            ),
            LoadError::IoUringUnavailable(source) => write!(
                f,
                "cannot set up io_uring for MODE32/MODE32X key reads: {source}; use CRYPTOSERVER_KEY_READS=auto or \
                 threads where the kernel or a seccomp filter forbids it"
            ),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Manifest(error) => Some(error),
            _ => None,
        }
    }
}

impl From<ManifestError> for LoadError {
    fn from(error: ManifestError) -> Self {
        LoadError::Manifest(error)
    }
}

pub(super) fn check_directory(dir: &Path) -> Result<(), LoadError> {
    let metadata = std::fs::metadata(dir).map_err(|source| LoadError::DirectoryUnusable {
        path: dir.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(LoadError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    check_not_writable_by_others(dir, &metadata)
}

fn check_not_writable_by_others(path: &Path, metadata: &Metadata) -> Result<(), LoadError> {
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(LoadError::WritableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// The directory's manifest, if it has one, after checking it describes `mode`.
pub(super) fn read_manifest(mode: Mode, dir: &Path) -> Result<Option<Manifest>, LoadError> {
    let manifest = Manifest::read(dir)?;
    match &manifest {
        None => tracing::warn!(
            dir = %dir.display(),
            "no {MANIFEST_FILE_NAME}: serving secrets made by hand; they cannot be checked for changes"
        ),
        Some(manifest) if manifest.mode() != mode && manifest.mode().same_files_as(mode) => {
            return Err(LoadError::KeyRuleMismatch {
                dir: dir.to_owned(),
                holds: manifest.mode(),
                configured: mode,
            })
        }
        Some(manifest) if manifest.mode() != mode => {
            return Err(LoadError::ModeMismatch {
                dir: dir.to_owned(),
                holds: manifest.mode(),
                configured: mode,
            })
        }
        Some(_) => {}
    }
    Ok(manifest)
}

/// A secret file opened for key reads, after checking its type, size and
/// permissions.
pub(super) struct SecretFile {
    pub file: File,
    /// Whether users other than the owner and group may read it (a warning, not an error).
    pub readable_by_others: bool,
}

/// Opens a secret file without following a FIFO into a blocking open, and checks it.
pub(super) fn open_secret_file(mode: Mode, path: &Path) -> Result<SecretFile, LoadError> {
    let io_error = |action| {
        move |source| LoadError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let file = sys::open_for_key_reads(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LoadError::Missing {
            path: path.to_owned(),
            mode,
        },
        _ => io_error("open")(source),
    })?;
    let metadata = file.metadata().map_err(io_error("stat"))?;
    if !metadata.is_file() {
        return Err(LoadError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    // O_NONBLOCK only kept the open of a FIFO from hanging. On a filesystem
    // without non-blocking reads, io_uring would fail a read of an O_NONBLOCK
    // file with EAGAIN instead of waiting for the disk.
    sys::clear_nonblocking(&file).map_err(io_error("fcntl"))?;
    if metadata.len() != mode.file_len() {
        return Err(LoadError::WrongSize {
            path: path.to_owned(),
            len: metadata.len(),
            mode,
        });
    }
    check_not_writable_by_others(path, &metadata)?;
    Ok(SecretFile {
        file,
        readable_by_others: metadata.permissions().mode() & 0o004 != 0,
    })
}

pub(super) fn warn_readable_by_others(count: usize, example: &Path) {
    if count > 0 {
        tracing::warn!(
            files = count,
            example = %example.display(),
            "secret files are readable by other users; run `chmod o-r` on them"
        );
    }
}

/// Reads the one MODE0/MODE16 file, checks every slot and the manifest's
/// SHA-256, and precomputes every key, and every key of each of `namespaces`.
pub(super) fn load_in_memory(
    mode: Mode,
    dir: &Path,
    manifest: Option<&Manifest>,
    namespaces: &[&str],
) -> Result<InMemoryKeys, LoadError> {
    let path = dir.join(mode.file_name(0));
    let SecretFile {
        mut file,
        readable_by_others,
    } = open_secret_file(mode, &path)?;
    warn_readable_by_others(usize::from(readable_by_others), &path);
    let mut content = Zeroizing::new(Vec::with_capacity(mode.file_len() as usize));
    file.read_to_end(&mut content)
        .map_err(|source| LoadError::Io {
            path: path.clone(),
            action: "read",
            source,
        })?;
    if content.len() as u64 != mode.file_len() {
        return Err(LoadError::ChangedSizeWhileRead { path });
    }
    if let Some(slot) = content
        .chunks_exact(KEY_LEN)
        .position(|key| key.iter().all(|&b| b == 0))
    {
        return Err(LoadError::ZeroSlot { path, slot });
    }
    if let Some(manifest) = manifest {
        if hex::encode(Sha256::digest(content.as_slice())) != manifest.files[0].sha256 {
            return Err(LoadError::ChangedSinceGenerated { path });
        }
    }
    let keys = || {
        content
            .chunks_exact(KEY_LEN)
            .map(|key| <&[u8; KEY_LEN]>::try_from(key).expect("chunks are KEY_LEN long"))
    };
    Ok(InMemoryKeys {
        default: KeyTable::new(keys().map(PrecomputedKey::new)),
        namespaces: namespaces
            .iter()
            .map(|&namespace| {
                let derived = keys().map(|key| PrecomputedKey::new(&namespace_key(key, namespace)));
                (namespace.to_owned(), KeyTable::new(derived))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_problem_is_its_own_variant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert!(matches!(
            open_secret_file(Mode::Mode0, &path),
            Err(LoadError::Missing { .. })
        ));
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            open_secret_file(Mode::Mode0, &path),
            Err(LoadError::WrongSize { len: 31, .. })
        ));
        std::fs::write(&path, [0u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_in_memory(Mode::Mode0, dir.path(), None, &[]),
            Err(LoadError::ZeroSlot { slot: 0, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(matches!(
            open_secret_file(Mode::Mode0, &path),
            Err(LoadError::WritableByOthers { mode: 0o620, .. })
        ));
        assert!(matches!(
            check_directory(&path),
            Err(LoadError::NotADirectory { .. })
        ));
    }
}
