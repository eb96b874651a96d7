//! `cryptoserver.manifest`: what the generator wrote, so a directory can be checked later.
//!
//! This module owns the format. The generator writes it last and atomically
//! (see `secrets::generate`); the server reads it when present (a manifest of
//! another mode is a startup error) and `verify` re-hashes every file against it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::{Mode, UnknownMode, MANIFEST_FILE_NAME};

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Mode name as [`Mode::name`] writes it.
    pub mode: String,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    /// `cryptoserver <version>` of the tool that generated the files.
    pub tool_version: String,
    /// Every file of the mode, in [`Mode::file_names`] order.
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the file's content.
    pub sha256: String,
}

/// What the fingerprint hashes first, so it can never equal another hash of the same bytes.
const FINGERPRINT_LABEL: &str = "cryptoserver secrets fingerprint v1\n";

/// A short, stable name for one set of secrets: the first 16 bytes of the
/// SHA-256 of the manifest's canonical content (the mode, then each file's
/// name, size and SHA-256; not the creation time or the tool). Hosts serving
/// the same secrets show the same fingerprint. It reveals nothing usable about
/// the keys: it is a hash of hashes of 2 MiB of random bytes per file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A manifest that could not be read, or whose content does not fit its mode.
#[derive(Debug)]
pub enum ManifestError {
    Io(PathBuf, io::Error),
    Parse(PathBuf, serde_json::Error),
    UnsupportedVersion(PathBuf, u32),
    UnknownMode(PathBuf, UnknownMode),
    /// The manifest lists another number of files than its mode has.
    FileCount {
        path: PathBuf,
        mode: Mode,
        listed: usize,
    },
    /// An entry's name or size is not the mode's file at that position.
    WrongEntry {
        path: PathBuf,
        name: String,
        size: u64,
        expected_name: String,
        expected_size: u64,
    },
    /// An entry's SHA-256 is not 64 lower-case hex digits.
    BadDigest {
        path: PathBuf,
        name: String,
    },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::Io(path, error) => write!(f, "{}: cannot read manifest: {error}", path.display()),
            ManifestError::Parse(path, error) => {
                write!(f, "{}: manifest is not valid JSON: {error}", path.display())
            }
            ManifestError::UnsupportedVersion(path, version) => write!(
                f,
                "{}: manifest format version {version} is not supported (this build reads version {FORMAT_VERSION}); use a matching cryptoserver",
                path.display()
            ),
            ManifestError::UnknownMode(path, error) => {
                write!(f, "{}: invalid manifest: {error}", path.display())
            }
            ManifestError::FileCount { path, mode, listed } => write!(
                f,
                "{}: invalid manifest: {mode} needs {} files but the manifest lists {listed}",
                path.display(),
                mode.file_count()
            ),
            ManifestError::WrongEntry {
                path,
                name,
                size,
                expected_name,
                expected_size,
            } => write!(
                f,
                "{}: invalid manifest: entry '{name}' ({size} bytes) should be '{expected_name}' ({expected_size} bytes)",
                path.display()
            ),
            ManifestError::BadDigest { path, name } => write!(
                f,
                "{}: invalid manifest: entry '{name}' has no valid lower-case hex SHA-256",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManifestError::Io(_, error) => Some(error),
            ManifestError::Parse(_, error) => Some(error),
            _ => None,
        }
    }
}

