//! The Auto Scaling and EC2 API calls behind `audit --asg`: a pool's group, every
//! launch template version it can launch, the secrets snapshot and every instance.

use anyhow::{anyhow, Context};
use aws_config::SdkConfig;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::{AutoScalingGroup, LaunchTemplateSpecification};
use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataEndpointState, PermissionGroup,
    ResponseLaunchTemplateData, SnapshotAttributeName,
};

use crate::ec2::{api_error, tag, tag_filter, target, Ec2};
use crate::facts::{Metadata, VolumeChoice, FINGERPRINT_TAG};
use crate::pool::{Copies, PoolFacts, PublicIp, SecretsSnapshot, Template};
use crate::ready::SOURCE_VOLUME_TAG;
use crate::user_data::module_settings;

pub struct AutoScaling {
    client: aws_sdk_autoscaling::Client,
    /// Where requests go, for error messages.
    target: String,
}

impl AutoScaling {
    pub fn new(config: &SdkConfig, endpoint: Option<&str>) -> AutoScaling {
        AutoScaling {
            client: aws_sdk_autoscaling::Client::new(config),
            target: target("Auto Scaling", config, endpoint),
        }
    }

    async fn group(&self, name: &str) -> anyhow::Result<AutoScalingGroup> {
        let described = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|error| api_error(&self.target, "DescribeAutoScalingGroups", error))
            .with_context(|| format!("cannot read Auto Scaling group {name}"))?;
        described
            .auto_scaling_groups()
            .iter()
            .find(|group| group.auto_scaling_group_name() == Some(name))
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "Auto Scaling group {name} does not exist in {}: check the name and --region",
                    self.target
                )
            })
    }
}

impl AutoScaling {
    /// The ids of the group's instances, in the order Auto Scaling lists them.
    pub async fn instance_ids(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .lifecycle_states(name)
            .await?
            .into_iter()
            .map(|(instance_id, _)| instance_id)
            .collect())
    }

    /// (instance id, lifecycle state such as `InService` or `Pending`) of each of
    /// the group's instances, in the order Auto Scaling lists them.
    pub async fn lifecycle_states(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        let group = self.group(name).await?;
        Ok(group
            .instances()
            .iter()
            .filter_map(|instance| {
                let state = instance
                    .lifecycle_state()
                    .map_or("unknown", |state| state.as_str());
                Some((instance.instance_id()?.to_owned(), state.to_owned()))
            })
            .collect())
    }
}

pub async fn pool_facts(
    ec2: &Ec2,
    autoscaling: &AutoScaling,
    name: &str,
    volume: &VolumeChoice,
    copy_regions: &[(String, Ec2)],
) -> anyhow::Result<PoolFacts> {
    let group = autoscaling.group(name).await?;
    let templates = launch_templates(ec2, &group).await?;
    let snapshot = match &templates {
        Err(_) => Err("there is no launch template to read the snapshot from".to_owned()),
        Ok(templates) => match the_snapshot(templates) {
            Ok(id) => Ok(secrets_snapshot(ec2, id).await?),
            Err(reason) => Err(reason),
        },
    };
    let mut copies = Vec::new();
    for (region, there) in copy_regions {
        let found = match &snapshot {
            Err(_) => Err("there is no secrets snapshot to find the copies of".to_owned()),
            Ok(snapshot) => find_copies(there, snapshot).await?,
        };
        copies.push(Copies {
            region: region.clone(),
            found,
        });
    }
    let mut instances = Vec::new();
    for instance in group.instances() {
        if let Some(id) = instance.instance_id() {
            instances.push(ec2.host_facts(id, volume).await?);
        }
    }
    Ok(PoolFacts {
        group: name.to_owned(),
        templates: templates.map(|templates| templates.into_iter().map(|(t, _)| t).collect()),
        snapshot,
        copies,
        instances,
    })
}

/// The one snapshot every template restores: a pool serves one set of secrets.
fn the_snapshot(templates: &[(Template, Vec<String>)]) -> Result<&str, String> {
    let mut found: Option<&str> = None;
    for (template, snapshot_ids) in templates {
        let id = match snapshot_ids.as_slice() {
            [id] => id.as_str(),
            [] => {
                return Err(format!(
                    "{}'s block device mappings restore no snapshot",
                    template.name
                ))
            }
            several => {
                return Err(format!(
                    "{}'s block device mappings restore several snapshots ({}): cannot tell \
                     which holds the secrets",
                    template.name,
                    several.join(", ")
                ))
            }
        };
        match found {
            Some(other) if other != id => {
                return Err(format!(
                    "the group's templates restore different snapshots ({other}, and {id} in \
                     {}): a pool serves one set of secrets",
                    template.name
                ))
            }
            _ => found = Some(id),
        }
    }
    found.ok_or_else(|| "the group has no launch template".to_owned())
}

