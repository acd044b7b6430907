//! A forwarding HTTP proxy on loopback, for clients configured with one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Error;

/// An HTTP proxy that wants `Proxy-Authorization: Basic` with its credentials, serves plain
/// requests (absolute URIs) and `CONNECT` tunnels, and sends every one to `upstream` whatever
/// host it names: a host that resolves nowhere is reached only through the proxy. It counts the
/// connections it forwarded; it stops when dropped.
#[derive(Debug)]
pub struct LoopbackProxy {
    address: SocketAddr,
    forwarded: Arc<AtomicU64>,
    _task: weir_runtime::controller::AbortOnDropHandle<()>,
}

impl LoopbackProxy {
    /// Starts a proxy to `upstream` (`host:port`) on a free loopback port.
    pub async fn start(upstream: &str, username: &str, password: &str) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("binding the loopback proxy"))?;
        let address = listener
            .local_addr()
            .map_err(Error::io("reading the loopback proxy's address"))?;
        let forwarded = Arc::new(AtomicU64::new(0));
        let wanted = format!(
            "proxy-authorization: basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        )
        .to_lowercase();
        let (count, upstream) = (forwarded.clone(), upstream.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(
                    client,
                    upstream.clone(),
                    wanted.clone(),
                    count.clone(),
                ));
            }
        });
        Ok(Self {
            address,
            forwarded,
            _task: weir_runtime::controller::AbortOnDropHandle::new(task),
        })
    }

    /// `http://127.0.0.1:<port>`, without credentials.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// How many connections were forwarded (with the right credentials).
    #[must_use]
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

/// One client connection: its first request head decides; the rest of the connection is
/// copied both ways. Failures just end the connection, as a proxy's do.
async fn forward(mut client: TcpStream, upstream: String, wanted: String, count: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    if !text.lines().any(|l| l.trim() == wanted) {
        let _ = client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\
                  proxy-authenticate: Basic realm=\"weir\"\r\nconnection: close\r\n\r\n",
            )
            .await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let sent = if text.starts_with("connect ") {
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
    } else {
        // Registries and most HTTP servers take the absolute URI as it is.
        server.write_all(&head).await
    };
    if sent.is_ok() {
        count.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
