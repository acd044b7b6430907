//! The metrics and health endpoint of `weir controllers`: `/metrics` (OpenMetrics text, through
//! prometheus-client), `/healthz`, and `/readyz`, ready once every controller's cache has
//! synced.

use std::sync::Arc;

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use weir_runtime::controller::Synced;

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, registry: Registry, synced: Synced) {
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, weir_runtime::metrics::CONTENT_TYPE)],
                        weir_runtime::metrics::render(&registry),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let synced = synced.clone();
                async move {
                    if synced.is_synced() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics server stopped");
    }
}
