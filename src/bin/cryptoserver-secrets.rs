//! `cryptoserver-secrets`: generates and verifies a secrets directory on the
//! host itself, where there is no cargo (the image ships this binary).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cryptoserver::secrets::cli::{GenerateArgs, VerifyArgs};
use cryptoserver::secrets::generate::generate;
use cryptoserver::secrets::progress::ProgressOutput;
use cryptoserver::secrets::verify::verify;

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
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Generate(args) => {
            generate(&args.into(), ProgressOutput::Stderr).map(|done| done.to_string())
        }
        Command::Verify(args) => {
            verify(&args.into(), ProgressOutput::Stderr).map(|done| done.to_string())
        }
    };
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cryptoserver-secrets: error: {error}");
            ExitCode::FAILURE
        }
    }
}
