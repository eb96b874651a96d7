//! HTTPS with rustls: a certificate and key, and optionally a CA that client
//! certificates must chain to (mTLS). Loaded before the port is bound.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why HTTPS cannot be set up; the server does not start then.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM file that cannot be read, or holds none of what it should;
    /// `variable` is the setting that named it.
    Pem {
        path: PathBuf,
        variable: &'static str,
        source: Option<pem::Error>,
    },
    Protocols(rustls::Error),
    UnusableCa {
        path: PathBuf,
        source: rustls::Error,
    },
    ClientVerifier {
        path: PathBuf,
        source: VerifierBuilderError,
    },
    KeyMismatch {
        path: PathBuf,
        source: rustls::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem {
                path,
                variable,
                source: Some(source),
            } => write!(
                f,
                "{}: cannot read PEM ({variable}): {source}",
                path.display()
            ),
            TlsError::Pem {
                path,
                variable,
                source: None,
            } => write!(
                f,
                "{}: holds no PEM certificate ({variable})",
                path.display()
            ),
            TlsError::Protocols(source) => write!(f, "TLS setup failed: {source}"),
            TlsError::UnusableCa { path, source } => {
                write!(f, "{}: unusable CA certificate: {source}", path.display())
            }
            TlsError::ClientVerifier { path, source } => write!(
                f,
                "{}: cannot verify clients with it: {source}",
                path.display()
            ),
            TlsError::KeyMismatch { path, source } => write!(
                f,
                "{}: certificate and key do not fit together: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {}

pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(cert, "CRYPTOSERVER_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        variable: "CRYPTOSERVER_TLS_KEY",
        source: Some(source),
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca, "CRYPTOSERVER_TLS_CLIENT_CA")? {
                roots
                    .add(certificate)
                    .map_err(|source| TlsError::UnusableCa {
                        path: ca.to_owned(),
                        source,
                    })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.to_owned(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::KeyMismatch {
                path: cert.to_owned(),
                source,
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certificates(
    path: &Path,
    variable: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        path: path.to_owned(),
        variable,
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(Some(source)))?;
    if certificates.is_empty() {
        return Err(pem_error(None));
    }
    Ok(certificates)
}
