//! `cargo xtask gen-secrets` and `cargo xtask verify-secrets`: the library's
//! generator and verifier, exactly as the host's `cryptoserver-secrets` runs them;
//! and the development secrets other tasks make with the same generator.

use std::path::Path;

use cryptoserver::generate::{generate, GenerateArgs};
use cryptoserver::layout::Mode;
use cryptoserver::progress::ProgressOutput;
use cryptoserver::verify::{verify, VerifyArgs};

pub fn gen_secrets(args: &GenerateArgs) -> anyhow::Result<()> {
    eprintln!("{}", generate(args, ProgressOutput::Stderr)?);
    Ok(())
}

/// The secrets of `mode` in `dir`, made where missing, silently: the
/// development secrets of `cargo xtask dev` and of the benchmarks.
pub fn make_quietly(mode: Mode, dir: &Path) -> anyhow::Result<()> {
    generate(
        &GenerateArgs {
            mode,
            dir: dir.to_owned(),
            jobs: None,
            owner: None,
        },
        ProgressOutput::Hidden,
    )?;
    Ok(())
}

pub fn verify_secrets(args: &VerifyArgs) -> anyhow::Result<()> {
    eprintln!("{}", verify(args, ProgressOutput::Stderr)?);
    Ok(())
}
