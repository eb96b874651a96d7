//! `cargo xtask audit` and `cargo xtask seal`: prove an EC2 instance is sealed,
//! or make it so, through the EC2 API. Exit status: 0 when every audit check
//! passes, 1 when one fails, 2 when the audit or the seal could not run.

use std::process::ExitCode;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::ProvideCredentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use clap::{Args, Parser, Subcommand};

mod audit;
mod ec2;
mod facts;
mod plan;
mod rules;

use ec2::Ec2;
use facts::{HostFacts, VolumeChoice};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, read-only, that an instance is sealed: one PASS or FAIL line per check
    Audit(Target),
    /// Seal an instance (close TCP port 22, delete its key pair, require IMDSv2 with
    /// hop limit 1, protect it and its secrets volume, tag it), then audit it
    Seal {
        #[command(flatten)]
        target: Target,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct Target {
    /// The EC2 instance, e.g. i-0123456789abcdef0
    #[arg(long)]
    instance_id: String,
    /// AWS region (default: AWS_REGION or the profile's region)
    #[arg(long)]
    region: Option<String>,
    /// EC2 API endpoint, for LocalStack or moto (default: AWS's own)
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// The EBS volume holding the secrets (default: the only non-root volume)
    #[arg(long, conflicts_with = "secrets_device")]
    secrets_volume: Option<String>,
    /// The device name the secrets volume is attached as, e.g. /dev/sdf
    #[arg(long)]
    secrets_device: Option<String>,
    /// The cryptoserver port, whose rules are never touched
    #[arg(long, default_value_t = 8080, value_parser = service_port)]
    port: u16,
}

fn service_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(rules::SSH_PORT) => {
            Err("the service port cannot be 22: a sealed host has no port 22 open".into())
        }
        Ok(0) | Err(_) => Err(format!("{text:?} is not a TCP port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

impl Target {
    fn volume_choice(&self) -> VolumeChoice {
        match (&self.secrets_volume, &self.secrets_device) {
            (Some(id), _) => VolumeChoice::VolumeId(id.clone()),
            (None, Some(device)) => VolumeChoice::Device(device.clone()),
            (None, None) => VolumeChoice::OnlyDataVolume,
        }
    }

    async fn connect(&self) -> anyhow::Result<Ec2> {
        // The SDK's default HTTPS client would build aws-lc (a long C build); ring does the job.
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https);
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "endpoint {url:?} (from --endpoint-url or AWS_ENDPOINT_URL) is not an \
                     http:// or https:// URL, e.g. http://127.0.0.1:5000"
                );
            }
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        let Some(region) = config.region() else {
            anyhow::bail!("no AWS region: pass --region or set AWS_REGION");
        };
        // Asked here so that missing credentials read as such, not as a failed API call.
        if let Some(credentials) = config.credentials_provider() {
            credentials.provide_credentials().await.map_err(|error| {
                anyhow::anyhow!(
                    "no usable AWS credentials: {}; set AWS_PROFILE, run `aws sso login`, \
                     or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    ec2::causes(&error)
                )
            })?;
        }
        let target = match &self.endpoint_url {
            Some(url) => format!("the EC2 endpoint {url}"),
            None => format!("EC2 in {region}"),
        };
        Ok(Ec2 {
            client: aws_sdk_ec2::Client::new(&config),
            target,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime starts");
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Audit(target) => run_audit(&target).await,
            Command::Seal { target, dry_run } => run_seal(&target, dry_run).await,
        }
    });
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::from(2)
    })
}

async fn run_audit(target: &Target) -> anyhow::Result<ExitCode> {
    let ec2 = target.connect().await?;
    let facts = ec2
        .host_facts(&target.instance_id, &target.volume_choice())
        .await?;
    Ok(report_audit(&facts, target.port))
}

/// Prints the checks; the exit status says whether all passed.
fn report_audit(facts: &HostFacts, service_port: u16) -> ExitCode {
    println!("Audit of {}:", facts.instance_id);
    let checks = audit::audit(facts, service_port);
    for check in &checks {
        println!("{check}");
    }
    if let Some(profile) = &facts.instance_profile {
        println!(
            "note: instance profile {profile} is attached: if its role allows SSM Session Manager \
             and the SSM agent runs, that is a way in that no port rule closes"
        );
    }
    let failed = checks.iter().filter(|check| !check.passed()).count();
    if failed == 0 {
        println!(
            "{} is sealed: all {} checks pass",
            facts.instance_id,
            checks.len()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "{} is NOT sealed: {failed} of {} checks fail",
            facts.instance_id,
            checks.len()
        );
        ExitCode::from(1)
    }
}

async fn run_seal(target: &Target, dry_run: bool) -> anyhow::Result<ExitCode> {
    let ec2 = target.connect().await?;
    let instance_id = &target.instance_id;
    let facts = ec2.host_facts(instance_id, &target.volume_choice()).await?;
    let plan = plan::plan_seal(&facts);
    for note in &plan.left_alone {
        println!("note: {note}");
    }
    if plan.changes.is_empty() {
        println!("Nothing to do: seal has already made every change it can on {instance_id}.");
    } else {
        println!("Plan for {instance_id} ({} changes):", plan.changes.len());
        for change in &plan.changes {
            println!("  - {change}");
        }
    }
    if dry_run {
        println!("--dry-run: nothing was changed.");
        return Ok(ExitCode::SUCCESS);
    }

    let sealed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    for (done, change) in plan.changes.iter().enumerate() {
        println!("[{}/{}] {change}", done + 1, plan.changes.len());
        if let Err(error) = ec2.apply(instance_id, change, &sealed_at).await {
            eprintln!("error: {error:#}");
            eprintln!("Applied ({done}):");
            for applied in &plan.changes[..done] {
                eprintln!("  - {applied}");
            }
            eprintln!("Not applied ({}):", plan.changes.len() - done);
            for pending in &plan.changes[done..] {
                eprintln!("  - {pending}");
            }
            eprintln!("Run the same seal command again once the cause is fixed: it plans from what is in place and completes the rest.");
            return Ok(ExitCode::from(2));
        }
    }
    println!();
    let facts = ec2.host_facts(instance_id, &target.volume_choice()).await?;
    Ok(report_audit(&facts, target.port))
}
