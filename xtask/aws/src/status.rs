//! `cargo xtask status`: one row per host of an origin or a pool, from what an
//! operator can see of a host nobody can enter: EC2's state and status checks, the
//! first-boot script's last word on the serial console and, from a machine that
//! reaches the hosts (`--probe`), `GET /readyz`. The fleet is well when every host
//! is running, passes both checks, reports ready and all report one fingerprint.

use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_ec2::types::SummaryStatus;

use crate::ec2::Ec2;
use crate::host_http::{exchange, tls_connector, Answer, Host, HostTls, Request};
use crate::ready::{last_ready, Ready};

/// How long one /readyz probe may take, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to ask the hosts' /readyz, if at all.
pub struct Probe {
    pub port: u16,
    /// HTTPS, verified against these certificates under this name.
    pub tls: Option<HostTls>,
}

/// What `/readyz` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readyz {
    pub status: u16,
    pub ready: bool,
    pub fingerprint: Option<String>,
}

/// One host's row.
#[derive(Debug)]
pub struct HostStatus {
    pub instance_id: String,
    pub state: String,
    pub system_check: String,
    pub instance_check: String,
    /// The last ready line, or why the console has none to trust (its last error line among them).
    pub console: Result<Ready, String>,
    /// None without `--probe`.
    pub readyz: Option<Result<Readyz, String>>,
}

