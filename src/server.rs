//! Runs a presence server: the store the configuration names, the one port
//! (see `router.rs`: gRPC, grpc-web with CORS, health, reflection, the
//! beacon), the admin listener (`admin.rs`), the background tasks, and the
//! ordered shutdown.
//!
//! [`App::new`] opens the store (restoring `--data-dir`, or connecting to
//! Redis) so tests and metrics can hold a handle before it serves;
//! [`App::serve`] runs until its shutdown future resolves. [`serve`] is
//! both in one call: the entry point of `main` and the tests.

mod admin;
mod beacon;
mod listener;
mod router;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::auth::quota::Quotas;
use crate::auth::{jwt, Authenticator};
use crate::coalesce::Coalesced;
use crate::config::Config;
use crate::grpc::PresenceApi;
use crate::metrics::Metrics;
use crate::presence::{persist, AnyStore, Health, Memory, Redis, RedisConfig, Store, SystemClock};
use crate::telemetry::TelemetryLayer;
use crate::tls;
use crate::token;

pub use beacon::MAX_BEACON_BYTES;
pub use router::{PresenceService, MAX_HEADER_LIST_BYTES};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent or unsafe (exit code 2).
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

impl Error {
    /// True when the configuration is at fault (as opposed to the machine).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_) | Error::Persist(_))
    }
}

/// A presence server ready to run: its store is open, so tests (and
/// metrics) can hold a handle to it before it serves.
pub struct App {
    config: Config,
    store: AnyStore,
    tokens: token::Signer,
    metrics: Metrics,
    admin: Option<TcpListener>,
}

impl App {
    /// Opens the store described by `config` (restoring `--data-dir`).
    pub async fn new(config: Config) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let store = open_store(&config)?;
        let tokens = token_codec(&config, &store).await;
        let metrics = Metrics::new(store.clone());
        Ok(Self {
            config,
            store,
            tokens,
            metrics,
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
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down in
    /// order: health NOT_SERVING, watch streams end with UNAVAILABLE, stop
    /// accepting, wait for connections to finish (within `shutdown_grace`),
    /// stop the store's background work (a final state write).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let addr = listener.local_addr()?;
        let config = self.config;
        config.check_bind(addr).map_err(Error::Config)?;
        log_auth_mode(&config, addr);
        let phases = Phases::default();
        let callers = Callers::new(&config, &phases).await?;
        let tls = tls_acceptor(&config)?;
        let tasks = Tasks::spawn(
            &config,
            &self.store,
            &self.metrics,
            self.admin,
            &callers,
            &phases,
        )
        .await?;

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, &Health::Serving).await;
        let follow = tokio::spawn(follow_health(
            self.store.clone(),
            health.clone(),
            phases.streams_end.clone(),
        ));
        let telemetry = TelemetryLayer::new(self.metrics.rpc.clone(), phases.streams_end.clone());
        let api = PresenceApi::new(
            self.store.clone(),
            self.tokens,
            callers.auth,
            callers.quotas,
            phases.streams_end.clone(),
        );
        let server = router::build(&config, api, health_service, telemetry)?;
        let mut running = run(server, listener, tls, phases.stop_accepting.clone());
        info!(%addr, store = %self.store.describe(), "presenced listening (gRPC, grpc-web, health, reflection, POST /v1/disconnect)");

        let failed = tokio::select! {
            result = &mut running => Some(result),
            () = shutdown => None,
        };
        if failed.is_none() {
            info!("shutting down");
        }
        // Health first, so load balancers stop sending calls here.
        follow.abort();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<PresenceService>().await;
        phases.streams_end.cancel();
        phases.stop_accepting.cancel();
        let result = match failed {
            Some(result) => result,
            None => {
                match tokio::time::timeout(config.connections.shutdown_grace, &mut running).await {
                    Ok(result) => result,
                    Err(_) => {
                        warn!(
                            grace = %humantime::format_duration(config.connections.shutdown_grace),
                            "connections still open after the shutdown grace period; closing them"
                        );
                        Ok(())
                    }
                }
            }
        };
        drop(running);
        tasks.stop(&phases).await;
        info!("stopped");
        result.map_err(Error::from)
    }
}

/// Serves `config` on `listener` until `shutdown` resolves: the one entry
/// point of `main` and the tests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    App::new(config).await?.serve(listener, shutdown).await
}

/// The store `--store` names.
fn open_store(config: &Config) -> Result<AnyStore, Error> {
    if let Some(target) = config.redis_target().map_err(Error::Config)? {
        let redis = Redis::new(RedisConfig {
            key_prefix: config.store.key_prefix.clone(),
            timeout: config.store.timeout.into(),
            resync_interval: config.store.resync_interval.into(),
            ..RedisConfig::new(target, config.limits())
        })
        .map_err(Error::Config)?;
        return Ok(AnyStore::Redis(redis));
    }
    let memory = Memory::new(config.limits(), Arc::new(SystemClock));
    let memory = match &config.persistence.data_dir {
        Some(dir) => {
            memory
                .with_data_dir(dir, config.persistence.persist_interval)?
                .0
        }
        None => memory,
    };
    Ok(AnyStore::Memory(memory))
}

