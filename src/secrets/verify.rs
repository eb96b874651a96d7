//! `cryptoserver-secrets verify` / `cargo xtask verify-secrets`: re-hashes every
//! file of a secrets directory, in parallel, against its manifest. This is how a
//! MODE32 directory is checked: the server only checks MODE0 and MODE16 contents
//! at startup, because reading 128 GiB takes minutes.
//!
//! With `--copy-to` it also copies every file as it reads it (the first-boot
//! script's hot copy on instance storage), so the directory is read once, not
//! twice; `fingerprint` reads only the manifest.

use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{FileError, FileProblem, SecretsError};
use super::generate::{check_space, write_manifest};
use super::jobs;
use super::progress::{count, throughput, Progress, ProgressOutput};
use super::secret_dir::{hash_file, hash_file_into, Hashed, Owner, PendingFile, SecretDir};
use crate::layout::{Mode, MANIFEST_FILE_NAME};
use crate::manifest::{Fingerprint, Manifest, ManifestFile};

/// What to verify, with how many threads, and where to copy it.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Secrets directory holding a `cryptoserver.manifest`.
    pub dir: PathBuf,
    /// Files read in parallel; `None` for one per core.
    pub jobs: Option<NonZeroUsize>,
    /// An empty directory that receives a copy of every file that matches, then
    /// the manifest once all did; `None` to only verify.
    pub copy_to: Option<PathBuf>,
    /// User to own the copy; `None` for the user running this.
    pub owner: Option<String>,
}

/// A directory whose every file matched its manifest.
#[derive(Clone, Debug)]
pub struct Verified {
    pub dir: PathBuf,
    pub mode: Mode,
    pub files: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    pub manifest_created: String,
    pub manifest_tool: String,
    pub fingerprint: Fingerprint,
    /// Where the verified files were copied, with `copy_to`.
    pub copied_to: Option<PathBuf>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: every file matches {MANIFEST_FILE_NAME} ({}, written {} by {}); read {}; \
             secrets fingerprint {}",
            self.dir.display(),
            count(self.files, &format!("{} file", self.mode)),
            self.manifest_created,
            self.manifest_tool,
            throughput(self.bytes, self.elapsed),
            self.fingerprint,
        )?;
        match &self.copied_to {
            Some(copy) => write!(f, "; copied to {}", copy.display()),
            None => Ok(()),
        }
    }
}

/// Re-hashes every file listed in the manifest of `options.dir`; fails listing
/// each file that is missing, unreadable, resized or changed. With `copy_to`,
/// copies each matching file there as it is read, and the manifest last: a copy
/// that has its manifest is complete and verified.
pub fn verify(options: &VerifyOptions, output: ProgressOutput) -> Result<Verified, SecretsError> {
    let dir = &options.dir;
    let manifest = read_manifest(dir)?;
    let copy = match &options.copy_to {
        Some(target) => Some(CopyTarget::start(
            target,
            options.owner.as_deref(),
            manifest.mode(),
        )?),
        None => None,
    };
    let bytes = manifest.files.iter().map(|file| file.size).sum();
    let activity = if copy.is_some() {
        "copying"
    } else {
        "verifying"
    };
    let progress = Progress::start(activity, bytes, output);
    let problems = jobs::map(
        options.jobs.unwrap_or_else(jobs::default_jobs),
        manifest.files.len(),
        Vec::new,
        |buffer, index| {
            let entry = &manifest.files[index];
            let problem = check_file(dir, entry, buffer, copy.as_ref())?;
            progress.add(entry.size);
            Ok::<_, FileError>(problem)
        },
    )?;
    let elapsed = progress.finish();

    let problems: Vec<FileProblem> = problems.into_iter().flatten().collect();
    if !problems.is_empty() {
        return Err(SecretsError::Mismatch {
            dir: dir.clone(),
            mode: manifest.mode(),
            files: manifest.files.len(),
            problems,
        });
    }
    if let Some(copy) = &copy {
        write_manifest(&copy.dir, &manifest, copy.owner.as_ref())?;
    }
    Ok(Verified {
        dir: dir.clone(),
        mode: manifest.mode(),
        files: manifest.files.len(),
        bytes,
        elapsed,
        fingerprint: manifest.fingerprint(),
        manifest_created: manifest.created,
        manifest_tool: manifest.tool_version,
        copied_to: options.copy_to.clone(),
    })
}

