//! The directories benchmarks write in: one made for a run and removed after
//! it, or one kept from run to run because its content is slow to make. Both
//! default to `bench-<name>` in cargo's target directory, out of the source tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::process::{output, target_dir};

/// `bench-<name>` in cargo's target directory.
pub fn default_path(name: &str) -> PathBuf {
    target_dir().join(format!("bench-{name}"))
}

/// A benchmark run's directory: created empty, emptied between runs, removed
/// at the end (also on error), so the benchmark leaves nothing behind.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `path`, which must not exist, so that nothing in it is lost.
    pub fn create(path: PathBuf) -> anyhow::Result<Scratch> {
        std::fs::create_dir(&path).with_context(|| {
            format!(
                "cannot create the benchmark directory {} (it must not exist yet, so that nothing in it is lost)",
                path.display()
            )
        })?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `content` into the file `name` of the directory.
    pub fn write_file(&self, name: &str, content: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Removes everything written so far, and waits until the removal is on disk,
    /// so one run's write-back never slows the next.
    pub fn empty(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.path)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        output(Command::new("sync").arg("-f").arg(&self.path)).map(drop)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {error}", self.path.display());
        }
    }
}

/// What `reuse` reads out of the directory an earlier run kept at `path`; where
/// it finds nothing current there, `None`, with `path` replaced by an empty
/// directory for the caller to fill.
pub fn reuse_or_empty<T>(
    path: &Path,
    reuse: impl FnOnce(&Path) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    if let Some(kept) = reuse(path) {
        eprintln!("  reusing {}", path.display());
        return Ok(Some(kept));
    }
    if path.exists() {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("cannot remove the outdated {}", path.display()))?;
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_directory_is_new_and_leaves_nothing_behind() {
        let path = default_path(&format!("scratch-test-{}", std::process::id()));
        let scratch = Scratch::create(path.clone()).unwrap();
        assert!(Scratch::create(path.clone()).is_err());
        let file = scratch.write_file("a", b"x").unwrap();
        std::fs::create_dir(path.join("sub")).unwrap();
        scratch.empty().unwrap();
        assert!(!file.exists() && std::fs::read_dir(&path).unwrap().next().is_none());
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn a_kept_directory_is_reused_only_when_current() {
        let path = default_path(&format!("kept-test-{}", std::process::id()));
        assert_eq!(reuse_or_empty(&path, |_| None::<()>).unwrap(), None);
        std::fs::write(path.join("stale"), b"x").unwrap();
        assert_eq!(reuse_or_empty(&path, |_| None::<()>).unwrap(), None);
        assert!(std::fs::read_dir(&path).unwrap().next().is_none());
        std::fs::write(path.join("current"), b"x").unwrap();
        let reused = reuse_or_empty(&path, |dir| std::fs::read(dir.join("current")).ok());
        assert_eq!(reused.unwrap(), Some(b"x".to_vec()));
        std::fs::remove_dir_all(&path).unwrap();
    }
}