pub async fn run(
    ec2: &Ec2,
    instance_ids: &[String],
    probe: Option<&Probe>,
) -> anyhow::Result<ExitCode> {
    let (connector, server_name) = match probe.and_then(|probe| probe.tls.as_ref()) {
        Some(tls) => (
            Some(tls_connector(tls)?),
            Some(crate::host_http::server_name(&tls.server_name)?),
        ),
        None => (None, None),
    };
    // Each instance first: one that does not exist is named as such.
    let mut instances = Vec::new();
    for instance_id in instance_ids {
        instances.push(ec2.describe_instance(instance_id).await?);
    }
    let checks = ec2.status_checks(instance_ids).await?;
    let mut hosts = Vec::new();
    for (instance_id, instance) in instance_ids.iter().zip(instances) {
        let state = instance
            .state()
            .and_then(|state| state.name())
            .map_or("unknown", |name| name.as_str())
            .to_owned();
        let (system_check, instance_check) = checks
            .iter()
            .find(|(id, _, _)| id == instance_id)
            .map(|(_, system, instance)| (system.clone(), instance.clone()))
            .unwrap_or_else(|| ("-".to_owned(), "-".to_owned()));
        let console = last_ready(&ec2.console_output(instance_id).await?);
        let readyz = match probe {
            None => None,
            Some(probe) => Some(match instance.private_ip_address() {
                None => Err("no private address".to_owned()),
                Some(_) if state != "running" => Err(format!("not probed: {state}")),
                Some(address) => {
                    let host = Host {
                        address: address.to_owned(),
                        port: probe.port,
                        server_name: server_name.clone(),
                    };
                    ask_readyz(&host, connector.as_ref()).await
                }
            }),
        };
        hosts.push(HostStatus {
            instance_id: instance_id.clone(),
            state,
            system_check,
            instance_check,
            console,
            readyz,
        });
    }
    print!("{}", table(&hosts));
    match verdict(&hosts) {
        Ok(fingerprint) => {
            println!(
                "all {} host(s) are ready with fingerprint {fingerprint}",
                hosts.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            println!("NOT all hosts are ready with one fingerprint:");
            for problem in problems {
                println!("  - {problem}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// The fingerprint every host reports, or what keeps the fleet from being well.
pub fn verdict(hosts: &[HostStatus]) -> Result<String, Vec<String>> {
    if hosts.is_empty() {
        return Err(vec!["there is no host to look at".to_owned()]);
    }
    let mut problems = Vec::new();
    let mut fingerprints: Vec<(String, Vec<&str>)> = Vec::new();
    for host in hosts {
        let id = host.instance_id.as_str();
        if host.state != "running" {
            problems.push(format!("{id}: state {}", host.state));
        }
        for (name, check) in [
            ("system", &host.system_check),
            ("instance", &host.instance_check),
        ] {
            if check != "ok" {
                problems.push(format!("{id}: {name} status check {check}"));
            }
        }
        let mut reported = None;
        match &host.console {
            Ok(ready) => reported = Some(ready.fingerprint.clone()),
            Err(reason) => problems.push(format!("{id}: console: {reason}")),
        }
        match &host.readyz {
            None => {}
            Some(Err(reason)) => problems.push(format!("{id}: /readyz: {reason}")),
            Some(Ok(answer)) if !answer.ready => problems.push(format!(
                "{id}: /readyz answered {} (not ready)",
                answer.status
            )),
            Some(Ok(answer)) => match (&reported, &answer.fingerprint) {
                (_, None) => problems.push(format!(
                    "{id}: /readyz names no fingerprint (secrets without a manifest)"
                )),
                (Some(console), Some(served)) if console != served => problems.push(format!(
                    "{id}: /readyz serves fingerprint {served}, its console reported {console}"
                )),
                (_, Some(served)) => reported = Some(served.clone()),
            },
        }
        if let Some(fingerprint) = reported {
            match fingerprints
                .iter_mut()
                .find(|(known, _)| *known == fingerprint)
            {
                Some((_, ids)) => ids.push(id),
                None => fingerprints.push((fingerprint, vec![id])),
            }
        }
    }
    if fingerprints.len() > 1 {
        let listing: Vec<String> = fingerprints
            .iter()
            .map(|(fingerprint, ids)| format!("{fingerprint} on {}", ids.join(", ")))
            .collect();
        problems.push(format!(
            "the hosts report {} fingerprints: {}",
            fingerprints.len(),
            listing.join("; ")
        ));
    }
    match (problems.is_empty(), fingerprints.pop()) {
        (true, Some((fingerprint, _))) => Ok(fingerprint),
        _ => Err(problems),
    }
}

/// The hosts as an aligned table, the console's word last (it is the longest).
pub fn table(hosts: &[HostStatus]) -> String {
    let mut rows = vec![[
        "INSTANCE".to_owned(),
        "STATE".to_owned(),
        "SYSTEM".to_owned(),
        "INSTANCE-CHECK".to_owned(),
        "READYZ".to_owned(),
        "CONSOLE".to_owned(),
    ]];
    for host in hosts {
        let readyz = match &host.readyz {
            None => "-".to_owned(),
            Some(Ok(answer)) => format!(
                "{} {}",
                answer.status,
                if answer.ready { "ready" } else { "not-ready" }
            ),
            Some(Err(_)) => "unreachable".to_owned(),
        };
        let console = match &host.console {
            Ok(ready) => format!(
                "ready role={} mode={} fingerprint={} verified={} hot-copy={}",
                ready.role, ready.mode, ready.fingerprint, ready.verified, ready.hot_copy
            ),
            Err(reason) => format!("NOT READY: {reason}"),
        };
        rows.push([
            host.instance_id.clone(),
            host.state.clone(),
            host.system_check.clone(),
            host.instance_check.clone(),
            readyz,
            console,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out
}

impl Ec2 {
    /// (instance id, system check, instance check) of each instance EC2 reports on,
    /// stopped ones included (their checks read `not-applicable` or are absent).
    async fn status_checks(
        &self,
        instance_ids: &[String],
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        if instance_ids.is_empty() {
            return Ok(Vec::new());
        }
        let described = self
            .client
            .describe_instance_status()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .include_all_instances(true)
            .send()
            .await
            .map_err(|error| self.api_error("DescribeInstanceStatus", error))?;
        let status = |summary: Option<&SummaryStatus>| {
            summary.map_or("-".to_owned(), |status| status.as_str().to_owned())
        };
        Ok(described
            .instance_statuses()
            .iter()
            .filter_map(|entry| {
                Some((
                    entry.instance_id()?.to_owned(),
                    status(entry.system_status().and_then(|s| s.status())),
                    status(entry.instance_status().and_then(|s| s.status())),
                ))
            })
            .collect())
    }
}

/// `GET /readyz` on `host`, within [`PROBE_TIMEOUT`].
async fn ask_readyz(
    host: &Host,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Readyz, String> {
    let request = Request {
        method: "GET",
        path: "/readyz",
        body: b"",
        user_agent: "cargo-xtask-status",
        timeout: PROBE_TIMEOUT,
    };
    let answer = exchange(host, tls, &request).await?;
    readyz(&answer).map_err(|reason| format!("{}:{} answered {reason}", host.address, host.port))
}

/// What a `/readyz` answer says.
pub fn readyz(answer: &Answer) -> Result<Readyz, String> {
    let json: serde_json::Value = serde_json::from_str(&answer.body)
        .map_err(|_| format!("{} with a body that is not /readyz's JSON", answer.status))?;
    Ok(Readyz {
        status: answer.status,
        ready: answer.status == 200 && json.get("ready") == Some(&serde_json::Value::Bool(true)),
        fingerprint: json
            .get("fingerprint")
            .and_then(|value| value.as_str())
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_http::parse_answer;

    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef";

    fn ready(fingerprint: &str) -> Ready {
        Ready {
            role: "replica".into(),
            mode: "MODE32".into(),
            fingerprint: fingerprint.into(),
            verified: "yes".into(),
            mount: "ro".into(),
            volume: Some("vol-1".into()),
            hot_copy: "none".into(),
        }
    }

    fn host(id: &str, fingerprint: &str) -> HostStatus {
        HostStatus {
            instance_id: id.into(),
            state: "running".into(),
            system_check: "ok".into(),
            instance_check: "ok".into(),
            console: Ok(ready(fingerprint)),
            readyz: None,
        }
    }

    #[test]
    fn well_when_every_host_is_ready_with_one_fingerprint() {
        assert_eq!(
            verdict(&[host("i-1", FINGERPRINT), host("i-2", FINGERPRINT)]),
            Ok(FINGERPRINT.to_owned())
        );
    }

    #[test]
    fn names_each_problem() {
        let mut stopped = host("i-1", FINGERPRINT);
        stopped.state = "stopped".into();
        stopped.system_check = "not-applicable".into();
        let mut failed = host("i-2", FINGERPRINT);
        failed.console = Err("its first-boot script failed and never reported ready: boom".into());
        let other = host("i-3", "ffffffffffffffffffffffffffffffff");
        let problems = verdict(&[stopped, failed, host("i-4", FINGERPRINT), other]).unwrap_err();
        assert_eq!(
            problems,
            [
                "i-1: state stopped",
                "i-1: system status check not-applicable",
                "i-2: console: its first-boot script failed and never reported ready: boom",
                "the hosts report 2 fingerprints: 0123456789abcdef0123456789abcdef on i-1, i-4; \
                 ffffffffffffffffffffffffffffffff on i-3",
            ]
        );
        assert_eq!(
            verdict(&[]),
            Err(vec!["there is no host to look at".to_owned()])
        );
    }

    #[test]
    fn readyz_must_agree_with_the_console() {
        let mut unready = host("i-1", FINGERPRINT);
        unready.readyz = Some(Ok(Readyz {
            status: 503,
            ready: false,
            fingerprint: None,
        }));
        let mut other = host("i-2", FINGERPRINT);
        other.readyz = Some(Ok(Readyz {
            status: 200,
            ready: true,
            fingerprint: Some("ffffffffffffffffffffffffffffffff".into()),
        }));
        let mut gone = host("i-3", FINGERPRINT);
        gone.readyz = Some(Err("cannot connect".into()));
        let problems = verdict(&[unready, other, gone]).unwrap_err();
        assert_eq!(
            problems[..3],
            [
                "i-1: /readyz answered 503 (not ready)",
                "i-2: /readyz serves fingerprint ffffffffffffffffffffffffffffffff, its console \
                 reported 0123456789abcdef0123456789abcdef",
                "i-3: /readyz: cannot connect",
            ]
        );
    }

    fn parse_readyz(answer: &[u8]) -> Result<Readyz, String> {
        readyz(&parse_answer(answer)?)
    }

    #[test]
    fn parses_readyz_answers() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 76\r\n\r\n\
                   {\"ready\":true,\"mode\":\"MODE32\",\"fingerprint\":\"0123456789abcdef0123456789abcdef\"}";
        assert_eq!(
            parse_readyz(ok),
            Ok(Readyz {
                status: 200,
                ready: true,
                fingerprint: Some(FINGERPRINT.into())
            })
        );
        let unready = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false,\"mode\":\"MODE32\",\"fingerprint\":null}";
        assert_eq!(
            parse_readyz(unready),
            Ok(Readyz {
                status: 503,
                ready: false,
                fingerprint: None
            })
        );
        assert!(parse_readyz(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_readyz(b"HTTP/1.1 200 OK\r\n\r\n<html>").is_err());
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let mut failed = host("i-0123456789abcdef0", FINGERPRINT);
        failed.console = Err("no ready line".into());
        let text = table(&[host("i-1", FINGERPRINT), failed]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("INSTANCE             STATE"));
        assert!(lines[1].ends_with(&format!(
            "ready role=replica mode=MODE32 fingerprint={FINGERPRINT} verified=yes hot-copy=none"
        )));
        assert!(lines[2].ends_with("NOT READY: no ready line"));
        let console_column = lines[0].find("CONSOLE").unwrap();
        assert!(lines[1..].iter().all(|line| line.len() > console_column));
    }
}