impl Manifest {
    /// Path of the manifest inside a secrets directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE_NAME)
    }

    /// Reads the manifest of `dir`; `Ok(None)` when the directory has none
    /// (secrets made by hand, with the original design's `dd` or Python recipes).
    pub fn read(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = Self::path(dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ManifestError::Io(path, error)),
        };
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|error| ManifestError::Parse(path.clone(), error))?;
        manifest.check_shape(&path)?;
        Ok(Some(manifest))
    }

    /// The manifest of a complete `mode` directory whose files have these
    /// SHA-256 digests, in [`Mode::file_names`] order, created now by this build.
    pub fn describe(mode: Mode, digests: &[[u8; 32]]) -> Manifest {
        assert_eq!(
            digests.len(),
            mode.file_count(),
            "one digest per file of {mode}"
        );
        Manifest {
            format_version: FORMAT_VERSION,
            mode: mode.name().to_owned(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            tool_version: format!("cryptoserver {}", env!("CARGO_PKG_VERSION")),
            files: mode
                .file_names()
                .zip(digests)
                .map(|(name, digest)| ManifestFile {
                    name,
                    size: mode.file_len(),
                    sha256: hex::encode(digest),
                })
                .collect(),
        }
    }

    /// The manifest as it is stored: pretty JSON, one field per line.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        json.push(b'\n');
        json
    }

    /// The fingerprint of the secrets the manifest describes: SHA-256 of
    /// `cryptoserver secrets fingerprint v1\n`, `{mode}\n`, then `{name} {size} {sha256}\n`
    /// for each file in order, cut to its first 16 bytes.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_LABEL);
        hasher.update(format!("{}\n", self.mode));
        for file in &self.files {
            hasher.update(format!("{} {} {}\n", file.name, file.size, file.sha256));
        }
        let digest = hasher.finalize();
        Fingerprint(digest[..16].try_into().expect("SHA-256 is 32 bytes"))
    }

    /// The mode the manifest describes.
    pub fn mode(&self) -> Mode {
        self.mode
            .parse()
            .expect("checked when the manifest was read")
    }

    /// A manifest must list exactly the files of its mode, with their sizes, in order.
    fn check_shape(&self, path: &Path) -> Result<(), ManifestError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(
                path.to_owned(),
                self.format_version,
            ));
        }
        let path = path.to_owned();
        let mode: Mode = match self.mode.parse() {
            Ok(mode) => mode,
            Err(error) => return Err(ManifestError::UnknownMode(path, error)),
        };
        if self.files.len() != mode.file_count() {
            return Err(ManifestError::FileCount {
                path,
                mode,
                listed: self.files.len(),
            });
        }
        for (expected_name, file) in mode.file_names().zip(&self.files) {
            if file.name != expected_name || file.size != mode.file_len() {
                return Err(ManifestError::WrongEntry {
                    path,
                    name: file.name.clone(),
                    size: file.size,
                    expected_name,
                    expected_size: mode.file_len(),
                });
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(ManifestError::BadDigest {
                    path,
                    name: file.name.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_manifest_reads_back() {
        let parent = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(parent.path()).unwrap(), None);

        let manifest = Manifest::describe(Mode::Mode16, &[[0xab; 32]]);
        std::fs::write(Manifest::path(parent.path()), manifest.to_json()).unwrap();
        let read = Manifest::read(parent.path()).unwrap().unwrap();
        assert_eq!(read, manifest);
        assert_eq!(read.mode(), Mode::Mode16);
        assert_eq!(read.files[0].name, "0000");
        assert_eq!(read.files[0].size, 2_097_152);
        assert_eq!(read.files[0].sha256, "ab".repeat(32));
        assert!(read.tool_version.starts_with("cryptoserver "));
        assert!(
            read.created.ends_with('Z') && read.created.len() == 20,
            "{}",
            read.created
        );
    }

    #[test]
    fn a_mode32x_manifest_names_its_mode_over_mode32s_files() {
        let parent = tempfile::tempdir().unwrap();
        let manifest = Manifest::describe(Mode::Mode32x, &vec![[7; 32]; 65_536]);
        assert_eq!(manifest.mode, "MODE32X");
        let mode32 = Manifest::describe(Mode::Mode32, &vec![[7; 32]; 65_536]);
        assert_eq!(manifest.files, mode32.files);
        std::fs::write(Manifest::path(parent.path()), manifest.to_json()).unwrap();
        let read = Manifest::read(parent.path()).unwrap().unwrap();
        assert_eq!(read.mode(), Mode::Mode32x);
    }

    #[test]
    fn the_fingerprint_names_the_secrets_not_the_run() {
        let manifest = Manifest::describe(Mode::Mode16, &[[0xab; 32]]);
        let mut later = manifest.clone();
        later.created = "2030-01-01T00:00:00Z".to_owned();
        later.tool_version = "cryptoserver 9.9.9".to_owned();
        assert_eq!(later.fingerprint(), manifest.fingerprint());
        let other = Manifest::describe(Mode::Mode16, &[[0xac; 32]]);
        assert_ne!(other.fingerprint(), manifest.fingerprint());
        // Written out: the label, the mode, one line per file.
        let text = format!(
            "{FINGERPRINT_LABEL}MODE16\n0000 2097152 {}\n",
            "ab".repeat(32)
        );
        assert_eq!(
            manifest.fingerprint().to_string(),
            hex::encode(&Sha256::digest(text)[..16])
        );
    }

    fn read_back(manifest: &Manifest) -> ManifestError {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(Manifest::path(parent.path()), manifest.to_json()).unwrap();
        Manifest::read(parent.path()).unwrap_err()
    }

    #[test]
    fn a_manifest_that_does_not_fit_its_mode_is_invalid() {
        let mut manifest = Manifest::describe(Mode::Mode16, &[[1; 32]]);
        manifest.mode = "MODE32".to_owned();
        assert!(matches!(
            read_back(&manifest),
            ManifestError::FileCount {
                mode: Mode::Mode32,
                listed: 1,
                ..
            }
        ));

        let mut manifest = Manifest::describe(Mode::Mode16, &[[1; 32]]);
        manifest.files[0].name = "0001".to_owned();
        assert!(
            matches!(read_back(&manifest), ManifestError::WrongEntry { name, .. } if name == "0001")
        );

        let mut manifest = Manifest::describe(Mode::Mode16, &[[1; 32]]);
        manifest.files[0].sha256 = "AB".repeat(32);
        assert!(matches!(
            read_back(&manifest),
            ManifestError::BadDigest { .. }
        ));

        let mut manifest = Manifest::describe(Mode::Mode16, &[[1; 32]]);
        manifest.format_version = 2;
        assert!(matches!(
            read_back(&manifest),
            ManifestError::UnsupportedVersion(_, 2)
        ));
    }
}
