//! The first-boot script's ready line on an origin's serial console, and the
//! rules `snapshot` applies before it copies a secrets volume: plain functions
//! of the console text and the instance's attachments, tested without any API.
//!
//! The line (see the shared contract in docs/snapshot.md):
//! `cryptoserver-secrets-setup: ready role=origin mode=MODE32 fingerprint=<32 hex>
//! verified=yes mount=ro volume=vol-… hot-copy=none`, space-separated key=value
//! fields in any order. The console may put a timestamp and a unit name before it.

use std::collections::BTreeMap;

use crate::facts::{Attachment, FINGERPRINT_TAG};

const READY: &str = "cryptoserver-secrets-setup: ready ";
const ERROR: &str = "cryptoserver-secrets-setup: error: ";
const MODES: [&str; 4] = ["MODE0", "MODE16", "MODE32", "MODE32X"];
/// The kernel's first console line at every boot.
const KERNEL_BANNER: &str = "Linux version ";

pub const MODE_TAG: &str = "cryptoserver:mode";
pub const SOURCE_VOLUME_TAG: &str = "cryptoserver:source-volume";
pub const SOURCE_INSTANCE_TAG: &str = "cryptoserver:source-instance";

/// What one boot's ready line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub role: String,
    pub mode: String,
    pub fingerprint: String,
    pub verified: String,
    pub mount: String,
    /// `None` when the script did not know the volume id (`volume=-`).
    pub volume: Option<String>,
    pub hot_copy: String,
}

/// Reads the fields after `cryptoserver-secrets-setup: ready `; unknown fields are
/// ignored, so a later script may add some.
pub fn parse_ready(fields: &str) -> Result<Ready, String> {
    let mut values = BTreeMap::new();
    for field in fields.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("field {field:?} is not key=value"));
        };
        if values.insert(key, value).is_some() {
            return Err(format!("field {key} appears twice"));
        }
    }
    let get = |key: &str, allowed: &[&str]| -> Result<String, String> {
        let value = values
            .get(key)
            .ok_or_else(|| format!("field {key} is missing"))?;
        if allowed.is_empty() || allowed.contains(value) {
            Ok((*value).to_owned())
        } else {
            Err(format!(
                "{key}={value} is none of {}",
                allowed
                    .iter()
                    .map(|v| format!("{key}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let role = get("role", &["origin", "replica"])?;
    let mode = get("mode", &MODES)?;
    let fingerprint = get("fingerprint", &[])?;
    if fingerprint.len() != 32
        || !fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "fingerprint={fingerprint} is not 32 lowercase hexadecimal digits"
        ));
    }
    let verified = get("verified", &["yes", "skipped"])?;
    let mount = get("mount", &["ro", "none"])?;
    let volume = match get("volume", &[])?.as_str() {
        "-" => None,
        id if id.starts_with("vol-") => Some(id.to_owned()),
        other => return Err(format!("volume={other} is neither a vol-… id nor -")),
    };
    Ok(Ready {
        role,
        mode,
        fingerprint,
        verified,
        mount,
        volume,
        hot_copy: get("hot-copy", &[])?,
    })
}

/// The latest boot's ready line in an instance's console output, or why there is none
/// to trust: no ready line, an error or a new boot after the last one, or a malformed one.
pub fn last_ready(console: &str) -> Result<Ready, String> {
    let mut ready = None;
    let mut error_after = None;
    let mut booted_after = false;
    for (number, line) in console.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if let Some(at) = line.find(READY) {
            ready = Some((number + 1, &line[at + READY.len()..]));
            error_after = None;
            booted_after = false;
        } else if let Some(at) = line.find(ERROR) {
            error_after = Some(&line[at + ERROR.len()..]);
        } else if line.contains(KERNEL_BANNER) {
            booted_after = ready.is_some();
        }
    }
    match (ready, error_after) {
        (None, None) => Err(
            "its console output has no ready line from cryptoserver-secrets-setup: the first \
             boot has not finished (generating MODE32 takes tens of minutes, and the console \
             lags a few minutes behind) or the host does not run the cryptoserver image"
                .into(),
        ),
        (None, Some(error)) => Err(format!(
            "its first-boot script failed and never reported ready: {error}"
        )),
        (Some(_), Some(error)) => Err(format!(
            "a boot after the last ready line failed: {error}; fix the cause and reboot \
             until the console reports ready again"
        )),
        (Some((number, _)), None) if booted_after => Err(format!(
            "the host booted again after its last ready line (console line {number}) and has \
             not reported ready since: wait for the first-boot script to finish"
        )),
        (Some((number, fields)), None) => parse_ready(fields).map_err(|reason| {
            format!("the ready line (console line {number}) is not as expected: {reason}")
        }),
    }
}

/// The secrets volume to snapshot, if the ready line allows it: an origin whose
/// secrets were verified at that boot and are mounted read-only (so a snapshot
/// of the running host is consistent), on a volume attached to this instance.
pub fn origin_volume<'a>(
    ready: &Ready,
    attachments: &'a [Attachment],
) -> Result<&'a Attachment, String> {
    let mut problems = Vec::new();
    if ready.role != "origin" {
        problems.push(format!(
            "role={}: only the origin's volume is snapshotted (a replica's is a restored copy)",
            ready.role
        ));
    }
    if ready.verified != "yes" {
        problems.push(format!(
            "verified={}: the secrets were not hashed at this boot; set \
             CRYPTOSERVER_SECRETS_VERIFY=always and reboot",
            ready.verified
        ));
    }
    if ready.mount != "ro" {
        problems.push(format!(
            "mount={}: the secrets are not on a volume mounted read-only",
            ready.mount
        ));
    }
    let attached = match &ready.volume {
        None => {
            problems.push(
                "volume=-: the script did not name the volume; set \
                 CRYPTOSERVER_SECRETS_VOLUME_ID in the origin's user data"
                    .to_owned(),
            );
            None
        }
        Some(id) => {
            let found = attachments.iter().find(|a| &a.volume_id == id);
            if found.is_none() {
                let listing: Vec<String> = attachments
                    .iter()
                    .map(|a| format!("{} on {}", a.volume_id, a.device_name))
                    .collect();
                problems.push(format!(
                    "volume={id} is not attached to the instance (attached: {})",
                    if listing.is_empty() {
                        "none".to_owned()
                    } else {
                        listing.join(", ")
                    }
                ));
            }
            found
        }
    };
    match attached {
        Some(attachment) if problems.is_empty() => Ok(attachment),
        _ => Err(problems.join("; ")),
    }
}

