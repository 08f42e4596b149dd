//! Command-line and environment configuration. Every flag has an env
//! fallback (`PRESENCE_*`); durations are humantime (`1s`, `10m`, `24h`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::presence::{self, Limits};

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// presenced: real-time user presence over gRPC, grpc-web and grpcurl.
#[derive(Debug, Clone, Parser)]
#[command(name = "presenced", version, about, long_about = None)]
pub struct Config {
    /// Address for gRPC, grpc-web, health, reflection and the beacon route.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Allow a non-loopback listen address although authentication is off
    /// (anyone who reaches the port can act for any user).
    #[arg(long, env = "PRESENCE_ALLOW_UNAUTHENTICATED_PUBLIC")]
    pub allow_unauthenticated_public: bool,

    /// Secret (at least 32 bytes) signing room and session tokens. Set it to
    /// keep tokens valid across restarts and on every instance sharing it;
    /// unset, a random key is made at start.
    #[arg(long, env = "PRESENCE_TOKEN_KEY", hide_env_values = true)]
    pub token_key: Option<String>,

    /// Origins allowed to call from a browser (comma-separated), or `*`.
    #[arg(
        long,
        env = "PRESENCE_CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_allowed_origins: Vec<String>,

    /// How long an offline user stays listed.
    #[arg(long, env = "PRESENCE_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// Longest room, user or session id, in bytes.
    #[arg(long, env = "PRESENCE_MAX_ID_BYTES", default_value_t = presence::DEFAULT_MAX_ID_BYTES)]
    pub max_id_bytes: usize,

    /// Largest per-user data, in bytes of compact JSON.
    #[arg(long, env = "PRESENCE_MAX_DATA_BYTES", default_value_t = presence::DEFAULT_MAX_DATA_BYTES)]
    pub max_data_bytes: usize,

    /// Shortest accepted heartbeat interval.
    #[arg(long, env = "PRESENCE_MIN_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub min_interval: Duration,

    /// Longest accepted heartbeat interval.
    #[arg(long, env = "PRESENCE_MAX_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_interval: Duration,

    /// Users in a listing when the caller asks for 0.
    #[arg(long, env = "PRESENCE_DEFAULT_LIST_LIMIT", default_value_t = presence::DEFAULT_LIST_LIMIT)]
    pub default_list_limit: u32,

    /// Cap on users (or rooms) in one listing.
    #[arg(long, env = "PRESENCE_MAX_LIST_LIMIT", default_value_t = presence::DEFAULT_MAX_LIST_LIMIT)]
    pub max_list_limit: u32,

    /// Minimum time between two snapshots of one room; changes within it are
    /// coalesced into one.
    #[arg(long, env = "PRESENCE_SNAPSHOT_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,

    /// Live sessions one user may hold in one room.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER_ROOM", default_value_t = presence::DEFAULT_MAX_SESSIONS_PER_USER_ROOM)]
    pub max_sessions_per_user_room: usize,

    /// Concurrent HTTP/2 streams (calls, watches) per connection.
    #[arg(
        long,
        env = "PRESENCE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_streams_per_connection: u32,

    /// Largest request message, in bytes.
    #[arg(long, env = "PRESENCE_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// HTTP/2 keepalive ping interval; a peer that does not answer within
    /// the timeout is dropped with its streams.
    #[arg(long, env = "PRESENCE_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// How long to wait for a keepalive ping's answer.
    #[arg(long, env = "PRESENCE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// At shutdown, how long open connections get to finish.
    #[arg(long, env = "PRESENCE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// The configuration `presenced` gets with no flags (the `PRESENCE_*`
    /// environment still applies), for tests and embedding.
    pub fn defaults() -> Self {
        Self::parse_from(["presenced"])
    }

    /// The engine's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_id_bytes: self.max_id_bytes,
            max_data_bytes: self.max_data_bytes,
            min_interval: self.min_interval,
            max_interval: self.max_interval,
            default_list_limit: self.default_list_limit,
            max_list_limit: self.max_list_limit,
            retention: self.retention,
            snapshot_interval: self.snapshot_interval,
            max_sessions_per_user_room: self.max_sessions_per_user_room,
        }
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_interval.is_zero() || self.min_interval > self.max_interval {
            return Err(format!(
                "--min-interval ({}) must be positive and at most --max-interval ({})",
                humantime::format_duration(self.min_interval),
                humantime::format_duration(self.max_interval)
            ));
        }
        if self.default_list_limit == 0 || self.default_list_limit > self.max_list_limit {
            return Err(format!(
                "--default-list-limit ({}) must be from 1 to --max-list-limit ({})",
                self.default_list_limit, self.max_list_limit
            ));
        }
        if self.max_id_bytes == 0 || self.max_id_bytes > 4096 {
            return Err(format!(
                "--max-id-bytes ({}) must be from 1 to 4096",
                self.max_id_bytes
            ));
        }
        if let Some(key) = &self.token_key {
            if key.len() < crate::token::MIN_KEY_BYTES {
                return Err(format!(
                    "--token-key is {} bytes, it must be at least {}",
                    key.len(),
                    crate::token::MIN_KEY_BYTES
                ));
            }
        }
        if self.cors_allowed_origins.is_empty() {
            return Err("--cors-allowed-origins must list at least one origin, or *".into());
        }
        Ok(())
    }
}
