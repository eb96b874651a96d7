//! One HTTP/1.1 exchange with a host's cryptoserver port, the way `status --probe`
//! and `clients push` both reach hosts: at an address (a private one from the EC2
//! API, or a URL's host), plain or HTTPS verified against the hosts' pinned
//! certificate under the name it was issued for, each exchange bounded in time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Larger answers are none of the server's JSON answers.
const MAX_ANSWER: u64 = 64 * 1024;

/// HTTPS settings: the PEM certificates to trust and the name the hosts' certificate carries.
pub struct HostTls {
    pub ca: PathBuf,
    pub server_name: String,
}

/// Where one host's cryptoserver listens.
pub struct Host {
    pub address: String,
    pub port: u16,
    /// HTTPS under this name; plain HTTP when None.
    pub server_name: Option<ServerName<'static>>,
}

/// A request to send.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    /// Which command asks, for the server's logs.
    pub user_agent: &'a str,
    pub timeout: Duration,
}

/// What a host answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The TLS client for hosts whose certificate is pinned in `tls.ca`.
pub fn tls_connector(tls: &HostTls) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&tls.ca)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            anyhow!(
                "cannot read certificates from {}: {error}",
                tls.ca.display()
            )
        })?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{} holds no PEM certificate",
        tls.ca.display()
    );
    for certificate in certificates {
        roots
            .add(certificate)
            .with_context(|| format!("{} holds a certificate rustls refuses", tls.ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("rustls has no TLS version for ring")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `name` as TLS checks it against the hosts' certificate.
pub fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).map_err(|error| {
        anyhow!("--tls-server-name {name:?} is not a DNS name or an IP address: {error}")
    })
}

/// Sends `request` to `host` and reads its whole answer, within `request.timeout`.
/// `tls` must be given for a host with a server name.
pub async fn exchange(
    host: &Host,
    tls: Option<&tokio_rustls::TlsConnector>,
    request: &Request<'_>,
) -> Result<Answer, String> {
    let (address, port) = (host.address.as_str(), host.port);
    let ask = async {
        let stream = TcpStream::connect((address, port))
            .await
            .map_err(|error| format!("cannot connect to {address}:{port}: {error}"))?;
        match (&host.server_name, tls) {
            (Some(name), Some(connector)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|error| format!("TLS with {address}:{port}: {error}"))?;
                send(stream, host, request).await
            }
            (Some(_), None) => Err(format!(
                "{address}:{port} speaks HTTPS but no certificate to trust was given (--ca)"
            )),
            (None, _) => send(stream, host, request).await,
        }
    };
    tokio::time::timeout(request.timeout, ask)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {address}:{port} within {} s",
                request.timeout.as_secs()
            ))
        })
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &Host,
    request: &Request<'_>,
) -> Result<Answer, String> {
    let (address, port) = (host.address.as_str(), host.port);
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {address}:{port}\r\nUser-Agent: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        request.method,
        request.path,
        request.user_agent,
        request.body.len()
    );
    stream
        .write_all(&[head.as_bytes(), request.body].concat())
        .await
        .map_err(|error| format!("cannot send to {address}:{port}: {error}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(|error| format!("cannot read {address}:{port}'s answer: {error}"))?;
    parse_answer(&answer).map_err(|reason| format!("{address}:{port} answered {reason}"))
}

/// The status and body of an answer (`Content-Length`-delimited: the server sends
/// its JSON whole, and closes the connection as asked).
pub fn parse_answer(answer: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("something that is not an HTTP response")?;
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or("something that is not an HTTP response")?;
    Ok(Answer {
        status,
        body: body.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}"),
            Ok(Answer {
                status: 409,
                body: "{}".into()
            })
        );
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    }

    #[test]
    fn a_bad_server_name_is_named() {
        let error = server_name("not a name").unwrap_err().to_string();
        assert!(
            error.contains("--tls-server-name \"not a name\""),
            "{error}"
        );
    }
}
