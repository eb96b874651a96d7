//! What the EC2 API says about an instance, as plain data the audit and the
//! seal plan are computed from (so both are tested without any API).

use crate::rules::IngressRule;

pub const SEALED_TAG: &str = "cryptoserver:sealed";
/// The secrets fingerprint, on the snapshot `snapshot` makes and on every pool instance.
pub const FINGERPRINT_TAG: &str = "cryptoserver:fingerprint";

#[derive(Clone, Debug)]
pub struct HostFacts {
    pub instance_id: String,
    /// Every security group of every network interface, each once.
    pub security_groups: Vec<SecurityGroup>,
    pub key_pair: KeyPair,
    pub metadata: Metadata,
    pub public_ips: Vec<String>,
    pub termination_protection: bool,
    /// The volume holding the secrets, or why it could not be told apart.
    pub secrets_volume: Result<SecretsVolume, String>,
    pub sealed_tag: bool,
    /// The value of its `cryptoserver:fingerprint` tag, if any.
    pub fingerprint_tag: Option<String>,
    /// The IAM instance profile, if any: SSM Session Manager needs no port.
    pub instance_profile: Option<String>,
}

/// The instance metadata service (IMDS) as the instance's processes reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metadata {
    /// Switched off altogether: there is nothing to reach.
    Disabled,
    Enabled {
        /// IMDSv2 only: every read needs a session token.
        tokens_required: bool,
        /// How many network hops the token's answer may cross; 1 keeps it on the
        /// host itself, out of reach of containers and forwarders. `None` when
        /// EC2 did not say.
        hop_limit: Option<i32>,
    },
}

/// The hop limit a sealed host has.
pub const SEALED_HOP_LIMIT: i32 = 1;

impl Metadata {
    /// What a sealed host has: tokens required, hop limit 1 (or no IMDS at all).
    pub fn is_sealed(&self) -> bool {
        match self {
            Metadata::Disabled => true,
            Metadata::Enabled {
                tokens_required,
                hop_limit,
            } => *tokens_required && *hop_limit == Some(SEALED_HOP_LIMIT),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub ingress: Vec<IngressRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPair {
    NoneAtLaunch,
    /// Launched with this key pair, which no longer exists.
    Deleted(String),
    Exists(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsVolume {
    pub volume_id: String,
    pub device_name: String,
    pub encrypted: bool,
    pub delete_on_termination: bool,
}

/// An EBS volume attached to the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub device_name: String,
    pub volume_id: String,
    pub delete_on_termination: bool,
}

/// How the operator names the secrets volume.
#[derive(Clone, Debug)]
pub enum VolumeChoice {
    VolumeId(String),
    Device(String),
    /// The only EBS volume besides the root volume.
    OnlyDataVolume,
}

/// Picks the secrets volume among the instance's attachments, or says why none fits.
pub fn choose_secrets_volume<'a>(
    attachments: &'a [Attachment],
    root_device: Option<&str>,
    choice: &VolumeChoice,
) -> Result<&'a Attachment, String> {
    let listing = || {
        let all: Vec<String> = attachments
            .iter()
            .map(|a| format!("{} on {}", a.volume_id, a.device_name))
            .collect();
        if all.is_empty() {
            "no EBS volume is attached".to_owned()
        } else {
            format!("attached: {}", all.join(", "))
        }
    };
    match choice {
        VolumeChoice::VolumeId(id) => {
            attachments
                .iter()
                .find(|a| &a.volume_id == id)
                .ok_or_else(|| {
                    format!(
                        "volume {id} is not attached to the instance ({})",
                        listing()
                    )
                })
        }
        VolumeChoice::Device(name) => {
            let wanted = bare_device(name);
            attachments
                .iter()
                .find(|a| bare_device(&a.device_name) == wanted)
                .ok_or_else(|| format!("no EBS volume is attached as {name} ({})", listing()))
        }
        VolumeChoice::OnlyDataVolume => {
            let data: Vec<&Attachment> = attachments
                .iter()
                .filter(|a| {
                    root_device.is_none_or(|root| bare_device(&a.device_name) != bare_device(root))
                })
                .collect();
            match data.as_slice() {
                [only] => Ok(only),
                [] => Err(format!(
                    "the instance has no EBS volume besides its root volume ({})",
                    listing()
                )),
                _ => Err(format!(
                    "cannot tell which volume holds the secrets ({}): name it with \
                     --secrets-volume or --secrets-device",
                    listing()
                )),
            }
        }
    }
}

/// `/dev/sdf` and `sdf` name the same device.
fn bare_device(name: &str) -> &str {
    name.strip_prefix("/dev/").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(device_name: &str, volume_id: &str) -> Attachment {
        Attachment {
            device_name: device_name.into(),
            volume_id: volume_id.into(),
            delete_on_termination: false,
        }
    }

    #[test]
    fn the_only_data_volume_is_chosen_by_default() {
        let attachments = [
            attached("/dev/xvda", "vol-root"),
            attached("/dev/sdf", "vol-data"),
        ];
        let chosen = choose_secrets_volume(
            &attachments,
            Some("/dev/xvda"),
            &VolumeChoice::OnlyDataVolume,
        );
        assert_eq!(chosen.unwrap().volume_id, "vol-data");
    }

    #[test]
    fn several_data_volumes_need_a_choice() {
        let attachments = [
            attached("/dev/xvda", "vol-root"),
            attached("/dev/sdf", "vol-a"),
            attached("/dev/sdg", "vol-b"),
        ];
        let error = choose_secrets_volume(
            &attachments,
            Some("/dev/xvda"),
            &VolumeChoice::OnlyDataVolume,
        )
        .unwrap_err();
        assert!(
            error.contains("vol-a on /dev/sdf, vol-b on /dev/sdg"),
            "{error}"
        );
        assert!(error.contains("--secrets-volume"), "{error}");
        let by_device = choose_secrets_volume(
            &attachments,
            Some("/dev/xvda"),
            &VolumeChoice::Device("sdg".into()),
        );
        assert_eq!(by_device.unwrap().volume_id, "vol-b");
        let by_id =
            choose_secrets_volume(&attachments, None, &VolumeChoice::VolumeId("vol-a".into()));
        assert_eq!(by_id.unwrap().device_name, "/dev/sdf");
    }

    #[test]
    fn a_missing_volume_is_explained() {
        let attachments = [attached("/dev/xvda", "vol-root")];
        let none = choose_secrets_volume(
            &attachments,
            Some("/dev/xvda"),
            &VolumeChoice::OnlyDataVolume,
        )
        .unwrap_err();
        assert!(
            none.contains("no EBS volume besides its root volume"),
            "{none}"
        );
        let wrong = choose_secrets_volume(
            &attachments,
            Some("/dev/xvda"),
            &VolumeChoice::VolumeId("vol-x".into()),
        )
        .unwrap_err();
        assert_eq!(
            wrong,
            "volume vol-x is not attached to the instance (attached: vol-root on /dev/xvda)"
        );
    }
}
