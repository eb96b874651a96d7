//! The Auto Scaling and EC2 API calls behind `audit --asg`: a pool's group, the
//! launch template version it launches, the secrets snapshot and every instance.

use anyhow::{anyhow, Context};
use aws_config::SdkConfig;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::AutoScalingGroup;
use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataEndpointState, PermissionGroup,
    ResponseLaunchTemplateData, SnapshotAttributeName,
};

use crate::ec2::{api_error, tag, target, Ec2};
use crate::facts::{Metadata, VolumeChoice, FINGERPRINT_TAG};
use crate::pool::{PoolFacts, PublicIp, SecretsSnapshot, Template};

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
        let group = self.group(name).await?;
        Ok(group
            .instances()
            .iter()
            .filter_map(|instance| instance.instance_id().map(str::to_owned))
            .collect())
    }
}

pub async fn pool_facts(
    ec2: &Ec2,
    autoscaling: &AutoScaling,
    name: &str,
    volume: &VolumeChoice,
) -> anyhow::Result<PoolFacts> {
    let group = autoscaling.group(name).await?;
    let template = launch_template(ec2, &group).await?;
    let snapshot = match &template {
        Err(_) => Err("there is no launch template to read the snapshot from".to_owned()),
        Ok((template, snapshot_ids)) => match snapshot_ids.as_slice() {
            [id] => Ok(secrets_snapshot(ec2, id).await?),
            [] => Err(format!(
                "{}'s block device mappings restore no snapshot",
                template.name
            )),
            several => Err(format!(
                "{}'s block device mappings restore several snapshots ({}): cannot tell which \
                 holds the secrets",
                template.name,
                several.join(", ")
            )),
        },
    };
    let mut instances = Vec::new();
    for instance in group.instances() {
        if let Some(id) = instance.instance_id() {
            instances.push(ec2.host_facts(id, volume).await?);
        }
    }
    Ok(PoolFacts {
        group: name.to_owned(),
        template: template.map(|(template, _)| template),
        snapshot,
        instances,
    })
}

/// The template version the group launches and the snapshots its mappings restore,
/// or why the group has no template to audit.
async fn launch_template(
    ec2: &Ec2,
    group: &AutoScalingGroup,
) -> anyhow::Result<Result<(Template, Vec<String>), String>> {
    let spec = group.launch_template().or_else(|| {
        group
            .mixed_instances_policy()?
            .launch_template()?
            .launch_template_specification()
    });
    let Some(spec) = spec else {
        return Ok(Err(match group.launch_configuration_name() {
            Some(old) => format!(
                "the group launches from launch configuration {old}, which cannot require \
                 IMDSv2 with hop limit 1 the way a launch template does: move it to a launch template"
            ),
            None => "the group names no launch template".to_owned(),
        }));
    };
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
    Ok(Ok((template, snapshot_ids)))
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
    })
}