/// Every template version the group can launch, each with the snapshots its mappings
/// restore, or why the group has no template to audit.
async fn launch_templates(
    ec2: &Ec2,
    group: &AutoScalingGroup,
) -> anyhow::Result<Result<Vec<(Template, Vec<String>)>, String>> {
    let mixed = group
        .mixed_instances_policy()
        .and_then(|policy| policy.launch_template());
    let Some(main) = group
        .launch_template()
        .or_else(|| mixed?.launch_template_specification())
    else {
        return Ok(Err(match group.launch_configuration_name() {
            Some(old) => format!(
                "the group launches from launch configuration {old}, which cannot require \
                 IMDSv2 with hop limit 1 the way a launch template does: move it to a launch template"
            ),
            None => "the group names no launch template".to_owned(),
        }));
    };
    // An override may name a template of its own, launched for its instance type.
    let mut specs = vec![main];
    for spec in mixed
        .map(|mixed| mixed.overrides())
        .unwrap_or_default()
        .iter()
        .filter_map(|instance_type| instance_type.launch_template_specification())
    {
        let same = |known: &&LaunchTemplateSpecification| {
            known.launch_template_id() == spec.launch_template_id()
                && known.launch_template_name() == spec.launch_template_name()
                && known.version() == spec.version()
        };
        if !specs.iter().any(same) {
            specs.push(spec);
        }
    }
    let mut templates = Vec::new();
    for spec in specs {
        templates.push(launch_template(ec2, group, spec).await?);
    }
    Ok(Ok(templates))
}

/// One template version the group can launch and the snapshots its mappings restore.
async fn launch_template(
    ec2: &Ec2,
    group: &AutoScalingGroup,
    spec: &LaunchTemplateSpecification,
) -> anyhow::Result<(Template, Vec<String>)> {
    let version = spec.version().unwrap_or("$Default");
    let described = ec2
        .client
        .describe_launch_template_versions()
        .set_launch_template_id(spec.launch_template_id().map(str::to_owned))
        .set_launch_template_name(
            spec.launch_template_id()
                .is_none()
                .then(|| spec.launch_template_name().map(str::to_owned))
                .flatten(),
        )
        .versions(version)
        .send()
        .await
        .map_err(|error| match error.code() {
            Some(code) if code.starts_with("InvalidLaunchTemplate") => anyhow!(
                "launch template {} version {version} of the group does not exist in {}",
                spec.launch_template_id()
                    .or(spec.launch_template_name())
                    .unwrap_or("(unnamed)"),
                ec2.target
            ),
            _ => ec2.api_error("DescribeLaunchTemplateVersions", error),
        })?;
    let found = described
        .launch_template_versions()
        .first()
        .context("EC2 described no version of the group's launch template")?;
    let name = format!(
        "{} ({}) version {}",
        found.launch_template_id().unwrap_or("lt-?"),
        found.launch_template_name().unwrap_or("unnamed"),
        found
            .version_number()
            .map_or_else(|| version.to_owned(), |n| n.to_string())
    );
    let empty = ResponseLaunchTemplateData::builder().build();
    let data = found.launch_template_data().unwrap_or(&empty);

    let interfaces = data.network_interfaces();
    let mut group_ids: Vec<String> = data
        .security_group_ids()
        .iter()
        .chain(interfaces.iter().flat_map(|interface| interface.groups()))
        .cloned()
        .collect();
    group_ids.sort();
    group_ids.dedup();
    let explicit_public_ip = interfaces
        .iter()
        .filter_map(|interface| interface.associate_public_ip_address())
        .reduce(|any, this| any || this);
    let public_ip = match explicit_public_ip {
        Some(associates) => PublicIp::Template(associates),
        None => PublicIp::Subnets(public_subnets(ec2, group).await?),
    };
    let metadata = data.metadata_options().map(|options| {
        if options.http_endpoint() == Some(&LaunchTemplateInstanceMetadataEndpointState::Disabled) {
            Metadata::Disabled
        } else {
            Metadata::Enabled {
                tokens_required: options.http_tokens()
                    == Some(&LaunchTemplateHttpTokensState::Required),
                hop_limit: options.http_put_response_hop_limit(),
            }
        }
    });
    let template = Template {
        name,
        launched_as: version.to_owned(),
        settings: module_settings(data.user_data()),
        key_name: data.key_name().map(str::to_owned),
        instance_profile: data
            .iam_instance_profile()
            .and_then(|profile| profile.arn().or(profile.name()))
            .map(str::to_owned),
        metadata,
        public_ip,
        security_groups: ec2
            .security_groups(group_ids, data.security_groups().to_vec())
            .await?,
    };
    let snapshot_ids = data
        .block_device_mappings()
        .iter()
        .filter_map(|mapping| mapping.ebs()?.snapshot_id().map(str::to_owned))
        .collect();
    Ok((template, snapshot_ids))
}

