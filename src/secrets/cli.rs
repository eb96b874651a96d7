//! The secret tools' command-line arguments, shared by `cryptoserver-secrets`
//! (on the host) and `cargo xtask gen-secrets|verify-secrets`; the domain
//! modules take plain options and know nothing of clap.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use super::generate::GenerateOptions;
use super::verify::VerifyOptions;
use crate::layout::Mode;

/// `generate`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    /// Mode to generate the secrets of: MODE0 (file `secret`, 32 bytes), MODE16 (file `0000`,
    /// 2 MiB), MODE32 or MODE32X (files `0000`..`ffff`, 128 GiB); case-insensitive, as
    /// CRYPTOSERVER_MODE.
    #[arg(long)]
    pub mode: Mode,

    /// Secrets directory to fill; created with mode 0700 if absent. Complete files in it are
    /// kept as they are.
    #[arg(long)]
    pub dir: PathBuf,

    /// Secrets computed in parallel [default: the number of cores]; each job has 4 threads
    /// writing its files, so the disk always has files in flight.
    #[arg(long, short = 'j')]
    pub jobs: Option<NonZeroUsize>,

    /// User to own the directory and the files: the user the server runs as [default: the
    /// user running this command].
    #[arg(long)]
    pub owner: Option<String>,
}

impl From<GenerateArgs> for GenerateOptions {
    fn from(args: GenerateArgs) -> Self {
        GenerateOptions {
            mode: args.mode,
            dir: args.dir,
            jobs: args.jobs,
            owner: args.owner,
        }
    }
}

/// `verify`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct VerifyArgs {
    /// Secrets directory holding a `cryptoserver.manifest`.
    #[arg(long)]
    pub dir: PathBuf,

    /// Files read in parallel [default: the number of cores].
    #[arg(long, short = 'j')]
    pub jobs: Option<NonZeroUsize>,

    /// Also copy every file, as it is read, into this empty directory (created 0700 if absent):
    /// files 0400, the manifest last, only once every file matched. The first-boot script's hot
    /// copy on instance storage.
    #[arg(long, value_name = "DIR")]
    pub copy_to: Option<PathBuf>,

    /// User to own the copy: the user the server runs as [default: the user running this
    /// command].
    #[arg(long, requires = "copy_to")]
    pub owner: Option<String>,
}

impl From<VerifyArgs> for VerifyOptions {
    fn from(args: VerifyArgs) -> Self {
        VerifyOptions {
            dir: args.dir,
            jobs: args.jobs,
            copy_to: args.copy_to,
            owner: args.owner,
        }
    }
}

/// `fingerprint`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct FingerprintArgs {
    /// Secrets directory holding a `cryptoserver.manifest`.
    #[arg(long)]
    pub dir: PathBuf,

    /// Fail unless the manifest records secrets of this mode (case-insensitive, as
    /// CRYPTOSERVER_MODE).
    #[arg(long)]
    pub mode: Option<Mode>,
}

/// `size`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct SizeArgs {
    /// The mode (case-insensitive, as CRYPTOSERVER_MODE).
    #[arg(long)]
    pub mode: Mode,
}