/// Signs and verifies capability tokens: the configured keys; else, with
/// a shared store, one key every instance shares through it (waiting for
/// the store until it answers); else a key of this process.
async fn token_codec(config: &Config, store: &AnyStore) -> token::Signer {
    let room_ttl = (!config.tokens.room_ttl.is_zero()).then_some(config.tokens.room_ttl);
    if !config.tokens.keys.is_empty() {
        return token::Signer::new(&config.tokens.keys, room_ttl);
    }
    let Some(redis) = store.redis() else {
        info!("no --token-key: tokens are signed with a random key and end with this process");
        return token::Signer::random(room_ttl);
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match redis.shared_token_key().await {
            Ok(key) => {
                warn!(
                    store = %redis.describe(),
                    "no --token-key: tokens are signed with a key generated once and shared by every \
                     instance through the store; set --token-key to choose and rotate it"
                );
                return token::Signer::new(&[key], room_ttl);
            }
            Err(err) => {
                warn!(%err, "waiting for the store to share the token key");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn log_auth_mode(config: &Config, addr: SocketAddr) {
    if config.auth_enabled() {
        info!(%addr, jwt = config.auth.jwt.enabled(), service_keys = config.auth.service_keys.len(), mtls = config.tls.client_ca.is_some(), "authentication is on");
    } else if !addr.ip().is_loopback() {
        warn!(%addr, "authentication is off on a non-loopback address: anyone who can reach it may act as any user");
    } else {
        warn!(%addr, "authentication is off (loopback only)");
    }
}

fn tls_acceptor(config: &Config) -> Result<Option<tls::Acceptor>, Error> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let acceptor = tls::Acceptor::new(&tls::Config {
        cert: cert.into(),
        key: key.into(),
        client_ca: config.tls.client_ca.as_ref().map(Into::into),
        client_auth_required: config.tls.client_auth_required,
        reload_interval: config.tls.reload_interval,
        max_handshakes: config.tls.max_handshakes,
    })
    .map_err(Error::Config)?;
    Ok(Some(acceptor))
}

/// The points of the ordered shutdown, as tokens cancelled in turn.
#[derive(Default)]
struct Phases {
    /// Watch streams end with UNAVAILABLE; per-call housekeeping stops.
    streams_end: CancellationToken,
    /// No new connections.
    stop_accepting: CancellationToken,
    /// Connections are done: the store finishes its background work.
    store_stop: CancellationToken,
}

/// Who may call: authentication and per-caller limits.
struct Callers {
    auth: Arc<Authenticator>,
    quotas: Arc<Quotas>,
}

impl Callers {
    async fn new(config: &Config, phases: &Phases) -> Result<Self, Error> {
        let jwt = if config.auth.jwt.enabled() {
            let verifier = jwt::Verifier::new(config.auth.jwt.clone())
                .await
                .map_err(Error::Config)?;
            verifier.spawn_refresh(phases.streams_end.clone());
            Some(verifier)
        } else {
            None
        };
        let auth = Arc::new(Authenticator::new(
            jwt,
            config.auth.service_keys.clone(),
            config.tls.client_ca.is_some(),
        ));
        let quotas = Arc::new(Quotas::new(config.limits.callers));
        Ok(Self { auth, quotas })
    }
}

/// The background tasks of a serving server.
struct Tasks {
    store: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
}

impl Tasks {
    async fn spawn(
        config: &Config,
        store: &AnyStore,
        metrics: &Metrics,
        admin: Option<TcpListener>,
        callers: &Callers,
        phases: &Phases,
    ) -> Result<Self, Error> {
        let admin = match (admin, config.observability.metrics_listen) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Admin { addr, source })?,
            ),
            (None, None) => None,
        };
        let admin = match admin {
            Some(listener) => {
                let admin_addr = listener.local_addr()?;
                info!(addr = %admin_addr, "metrics on http://{admin_addr}/metrics, health on /healthz and /readyz");
                Some(tokio::spawn(admin::serve(
                    listener,
                    metrics.clone(),
                    store.clone(),
                    phases.streams_end.clone(),
                    phases.stop_accepting.clone(),
                )))
            }
            None => None,
        };
        tokio::spawn(housekeeping(
            callers.quotas.clone(),
            phases.streams_end.clone(),
        ));
        Ok(Self {
            store: tokio::spawn(store.run(phases.store_stop.clone())),
            admin,
        })
    }

    /// Stops the store's work (its final state write) and the admin
    /// listener, each within a bound.
    async fn stop(self, phases: &Phases) {
        phases.store_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(30), self.store)
            .await
            .is_err()
        {
            warn!("the store did not finish its background work within 30 s");
        }
        if let Some(task) = self.admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

/// The HTTP/2 server on `listener` (through `tls` when set) until
/// `stop_accepting`.
fn run(
    server: router::Routed,
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    stop_accepting: CancellationToken,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> {
    let stop = stop_accepting.clone().cancelled_owned();
    match tls {
        Some(acceptor) => Box::pin(
            server.serve_with_incoming_shutdown(
                acceptor
                    .incoming(listener, stop_accepting)
                    .map(|conn| conn.map(Coalesced::new)),
                stop,
            ),
        ),
        None => Box::pin(
            server.serve_with_incoming_shutdown(listener::plain(listener, stop_accepting), stop),
        ),
    }
}

/// Keeps gRPC health in step with the store's until `stop`.
async fn follow_health(store: AnyStore, health: HealthReporter, stop: CancellationToken) {
    let mut last = Health::Serving;
    loop {
        let now = store.health();
        if now != last {
            match &now {
                Health::Serving => {
                    info!(store = %store.describe(), "store reachable again: SERVING")
                }
                Health::Unavailable(why) => {
                    warn!(store = %store.describe(), reason = %why, "store unreachable: NOT_SERVING")
                }
            }
            set_health(&health, &now).await;
            last = now;
        }
        tokio::select! {
            () = store.health_changed() => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn set_health(health: &HealthReporter, state: &Health) {
    let status = match state {
        Health::Serving => ServingStatus::Serving,
        Health::Unavailable(_) => ServingStatus::NotServing,
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <PresenceService as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Periodic clean-up of per-caller state.
async fn housekeeping(quotas: Arc<Quotas>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => quotas.housekeeping(),
            () = cancel.cancelled() => return,
        }
    }
}
