//! HTTPS with rustls: a certificate and key, and optionally a CA that client
//! certificates must chain to (mTLS). Loaded before the port is bound.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(cert, "CRYPTOSERVER_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        format!(
            "{}: no PEM private key (CRYPTOSERVER_TLS_KEY): {error}",
            key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup failed: {error}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca, "CRYPTOSERVER_TLS_CLIENT_CA")? {
                roots.add(certificate).map_err(|error| {
                    format!("{}: unusable CA certificate: {error}", ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| {
                    format!("{}: cannot verify clients with it: {error}", ca.display())
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        format!(
            "{}: certificate and key do not fit together: {error}",
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certificates(path: &Path, variable: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            format!(
                "{}: cannot read PEM certificates ({variable}): {error}",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate ({variable})",
            path.display()
        ));
    }
    Ok(certificates)
}
