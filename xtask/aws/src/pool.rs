//! The group checks of `audit --asg` (numbered after the seven per-instance
//! ones), computed from what the EC2 and Auto Scaling APIs say about a pool:
//! the launch templates it can launch and their user data, the secrets snapshot
//! they restore, and the fingerprint tags of its instances.

use crate::audit::{port_22_closed, Check};
use crate::facts::{HostFacts, Metadata, SecurityGroup, FINGERPRINT_TAG, SEALED_HOP_LIMIT};
use crate::user_data::{Settings, ENV_FILE};

/// The setting of the user data that names the secrets a replica accepts.
pub const EXPECTED_FINGERPRINT: &str = "CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT";

pub struct PoolFacts {
    pub group: String,
    /// Every launch template version the group can launch (its own, then those its
    /// mixed instances policy's overrides name), or why there is none to audit.
    pub templates: Result<Vec<Template>, String>,
    /// The snapshot the template's block device mappings restore, or why there is none.
    pub snapshot: Result<SecretsSnapshot, String>,
    /// The snapshot's copies in each region `--copy-region` names.
    pub copies: Vec<Copies>,
    pub instances: Vec<HostFacts>,
}

pub struct Copies {
    pub region: String,
    /// This account's snapshots there tagged with the secrets snapshot's source volume
    /// and fingerprint, as `cargo xtask snapshot` tags its copies; or why none could be sought.
    pub found: Result<Vec<SecretsSnapshot>, String>,
}

pub struct Template {
    /// e.g. `lt-0abc (cryptoserver-pool) version 3`
    pub name: String,
    /// The version as the group names it: a number, or `$Latest` or `$Default`,
    /// which follow whoever creates a version or changes the default.
    pub launched_as: String,
    /// The settings its user data writes, or what in it is not the module's cloud-config.
    pub settings: Result<Settings, String>,
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
    /// Its tag `cryptoserver:source-volume`, by which its copies are found.
    pub source_volume: Option<String>,
}

pub fn pool_checks(pool: &PoolFacts, service_port: u16) -> Vec<Check> {
    let snapshot = |check: &dyn Fn(&SecretsSnapshot) -> Result<String, String>| {
        pool.snapshot.as_ref().map_err(Clone::clone).and_then(check)
    };
    let mut checks = vec![
        Check {
            number: 8,
            title: "launch template sealed",
            outcome: every_template(pool, template_sealed),
        },
        Check {
            number: 9,
            title: "the launch template's security groups reach no TCP port 22",
            outcome: every_template(pool, |template| {
                port_22_closed(&template.security_groups, service_port)
                    .map_err(|reason| format!("{}: {reason}", template.name))
            }),
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
            title:
                "the user data expects the snapshot's fingerprint, and every instance carries it",
            outcome: snapshot(&|s| same_fingerprint(s, pool)),
        },
    ];
    if !pool.copies.is_empty() {
        checks.push(Check {
            number: 14,
            title: "the secrets snapshot's copies are encrypted, not public and not shared",
            outcome: snapshot(&|s| copies_sealed(s, &pool.copies)),
        });
    }
    checks
}

