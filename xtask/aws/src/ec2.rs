//! The EC2 API calls: reading an instance's facts and making one change.

use std::error::Error;

use anyhow::{anyhow, bail, Context};
use aws_config::SdkConfig;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, EbsInstanceBlockDeviceSpecification, Filter, HttpTokensState, Instance,
    InstanceAttributeName, InstanceBlockDeviceMappingSpecification, InstanceMetadataEndpointState,
    IpPermission, IpRange, Ipv6Range, PrefixListId, Tag, UserIdGroupPair, Volume,
};
use aws_sdk_ec2::Client;

use crate::facts::{
    choose_secrets_volume, Attachment, HostFacts, KeyPair, Metadata, SecretsVolume, SecurityGroup,
    VolumeChoice, FINGERPRINT_TAG, SEALED_HOP_LIMIT, SEALED_TAG,
};
use crate::plan::Change;
use crate::rules::{IngressRule, Source};

pub struct Ec2 {
    pub client: Client,
    /// Where requests go, for error messages: the endpoint URL or the region.
    pub target: String,
}

impl Ec2 {
    /// A client for `config`'s region; `endpoint` is the URL it was pointed at, if any.
    pub fn new(config: &SdkConfig, endpoint: Option<&str>) -> Ec2 {
        Ec2 {
            client: Client::new(config),
            target: target("EC2", config, endpoint),
        }
    }

