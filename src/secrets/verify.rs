//! `cryptoserver-secrets verify` / `cargo xtask verify-secrets`: re-hashes every
//! file of a secrets directory, in parallel, against its manifest. This is how a
//! MODE32 directory is checked: the server only checks MODE0 and MODE16 contents
//! at startup, because reading 128 GiB takes minutes.

use std::convert::Infallible;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{FileProblem, SecretsError};
use super::jobs;
use super::progress::{count, throughput, Progress, ProgressOutput};
use super::secret_dir::hash_file;
use crate::layout::{Mode, MANIFEST_FILE_NAME};
use crate::manifest::{Fingerprint, Manifest, ManifestFile};

/// What to verify, and with how many threads.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Secrets directory holding a `cryptoserver.manifest`.
    pub dir: PathBuf,
    /// Files read in parallel; `None` for one per core.
    pub jobs: Option<NonZeroUsize>,
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
        )
    }
}

/// Re-hashes every file listed in the manifest of `options.dir`; fails listing
/// each file that is missing, unreadable, resized or changed.
pub fn verify(options: &VerifyOptions, output: ProgressOutput) -> Result<Verified, SecretsError> {
    let dir = &options.dir;
    let manifest = Manifest::read(dir)?.ok_or_else(|| SecretsError::NoManifest {
        path: Manifest::path(dir),
    })?;
    let bytes = manifest.files.iter().map(|file| file.size).sum();
    let progress = Progress::start("verifying", bytes, output);
    let problems = jobs::map(
        options.jobs.unwrap_or_else(jobs::default_jobs),
        manifest.files.len(),
        Vec::new,
        |buffer, index| {
            let entry = &manifest.files[index];
            let problem = check_file(dir, entry, buffer);
            progress.add(entry.size);
            Ok::<_, Infallible>(problem)
        },
    )
    .unwrap_or_else(|never| match never {});
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
    Ok(Verified {
        dir: dir.clone(),
        mode: manifest.mode(),
        files: manifest.files.len(),
        bytes,
        elapsed,
        fingerprint: manifest.fingerprint(),
        manifest_created: manifest.created,
        manifest_tool: manifest.tool_version,
    })
}

/// What is wrong with one file, if anything.
fn check_file(dir: &Path, entry: &ManifestFile, buffer: &mut Vec<u8>) -> Option<FileProblem> {
    let path = dir.join(&entry.name);
    match hash_file(&path, buffer) {
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
    }
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
        let options = VerifyOptions {
            dir: dir.to_owned(),
            jobs: None,
        };
        verify(&options, ProgressOutput::Hidden)
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
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut content = std::fs::read(&path).unwrap();
        content[12345] ^= 1;
        std::fs::write(&path, content).unwrap();
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
    fn no_manifest_is_an_error_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify_dir(parent.path()),
            Err(SecretsError::NoManifest { path }) if path == Manifest::path(parent.path())
        ));
    }
}
