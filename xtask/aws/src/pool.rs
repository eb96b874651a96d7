//! The group checks of `audit --asg` (numbered after the seven per-instance
//! ones), computed from what the EC2 and Auto Scaling APIs say about a pool:
//! its launch template, the secrets snapshot that template restores, and the
//! fingerprint tags of its instances.

use crate::audit::{port_22_closed, Check};
use crate::facts::{HostFacts, Metadata, SecurityGroup, FINGERPRINT_TAG, SEALED_HOP_LIMIT};

pub struct PoolFacts {
    pub group: String,
    /// The launch template version the group launches, or why there is none to audit.
    pub template: Result<Template, String>,
    /// The snapshot the template's block device mappings restore, or why there is none.
    pub snapshot: Result<SecretsSnapshot, String>,
    pub instances: Vec<HostFacts>,
}

pub struct Template {
    /// e.g. `lt-0abc (cryptoserver-pool) version 3`
    pub name: String,
    pub key_name: Option<String>,
    pub instance_profile: Option<String>,
    /// `None` when the template leaves metadata options to the image and account defaults.
    pub metadata: Option<Metadata>,
    pub public_ip: PublicIp,
    pub security_groups: Vec<SecurityGroup>,
}

/// Whether instances of the template get a public IPv4 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicIp {
    /// The template's network interface says so.
    Template(bool),
    /// The template does not say: these subnets of the group assign one at launch.
    Subnets(Vec<String>),
}

pub struct SecretsSnapshot {
    pub id: String,
    pub encrypted: bool,
    /// createVolumePermission holds the group `all`.
    pub public: bool,
    /// The accounts createVolumePermission names.
    pub shared_with: Vec<String>,
    pub fingerprint: Option<String>,
}

pub fn pool_checks(pool: &PoolFacts, service_port: u16) -> Vec<Check> {
    let snapshot = |check: &dyn Fn(&SecretsSnapshot) -> Result<String, String>| {
        pool.snapshot.as_ref().map_err(Clone::clone).and_then(check)
    };
    vec![
        Check {
            number: 8,
            title: "launch template sealed",
            outcome: pool
                .template
                .as_ref()
                .map_err(Clone::clone)
                .and_then(template_sealed),
        },
        Check {
            number: 9,
            title: "the launch template's security groups reach no TCP port 22",
            outcome: pool
                .template
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|template| port_22_closed(&template.security_groups, service_port)),
        },
        Check {
            number: 10,
            title: "secrets snapshot encrypted",
            outcome: snapshot(&|s| {
                if s.encrypted {
                    Ok(s.id.clone())
                } else {
                    Err(format!("{} is not encrypted", s.id))
                }
            }),
        },
        Check {
            number: 11,
            title: "secrets snapshot not public",
            outcome: snapshot(&|s| {
                if s.public {
                    Err(format!(
                        "{} is public: any AWS account can make a volume of the secrets from it; \
                         aws ec2 modify-snapshot-attribute --snapshot-id {} --attribute \
                         createVolumePermission --operation-type remove --group-names all",
                        s.id, s.id
                    ))
                } else {
                    Ok(format!("{}: createVolumePermission has no group all", s.id))
                }
            }),
        },
        Check {
            number: 12,
            title: "secrets snapshot not shared with another account",
            outcome: snapshot(&|s| {
                if s.shared_with.is_empty() {
                    Ok(format!("{}: createVolumePermission names no account", s.id))
                } else {
                    Err(format!(
                        "{} is shared with account {}: each can make a volume of the secrets",
                        s.id,
                        s.shared_with.join(", ")
                    ))
                }
            }),
        },
        Check {
            number: 13,
            title: "every instance carries the snapshot's fingerprint",
            outcome: snapshot(&|s| same_fingerprint(s, &pool.instances)),
        },
    ]
}

