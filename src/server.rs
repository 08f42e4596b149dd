//! Assembles the transport: gRPC, grpc-web (HTTP/1.1 and HTTP/2) with CORS,
//! health, reflection v1 and v1alpha, and the `POST /v1/disconnect` beacon
//! route, all on one listener; and shuts it down in order. Around it: the
//! admin listener (`/metrics`), per-call telemetry, connection hygiene
//! (keepalive, maximum age, stream limit) and the state file of
//! `--data-dir`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::auth::limits::Limiter;
use crate::auth::{jwt, Authenticator};
use crate::coalesce::Coalesced;
use crate::config::Config;
use crate::grpc::pb::presence_service_server::PresenceServiceServer;
use crate::grpc::{pb, PresenceApi};
use crate::metrics::Metrics;
use crate::presence::persist::{self, Persister};
use crate::presence::{Memory, SystemClock};
use crate::telemetry::TelemetryLayer;
use crate::tls;
use crate::token;

/// Largest accepted beacon body (a session token), in bytes.
pub const MAX_BEACON_BYTES: usize = 4096;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent or unsafe.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 server failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not load the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The data directory or its state file cannot be used.
    #[error("--data-dir: {0}")]
    Persist(#[from] persist::Error),
    /// The admin (metrics) listener cannot bind its address.
    #[error("--metrics-listen {addr}: {source}")]
    Admin {
        /// The configured address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// A presence server ready to run: its store is created, so tests (and
/// metrics) can hold a handle to it before it serves.
pub struct App {
    config: Config,
    store: Memory,
    metrics: Metrics,
    persister: Option<Persister>,
    admin: Option<TcpListener>,
}

impl App {
    /// Builds the store described by `config`, restoring its state from
    /// `--data-dir` when set.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let store = Memory::new(config.limits(), Arc::new(SystemClock));
        let persister = match &config.data_dir {
            Some(dir) => {
                let persister = Persister::new(dir, store.clone())?;
                let loaded = persister.load()?;
                persist::report(&loaded, &persister.path());
                Some(persister)
            }
            None => None,
        };
        let metrics = Metrics::new(store.clone(), persister.clone());
        Ok(Self {
            config,
            store,
            metrics,
            persister,
            admin: None,
        })
    }

    /// Serves `/metrics` on `listener` instead of binding `--metrics-listen`
    /// (tests bind port 0 and need to know the address).
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin = Some(listener);
        self
    }

    /// A handle to the store.
    pub fn store(&self) -> &Memory {
        &self.store
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down in
    /// order: health NOT_SERVING, watch streams end with UNAVAILABLE, stop
    /// accepting, wait for connections to finish, all within
    /// `shutdown_grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let App {
            config,
            store,
            metrics,
            persister,
            admin,
        } = self;
        let addr = listener.local_addr()?;
        let admin = match (admin, config.metrics_listen) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Admin { addr, source })?,
            ),
            (None, None) => None,
        };
        let auth_enabled = config.auth_enabled();
        if auth_enabled {
            info!(%addr, jwt = config.jwt_config().enabled(), service_keys = config.service_keys.len(), mtls = config.tls_client_ca.is_some(), "authentication is on");
        } else if !addr.ip().is_loopback() {
            if !config.allow_unauthenticated_public {
                return Err(Error::Config(format!(
                    "refusing to listen on non-loopback address {addr} without authentication; \
                     configure JWT keys, service keys or mTLS, or pass --allow-unauthenticated-public \
                     if anyone who can reach it may act as any user"
                )));
            }
            warn!(%addr, "authentication is off on a non-loopback address: anyone who can reach it may act as any user");
        } else {
            warn!(%addr, "authentication is off (loopback only)");
        }
        let room_ttl = (!config.room_token_ttl.is_zero()).then_some(config.room_token_ttl);
        let tokens = if config.token_keys.is_empty() {
            info!("no --token-key: tokens are signed with a random key and end with this process");
            token::Codec::random(room_ttl)
        } else {
            token::Codec::new(&config.token_keys, room_ttl)
        };
        let jwt = if config.jwt_config().enabled() {
            Some(
                jwt::Verifier::new(config.jwt_config())
                    .await
                    .map_err(Error::Config)?,
            )
        } else {
            None
        };
        let auth = Arc::new(Authenticator::new(
            jwt.clone(),
            config.service_keys.clone(),
            config.tls_client_ca.is_some(),
        ));
        let limiter = Arc::new(Limiter::new(config.caller_limits()));
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(
                tls::Acceptor::new(&tls::Config {
                    cert: cert.into(),
                    key: key.into(),
                    client_ca: config.tls_client_ca.as_ref().map(Into::into),
                    client_auth_required: config.tls_client_auth_required,
                    reload_interval: config.tls_reload_interval,
                })
                .map_err(Error::Config)?,
            ),
            _ => None,
        };

        let streams_end = CancellationToken::new();
        let stop_accepting = CancellationToken::new();
        let sweeper = tokio::spawn(store.clone().run_sweeper(streams_end.clone()));
        let periodic_save = persister.clone().map(|p| {
            info!(
                path = %p.path().display(),
                every = %humantime::format_duration(config.persist_interval),
                "presence state is saved periodically and at shutdown"
            );
            tokio::spawn(p.run(config.persist_interval, streams_end.clone()))
        });
        let admin_server = match admin {
            Some(listener) => {
                let admin_addr = listener.local_addr()?;
                info!(addr = %admin_addr, "metrics on http://{admin_addr}/metrics");
                Some(tokio::spawn(serve_admin(
                    listener,
                    metrics.clone(),
                    stop_accepting.clone(),
                )))
            }
            None => None,
        };
        let telemetry = TelemetryLayer::new(metrics.rpc.clone(), streams_end.clone());
        if let Some(jwt) = &jwt {
            jwt.spawn_refresh(streams_end.clone());
        }
        tokio::spawn(housekeeping(limiter.clone(), streams_end.clone()));
        let api = PresenceApi::new(store, tokens, auth, limiter, streams_end.clone());

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<PresenceServiceServer<PresenceApi<Memory>>>()
            .await;
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let presence = PresenceServiceServer::new(api.clone())
            .max_decoding_message_size(config.max_request_bytes)
            .max_encoding_message_size(usize::MAX);

        let beacon = axum::Router::new()
            .route("/v1/disconnect", axum::routing::post(beacon))
            .layer(DefaultBodyLimit::max(MAX_BEACON_BYTES))
            .layer(axum::middleware::map_request(peer_info))
            .with_state(api)
            .layer(telemetry.clone());
        // grpc-web wraps the gRPC services only: tonic-web answers 400 to
        // any other HTTP/1.1 request, which would shadow the beacon route.
        let routes = Routes::new(presence)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .into_axum_router()
            .layer(telemetry)
            .layer(GrpcWebLayer::new())
            .merge(beacon);

        let mut builder = Server::builder();
        if let Some(age) = config.max_connection_age {
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(config.max_connection_age_grace);
        }
        // HTTP/1.1 connections (grpc-web, beacon) must send a request's
        // headers within config::HTTP1_HEADER_READ_TIMEOUT: tonic sets
        // hyper's timer, which enforces hyper's default.
        let server = builder
            .accept_http1(true)
            .max_concurrent_streams(config.max_streams_per_connection)
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            // Rapid-reset guard: a client that opens and cancels streams
            // faster than we accept them is cut off.
            .http2_max_pending_accept_reset_streams(Some(64))
            .http2_max_local_error_reset_streams(Some(1024))
            .http2_max_header_list_size(16 * 1024)
            .layer(cors(&config.cors_allowed_origins)?)
            .add_routes(Routes::from(routes));
        let stop = stop_accepting.clone().cancelled_owned();
        let tls_enabled = tls.is_some();
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match tls {
                Some(acceptor) => Box::pin(
                    server.serve_with_incoming_shutdown(
                        acceptor
                            .incoming(listener, stop_accepting.clone())
                            .map(|conn| conn.map(Coalesced::new)),
                        stop,
                    ),
                ),
                None => Box::pin(server.serve_with_incoming_shutdown(
                    plain_incoming(listener, stop_accepting.clone()),
                    stop,
                )),
            };
        let mut server = server;
        info!(%addr, tls = tls_enabled, "presenced listening (gRPC, grpc-web, health, reflection, POST /v1/disconnect)");

        tokio::select! {
            result = &mut server => {
                streams_end.cancel();
                stop_accepting.cancel();
                if let Some(persister) = &persister {
                    let _ = persister.save_now().await;
                }
                return result.map_err(Error::from);
            }
            () = shutdown => {}
        }

        info!("shutting down");
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<PresenceServiceServer<PresenceApi<Memory>>>()
            .await;
        streams_end.cancel();
        stop_accepting.cancel();
        match tokio::time::timeout(config.shutdown_grace, &mut server).await {
            Ok(result) => result?,
            Err(_) => warn!(
                grace = %humantime::format_duration(config.shutdown_grace),
                "connections still open after the shutdown grace period; closing them"
            ),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sweeper).await;
        if let Some(task) = periodic_save {
            let _ = task.await;
        }
        if let Some(persister) = &persister {
            if let Ok(bytes) = persister.save_now().await {
                info!(bytes, path = %persister.path().display(), "presence state saved");
            }
        }
        if let Some(task) = admin_server {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        info!("stopped");
        Ok(())
    }
}