    pub async fn describe_instance(&self, instance_id: &str) -> anyhow::Result<Instance> {
        let described = self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|error| match error.code() {
                Some("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed") => anyhow!(
                    "instance {instance_id} does not exist in {}: check the instance id and --region",
                    self.target
                ),
                _ => self.api_error("DescribeInstances", error),
            })?;
        described
            .reservations()
            .iter()
            .flat_map(|reservation| reservation.instances())
            .find(|instance| instance.instance_id() == Some(instance_id))
            .cloned()
            .with_context(|| format!("instance {instance_id} does not exist in {}", self.target))
    }

    pub async fn host_facts(
        &self,
        instance_id: &str,
        volume: &VolumeChoice,
    ) -> anyhow::Result<HostFacts> {
        let instance = self.describe_instance(instance_id).await?;
        let mut group_ids: Vec<String> = instance
            .network_interfaces()
            .iter()
            .flat_map(|interface| interface.groups())
            .chain(instance.security_groups())
            .filter_map(|group| group.group_id().map(str::to_owned))
            .collect();
        group_ids.sort();
        group_ids.dedup();

        let mut public_ips: Vec<String> = instance
            .public_ip_address()
            .into_iter()
            .chain(
                instance
                    .network_interfaces()
                    .iter()
                    .filter_map(|interface| interface.association()?.public_ip()),
            )
            .map(str::to_owned)
            .collect();
        public_ips.sort();
        public_ips.dedup();

        let metadata = match instance.metadata_options() {
            Some(options)
                if options.http_endpoint() == Some(&InstanceMetadataEndpointState::Disabled) =>
            {
                Metadata::Disabled
            }
            options => Metadata::Enabled {
                tokens_required: options.and_then(|o| o.http_tokens())
                    == Some(&HttpTokensState::Required),
                hop_limit: options.and_then(|o| o.http_put_response_hop_limit()),
            },
        };

        let attachments = attachments(&instance);
        let secrets_volume =
            match choose_secrets_volume(&attachments, instance.root_device_name(), volume) {
                Ok(attachment) => Ok(self.secrets_volume(attachment).await?),
                Err(reason) => Err(reason),
            };

        Ok(HostFacts {
            instance_id: instance_id.to_owned(),
            security_groups: self.security_groups(group_ids, Vec::new()).await?,
            key_pair: match instance.key_name() {
                None => KeyPair::NoneAtLaunch,
                Some(name) => self.key_pair(name).await?,
            },
            metadata,
            public_ips,
            termination_protection: self.termination_protection(instance_id).await?,
            secrets_volume,
            sealed_tag: tag(instance.tags(), SEALED_TAG).is_some(),
            fingerprint_tag: tag(instance.tags(), FINGERPRINT_TAG).map(str::to_owned),
            instance_profile: instance
                .iam_instance_profile()
                .and_then(|profile| profile.arn())
                .map(str::to_owned),
        })
    }

    /// The groups named by id or, in a default VPC, by name.
    pub async fn security_groups(
        &self,
        group_ids: Vec<String>,
        group_names: Vec<String>,
    ) -> anyhow::Result<Vec<SecurityGroup>> {
        if group_ids.is_empty() && group_names.is_empty() {
            return Ok(Vec::new());
        }
        let described = self
            .client
            .describe_security_groups()
            .set_group_ids(Some(group_ids).filter(|ids| !ids.is_empty()))
            .set_group_names(Some(group_names).filter(|names| !names.is_empty()))
            .send()
            .await
            .map_err(|error| self.api_error("DescribeSecurityGroups", error))?;
        Ok(described
            .security_groups()
            .iter()
            .map(|group| SecurityGroup {
                id: group.group_id().unwrap_or_default().to_owned(),
                name: group.group_name().unwrap_or_default().to_owned(),
                ingress: group
                    .ip_permissions()
                    .iter()
                    .flat_map(ingress_rules)
                    .collect(),
            })
            .collect())
    }

    async fn key_pair(&self, name: &str) -> anyhow::Result<KeyPair> {
        match self
            .client
            .describe_key_pairs()
            .key_names(name)
            .send()
            .await
        {
            Ok(found) if !found.key_pairs().is_empty() => Ok(KeyPair::Exists(name.to_owned())),
            Ok(_) => Ok(KeyPair::Deleted(name.to_owned())),
            Err(error) if error.code() == Some("InvalidKeyPair.NotFound") => {
                Ok(KeyPair::Deleted(name.to_owned()))
            }
            Err(error) => Err(self.api_error("DescribeKeyPairs", error)),
        }
    }

    async fn termination_protection(&self, instance_id: &str) -> anyhow::Result<bool> {
        let attribute = self
            .client
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(InstanceAttributeName::DisableApiTermination)
            .send()
            .await
            .map_err(|error| self.api_error("DescribeInstanceAttribute", error))?;
        Ok(attribute
            .disable_api_termination()
            .and_then(AttributeBooleanValue::value)
            .unwrap_or(false))
    }

    /// This account's snapshots of `volume_id` without a `cryptoserver:fingerprint` tag
    /// (which `snapshot` and the module's backups give a snapshot of complete secrets):
    /// each id with its start time.
    pub async fn snapshots_without_fingerprint(
        &self,
        volume_id: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let described = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                Filter::builder()
                    .name("volume-id")
                    .values(volume_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|error| self.api_error("DescribeSnapshots", error))?;
        Ok(described
            .snapshots()
            .iter()
            .filter(|snapshot| tag(snapshot.tags(), FINGERPRINT_TAG).is_none())
            .filter_map(|snapshot| {
                let started = snapshot.start_time().map_or_else(
                    || "at an unknown time".to_owned(),
                    |time| {
                        time.fmt(DateTimeFormat::DateTime)
                            .unwrap_or_else(|_| time.to_string())
                    },
                );
                Some((snapshot.snapshot_id()?.to_owned(), started))
            })
            .collect())
    }

    pub async fn describe_volume(&self, volume_id: &str) -> anyhow::Result<Volume> {
        let described = self
            .client
            .describe_volumes()
            .volume_ids(volume_id)
            .send()
            .await
            .map_err(|error| self.api_error("DescribeVolumes", error))?;
        described
            .volumes()
            .first()
            .cloned()
            .with_context(|| format!("EC2 did not describe volume {volume_id}"))
    }

    async fn secrets_volume(&self, attachment: &Attachment) -> anyhow::Result<SecretsVolume> {
        let volume = self.describe_volume(&attachment.volume_id).await?;
        Ok(SecretsVolume {
            volume_id: attachment.volume_id.clone(),
            device_name: attachment.device_name.clone(),
            encrypted: volume.encrypted().unwrap_or(false),
            delete_on_termination: attachment.delete_on_termination,
        })
    }

    pub async fn apply(
        &self,
        instance_id: &str,
        change: &Change,
        sealed_at: &str,
    ) -> anyhow::Result<()> {
        match change {
            Change::AuthorizeIngress { group_id, rule } => {
                self.client
                    .authorize_security_group_ingress()
                    .group_id(group_id)
                    .ip_permissions(ip_permission(rule))
                    .send()
                    .await
                    .map_err(|error| self.api_error("AuthorizeSecurityGroupIngress", error))?;
            }
            Change::RevokeIngress { group_id, rule } => {
                let revoked = self
                    .client
                    .revoke_security_group_ingress()
                    .group_id(group_id)
                    .ip_permissions(ip_permission(rule))
                    .send()
                    .await
                    .map_err(|error| self.api_error("RevokeSecurityGroupIngress", error))?;
                // EC2 answers success even when it matched no rule, and lists what it did not find.
                if !revoked.unknown_ip_permissions().is_empty() {
                    bail!("EC2 found no rule {rule} in {group_id} to remove: was the group changed meanwhile?");
                }
            }
            Change::RequireImdsV2 => {
                self.client
                    .modify_instance_metadata_options()
                    .instance_id(instance_id)
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(SEALED_HOP_LIMIT)
                    .send()
                    .await
                    .map_err(|error| self.api_error("ModifyInstanceMetadataOptions", error))?;
            }
            Change::EnableTerminationProtection => {
                self.client
                    .modify_instance_attribute()
                    .instance_id(instance_id)
                    .disable_api_termination(AttributeBooleanValue::builder().value(true).build())
                    .send()
                    .await
                    .map_err(|error| self.api_error("ModifyInstanceAttribute", error))?;
            }
            Change::KeepVolumeOnTermination {
                volume_id,
                device_name,
            } => {
                let mapping = InstanceBlockDeviceMappingSpecification::builder()
                    .device_name(device_name)
                    .ebs(
                        EbsInstanceBlockDeviceSpecification::builder()
                            .volume_id(volume_id)
                            .delete_on_termination(false)
                            .build(),
                    )
                    .build();
                self.client
                    .modify_instance_attribute()
                    .instance_id(instance_id)
                    .block_device_mappings(mapping)
                    .send()
                    .await
                    .map_err(|error| self.api_error("ModifyInstanceAttribute", error))?;
            }
            Change::DeleteKeyPair(name) => {
                self.client
                    .delete_key_pair()
                    .key_name(name)
                    .send()
                    .await
                    .map_err(|error| self.api_error("DeleteKeyPair", error))?;
            }
            Change::TagSealed => {
                self.client
                    .create_tags()
                    .resources(instance_id)
                    .tags(Tag::builder().key(SEALED_TAG).value(sealed_at).build())
                    .send()
                    .await
                    .map_err(|error| self.api_error("CreateTags", error))?;
            }
        }
        Ok(())
    }

    pub fn api_error<E>(&self, call: &str, error: SdkError<E>) -> anyhow::Error
    where
        E: ProvideErrorMetadata + Error + Send + Sync + 'static,
    {
        api_error(&self.target, call, error)
    }
}

