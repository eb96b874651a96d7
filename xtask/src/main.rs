//! Operator and developer tasks: `cargo xtask <task>`; with no task, lists them.

use clap::{Parser, Subcommand};

mod aws;
mod bench;
mod ci;
mod dev;
mod dist;
mod image;
mod process;
mod secrets;

#[derive(Parser)]
#[command(name = "cargo xtask", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run a server on ./dev-secrets (development secrets, made if absent) and print a curl example
    Dev(dev::DevArgs),
    /// Run everything CI runs: install the test tools, build, run every test suite
    Ci,
    /// Generate the secrets of a mode in a directory (resumable; never overwrites a secret)
    GenSecrets(cryptoserver::secrets::cli::GenerateArgs),
    /// Re-hash every secret file of a directory against its cryptoserver.manifest
    VerifySecrets(cryptoserver::secrets::cli::VerifyArgs),
    /// Measure speed goals against baselines measured in the same run
    Bench(bench::BenchArgs),
    /// Print a new bearer token and the line that allows it in CRYPTOSERVER_TOKENS_FILE
    GenToken,
    /// Build the release tarball the Packer image installs (binaries, systemd units, first-boot script)
    Dist(dist::DistArgs),
    /// Build the sealed image as a bootable disk in target/image, as Packer builds the AMI (root; docs/image.md)
    Image(image::ImageArgs),
    /// Check, read-only, that an EC2 instance or an Auto Scaling pool is sealed (runs xtask-aws; see `cargo xtask audit --help`)
    Audit(aws::AwsArgs),
    /// Seal an EC2 instance, then audit it (runs xtask-aws; see `cargo xtask seal --help`)
    Seal(aws::AwsArgs),
    /// Snapshot a verified origin's secrets volume for a pool, once (runs xtask-aws; see `cargo xtask snapshot --help`)
    Snapshot(aws::AwsArgs),
    /// One row per host of an instance or Auto Scaling pool: state, status checks, console ready line, /readyz (runs xtask-aws; see `cargo xtask status --help`)
    Status(aws::AwsArgs),
    /// Push a signed clients document to hosts or to every InService replica of a pool: `clients push` (runs xtask-aws; see `cargo xtask clients push --help`)
    Clients(aws::AwsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Dev(args) => dev::run_dev(args),
        Task::Ci => ci::run_ci(),
        Task::GenSecrets(args) => secrets::gen_secrets(args),
        Task::VerifySecrets(args) => secrets::verify_secrets(args),
        Task::Bench(args) => bench::run_bench(&args),
        Task::Dist(args) => dist::run_dist(&args),
        Task::Image(args) => image::run_image(&args),
        Task::Audit(args) => aws::forward("audit", &args),
        Task::Seal(args) => aws::forward("seal", &args),
        Task::Snapshot(args) => aws::forward("snapshot", &args),
        Task::Status(args) => aws::forward("status", &args),
        Task::Clients(args) => aws::forward("clients", &args),
        Task::GenToken => {
            let (token, line) = cryptoserver::access::generate_token()
                .map_err(|error| anyhow::anyhow!("the OS random generator failed: {error}"))?;
            eprintln!("Give the token to one client, keep it secret; it is not stored anywhere:");
            println!("{token}");
            eprintln!("Append this line (its SHA-256) to the file CRYPTOSERVER_TOKENS_FILE names:");
            println!("{line}");
            Ok(())
        }
    }
}
