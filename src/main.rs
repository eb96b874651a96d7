use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use cryptoserver::config::{Config, LogFormat};
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line, whatever RUST_LOG says: clap's first paragraph names the
            // value and the valid ones (on its second line for a list of choices).
            let text = error.to_string();
            let first_paragraph: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|line| !line.is_empty())
                .collect();
            eprintln!("cryptoserver: {}", first_paragraph.join(" "));
            return ExitCode::from(2);
        }
    };
    if let Err(error) = init_logging(config.log_format) {
        let value = std::env::var_os("RUST_LOG").unwrap_or_default();
        eprintln!(
            "cryptoserver: error: invalid RUST_LOG '{}': {error}; try RUST_LOG=info",
            value.to_string_lossy()
        );
        return ExitCode::from(2);
    }
    match cryptoserver::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cryptoserver: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// As the original design has it: no log output unless RUST_LOG is set.
fn init_logging(format: LogFormat) -> Result<(), ParseError> {
    let Some(directives) = std::env::var_os("RUST_LOG") else {
        return Ok(());
    };
    let filter = EnvFilter::try_new(directives.to_string_lossy())?;
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logger.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logger.json().with_current_span(true).init(),
    }
    Ok(())
}
