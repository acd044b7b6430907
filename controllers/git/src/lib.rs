//! Weir's git client, shared by the source controller (GitRepository fetches) and the image
//! automation (clone, commit and push): libgit2 transport with Flux's Secret keys for
//! credentials, verified SSH host keys and TLS certificates, proxies, and every network
//! operation bounded by a timeout with at most one blocking thread per object ([`bounded`]).

pub mod bounded;
pub mod credentials;
pub mod known_hosts;
pub mod tls;
mod transport;

pub use transport::*;
