//! presenced: a real-time user presence service.
//!
//! Modules, one concern each:
//! - [`presence`]: the engine (rooms, sessions, deadlines, snapshots) behind
//!   the [`presence::Store`] boundary; no tonic, prost or HTTP types.
//! - [`token`]: signed room and session capability tokens.
//! - [`grpc`]: the `presence.v1` service, conversions and status mapping.
//! - [`server`]: transport assembly (gRPC, grpc-web, CORS, health,
//!   reflection, beacon route) and ordered shutdown; [`serve`] is the one
//!   entry point for `main` and the tests.
//! - [`config`]: flags, environment and the TOML file, with precedence.
//! - [`metrics`]: Prometheus metrics for the admin listener.
//! - [`telemetry`]: the per-call span, log line and metrics layer.

pub mod auth;
pub mod coalesce;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod presence;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use config::Config;
pub use server::{serve, App};
