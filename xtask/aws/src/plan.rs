//! What `seal` changes, in order, computed from an instance's facts.

use std::fmt;

use crate::facts::{HostFacts, KeyPair, SEALED_HOP_LIMIT, SEALED_TAG};
use crate::rules::{IngressRule, SSH_PORT};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    AuthorizeIngress {
        group_id: String,
        rule: IngressRule,
    },
    RevokeIngress {
        group_id: String,
        rule: IngressRule,
    },
    RequireImdsV2,
    EnableTerminationProtection,
    KeepVolumeOnTermination {
        volume_id: String,
        device_name: String,
    },
    DeleteKeyPair(String),
    TagSealed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AuthorizeIngress { group_id, rule } => write!(f, "{group_id}: add {rule}"),
            Change::RevokeIngress { group_id, rule } => write!(f, "{group_id}: remove {rule}"),
            Change::RequireImdsV2 => write!(
                f,
                "require IMDSv2 (session tokens) for instance metadata, with a PUT response \
                 hop limit of {SEALED_HOP_LIMIT}"
            ),
            Change::EnableTerminationProtection => f.write_str("turn termination protection on"),
            Change::KeepVolumeOnTermination {
                volume_id,
                device_name,
            } => write!(
                f,
                "keep secrets volume {volume_id} ({device_name}) when the instance terminates"
            ),
            Change::DeleteKeyPair(name) => write!(
                f,
                "delete key pair {name:?} (the public key stays in the host's authorized_keys, \
                 unreachable once port 22 is closed)"
            ),
            Change::TagSealed => write!(f, "tag the instance {SEALED_TAG}"),
        }
    }
}

pub struct SealPlan {
    pub changes: Vec<Change>,
    /// What seal leaves as it is, and why: the operator must see it.
    pub left_alone: Vec<String>,
}

