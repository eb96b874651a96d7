//! The seven checks of `audit`, computed from an instance's facts.

use std::fmt;

use crate::facts::{HostFacts, KeyPair, Metadata, SecurityGroup, SEALED_HOP_LIMIT, SEALED_TAG};
use crate::rules::SSH_PORT;

pub struct Check {
    pub number: u8,
    pub title: &'static str,
    /// What was found when it passes, why it fails otherwise.
    pub outcome: Result<String, String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verdict, text) = match &self.outcome {
            Ok(found) => ("PASS", found),
            Err(reason) => ("FAIL", reason),
        };
        write!(f, "{verdict} {}. {}: {text}", self.number, self.title)
    }
}

/// What an instance is for, which decides what it must keep when it terminates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A single sealed host: its secrets volume is the only copy of the secrets.
    Host,
    /// A replica of an Auto Scaling pool: the snapshot is the durable copy, and a
    /// volume kept after its instance would be one more copy of the secrets lying about.
    PoolReplica,
}

pub fn audit(facts: &HostFacts, service_port: u16, role: Role) -> Vec<Check> {
    vec![
        Check {
            number: 1,
            title: "no ingress rule reaches TCP port 22",
            outcome: port_22_closed(&facts.security_groups, service_port),
        },
        Check {
            number: 2,
            title: "no usable key pair",
            outcome: match &facts.key_pair {
                KeyPair::NoneAtLaunch => Ok("launched without a key pair".into()),
                KeyPair::Deleted(name) => Ok(format!("key pair {name:?} no longer exists")),
                KeyPair::Exists(name) => Err(format!(
                    "launched with key pair {name:?}, which still exists"
                )),
            },
        },
        Check {
            number: 3,
            title: "IMDSv2 required, hop limit 1",
            outcome: metadata(&facts.metadata),
        },
        Check {
            number: 4,
            title: "no public IPv4 address",
            outcome: if facts.public_ips.is_empty() {
                Ok("none".into())
            } else {
                Err(format!(
                    "public {} (seal does not change this: launch without one, or remove \
                     the Elastic IP / subnet auto-assignment and replace the instance)",
                    facts.public_ips.join(", ")
                ))
            },
        },
        Check {
            number: 5,
            title: "termination protection",
            outcome: match (role, facts.termination_protection) {
                (Role::Host, true) => Ok("on".into()),
                (Role::Host, false) => Err("off: one API call can destroy the host".into()),
                (Role::PoolReplica, _) => Ok(
                    "not required on a pool replica: Auto Scaling replaces it from the snapshot"
                        .into(),
                ),
            },
        },
        Check {
            number: 6,
            title: match role {
                Role::Host => "secrets volume encrypted and kept on termination",
                Role::PoolReplica => "secrets volume encrypted",
            },
            outcome: match &facts.secrets_volume {
                Err(reason) => Err(reason.clone()),
                Ok(volume) => {
                    let mut problems = Vec::new();
                    if !volume.encrypted {
                        problems.push("is not encrypted");
                    }
                    if volume.delete_on_termination && role == Role::Host {
                        problems.push("is deleted when the instance terminates");
                    }
                    let name = format!("{} on {}", volume.volume_id, volume.device_name);
                    if problems.is_empty() {
                        Ok(name)
                    } else {
                        Err(format!("{name} {}", problems.join(" and ")))
                    }
                }
            },
        },
        Check {
            number: 7,
            title: "tagged",
            outcome: if facts.sealed_tag {
                Ok(format!("tag {SEALED_TAG} present"))
            } else {
                Err(format!("no tag {SEALED_TAG}"))
            },
        },
    ]
}

fn metadata(metadata: &Metadata) -> Result<String, String> {
    let Metadata::Enabled {
        tokens_required,
        hop_limit,
    } = metadata
    else {
        return Ok("instance metadata is switched off".into());
    };
    let mut problems = Vec::new();
    if !tokens_required {
        problems.push("instance metadata answers without a session token (IMDSv1)".to_owned());
    }
    match hop_limit {
        Some(SEALED_HOP_LIMIT) => {}
        Some(limit) => problems.push(format!(
            "the PUT response hop limit is {limit}, so a session token reaches containers \
             and forwarders beyond the host"
        )),
        None => problems.push("EC2 did not report the PUT response hop limit".to_owned()),
    }
    if problems.is_empty() {
        Ok(format!(
            "instance metadata needs session tokens, PUT response hop limit {SEALED_HOP_LIMIT}"
        ))
    } else {
        Err(problems.join("; "))
    }
}

