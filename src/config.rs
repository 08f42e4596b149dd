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
    // ---- Configuration source -------------------------------------------
    /// TOML file with settings (keys as in --help, '_' for '-'); flags and
    /// environment variables override it.
    #[arg(long, env = "PRESENCE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration, each value with where it came
    /// from, and exit (0 if it is valid).
    #[arg(long)]
    pub check_config: bool,

    /// Where presence state lives: `memory` (this process only), or Redis
    /// shared by every instance: `redis://[user:pass@]host:port[/db]`,
    /// `rediss://…` (TLS), `redis+cluster://host:port,host:port` (a Cluster,
    /// given any of its nodes), `rediss+cluster://…`.
    #[arg(
        long,
        env = "PRESENCE_STORE",
        default_value = "memory",
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Store"
    )]
    pub store: String,

    /// Prefix of every Redis key, so several deployments can share one
    /// Redis.
    #[arg(long, env = "PRESENCE_STORE_KEY_PREFIX", default_value = crate::presence::redis::DEFAULT_KEY_PREFIX, help_heading = "Store")]
    pub store_key_prefix: String,

    /// Bound on one call to Redis: past it the RPC fails with UNAVAILABLE.
    #[arg(long, env = "PRESENCE_STORE_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration, help_heading = "Store")]
    pub store_timeout: Duration,

    /// How often every watched room's version is checked against Redis, so
    /// a lost notification delays a watcher at most this much.
    #[arg(long, env = "PRESENCE_STORE_RESYNC_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration, help_heading = "Store")]
    pub store_resync_interval: Duration,

    /// Address for gRPC, grpc-web, health, reflection and the beacon route.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Allow a non-loopback listen address although authentication is off
    /// (anyone who reaches the port can act for any user).
    #[arg(long, env = "PRESENCE_ALLOW_UNAUTHENTICATED_PUBLIC")]
    pub allow_unauthenticated_public: bool,

    /// Secrets (each at least 32 bytes) for room and session tokens,
    /// comma-separated or repeated: the first signs, all verify, so a key can
    /// be rotated by putting the new one first and removing the old one
    /// later. Set it to keep tokens valid across restarts and on every
    /// instance sharing it; unset, a random key is made at start.
    #[arg(
        long = "token-key",
        env = "PRESENCE_TOKEN_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_keys: Vec<Secret>,

    /// Lifetime of room tokens (heartbeats hand out fresh ones); `0s` = never
    /// expire.
    #[arg(long, env = "PRESENCE_ROOM_TOKEN_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub room_token_ttl: Duration,

    /// File holding the HS256 secret that signs end-user JWTs.
    #[arg(
        long,
        env = "PRESENCE_JWT_HS256_SECRET_FILE",
        help_heading = "Authentication"
    )]
    pub jwt_hs256_secret_file: Option<String>,

    /// PEM public key files (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA)
    /// verifying end-user JWTs, each `PATH` or `KID=PATH`; comma-separated or
    /// repeated.
    #[arg(
        long,
        env = "PRESENCE_JWT_PUBLIC_KEY_FILES",
        value_delimiter = ',',
        help_heading = "Authentication"
    )]
    pub jwt_public_key_file: Vec<String>,

    /// JWKS document (file) with keys verifying end-user JWTs.
    #[arg(long, env = "PRESENCE_JWKS_FILE", help_heading = "Authentication")]
    pub jwks_file: Option<String>,

    /// JWKS URL with keys verifying end-user JWTs; fetched at start, every
    /// --jwks-refresh, and when a token names an unknown key id.
    #[arg(long, env = "PRESENCE_JWKS_URL", help_heading = "Authentication")]
    pub jwks_url: Option<String>,

    /// How often the JWKS URL is fetched again.
    #[arg(long, env = "PRESENCE_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration, help_heading = "Authentication")]
    pub jwks_refresh: Duration,

    /// Required `iss` of end-user JWTs.
    #[arg(
        long,
        env = "PRESENCE_JWT_ISSUER",
        default_value = "",
        help_heading = "Authentication"
    )]
    pub jwt_issuer: String,

    /// Required `aud` of end-user JWTs.
    #[arg(
        long,
        env = "PRESENCE_JWT_AUDIENCE",
        default_value = "",
        help_heading = "Authentication"
    )]
    pub jwt_audience: String,

    /// Clock skew allowed on a JWT's `exp` and `nbf`.
    #[arg(long, env = "PRESENCE_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Authentication")]
    pub jwt_leeway: Duration,

    /// The JWT claim holding the user id.
    #[arg(
        long,
        env = "PRESENCE_JWT_USER_CLAIM",
        default_value = "sub",
        help_heading = "Authentication"
    )]
    pub jwt_user_claim: String,

    /// Service keys as `NAME=SHA256HEX` (the SHA-256 of the secret the service
    /// sends as `authorization: Bearer <secret>`); comma-separated or repeated.
    #[arg(
        long = "service-key",
        env = "PRESENCE_SERVICE_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Authentication"
    )]
    pub service_keys: Vec<crate::auth::ServiceKey>,

    /// TLS certificate chain (PEM). With --tls-key, the port speaks TLS only;
    /// both files are reloaded when they change.
    #[arg(
        long,
        env = "PRESENCE_TLS_CERT",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    pub tls_cert: Option<String>,

    /// TLS private key (PEM).
    #[arg(
        long,
        env = "PRESENCE_TLS_KEY",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_key: Option<String>,

    /// CA certificates (PEM) that verify client certificates; a client with a
    /// verified certificate is a service (mTLS).
    #[arg(
        long,
        env = "PRESENCE_TLS_CLIENT_CA",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_client_ca: Option<String>,

    /// Refuse TLS clients without a verified certificate (with
    /// --tls-client-ca); otherwise the certificate is optional.
    #[arg(
        long,
        env = "PRESENCE_TLS_CLIENT_AUTH_REQUIRED",
        requires = "tls_client_ca",
        help_heading = "TLS"
    )]
    pub tls_client_auth_required: bool,

    /// TLS handshakes in progress at most (each has 10 s); a connection
    /// that arrives past it is closed at once, so a flood of slow handshakes
    /// cannot grow the server without bound.
    #[arg(
        long,
        env = "PRESENCE_MAX_TLS_HANDSHAKES",
        default_value_t = 1024,
        help_heading = "TLS"
    )]
    pub max_tls_handshakes: usize,

    /// How often the TLS files are checked for changes.
    #[arg(long, env = "PRESENCE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration, help_heading = "TLS")]
    pub tls_reload_interval: Duration,

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

    /// The longest coalescing window of a room: at most one snapshot per
    /// window, changes within it folded into one (see --coalescing).
    #[arg(long, env = "PRESENCE_SNAPSHOT_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,

    /// How a room's coalescing window is chosen: `adaptive` (twice the
    /// estimated CPU of its fan-out, so a small room publishes at once; at
    /// most --snapshot-interval) or `fixed` (always --snapshot-interval).
    #[arg(long, env = "PRESENCE_COALESCING", value_enum, default_value_t = CoalescingMode::Adaptive)]
    pub coalescing: CoalescingMode,

    /// Live sessions one user may hold in one room.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER_ROOM", default_value_t = presence::DEFAULT_MAX_SESSIONS_PER_USER_ROOM)]
    pub max_sessions_per_user_room: usize,

    /// Live sessions of one user across all rooms.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER", default_value_t = presence::DEFAULT_MAX_SESSIONS_PER_USER, help_heading = "Limits")]
    pub max_sessions_per_user: usize,

    /// Rooms one user may be listed in.
    #[arg(long, env = "PRESENCE_MAX_ROOMS_PER_USER", default_value_t = presence::DEFAULT_MAX_ROOMS_PER_USER, help_heading = "Limits")]
    pub max_rooms_per_user: usize,

    /// Live sessions in all.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS", default_value_t = presence::DEFAULT_MAX_SESSIONS, help_heading = "Limits")]
    pub max_sessions: usize,

    /// Rooms in all (with users or watchers), so made-up room ids cannot
    /// exhaust memory.
    #[arg(long, env = "PRESENCE_MAX_ROOMS", default_value_t = presence::DEFAULT_MAX_ROOMS, help_heading = "Limits")]
    pub max_rooms: usize,

    /// Open watch streams per connection (0 = no limit).
    #[arg(
        long,
        env = "PRESENCE_MAX_WATCHES_PER_CONNECTION",
        default_value_t = 1000,
        help_heading = "Limits"
    )]
    pub max_watches_per_connection: usize,

    /// Open watch streams per principal, or per peer IP for callers without
    /// credentials (0 = no limit).
    #[arg(
        long,
        env = "PRESENCE_MAX_WATCHES_PER_PRINCIPAL",
        default_value_t = 0,
        help_heading = "Limits"
    )]
    pub max_watches_per_principal: usize,

    /// Requests per second per authenticated user, burst twice that (0 = no
    /// limit).
    #[arg(
        long,
        env = "PRESENCE_RATE_PER_USER",
        default_value_t = 50,
        help_heading = "Limits"
    )]
    pub rate_per_user: u32,

    /// Requests per second per service, burst twice that (0 = no limit).
    #[arg(
        long,
        env = "PRESENCE_RATE_PER_SERVICE",
        default_value_t = 0,
        help_heading = "Limits"
    )]
    pub rate_per_service: u32,

    /// Requests per second per peer IP address, burst twice that (0 = no
    /// limit; many users can share one address behind a NAT or proxy).
    #[arg(
        long,
        env = "PRESENCE_RATE_PER_PEER",
        default_value_t = 0,
        help_heading = "Limits"
    )]
    pub rate_per_peer: u32,

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

    // ---- Observability --------------------------------------------------
    /// Log filter, `RUST_LOG` syntax (`info`, `presenced=debug,info`;
    /// `presenced::rpc=debug` logs every call).
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "info",
        help_heading = "Observability"
    )]
    pub log_filter: String,

    /// Log line format, to stderr.
    #[arg(long, env = "PRESENCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Observability")]
    pub log_format: LogFormat,

    /// Address of the admin listener serving Prometheus metrics on
    /// `GET /metrics` (e.g. 127.0.0.1:9464). Unset: no metrics listener.
    #[arg(
        long,
        env = "PRESENCE_METRICS_LISTEN",
        value_name = "ADDR",
        help_heading = "Observability"
    )]
    pub metrics_listen: Option<SocketAddr>,

    // ---- Persistence ----------------------------------------------------
    /// Directory where the embedded store keeps its state across restarts
    /// (written periodically and at shutdown, read at start). Unset: state
    /// lives in memory only.
    #[arg(
        long,
        env = "PRESENCE_DATA_DIR",
        value_name = "DIR",
        help_heading = "Persistence"
    )]
    pub data_dir: Option<PathBuf>,

    /// How often the state is written to --data-dir (a kill -9 loses at
    /// most this much).
    #[arg(long, env = "PRESENCE_PERSIST_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Persistence")]
    pub persist_interval: Duration,

    /// Where each value came from, filled by [`Config::load_from`].
    #[arg(skip)]
    pub origins: Vec<Setting>,
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
                    if secret {
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
        if self.store == "memory" {
            return Ok(None);
        }
        crate::presence::redis::Target::parse(&self.store)
            .map(Some)
            .map_err(|e| format!("--store: {e}"))
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
            coalescing: match self.coalescing {
                CoalescingMode::Adaptive => presence::Coalescing::Adaptive,
                CoalescingMode::Fixed => presence::Coalescing::Fixed,
            },
            max_sessions_per_user_room: self.max_sessions_per_user_room,
            max_sessions_per_user: self.max_sessions_per_user,
            max_rooms_per_user: self.max_rooms_per_user,
            max_sessions: self.max_sessions,
            max_rooms: self.max_rooms,
        }
    }

    /// Where end-user JWT keys come from and what JWTs must say.
    pub fn jwt_config(&self) -> crate::auth::jwt::JwtConfig {
        crate::auth::jwt::JwtConfig {
            hs256_secret_file: self.jwt_hs256_secret_file.clone(),
            public_key_files: self.jwt_public_key_file.clone(),
            jwks_file: self.jwks_file.clone(),
            jwks_url: self.jwks_url.clone(),
            jwks_refresh: self.jwks_refresh,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            user_claim: self.jwt_user_claim.clone(),
        }
    }

    /// True when callers must authenticate.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_config().enabled() || !self.service_keys.is_empty() || self.tls_client_ca.is_some()
    }

    /// The per-caller abuse limits.
    pub fn caller_limits(&self) -> crate::auth::limits::Config {
        crate::auth::limits::Config {
            rate_per_user: self.rate_per_user,
            rate_per_service: self.rate_per_service,
            rate_per_peer: self.rate_per_peer,
            watches_per_connection: self.max_watches_per_connection,
            watches_per_principal: self.max_watches_per_principal,
        }
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
                self.jwt_hs256_secret_file.as_deref(),
            ),
            ("--jwks-file", self.jwks_file.as_deref()),
            ("--tls-cert", self.tls_cert.as_deref()),
            ("--tls-key", self.tls_key.as_deref()),
            ("--tls-client-ca", self.tls_client_ca.as_deref()),
        ]
        .into_iter()
        .chain(self.jwt_public_key_file.iter().map(|f| {
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
        if let Some(dir) = &self.data_dir {
            check_dir_writable(dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense together.
    fn validate_values(&self) -> Result<(), String> {
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
        for (i, key) in self.token_keys.iter().enumerate() {
            if key.len() < crate::token::MIN_KEY_BYTES {
                return Err(format!(
                    "--token-key #{} is {} bytes, it must be at least {}",
                    i + 1,
                    key.len(),
                    crate::token::MIN_KEY_BYTES
                ));
            }
        }
        if self.jwt_config().enabled()
            && (self.jwt_issuer.is_empty() || self.jwt_audience.is_empty())
        {
            return Err(
                "JWT keys are configured: --jwt-issuer and --jwt-audience are required".into(),
            );
        }
        if self.cors_allowed_origins.is_empty() {
            return Err("--cors-allowed-origins must list at least one origin, or *".into());
        }
        let positive = [
            ("--keepalive-interval", self.keepalive_interval),
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--persist-interval", self.persist_interval),
        ];
        for (flag, value) in positive {
            if value.is_zero() {
                return Err(format!("{flag} must be positive"));
            }
        }
        if self.max_connection_age.is_some_and(|age| age.is_zero()) {
            return Err(
                "--max-connection-age must be positive (leave it unset for no limit)".into(),
            );
        }
        if self.max_streams_per_connection == 0 {
            return Err("--max-streams-per-connection must be at least 1".into());
        }
        if self.max_request_bytes < 1024 {
            return Err(format!(
                "--max-request-bytes ({}) must be at least 1024",
                self.max_request_bytes
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            return Err(format!("--log-filter ({:?}): {err}", self.log_filter));
        }
        if let Some(dir) = &self.data_dir {
            if dir.as_os_str().is_empty() {
                return Err("--data-dir must not be empty".into());
            }
        }
        if self.redis_target()?.is_some() {
            if self.data_dir.is_some() {
                return Err(
                    "--data-dir keeps the memory store's state; with --store redis the state is in Redis"
                        .into(),
                );
            }
            if self.store_key_prefix.is_empty() || self.store_key_prefix.contains(['{', '}']) {
                return Err(format!(
                    "--store-key-prefix ({:?}) must be non-empty and free of braces",
                    self.store_key_prefix
                ));
            }
            for (flag, value) in [
                ("--store-timeout", self.store_timeout),
                ("--store-resync-interval", self.store_resync_interval),
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
