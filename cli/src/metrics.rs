//! The metrics and health endpoint of `weir controllers`: `/metrics` (Prometheus text format),
//! `/healthz` and `/readyz`.

use std::sync::Arc;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

/// Serves until the listener fails; `render` produces the metrics text on each scrape.
pub async fn serve(listener: TcpListener, render: impl Fn() -> String + Send + Sync + 'static) {
    let render = Arc::new(render);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics server stopped");
    }
}