/// The group's subnets that give instances a public IPv4 address unless told otherwise.
async fn public_subnets(ec2: &Ec2, group: &AutoScalingGroup) -> anyhow::Result<Vec<String>> {
    let subnet_ids: Vec<String> = group
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    if subnet_ids.is_empty() {
        return Ok(Vec::new());
    }
    let described = ec2
        .client
        .describe_subnets()
        .set_subnet_ids(Some(subnet_ids))
        .send()
        .await
        .map_err(|error| ec2.api_error("DescribeSubnets", error))?;
    Ok(described
        .subnets()
        .iter()
        .filter(|subnet| subnet.map_public_ip_on_launch() == Some(true))
        .filter_map(|subnet| subnet.subnet_id().map(str::to_owned))
        .collect())
}

async fn secrets_snapshot(ec2: &Ec2, snapshot_id: &str) -> anyhow::Result<SecretsSnapshot> {
    let described = ec2
        .client
        .describe_snapshots()
        .snapshot_ids(snapshot_id)
        .send()
        .await
        .map_err(|error| match error.code() {
            Some("InvalidSnapshot.NotFound") => anyhow!(
                "snapshot {snapshot_id}, which the launch template restores, does not exist in {} \
                 or is not visible to this account",
                ec2.target
            ),
            _ => ec2.api_error("DescribeSnapshots", error),
        })?;
    let snapshot = described
        .snapshots()
        .first()
        .with_context(|| format!("EC2 did not describe snapshot {snapshot_id}"))?;
    let permissions = ec2
        .client
        .describe_snapshot_attribute()
        .snapshot_id(snapshot_id)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .map_err(|error| ec2.api_error("DescribeSnapshotAttribute", error))?;
    let permissions = permissions.create_volume_permissions();
    Ok(SecretsSnapshot {
        id: snapshot_id.to_owned(),
        encrypted: snapshot.encrypted().unwrap_or(false),
        public: permissions
            .iter()
            .any(|permission| permission.group() == Some(&PermissionGroup::All)),
        shared_with: permissions
            .iter()
            .filter_map(|permission| permission.user_id().map(str::to_owned))
            .collect(),
        fingerprint: tag(snapshot.tags(), FINGERPRINT_TAG).map(str::to_owned),
        source_volume: tag(snapshot.tags(), SOURCE_VOLUME_TAG).map(str::to_owned),
    })
}

/// This account's snapshots in `there`'s region tagged as copies of `snapshot` (the
/// tags `cargo xtask snapshot` gives a copy), or why they cannot be sought.
async fn find_copies(
    there: &Ec2,
    snapshot: &SecretsSnapshot,
) -> anyhow::Result<Result<Vec<SecretsSnapshot>, String>> {
    let (Some(volume), Some(fingerprint)) = (&snapshot.source_volume, &snapshot.fingerprint) else {
        return Ok(Err(format!(
            "{} has no tags {SOURCE_VOLUME_TAG} and {FINGERPRINT_TAG} to find its copies by: \
             make it with `cargo xtask snapshot`",
            snapshot.id
        )));
    };
    let described = there
        .client
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag_filter(SOURCE_VOLUME_TAG, volume))
        .filters(tag_filter(FINGERPRINT_TAG, fingerprint))
        .send()
        .await
        .map_err(|error| there.api_error("DescribeSnapshots", error))?;
    let mut copies = Vec::new();
    for id in described
        .snapshots()
        .iter()
        .filter_map(|copy| copy.snapshot_id())
    {
        copies.push(secrets_snapshot(there, id).await?);
    }
    Ok(Ok(copies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::sealed_template;

    fn restoring(name: &str, snapshots: &[&str]) -> (Template, Vec<String>) {
        let snapshots = snapshots.iter().map(|id| (*id).to_owned()).collect();
        (sealed_template(name), snapshots)
    }

    #[test]
    fn every_template_must_restore_the_same_one_snapshot() {
        let same = [
            restoring("lt-1", &["snap-1"]),
            restoring("lt-2", &["snap-1"]),
        ];
        assert_eq!(the_snapshot(&same), Ok("snap-1"));
        let different = [
            restoring("lt-1", &["snap-1"]),
            restoring("lt-2", &["snap-2"]),
        ];
        assert_eq!(
            the_snapshot(&different).unwrap_err(),
            "the group's templates restore different snapshots (snap-1, and snap-2 in lt-2): a \
             pool serves one set of secrets"
        );
        let none = [restoring("lt-1", &["snap-1"]), restoring("lt-2", &[])];
        assert_eq!(
            the_snapshot(&none).unwrap_err(),
            "lt-2's block device mappings restore no snapshot"
        );
        let several = [restoring("lt-1", &["snap-1", "snap-2"])];
        assert!(the_snapshot(&several).unwrap_err().starts_with(
            "lt-1's block device mappings restore several snapshots (snap-1, snap-2)"
        ));
    }
}