/// Port 22 goes first (new rules before the old one is removed, so no other
/// access is lost even for a moment), the key pair once the port is closed, and
/// the tag last, so that a host carries it only once it is sealed.
pub fn plan_seal(facts: &HostFacts) -> SealPlan {
    let mut changes = Vec::new();
    let mut left_alone = Vec::new();
    for group in &facts.security_groups {
        let mut added: Vec<&IngressRule> = Vec::new();
        let mut revoked = Vec::new();
        let mut replacements = Vec::new();
        for rule in group
            .ingress
            .iter()
            .filter(|rule| rule.reaches_tcp_port(SSH_PORT))
        {
            let replacement = rule.without_tcp_port(SSH_PORT);
            replacements.push(replacement.rules);
            left_alone.extend(replacement.lost);
            revoked.push(rule);
        }
        for new_rule in replacements.iter().flatten() {
            let exists = group
                .ingress
                .iter()
                .chain(added.iter().copied())
                .any(|r| r.same_permission(new_rule));
            if !exists {
                added.push(new_rule);
            }
        }
        changes.extend(added.into_iter().map(|rule| Change::AuthorizeIngress {
            group_id: group.id.clone(),
            rule: rule.clone(),
        }));
        changes.extend(revoked.into_iter().map(|rule| Change::RevokeIngress {
            group_id: group.id.clone(),
            rule: rule.clone(),
        }));
    }
    if !facts.metadata.is_sealed() {
        changes.push(Change::RequireImdsV2);
    }
    if !facts.termination_protection {
        changes.push(Change::EnableTerminationProtection);
    }
    let volume_sealable = match &facts.secrets_volume {
        Ok(volume) => {
            if volume.delete_on_termination {
                changes.push(Change::KeepVolumeOnTermination {
                    volume_id: volume.volume_id.clone(),
                    device_name: volume.device_name.clone(),
                });
            }
            if !volume.encrypted {
                left_alone.push(format!(
                    "secrets volume {} is not encrypted and EBS cannot encrypt a volume in place: \
                     stop the server, snapshot the volume, copy the snapshot with encryption, \
                     and attach a volume made from the copy",
                    volume.volume_id
                ));
            }
            volume.encrypted
        }
        Err(reason) => {
            left_alone.push(format!("secrets volume: {reason}"));
            false
        }
    };
    if let KeyPair::Exists(name) = &facts.key_pair {
        changes.push(Change::DeleteKeyPair(name.clone()));
    }
    if !facts.public_ips.is_empty() {
        left_alone.push(format!(
            "public IP {} stays: seal does not change addressing",
            facts.public_ips.join(", ")
        ));
    }
    if !facts.sealed_tag {
        if volume_sealable {
            changes.push(Change::TagSealed);
        } else {
            left_alone.push(format!(
                "no tag {SEALED_TAG} while the secrets volume is not as required"
            ));
        }
    }
    SealPlan {
        changes,
        left_alone,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::audit::{audit, tests::sealed_host, Role};
    use crate::facts::{Metadata, SecretsVolume, SecurityGroup};
    use crate::rules::tests::{ipv4, rule};
    use crate::rules::Source;

    /// The host the end-to-end test starts from: everything open and loose.
    fn loose_host() -> HostFacts {
        let admins = Source::Group {
            id: "sg-admins".into(),
            user_id: Some("123456789012".into()),
        };
        HostFacts {
            security_groups: vec![
                SecurityGroup {
                    id: "sg-service".into(),
                    name: "cryptoserver".into(),
                    ingress: vec![
                        rule("tcp", Some((8080, 8080)), ipv4("10.0.0.0/16")),
                        rule("tcp", Some((22, 22)), ipv4("0.0.0.0/0")),
                        rule("tcp", Some((22, 22)), Source::Ipv6("::/0".into())),
                    ],
                },
                SecurityGroup {
                    id: "sg-broad".into(),
                    name: "broad".into(),
                    ingress: vec![
                        rule("-1", None, ipv4("192.168.0.0/16")),
                        rule("tcp", Some((0, 65535)), admins),
                        rule("tcp", Some((20, 25)), Source::PrefixList("pl-1".into())),
                    ],
                },
            ],
            key_pair: KeyPair::Exists("admin".into()),
            metadata: Metadata::Enabled {
                tokens_required: false,
                hop_limit: Some(2),
            },
            termination_protection: false,
            secrets_volume: Ok(SecretsVolume {
                volume_id: "vol-secrets".into(),
                device_name: "/dev/sdf".into(),
                encrypted: true,
                delete_on_termination: true,
            }),
            sealed_tag: false,
            ..sealed_host()
        }
    }

    /// The facts after the plan's changes, as EC2 would report them.
    fn apply(facts: &HostFacts, plan: &SealPlan) -> HostFacts {
        let mut after = facts.clone();
        for change in &plan.changes {
            match change {
                Change::AuthorizeIngress { group_id, rule } => {
                    group_mut(&mut after, group_id).ingress.push(rule.clone())
                }
                Change::RevokeIngress { group_id, rule } => group_mut(&mut after, group_id)
                    .ingress
                    .retain(|r| r != rule),
                Change::RequireImdsV2 => {
                    after.metadata = Metadata::Enabled {
                        tokens_required: true,
                        hop_limit: Some(SEALED_HOP_LIMIT),
                    }
                }
                Change::EnableTerminationProtection => after.termination_protection = true,
                Change::KeepVolumeOnTermination { .. } => {
                    after.secrets_volume.as_mut().unwrap().delete_on_termination = false
                }
                Change::DeleteKeyPair(name) => after.key_pair = KeyPair::Deleted(name.clone()),
                Change::TagSealed => after.sealed_tag = true,
            }
        }
        after
    }

    fn group_mut<'a>(facts: &'a mut HostFacts, id: &str) -> &'a mut SecurityGroup {
        facts
            .security_groups
            .iter_mut()
            .find(|g| g.id == id)
            .unwrap()
    }

    /// (source, protocol, port) triples a host's rules allow, over the ports that matter here.
    fn reachable(facts: &HostFacts) -> BTreeSet<(String, &'static str, u16)> {
        let mut allowed = BTreeSet::new();
        for rule in facts.security_groups.iter().flat_map(|g| &g.ingress) {
            for port in [0, 21, 22, 23, 25, 443, 8080, 65535] {
                if rule.reaches_tcp_port(port) {
                    allowed.insert((rule.source.to_string(), "tcp", port));
                }
                let udp = rule.protocol == "udp" || rule.protocol == "-1";
                if udp
                    && (rule.from_port.unwrap_or(0)..=rule.to_port.unwrap_or(65535))
                        .contains(&i32::from(port))
                {
                    allowed.insert((rule.source.to_string(), "udp", port));
                }
            }
        }
        allowed
    }

    #[test]
    fn sealing_a_loose_host_passes_the_audit_and_keeps_every_other_port() {
        let before = loose_host();
        let plan = plan_seal(&before);
        let after = apply(&before, &plan);
        let failing: Vec<String> = audit(&after, 8080, Role::Host)
            .iter()
            .filter(|c| !c.passed())
            .map(ToString::to_string)
            .collect();
        assert_eq!(failing, Vec::<String>::new());

        let mut expected = reachable(&before);
        expected.retain(|(_, protocol, port)| !(*protocol == "tcp" && *port == 22));
        assert_eq!(reachable(&after), expected);
        assert!(after.security_groups[0].ingress.contains(&rule(
            "tcp",
            Some((8080, 8080)),
            ipv4("10.0.0.0/16")
        )));
        assert_eq!(
            plan_seal(&after).changes,
            vec![],
            "a second seal has nothing to do"
        );
    }

    #[test]
    fn new_rules_come_before_the_revocations_and_the_tag_comes_last() {
        let plan = plan_seal(&loose_host());
        let first_revoke = plan
            .changes
            .iter()
            .position(
                |c| matches!(c, Change::RevokeIngress { group_id, .. } if group_id == "sg-broad"),
            )
            .unwrap();
        let last_authorize = plan
            .changes
            .iter()
            .rposition(|c| matches!(c, Change::AuthorizeIngress { group_id, .. } if group_id == "sg-broad"))
            .unwrap();
        assert!(last_authorize < first_revoke);
        let key = plan
            .changes
            .iter()
            .position(|c| matches!(c, Change::DeleteKeyPair(_)))
            .unwrap();
        let last_revoke = plan
            .changes
            .iter()
            .rposition(|c| matches!(c, Change::RevokeIngress { .. }))
            .unwrap();
        assert!(last_revoke < key);
        assert_eq!(plan.changes.last(), Some(&Change::TagSealed));
        assert_eq!(
            plan.changes
                .iter()
                .filter(|c| **c == Change::TagSealed)
                .count(),
            1
        );
    }

    #[test]
    fn the_service_port_rule_is_never_touched() {
        let plan = plan_seal(&loose_host());
        let service = rule("tcp", Some((8080, 8080)), ipv4("10.0.0.0/16"));
        assert!(!plan.changes.iter().any(|c| matches!(c,
            Change::AuthorizeIngress { rule, .. } | Change::RevokeIngress { rule, .. } if *rule == service)));
    }

    #[test]
    fn a_half_done_seal_is_completed_without_duplicates() {
        let before = loose_host();
        let plan = plan_seal(&before);
        // An API error stopped seal after three changes: two revocations and one new rule.
        let partial = SealPlan {
            changes: plan.changes[..3].to_vec(),
            left_alone: vec![],
        };
        let midway = apply(&before, &partial);
        let rest = plan_seal(&midway);
        assert_eq!(rest.changes, plan.changes[3..].to_vec());
    }

    #[test]
    fn lost_protocols_public_ips_and_unencrypted_volumes_are_left_alone_and_said() {
        let mut host = loose_host();
        host.public_ips = vec!["203.0.113.7".into()];
        host.secrets_volume.as_mut().unwrap().encrypted = false;
        let plan = plan_seal(&host);
        let said = plan.left_alone.join("\n");
        assert!(said.contains("GRE, ESP, SCTP"), "{said}");
        assert!(said.contains("public IP 203.0.113.7"), "{said}");
        assert!(said.contains("vol-secrets is not encrypted"), "{said}");
        assert!(!plan.changes.contains(&Change::TagSealed));
        assert!(plan.changes.contains(&Change::KeepVolumeOnTermination {
            volume_id: "vol-secrets".into(),
            device_name: "/dev/sdf".into(),
        }));
    }

    #[test]
    fn a_hop_limit_above_1_is_lowered_even_with_tokens_required() {
        let mut host = sealed_host();
        host.metadata = Metadata::Enabled {
            tokens_required: true,
            hop_limit: Some(2),
        };
        assert_eq!(plan_seal(&host).changes, vec![Change::RequireImdsV2]);
        host.metadata = Metadata::Disabled;
        assert_eq!(plan_seal(&host).changes, vec![]);
    }

    #[test]
    fn a_sealed_host_needs_nothing() {
        let plan = plan_seal(&sealed_host());
        assert_eq!(plan.changes, vec![]);
        assert_eq!(plan.left_alone, Vec::<String>::new());
    }
}