/// Whether any rule of `groups` reaches TCP port 22; if none does, who reaches the service port.
pub fn port_22_closed(groups: &[SecurityGroup], service_port: u16) -> Result<String, String> {
    let mut open = Vec::new();
    let mut service_sources = Vec::new();
    for group in groups {
        for rule in &group.ingress {
            if rule.reaches_tcp_port(SSH_PORT) {
                open.push(format!("{} ({}) allows {rule}", group.id, group.name));
            }
            if rule.reaches_tcp_port(service_port) {
                service_sources.push(rule.source.to_string());
            }
        }
    }
    if !open.is_empty() {
        return Err(open.join("; "));
    }
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    let service = if service_sources.is_empty() {
        format!("no rule opens service port {service_port}: clients cannot reach the service")
    } else {
        service_sources.sort();
        service_sources.dedup();
        format!(
            "service port {service_port} open from {}",
            service_sources.join(", ")
        )
    };
    Ok(format!("groups {}; {service}", ids.join(", ")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::facts::{SecretsVolume, SecurityGroup};
    use crate::rules::tests::{ipv4, rule};

    /// A host as the Terraform module makes it: passes every check.
    pub fn sealed_host() -> HostFacts {
        HostFacts {
            instance_id: "i-0123456789abcdef0".into(),
            security_groups: vec![SecurityGroup {
                id: "sg-service".into(),
                name: "cryptoserver".into(),
                ingress: vec![rule("tcp", Some((8080, 8080)), ipv4("10.0.0.0/16"))],
            }],
            key_pair: KeyPair::NoneAtLaunch,
            metadata: Metadata::Enabled {
                tokens_required: true,
                hop_limit: Some(1),
            },
            public_ips: vec![],
            termination_protection: true,
            secrets_volume: Ok(SecretsVolume {
                volume_id: "vol-secrets".into(),
                device_name: "/dev/sdf".into(),
                encrypted: true,
                delete_on_termination: false,
            }),
            sealed_tag: true,
            fingerprint_tag: None,
            instance_profile: None,
        }
    }

    fn failures(facts: &HostFacts) -> Vec<u8> {
        audit(facts, 8080, Role::Host)
            .iter()
            .filter(|check| !check.passed())
            .map(|check| check.number)
            .collect()
    }

    #[test]
    fn a_sealed_host_passes_and_says_who_reaches_the_service() {
        let checks = audit(&sealed_host(), 8080, Role::Host);
        assert!(checks.iter().all(Check::passed));
        assert_eq!(
            checks[0].to_string(),
            "PASS 1. no ingress rule reaches TCP port 22: groups sg-service; \
             service port 8080 open from 10.0.0.0/16"
        );
    }

    #[test]
    fn each_weakness_fails_its_own_check() {
        let mut host = sealed_host();
        host.security_groups[0]
            .ingress
            .push(rule("-1", None, ipv4("172.16.0.0/12")));
        assert_eq!(failures(&host), [1]);
        assert!(audit(&host, 8080, Role::Host)[0]
            .to_string()
            .contains("sg-service (cryptoserver) allows all traffic from 172.16.0.0/12"));

        let mut host = sealed_host();
        host.key_pair = KeyPair::Exists("admin".into());
        assert_eq!(failures(&host), [2]);
        host.key_pair = KeyPair::Deleted("admin".into());
        assert_eq!(failures(&host), [] as [u8; 0]);

        let mut host = sealed_host();
        host.metadata = Metadata::Enabled {
            tokens_required: false,
            hop_limit: Some(1),
        };
        host.public_ips = vec!["203.0.113.7".into()];
        host.termination_protection = false;
        host.sealed_tag = false;
        assert_eq!(failures(&host), [3, 4, 5, 7]);

        let mut host = sealed_host();
        host.secrets_volume = Ok(SecretsVolume {
            volume_id: "vol-secrets".into(),
            device_name: "/dev/sdf".into(),
            encrypted: false,
            delete_on_termination: true,
        });
        let volume_check = &audit(&host, 8080, Role::Host)[5];
        assert_eq!(
            volume_check.to_string(),
            "FAIL 6. secrets volume encrypted and kept on termination: vol-secrets on /dev/sdf \
             is not encrypted and is deleted when the instance terminates"
        );
    }

    #[test]
    fn metadata_needs_tokens_and_hop_limit_1_unless_switched_off() {
        let mut host = sealed_host();
        host.metadata = Metadata::Enabled {
            tokens_required: true,
            hop_limit: Some(2),
        };
        assert_eq!(failures(&host), [3]);
        assert_eq!(
            audit(&host, 8080, Role::Host)[2].to_string(),
            "FAIL 3. IMDSv2 required, hop limit 1: the PUT response hop limit is 2, so a \
             session token reaches containers and forwarders beyond the host"
        );
        host.metadata = Metadata::Enabled {
            tokens_required: false,
            hop_limit: Some(2),
        };
        let both = audit(&host, 8080, Role::Host)[2].to_string();
        assert!(
            both.contains("(IMDSv1); the PUT response hop limit is 2"),
            "{both}"
        );
        host.metadata = Metadata::Enabled {
            tokens_required: true,
            hop_limit: None,
        };
        assert!(audit(&host, 8080, Role::Host)[2]
            .to_string()
            .contains("did not report the PUT response hop limit"));
        host.metadata = Metadata::Disabled;
        assert_eq!(failures(&host), [] as [u8; 0]);
    }

    #[test]
    fn a_pool_replica_needs_no_termination_protection_and_loses_its_volume() {
        let mut host = sealed_host();
        host.termination_protection = false;
        host.secrets_volume.as_mut().unwrap().delete_on_termination = true;
        assert_eq!(failures(&host), [5, 6]);
        let checks = audit(&host, 8080, Role::PoolReplica);
        assert!(checks.iter().all(Check::passed));
        assert_eq!(
            checks[5].to_string(),
            "PASS 6. secrets volume encrypted: vol-secrets on /dev/sdf"
        );
        host.secrets_volume.as_mut().unwrap().encrypted = false;
        assert!(!audit(&host, 8080, Role::PoolReplica)[5].passed());
    }

    #[test]
    fn a_closed_service_port_is_pointed_out_but_passes() {
        let mut host = sealed_host();
        host.security_groups[0].ingress.clear();
        let check = &audit(&host, 8080, Role::Host)[0];
        assert!(check.passed());
        assert!(check
            .to_string()
            .contains("clients cannot reach the service"));
    }
}
