//! Configuration: every setting is a flag, an environment variable and a
//! key of an optional TOML file.
//!
//! Precedence, highest first: command-line flag, environment variable
//! (`PRESENCE_*`, and `RUST_LOG` for the log filter), the file named by
//! `--config` / `PRESENCE_CONFIG`, the built-in default. A file key is the
//! flag's long name with `_` for `-` (`keepalive_interval = "30s"`).
//! Durations are humantime (`500ms`, `10s`, `24h`). Values that do not parse,
//! unknown file keys and inconsistent combinations stop the start with a
//! message naming the key.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::presence::{self, Limits};

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// HTTP/1.1 (grpc-web, beacon) connections must send a request's headers
/// within this time. Fixed: hyper's default, which tonic enforces.
pub const HTTP1_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags that exist only on the command line (not in the file).
const NOT_IN_FILE: &[&str] = &["config", "check-config", "help", "version"];

const AFTER_HELP: &str = "\
Every option is also an environment variable (shown) and a key of the \
--config TOML file: the long name with '_' for '-', e.g. keepalive_interval = \"30s\". \
Precedence: flag, then environment, then file, then default. \
Durations: 500ms, 10s, 5m, 24h.";

/// How a room's coalescing window is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CoalescingMode {
    /// By the cost of the room's fan-out, up to --snapshot-interval.
    Adaptive,
    /// Always --snapshot-interval.
    Fixed,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// presenced: real-time user presence over gRPC, grpc-web and grpcurl.
#[derive(Debug, Clone, Parser)]
#[command(name = "presenced", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Config {
    /// TOML file with settings (keys as in --help, '_' for '-'); flags and
    /// environment variables override it.
    #[arg(long, env = "PRESENCE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration, each value with where it came
    /// from, and exit (0 if it is valid, 2 if a start would refuse it).
    #[arg(long)]
    pub check_config: bool,

    /// Address for gRPC, grpc-web, health, reflection and the beacon route.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Allow a non-loopback listen address although authentication is off
    /// (anyone who reaches the port can act for any user).
    #[arg(long, env = "PRESENCE_ALLOW_UNAUTHENTICATED_PUBLIC")]
    pub allow_unauthenticated_public: bool,

    /// Origins allowed to call from a browser (comma-separated), or `*`.
    #[arg(
        long,
        env = "PRESENCE_CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Where presence state lives.
    #[command(flatten)]
    pub store: StoreConfig,

    /// Capability tokens.
    #[command(flatten)]
    pub tokens: TokenConfig,

    /// Who may call.
    #[command(flatten)]
    pub auth: AuthConfig,

    /// TLS and mTLS.
    #[command(flatten)]
    pub tls: TlsConfig,

    /// What presence means here: retention, intervals, listings, snapshots.
    #[command(flatten)]
    pub presence: PresenceConfig,

    /// Bounds on input, stored state and callers.
    #[command(flatten)]
    pub limits: LimitConfig,

    /// HTTP/2 connections and shutdown.
    #[command(flatten)]
    pub connections: ConnectionConfig,

    /// Logs and metrics.
    #[command(flatten)]
    pub observability: ObservabilityConfig,

    /// The memory store's state file.
    #[command(flatten)]
    pub persistence: PersistenceConfig,

    /// Where each value came from, filled by [`Config::load_from`].
    #[arg(skip)]
    pub origins: Vec<Setting>,
}

/// `--store` and the Redis store's settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Store")]
pub struct StoreConfig {
    /// Where presence state lives: `memory` (this process only), or Redis
    /// shared by every instance: `redis://[user:pass@]host:port[/db]`,
    /// `rediss://…` (TLS), `redis+cluster://host:port,host:port` (a Cluster,
    /// given any of its nodes), `rediss+cluster://…`.
    #[arg(
        id = "store",
        long = "store",
        env = "PRESENCE_STORE",
        default_value = "memory",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: String,

