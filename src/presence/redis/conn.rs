//! Connections to Redis: one multiplexed connection for calls and one for
//! notifications (RESP3 pushes), each reconnecting by itself with backoff,
//! to one node or to a Cluster, and every call bounded by `--store-timeout`.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, PushInfo, RedisError, RedisFuture, ServerErrorKind, Value};
use tokio::sync::{mpsc, OnceCell};

use super::target::Target;
use crate::presence::model::Error;

/// Reconnect attempts back off from this…
const RETRY_MIN: Duration = Duration::from_millis(50);
/// …up to this.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How to reach Redis, for calls or for notifications. Connects lazily: a
/// store whose Redis is down starts anyway and connects when it is back.
pub struct Link {
    kind: Kind,
    timeout: Duration,
    shown: String,
}

enum Kind {
    /// One node: a connection manager reconnects on its own.
    Single(ConnectionManager),
    /// A Cluster: connected on first use (and again after a failed first
    /// try); the connection then follows the Cluster by itself.
    Cluster(Box<(ClusterClient, OnceCell<ClusterConnection>)>),
}

impl Link {
    /// A link for calls, answering within `timeout`.
    pub fn calls(target: &Target, timeout: Duration) -> Result<Self, String> {
        Self::new(target, timeout, None)
    }

    /// A link for notifications: RESP3, with its pushes (messages,
    /// subscription confirmations, disconnections) sent to `pushes`.
    pub fn notifications(
        target: &Target,
        timeout: Duration,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<Self, String> {
        Self::new(target, timeout, Some(pushes))
    }

    fn new(
        target: &Target,
        timeout: Duration,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<Self, String> {
        let err = |e: RedisError| format!("--store {}: {e}", target.shown);
        let resp3 = |url: &str| {
            if pushes.is_none() {
                return url.to_owned();
            }
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}protocol=resp3")
        };
        let kind = if target.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(
                target.nodes.iter().map(|n| resp3(n)).collect::<Vec<_>>(),
            )
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .min_retry_wait(RETRY_MIN.as_millis() as u64)
            .max_retry_wait(RETRY_MAX.as_millis() as u64);
            if let Some(pushes) = pushes {
                builder = builder
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(pushes);
            }
            Kind::Cluster(Box::new((builder.build().map_err(err)?, OnceCell::new())))
        } else {
            let client = redis::Client::open(resp3(&target.nodes[0])).map_err(err)?;
            let mut config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_min_delay(RETRY_MIN)
                .set_max_delay(RETRY_MAX)
                .set_number_of_retries(usize::MAX);
            if let Some(pushes) = pushes {
                config = config
                    .set_push_sender(pushes)
                    .set_automatic_resubscription();
            }
            Kind::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(err)?)
        };
        Ok(Self {
            kind,
            timeout,
            shown: target.shown.clone(),
        })
    }

    /// A connection (a cheap handle on the shared multiplexed one).
    pub async fn get(&self) -> Result<Conn, Error> {
        match &self.kind {
            Kind::Single(manager) => Ok(Conn::Single(manager.clone())),
            Kind::Cluster(cluster) => {
                let (client, conn) = &**cluster;
                let conn = conn
                    .get_or_try_init(|| async {
                        match tokio::time::timeout(self.timeout, client.get_async_connection())
                            .await
                        {
                            Ok(Ok(conn)) => Ok(conn),
                            Ok(Err(e)) => Err(self.unavailable(&e.to_string())),
                            Err(_) => Err(self.timed_out()),
                        }
                    })
                    .await?;
                Ok(Conn::Cluster(conn.clone()))
            }
        }
    }

    /// Runs `call` on a connection within the timeout; Redis errors become
    /// the engine's (unreadable data is an error for `room`).
    pub async fn run<T, F, Fut>(&self, room: Option<&str>, call: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.get().await?;
        match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.error(err, room)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The engine's error for a Redis error: data we cannot read is
    /// `Corrupt` for its room, everything else means Redis is unavailable.
    pub fn error(&self, err: RedisError, room: Option<&str>) -> Error {
        let bad_data = match err.kind() {
            ErrorKind::Server(ServerErrorKind::ResponseError)
            | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType => true,
            ErrorKind::Extension => err.code() == Some("WRONGTYPE"),
            _ => false,
        };
        match room {
            Some(room) if bad_data => {
                tracing::error!(room_id = room, error = %err, "unreadable presence data in Redis");
                Error::Corrupt {
                    room_id: room.to_owned(),
                    detail: err.to_string(),
                }
            }
            _ => self.unavailable(&err.to_string()),
        }
    }

    /// An `Unavailable` naming this store.
    pub fn unavailable(&self, reason: &str) -> Error {
        Error::Unavailable {
            store: self.shown.clone(),
            reason: reason.to_owned(),
        }
    }

    fn timed_out(&self) -> Error {
        self.unavailable(&format!(
            "no answer within {} (--store-timeout)",
            humantime::format_duration(self.timeout)
        ))
    }
}

/// A connection to one node or to the Cluster.
#[derive(Clone)]
pub enum Conn {
    /// One node.
    Single(ConnectionManager),
    /// The Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Subscribes to a room's channel (sharded on a Cluster).
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), RedisError> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from a room's channel.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), RedisError> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