/// Serves `config` on `listener` until `shutdown` resolves: the one entry
/// point of `main` and the tests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    App::new(config)?.serve(listener, shutdown).await
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

/// Accepted plaintext connections, with TCP_NODELAY set: tonic sets it only
/// on listeners it binds itself, and without it a reply written in two
/// parts waits ~40 ms for the peer's delayed ACK (Nagle). Each is
/// [`Coalesced`]: one write per HTTP/2 flush. Accept errors (out
/// of file descriptors) are logged and retried after a pause instead of
/// ending the server.
fn plain_incoming(
    listener: TcpListener,
    cancel: CancellationToken,
) -> ReceiverStream<std::io::Result<Coalesced<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = cancel.cancelled() => return,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    if tx.send(Ok(Coalesced::new(tcp))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Periodic clean-up of per-caller state.
async fn housekeeping(limiter: Arc<Limiter>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => limiter.housekeeping(),
            () = cancel.cancelled() => return,
        }
    }
}

/// The admin listener: `GET /metrics` in the Prometheus text format.
async fn serve_admin(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(%err, "metrics listener failed");
    }
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
fn cors(origins: &[String]) -> Result<CorsLayer, Error> {
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

/// `POST /v1/disconnect`: the body is a session token (text/plain, what
/// `navigator.sendBeacon(url, token)` sends). 204 when the session is ended
/// or was already gone; 400 for a token this server did not issue; 413 for a
/// body over 4 KiB.
async fn beacon(
    State(api): State<PresenceApi<Memory>>,
    Extension(connect): Extension<PeerInfo>,
    body: String,
) -> Response {
    let result = match api.check_peer_rate(connect.0) {
        Ok(()) => api.disconnect_token(body.trim()).await,
        Err(status) => Err(status),
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::BAD_REQUEST,
            };
            (code, status.message().to_owned()).into_response()
        }
    }
}