/// Says what failed: the service's own error code and message when it answered,
/// otherwise why it could not be asked. `target` names the endpoint or region.
pub fn api_error<E>(target: &str, call: &str, error: SdkError<E>) -> anyhow::Error
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    let unreachable = match &error {
        SdkError::ServiceError(service) => {
            let service = service.err();
            return anyhow!(
                "{call} was refused by {target}: {}: {}",
                service.code().unwrap_or("unknown error"),
                service.message().unwrap_or("no message")
            );
        }
        SdkError::DispatchFailure(failure) => failure.is_io() || failure.is_timeout(),
        SdkError::TimeoutError(_) => true,
        _ => false,
    };
    if unreachable {
        anyhow!(
            "cannot reach {target} for {call}: {}; check the network, --endpoint-url and --region",
            causes(&error)
        )
    } else {
        anyhow!("{call} failed: {}", causes(&error))
    }
}

/// Where a service's requests go, for messages: `the EC2 endpoint http://…` or `EC2 in eu-west-1`.
pub fn target(service: &str, config: &SdkConfig, endpoint: Option<&str>) -> String {
    match endpoint {
        Some(url) => format!("the {service} endpoint {url}"),
        None => format!(
            "{service} in {}",
            config.region().map_or("the default region", |r| r.as_ref())
        ),
    }
}