    /// Prefix of every Redis key, so several deployments can share one
    /// Redis.
    #[arg(id = "store_key_prefix", value_name = "STORE_KEY_PREFIX", long = "store-key-prefix", env = "PRESENCE_STORE_KEY_PREFIX", default_value = presence::redis::DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,

    /// Bound on one call to Redis: past it the RPC fails with UNAVAILABLE.
    #[arg(id = "store_timeout", value_name = "STORE_TIMEOUT", long = "store-timeout", env = "PRESENCE_STORE_TIMEOUT", default_value_t = presence::redis::DEFAULT_TIMEOUT.into())]
    pub timeout: humantime::Duration,

    /// How often every watched room's version is checked against Redis, so
    /// a lost notification delays a watcher at most this much.
    #[arg(id = "store_resync_interval", value_name = "STORE_RESYNC_INTERVAL", long = "store-resync-interval", env = "PRESENCE_STORE_RESYNC_INTERVAL", default_value_t = presence::redis::DEFAULT_RESYNC_INTERVAL.into())]
    pub resync_interval: humantime::Duration,
}

/// Capability tokens.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Tokens")]
pub struct TokenConfig {
    /// Secrets (each at least 32 bytes) for room and session tokens,
    /// comma-separated or repeated: the first signs, all verify, so a key can
    /// be rotated by putting the new one first and removing the old one
    /// later. Set it to keep tokens valid across restarts and on every
    /// instance sharing it; unset, a random key is made at start (with the
    /// Redis store: one key made once and shared through Redis).
    #[arg(
        id = "token_keys",
        value_name = "TOKEN_KEYS",
        long = "token-key",
        env = "PRESENCE_TOKEN_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub keys: Vec<Secret>,

    /// Lifetime of room tokens (heartbeats hand out fresh ones); `0s` = never
    /// expire.
    #[arg(id = "room_token_ttl", value_name = "ROOM_TOKEN_TTL", long = "room-token-ttl", env = "PRESENCE_ROOM_TOKEN_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub room_ttl: Duration,
}

/// End-user JWTs and service keys.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthConfig {
    /// Where end-user JWT keys come from and what JWTs must say.
    #[command(flatten)]
    pub jwt: crate::auth::jwt::JwtConfig,

    /// Service keys as `NAME=SHA256HEX` (the SHA-256 of the secret the service
    /// sends as `authorization: Bearer <secret>`); comma-separated or repeated.
    #[arg(
        id = "service_keys",
        value_name = "SERVICE_KEYS",
        long = "service-key",
        env = "PRESENCE_SERVICE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub service_keys: Vec<crate::auth::ServiceKey>,
}

/// TLS on the port, and client certificates.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsConfig {
    /// TLS certificate chain (PEM). With --tls-key, the port speaks TLS only;
    /// both files are reloaded when they change.
    #[arg(
        id = "tls_cert",
        value_name = "TLS_CERT",
        long = "tls-cert",
        env = "PRESENCE_TLS_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<String>,

    /// TLS private key (PEM).
    #[arg(
        id = "tls_key",
        value_name = "TLS_KEY",
        long = "tls-key",
        env = "PRESENCE_TLS_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<String>,

    /// CA certificates (PEM) that verify client certificates; a client with a
    /// verified certificate is a service (mTLS).
    #[arg(
        id = "tls_client_ca",
        value_name = "TLS_CLIENT_CA",
        long = "tls-client-ca",
        env = "PRESENCE_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub client_ca: Option<String>,

    /// Refuse TLS clients without a verified certificate (with
    /// --tls-client-ca); otherwise the certificate is optional.
    #[arg(
        id = "tls_client_auth_required",
        value_name = "TLS_CLIENT_AUTH_REQUIRED",
        long = "tls-client-auth-required",
        env = "PRESENCE_TLS_CLIENT_AUTH_REQUIRED",
        requires = "tls_client_ca"
    )]
    pub client_auth_required: bool,

    /// TLS handshakes in progress at most (each has 10 s); a connection
    /// that arrives past it is closed at once, so a flood of slow handshakes
    /// cannot grow the server without bound.
    #[arg(
        id = "max_tls_handshakes",
        value_name = "MAX_TLS_HANDSHAKES",
        long = "max-tls-handshakes",
        env = "PRESENCE_MAX_TLS_HANDSHAKES",
        default_value_t = 1024
    )]
    pub max_handshakes: usize,

    /// How often the TLS files are checked for changes.
    #[arg(id = "tls_reload_interval", value_name = "TLS_RELOAD_INTERVAL", long = "tls-reload-interval", env = "PRESENCE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
}

