//! `cryptoserver-secrets`: generates, verifies and fingerprints a secrets directory on the
//! host itself, where there is no cargo (the image ships this binary).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cryptoserver::secrets::cli::{FingerprintArgs, GenerateArgs, SizeArgs, VerifyArgs};
use cryptoserver::secrets::generate::generate;
use cryptoserver::secrets::progress::ProgressOutput;
use cryptoserver::secrets::verify::{fingerprint, verify};

#[derive(Parser)]
#[command(
    name = "cryptoserver-secrets",
    version,
    about = "Generate cryptoserver's secrets (never overwriting one) and verify them against their manifest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write every missing secret file of a mode, then the manifest; resumes an interrupted run
    Generate(GenerateArgs),
    /// Re-hash every file of a secrets directory against its cryptoserver.manifest
    Verify(VerifyArgs),
    /// Print the secrets fingerprint (32 hex digits) from the cryptoserver.manifest alone, on stdout
    Fingerprint(FingerprintArgs),
    /// Print the bytes a mode's secret files hold together, on stdout (a hot copy needs at least this much)
    Size(SizeArgs),
}

fn main() -> ExitCode {
    // Summaries are for people (stderr); the fingerprint and the size are for scripts (stdout).
    let result = match Cli::parse().command {
        Command::Generate(args) => {
            generate(&args.into(), ProgressOutput::Stderr).map(|done| eprintln!("{done}"))
        }
        Command::Verify(args) => {
            verify(&args.into(), ProgressOutput::Stderr).map(|done| eprintln!("{done}"))
        }
        Command::Fingerprint(args) => {
            fingerprint(&args.dir, args.mode).map(|fingerprint| println!("{fingerprint}"))
        }
        Command::Size(args) => {
            println!("{}", args.mode.total_len());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cryptoserver-secrets: error: {error}");
            ExitCode::FAILURE
        }
    }
}
