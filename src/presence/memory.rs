//! The embedded in-memory store, the zero-config default: rooms, sessions,
//! deadlines and snapshots in this process.
//!
//! - `room.rs`: what a room holds (users, sessions, listing order).
//! - `ops.rs`: the operations behind the RPCs.
//! - `sweep.rs`: the one background task: expiry, retention purges and the
//!   hub's deferred publishes.
//! - `dump.rs` and `persist.rs`: the state file of `--data-dir`.
//!
//! State is split into shards by room id, each a `std::sync::Mutex` that is
//! never held across an `.await` (nothing here is async but the sweeper
//! loop, which locks only inside the synchronous [`Memory::sweep`]). Two
//! small indexes, sharded by their own key, answer what a room shard cannot:
//! whether a session id is live anywhere (to refuse its reuse in another
//! room) and which rooms a user is listed in.
//!
//! **Lock order**, the whole of it: room shard → session-index shard →
//! user-index shard → hub shard. A thread holds at most one shard of each
//! kind, takes them only in this order (any of them may be skipped), and
//! releases a later one before it takes an earlier kind again. `add_session`
//! is the one path that nests three: room shard, then the session index
//! (kept until the id is claimed), then the user index (to check and count
//! the user's sessions and rooms).
//!
//! Hot path: a heartbeat for a live session locks one room shard, updates the
//! session's deadline in place and allocates nothing. Deadlines are tracked
//! per room, not per session: a per-shard min-heap holds one entry per room
//! with sessions, at (no later than) its earliest session deadline.
//!
//! Limits on shared counts (sessions and rooms in all) are reserved with a
//! compare-and-swap before anything changes and released if the request
//! fails, so concurrent requests cannot overshoot them.

mod dump;
mod ops;
pub mod persist;
mod room;
mod sweep;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, Millis};
use super::counters::{Activity, ActivityCounters};
use super::hub::{Hub, Subscription};
use super::model::{Error, Lease, Limits, RoomPresence, Snapshot};
use super::store::{Health, Stats, Store};
use persist::{Loaded, Persister, Writes};
use room::{SessionIndex, Shard, UserIndex};

/// Number of room shards (a power of two).
const ROOM_SHARDS: usize = 64;
/// Number of shards of each index (a power of two).
const INDEX_SHARDS: usize = 64;

/// The in-memory presence store. Cheap to clone: all clones share one state.
#[derive(Clone)]
pub struct Memory {
    shared: Arc<Shared>,
    /// Writes the state to `--data-dir`; its own handle to this store has
    /// no persister, so there is no reference cycle.
    persister: Option<Persister>,
}

struct Shared {
    clock: Arc<dyn Clock>,
    limits: Limits,
    rooms: Box<[Mutex<Shard>]>,
    /// Every live session id, so that one id cannot live in two rooms;
    /// sharded by session id.
    session_rooms: Box<[Mutex<SessionIndex>]>,
    /// User id → the rooms where that user is listed; sharded by user id.
    user_rooms: Box<[Mutex<UserIndex>]>,
    hasher: RandomState,
    /// Watchers, their snapshots and the coalescing windows.
    hub: Hub,
    /// Wakes the sweeper when something is due before it planned to wake.
    sweeper: Notify,
    /// When the sweeper plans to wake next.
    next_wake: AtomicU64,
    /// Live sessions, for limits, tests and metrics.
    live_sessions: AtomicUsize,
    /// Rooms with users, for limits, tests and metrics. (A watched room
    /// nobody is in lives in the hub only.)
    live_rooms: AtomicUsize,
    /// Source of session incarnations: one counter for the store, seeded
    /// from the clock (and the state file), so an incarnation never comes
    /// back for the same session id, even in a room dropped and made anew.
    next_incarnation: AtomicU64,
    /// What this store has done, for metrics.
    counters: Arc<ActivityCounters>,
}

impl Memory {
    /// An empty store.
    pub fn new(limits: Limits, clock: Arc<dyn Clock>) -> Self {
        let counters = Arc::new(ActivityCounters::default());
        let hub = Hub::new(&limits, counters.clone());
        let shared = Arc::new(Shared {
            clock,
            limits,
            rooms: (0..ROOM_SHARDS).map(|_| Mutex::default()).collect(),
            session_rooms: (0..INDEX_SHARDS).map(|_| Mutex::default()).collect(),
            user_rooms: (0..INDEX_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            hub,
            sweeper: Notify::new(),
            next_wake: AtomicU64::new(0),
            live_sessions: AtomicUsize::new(0),
            live_rooms: AtomicUsize::new(0),
            next_incarnation: AtomicU64::new(0),
            counters,
        });
        let now = shared.clock.now();
        shared
            .next_incarnation
            .store(version_floor(now), Ordering::Relaxed);
        Self {
            shared,
            persister: None,
        }
    }

    /// Keeps this store's state in `dir` (written every `every` and when
    /// [`Store::run`] ends), restoring what is there now.
    pub fn with_data_dir(
        mut self,
        dir: impl Into<std::path::PathBuf>,
        every: Duration,
    ) -> Result<(Self, Loaded), persist::Error> {
        let persister = Persister::new(dir, every, self.clone())?;
        let loaded = persister.load()?;
        persist::report(&loaded, &persister.path());
        // Written at once: proves the directory writable before serving,
        // and the last-write metric is current from the start.
        persister.save()?;
        self.persister = Some(persister);
        Ok((self, loaded))
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Activity of live things.
    pub fn stats(&self) -> Stats {
        Stats {
            sessions: self.shared.live_sessions.load(Ordering::Relaxed),
            rooms: self.shared.live_rooms.load(Ordering::Relaxed),
            watchers: self.shared.hub.watchers(),
            watched_rooms: self.shared.hub.rooms(),
        }
    }

    /// Online users, counted once per room they are online in. Visits every
    /// room (one shard locked at a time): for metrics scrapes, not hot paths.
    pub fn online_users(&self) -> usize {
        self.shared
            .rooms
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                shard
                    .rooms
                    .values()
                    .map(|r| r.online as usize)
                    .sum::<usize>()
            })
            .sum()
    }

