//! `cargo xtask seal`, `audit`, `snapshot`, `status` and `clients` run the `xtask-aws` crate, so the AWS
//! SDK (minutes to compile) is built only by the commands that need it.

use std::ffi::OsString;
use std::process::Command;

use anyhow::Context;

use crate::process::{cargo, target_dir};

/// Everything after `seal`, `audit`, `snapshot`, `status` or `clients`, `--help` included, goes to xtask-aws as is.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct AwsArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs `xtask-aws <subcommand> <args>` and exits with its status (0, 1 or 2).
///
/// It is built as `cargo xtask ci` builds it, with the whole workspace: built
/// alone, its dependencies resolve to other features and the AWS SDK would be
/// compiled a second time.
pub fn forward(subcommand: &str, args: &AwsArgs) -> anyhow::Result<()> {
    let binary = target_dir().join("debug/xtask-aws");
    if !binary.exists() {
        eprintln!("Building xtask-aws first: the AWS SDK takes several minutes to compile, once.");
    }
    let built = cargo()
        .args(["build", "--quiet", "--workspace", "--bins"])
        .status()
        .context("cannot start cargo to build xtask-aws")?;
    anyhow::ensure!(
        built.success(),
        "cannot build xtask-aws: see cargo's messages above"
    );
    let status = Command::new(&binary)
        .arg(subcommand)
        .args(&args.args)
        .status()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(2))
}
