//! `cargo xtask gen-secrets` and `cargo xtask verify-secrets`: the library's
//! generator and verifier, exactly as the host's `cryptoserver-secrets` runs them.

use cryptoserver::generate::{generate, GenerateArgs};
use cryptoserver::progress::ProgressOutput;
use cryptoserver::verify::{verify, VerifyArgs};

pub fn gen_secrets(args: &GenerateArgs) -> anyhow::Result<()> {
    eprintln!("{}", generate(args, ProgressOutput::Stderr)?);
    Ok(())
}

pub fn verify_secrets(args: &VerifyArgs) -> anyhow::Result<()> {
    eprintln!("{}", verify(args, ProgressOutput::Stderr)?);
    Ok(())
}