fn copies_sealed(snapshot: &SecretsSnapshot, copies: &[Copies]) -> Result<String, String> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for Copies {
        region,
        found: copies,
    } in copies
    {
        match copies {
            Err(reason) => problems.push(format!("in {region}: {reason}")),
            Ok(copies) if copies.is_empty() => problems.push(format!(
                "{region} holds no copy of {} tagged with its source volume and fingerprint \
                 (a copy whose tags were changed is not found: look for it by hand)",
                snapshot.id
            )),
            Ok(copies) => {
                for copy in copies {
                    let mut wrong = Vec::new();
                    if !copy.encrypted {
                        wrong.push("is not encrypted".to_owned());
                    }
                    if copy.public {
                        wrong.push("is public (createVolumePermission group all)".to_owned());
                    }
                    if !copy.shared_with.is_empty() {
                        wrong.push(format!(
                            "is shared with account {}",
                            copy.shared_with.join(", ")
                        ));
                    }
                    if wrong.is_empty() {
                        found.push(format!("{} in {region}", copy.id));
                    } else {
                        problems.push(format!("{} in {region} {}", copy.id, wrong.join(" and ")));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(found.join(", "))
    } else {
        Err(problems.join("; "))
    }
}

/// `check` on every template the group can launch: passes when it passes on all.
fn every_template(
    pool: &PoolFacts,
    check: impl Fn(&Template) -> Result<String, String>,
) -> Result<String, String> {
    let templates = pool.templates.as_ref().map_err(Clone::clone)?;
    let (passed, failed): (Vec<_>, Vec<_>) = templates.iter().map(check).partition(Result::is_ok);
    if failed.is_empty() {
        Ok(passed.into_iter().flatten().collect::<Vec<_>>().join("; "))
    } else {
        Err(failed
            .into_iter()
            .filter_map(Result::err)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

fn template_sealed(template: &Template) -> Result<String, String> {
    let mut problems = Vec::new();
    if template.launched_as.parse::<u64>().is_err() {
        problems.push(format!(
            "is launched as {}: whoever may create a template version or change the default \
             decides what the next replica runs; name the version number (the pool module does)",
            template.launched_as
        ));
    }
    match &template.settings {
        Err(reason) => problems.push(reason.clone()),
        Ok(settings) => match settings.get("CRYPTOSERVER_SECRETS_ROLE") {
            Some("replica") => {}
            role => problems.push(format!(
                "sets CRYPTOSERVER_SECRETS_ROLE={} in {ENV_FILE}, not replica",
                role.unwrap_or("(unset)")
            )),
        },
    }
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
             {SEALED_HOP_LIMIT}, no public IPv4 address, user data only the module's \
             cloud-config",
            template.name
        ))
    } else {
        Err(format!("{} {}", template.name, problems.join("; ")))
    }
}

/// The replicas themselves refuse secrets other than their user data's expected
/// fingerprint; tags, which anyone allowed `ec2:CreateTags` sets, only report it.
fn same_fingerprint(snapshot: &SecretsSnapshot, pool: &PoolFacts) -> Result<String, String> {
    let Some(expected) = &snapshot.fingerprint else {
        return Err(format!(
            "{} has no tag {FINGERPRINT_TAG}: make it with `cargo xtask snapshot`",
            snapshot.id
        ));
    };
    let templates = pool.templates.as_ref().map_err(Clone::clone)?;
    let mut differing: Vec<String> = templates
        .iter()
        .filter_map(|template| match &template.settings {
            Ok(settings) => match settings.get(EXPECTED_FINGERPRINT) {
                Some(found) if found == expected => None,
                Some(other) => Some(format!("{}'s user data expects {other}", template.name)),
                None => Some(format!(
                    "{}'s user data sets no {EXPECTED_FINGERPRINT}",
                    template.name
                )),
            },
            Err(_) => Some(format!(
                "{}'s user data is not the module's (check 8)",
                template.name
            )),
        })
        .collect();
    differing.extend(
        pool.instances
            .iter()
            .filter(|instance| instance.fingerprint_tag.as_ref() != Some(expected))
            .map(|instance| match &instance.fingerprint_tag {
                Some(other) => format!("{} has {other}", instance.instance_id),
                None => format!("{} has no tag {FINGERPRINT_TAG}", instance.instance_id),
            }),
    );
    if differing.is_empty() {
        Ok(format!(
            "{expected} on {}, in the user data of {} and on all {} instances",
            snapshot.id,
            templates
                .iter()
                .map(|template| template.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            pool.instances.len()
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
pub mod tests {
    use super::*;
    use crate::audit::tests::sealed_host;
    use crate::rules::tests::{ipv4, rule};
    use crate::user_data::module_settings;
    use crate::user_data::tests::{encoded, module_user_data, FINGERPRINT};

    /// A template as the pool module makes it.
    pub fn sealed_template(name: &str) -> Template {
        Template {
            name: name.into(),
            launched_as: "2".into(),
            settings: module_settings(Some(&encoded(&module_user_data()))),
            key_name: None,
            instance_profile: None,
            metadata: Some(Metadata::Enabled {
                tokens_required: true,
                hop_limit: Some(1),
            }),
            public_ip: PublicIp::Template(false),
            security_groups: sealed_host().security_groups,
        }
    }

    /// A pool as the Terraform module makes it: every group check passes.
    fn sealed_pool() -> PoolFacts {
        let replica = |id: &str| HostFacts {
            instance_id: id.into(),
            fingerprint_tag: Some(FINGERPRINT.into()),
            ..sealed_host()
        };
        PoolFacts {
            group: "cryptoserver-pool".into(),
            templates: Ok(vec![sealed_template("lt-1 (pool) version 2")]),
            snapshot: Ok(SecretsSnapshot {
                id: "snap-1".into(),
                encrypted: true,
                public: false,
                shared_with: vec![],
                fingerprint: Some(FINGERPRINT.into()),
                source_volume: Some("vol-1".into()),
            }),
            copies: vec![],
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
        &mut pool.templates.as_mut().unwrap()[0]
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
                "PASS 13. the user data expects the snapshot's fingerprint, and every instance \
                 carries it: {FINGERPRINT} on snap-1, in the user data of lt-1 (pool) version 2 \
                 and on all 2 instances"
            )
        );
    }

    #[test]
    fn a_template_version_that_follows_its_latest_or_default_fails() {
        for moving in ["$Latest", "$Default"] {
            let mut pool = sealed_pool();
            template(&mut pool).launched_as = moving.into();
            assert_eq!(failures(&pool), [8]);
            assert!(pool_checks(&pool, 8080)[0].to_string().contains(&format!(
                "lt-1 (pool) version 2 is launched as {moving}: whoever may create a template \
                 version"
            )));
        }
    }

    #[test]
    fn user_data_other_than_the_modules_fails() {
        let mut pool = sealed_pool();
        template(&mut pool).settings =
            module_settings(Some(&encoded("#cloud-boothook\n#!/bin/sh\nid\n")));
        assert_eq!(failures(&pool), [8, 13]);
        let checks = pool_checks(&pool, 8080);
        assert!(checks[0]
            .to_string()
            .contains("lt-1 (pool) version 2 has user data that is not a #cloud-config document"));
        assert!(checks[5]
            .to_string()
            .ends_with("but lt-1 (pool) version 2's user data is not the module's (check 8)"));

        let mut pool = sealed_pool();
        template(&mut pool).settings = module_settings(Some(&encoded(
            &module_user_data().replace("ROLE=replica", "ROLE=origin"),
        )));
        assert_eq!(failures(&pool), [8]);
        assert!(pool_checks(&pool, 8080)[0].to_string().contains(
            "sets CRYPTOSERVER_SECRETS_ROLE=origin in /etc/cryptoserver/env, not replica"
        ));
    }

    #[test]
    fn user_data_expecting_another_fingerprint_fails() {
        let mut pool = sealed_pool();
        template(&mut pool).settings = module_settings(Some(&encoded(
            &module_user_data().replace(FINGERPRINT, &"f".repeat(32)),
        )));
        assert_eq!(failures(&pool), [13]);
        assert_eq!(
            pool_checks(&pool, 8080)[5].to_string(),
            format!(
                "FAIL 13. the user data expects the snapshot's fingerprint, and every instance \
                 carries it: snap-1 has {FINGERPRINT}, but lt-1 (pool) version 2's user data \
                 expects {}",
                "f".repeat(32)
            )
        );
    }

    #[test]
    fn every_template_the_group_can_launch_is_audited() {
        let mut pool = sealed_pool();
        let mut other = sealed_template("lt-2 (override) version 1");
        other.key_name = Some("admin".into());
        pool.templates.as_mut().unwrap().push(other);
        assert_eq!(failures(&pool), [8]);
        assert_eq!(
            pool_checks(&pool, 8080)[0].to_string(),
            "FAIL 8. launch template sealed: lt-2 (override) version 1 launches with key pair \
             \"admin\""
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
                "FAIL 13. the user data expects the snapshot's fingerprint, and every instance \
                 carries it: snap-1 has {FINGERPRINT}, but i-a has ffffffffffffffffffffffffffffffff, i-b has no tag \
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
    fn copies_in_the_regions_named_are_audited() {
        let mut pool = sealed_pool();
        let copy = |id: &str| SecretsSnapshot {
            id: id.into(),
            ..sealed_pool().snapshot.unwrap()
        };
        pool.copies = vec![Copies {
            region: "eu-west-1".into(),
            found: Ok(vec![copy("snap-c")]),
        }];
        assert_eq!(failures(&pool), [] as [u8; 0]);
        assert_eq!(
            pool_checks(&pool, 8080)[6].to_string(),
            "PASS 14. the secrets snapshot's copies are encrypted, not public and not shared: \
             snap-c in eu-west-1"
        );

        let mut weak = copy("snap-d");
        weak.encrypted = false;
        weak.shared_with = vec!["111122223333".into()];
        pool.copies[0].found = Ok(vec![copy("snap-c"), weak]);
        pool.copies.push(Copies {
            region: "eu-central-1".into(),
            found: Ok(vec![]),
        });
        assert_eq!(failures(&pool), [14]);
        assert_eq!(
            pool_checks(&pool, 8080)[6].to_string(),
            "FAIL 14. the secrets snapshot's copies are encrypted, not public and not shared: \
             snap-d in eu-west-1 is not encrypted and is shared with account 111122223333; \
             eu-central-1 holds no copy of snap-1 tagged with its source volume and fingerprint \
             (a copy whose tags were changed is not found: look for it by hand)"
        );
    }

    #[test]
    fn without_a_template_or_snapshot_the_checks_fail_and_say_why() {
        let mut pool = sealed_pool();
        pool.templates = Err("the group launches from launch configuration old-lc".into());
        pool.snapshot = Err("no launch template to read the snapshot from".into());
        assert_eq!(failures(&pool), [8, 9, 10, 11, 12, 13]);
        assert!(pool_checks(&pool, 8080)[1]
            .to_string()
            .ends_with("launch configuration old-lc"));
    }
}