fn template_sealed(template: &Template) -> Result<String, String> {
    let mut problems = Vec::new();
    if let Some(key) = &template.key_name {
        problems.push(format!("launches with key pair {key:?}"));
    }
    if let Some(profile) = &template.instance_profile {
        problems.push(format!("gives instances the instance profile {profile}"));
    }
    match &template.metadata {
        None => problems.push(
            "sets no metadata options, so the image's or account's defaults apply: require \
             IMDSv2 (http_tokens = required) with hop limit 1"
                .to_owned(),
        ),
        Some(Metadata::Disabled) => {}
        Some(Metadata::Enabled {
            tokens_required,
            hop_limit,
        }) => {
            if !tokens_required {
                problems.push("does not require IMDSv2 session tokens".to_owned());
            }
            match hop_limit {
                Some(SEALED_HOP_LIMIT) => {}
                Some(limit) => problems.push(format!("sets the PUT response hop limit to {limit}")),
                None => problems.push(format!(
                    "does not set the PUT response hop limit (the image's default may be above \
                     {SEALED_HOP_LIMIT})"
                )),
            }
        }
    }
    match &template.public_ip {
        PublicIp::Template(false) => {}
        PublicIp::Template(true) => problems.push("associates a public IPv4 address".to_owned()),
        PublicIp::Subnets(subnets) if subnets.is_empty() => {}
        PublicIp::Subnets(subnets) => problems.push(format!(
            "does not set associate_public_ip_address = false, and subnet {} assigns public \
             IPv4 addresses at launch",
            subnets.join(", ")
        )),
    }
    if problems.is_empty() {
        Ok(format!(
            "{}: no key pair, no instance profile, IMDSv2 required with hop limit \
             {SEALED_HOP_LIMIT}, no public IPv4 address",
            template.name
        ))
    } else {
        Err(format!("{} {}", template.name, problems.join("; ")))
    }
}

