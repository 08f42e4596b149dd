//! `POST /v1/disconnect`: the body is a session token (text/plain, what
//! `navigator.sendBeacon(url, token)` sends, so no CORS preflight is
//! needed). 204 when the session is ended or was already gone; otherwise
//! the HTTP status of the gRPC code ([`crate::grpc::http_status`]): 400 for
//! a malformed token, 401 for one this server did not sign or that expired,
//! 413 for a body over [`MAX_BEACON_BYTES`], 429 over a rate limit, 503
//! while the store is unreachable or the server shuts down, 500 for a
//! server-side failure.

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::grpc::{http_status, PresenceApi};
use crate::presence::AnyStore;

/// Largest accepted beacon body (a session token), in bytes.
pub const MAX_BEACON_BYTES: usize = 4096;

/// The beacon route, before telemetry and CORS.
pub fn router(api: PresenceApi<AnyStore>) -> axum::Router {
    axum::Router::new()
        .route("/v1/disconnect", axum::routing::post(beacon))
        .layer(DefaultBodyLimit::max(MAX_BEACON_BYTES))
        .layer(axum::middleware::map_request(peer_info))
        .with_state(api)
}

/// The remote address of a beacon request, whatever the transport.
#[derive(Clone, Copy)]
struct PeerInfo(Option<SocketAddr>);

/// Copies tonic's connection info into a type the beacon handler can
/// extract, for plain TCP and for TLS.
async fn peer_info(mut req: axum::extract::Request) -> axum::extract::Request {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    let peer = ext
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        });
    req.extensions_mut().insert(PeerInfo(peer));
    req
}

async fn beacon(
    State(api): State<PresenceApi<AnyStore>>,
    Extension(connect): Extension<PeerInfo>,
    body: String,
) -> Response {
    let result = match api.check_peer_rate(connect.0) {
        Ok(()) => api.disconnect_token(body.trim()).await,
        Err(status) => Err(status),
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(status) => (http_status(status.code()), status.message().to_owned()).into_response(),
    }
}