    /// What this store has done since it started.
    pub fn activity(&self) -> Activity {
        self.shared.counters.read()
    }

    /// State file writes, with `--data-dir`.
    pub fn persist_writes(&self) -> Option<Writes> {
        self.persister.as_ref().map(Persister::writes)
    }

    /// Where the state file is, with `--data-dir`.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        self.persister.as_ref().map(Persister::path)
    }
}

impl Shared {
    fn room_shard(&self, room_id: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(room_id) as usize & (ROOM_SHARDS - 1);
        // A panic while holding a shard lock leaves consistent-enough state
        // (every mutation is completed before any call that could panic), so
        // poisoning is ignored rather than taking the whole service down.
        self.rooms[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session_index(&self, session_id: &str) -> MutexGuard<'_, SessionIndex> {
        let i = self.hasher.hash_one(session_id) as usize & (INDEX_SHARDS - 1);
        self.session_rooms[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn user_index(&self, user_id: &str) -> MutexGuard<'_, UserIndex> {
        let i = self.hasher.hash_one(user_id) as usize & (INDEX_SHARDS - 1);
        self.user_rooms[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session incarnation.
    fn incarnation(&self) -> u64 {
        self.next_incarnation.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure the sweeper wakes by `at`.
    fn wake_sweeper_by(&self, at: Millis) {
        if at < self.next_wake.load(Ordering::SeqCst) {
            self.next_wake.store(at, Ordering::SeqCst);
            self.sweeper.notify_one();
        }
    }

    /// Forgets a room nobody is in (its watchers keep their last snapshot
    /// in the hub; a new room of the same id continues its version).
    fn drop_if_empty(&self, shard: &mut Shard, room_id: &str) {
        let empty = shard
            .rooms
            .get(room_id)
            .is_some_and(|room| room.users.is_empty());
        if empty {
            shard.rooms.remove(room_id);
            self.live_rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One unit of a shared count (sessions or rooms in all), taken below its
/// bound with a compare-and-swap and given back on drop unless kept.
struct Reservation<'a>(Option<&'a AtomicUsize>);

impl<'a> Reservation<'a> {
    /// Takes one unit of `count` if it is below `max`.
    fn take(count: &'a AtomicUsize, max: usize, what: &'static str) -> Result<Self, Error> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Reservation(Some(count)))
            .map_err(|_| Error::LimitReached { what, limit: max })
    }

    /// Keeps the unit: the thing it counts now exists.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The smallest version a change at `now` may carry: versions are built from
/// wall-clock microseconds so they keep growing across restarts.
fn version_floor(now: Millis) -> u64 {
    now.saturating_mul(1000)
}

/// A session lifetime as stored: u32 milliseconds, saturated.
fn ttl_ms(ttl: Millis) -> u32 {
    u32::try_from(ttl).unwrap_or(u32::MAX)
}

impl Store for Memory {
    fn limits(&self) -> &Limits {
        Memory::limits(self)
    }

    async fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<Lease, Error> {
        Memory::heartbeat(self, room_id, user_id, session_id, interval)
    }

    async fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: Option<u64>,
    ) -> Result<(), Error> {
        Memory::disconnect(self, room_id, user_id, session_id, incarnation)
    }

    async fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        Memory::update_room_user(self, room_id, user_id, data)
    }

    async fn remove_room_user(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        Memory::remove_room_user(self, room_id, user_id)
    }

    async fn remove_room(&self, room_id: &str) -> Result<(), Error> {
        Memory::remove_room(self, room_id)
    }

    async fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Snapshot, Error> {
        Memory::list_room(self, room_id, online_only, limit)
    }

    async fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Vec<RoomPresence>, Error> {
        Memory::list_user(self, user_id, online_only, limit)
    }

    async fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        Memory::watch(self, room_id)
    }

    fn run(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let saver = this
                .persister
                .clone()
                .map(|p| tokio::spawn(p.run(shutdown.clone())));
            this.clone().run_sweeper(shutdown).await;
            if let Some(saver) = saver {
                let _ = saver.await;
            }
            if let Some(persister) = &this.persister {
                if let Ok(bytes) = persister.save_now().await {
                    tracing::info!(bytes, path = %persister.path().display(), "presence state saved");
                }
            }
        }
    }

    fn health(&self) -> Health {
        Health::Serving
    }

    fn health_changed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    fn stats(&self) -> Stats {
        Memory::stats(self)
    }

    fn online_users(&self) -> usize {
        Memory::online_users(self)
    }

    fn activity(&self) -> Activity {
        Memory::activity(self)
    }
}