fn same_fingerprint(snapshot: &SecretsSnapshot, instances: &[HostFacts]) -> Result<String, String> {
    let Some(expected) = &snapshot.fingerprint else {
        return Err(format!(
            "{} has no tag {FINGERPRINT_TAG}: make it with `cargo xtask snapshot`",
            snapshot.id
        ));
    };
    let differing: Vec<String> = instances
        .iter()
        .filter(|instance| instance.fingerprint_tag.as_ref() != Some(expected))
        .map(|instance| match &instance.fingerprint_tag {
            Some(other) => format!("{} has {other}", instance.instance_id),
            None => format!("{} has no tag {FINGERPRINT_TAG}", instance.instance_id),
        })
        .collect();
    if differing.is_empty() {
        Ok(format!(
            "{expected} on {} and on all {} instances",
            snapshot.id,
            instances.len()
        ))
    } else {
        Err(format!(
            "{} has {expected}, but {}",
            snapshot.id,
            differing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::sealed_host;
    use crate::rules::tests::{ipv4, rule};

    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef";

    /// A pool as the Terraform module makes it: every group check passes.
    fn sealed_pool() -> PoolFacts {
        let replica = |id: &str| HostFacts {
            instance_id: id.into(),
            fingerprint_tag: Some(FINGERPRINT.into()),
            ..sealed_host()
        };
        PoolFacts {
            group: "cryptoserver-pool".into(),
            template: Ok(Template {
                name: "lt-1 (pool) version 2".into(),
                key_name: None,
                instance_profile: None,
                metadata: Some(Metadata::Enabled {
                    tokens_required: true,
                    hop_limit: Some(1),
                }),
                public_ip: PublicIp::Template(false),
                security_groups: sealed_host().security_groups,
            }),
            snapshot: Ok(SecretsSnapshot {
                id: "snap-1".into(),
                encrypted: true,
                public: false,
                shared_with: vec![],
                fingerprint: Some(FINGERPRINT.into()),
            }),
            instances: vec![replica("i-a"), replica("i-b")],
        }
    }

    fn failures(pool: &PoolFacts) -> Vec<u8> {
        pool_checks(pool, 8080)
            .iter()
            .filter(|check| !check.passed())
            .map(|check| check.number)
            .collect()
    }

    fn template(pool: &mut PoolFacts) -> &mut Template {
        pool.template.as_mut().unwrap()
    }

    fn snapshot(pool: &mut PoolFacts) -> &mut SecretsSnapshot {
        pool.snapshot.as_mut().unwrap()
    }

    #[test]
    fn a_sealed_pool_passes() {
        let checks = pool_checks(&sealed_pool(), 8080);
        assert!(checks.iter().all(Check::passed));
        assert_eq!(
            checks[5].to_string(),
            format!(
                "PASS 13. every instance carries the snapshot's fingerprint: {FINGERPRINT} on \
                 snap-1 and on all 2 instances"
            )
        );
    }

    #[test]
    fn each_template_weakness_is_named() {
        let mut pool = sealed_pool();
        template(&mut pool).key_name = Some("admin".into());
        template(&mut pool).instance_profile = Some("arn:aws:iam::1:instance-profile/ops".into());
        template(&mut pool).metadata = Some(Metadata::Enabled {
            tokens_required: false,
            hop_limit: Some(2),
        });
        template(&mut pool).public_ip = PublicIp::Template(true);
        assert_eq!(failures(&pool), [8]);
        let text = pool_checks(&pool, 8080)[0].to_string();
        for expected in [
            "FAIL 8. launch template sealed: lt-1 (pool) version 2 launches with key pair \"admin\"",
            "instance profile arn:aws:iam::1:instance-profile/ops",
            "does not require IMDSv2",
            "hop limit to 2",
            "associates a public IPv4 address",
        ] {
            assert!(text.contains(expected), "{text}");
        }

        let mut pool = sealed_pool();
        template(&mut pool).metadata = None;
        template(&mut pool).public_ip = PublicIp::Subnets(vec!["subnet-pub".into()]);
        let text = pool_checks(&pool, 8080)[0].to_string();
        assert!(text.contains("sets no metadata options"), "{text}");
        assert!(text.contains("subnet subnet-pub assigns public"), "{text}");
        template(&mut pool).metadata = Some(Metadata::Disabled);
        template(&mut pool).public_ip = PublicIp::Subnets(vec![]);
        assert_eq!(failures(&pool), [] as [u8; 0]);
    }

    #[test]
    fn port_22_in_the_template_groups_fails() {
        let mut pool = sealed_pool();
        template(&mut pool).security_groups[0].ingress.push(rule(
            "tcp",
            Some((22, 22)),
            ipv4("0.0.0.0/0"),
        ));
        assert_eq!(failures(&pool), [9]);
    }

    #[test]
    fn an_unencrypted_public_or_shared_snapshot_fails() {
        let mut pool = sealed_pool();
        snapshot(&mut pool).encrypted = false;
        assert_eq!(failures(&pool), [10]);
        let mut pool = sealed_pool();
        snapshot(&mut pool).public = true;
        assert_eq!(failures(&pool), [11]);
        assert!(pool_checks(&pool, 8080)[3]
            .to_string()
            .contains("--group-names all"));
        let mut pool = sealed_pool();
        snapshot(&mut pool).shared_with = vec!["111122223333".into()];
        assert_eq!(failures(&pool), [12]);
        assert!(pool_checks(&pool, 8080)[4]
            .to_string()
            .contains("shared with account 111122223333"));
    }

    #[test]
    fn a_missing_or_different_fingerprint_fails() {
        let mut pool = sealed_pool();
        pool.instances[0].fingerprint_tag = Some("ffffffffffffffffffffffffffffffff".into());
        pool.instances[1].fingerprint_tag = None;
        assert_eq!(failures(&pool), [13]);
        assert_eq!(
            pool_checks(&pool, 8080)[5].to_string(),
            format!(
                "FAIL 13. every instance carries the snapshot's fingerprint: snap-1 has \
                 {FINGERPRINT}, but i-a has ffffffffffffffffffffffffffffffff, i-b has no tag \
                 cryptoserver:fingerprint"
            )
        );
        let mut pool = sealed_pool();
        snapshot(&mut pool).fingerprint = None;
        assert!(pool_checks(&pool, 8080)[5]
            .to_string()
            .contains("snap-1 has no tag cryptoserver:fingerprint"));
    }

    #[test]
    fn without_a_template_or_snapshot_the_checks_fail_and_say_why() {
        let mut pool = sealed_pool();
        pool.template = Err("the group launches from launch configuration old-lc".into());
        pool.snapshot = Err("no launch template to read the snapshot from".into());
        assert_eq!(failures(&pool), [8, 9, 10, 11, 12, 13]);
        assert!(pool_checks(&pool, 8080)[1]
            .to_string()
            .ends_with("launch configuration old-lc"));
    }
}
