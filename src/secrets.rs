//! The secret tools (`cryptoserver-secrets generate|verify`, `cargo xtask
//! gen-secrets|verify-secrets`): fill a secrets directory for a mode without
//! ever losing a secret, and check one against its manifest.
//!
//! - [`generate`]: the generator; it alone writes secrets and manifests.
//! - [`verify`]: re-hashes every file against the manifest.
//! - [`secret_dir`]: a locked directory written only by creating new files durably.
//! - [`jobs`], [`progress`]: parallel work over files, and how it is reported.
//! - [`cli`]: the command-line arguments both binaries share.
//! - `error`: why a run stopped, as [`SecretsError`].

pub mod cli;
mod error;
pub mod generate;
pub mod jobs;
pub mod progress;
pub mod secret_dir;
pub mod verify;

pub use error::{FileError, FileProblem, SecretsError, WrongFile};
