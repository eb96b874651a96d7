//! `cargo xtask audit`, `seal`, `snapshot`, `status` and `clients push`: prove an EC2
//! instance or an Auto Scaling pool is sealed, seal an instance, snapshot a verified
//! origin's secrets, show every host's state, push a signed clients document to every
//! host, through the EC2 and Auto Scaling APIs. Exit status: 0 when every audit check
//! passes (or the snapshot is done, or every host is ready with one fingerprint, or
//! took the document), 1 when one fails (or the origin is refused, or a host is not
//! well or refused the document), 2 when the task could not run.

use std::process::ExitCode;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::ProvideCredentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use clap::{Args, Parser, Subcommand};

mod asg;
mod audit;
mod ec2;
mod facts;
mod host_http;
mod plan;
mod pool;
mod push;
mod ready;
mod rules;
mod snapshot;
mod status;
mod user_data;

use asg::AutoScaling;
use audit::{Check, Role};
use ec2::Ec2;
use facts::{HostFacts, VolumeChoice, FINGERPRINT_TAG};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, read-only, that an instance (or every instance and the launch template and
    /// secrets snapshot of an Auto Scaling group) is sealed: one PASS or FAIL line per check
    Audit {
        #[command(flatten)]
        what: AuditTarget,
        #[command(flatten)]
        host: HostOptions,
        #[command(flatten)]
        connection: Connection,
        /// With --asg: a region holding copies of the secrets snapshot (`snapshot
        /// --copy-to-region`), whose copies are audited too; repeatable
        #[arg(long, value_name = "REGION", conflicts_with = "instance_id")]
        copy_region: Vec<String>,
    },
    /// Seal an instance (close TCP port 22, delete its key pair, require IMDSv2 with
    /// hop limit 1, protect it and its secrets volume, tag it), then audit it
    Seal {
        /// The EC2 instance, e.g. i-0123456789abcdef0
        #[arg(long)]
        instance_id: String,
        #[command(flatten)]
        host: HostOptions,
        #[command(flatten)]
        connection: Connection,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Snapshot the secrets volume of an origin whose console reports its secrets
    /// verified and mounted read-only; tag it, wait for it, optionally copy it to a
    /// second region. Prints `snapshot <region> <snap-id>` lines; a re-run reuses them
    Snapshot {
        /// The origin instance, e.g. i-0123456789abcdef0
        #[arg(long)]
        instance_id: String,
        #[command(flatten)]
        connection: Connection,
        /// Also keep a copy in this region (disaster recovery)
        #[arg(long, requires = "copy_kms_key", value_name = "REGION")]
        copy_to_region: Option<String>,
        /// The KMS key (id, ARN or alias/...) of that region the copy is encrypted with
        #[arg(long, requires = "copy_to_region", value_name = "KEY")]
        copy_kms_key: Option<String>,
    },
    /// One row per host (an instance, or every instance of an Auto Scaling group):
    /// state, status checks, the console's ready or error line and, with --probe,
    /// GET /readyz; exit 0 only if every host is ready with the same fingerprint
    Status {
        #[command(flatten)]
        what: StatusTarget,
        #[command(flatten)]
        connection: Connection,
        /// Also ask each running host's GET /readyz at its private address (from a
        /// machine inside the VPC)
        #[arg(long)]
        probe: bool,
        /// The cryptoserver port /readyz is asked on
        #[arg(long, default_value_t = 8080, value_parser = service_port)]
        port: u16,
        /// Probe over HTTPS, trusting these PEM certificates (the hosts' pinned certificate)
        #[arg(long, requires_all = ["probe", "tls_server_name"], value_name = "PEM")]
        ca: Option<std::path::PathBuf>,
        /// The name in the hosts' certificate (the modules' tls_server_name output)
        #[arg(long, requires = "ca", value_name = "NAME")]
        tls_server_name: Option<String>,
    },
    /// Change the clients of running hosts with a signed document
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Send a signed clients document (F.signed: `minisign -S -s KEY -m F && cat
    /// F.minisig F > F.signed`) to PUT /admin/clients of each host; prints the serial
    /// each host now holds, or its refusal; exit 0 only if every host took it
    Push {
        /// The signed document
        #[arg(long, value_name = "F.signed")]
        file: std::path::PathBuf,
        #[command(flatten)]
        what: PushTarget,
        #[command(flatten)]
        connection: Connection,
        /// With --asg: the cryptoserver port of the replicas
        #[arg(long, default_value_t = 8080, value_parser = service_port, conflicts_with = "url")]
        port: u16,
        /// HTTPS, trusting these PEM certificates (the hosts' pinned certificate);
        /// required by https:// URLs
        #[arg(long, value_name = "PEM")]
        ca: Option<std::path::PathBuf>,
        /// The name in the hosts' certificate (the modules' tls_server_name output);
        /// required with --asg and --ca; default for --url: the URL's host
        #[arg(long, requires = "ca", value_name = "NAME")]
        tls_server_name: Option<String>,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PushTarget {
    /// A server, e.g. https://10.0.1.5:8080; repeatable
    #[arg(long, value_name = "URL")]
    url: Vec<url::Url>,
    /// An Auto Scaling group: every InService instance, at its private address (run
    /// from a machine inside the VPC)
    #[arg(long, value_name = "NAME")]
    asg: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct StatusTarget {
    /// The EC2 instance, e.g. i-0123456789abcdef0
    #[arg(long)]
    instance_id: Option<String>,
    /// An Auto Scaling group: every instance it lists
    #[arg(long, value_name = "NAME")]
    asg: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct AuditTarget {
    /// The EC2 instance, e.g. i-0123456789abcdef0
    #[arg(long)]
    instance_id: Option<String>,
    /// An Auto Scaling group of replicas: audits each instance, its launch template and its snapshot
    #[arg(long, value_name = "NAME", conflicts_with = "secrets_volume")]
    asg: Option<String>,
}

#[derive(Args)]
struct Connection {
    /// AWS region (default: AWS_REGION or the profile's region)
    #[arg(long)]
    region: Option<String>,
    /// AWS API endpoint, for LocalStack or moto (default: AWS's own)
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
}

#[derive(Args)]
struct HostOptions {
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

impl HostOptions {
    fn volume_choice(&self) -> VolumeChoice {
        match (&self.secrets_volume, &self.secrets_device) {
            (Some(id), _) => VolumeChoice::VolumeId(id.clone()),
            (None, Some(device)) => VolumeChoice::Device(device.clone()),
            (None, None) => VolumeChoice::OnlyDataVolume,
        }
    }
}

impl Connection {
    /// The SDK's configuration: region, endpoint and credentials, each checked here
    /// so that a missing one reads as such, not as a failed API call.
    async fn config(&self) -> anyhow::Result<SdkConfig> {
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
        if config.region().is_none() {
            anyhow::bail!("no AWS region: pass --region or set AWS_REGION");
        }
        if let Some(credentials) = config.credentials_provider() {
            credentials.provide_credentials().await.map_err(|error| {
                anyhow::anyhow!(
                    "no usable AWS credentials: {}; set AWS_PROFILE, run `aws sso login`, \
                     or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    ec2::causes(&error)
                )
            })?;
        }
        Ok(config)
    }

    async fn ec2(&self) -> anyhow::Result<Ec2> {
        Ok(Ec2::new(
            &self.config().await?,
            self.endpoint_url.as_deref(),
        ))
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
            Command::Audit {
                what,
                host,
                connection,
                copy_region,
            } => match (what.instance_id, what.asg) {
                (Some(instance_id), _) => run_audit(&connection, &instance_id, &host).await,
                (None, Some(group)) => {
                    run_pool_audit(&connection, &group, &host, &copy_region).await
                }
                (None, None) => unreachable!("clap requires --instance-id or --asg"),
            },
            Command::Seal {
                instance_id,
                host,
                connection,
                dry_run,
            } => run_seal(&connection, &instance_id, &host, dry_run).await,
            Command::Snapshot {
                instance_id,
                connection,
                copy_to_region,
                copy_kms_key,
            } => run_snapshot(&connection, &instance_id, copy_to_region.zip(copy_kms_key)).await,
            Command::Status {
                what,
                connection,
                probe,
                port,
                ca,
                tls_server_name,
            } => {
                let probe = probe.then(|| status::Probe {
                    port,
                    tls: ca
                        .zip(tls_server_name)
                        .map(|(ca, server_name)| host_http::HostTls { ca, server_name }),
                });
                run_status(&connection, what, probe.as_ref()).await
            }
            Command::Clients {
                command:
                    ClientsCommand::Push {
                        file,
                        what,
                        connection,
                        port,
                        ca,
                        tls_server_name,
                    },
            } => {
                let tls = ca.map(|ca| host_http::HostTls {
                    ca,
                    server_name: tls_server_name.unwrap_or_default(),
                });
                run_push(&connection, &file, what, port, tls.as_ref()).await
            }
        }
    });
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::from(2)
    })
}

async fn run_audit(
    connection: &Connection,
    instance_id: &str,
    host: &HostOptions,
) -> anyhow::Result<ExitCode> {
    let ec2 = connection.ec2().await?;
    let facts = ec2.host_facts(instance_id, &host.volume_choice()).await?;
    let unmarked = match &facts.secrets_volume {
        Ok(volume) => ec2.snapshots_without_fingerprint(&volume.volume_id).await?,
        Err(_) => Vec::new(),
    };
    let status = report_audit(&facts, host.port);
    for (snapshot_id, started) in unmarked {
        println!(
            "note: snapshot {snapshot_id} of the secrets volume (started {started}) has no tag \
             {FINGERPRINT_TAG}, so it may predate the first boot's ready line: it is no backup \
             (the module refuses to restore it), yet a copy of whatever secrets it holds; \
             delete it, or tag it with the ready line's fingerprint if it was taken after"
        );
    }
    Ok(status)
}

/// Prints the checks; the exit status says whether all passed.
fn report_audit(facts: &HostFacts, service_port: u16) -> ExitCode {
    let (failed, total) = print_host_checks(facts, service_port, Role::Host);
    if failed == 0 {
        println!("{} is sealed: all {total} checks pass", facts.instance_id);
        ExitCode::SUCCESS
    } else {
        println!(
            "{} is NOT sealed: {failed} of {total} checks fail",
            facts.instance_id
        );
        ExitCode::from(1)
    }
}

/// Prints an instance's checks and notes; returns how many failed, of how many.
fn print_host_checks(facts: &HostFacts, service_port: u16, role: Role) -> (usize, usize) {
    println!("Audit of {}:", facts.instance_id);
    let checks = audit::audit(facts, service_port, role);
    let failed = print_checks(&checks);
    if let Some(profile) = &facts.instance_profile {
        println!(
            "note: instance profile {profile} is attached: if its role allows SSM Session Manager \
             and the SSM agent runs, that is a way in that no port rule closes"
        );
    }
    (failed, checks.len())
}

fn print_checks(checks: &[Check]) -> usize {
    for check in checks {
        println!("{check}");
    }
    checks.iter().filter(|check| !check.passed()).count()
}

async fn run_pool_audit(
    connection: &Connection,
    group: &str,
    host: &HostOptions,
    copy_regions: &[String],
) -> anyhow::Result<ExitCode> {
    let config = connection.config().await?;
    let endpoint = connection.endpoint_url.as_deref();
    let ec2 = Ec2::new(&config, endpoint);
    let autoscaling = AutoScaling::new(&config, endpoint);
    let copies: Vec<(String, Ec2)> = copy_regions
        .iter()
        .map(|region| (region.clone(), ec2_in(&config, region, endpoint)))
        .collect();
    let pool = asg::pool_facts(&ec2, &autoscaling, group, &host.volume_choice(), &copies).await?;
    let mut failing = Vec::new();
    for instance in &pool.instances {
        let (failed, _) = print_host_checks(instance, host.port, Role::PoolReplica);
        if failed > 0 {
            failing.push(format!("{failed} on {}", instance.instance_id));
        }
    }
    println!("Audit of group {}:", pool.group);
    if pool.instances.is_empty() {
        println!(
            "note: the group has no instances: only its launch template and snapshot are audited"
        );
    }
    let failed = print_checks(&pool::pool_checks(&pool, host.port));
    if failed > 0 {
        failing.push(format!("{failed} on the group"));
    }
    if failing.is_empty() {
        println!(
            "group {} is sealed: all checks pass on its {} instances and on the group",
            pool.group,
            pool.instances.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "group {} is NOT sealed: checks fail ({})",
            pool.group,
            failing.join(", ")
        );
        Ok(ExitCode::from(1))
    }
}

async fn run_snapshot(
    connection: &Connection,
    instance_id: &str,
    copy: Option<(String, String)>,
) -> anyhow::Result<ExitCode> {
    let config = connection.config().await?;
    let endpoint = connection.endpoint_url.as_deref();
    let region = config.region().map(ToString::to_string).unwrap_or_default();
    let copy = match copy {
        None => None,
        Some((copy_region, _)) if copy_region == region => anyhow::bail!(
            "--copy-to-region {copy_region} is the origin's own region: name another region \
             for the disaster-recovery copy"
        ),
        Some((copy_region, kms_key)) => Some(snapshot::CopyTo {
            ec2: ec2_in(&config, &copy_region, endpoint),
            region: copy_region,
            kms_key,
        }),
    };
    let ec2 = Ec2::new(&config, endpoint);
    snapshot::run(&ec2, &region, instance_id, copy.as_ref()).await
}

async fn run_status(
    connection: &Connection,
    what: StatusTarget,
    probe: Option<&status::Probe>,
) -> anyhow::Result<ExitCode> {
    let config = connection.config().await?;
    let endpoint = connection.endpoint_url.as_deref();
    let ec2 = Ec2::new(&config, endpoint);
    let instance_ids = match (what.instance_id, what.asg) {
        (Some(instance_id), _) => vec![instance_id],
        (None, Some(group)) => {
            let ids = AutoScaling::new(&config, endpoint)
                .instance_ids(&group)
                .await?;
            if ids.is_empty() {
                println!("group {group} has no instances");
                return Ok(ExitCode::from(1));
            }
            ids
        }
        (None, None) => unreachable!("clap requires --instance-id or --asg"),
    };
    status::run(&ec2, &instance_ids, probe).await
}

async fn run_push(
    connection: &Connection,
    file: &std::path::Path,
    what: PushTarget,
    port: u16,
    tls: Option<&host_http::HostTls>,
) -> anyhow::Result<ExitCode> {
    let document = push::read_signed_document(file)?;
    let connector = tls.map(host_http::tls_connector).transpose()?;
    let targets = match what.asg {
        None => what
            .url
            .iter()
            .map(|url| url_target(url, tls))
            .collect::<anyhow::Result<Vec<_>>>()?,
        Some(group) => {
            let tls = match tls {
                Some(tls) if tls.server_name.is_empty() => anyhow::bail!(
                    "--asg with --ca needs --tls-server-name: the name in the replicas' \
                     certificate (the pool module's tls_server_name output)"
                ),
                tls => tls,
            };
            replica_targets(connection, &group, port, tls).await?
        }
    };
    Ok(push::run(&document, &targets, connector.as_ref()).await)
}

/// The server at `url` (http:// or, with --ca, https://).
fn url_target(url: &url::Url, tls: Option<&host_http::HostTls>) -> anyhow::Result<push::Target> {
    let address = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--url {url} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let server_name = match (url.scheme(), tls) {
        ("http", None) => None,
        ("https", Some(tls)) if tls.server_name.is_empty() => {
            Some(host_http::server_name(&address)?)
        }
        ("https", Some(tls)) => Some(host_http::server_name(&tls.server_name)?),
        ("https", None) => anyhow::bail!(
            "--url {url} is HTTPS: pass --ca with the hosts' pinned certificate (PEM)"
        ),
        ("http", Some(_)) => {
            anyhow::bail!("--url {url} is plain HTTP but --ca was given: write https:// to use TLS")
        }
        (scheme, _) => anyhow::bail!(
            "--url {url}: scheme {scheme} is not http or https, e.g. https://10.0.1.5:8080"
        ),
    };
    Ok(push::Target {
        label: url.as_str().trim_end_matches('/').to_owned(),
        host: host_http::Host {
            address,
            port: url
                .port_or_known_default()
                .expect("http and https have default ports"),
            server_name,
        },
    })
}

/// Every InService instance of `group` at its private address; the others are
/// named and left alone (they start with the launch template's clients).
async fn replica_targets(
    connection: &Connection,
    group: &str,
    port: u16,
    tls: Option<&host_http::HostTls>,
) -> anyhow::Result<Vec<push::Target>> {
    let server_name = tls
        .map(|tls| host_http::server_name(&tls.server_name))
        .transpose()?;
    let config = connection.config().await?;
    let endpoint = connection.endpoint_url.as_deref();
    let ec2 = Ec2::new(&config, endpoint);
    let mut targets = Vec::new();
    for (instance_id, state) in AutoScaling::new(&config, endpoint)
        .lifecycle_states(group)
        .await?
    {
        if state != "InService" {
            println!(
                "{instance_id}: not pushed: {state}, not InService (it starts with the clients \
                 of the launch template's user data: `terraform apply` gives it the same serial)"
            );
            continue;
        }
        let instance = ec2.describe_instance(&instance_id).await?;
        let Some(address) = instance.private_ip_address() else {
            println!("{instance_id}: not pushed: it has no private address");
            continue;
        };
        targets.push(push::Target {
            label: format!("{instance_id} ({address})"),
            host: host_http::Host {
                address: address.to_owned(),
                port,
                server_name: server_name.clone(),
            },
        });
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "Auto Scaling group {group} has no InService instance to push to"
    );
    Ok(targets)
}

/// An EC2 client of `region`, otherwise configured as `config`.
fn ec2_in(config: &SdkConfig, region: &str, endpoint: Option<&str>) -> Ec2 {
    let there = config
        .to_builder()
        .region(Region::new(region.to_owned()))
        .build();
    Ec2::new(&there, endpoint)
}

async fn run_seal(
    connection: &Connection,
    instance_id: &str,
    host: &HostOptions,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let ec2 = connection.ec2().await?;
    let facts = ec2.host_facts(instance_id, &host.volume_choice()).await?;
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
    let facts = ec2.host_facts(instance_id, &host.volume_choice()).await?;
    Ok(report_audit(&facts, host.port))
}