/// What presence means on this deployment.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Presence")]
pub struct PresenceConfig {
    /// How long an offline user stays listed.
    #[arg(long, env = "PRESENCE_RETENTION", default_value_t = presence::DEFAULT_RETENTION.into())]
    pub retention: humantime::Duration,

    /// Shortest accepted heartbeat interval.
    #[arg(long, env = "PRESENCE_MIN_INTERVAL", default_value_t = presence::DEFAULT_MIN_INTERVAL.into())]
    pub min_interval: humantime::Duration,

    /// Longest accepted heartbeat interval.
    #[arg(long, env = "PRESENCE_MAX_INTERVAL", default_value_t = presence::DEFAULT_MAX_INTERVAL.into())]
    pub max_interval: humantime::Duration,

    /// Users in a listing when the caller asks for 0.
    #[arg(long, env = "PRESENCE_DEFAULT_LIST_LIMIT", default_value_t = presence::DEFAULT_LIST_LIMIT)]
    pub default_list_limit: u32,

    /// Cap on users (or rooms) in one listing.
    #[arg(long, env = "PRESENCE_MAX_LIST_LIMIT", default_value_t = presence::DEFAULT_MAX_LIST_LIMIT)]
    pub max_list_limit: u32,

    /// The longest coalescing window of a room: at most one snapshot per
    /// window, changes within it folded into one (see --coalescing).
    #[arg(long, env = "PRESENCE_SNAPSHOT_INTERVAL", default_value_t = presence::DEFAULT_SNAPSHOT_INTERVAL.into())]
    pub snapshot_interval: humantime::Duration,

    /// How a room's coalescing window is chosen: `adaptive` (twice the
    /// estimated CPU of its fan-out, so a small room publishes at once; at
    /// most --snapshot-interval) or `fixed` (always --snapshot-interval).
    #[arg(long, env = "PRESENCE_COALESCING", value_enum, default_value_t = CoalescingMode::Adaptive)]
    pub coalescing: CoalescingMode,
}

/// Bounds on input, stored state and callers.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitConfig {
    /// Longest room, user or session id, in bytes.
    #[arg(long, env = "PRESENCE_MAX_ID_BYTES", default_value_t = presence::DEFAULT_MAX_ID_BYTES)]
    pub max_id_bytes: usize,

    /// Largest per-user data, in bytes of compact JSON.
    #[arg(long, env = "PRESENCE_MAX_DATA_BYTES", default_value_t = presence::DEFAULT_MAX_DATA_BYTES)]
    pub max_data_bytes: usize,

    /// Largest request message, in bytes; a bigger one is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "PRESENCE_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// Live sessions one user may hold in one room.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER_ROOM", default_value_t = presence::DEFAULT_MAX_SESSIONS_PER_USER_ROOM)]
    pub max_sessions_per_user_room: usize,

    /// Live sessions of one user across all rooms.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER", default_value_t = presence::DEFAULT_MAX_SESSIONS_PER_USER)]
    pub max_sessions_per_user: usize,

    /// Rooms one user may be listed in.
    #[arg(long, env = "PRESENCE_MAX_ROOMS_PER_USER", default_value_t = presence::DEFAULT_MAX_ROOMS_PER_USER)]
    pub max_rooms_per_user: usize,

    /// Live sessions in all.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS", default_value_t = presence::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,

    /// Rooms with users in all, so made-up room ids cannot exhaust memory;
    /// also the rooms one instance may have watched.
    #[arg(long, env = "PRESENCE_MAX_ROOMS", default_value_t = presence::DEFAULT_MAX_ROOMS)]
    pub max_rooms: usize,

    /// Request rates and watch streams per caller.
    #[command(flatten)]
    pub callers: crate::auth::quota::Config,
}

