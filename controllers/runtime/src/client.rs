//! The one way Weir's controllers make a Kubernetes client: every request counted in
//! `weir_api_requests_total` ([`crate::metrics`]), and retries of a busy or unavailable API
//! server (429, 503, 504) kept short.
//!
//! kube-client's own retry waits up to 1000 s between its 15 attempts, so one request to an
//! aggregated API whose service is down (metrics-server not running) would hold a reconcile for
//! minutes. Here a request is retried at most [`MAX_RETRIES`] times within about a second
//! (honouring `Retry-After`); past that the reconcile fails with the API server's answer and is
//! retried by the object's own backoff, as every other failure is.

use std::time::Duration;

use kube::client::{ClientBuilder, retry::RetryPolicy};
use tower::{buffer::BufferLayer, retry::RetryLayer, util::MapRequestLayer};

/// How often one request is retried after a 429, 503 or 504.
pub const MAX_RETRIES: u32 = 4;

/// A client of `config` (to be made inside a tokio runtime: its buffer runs there): every controller of the process makes its clients (impersonating ones
/// too) through this.
pub fn new(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    crate::tls::install_crypto_provider();
    config.default_retry = false;
    let retry = RetryPolicy::new(
        Duration::from_millis(50),
        Duration::from_millis(500),
        MAX_RETRIES,
        true,
    )
    .map_err(|e| kube::Error::Service(Box::new(e)))?;
    Ok(ClientBuilder::try_from(config)?
        // Inside the retry, so that each attempt is counted.
        .with_layer(&MapRequestLayer::new(crate::metrics::count_request))
        // The retry sends a request again through a clone of what it wraps; the boxed stack
        // is not `Clone`, a buffer in front of it is (as kube's own `Client` makes it).
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(retry))
        .build())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An API server that answers every request 503, counting them.
    async fn unavailable_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut pending = Vec::new();
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            counter.fetch_add(1, Ordering::SeqCst);
                            let answer = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                            if conn.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn an_unavailable_api_is_retried_a_few_times_then_answered() {
        let (url, seen) = unavailable_server().await;
        let client = new(kube::Config::new(url.parse().unwrap())).unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client, "default");
        let result = api.get_opt("x").await;
        assert!(result.is_err(), "{result:?}");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1 + MAX_RETRIES as usize,
            "one request and {MAX_RETRIES} retries, not kube-client's 15"
        );
    }
}