/// The tags of the snapshot of `volume_id` on `instance_id` (its copy carries the same).
pub fn snapshot_tags(ready: &Ready, volume_id: &str, instance_id: &str) -> Vec<(String, String)> {
    [
        (MODE_TAG, ready.mode.clone()),
        (FINGERPRINT_TAG, ready.fingerprint.clone()),
        (SOURCE_VOLUME_TAG, volume_id.to_owned()),
        (SOURCE_INSTANCE_TAG, instance_id.to_owned()),
        (
            "Name",
            format!("cryptoserver-secrets-{}", &ready.fingerprint[..8]),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// A snapshot found with the same source volume and fingerprint tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    /// EC2's state: pending, completed, error, recoverable, recovering.
    pub state: String,
    /// Seconds since the epoch, to prefer the newest.
    pub started: i64,
}

/// Which existing snapshot a re-run reuses: a completed one before a pending one,
/// the newest of each; one that failed (state error) never.
pub fn reusable(found: &[Found]) -> Option<&Found> {
    ["completed", "pending"].into_iter().find_map(|state| {
        found
            .iter()
            .filter(|f| f.state == state)
            .max_by_key(|f| f.started)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef";

    fn line(fields: &str) -> String {
        format!("cryptoserver-secrets-setup: ready {fields}")
    }

    fn origin_fields() -> String {
        format!(
            "role=origin mode=MODE32 fingerprint={FINGERPRINT} verified=yes mount=ro \
             volume=vol-0123456789abcdef0 hot-copy=none"
        )
    }

    fn attached(volume_id: &str, device_name: &str) -> Attachment {
        Attachment {
            device_name: device_name.into(),
            volume_id: volume_id.into(),
            delete_on_termination: false,
        }
    }

    #[test]
    fn the_contract_line_parses_in_any_order_and_with_new_fields() {
        let ready = parse_ready(&origin_fields()).unwrap();
        assert_eq!(
            ready,
            Ready {
                role: "origin".into(),
                mode: "MODE32".into(),
                fingerprint: FINGERPRINT.into(),
                verified: "yes".into(),
                mount: "ro".into(),
                volume: Some("vol-0123456789abcdef0".into()),
                hot_copy: "none".into(),
            }
        );
        let shuffled = format!(
            "hot-copy=/hot volume=- mount=none verified=skipped fingerprint={FINGERPRINT} \
             mode=MODE32X role=replica future=field"
        );
        let ready = parse_ready(&shuffled).unwrap();
        assert_eq!(ready.volume, None);
        assert_eq!(ready.hot_copy, "/hot");
        assert_eq!(ready.mode, "MODE32X");
    }

    #[test]
    fn a_malformed_line_says_which_field() {
        let cases = [
            ("mode=MODE32 ", "", "field mode is missing"),
            (
                "role=origin",
                "role=leader",
                "role=leader is none of role=origin, role=replica",
            ),
            (
                "mode=MODE32",
                "mode=MODE64",
                "mode=MODE64 is none of mode=MODE0,",
            ),
            (
                FINGERPRINT,
                "0123",
                "fingerprint=0123 is not 32 lowercase hexadecimal digits",
            ),
            (
                "volume=vol-0123456789abcdef0",
                "volume=sdf",
                "volume=sdf is neither a vol-… id nor -",
            ),
            (
                "verified=yes",
                "verified",
                "field \"verified\" is not key=value",
            ),
            ("mount=ro", "mount=ro mount=ro", "field mount appears twice"),
        ];
        for (from, to, expected) in cases {
            let fields = origin_fields().replacen(from, to, 1);
            let error = parse_ready(&fields).unwrap_err();
            assert!(error.contains(expected), "{fields}: {error}");
        }
        let upper = origin_fields().replace(FINGERPRINT, &FINGERPRINT.to_uppercase());
        assert!(parse_ready(&upper).unwrap_err().contains("lowercase"));
    }

    #[test]
    fn the_last_ready_line_counts_whatever_precedes_it_on_the_line() {
        let console = format!(
            "[    1.0] Linux version 6.1\r\n{}\r\n[   42.5] cryptoserver-secrets-setup.sh[733]: {}\r\nlogin:",
            line(&origin_fields().replace("MODE32", "MODE16")),
            line(&origin_fields()),
        );
        assert_eq!(last_ready(&console).unwrap().mode, "MODE32");
    }

    #[test]
    fn no_ready_line_or_a_later_error_refuses() {
        let none = last_ready("Linux version 2.6.16-xenU\nKernel command line: root=/dev/sda1\n");
        assert!(none.unwrap_err().contains("no ready line"));

        let failed =
            "cryptoserver-secrets-setup: error: /secrets/cryptoserver.manifest is missing\n";
        let error = last_ready(failed).unwrap_err();
        assert!(
            error.contains("never reported ready: /secrets/cryptoserver.manifest is missing"),
            "{error}"
        );

        let later = format!("{}\nreboot\n{failed}", line(&origin_fields()));
        let error = last_ready(&later).unwrap_err();
        assert!(
            error.contains("a boot after the last ready line failed"),
            "{error}"
        );

        let recovered = format!("{failed}{}\n", line(&origin_fields()));
        assert!(last_ready(&recovered).is_ok());

        let rebooting = format!("{}\n[    0.0] Linux version 6.12\n", line(&origin_fields()));
        let error = last_ready(&rebooting).unwrap_err();
        assert!(
            error.starts_with("the host booted again after its last ready line (console line 1)"),
            "{error}"
        );

        let garbled = format!("x\n{}\n", line("role=origin"));
        let error = last_ready(&garbled).unwrap_err();
        assert!(
            error.starts_with(
                "the ready line (console line 2) is not as expected: field mode is missing"
            ),
            "{error}"
        );
    }

    #[test]
    fn only_a_verified_read_only_origin_on_an_attached_volume_is_snapshotted() {
        let attachments = [
            attached("vol-root", "/dev/xvda"),
            attached("vol-0123456789abcdef0", "/dev/sdf"),
        ];
        let ready = parse_ready(&origin_fields()).unwrap();
        assert_eq!(
            origin_volume(&ready, &attachments).unwrap().device_name,
            "/dev/sdf"
        );

        let replica = Ready {
            role: "replica".into(),
            ..ready.clone()
        };
        assert!(origin_volume(&replica, &attachments)
            .unwrap_err()
            .starts_with("role=replica"));
        let skipped = Ready {
            verified: "skipped".into(),
            ..ready.clone()
        };
        assert!(origin_volume(&skipped, &attachments)
            .unwrap_err()
            .contains("CRYPTOSERVER_SECRETS_VERIFY=always"));
        let plain = Ready {
            mount: "none".into(),
            volume: None,
            ..ready.clone()
        };
        let error = origin_volume(&plain, &attachments).unwrap_err();
        assert!(error.starts_with("mount=none: "), "{error}");
        assert!(error.contains("; volume=-: "), "{error}");
        let elsewhere = Ready {
            volume: Some("vol-elsewhere".into()),
            ..ready
        };
        assert_eq!(
            origin_volume(&elsewhere, &attachments).unwrap_err(),
            "volume=vol-elsewhere is not attached to the instance (attached: vol-root on \
             /dev/xvda, vol-0123456789abcdef0 on /dev/sdf)"
        );
    }

    #[test]
    fn tags_name_the_mode_fingerprint_and_source() {
        let ready = parse_ready(&origin_fields()).unwrap();
        let tags = snapshot_tags(&ready, "vol-1", "i-1");
        let get = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("cryptoserver:mode"), Some("MODE32"));
        assert_eq!(get("cryptoserver:fingerprint"), Some(FINGERPRINT));
        assert_eq!(get("cryptoserver:source-volume"), Some("vol-1"));
        assert_eq!(get("cryptoserver:source-instance"), Some("i-1"));
        assert_eq!(get("Name"), Some("cryptoserver-secrets-01234567"));
    }

    #[test]
    fn a_rerun_reuses_a_completed_then_a_pending_snapshot_never_a_failed_one() {
        let found = |id: &str, state: &str, started| Found {
            id: id.into(),
            state: state.into(),
            started,
        };
        assert_eq!(reusable(&[]), None);
        assert_eq!(reusable(&[found("snap-bad", "error", 9)]), None);
        let pending = [
            found("snap-bad", "error", 9),
            found("snap-p1", "pending", 1),
            found("snap-p2", "pending", 2),
        ];
        assert_eq!(reusable(&pending).unwrap().id, "snap-p2");
        let mut all = pending.to_vec();
        all.push(found("snap-done", "completed", 0));
        assert_eq!(reusable(&all).unwrap().id, "snap-done");
    }
}
