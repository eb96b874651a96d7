//! `cargo xtask gen-secrets` and `cargo xtask verify-secrets`: the library's
//! generator and verifier, exactly as the host's `cryptoserver-secrets` runs them.

use cryptoserver::secrets::cli::{GenerateArgs, VerifyArgs};
use cryptoserver::secrets::generate::generate;
use cryptoserver::secrets::progress::ProgressOutput;
use cryptoserver::secrets::verify::verify;

pub fn gen_secrets(args: GenerateArgs) -> anyhow::Result<()> {
    eprintln!("{}", generate(&args.into(), ProgressOutput::Stderr)?);
    Ok(())
}

pub fn verify_secrets(args: VerifyArgs) -> anyhow::Result<()> {
    eprintln!("{}", verify(&args.into(), ProgressOutput::Stderr)?);
    Ok(())
}
