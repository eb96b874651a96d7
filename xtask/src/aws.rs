//! `cargo xtask seal`, `audit` and `snapshot` run the `xtask-aws` crate, so the AWS
//! SDK (minutes to compile) is built only by the commands that need it.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;

use crate::process::{cargo, target_dir};

/// Everything after `seal`, `audit` or `snapshot`, `--help` included, goes to xtask-aws as is.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct AwsArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs `xtask-aws <subcommand> <args>` and exits with its status (0, 1 or 2).
pub fn forward(subcommand: &str, args: &AwsArgs) -> anyhow::Result<()> {
    if !built_binary().exists() {
        // `cargo run --quiet` shows no progress: say why nothing happens for minutes.
        eprintln!("Building xtask-aws first: the AWS SDK takes several minutes to compile, once.");
    }
    let status = cargo()
        .args(["run", "--quiet", "--package", "xtask-aws", "--", subcommand])
        .args(&args.args)
        .status()
        .context("cannot start cargo to run xtask-aws")?;
    std::process::exit(status.code().unwrap_or(2))
}

/// Where `cargo run` puts the binary.
fn built_binary() -> PathBuf {
    target_dir().join("debug/xtask-aws")
}
