//! Every libc call the crate makes, each wrapped once with its error check, so
//! the rest of the code stays free of `unsafe` and of errno handling.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use libc::{gid_t, uid_t};

/// A libc status (0 for success, -1 with errno set) as an `io::Result`.
fn check(status: libc::c_int) -> io::Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A path as the NUL-terminated string system calls take.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Whether an error means the filesystem (or the user's quota) ran out of space.
pub fn is_disk_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Whether an error means this process (EMFILE) or the system (ENFILE) has no
/// file descriptor left.
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether an error means the kernel is short of memory for sockets.
pub fn is_out_of_memory(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM))
}

/// The soft and hard limits of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

/// RLIMIT_NOFILE: how many descriptors this process may hold.
pub fn open_file_limit() -> io::Result<Limit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed in.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok(Limit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Sets RLIMIT_NOFILE.
pub fn set_open_file_limit(limit: Limit) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: limit.soft,
        rlim_max: limit.hard,
    };
    // SAFETY: setrlimit only reads the struct passed in.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })
}

/// No core dumps (RLIMIT_CORE 0) and no ptrace or /proc/PID/mem access by
/// other processes of the same user (PR_SET_DUMPABLE 0).
pub fn forbid_core_dumps() -> io::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the struct passed in.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) })?;
    // SAFETY: prctl with integer arguments only, on this process.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })
}

/// Asks the kernel to send this process `SIGTERM` when its parent thread exits.
/// For use in a child between fork and exec: it only makes a system call.
pub fn terminate_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only, on this process.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) })
}

/// Sends `SIGTERM` to the process `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "no such process id"))?;
    // SAFETY: kill with integer arguments only.
    check(unsafe { libc::kill(pid, libc::SIGTERM) })
}

/// How the kernel should cache a file's pages.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Reads land anywhere: no readahead.
    Random,
    /// The cached pages are not needed any more: drop them.
    DontNeed,
}

/// posix_fadvise over the whole file.
pub fn advise(file: &File, access: Access) -> io::Result<()> {
    let advice = match access {
        Access::Random => libc::POSIX_FADV_RANDOM,
        Access::DontNeed => libc::POSIX_FADV_DONTNEED,
    };
    // SAFETY: the descriptor is valid while `file` is borrowed; no memory is passed.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice) } {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

/// Flushes the whole filesystem that holds `file` (syncfs).
pub fn sync_filesystem(file: &File) -> io::Result<()> {
    // SAFETY: syncfs on a valid descriptor; no memory is passed.
    check(unsafe { libc::syncfs(file.as_raw_fd()) })
}

/// Opens a secret file for reading without hanging on a FIFO (O_NONBLOCK, cleared
/// again by the caller once the file is known to be regular) and, where the
/// caller owns the file, without updating its access time on every read (O_NOATIME).
pub fn open_for_key_reads(path: &Path) -> io::Result<File> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
    open(libc::O_NONBLOCK | libc::O_NOATIME).or_else(|error| match error.raw_os_error() {
        // Only the file's owner may ask for O_NOATIME.
        Some(libc::EPERM) => open(libc::O_NONBLOCK),
        _ => Err(error),
    })
}

/// Opens a directory itself, as a handle to lock, fsync and statvfs it.
pub fn open_directory(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

/// Clears O_NONBLOCK from an open file.
pub fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let status = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if status < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives an open file to a user and group.
pub fn change_owner(file: &impl AsFd, uid: uid_t, gid: gid_t) -> io::Result<()> {
    // SAFETY: fchown on a valid descriptor with integer arguments only.
    check(unsafe { libc::fchown(file.as_fd().as_raw_fd(), uid, gid) })
}

/// Takes an exclusive flock without waiting; `Ok(false)` when another holds it.
/// The lock lasts as long as the descriptor.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid descriptor with integer arguments only.
    match check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(()) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Starts writing back a file's dirty pages without waiting for them.
pub fn start_write_back(file: &File) -> io::Result<()> {
    // SAFETY: sync_file_range on a valid descriptor with integer arguments only.
    check(unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) })
}

/// rename(2) that fails with EEXIST instead of replacing `to`.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
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

/// Free space of a filesystem, as `df` shows it to an unprivileged writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub bytes: u64,
    pub inodes: u64,
    pub block_size: u64,
}

/// statvfs of the filesystem that holds `file`.
pub fn available_space(file: &File) -> io::Result<Space> {
    // SAFETY: statvfs is plain data, for which all zeros is a valid value.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs on a valid descriptor into a struct it may write.
    check(unsafe { libc::fstatvfs(file.as_raw_fd(), &mut stats) })?;
    Ok(Space {
        bytes: stats.f_bavail as u64 * stats.f_frsize as u64,
        inodes: stats.f_favail as u64,
        block_size: stats.f_frsize as u64,
    })
}

/// A user's id and primary group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserIds {
    pub uid: uid_t,
    pub gid: gid_t,
}

/// Looks a user up in the system's user database; `Ok(None)` when there is none of that name.
pub fn lookup_user(name: &str) -> io::Result<Option<UserIds>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: passwd is plain data, for which all zeros is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is valid for the call; `entry`'s strings point into
    // `buffer`, and only its integer fields are read afterwards.
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
        return Err(io::Error::from_raw_os_error(status));
    }
    Ok((!found.is_null()).then_some(UserIds {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    }))
}

/// A new eventfd (close-on-exec), counting from zero.
pub fn event_fd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking whoever reads it.
pub fn signal_event_fd(fd: &OwnedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a valid descriptor.
    let written = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if written == one.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for transparent huge pages under `len` bytes at `start`; a hint.
///
/// # Safety
/// `start..start + len` must be memory this process mapped and still owns.
pub unsafe fn advise_huge_pages(start: *mut u8, len: usize) {
    // SAFETY: the caller vouches for the range; madvise only changes how it is backed.
    unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
}

/// Locks `len` bytes at `start` into RAM, so they are never written to swap.
///
/// # Safety
/// `start..start + len` must be memory this process mapped and still owns.
pub unsafe fn lock_in_memory(start: *const u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller vouches for the range; mlock does not touch its contents.
    check(unsafe { libc::mlock(start.cast(), len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_reads_back() {
        let limit = open_file_limit().unwrap();
        assert!(limit.soft <= limit.hard && limit.soft > 0);
        set_open_file_limit(limit).unwrap();
        assert_eq!(open_file_limit().unwrap(), limit);
    }

    #[test]
    fn rename_no_replace_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::write(&from, b"new").unwrap();
        std::fs::write(&to, b"old").unwrap();
        let error = rename_no_replace(&from, &to).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&to).unwrap(), b"old");
    }

    #[test]
    fn users_are_found_by_name() {
        assert_eq!(lookup_user("root").unwrap().unwrap().uid, 0);
        assert_eq!(lookup_user("no-such-user-cryptoserver").unwrap(), None);
        assert_eq!(lookup_user("nul\0byte").unwrap(), None);
    }

    #[test]
    fn a_second_exclusive_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = File::open(dir.path()).unwrap();
        let second = File::open(dir.path()).unwrap();
        assert!(try_lock_exclusive(&first).unwrap());
        assert!(!try_lock_exclusive(&second).unwrap());
    }
}
