//! The server's rustls configuration from the `[tls]` PEM files, for both transports.

use tokio_rustls::rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

use crate::{config::TlsConfig, error::Error};

/// The rustls configuration from PEM files, if TLS is configured: client certificates
/// required when `client_ca_file` is set. The caller sets the ALPN protocols it speaks.
///
/// # Errors
/// A file cannot be read or is invalid; the message names the setting.
pub fn server_config(tls: &TlsConfig) -> Result<Option<ServerConfig>, Error> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let bad = |field: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Internal(format!("tls.{field} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("cert_file", cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key_file", key, &e))?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for der in
                CertificateDer::pem_file_iter(ca).map_err(|e| bad("client_ca_file", ca, &e))?
            {
                roots
                    .add(der.map_err(|e| bad("client_ca_file", ca, &e))?)
                    .map_err(|e| bad("client_ca_file", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| bad("client_ca_file", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("key_file", key, &e))?;
    Ok(Some(server))
}
