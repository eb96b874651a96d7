//! `cargo xtask gen-secrets` and `cargo xtask verify-secrets`: the library's
//! generator and verifier, exactly as the host's `cryptoserver-secrets` runs them;
//! and the development secrets other tasks make with the same generator.

use std::path::Path;

use cryptoserver::layout::Mode;
use cryptoserver::secrets::cli::{GenerateArgs, VerifyArgs};
use cryptoserver::secrets::generate::{generate, GenerateOptions};
use cryptoserver::secrets::progress::ProgressOutput;
use cryptoserver::secrets::verify::verify;

pub fn gen_secrets(args: GenerateArgs) -> anyhow::Result<()> {
    eprintln!("{}", generate(&args.into(), ProgressOutput::Stderr)?);
    Ok(())
}

/// The secrets of `mode` in `dir`, made where missing, silently: the
/// development secrets of `cargo xtask dev` and of the benchmarks.
pub fn make_quietly(mode: Mode, dir: &Path) -> anyhow::Result<()> {
    generate(
        &GenerateOptions {
            mode,
            dir: dir.to_owned(),
            jobs: None,
            owner: None,
        },
        ProgressOutput::Hidden,
    )?;
    Ok(())
}

pub fn verify_secrets(args: VerifyArgs) -> anyhow::Result<()> {
    eprintln!("{}", verify(&args.into(), ProgressOutput::Stderr)?);
    Ok(())
}
