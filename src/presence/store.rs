//! The storage boundary: everything the server asks of presence state.
//!
//! [`Memory`](super::Memory) (embedded, the default) and
//! [`Redis`](super::Redis) (shared by many instances) implement it, and
//! [`AnyStore`] is whichever one the configuration chose. The RPC layer,
//! the server and the metrics work over any store. Every store keeps the
//! semantics in `docs/semantics.md`; the conformance suite (`tests/
//! conformance.rs`) runs the same model-based checks against each.
//!
//! Methods are async because a shared store is remote; errors are the
//! engine's [`Error`]. A store owns its background work (expiry, coalesced
//! publishes, persistence or notifications), run by [`Store::run`], and
//! reports its health, live counts and what it has done.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::counters::Activity;
use super::hub::Subscription;
use super::memory::Memory;
use super::model::{Error, Lease, Limits, RoomPresence, Snapshot};
use super::redis::Redis;

/// Presence state: sessions in, listings and snapshot streams out.
pub trait Store: Clone + Send + Sync + 'static {
    /// The bounds this store enforces.
    fn limits(&self) -> &Limits;

    /// Creates the session or pushes its deadline to now + 2.5 × interval.
    /// A session whose deadline has passed is over even if it has not been
    /// swept yet: a heartbeat for it starts a new one (a new incarnation).
    fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> impl Future<Output = Result<Lease, Error>> + Send;

    /// Ends a session; idempotent. With an `incarnation`, only that life of
    /// the session (a session token names one); `None` ends whichever is
    /// live.
    fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: Option<u64>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Replaces a listed user's data in a room; empty data clears it.
    fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes a user and all their sessions from a room; idempotent.
    fn remove_room_user(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes a room with all its users and sessions; idempotent. Its
    /// watchers stay subscribed and see it empty.
    fn remove_room(&self, room_id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// The room's listing now: the first `limit` users (0 = default,
    /// capped); only online users when `online_only`.
    fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> impl Future<Output = Result<Snapshot, Error>> + Send;

    /// The rooms where a user is listed (see [`super::listing`]).
    fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<RoomPresence>, Error>> + Send;

    /// Subscribes to a room's snapshots: the current one first, then the
    /// latest after each change. Works on an empty room.
    fn watch(&self, room_id: &str) -> impl Future<Output = Result<Subscription, Error>> + Send;

    /// Runs the store's background work until `shutdown` is cancelled, then
    /// finishes it (a final state write, for instance) and returns.
    fn run(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static;

    /// Whether the store can serve now.
    fn health(&self) -> Health;

    /// Resolves when [`Store::health`] may have changed.
    fn health_changed(&self) -> impl Future<Output = ()> + Send + 'static;

    /// Live counts (cheap: no scan).
    fn stats(&self) -> Stats;

    /// Online users, counted once per room they are online in. May visit
    /// every room: for metrics scrapes, not hot paths.
    fn online_users(&self) -> usize;

    /// What this store (this instance of it) has done since it started.
    fn activity(&self) -> Activity;
}

/// Whether a store can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It answers.
    Serving,
    /// It cannot be reached; calls fail with UNAVAILABLE. Why.
    Unavailable(String),
}

/// Activity of live things. For a shared store, sessions and rooms are the
/// totals of every instance; watchers and watched rooms are this
/// instance's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live sessions.
    pub sessions: usize,
    /// Rooms with users (online or offline).
    pub rooms: usize,
    /// Open watch subscriptions here.
    pub watchers: usize,
    /// Rooms watched here.
    pub watched_rooms: usize,
}

/// The store the configuration chose.
#[derive(Clone)]
pub enum AnyStore {
    /// The embedded in-memory store.
    Memory(Memory),
    /// A Redis store shared by several instances.
    Redis(Redis),
}

impl AnyStore {
    /// The embedded store, if that is what this is (tests, persistence).
    pub fn memory(&self) -> Option<&Memory> {
        match self {
            AnyStore::Memory(m) => Some(m),
            AnyStore::Redis(_) => None,
        }
    }

    /// The Redis store, if that is what this is.
    pub fn redis(&self) -> Option<&Redis> {
        match self {
            AnyStore::Redis(r) => Some(r),
            AnyStore::Memory(_) => None,
        }
    }

    /// What kind of store and where, for logs (no credentials).
    pub fn describe(&self) -> String {
        match self {
            AnyStore::Memory(_) => "memory".to_owned(),
            AnyStore::Redis(r) => r.describe(),
        }
    }
}

/// Forwards each method to the chosen store.
macro_rules! either {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call,
            AnyStore::Redis($s) => $call,
        }
    };
}

impl Store for AnyStore {
    fn limits(&self) -> &Limits {
        either!(self, s => s.limits())
    }

    async fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<Lease, Error> {
        either!(self, s => Store::heartbeat(s, room_id, user_id, session_id, interval).await)
    }

    async fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: Option<u64>,
    ) -> Result<(), Error> {
        either!(self, s => Store::disconnect(s, room_id, user_id, session_id, incarnation).await)
    }

    async fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        either!(self, s => Store::update_room_user(s, room_id, user_id, data).await)
    }

    async fn remove_room_user(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        either!(self, s => Store::remove_room_user(s, room_id, user_id).await)
    }

    async fn remove_room(&self, room_id: &str) -> Result<(), Error> {
        either!(self, s => Store::remove_room(s, room_id).await)
    }

    async fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Snapshot, Error> {
        either!(self, s => Store::list_room(s, room_id, online_only, limit).await)
    }

    async fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Vec<RoomPresence>, Error> {
        either!(self, s => Store::list_user(s, user_id, online_only, limit).await)
    }

    async fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        either!(self, s => Store::watch(s, room_id).await)
    }

    fn run(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move { either!(this, s => s.run(shutdown).await) }
    }

    fn health(&self) -> Health {
        either!(self, s => s.health())
    }

    fn health_changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move { either!(this, s => s.health_changed().await) }
    }

    fn stats(&self) -> Stats {
        either!(self, s => s.stats())
    }

    fn online_users(&self) -> usize {
        either!(self, s => s.online_users())
    }

    fn activity(&self) -> Activity {
        either!(self, s => s.activity())
    }
}
