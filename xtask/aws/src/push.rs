//! `cargo xtask clients push`: send a signed clients document (minisign's
//! signature followed by the clients file, docs/clients.md) to `PUT /admin/clients`
//! of each host, and say per host which serial it now holds or why it refused.
//! The servers check the signature and the serial; this side only makes sure the
//! file is a signed document at all before anything is sent.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::host_http::{exchange, Host, Request};

/// A host writes and fsyncs the document before it answers: more than a probe's time.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// The lines of minisign's `.minisig` that open a signed document.
const SIGNATURE_LINES: usize = 4;

/// One host to push to, and how it is named in the report.
pub struct Target {
    pub label: String,
    pub host: Host,
}

/// The bytes of `path` once they are known to be a signed document: minisign's
/// four signature lines, then the clients file.
pub fn read_signed_document(path: &Path) -> anyhow::Result<Vec<u8>> {
    let document =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let signature_end = document
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .nth(SIGNATURE_LINES - 1)
        .map(|(at, _)| at + 1);
    let signature = signature_end
        .and_then(|end| std::str::from_utf8(&document[..end]).ok())
        .and_then(|lines| minisign_verify::Signature::decode(lines).ok());
    if signature.is_none() {
        anyhow::bail!(
            "{} is not a signed clients document: it must start with the 4 lines minisign \
             writes to F.minisig, then the clients file F; make it with \
             `minisign -S -s KEY -m F && cat F.minisig F > F.signed` (docs/operations.md)",
            path.display()
        );
    }
    Ok(document)
}

/// What one host made of the document.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It applied and kept it.
    Holds { serial: u64, clients: u64 },
    /// It answered with an error, or could not be asked.
    Failed(String),
}

/// Pushes `document` to every target in turn, prints one line each and a summary;
/// exit status 1 if any host did not take it.
pub async fn run(
    document: &[u8],
    targets: &[Target],
    tls: Option<&tokio_rustls::TlsConnector>,
) -> ExitCode {
    let request = Request {
        method: "PUT",
        path: "/admin/clients",
        body: document,
        user_agent: "cargo-xtask-clients-push",
        timeout: PUSH_TIMEOUT,
    };
    let mut failed = 0;
    let mut serials = Vec::new();
    for target in targets {
        let outcome = match exchange(&target.host, tls, &request).await {
            Ok(answer) => outcome(answer.status, &answer.body),
            Err(reason) => Outcome::Failed(reason),
        };
        match outcome {
            Outcome::Holds { serial, clients } => {
                println!(
                    "{}: holds serial {serial} ({clients} clients)",
                    target.label
                );
                serials.push(serial);
            }
            Outcome::Failed(reason) => {
                println!("{}: FAILED: {reason}", target.label);
                failed += 1;
            }
        }
    }
    serials.dedup();
    match (failed, serials.as_slice()) {
        (0, [serial]) => {
            println!("all {} host(s) hold serial {serial}", targets.len());
            ExitCode::SUCCESS
        }
        _ => {
            println!(
                "{failed} of {} host(s) did not take the document",
                targets.len()
            );
            ExitCode::from(1)
        }
    }
}

/// What `PUT /admin/clients` answered, in words; never the document itself.
pub fn outcome(status: u16, body: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| json.as_ref().and_then(|json| json.get(name));
    let number = |name: &str| field(name).and_then(serde_json::Value::as_u64);
    if status == 200 {
        if let (Some(serial), Some(clients)) = (number("serial"), number("clients")) {
            return Outcome::Holds { serial, clients };
        }
        return Outcome::Failed(
            "200 without the serial and client count PUT /admin/clients answers: \
             is this a cryptoserver?"
                .to_owned(),
        );
    }
    let error = field("error").and_then(serde_json::Value::as_str);
    let mut reason = match (status, error) {
        (404, None) => "404: the host has no PUT /admin/clients: it has no \
                        CRYPTOSERVER_CLIENTS_SIGNER (or runs an older cryptoserver)"
            .to_owned(),
        (_, Some(error)) => format!("{status}: {error}"),
        (_, None) => format!("{status} without an error message"),
    };
    if let Some(serial) = number("serial_in_force") {
        reason.push_str(&format!(" (serial in force: {serial})"));
    }
    Outcome::Failed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_answers() {
        assert_eq!(
            outcome(200, r#"{"serial": 7, "clients": 3}"#),
            Outcome::Holds {
                serial: 7,
                clients: 3
            }
        );
        assert_eq!(
            outcome(
                409,
                r#"{"error": "serial 7 is not above 9", "serial_in_force": 9}"#
            ),
            Outcome::Failed("409: serial 7 is not above 9 (serial in force: 9)".into())
        );
        assert_eq!(
            outcome(403, r#"{"error": "bad signature"}"#),
            Outcome::Failed("403: bad signature".into())
        );
        assert!(
            matches!(outcome(404, ""), Outcome::Failed(reason) if reason.contains("CRYPTOSERVER_CLIENTS_SIGNER"))
        );
        assert!(
            matches!(outcome(200, "<html>"), Outcome::Failed(reason) if reason.contains("is this a cryptoserver"))
        );
        assert_eq!(
            outcome(502, ""),
            Outcome::Failed("502 without an error message".into())
        );
    }

    /// What `minisign -S` made of the file `serial=1\n` with a key made for this test and thrown away.
    const SIGNED: &str = "untrusted comment: signature from minisign secret key
RUQMsOniFrhQJPTgGiqXx8w7OTQW+Lwo+eVeceFz+JokEoyJkMOBD0lrHkWIHjZr1zS05J60mORetGMabtVSKp2XOiGWksde8w8=
trusted comment: timestamp:1796643884\tfile:f\thashed
fp07xLniC24qAbiUEaEdXTDZHppgilHdn0glnZISl5FTB67vQBIwhdli/hqJ9Vch/EXurvUviIlOedMPO/KnAQ==
serial=1
";

    #[test]
    fn takes_a_signed_document_and_refuses_anything_else() {
        let directory = std::env::temp_dir().join(format!("push-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let signed = directory.join("clients.signed");
        std::fs::write(&signed, SIGNED).unwrap();
        assert_eq!(read_signed_document(&signed).unwrap(), SIGNED.as_bytes());
        let unsigned_file_only = directory.join("clients");
        std::fs::write(
            &unsigned_file_only,
            SIGNED.lines().skip(4).collect::<String>(),
        )
        .unwrap();
        assert!(read_signed_document(&unsigned_file_only).is_err());
        let unsigned = directory.join("clients");
        std::fs::write(&unsigned, "serial=2\n# no signature\n\n\nabc\n").unwrap();
        let error = read_signed_document(&unsigned).unwrap_err().to_string();
        assert!(
            error.contains("is not a signed clients document"),
            "{error}"
        );
        let short = directory.join("short");
        std::fs::write(&short, "untrusted comment: x\n").unwrap();
        assert!(read_signed_document(&short).is_err());
        let missing = directory.join("missing");
        let error = format!("{:#}", read_signed_document(&missing).unwrap_err());
        assert!(error.starts_with("cannot read "), "{error}");
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
