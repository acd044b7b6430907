//! The process's TLS crypto provider.

/// Chooses ring as the process-wide rustls crypto provider; call before any client exists.
///
/// kube uses ring, and oci-client compiles rustls's aws-lc-rs provider in next to it; with two
/// providers compiled in, rustls no longer picks one by itself. Calling it again, or after
/// another provider was chosen, changes nothing.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
