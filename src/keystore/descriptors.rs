//! How many MODE32 files the process keeps open: all 65,536 when RLIMIT_NOFILE
//! allows, with room left for sockets; the rest are opened per read.

use crate::layout::Mode;
use crate::sys::{self, Limit};

/// File descriptors kept free for sockets and the rest when all MODE32 files are open.
const SPARE_FILE_DESCRIPTORS: u64 = 4096;

/// How many MODE32 files a server started by this process keeps open, as
/// RLIMIT_NOFILE's hard limit allows; keys in the others cost an `open` per read.
pub fn mode32_files_kept_open() -> usize {
    let hard = sys::open_file_limit().map_or(0, |limit| limit.hard);
    files_kept_open_under(hard.min(open_files_wanted()))
}

/// Every MODE32 file, and room for the sockets.
pub(super) fn open_files_wanted() -> u64 {
    Mode::Mode32.file_count() as u64 + SPARE_FILE_DESCRIPTORS
}

/// MODE32 files that fit under a descriptor limit, the spare ones set aside.
pub(super) fn files_kept_open_under(limit: u64) -> usize {
    limit
        .saturating_sub(SPARE_FILE_DESCRIPTORS)
        .min(Mode::Mode32.file_count() as u64) as usize
}

/// Descriptors this process may still open under its soft RLIMIT_NOFILE;
/// `None` when /proc does not say how many are open.
pub fn descriptors_left() -> Option<u64> {
    let limit = sys::open_file_limit().ok()?;
    // The listing's own descriptor is counted too: one too many errs on the safe side.
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(limit.soft.saturating_sub(open))
}

/// Raises the soft RLIMIT_NOFILE towards `wanted`, as far as the hard limit allows;
/// returns the soft limit in force afterwards.
pub(super) fn raise_open_file_limit(wanted: u64) -> u64 {
    let Ok(limit) = sys::open_file_limit() else {
        return 0;
    };
    if limit.soft >= wanted {
        return limit.soft;
    }
    let raised = Limit {
        soft: wanted.min(limit.hard),
        hard: limit.hard,
    };
    match sys::set_open_file_limit(raised) {
        Ok(()) => raised.soft,
        Err(_) => limit.soft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_descriptors_are_set_aside() {
        assert_eq!(files_kept_open_under(1024), 0);
        assert_eq!(files_kept_open_under(20_000), 15_904);
        assert_eq!(files_kept_open_under(open_files_wanted()), 65_536);
        assert_eq!(files_kept_open_under(u64::MAX), 65_536);
    }
}
