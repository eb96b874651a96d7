//! A secrets directory as the generator and the verifier handle it: locked
//! against a second run, created 0700, and written only by creating new files
//! durably (temporary name, fsync, rename that refuses to replace, fsync of the
//! directory), so that no code path can overwrite a secret.

use std::convert::Infallible;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{FileError, SecretsError};
use crate::sys::{self, gid_t, uid_t, Space};

/// Permissions of the directory: only its owner (the service user) enters it.
pub const DIR_MODE: u32 = 0o700;
/// Permissions of every file written: read-only, owner only.
pub const FILE_MODE: u32 = 0o400;

/// The user the files are given to (`--owner`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: uid_t,
    /// The user's primary group.
    pub gid: gid_t,
}

impl Owner {
    /// Looks `name` up in the system's user database.
    pub fn lookup(name: &str) -> Result<Owner, SecretsError> {
        let ids = sys::lookup_user(name)
            .map_err(|source| SecretsError::UserDatabase {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| SecretsError::UnknownOwner {
                name: name.to_owned(),
            })?;
        Ok(Owner {
            name: name.to_owned(),
            uid: ids.uid,
            gid: ids.gid,
        })
    }

    fn apply(&self, file: &File) -> io::Result<()> {
        sys::change_owner(file, self.uid, self.gid)
    }
}

/// A secrets directory, exclusively locked (flock) for as long as this value lives.
pub struct SecretDir {
    path: PathBuf,
    handle: File,
}

impl SecretDir {
    /// Opens `path`, creating it with mode 0700 if absent, and locks it so a
    /// second generator cannot run on it at the same time.
    pub fn open_locked(path: &Path) -> Result<SecretDir, SecretsError> {
        // Missing parents get the usual permissions: only the secrets directory
        // itself is closed, so the service user can still reach it.
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .map_err(FileError::at(parent, "create the parent directory"))?;
        }
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => Err(FileError::at(path, "create the directory")(error))?,
        }
        let handle =
            sys::open_directory(path).map_err(FileError::at(path, "open the directory"))?;
        if !sys::try_lock_exclusive(&handle).map_err(FileError::at(path, "lock the directory"))? {
            return Err(SecretsError::Locked {
                path: path.to_owned(),
            });
        }
        Ok(SecretDir {
            path: path.to_owned(),
            handle,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the directory to 0700 and, with `owner`, gives it to that user.
    pub fn secure(&self, owner: Option<&Owner>) -> Result<(), FileError> {
        let failed = FileError::at(&self.path, "set the directory's owner and permissions");
        self.handle
            .set_permissions(Permissions::from_mode(DIR_MODE))
            .and_then(|()| owner.map_or(Ok(()), |owner| owner.apply(&self.handle)))
            .map_err(failed)
    }

    /// Gives the existing file `name` mode 0400 and, with `owner`, that user;
    /// its content is not touched.
    pub fn secure_file(&self, name: &str, owner: Option<&Owner>) -> Result<(), FileError> {
        let path = self.path.join(name);
        let failed = FileError::at(&path, "set the file's owner and permissions");
        let file = File::open(&path).map_err(FileError::at(&path, "open"))?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .and_then(|()| owner.map_or(Ok(()), |owner| owner.apply(&file)))
            .map_err(failed)
    }

    /// Creates the file `name` holding exactly `contents`, mode 0400, durably:
    /// [`start_file`](Self::start_file) then [`finish_file`](Self::finish_file).
    /// A crash at any point leaves either no file `name` or the complete one.
    pub fn create_file(
        &self,
        name: &str,
        contents: &[u8],
        owner: Option<&Owner>,
    ) -> Result<(), FileError> {
        let pending = self.start_file(name, contents, owner)?;
        self.finish_file(pending)
    }

    /// Writes `contents` to a new file under the [`temp_name`] of `name`, mode
    /// 0400, and starts its write-back, so the disk works while the caller
    /// computes (the generator hashes the secret meanwhile).
    pub fn start_file(
        &self,
        name: &str,
        contents: &[u8],
        owner: Option<&Owner>,
    ) -> Result<PendingFile, FileError> {
        self.start_file_with(name, owner, |file, temp| {
            file.write_all(contents)
                .map_err(FileError::at(temp, "write"))
        })
        .map(|(pending, ())| pending)
    }

    /// [`start_file`](Self::start_file) with the contents written by `fill`,
    /// given the new file and its temporary path; returns what `fill` returned.
    pub fn start_file_with<T>(
        &self,
        name: &str,
        owner: Option<&Owner>,
        fill: impl FnOnce(&mut File, &Path) -> Result<T, FileError>,
    ) -> Result<(PendingFile, T), FileError> {
        let temp = self.path.join(temp_name(name));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(FileError::at(&temp, "create"))?;
        let mut pending = PendingFile {
            name: name.to_owned(),
            temp,
            file: Some(file),
        };
        let (temp, file) = (&pending.temp, pending.file.as_mut().expect("just opened"));
        let filled = fill(file, temp)?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .and_then(|()| owner.map_or(Ok(()), |owner| owner.apply(file)))
            .map_err(FileError::at(temp, "set the owner and permissions of"))?;
        sys::start_write_back(file).map_err(FileError::at(temp, "start writing back"))?;
        Ok((pending, filled))
    }

    /// Makes a started file final: fsync, rename to its name only if no file of
    /// that name exists, fsync of the directory.
    pub fn finish_file(&self, pending: PendingFile) -> Result<(), FileError> {
        self.finish_files(vec![pending])
    }

    /// [`finish_file`](Self::finish_file) for several files at once: all are
    /// fsynced, then renamed, then the directory is fsynced once, so the
    /// filesystem commits its journal once for the group instead of once a file.
    pub fn finish_files(&self, mut group: Vec<PendingFile>) -> Result<(), FileError> {
        for pending in &group {
            pending
                .file
                .as_ref()
                .expect("a pending file is open until finished")
                .sync_all()
                .map_err(FileError::at(&pending.temp, "fsync"))?;
        }
        for pending in &mut group {
            let target = self.path.join(&pending.name);
            sys::rename_no_replace(&pending.temp, &target).map_err(FileError::at(
                &target,
                "rename the finished temporary file to",
            ))?;
            pending.file = None;
        }
        self.sync()
    }

    /// Makes the directory's entries (renames, removals) durable.
    pub fn sync(&self) -> Result<(), FileError> {
        self.handle
            .sync_all()
            .map_err(FileError::at(&self.path, "fsync the directory"))
    }

    /// Removes the temporary file of `name` if a killed run left one.
    /// Returns whether there was one.
    pub fn remove_temp(&self, name: &str) -> Result<bool, FileError> {
        let temp = self.path.join(temp_name(name));
        match std::fs::remove_file(&temp) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(FileError::at(&temp, "remove the stale temporary file")(
                error,
            )),
        }
    }

    /// Bytes and inodes an unprivileged writer may still use on the directory's filesystem.
    pub fn available_space(&self) -> Result<Space, FileError> {
        sys::available_space(&self.handle)
            .map_err(FileError::at(&self.path, "query the free space of"))
    }
}

/// A file [`SecretDir::start_file`] wrote under its temporary name, not yet final.
/// Dropped unfinished (after an error), its temporary file is removed.
pub struct PendingFile {
    name: String,
    temp: PathBuf,
    /// Open until the file is renamed to its final name.
    file: Option<File>,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: the next run removes a leftover temporary file anyway.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The temporary name `name` is written under before it is renamed: hidden, and
/// recognisable so a later run can remove it.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Bytes read at a time while hashing.
const READ_CHUNK: usize = 1 << 20;

/// A file's SHA-256 and length, or why it could not be read.
pub type Hashed = Result<([u8; 32], u64), FileError>;

/// SHA-256 and length of the file at `path`, read through `buffer`.
pub fn hash_file(path: &Path, buffer: &mut Vec<u8>) -> Hashed {
    hash_file_into(path, buffer, |_| Ok::<(), Infallible>(()))
        .unwrap_or_else(|never| match never {})
}

/// [`hash_file`] that also hands every chunk it reads to `sink` (a copy being
/// written). The outer error is the sink's first, which stops the reading; the
/// inner result is the hash, or why `path` could not be read.
pub fn hash_file_into<E>(
    path: &Path,
    buffer: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Hashed, E> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return Ok(Err(FileError::at(path, "open")(error))),
    };
    buffer.resize(READ_CHUNK, 0);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    loop {
        match io::Read::read(&mut file, buffer) {
            Ok(0) => return Ok(Ok((hasher.finalize().into(), len))),
            Ok(read) => {
                hasher.update(&buffer[..read]);
                sink(&buffer[..read])?;
                len += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Ok(Err(FileError::at(path, "read")(error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn creates_files_read_only_and_never_replaces_one() {
        let parent = scratch();
        let dir = SecretDir::open_locked(&parent.path().join("secrets")).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().mode() & 0o777,
            DIR_MODE
        );
        dir.create_file("0000", b"first", None).unwrap();
        let path = dir.path().join("0000");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, FILE_MODE);

        let error = dir.create_file("0000", b"second", None).unwrap_err();
        assert_eq!(error.source.kind(), io::ErrorKind::AlreadyExists);
        assert!(error.to_string().contains("0000"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert!(!dir.path().join(temp_name("0000")).exists());
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_directory() {
        let parent = scratch();
        let _held = SecretDir::open_locked(parent.path()).unwrap();
        let error = SecretDir::open_locked(parent.path()).err().unwrap();
        assert!(matches!(error, SecretsError::Locked { path } if path == parent.path()));
    }

    #[test]
    fn stale_temporary_files_are_removed() {
        let parent = scratch();
        let dir = SecretDir::open_locked(parent.path()).unwrap();
        std::fs::write(parent.path().join(".00ff.tmp"), b"partial").unwrap();
        assert!(dir.remove_temp("00ff").unwrap());
        assert!(!dir.remove_temp("00ff").unwrap());
        assert!(!parent.path().join(".00ff.tmp").exists());
    }

    #[test]
    fn unknown_owner_is_named() {
        let error = Owner::lookup("no-such-user-cryptoserver").unwrap_err();
        assert!(
            matches!(error, SecretsError::UnknownOwner { name } if name == "no-such-user-cryptoserver")
        );
        assert_eq!(Owner::lookup("root").unwrap().uid, 0);
    }

    #[test]
    fn free_space_is_reported() {
        let parent = scratch();
        let space = SecretDir::open_locked(parent.path())
            .unwrap()
            .available_space()
            .unwrap();
        assert!(space.bytes > 0 && space.inodes > 0);
    }
}
