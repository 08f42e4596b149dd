//! The Redis store: many presenced instances, one presence. Redis 7 or
//! Valkey, one node or a Cluster, holds the truth; an instance keeps only
//! what its own watchers need (the hub), fed by notifications and
//! corrected by resyncs.
//!
//! - `target.rs`: `--store` URLs; `keys.rs`: the key layout and hash tags.
//! - `conn.rs`: connections, timeouts, errors; `scripts.rs` and `lua/`:
//!   one Lua script per atomic operation.
//! - `ops.rs`: the operations behind the RPCs.
//! - `notify.rs`: notifications, resyncs and the hub's publishes.
//! - `sweep.rs`: expiry and retention, shared by every instance.
//!
//! **Each change is one script**: the session write, the user's
//! online/offline transition, the version bump and the notification, in
//! one atomic step on the room's slot, with the time taken from Redis
//! (`TIME`) so that instances with skewed clocks agree. What lives in other
//! slots is updated in a second step that heals itself: the claim on a
//! session id (one id, one room and user), the user's index (ListUser and
//! the per-user limits) and the totals behind `--max-sessions` and
//! `--max-rooms`. A heartbeat of a live session is one script call.
//!
//! **Staleness**: pub/sub is at-most-once. A watcher misses nothing for
//! longer than one resync interval (`--store-resync-interval`, 2 s by
//! default) plus a coalescing window and a store round trip: every watched
//! room's version is checked then, and on every (re)subscription.

mod conn;
mod keys;
mod notify;
mod ops;
mod scripts;
mod sweep;
mod target;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::PushInfo;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, SystemClock};
use super::counters::{Activity, ActivityCounters};
use super::hub::Hub;
use super::hub::Subscription;
use super::model::{Error, Id, Lease, Limits, RoomPresence, Snapshot};
use super::store::{Health, Stats, Store};
pub use ops::{LatencySnapshot, LATENCY_BUCKETS};
pub use target::{redact as redact_url, Target};

/// Default bound on one call to the store.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time between two version checks of every watched room.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(2);
/// Default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "presence";
/// Snapshot reads in flight at once per instance.
const FETCHES: usize = 64;

/// What a Redis store needs to know.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub target: Target,
    /// Prefix of every key, so deployments can share one Redis.
    pub key_prefix: String,
    /// Bound on one call.
    pub timeout: Duration,
    /// Time between two version checks of every watched room.
    pub resync_interval: Duration,
    /// The engine's limits.
    pub limits: Limits,
    /// For tests only: take the time from this clock instead of Redis's
    /// `TIME` (a store in production never sets it).
    pub clock: Option<Arc<dyn Clock>>,
}

impl RedisConfig {
    /// A configuration with the defaults for `target`.
    pub fn new(target: Target, limits: Limits) -> Self {
        Self {
            target,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            limits,
            clock: None,
        }
    }
}

/// The Redis store. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    config: RedisConfig,
    keys: keys::Keys,
    scripts: scripts::Scripts,
    /// Calls (scripts, reads).
    calls: conn::Link,
    /// Notifications: a connection of its own, so a killed subscriber
    /// connection never fails a call.
    notifications: conn::Link,
    /// Its pushes, until [`Redis::run`] takes them.
    pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    /// Rooms this instance's watchers no longer watch, to unsubscribe
    /// (the hub sends them), until [`Redis::run`] takes them.
    idle_rx: Mutex<Option<mpsc::UnboundedReceiver<Id>>>,
    /// `PUBLISH` (one node) or `SPUBLISH` (a Cluster).
    publish: &'static str,
    hub: Hub,
    counters: Arc<ActivityCounters>,
    /// Time for local decisions (coalescing windows, sweep pacing).
    clock: Arc<dyn Clock>,
    health: watch::Sender<Health>,
    /// Live sessions, rooms and online users in all, as of the last sweep.
    totals: [AtomicU64; 3],
    /// Channels Redis confirmed this instance is subscribed to.
    subscribed: Mutex<HashSet<Id>>,
    /// Bounds snapshot reads in flight.
    fetches: Arc<Semaphore>,
    /// Call latency by operation.
    latency: ops::Latencies,
}

impl Redis {
    /// A store on `config.target`. Connects lazily: a Redis that is down
    /// now is connected to when it is back (calls fail with UNAVAILABLE
    /// meanwhile, and health says so).
    pub fn new(config: RedisConfig) -> Result<Self, String> {
        if config.key_prefix.is_empty() || config.key_prefix.contains(['{', '}']) {
            return Err(format!(
                "--store-key-prefix {:?} must be non-empty and free of braces",
                config.key_prefix
            ));
        }
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let calls = conn::Link::calls(&config.target, config.timeout)?;
        let notifications = conn::Link::notifications(&config.target, config.timeout, push_tx)?;
        let counters = Arc::new(ActivityCounters::default());
        let hub = Hub::new(&config.limits, counters.clone());
        hub.on_idle(move |room| {
            let _ = idle_tx.send(room.clone());
        });
        let clock: Arc<dyn Clock> = match &config.clock {
            Some(clock) => clock.clone(),
            None => Arc::new(SystemClock),
        };
        let publish = if config.target.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        Ok(Self {
            shared: Arc::new(Shared {
                keys: keys::Keys::new(&config.key_prefix),
                scripts: scripts::Scripts::load(),
                calls,
                notifications,
                pushes: Mutex::new(Some(push_rx)),
                idle_rx: Mutex::new(Some(idle_rx)),
                publish,
                hub,
                counters,
                clock,
                health: watch::Sender::new(Health::Serving),
                totals: Default::default(),
                subscribed: Mutex::default(),
                fetches: Arc::new(Semaphore::new(FETCHES)),
                latency: ops::Latencies::default(),
                config,
            }),
        })
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.config.limits
    }

