//! `cryptoserver.manifest`: what the generator wrote, so a directory can be checked later.
//!
//! The generator writes it last and atomically; the server reads it when present
//! (a manifest of another mode is a startup error) and `verify-secrets` re-hashes
//! every file against it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{Mode, MANIFEST_FILE_NAME};

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

/// A manifest that could not be read, or that does not describe its directory's mode.
#[derive(Debug)]
pub enum ManifestError {
    Io(PathBuf, io::Error),
    Parse(PathBuf, serde_json::Error),
    UnsupportedVersion(PathBuf, u32),
    Invalid(PathBuf, String),
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
            ManifestError::Invalid(path, why) => write!(f, "{}: invalid manifest: {why}", path.display()),
        }
    }
}

impl std::error::Error for ManifestError {}

impl Manifest {
    /// Path of the manifest inside a secrets directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE_NAME)
    }

    /// Reads the manifest of `dir`; `Ok(None)` when the directory has none
    /// (secrets made the seed's way, with `dd` or Python).
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
        let invalid = |why: String| Err(ManifestError::Invalid(path.to_owned(), why));
        let mode: Mode = match self.mode.parse() {
            Ok(mode) => mode,
            Err(error) => return invalid(error.to_string()),
        };
        if self.files.len() != mode.file_count() {
            return invalid(format!(
                "{mode} needs {} files but the manifest lists {}",
                mode.file_count(),
                self.files.len()
            ));
        }
        for (expected_name, file) in mode.file_names().zip(&self.files) {
            if file.name != expected_name || file.size != mode.file_len() {
                return invalid(format!(
                    "entry '{}' ({} bytes) should be '{expected_name}' ({} bytes)",
                    file.name,
                    file.size,
                    mode.file_len()
                ));
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return invalid(format!(
                    "entry '{}' has no valid lower-case hex SHA-256",
                    file.name
                ));
            }
        }
        Ok(())
    }
}
