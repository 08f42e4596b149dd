//! The services on the port and the transport settings around them: gRPC
//! (presence, health, reflection v1 and v1alpha), grpc-web over HTTP/1.1
//! and HTTP/2, CORS, the beacon route, per-call telemetry, and the HTTP/2
//! limits (streams, keepalive, connection age, header size, reset floods).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use tonic::service::Routes;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tonic_web::GrpcWebLayer;
use tower::layer::util::{Identity, Stack};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{beacon, Error};
use crate::config::Config;
use crate::grpc::pb::presence_service_server::PresenceServiceServer;
use crate::grpc::{pb, PresenceApi};
use crate::presence::AnyStore;
use crate::telemetry::TelemetryLayer;

/// Largest header block of one request, in bytes (HTTP/2; grpc-web over
/// HTTP/1.1 has hyper's larger bound). Room for big JWTs. Past it the call
/// is refused with HTTP 431, which gRPC clients report as UNKNOWN or
/// INTERNAL, and other calls on the connection go on; past four times it,
/// h2 treats the header block as abuse and closes the connection (GOAWAY).
pub const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;

/// The server with its routes and layers.
pub type Routed = Router<Stack<CorsLayer, Identity>>;

/// The presence service as the router serves it.
pub type PresenceService = PresenceServiceServer<PresenceApi<AnyStore>>;

/// The server with every route and layer, ready to serve.
pub fn build(
    config: &Config,
    api: PresenceApi<AnyStore>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    telemetry: TelemetryLayer,
) -> Result<Routed, Error> {
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let presence = PresenceServiceServer::new(api.clone())
        .max_decoding_message_size(config.limits.max_request_bytes)
        .max_encoding_message_size(usize::MAX);
    let beacon = beacon::router(api).layer(telemetry.clone());
    // grpc-web wraps the gRPC services only: tonic-web answers 400 to
    // any other HTTP/1.1 request, which would shadow the beacon route.
    let routes = Routes::new(presence)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .layer(telemetry)
        .layer(GrpcWebLayer::new())
        .merge(beacon);

    let mut builder = Server::builder();
    if let Some(age) = config.connections.max_connection_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(config.connections.max_connection_age_grace);
    }
    // HTTP/1.1 connections (grpc-web, beacon) must send a request's
    // headers within config::HTTP1_HEADER_READ_TIMEOUT: tonic sets
    // hyper's timer, which enforces hyper's default.
    Ok(builder
        .accept_http1(true)
        .max_concurrent_streams(config.connections.max_streams_per_connection)
        .http2_keepalive_interval(Some(config.connections.keepalive_interval))
        .http2_keepalive_timeout(Some(config.connections.keepalive_timeout))
        // Rapid-reset guard: a client that opens and cancels streams
        // faster than we accept them is cut off.
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_local_error_reset_streams(Some(1024))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .layer(cors(&config.cors_allowed_origins)?)
        .add_routes(Routes::from(routes)))
}

/// Reflection over every service on the port, with doc comments: presence,
/// health and both reflection versions (each version lists the other too,
/// so old and new grpcurl see the same services).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(pb::HEALTH_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// CORS for grpc-web and the beacon: the headers grpc-web clients send, and
/// the grpc-status headers they must be able to read.
pub fn cors(origins: &[String]) -> Result<CorsLayer, Error> {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim()).map_err(|_| {
                    Error::Config(format!("--cors-allowed-origins: invalid origin {o:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(
            [
                "content-type",
                "x-grpc-web",
                "x-user-agent",
                "grpc-timeout",
                "authorization",
                "connect-protocol-version",
                "connect-timeout-ms",
            ]
            .map(HeaderName::from_static),
        )
        .expose_headers(
            ["grpc-status", "grpc-message", "grpc-status-details-bin"].map(HeaderName::from_static),
        )
        .max_age(Duration::from_secs(24 * 3600)))
}