/// `cryptoserver-secrets fingerprint`: the fingerprint of the secrets in `dir`,
/// from its manifest alone (checked, but no secret is read); with `mode`, only
/// if the manifest records secrets of that mode.
pub fn fingerprint(dir: &Path, mode: Option<Mode>) -> Result<Fingerprint, SecretsError> {
    let manifest = read_manifest(dir)?;
    match mode {
        Some(wanted) if wanted != manifest.mode() => Err(SecretsError::ManifestOfAnotherMode {
            manifest: Manifest::path(dir),
            holds: manifest.mode(),
            wanted,
        }),
        _ => Ok(manifest.fingerprint()),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, SecretsError> {
    Manifest::read(dir)?.ok_or_else(|| SecretsError::NoManifest {
        path: Manifest::path(dir),
    })
}

/// The directory `verify` copies into: locked, empty, large enough.
struct CopyTarget {
    dir: SecretDir,
    owner: Option<Owner>,
}

impl CopyTarget {
    fn start(target: &Path, owner: Option<&str>, mode: Mode) -> Result<CopyTarget, SecretsError> {
        let owner = owner.map(Owner::lookup).transpose()?;
        let dir = SecretDir::open_locked(target)?;
        let entries = std::fs::read_dir(target).map_err(FileError::at(target, "list"))?;
        for entry in entries {
            let name = entry.map_err(FileError::at(target, "list"))?.file_name();
            // A fresh ext4 filesystem's root holds its lost+found.
            if name != "lost+found" {
                return Err(SecretsError::CopyTargetNotEmpty {
                    dir: target.to_owned(),
                    entry: name.to_string_lossy().into_owned(),
                });
            }
        }
        dir.secure(owner.as_ref())?;
        check_space(&dir, mode, mode.file_count())?;
        Ok(CopyTarget { dir, owner })
    }

    /// Writes `source` into the copy under a temporary name while hashing it.
    /// The outer error is a failed write to the copy; the inner one a failed read.
    fn start_file(
        &self,
        entry: &ManifestFile,
        source: &Path,
        buffer: &mut Vec<u8>,
    ) -> Result<(PendingFile, Hashed), FileError> {
        self.dir
            .start_file_with(&entry.name, self.owner.as_ref(), |file, temp| {
                hash_file_into(source, buffer, |chunk| {
                    file.write_all(chunk).map_err(FileError::at(temp, "write"))
                })
            })
    }
}

/// What is wrong with one file, if anything. With a copy, a matching file is
/// made final there and any other is removed from it; a failed write to the
/// copy is the error.
fn check_file(
    dir: &Path,
    entry: &ManifestFile,
    buffer: &mut Vec<u8>,
    copy: Option<&CopyTarget>,
) -> Result<Option<FileProblem>, FileError> {
    let path = dir.join(&entry.name);
    let (hashed, pending) = match copy {
        None => (hash_file(&path, buffer), None),
        Some(copy) => {
            let (pending, hashed) = copy.start_file(entry, &path, buffer)?;
            (hashed, Some(pending))
        }
    };
    let problem = match hashed {
        Err(error) if error.source.kind() == io::ErrorKind::NotFound => {
            Some(FileProblem::Missing { path })
        }
        Err(error) => Some(FileProblem::Unreadable(error)),
        Ok((_, len)) if len != entry.size => Some(FileProblem::Resized {
            path,
            len,
            expected: entry.size,
        }),
        Ok((digest, _)) if hex::encode(digest) != entry.sha256 => {
            Some(FileProblem::Changed { path })
        }
        Ok(_) => None,
    };
    if let (None, Some(copy), Some(pending)) = (&problem, copy, pending) {
        copy.dir.finish_file(pending)?;
    }
    Ok(problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::generate::{generate, GenerateOptions};
    use std::os::unix::fs::PermissionsExt;

    fn generated(mode: Mode) -> tempfile::TempDir {
        let parent = tempfile::tempdir().unwrap();
        let options = GenerateOptions {
            mode,
            dir: parent.path().to_owned(),
            jobs: None,
            owner: None,
        };
        generate(&options, ProgressOutput::Hidden).unwrap();
        parent
    }

    fn verify_dir(dir: &Path) -> Result<Verified, SecretsError> {
        verify_copying(dir, None)
    }

    fn verify_copying(dir: &Path, copy_to: Option<&Path>) -> Result<Verified, SecretsError> {
        let options = VerifyOptions {
            dir: dir.to_owned(),
            jobs: None,
            copy_to: copy_to.map(Path::to_owned),
            owner: None,
        };
        verify(&options, ProgressOutput::Hidden)
    }

    /// Changes one bit of the (read-only) secret at `path`.
    fn flip_a_byte(path: &Path, index: usize) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut content = std::fs::read(path).unwrap();
        content[index] ^= 1;
        std::fs::write(path, content).unwrap();
    }

    /// Names and permissions of the entries of `dir`, sorted.
    fn listing(dir: &Path) -> Vec<(String, u32)> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                (entry.file_name().into_string().unwrap(), mode)
            })
            .collect();
        entries.sort();
        entries
    }

    /// The problems `verify` found, one per file.
    fn problems(dir: &Path) -> Vec<FileProblem> {
        match verify_dir(dir) {
            Err(SecretsError::Mismatch { problems, .. }) => problems,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_generated_directory_verifies() {
        let parent = generated(Mode::Mode16);
        let verified = verify_dir(parent.path()).unwrap();
        assert_eq!(
            (verified.mode, verified.files, verified.bytes),
            (Mode::Mode16, 1, 2 << 20)
        );
        assert!(verified
            .to_string()
            .contains("every file matches cryptoserver.manifest (1 MODE16 file,"));
    }

    #[test]
    fn a_changed_byte_is_found_and_named() {
        let parent = generated(Mode::Mode16);
        let path = parent.path().join("0000");
        flip_a_byte(&path, 12345);
        let error = verify_dir(parent.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("1 of the 1 MODE16 files do not match"),
            "{error}"
        );
        assert!(matches!(
            problems(parent.path()).as_slice(),
            [FileProblem::Changed { path: changed }] if *changed == path
        ));
    }

    #[test]
    fn missing_and_resized_files_are_named() {
        let parent = generated(Mode::Mode0);
        let path = parent.path().join("secret");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            problems(parent.path()).as_slice(),
            [FileProblem::Missing { path: missing }] if *missing == path
        ));

        std::fs::write(&path, [7u8; 31]).unwrap();
        assert!(matches!(
            problems(parent.path()).as_slice(),
            [FileProblem::Resized {
                len: 31,
                expected: 32,
                ..
            }]
        ));
    }

    #[test]
    fn the_fingerprint_comes_from_the_manifest_alone() {
        let parent = generated(Mode::Mode16);
        let manifest = Manifest::read(parent.path()).unwrap().unwrap();
        assert_eq!(
            fingerprint(parent.path(), None).unwrap(),
            manifest.fingerprint()
        );
        assert_eq!(
            fingerprint(parent.path(), Some(Mode::Mode16)).unwrap(),
            manifest.fingerprint()
        );
        let error = fingerprint(parent.path(), Some(Mode::Mode32)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cryptoserver.manifest: records MODE16 secrets, not MODE32"),
            "{error}"
        );
        // A changed secret is `verify`'s business: the fingerprint names the recorded set.
        flip_a_byte(&parent.path().join("0000"), 0);
        assert_eq!(
            fingerprint(parent.path(), None).unwrap(),
            manifest.fingerprint()
        );

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            fingerprint(empty.path(), None),
            Err(SecretsError::NoManifest { path }) if path == Manifest::path(empty.path())
        ));
        std::fs::write(Manifest::path(empty.path()), b"{").unwrap();
        let error = fingerprint(empty.path(), None).unwrap_err();
        assert!(
            error.to_string().contains("manifest is not valid JSON"),
            "{error}"
        );
    }

    #[test]
    fn a_copy_holds_every_verified_file_and_the_manifest() {
        let parent = generated(Mode::Mode16);
        let scratch = tempfile::tempdir().unwrap();
        let copy = scratch.path().join("hot");
        std::fs::create_dir(&copy).unwrap();
        std::fs::create_dir(copy.join("lost+found")).unwrap();
        let verified = verify_copying(parent.path(), Some(&copy)).unwrap();
        assert!(
            verified
                .to_string()
                .ends_with(&format!("; copied to {}", copy.display())),
            "{verified}"
        );
        assert_eq!(
            listing(&copy),
            [
                ("0000".to_owned(), 0o400),
                (MANIFEST_FILE_NAME.to_owned(), 0o400),
                ("lost+found".to_owned(), 0o755)
            ]
        );
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for name in ["0000", MANIFEST_FILE_NAME] {
            assert_eq!(
                std::fs::read(copy.join(name)).unwrap(),
                std::fs::read(parent.path().join(name)).unwrap(),
                "{name}"
            );
        }
        assert_eq!(verify_dir(&copy).unwrap().fingerprint, verified.fingerprint);
    }

    #[test]
    fn a_changed_file_is_not_copied_and_the_copy_gets_no_manifest() {
        let parent = generated(Mode::Mode16);
        let path = parent.path().join("0000");
        flip_a_byte(&path, 7);
        let scratch = tempfile::tempdir().unwrap();
        let copy = scratch.path().join("hot");
        let error = verify_copying(parent.path(), Some(&copy)).unwrap_err();
        assert!(
            matches!(&error, SecretsError::Mismatch { problems, .. }
                if matches!(problems.as_slice(), [FileProblem::Changed { path: changed }] if *changed == path)),
            "{error}"
        );
        assert_eq!(listing(&copy), []);
    }

    #[test]
    fn a_copy_is_only_made_into_an_empty_directory() {
        let parent = generated(Mode::Mode0);
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(scratch.path().join("secret"), b"old").unwrap();
        let error = verify_copying(parent.path(), Some(scratch.path())).unwrap_err();
        assert!(
            matches!(&error, SecretsError::CopyTargetNotEmpty { dir, entry }
                if dir == scratch.path() && entry == "secret"),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("holds 'secret'; a copy is only made into an empty directory"));
        assert_eq!(
            std::fs::read(scratch.path().join("secret")).unwrap(),
            b"old"
        );
    }

    #[test]
    fn no_manifest_is_an_error_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify_dir(parent.path()),
            Err(SecretsError::NoManifest { path }) if path == Manifest::path(parent.path())
        ));
    }
}
