//! The admin listener (`--metrics-listen`): `GET /metrics` in the
//! Prometheus text format, and `GET /healthz` and `GET /readyz` for load
//! balancers and orchestrators that do not speak gRPC health.
//!
//! - `/healthz`: 200 while the process serves (liveness).
//! - `/readyz`: 200 while it serves *and* its store answers; 503 with the
//!   reason while the store is unreachable or the server is shutting down
//!   (readiness: send no new traffic here).

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::presence::{AnyStore, Health, Store};

/// Serves the admin routes on `listener` until `stop`; `/readyz` fails once
/// `draining` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    store: AnyStore,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let (store, draining) = (store.clone(), draining.clone());
                async move { readiness(&store, &draining) }
            }),
        );
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(%err, "admin listener failed");
    }
}

fn readiness(store: &AnyStore, draining: &CancellationToken) -> impl IntoResponse {
    if draining.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_owned(),
        );
    }
    match store.health() {
        Health::Serving => (StatusCode::OK, "ready\n".to_owned()),
        Health::Unavailable(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store {} unavailable: {why}\n", store.describe()),
        ),
    }
}