/// The EBS volumes attached to an instance.
pub fn attachments(instance: &Instance) -> Vec<Attachment> {
    instance
        .block_device_mappings()
        .iter()
        .filter_map(|mapping| {
            let ebs = mapping.ebs()?;
            Some(Attachment {
                device_name: mapping.device_name()?.to_owned(),
                volume_id: ebs.volume_id()?.to_owned(),
                delete_on_termination: ebs.delete_on_termination().unwrap_or(false),
            })
        })
        .collect()
}

/// The value of the tag `key`, if present.
pub fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|tag| tag.key() == Some(key))
        .map(|tag| tag.value().unwrap_or_default())
}

/// A DescribeSnapshots filter: the tag `key` is `value`.
pub fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// An error and its sources on one line, each message once.
pub fn causes(error: &(dyn Error + 'static)) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let message = current.to_string();
        if !messages
            .last()
            .is_some_and(|previous| previous.contains(&message))
        {
            messages.push(message);
        }
        next = current.source();
    }
    messages.join(": ")
}

/// One rule per source, the way audit and seal reason about them.
fn ingress_rules(permission: &IpPermission) -> Vec<IngressRule> {
    let rule = |source: Source, description: Option<&str>| IngressRule {
        protocol: permission.ip_protocol().unwrap_or("-1").to_owned(),
        from_port: permission.from_port(),
        to_port: permission.to_port(),
        source,
        description: description.map(str::to_owned),
    };
    let mut rules = Vec::new();
    for range in permission.ip_ranges() {
        if let Some(cidr) = range.cidr_ip() {
            rules.push(rule(Source::Ipv4(cidr.to_owned()), range.description()));
        }
    }
    for range in permission.ipv6_ranges() {
        if let Some(cidr) = range.cidr_ipv6() {
            rules.push(rule(Source::Ipv6(cidr.to_owned()), range.description()));
        }
    }
    for list in permission.prefix_list_ids() {
        if let Some(id) = list.prefix_list_id() {
            rules.push(rule(Source::PrefixList(id.to_owned()), list.description()));
        }
    }
    for pair in permission.user_id_group_pairs() {
        if let Some(id) = pair.group_id() {
            let source = Source::Group {
                id: id.to_owned(),
                user_id: pair.user_id().map(str::to_owned),
            };
            rules.push(rule(source, pair.description()));
        }
    }
    rules
}

/// The EC2 form of one rule, to authorize or revoke exactly it.
fn ip_permission(rule: &IngressRule) -> IpPermission {
    let description = rule.description.clone();
    let permission = IpPermission::builder()
        .ip_protocol(&rule.protocol)
        .set_from_port(rule.from_port)
        .set_to_port(rule.to_port);
    match &rule.source {
        Source::Ipv4(cidr) => permission.ip_ranges(
            IpRange::builder()
                .cidr_ip(cidr)
                .set_description(description)
                .build(),
        ),
        Source::Ipv6(cidr) => permission.ipv6_ranges(
            Ipv6Range::builder()
                .cidr_ipv6(cidr)
                .set_description(description)
                .build(),
        ),
        Source::PrefixList(id) => permission.prefix_list_ids(
            PrefixListId::builder()
                .prefix_list_id(id)
                .set_description(description)
                .build(),
        ),
        Source::Group { id, user_id } => permission.user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(id)
                .set_user_id(user_id.clone())
                .set_description(description)
                .build(),
        ),
    }
    .build()
}
