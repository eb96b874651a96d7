//! `cryptoserver-secrets verify` / `cargo xtask verify-secrets`: re-hashes every
//! file of a secrets directory, in parallel, against its manifest. This is how a
//! MODE32 directory is checked: the server only checks MODE0 and MODE16 contents
//! at startup, because reading 128 GiB takes minutes.

use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::jobs;
use crate::layout::{Mode, MANIFEST_FILE_NAME};
use crate::manifest::{Manifest, ManifestFile};
use crate::progress::{count, throughput, Progress, ProgressOutput};
use crate::secret_dir::{CommandError, FileError};

/// Bytes read at a time while hashing.
const READ_CHUNK: usize = 1 << 20;
/// Problems listed one per line before the rest are only counted.
const PROBLEMS_SHOWN: usize = 20;

/// `verify`'s command line, shared by `cryptoserver-secrets` and `cargo xtask verify-secrets`.
#[derive(Clone, Debug, clap::Args)]
pub struct VerifyArgs {
    /// Secrets directory holding a `cryptoserver.manifest`.
    #[arg(long)]
    pub dir: PathBuf,

    /// Files read in parallel [default: the number of cores].
    #[arg(long, short = 'j')]
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
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: every file matches {MANIFEST_FILE_NAME} ({}, written {} by {}); read {}",
            self.dir.display(),
            count(self.files, &format!("{} file", self.mode)),
            self.manifest_created,
            self.manifest_tool,
            throughput(self.bytes, self.elapsed)
        )
    }
}

/// Re-hashes every file listed in the manifest of `args.dir`; fails listing
/// each file that is missing, unreadable, resized or changed.
pub fn verify(args: &VerifyArgs, output: ProgressOutput) -> Result<Verified, CommandError> {
    let dir = &args.dir;
    let manifest = Manifest::read(dir)
        .map_err(|error| CommandError(error.to_string()))?
        .ok_or_else(|| {
            CommandError(format!(
                "{}: not found, so there is nothing to verify against. Secrets made by hand (dd, Python) \
                 have none; `cryptoserver-secrets generate` on the complete directory writes one",
                Manifest::path(dir).display()
            ))
        })?;
    let bytes = manifest.files.iter().map(|file| file.size).sum();
    let progress = Progress::start("verifying", bytes, output);
    let problems = jobs::map(
        args.jobs.unwrap_or_else(jobs::default_jobs),
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

    let problems: Vec<String> = problems.into_iter().flatten().collect();
    if !problems.is_empty() {
        let mut report = format!(
            "{}: {} of the {} {} files do not match {MANIFEST_FILE_NAME}:",
            dir.display(),
            problems.len(),
            manifest.files.len(),
            manifest.mode()
        );
        for problem in problems.iter().take(PROBLEMS_SHOWN) {
            report.push_str("\n  ");
            report.push_str(problem);
        }
        if problems.len() > PROBLEMS_SHOWN {
            report.push_str(&format!(
                "\n  ... and {} more",
                problems.len() - PROBLEMS_SHOWN
            ));
        }
        report.push_str(
            "\nA changed secret breaks every MAC made with it: do not serve this directory until \
             the files are restored",
        );
        return Err(CommandError(report));
    }
    Ok(Verified {
        dir: dir.clone(),
        mode: manifest.mode(),
        files: manifest.files.len(),
        bytes,
        elapsed,
        manifest_created: manifest.created,
        manifest_tool: manifest.tool_version,
    })
}

/// What is wrong with one file, if anything.
fn check_file(dir: &Path, entry: &ManifestFile, buffer: &mut Vec<u8>) -> Option<String> {
    let path = dir.join(&entry.name);
    match hash_file(&path, buffer) {
        Err(error) if error.source.kind() == io::ErrorKind::NotFound => {
            Some(format!("{}: is missing", path.display()))
        }
        Err(error) => Some(error.to_string()),
        Ok((_, len)) if len != entry.size => Some(format!(
            "{}: is {len} bytes, the manifest says {}",
            path.display(),
            entry.size
        )),
        Ok((digest, _)) if hex::encode(digest) != entry.sha256 => Some(format!(
            "{}: content differs from its SHA-256 in the manifest",
            path.display()
        )),
        Ok(_) => None,
    }
}

/// SHA-256 and length of the file at `path`, read through `buffer`.
pub fn hash_file(path: &Path, buffer: &mut Vec<u8>) -> Result<([u8; 32], u64), FileError> {
    let mut file = File::open(path).map_err(FileError::at(path, "open"))?;
    buffer.resize(READ_CHUNK, 0);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    loop {
        match file.read(buffer) {
            Ok(0) => return Ok((hasher.finalize().into(), len)),
            Ok(read) => {
                hasher.update(&buffer[..read]);
                len += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(FileError::at(path, "read")(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GenerateArgs};
    use std::os::unix::fs::PermissionsExt;

    fn generated(mode: Mode) -> tempfile::TempDir {
        let parent = tempfile::tempdir().unwrap();
        let args = GenerateArgs {
            mode,
            dir: parent.path().to_owned(),
            jobs: None,
            owner: None,
        };
        generate(&args, ProgressOutput::Hidden).unwrap();
        parent
    }

    fn verify_dir(dir: &Path) -> Result<Verified, CommandError> {
        let args = VerifyArgs {
            dir: dir.to_owned(),
            jobs: None,
        };
        verify(&args, ProgressOutput::Hidden)
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
            error.0.contains("1 of the 1 MODE16 files do not match"),
            "{error}"
        );
        assert!(error.0.contains("0000: content differs"), "{error}");
    }

    #[test]
    fn missing_and_resized_files_are_named() {
        let parent = generated(Mode::Mode0);
        std::fs::remove_file(parent.path().join("secret")).unwrap();
        let error = verify_dir(parent.path()).unwrap_err();
        assert!(error.0.contains("secret: is missing"), "{error}");

        std::fs::write(parent.path().join("secret"), [7u8; 31]).unwrap();
        let error = verify_dir(parent.path()).unwrap_err();
        assert!(
            error
                .0
                .contains("secret: is 31 bytes, the manifest says 32"),
            "{error}"
        );
    }

    #[test]
    fn no_manifest_is_an_error_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        let error = verify_dir(parent.path()).unwrap_err();
        assert!(
            error.0.contains(MANIFEST_FILE_NAME) && error.0.contains("not found"),
            "{error}"
        );
    }
}