    /// The prefix of this store's keys.
    pub fn key_prefix(&self) -> &str {
        &self.shared.config.key_prefix
    }

    /// Live sessions and rooms in all, read now (the limits' totals).
    pub async fn totals(&self) -> Result<(u64, u64), Error> {
        let key = self.shared.keys.totals();
        let (s, r): (Option<u64>, Option<u64>) = self
            .timed(ops::Op::Read, None, |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("s")
                    .arg("r")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok((s.unwrap_or(0), r.unwrap_or(0)))
    }

    /// Where the store is, for logs (no password).
    pub fn describe(&self) -> String {
        self.shared.config.target.shown.clone()
    }

    /// Activity of live things: sessions and rooms in all (as of the last
    /// sweep), watchers and watched rooms of this instance.
    pub fn stats(&self) -> Stats {
        let t = &self.shared.totals;
        Stats {
            sessions: t[0].load(Ordering::Relaxed) as usize,
            rooms: t[1].load(Ordering::Relaxed) as usize,
            watchers: self.shared.hub.watchers(),
            watched_rooms: self.shared.hub.rooms(),
        }
    }

    /// Online users in all, once per room (as of the last sweep).
    pub fn online_users(&self) -> usize {
        self.shared.totals[2].load(Ordering::Relaxed) as usize
    }

    /// What this instance has done.
    pub fn activity(&self) -> Activity {
        self.shared.counters.read()
    }

    /// Whether Redis answers.
    pub fn health(&self) -> Health {
        self.shared.health.borrow().clone()
    }

    /// Resolves when [`Redis::health`] may have changed.
    pub fn health_changed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.health.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    }

    /// Call latencies by operation.
    pub fn latencies(&self) -> Vec<ops::LatencySnapshot> {
        self.shared.latency.read()
    }

    /// The token key every instance with this Redis and prefix shares,
    /// made once by whichever instance asks first.
    pub async fn shared_token_key(&self) -> Result<String, Error> {
        let mut candidate = [0u8; 32];
        getrandom::fill(&mut candidate).expect("the OS random source is available");
        let candidate =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, candidate);
        let key = self.shared.keys.token_key();
        let value = self
            .shared
            .calls
            .run(None, |mut conn| async move {
                let args = [
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    candidate,
                ];
                self.shared
                    .scripts
                    .token_key
                    .call(&mut conn, &[&key], &args)
                    .await
            })
            .await?;
        scripts::text(value).map_err(|e| self.shared.calls.error(e, None))
    }

    /// Runs the store's background work until `shutdown`: notifications
    /// and resyncs, the sweeper, the health check.
    pub async fn run(self, shutdown: CancellationToken) {
        let notifier = tokio::spawn(self.clone().run_notifier(shutdown.clone()));
        let sweeper = tokio::spawn(self.clone().run_sweeper(shutdown.clone()));
        let health = tokio::spawn(self.clone().run_health(shutdown.clone()));
        for task in [notifier, sweeper, health] {
            let _ = task.await;
        }
    }

    /// Checks Redis every second; after an outage, every watched room is
    /// read again (it may have lost its data).
    async fn run_health(self, shutdown: CancellationToken) {
        loop {
            let ping = self
                .shared
                .calls
                .run(None, |mut conn| async move {
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                })
                .await;
            self.set_health(ping.map(|_| ()));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Records what a call to Redis showed of its health.
    fn set_health(&self, outcome: Result<(), Error>) {
        let now = match outcome {
            Ok(()) => Health::Serving,
            Err(Error::Unavailable { reason, .. }) => Health::Unavailable(reason),
            Err(_) => return,
        };
        let was = self.shared.health.send_replace(now.clone());
        if was != Health::Serving && now == Health::Serving {
            self.resync_all();
        }
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Redis").field(&self.describe()).finish()
    }
}

impl Store for Redis {
    fn limits(&self) -> &Limits {
        Redis::limits(self)
    }

    async fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<Lease, Error> {
        Redis::heartbeat(self, room_id, user_id, session_id, interval).await
    }

    async fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: Option<u64>,
    ) -> Result<(), Error> {
        Redis::disconnect(self, room_id, user_id, session_id, incarnation).await
    }

    async fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        Redis::update_room_user(self, room_id, user_id, data).await
    }

    async fn remove_room_user(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        Redis::remove_room_user(self, room_id, user_id).await
    }

    async fn remove_room(&self, room_id: &str) -> Result<(), Error> {
        Redis::remove_room(self, room_id).await
    }

    async fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Snapshot, Error> {
        Redis::list_room(self, room_id, online_only, limit).await
    }

    async fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Vec<RoomPresence>, Error> {
        Redis::list_user(self, user_id, online_only, limit).await
    }

    async fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        Redis::watch(self, room_id).await
    }

    fn run(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.clone().run(shutdown)
    }

    fn health(&self) -> Health {
        Redis::health(self)
    }

    fn health_changed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        Redis::health_changed(self)
    }

    fn stats(&self) -> Stats {
        Redis::stats(self)
    }

    fn online_users(&self) -> usize {
        Redis::online_users(self)
    }

    fn activity(&self) -> Activity {
        Redis::activity(self)
    }
}
