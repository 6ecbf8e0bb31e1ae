//! The HTTP endpoints: `/metrics` (Prometheus text format) and `/healthz`.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// The router serving `/metrics` and `/healthz`.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics)).await
}