/// HTTP/2 connections and shutdown.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connections")]
pub struct ConnectionConfig {
    /// Concurrent HTTP/2 streams (calls, watches) per connection.
    #[arg(
        long,
        env = "PRESENCE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_streams_per_connection: u32,

    /// HTTP/2 keepalive ping interval; a peer that does not answer within
    /// the timeout is dropped with its streams.
    #[arg(long, env = "PRESENCE_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// How long to wait for a keepalive ping's answer.
    #[arg(long, env = "PRESENCE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// Close connections older than this (HTTP/2 GOAWAY, then the grace
    /// period) so load balancers can rebalance long-lived watch streams;
    /// clients reconnect and resume. Unset: connections live on.
    #[arg(long, env = "PRESENCE_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,

    /// After --max-connection-age, how long open calls and watch streams get
    /// before the connection is closed under them.
    #[arg(long, env = "PRESENCE_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// At shutdown, how long open connections get to finish.
    #[arg(long, env = "PRESENCE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Logs and metrics.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Observability")]
pub struct ObservabilityConfig {
    /// Log filter, `RUST_LOG` syntax (`info`, `presenced=debug,info`;
    /// `presenced::rpc=debug` logs every call).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// Log line format, to stderr.
    #[arg(long, env = "PRESENCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the admin listener serving Prometheus metrics on
    /// `GET /metrics`, and `GET /healthz` and `GET /readyz` (e.g.
    /// 127.0.0.1:9464). Unset: no admin listener.
    #[arg(long, env = "PRESENCE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The memory store's state file.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Persistence")]
pub struct PersistenceConfig {
    /// Directory where the memory store keeps its state across restarts
    /// (written periodically and at shutdown, read at start; one process
    /// per directory). Unset: state lives in memory only.
    #[arg(long, env = "PRESENCE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// How often the state is written to --data-dir (a kill -9 loses at
    /// most this much).
    #[arg(long, env = "PRESENCE_PERSIST_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub persist_interval: Duration,
}

/// A configured secret: usable as bytes, never shown by `Debug`, so a
/// logged `Config` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Secret {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One effective setting, for `--check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The file key (the flag's long name with `_`).
    pub key: String,
    /// The value, as given (secrets redacted).
    pub value: Option<String>,
    /// `flag`, `env NAME`, `file`, `default` or `unset`.
    pub source: String,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags or environment did not parse (also `--help` and `--version`,
    /// which clap reports as errors that print and exit 0).
    #[error("{0}")]
    Args(#[from] clap::Error),
    /// The configuration file is unreadable or has a bad entry.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Values that parse but make no sense (together).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The configuration `presenced` gets with no flags (the `PRESENCE_*`
    /// environment still applies), for tests and embedding.
    pub fn defaults() -> Self {
        Self::parse_from(["presenced"])
    }

    /// Flags from the process arguments, environment and the `--config`
    /// file, validated.
    pub fn load() -> Result<Self, Error> {
        Self::load_from(std::env::args_os())
    }

    /// Like [`Config::load`] with the given arguments (the first is the
    /// program name).
    pub fn load_from<I, T>(args: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cmd = Self::command();
        let first = cmd.clone().try_get_matches_from(&args)?;
        let mut from_file = Vec::new();
        if let Some(path) = first.get_one::<PathBuf>("config") {
            let shown = path.display().to_string();
            let file_error = |message: String| Error::File {
                path: shown.clone(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
            for (raw_key, value) in table {
                let key = raw_key.replace('-', "_");
                let arg = cmd
                    .get_arguments()
                    .find(|a| file_key(a).is_some_and(|k| k == key))
                    .ok_or_else(|| file_error(format!("unknown key `{raw_key}`")))?;
                let id = arg.get_id().as_str();
                let long = arg.get_long().expect("every setting is a long flag");
                let values = file_values(&value, arg.get_action().takes_values())
                    .map_err(|m| file_error(format!("`{raw_key}` {m}")))?;
                // Check the entry on its own, so its error names the file key.
                let mut single = vec![OsString::from("presenced")];
                single.extend(values.iter().map(|v| flag_arg(long, v)));
                match cmd.clone().try_get_matches_from(&single) {
                    // Relations between settings are checked on the whole.
                    Err(err) if err.kind() != clap::error::ErrorKind::MissingRequiredArgument => {
                        return Err(file_error(format!("`{raw_key}`: {}", first_line(&err))));
                    }
                    _ => {}
                }
                if matches!(
                    first.value_source(id),
                    Some(ValueSource::DefaultValue) | None
                ) {
                    from_file.push(id.to_owned());
                    args.extend(values.iter().map(|v| flag_arg(long, v)));
                }
            }
        }
        let matches = cmd.clone().try_get_matches_from(&args)?;
        let mut config = Self::from_arg_matches(&matches)?;
        config.origins = cmd
            .get_arguments()
            .filter_map(|arg| Some((arg, file_key(arg)?)))
            .map(|(arg, key)| {
                let id = arg.get_id().as_str();
                let secret = arg.is_hide_env_values_set();
                let value = matches.get_raw(id).map(|values| {
                    if id == "store" {
                        // Shown, but never its password.
                        values
                            .map(|v| crate::presence::redis::redact_url(&v.to_string_lossy()))
                            .collect::<Vec<_>>()
                            .join(",")
                    } else if secret {
                        "<redacted>".to_owned()
                    } else {
                        values
                            .map(|v| v.to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                });
                let source = match matches.value_source(id) {
                    _ if from_file.iter().any(|k| k == id) => "file".to_owned(),
                    Some(ValueSource::CommandLine) => "flag".to_owned(),
                    Some(ValueSource::EnvVariable) => format!(
                        "env {}",
                        arg.get_env()
                            .map_or(String::new(), |e| e.to_string_lossy().into_owned())
                    ),
                    Some(ValueSource::DefaultValue) => "default".to_owned(),
                    _ => "unset".to_owned(),
                };
                Setting { key, value, source }
            })
            .collect();
        config.validate().map_err(Error::Invalid)?;
        Ok(config)
    }

    /// The effective configuration as TOML, each line commented with its
    /// source (secrets redacted).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.origins {
            match &s.value {
                Some(v) => out.push_str(&format!(
                    "{:<48} # {}\n",
                    format!("{} = {v:?}", s.key),
                    s.source
                )),
                None => out.push_str(&format!("# {} (unset)\n", s.key)),
            }
        }
        out
    }

    /// The Redis store `--store` names, if it names one.
    pub fn redis_target(&self) -> Result<Option<crate::presence::redis::Target>, String> {
        if self.store.url == "memory" {
            return Ok(None);
        }
        crate::presence::redis::Target::parse(&self.store.url)
            .map(Some)
            .map_err(|e| format!("--store: {e}"))
    }

    /// The engine's limits.
    pub fn limits(&self) -> Limits {
        let (p, l) = (&self.presence, &self.limits);
        Limits {
            max_id_bytes: l.max_id_bytes,
            max_data_bytes: l.max_data_bytes,
            min_interval: p.min_interval.into(),
            max_interval: p.max_interval.into(),
            default_list_limit: p.default_list_limit,
            max_list_limit: p.max_list_limit,
            retention: p.retention.into(),
            snapshot_interval: p.snapshot_interval.into(),
            coalescing: match p.coalescing {
                CoalescingMode::Adaptive => presence::Coalescing::Adaptive,
                CoalescingMode::Fixed => presence::Coalescing::Fixed,
            },
            max_sessions_per_user_room: l.max_sessions_per_user_room,
            max_sessions_per_user: l.max_sessions_per_user,
            max_rooms_per_user: l.max_rooms_per_user,
            max_sessions: l.max_sessions,
            max_rooms: l.max_rooms,
        }
    }

    /// True when callers must authenticate.
    pub fn auth_enabled(&self) -> bool {
        self.auth.jwt.enabled()
            || !self.auth.service_keys.is_empty()
            || self.tls.client_ca.is_some()
    }

    /// Refuses to serve on `addr` without authentication unless it is a
    /// loopback address or `--allow-unauthenticated-public` says so.
    pub fn check_bind(&self, addr: SocketAddr) -> Result<(), String> {
        if self.auth_enabled() || addr.ip().is_loopback() || self.allow_unauthenticated_public {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on non-loopback address {addr} without authentication; \
             configure JWT keys, service keys or mTLS, or pass --allow-unauthenticated-public \
             if anyone who can reach it may act as any user"
        ))
    }

    /// Checks everything a start would refuse, without starting: values
    /// that parse but make no sense (together), the listen address without
    /// authentication, and files and directories that cannot be used. The
    /// same check runs for `--check-config` and at every start.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_values()?;
        self.check_bind(self.listen)?;
        self.check_files()
    }

    /// Files the configuration names must be readable, and `--data-dir`
    /// usable (a directory, or creatable, and writable).
    fn check_files(&self) -> Result<(), String> {
        let readable = [
            (
                "--jwt-hs256-secret-file",
                self.auth.jwt.hs256_secret_file.as_deref(),
            ),
            ("--jwks-file", self.auth.jwt.jwks_file.as_deref()),
            ("--tls-cert", self.tls.cert.as_deref()),
            ("--tls-key", self.tls.key.as_deref()),
            ("--tls-client-ca", self.tls.client_ca.as_deref()),
        ]
        .into_iter()
        .chain(self.auth.jwt.public_key_files.iter().map(|f| {
            (
                "--jwt-public-key-file",
                Some(f.rsplit_once('=').map_or(f.as_str(), |(_, p)| p)),
            )
        }));
        for (flag, path) in readable {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|e| format!("{flag} {path}: {e}"))?;
            }
        }
        if let Some(dir) = &self.persistence.data_dir {
            check_dir_writable(dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense together.
    fn validate_values(&self) -> Result<(), String> {
        if self.presence.min_interval.is_zero()
            || self.presence.min_interval > self.presence.max_interval
        {
            return Err(format!(
                "--min-interval ({}) must be positive and at most --max-interval ({})",
                self.presence.min_interval, self.presence.max_interval
            ));
        }
        if self.presence.default_list_limit == 0
            || self.presence.default_list_limit > self.presence.max_list_limit
        {
            return Err(format!(
                "--default-list-limit ({}) must be from 1 to --max-list-limit ({})",
                self.presence.default_list_limit, self.presence.max_list_limit
            ));
        }
        if self.limits.max_id_bytes == 0 || self.limits.max_id_bytes > 4096 {
            return Err(format!(
                "--max-id-bytes ({}) must be from 1 to 4096",
                self.limits.max_id_bytes
            ));
        }
        for (i, key) in self.tokens.keys.iter().enumerate() {
            if key.len() < crate::token::MIN_KEY_BYTES {
                return Err(format!(
                    "--token-key #{} is {} bytes, it must be at least {}",
                    i + 1,
                    key.len(),
                    crate::token::MIN_KEY_BYTES
                ));
            }
        }
        if self.auth.jwt.enabled()
            && (self.auth.jwt.issuer.is_empty() || self.auth.jwt.audience.is_empty())
        {
            return Err(
                "JWT keys are configured: --jwt-issuer and --jwt-audience are required".into(),
            );
        }
        if self.cors_allowed_origins.is_empty() {
            return Err("--cors-allowed-origins must list at least one origin, or *".into());
        }
        let positive = [
            ("--keepalive-interval", self.connections.keepalive_interval),
            ("--keepalive-timeout", self.connections.keepalive_timeout),
            ("--persist-interval", self.persistence.persist_interval),
        ];
        for (flag, value) in positive {
            if value.is_zero() {
                return Err(format!("{flag} must be positive"));
            }
        }
        if self
            .connections
            .max_connection_age
            .is_some_and(|age| age.is_zero())
        {
            return Err(
                "--max-connection-age must be positive (leave it unset for no limit)".into(),
            );
        }
        if self.connections.max_streams_per_connection == 0 {
            return Err("--max-streams-per-connection must be at least 1".into());
        }
        if self.limits.max_request_bytes < 1024 {
            return Err(format!(
                "--max-request-bytes ({}) must be at least 1024",
                self.limits.max_request_bytes
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.observability.log_filter) {
            return Err(format!(
                "--log-filter ({:?}): {err}",
                self.observability.log_filter
            ));
        }
        if let Some(dir) = &self.persistence.data_dir {
            if dir.as_os_str().is_empty() {
                return Err("--data-dir must not be empty".into());
            }
        }
        if self.redis_target()?.is_some() {
            if self.persistence.data_dir.is_some() {
                return Err(
                    "--data-dir keeps the memory store's state; with --store redis the state is in Redis"
                        .into(),
                );
            }
            if self.store.key_prefix.is_empty() || self.store.key_prefix.contains(['{', '}']) {
                return Err(format!(
                    "--store-key-prefix ({:?}) must be non-empty and free of braces",
                    self.store.key_prefix
                ));
            }
            for (flag, value) in [
                ("--store-timeout", *self.store.timeout),
                ("--store-resync-interval", *self.store.resync_interval),
            ] {
                if value.is_zero() {
                    return Err(format!("{flag} must be positive"));
                }
            }
        }
        Ok(())
    }
}

/// A directory presenced can keep its state in: it exists and takes a new
/// file, or it can be created (its nearest existing ancestor takes one).
fn check_dir_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
    }
    if !existing.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", existing.display()),
        ));
    }
    let probe = existing.join(format!(".presenced-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// The file key of a setting: its long flag name with `_` for `-`; `None`
/// for command-line-only arguments.
fn file_key(arg: &clap::Arg) -> Option<String> {
    let long = arg.get_long()?;
    (!NOT_IN_FILE.contains(&long)).then(|| long.replace('-', "_"))
}

/// A `--long=value` argument.
fn flag_arg(long: &str, value: &Option<String>) -> OsString {
    match value {
        Some(v) => format!("--{long}={v}").into(),
        None => format!("--{long}").into(),
    }
}

/// A file value as flag values: `None` for a set boolean flag (no value).
fn file_values(value: &toml::Value, takes_values: bool) -> Result<Vec<Option<String>>, String> {
    use toml::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("must be a string, a number or a boolean".to_owned()),
    };
    match (value, takes_values) {
        (Value::Boolean(true), false) => Ok(vec![None]),
        (Value::Boolean(false), false) => Ok(vec![]),
        (Value::String(s), false) if s == "true" => Ok(vec![None]),
        (Value::String(s), false) if s == "false" => Ok(vec![]),
        (_, false) => Err("must be true or false".to_owned()),
        (Value::Array(items), true) => items.iter().map(|v| scalar(v).map(Some)).collect(),
        (v, true) => Ok(vec![Some(scalar(v)?)]),
    }
}

fn first_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_owned()
}
