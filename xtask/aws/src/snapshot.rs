//! `cargo xtask snapshot`: an EBS snapshot of a verified origin's secrets volume,
//! and optionally a copy in a second region, each made once (a re-run finds them).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, Snapshot, SnapshotState, Tag, TagSpecification};
use base64::Engine;

use crate::ec2::{attachments, tag_filter, Ec2};
use crate::facts::FINGERPRINT_TAG;
use crate::ready::{self, Found, SOURCE_VOLUME_TAG};

/// How often a pending snapshot is looked at: EBS takes minutes to hours.
const POLL: Duration = Duration::from_secs(15);

/// Where the copy goes and the key it is encrypted with there.
pub struct CopyTo {
    pub ec2: Ec2,
    pub region: String,
    pub kms_key: String,
}

/// Exit status: 0 when the snapshot (and copy) exist and are complete, 1 when the
/// origin is refused; errors (exit 2) say what could not be done.
pub async fn run(
    ec2: &Ec2,
    region: &str,
    instance_id: &str,
    copy: Option<&CopyTo>,
) -> anyhow::Result<ExitCode> {
    let instance = ec2.describe_instance(instance_id).await?;
    let console = ec2.console_output(instance_id).await?;
    let refuse = |reason: String| {
        eprintln!("error: refusing to snapshot {instance_id}: {reason}");
        Ok(ExitCode::from(1))
    };
    let ready = match ready::last_ready(&console) {
        Ok(ready) => ready,
        Err(reason) => return refuse(reason),
    };
    let attachments = attachments(&instance);
    let volume_id = match ready::origin_volume(&ready, &attachments) {
        Ok(attachment) => attachment.volume_id.clone(),
        Err(reason) => return refuse(format!("its ready line says {reason}")),
    };
    if !ec2
        .describe_volume(&volume_id)
        .await?
        .encrypted()
        .unwrap_or(false)
    {
        return refuse(format!(
            "secrets volume {volume_id} is not encrypted, and neither would its snapshot be: \
             copy the secrets to an encrypted volume (or snapshot it and copy that snapshot \
             with encryption, then restore it) and snapshot that"
        ));
    }
    eprintln!(
        "{instance_id} reports {} secrets with fingerprint {}, verified and mounted read-only from {volume_id}",
        ready.mode, ready.fingerprint
    );

    let tags = ready::snapshot_tags(&ready, &volume_id, instance_id);
    let description = format!(
        "cryptoserver {} secrets {} from {volume_id} of {instance_id}",
        ready.mode, ready.fingerprint
    );
    let identity = (volume_id.as_str(), ready.fingerprint.as_str());
    let snapshot_id = match ec2.find_snapshot(identity).await? {
        Some(found) => {
            eprintln!(
                "{} in {region} already holds them ({}): not making another",
                found.id, found.state
            );
            found.id
        }
        None => ec2.create_snapshot(&volume_id, &description, &tags).await?,
    };
    ec2.wait(&snapshot_id, region).await?;

    let copy_id = match copy {
        None => None,
        Some(copy) => {
            let id = match copy.ec2.find_snapshot(identity).await? {
                Some(found) => {
                    eprintln!(
                        "{} in {} is already its copy ({}): not copying again",
                        found.id, copy.region, found.state
                    );
                    found.id
                }
                None => {
                    copy.ec2
                        .copy_snapshot(region, &snapshot_id, copy, &description, &tags)
                        .await?
                }
            };
            copy.ec2.wait(&id, &copy.region).await?;
            Some((copy.region.as_str(), id))
        }
    };
    println!("snapshot {region} {snapshot_id}");
    if let Some((region, id)) = copy_id {
        println!("snapshot {region} {id}");
    }
    Ok(ExitCode::SUCCESS)
}

