//! A secrets directory as the generator and the verifier handle it: locked
//! against a second run, created 0700, and written only by creating new files
//! durably (temporary name, fsync, rename that refuses to replace, fsync of the
//! directory), so that no code path can overwrite a secret.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permissions of the directory: only its owner (the service user) enters it.
pub const DIR_MODE: u32 = 0o700;
/// Permissions of every file written: read-only, owner only.
pub const FILE_MODE: u32 = 0o400;

/// A failure of `generate` or `verify`, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommandError {}

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
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT)
        )
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

impl From<FileError> for CommandError {
    fn from(error: FileError) -> Self {
        CommandError(error.to_string())
    }
}

/// The user the files are given to (`--owner`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: libc::uid_t,
    /// The user's primary group.
    pub gid: libc::gid_t,
}

impl Owner {
    /// Looks `name` up in the system's user database.
    pub fn lookup(name: &str) -> Result<Owner, CommandError> {
        let unknown = || {
            CommandError(format!(
                "--owner {name}: no such user on this system; create the service user first"
            ))
        };
        let c_name = CString::new(name).map_err(|_| unknown())?;
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: every pointer is valid for the call and `buffer` outlives `entry`'s strings,
        // which are not used after it.
        let status = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if status != 0 {
            return Err(CommandError(format!(
                "--owner {name}: cannot read the user database: {}",
                io::Error::from_raw_os_error(status)
            )));
        }
        if found.is_null() {
            return Err(unknown());
        }
        Ok(Owner {
            name: name.to_owned(),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        })
    }

    fn apply(&self, file: &File) -> io::Result<()> {
        // SAFETY: fchown on an open descriptor.
        check(unsafe { libc::fchown(file.as_raw_fd(), self.uid, self.gid) })
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
    pub fn open_locked(path: &Path) -> Result<SecretDir, CommandError> {
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
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(FileError::at(path, "open the directory"))?;
        // SAFETY: flock on an open descriptor; the lock lives as long as `handle`.
        if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(CommandError(format!(
                    "{}: another cryptoserver-secrets is working on this directory; wait for it to finish",
                    path.display()
                )));
            }
            Err(FileError::at(path, "lock the directory")(error))?;
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
        file.write_all(contents)
            .map_err(FileError::at(temp, "write"))?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .and_then(|()| owner.map_or(Ok(()), |owner| owner.apply(file)))
            .map_err(FileError::at(temp, "set the owner and permissions of"))?;
        // SAFETY: sync_file_range on an open descriptor; it only starts write-back.
        check(unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
        })
        .map_err(FileError::at(temp, "start writing back"))?;
        Ok(pending)
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
            rename_no_replace(&pending.temp, &target).map_err(FileError::at(
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
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatvfs on an open descriptor into a valid struct.
        check(unsafe { libc::fstatvfs(self.handle.as_raw_fd(), &mut stats) })
            .map_err(FileError::at(&self.path, "query the free space of"))?;
        Ok(Space {
            bytes: stats.f_bavail as u64 * stats.f_frsize as u64,
            inodes: stats.f_favail as u64,
            block_size: stats.f_frsize as u64,
        })
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

/// Free space on a filesystem, as statvfs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub bytes: u64,
    pub inodes: u64,
    pub block_size: u64,
}

/// The temporary name `name` is written under before it is renamed: hidden, and
/// recognisable so a later run can remove it.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// rename(2) that fails with EEXIST instead of replacing `to`: the guarantee
/// that a secret is never overwritten, even by a second process racing this one.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let from = c_path(from)?;
    let to = c_path(to)?;
    // SAFETY: both paths are valid NUL-terminated strings.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(status: libc::c_int) -> io::Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
        assert_eq!(error.source.raw_os_error(), Some(libc::EEXIST));
        assert!(error.to_string().contains("0000"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert!(!dir.path().join(temp_name("0000")).exists());
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_directory() {
        let parent = scratch();
        let _held = SecretDir::open_locked(parent.path()).unwrap();
        let error = SecretDir::open_locked(parent.path()).err().unwrap();
        assert!(error.0.contains("another cryptoserver-secrets"), "{error}");
        assert!(error.0.contains(&parent.path().display().to_string()));
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
        assert!(error.0.contains("no-such-user-cryptoserver"), "{error}");
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
