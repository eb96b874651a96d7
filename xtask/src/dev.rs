//! `cargo xtask dev`: a working server on this machine in one command, over
//! development secrets made on first use. Never touches /secrets and never
//! builds the AWS SDK.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use cryptoserver::layout::Mode;

use crate::process::{cargo, repo_root, run, target_dir};
use crate::secrets;

const WARNING_FILE: &str = "DEVELOPMENT-SECRETS-NOT-FOR-PRODUCTION.txt";

#[derive(clap::Args)]
pub struct DevArgs {
    /// MODE0 or MODE16 (MODE32 and MODE32X need 128 GiB: make them with `gen-secrets` on a real volume).
    #[arg(long, default_value = "MODE16")]
    mode: Mode,

    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
}

pub fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    if args.mode.same_files_as(Mode::Mode32) {
        bail!(
            "{} needs 128 GiB of secrets; for development use --mode MODE16 (the default) or MODE0",
            args.mode
        );
    }
    let dir = dev_secrets_dir(args.mode);
    std::fs::create_dir_all(dir.parent().expect("dev-secrets has a parent"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    secrets::make_quietly(args.mode, &dir)?;
    std::fs::write(
        dir.join(WARNING_FILE),
        "These are development secrets made by `cargo xtask dev` on a developer machine.\n\
         Never use them, or MACs made with them, in production.\n",
    )
    .with_context(|| format!("cannot mark {} as development secrets", dir.display()))?;

    run(cargo().args([
        "build",
        "--quiet",
        "--package",
        "cryptoserver",
        "--bin",
        "cryptoserver",
    ]))?;
    let server = target_dir().join("debug/cryptoserver");
    eprintln!(
        "Serving {} development secrets from {} on http://{}",
        args.mode,
        dir.display(),
        args.bind
    );
    eprintln!(
        "Try:  curl -s --data-binary 'hello world' 'http://{}/hmac?encoding=hex'",
        args.bind
    );
    eprintln!("Stop with Ctrl-C.");
    let error = Command::new(&server)
        .env("CRYPTOSERVER_MODE", args.mode.name())
        .env("CRYPTOSERVER_SECRETDIR", &dir)
        .env("CRYPTOSERVER_BIND", &args.bind)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .exec();
    Err(error).with_context(|| format!("cannot start {}", server.display()))
}

/// `./dev-secrets/mode16`: one directory per mode, so switching modes never
/// meets another mode's manifest.
fn dev_secrets_dir(mode: Mode) -> PathBuf {
    repo_root()
        .join("dev-secrets")
        .join(mode.name().to_ascii_lowercase())
}
