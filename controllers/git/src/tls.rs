//! Verifying an HTTPS git server against the private CA given as `ca.crt` in the secret.

use rustls_pki_types::{CertificateDer, InvalidDnsNameError, ServerName, UnixTime, pem::PemObject};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

/// Why the server's certificate is not trusted through `ca.crt`.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("ca.crt is not PEM")]
    CaNotPem(#[source] rustls_pki_types::pem::Error),
    #[error("ca.crt holds no certificate")]
    NoCa,
    #[error("ca.crt")]
    Ca(#[source] webpki::Error),
    #[error("server certificate")]
    Server(#[source] webpki::Error),
    #[error("the server certificate is not signed by ca.crt")]
    NotSigned(#[source] webpki::Error),
    #[error("server name {host:?}")]
    ServerName {
        host: String,
        #[source]
        source: InvalidDnsNameError,
    },
    #[error("the server certificate is not valid for {host}")]
    WrongHost {
        host: String,
        #[source]
        source: webpki::Error,
    },
}

/// Checks that the server's leaf certificate (DER) chains to a CA of `ca_pem` and names `host`.
pub fn verify_server_certificate(
    ca_pem: &[u8],
    leaf_der: &[u8],
    host: &str,
) -> Result<(), CertificateError> {
    let cas: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<_, _>>()
        .map_err(CertificateError::CaNotPem)?;
    if cas.is_empty() {
        return Err(CertificateError::NoCa);
    }
    let anchors = cas
        .iter()
        .map(|ca| anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertificateError::Ca)?;
    let leaf_der = CertificateDer::from(leaf_der);
    let leaf = EndEntityCert::try_from(&leaf_der).map_err(CertificateError::Server)?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(CertificateError::NotSigned)?;
    let name = ServerName::try_from(host).map_err(|source| CertificateError::ServerName {
        host: host.to_owned(),
        source,
    })?;
    leaf.verify_is_valid_for_subject_name(&name)
        .map_err(|source| CertificateError::WrongHost {
            host: host.to_owned(),
            source,
        })
}
