//! The metrics and health endpoint of `weir controllers`: `/metrics` (OpenMetrics text, through
//! prometheus-client), `/healthz`, and `/readyz`, ready once every controller's cache has
//! synced — or, with leader election, while standing by for leadership (so that a rolling
//! update can start a new replica while the old leader still holds the Leases).

use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use weir_runtime::controller::Synced;

/// What the endpoints serve, filled in as the process starts its controllers.
#[derive(Debug, Clone)]
pub struct Health(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: RwLock<Registry>,
    /// The caches readiness waits for, once the controllers started.
    synced: RwLock<Option<Synced>>,
    /// Whether the process starts its controllers only once elected.
    standby_is_ready: bool,
}

impl Health {
    #[must_use]
    pub fn new(leader_election: bool) -> Self {
        Self(Arc::new(Inner {
            registry: RwLock::new(Registry::default()),
            synced: RwLock::new(None),
            standby_is_ready: leader_election,
        }))
    }

    /// The registry, to register metrics with.
    pub fn registry(&self) -> RwLockWriteGuard<'_, Registry> {
        self.0
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The controllers started: readiness now waits for their caches.
    pub fn started(&self, synced: Synced) {
        *self
            .0
            .synced
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(synced);
    }

    fn ready(&self) -> (StatusCode, &'static str) {
        let synced = self.0.synced.read().unwrap_or_else(PoisonError::into_inner);
        match &*synced {
            Some(synced) if synced.is_synced() => (StatusCode::OK, "ok"),
            Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "caches not synced"),
            None if self.0.standby_is_ready => (StatusCode::OK, "standby: waiting for leadership"),
            None => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        }
    }

    fn render(&self) -> String {
        let registry = self
            .0
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        weir_runtime::metrics::render(&registry)
    }
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, health: Health) {
    let metrics = health.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let health = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, weir_runtime::metrics::CONTENT_TYPE)],
                        health.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move { health.ready() }
            }),
        );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics server stopped");
    }
}