impl Ec2 {
    /// The instance's serial console output, the latest EC2 has (it lags a few minutes).
    pub(crate) async fn console_output(&self, instance_id: &str) -> anyhow::Result<String> {
        let answer = self
            .client
            .get_console_output()
            .instance_id(instance_id)
            .latest(true)
            .send()
            .await
            .map_err(|error| self.api_error("GetConsoleOutput", error))?;
        let Some(encoded) = answer.output() else {
            return Ok(String::new());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .with_context(|| {
                format!(
                    "{} answered GetConsoleOutput for {instance_id} with output that is not base64",
                    self.target
                )
            })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// This account's snapshot of `(volume, fingerprint)`, if one is pending or completed.
    async fn find_snapshot(
        &self,
        (volume_id, fingerprint): (&str, &str),
    ) -> anyhow::Result<Option<Found>> {
        let described = self
            .client
            .describe_snapshots()
            // Only our own: anyone can publish a snapshot with these tags.
            .owner_ids("self")
            .filters(tag_filter(SOURCE_VOLUME_TAG, volume_id))
            .filters(tag_filter(FINGERPRINT_TAG, fingerprint))
            .send()
            .await
            .map_err(|error| self.api_error("DescribeSnapshots", error))?;
        let found: Vec<Found> = described
            .snapshots()
            .iter()
            .filter_map(|snapshot| {
                Some(Found {
                    id: snapshot.snapshot_id()?.to_owned(),
                    state: snapshot.state()?.as_str().to_owned(),
                    started: snapshot.start_time().map_or(0, |time| time.secs()),
                })
            })
            .collect();
        for failed in found.iter().filter(|f| f.state == "error") {
            eprintln!(
                "note: {} failed earlier (state error) and is not reused; delete it when convenient",
                failed.id
            );
        }
        Ok(ready::reusable(&found).cloned())
    }

    async fn create_snapshot(
        &self,
        volume_id: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> anyhow::Result<String> {
        let made = self
            .client
            .create_snapshot()
            .volume_id(volume_id)
            .description(description)
            .tag_specifications(tag_specification(tags))
            .send()
            .await
            .map_err(|error| self.api_error("CreateSnapshot", error))?;
        let id = made.snapshot_id().with_context(|| {
            format!(
                "{} made a snapshot of {volume_id} without an id",
                self.target
            )
        })?;
        eprintln!("created {id} of {volume_id}");
        Ok(id.to_owned())
    }

    /// Copies `source_id` from `source_region` into this client's region, re-encrypted
    /// with `copy.kms_key`. (EC2 no longer needs a presigned URL for this.)
    async fn copy_snapshot(
        &self,
        source_region: &str,
        source_id: &str,
        copy: &CopyTo,
        description: &str,
        tags: &[(String, String)],
    ) -> anyhow::Result<String> {
        let made = self
            .client
            .copy_snapshot()
            .source_region(source_region)
            .source_snapshot_id(source_id)
            .encrypted(true)
            .kms_key_id(&copy.kms_key)
            .description(description)
            .tag_specifications(tag_specification(tags))
            .send()
            .await
            .map_err(|error| {
                let about_the_key = matches!(
                    error.code(),
                    Some("InvalidParameterValue" | "InvalidKMSKey.Invalid" | "KMSKeyNotAccessible")
                );
                let error = self.api_error("CopySnapshot", error);
                if about_the_key {
                    anyhow!(
                        "{error:#}; check --copy-kms-key {}: a KMS key in {} that this account may use",
                        copy.kms_key,
                        copy.region
                    )
                } else {
                    error
                }
            })?;
        let id = made
            .snapshot_id()
            .with_context(|| format!("{} copied {source_id} without an id", self.target))?;
        eprintln!(
            "copying {source_id} from {source_region} to {id} in {}, encrypted with KMS key {}",
            copy.region, copy.kms_key
        );
        Ok(id.to_owned())
    }

    /// Waits until the snapshot completes, showing its progress on stderr.
    async fn wait(&self, snapshot_id: &str, region: &str) -> anyhow::Result<()> {
        let mut shown = String::new();
        loop {
            let snapshot = self.describe_snapshot(snapshot_id).await?;
            let state = snapshot.state().map_or("unknown", SnapshotState::as_str);
            let progress = format!(
                "{snapshot_id} in {region}: {state} {}",
                snapshot.progress().unwrap_or("")
            );
            if progress != shown {
                eprintln!("{}", progress.trim_end());
                shown = progress;
            }
            match snapshot.state() {
                Some(SnapshotState::Completed) => return Ok(()),
                Some(SnapshotState::Error) => bail!(
                    "snapshot {snapshot_id} in {region} failed: {}; run the same command again \
                     to make a new one, and delete the failed one",
                    snapshot.state_message().unwrap_or("EC2 gave no reason")
                ),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn describe_snapshot(&self, snapshot_id: &str) -> anyhow::Result<Snapshot> {
        let described = self
            .client
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
            .map_err(|error| self.api_error("DescribeSnapshots", error))?;
        described
            .snapshots()
            .first()
            .cloned()
            .with_context(|| format!("snapshot {snapshot_id} does not exist in {}", self.target))
    }
}

fn tag_specification(tags: &[(String, String)]) -> TagSpecification {
    tags.iter()
        .fold(
            TagSpecification::builder().resource_type(ResourceType::Snapshot),
            |spec, (key, value)| spec.tags(Tag::builder().key(key).value(value).build()),
        )
        .build()
}
