//! Verifying an HTTPS git server against the private CA given as `ca.crt` in the secret.

use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

/// Checks that the server's leaf certificate (DER) chains to a CA of `ca_pem` and names `host`.
pub fn verify_server_certificate(ca_pem: &[u8], leaf_der: &[u8], host: &str) -> Result<(), String> {
    let cas: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca.crt is not PEM: {e}"))?;
    if cas.is_empty() {
        return Err("ca.crt holds no certificate".to_owned());
    }
    let anchors = cas
        .iter()
        .map(|ca| anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca.crt: {e}"))?;
    let leaf_der = CertificateDer::from(leaf_der);
    let leaf =
        EndEntityCert::try_from(&leaf_der).map_err(|e| format!("server certificate: {e}"))?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("the server certificate is not signed by ca.crt: {e}"))?;
    let name = ServerName::try_from(host).map_err(|e| format!("server name {host:?}: {e}"))?;
    leaf.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("the server certificate is not valid for {host}: {e}"))
}
