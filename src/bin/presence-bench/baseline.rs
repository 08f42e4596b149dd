//! The fan-out baseline: `grpc.health.v1.Health` alone, served by the same
//! tonic stack with the transport settings `presenced` uses (HTTP/1.1 +
//! HTTP/2, grpc-web layer, TCP_NODELAY, keepalive, stream limit). Its
//! `Watch` streams are tonic's own broadcast: each line on stdin flips the
//! status of [`SERVICE`], which every watcher of it then receives.
//!
//! Heartbeats need no separate baseline server: their baseline is
//! `Health/Check` on `presenced` itself.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;

/// The service name whose status the baseline flips.
pub const SERVICE: &str = "bench.Flip";

/// Runs the baseline server until stdin closes.
pub async fn run(listen: SocketAddr) -> Result<(), String> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || tx.send(()).is_err() {
                break;
            }
        }
        // stdin closed: the bench is done with us.
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let routes = Routes::new(health)
        .into_axum_router()
        .layer(GrpcWebLayer::new());
    let server = Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .max_concurrent_streams(1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(Routes::from(routes))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let mut serving = true;
                while rx.recv().await.is_some() {
                    serving = !serving;
                    let status = if serving {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    reporter.set_service_status(SERVICE, status).await;
                }
            },
        );
    server.await.map_err(|e| e.to_string())
}
