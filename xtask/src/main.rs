//! Operator and developer tasks: `cargo xtask <task>`; with no task, lists them.

use clap::{Parser, Subcommand};

mod ci;
mod process;

#[derive(Parser)]
#[command(name = "cargo xtask", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run everything CI runs: install the test tools, build, run every test suite
    Ci,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Ci => ci::run_ci(),
    }
}
