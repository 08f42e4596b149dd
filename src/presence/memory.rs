//! The embedded in-memory store: rooms, sessions, deadlines and snapshots in
//! this process.
//!
//! State is split into shards by room id, each a `std::sync::Mutex` that is
//! never held across an `.await` (nothing here is async but the sweeper loop,
//! which locks only inside the synchronous [`Memory::sweep`]). Two small
//! indexes, sharded by their own key, answer the questions a room shard
//! cannot: whether a session id is live anywhere (to refuse its reuse in
//! another room) and which rooms a user is listed in. Lock order is always room shard, then
//! index shard; an index shard is never held while a room shard is taken.
//!
//! Hot path: a heartbeat for a live session locks one room shard, updates the
//! session's deadline in place and allocates nothing. Deadlines are tracked
//! per room, not per session: a per-shard min-heap holds one entry per room
//! with sessions, at (no later than) its earliest session deadline. The
//! sweeper scans a due room, ends its expired sessions and queues it again
//! at its next deadline, at least one coalescing window later. A heartbeat
//! touches the heap only when it brings its room's next scan forward.
//!
//! Snapshots: each watched room has a `tokio::sync::watch` channel holding the
//! latest `Arc<Snapshot>`. A change publishes at once if the room published
//! nothing in the last `snapshot_interval`, else it is folded into one
//! publish at the end of that window (done by the sweeper). A slow watcher
//! therefore holds nothing but a pointer to the latest snapshot, and a burst
//! costs at most one snapshot build per window.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, Millis};
use super::counters::{Counters, Counts};
use super::model::{Error, Id, Limits, RoomPresence, Snapshot, UserData, UserPresence};

mod dump;

/// Number of room shards (a power of two).
const ROOM_SHARDS: usize = 64;
/// Number of shards of each index (a power of two).
const INDEX_SHARDS: usize = 64;
/// The sweeper wakes at least this often, so a wall-clock jump or a lost
/// wake-up costs at most this much lateness.
const MAX_SWEEP_SLEEP: Millis = 250;
/// Sessions one [`Memory::sweep`] ends at most (a few milliseconds of
/// work). When more are due the sweeper yields and sweeps again at once, so
/// a mass expiry does not hold up other requests on its worker thread.
const SWEEP_BUDGET: usize = 4096;

/// The in-memory presence store. Cheap to clone: all clones share one state.
#[derive(Clone)]
pub struct Memory {
    shared: Arc<Shared>,
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
    /// Wakes the sweeper when something is due before it planned to wake.
    sweeper: Notify,
    /// When the sweeper plans to wake next.
    next_wake: AtomicU64,
    /// Open watch subscriptions, for tests and metrics.
    live_watchers: AtomicUsize,
    /// Live sessions, for limits, tests and metrics.
    live_sessions: AtomicUsize,
    /// Rooms held (with users or watchers), for limits, tests and metrics.
    live_rooms: AtomicUsize,
    /// What this store has done, for metrics.
    counters: Counters,
}

type SessionIndex = HashSet<Id>;
type UserIndex = HashMap<Id, UserRooms>;

/// One user's entry in the user index.
#[derive(Default)]
struct UserRooms {
    /// Rooms where the user is listed.
    rooms: RoomSet,
    /// The user's live sessions across those rooms.
    sessions: u32,
}

/// The rooms where one user is listed. Nearly always one room, so one is
/// held inline (no allocation, 24 bytes); a set only for several.
#[derive(Default)]
enum RoomSet {
    #[default]
    Empty,
    One(Id),
    // Boxed on purpose: keeps the enum at 24 bytes instead of 48 for the
    // common case of one room.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<Id>>),
}

impl RoomSet {
    fn insert(&mut self, room_id: Id) {
        match self {
            RoomSet::Empty => *self = RoomSet::One(room_id),
            RoomSet::One(one) if *one == room_id => {}
            RoomSet::One(one) => {
                let set = HashSet::from([one.clone(), room_id]);
                *self = RoomSet::Many(Box::new(set));
            }
            RoomSet::Many(set) => {
                set.insert(room_id);
            }
        }
    }

    fn remove(&mut self, room_id: &str) {
        match self {
            RoomSet::One(one) if &**one == room_id => *self = RoomSet::Empty,
            RoomSet::Many(set) => {
                set.remove(room_id);
                if set.len() <= 1 {
                    *self = match set.iter().next() {
                        Some(last) => RoomSet::One(last.clone()),
                        None => RoomSet::Empty,
                    };
                }
            }
            _ => {}
        }
    }

    fn len(&self) -> usize {
        match self {
            RoomSet::Empty => 0,
            RoomSet::One(_) => 1,
            RoomSet::Many(set) => set.len(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, RoomSet::Empty)
    }

    fn iter(&self) -> impl Iterator<Item = &Id> {
        let (one, many) = match self {
            RoomSet::Empty => (None, None),
            RoomSet::One(one) => (Some(one), None),
            RoomSet::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[derive(Default)]
struct Shard {
    rooms: HashMap<Id, Room>,
    /// One entry per room with live sessions, at the time its sessions are
    /// next looked at (see [`Room::queued`]); stale entries are skipped.
    deadlines: BinaryHeap<Reverse<(Millis, Id)>>,
    /// One entry per offline user, at the end of their retention.
    purges: BinaryHeap<Reverse<Due>>,
    /// Rooms whose next snapshot waits for the end of a coalescing window.
    pending: Vec<(Millis, Id)>,
}

/// A purge heap entry: user `key`'s retention in `room` ends at `at`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Millis,
    room: Id,
    key: Id,
}

struct Room {
    id: Id,
    users: HashMap<Id, User>,
    /// The listing order; see [`Rank`].
    order: BTreeMap<Rank, Id>,
    sessions: HashMap<Id, Session>,
    /// When the sweeper next scans this room's sessions for expired ones:
    /// the time of its live entry in the shard's deadline heap, never later
    /// than its sessions' earliest deadline. `None` without sessions.
    queued: Option<Millis>,
    online: u32,
    /// Source of `Rank::Online` sequence numbers.
    next_seq: u64,
    version: u64,
    /// Present while the room has watchers.
    publisher: Option<Publisher>,
}

struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    watchers: usize,
    last_publish: Millis,
    pending: bool,
}

/// A user's place in the room's listing: online users in the order they came
/// online, then offline users, most recently disconnected first. Packed into
/// two words (an enum would take three): `class` is 0 while online, else
/// `u64::MAX - since`, so that ordering by `(class, seq)` is the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    class: u64,
    seq: u64,
}

impl Rank {
    fn online(seq: u64) -> Self {
        Rank { class: 0, seq }
    }

    /// Offline since `since` (saturated so that it never reads as online).
    fn offline(since: Millis, seq: u64) -> Self {
        Rank {
            class: u64::MAX - since.min(u64::MAX - 1),
            seq,
        }
    }

    fn is_online(&self) -> bool {
        self.class == 0
    }

    fn offline_since(&self) -> Option<Millis> {
        (!self.is_online()).then(|| u64::MAX - self.class)
    }
}

struct User {
    rank: Rank,
    sessions: u32,
    data: Option<UserData>,
}

impl User {
    fn last_disconnected(&self) -> Option<Millis> {
        self.rank.offline_since()
    }
}

struct Session {
    user: Id,
    deadline: Millis,
    /// Lifetime given by the last heartbeat (2.5 × its interval), in ms,
    /// saturated at ~49 days; kept so a restart can grant one interval of
    /// grace.
    ttl: u32,
}

/// Engine-wide counts, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Live sessions.
    pub sessions: usize,
    /// Open watch subscriptions.
    pub watchers: usize,
    /// Rooms held in memory (with users or watchers).
    pub rooms: usize,
}

impl Memory {
    /// An empty store.
    pub fn new(limits: Limits, clock: Arc<dyn Clock>) -> Self {
        let rooms = (0..ROOM_SHARDS).map(|_| Mutex::default()).collect();
        let session_rooms = (0..INDEX_SHARDS).map(|_| Mutex::default()).collect();
        let user_rooms = (0..INDEX_SHARDS).map(|_| Mutex::default()).collect();
        Self {
            shared: Arc::new(Shared {
                clock,
                limits,
                rooms,
                session_rooms,
                user_rooms,
                hasher: RandomState::new(),
                sweeper: Notify::new(),
                next_wake: AtomicU64::new(0),
                live_watchers: AtomicUsize::new(0),
                live_sessions: AtomicUsize::new(0),
                live_rooms: AtomicUsize::new(0),
                counters: Counters::default(),
            }),
        }
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Creates the session or pushes its deadline to now + 2.5 × interval.
    pub fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<(), Error> {
        let limits = &self.shared.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        limits.check_id("session_id", session_id)?;
        let ttl = limits.session_ttl(interval)?;
        let now = self.shared.clock.now();
        let deadline = now + ttl;

        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        // Fast path: a live session of this room.
        if let Some(room) = shard.rooms.get_mut(room_id) {
            if let Some(session) = room.sessions.get_mut(session_id) {
                if &*session.user != user_id {
                    return Err(Error::SessionConflict {
                        session_id: session_id.to_owned(),
                        other: "user",
                    });
                }
                session.deadline = deadline;
                session.ttl = ttl_ms(ttl);
                // Only a shrunk interval can bring the room's scan forward.
                self.queue_room(room, &mut shard.deadlines, deadline);
                return Ok(());
            }
        }
        self.add_session(shard, room_id, user_id, session_id, deadline, now)
    }

    /// The slow path of `heartbeat`: a session this room does not have yet.
    fn add_session(
        &self,
        shard: &mut Shard,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        deadline: Millis,
        now: Millis,
    ) -> Result<(), Error> {
        let limits = &self.shared.limits;
        let mut index = self.shared.session_index(session_id);
        if index.contains(session_id) {
            return Err(Error::SessionConflict {
                session_id: session_id.to_owned(),
                other: "room",
            });
        }
        // Every bound is checked before anything changes.
        if self.shared.live_sessions.load(Ordering::Relaxed) >= limits.max_sessions {
            return Err(Error::LimitReached {
                what: "sessions",
                limit: limits.max_sessions,
            });
        }
        let existing_user = shard
            .rooms
            .get(room_id)
            .and_then(|room| room.users.get(user_id));
        if existing_user
            .is_some_and(|user| user.sessions as usize >= limits.max_sessions_per_user_room)
        {
            return Err(Error::LimitReached {
                what: "sessions per user in a room",
                limit: limits.max_sessions_per_user_room,
            });
        }
        let new_in_room = existing_user.is_none();
        let mut users = self.shared.user_index(user_id);
        if let Some(entry) = users.get(user_id) {
            if entry.sessions as usize >= limits.max_sessions_per_user {
                return Err(Error::LimitReached {
                    what: "sessions per user",
                    limit: limits.max_sessions_per_user,
                });
            }
            if new_in_room && entry.rooms.len() >= limits.max_rooms_per_user {
                return Err(Error::LimitReached {
                    what: "rooms per user",
                    limit: limits.max_rooms_per_user,
                });
            }
        }
        let room = self.room_entry(&mut shard.rooms, room_id, now)?;
        let session_key: Id = Id::from(session_id);
        index.insert(session_key.clone());
        drop(index);

        let user_key = match room.users.get_key_value(user_id) {
            Some((key, _)) => key.clone(),
            None => Id::from(user_id),
        };
        let entry = users.entry(user_key.clone()).or_default();
        entry.sessions += 1;
        if new_in_room {
            entry.rooms.insert(room.id.clone());
        }
        drop(users);
        let seq = room.next_seq;
        let user = room.users.entry(user_key.clone()).or_insert_with(|| User {
            rank: Rank::offline(0, seq),
            sessions: 0,
            data: None,
        });
        user.sessions += 1;
        let came_online = user.sessions == 1;
        if came_online {
            room.order.remove(&user.rank);
            user.rank = Rank::online(seq);
            room.next_seq += 1;
            room.order.insert(user.rank, user_key.clone());
            room.online += 1;
        }
        room.sessions.insert(
            session_key.clone(),
            Session {
                user: user_key,
                deadline,
                ttl: ttl_ms(deadline - now),
            },
        );
        Counters::bump(&self.shared.counters.sessions_created);
        self.queue_room(room, &mut shard.deadlines, deadline);
        self.shared.live_sessions.fetch_add(1, Ordering::Relaxed);
        if came_online {
            self.changed(room, &mut shard.pending, now);
        }
        Ok(())
    }

    /// Makes sure the sweeper scans `room` by `at` (a session deadline).
    fn queue_room(
        &self,
        room: &mut Room,
        deadlines: &mut BinaryHeap<Reverse<(Millis, Id)>>,
        at: Millis,
    ) {
        if room.queued.is_some_and(|queued| queued <= at) {
            return;
        }
        room.queued = Some(at);
        deadlines.push(Reverse((at, room.id.clone())));
        self.shared.wake_sweeper_by(at);
    }

    /// The room, created (within the `max_rooms` bound) if absent.
    fn room_entry<'a>(
        &self,
        rooms: &'a mut HashMap<Id, Room>,
        room_id: &str,
        now: Millis,
    ) -> Result<&'a mut Room, Error> {
        if !rooms.contains_key(room_id) {
            let max = self.shared.limits.max_rooms;
            if self.shared.live_rooms.load(Ordering::Relaxed) >= max {
                return Err(Error::LimitReached {
                    what: "rooms",
                    limit: max,
                });
            }
            self.shared.live_rooms.fetch_add(1, Ordering::Relaxed);
            let id: Id = Id::from(room_id);
            rooms.insert(id.clone(), Room::new(id, now));
        }
        Ok(rooms.get_mut(room_id).expect("present"))
    }

    /// Ends a session at once. Unknown sessions, or a session id now owned
    /// by another user, are left alone: disconnect is idempotent.
    pub fn disconnect(&self, room_id: &str, user_id: &str, session_id: &str) {
        let now = self.shared.clock.now();
        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        let Some(room) = shard.rooms.get_mut(room_id) else {
            return;
        };
        match room.sessions.get(session_id) {
            Some(session) if &*session.user == user_id => {}
            _ => return,
        }
        Counters::bump(&self.shared.counters.sessions_disconnected);
        self.end_session(room, &mut shard.purges, session_id, now);
        self.changed(room, &mut shard.pending, now);
    }

    /// Removes a session from its room; turns its user offline if it was
    /// their last one. The caller publishes the change when the user went
    /// offline (returns true then).
    fn end_session(
        &self,
        room: &mut Room,
        purges: &mut BinaryHeap<Reverse<Due>>,
        session_id: &str,
        now: Millis,
    ) -> bool {
        let Some((session_key, session)) = room.sessions.remove_entry(session_id) else {
            return false;
        };
        self.shared.live_sessions.fetch_sub(1, Ordering::Relaxed);
        self.shared.session_index(&session_key).remove(&session_key);
        self.shared.unlist_user(&session.user, &room.id, 1, false);
        let Some(user) = room.users.get_mut(&session.user) else {
            return false;
        };
        user.sessions -= 1;
        if user.sessions > 0 {
            return false;
        }
        room.order.remove(&user.rank);
        user.rank = Rank::offline(now, user.rank.seq);
        room.order.insert(user.rank, session.user.clone());
        room.online -= 1;
        purges.push(Reverse(Due {
            at: now.saturating_add(self.shared.limits.retention.as_millis() as Millis),
            room: room.id.clone(),
            key: session.user,
        }));
        true
    }

    /// Replaces a listed user's data; empty data clears it.
    pub fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        let limits = &self.shared.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        let data = limits.check_data(data)?;
        let now = self.shared.clock.now();
        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        let user = shard
            .rooms
            .get_mut(room_id)
            .and_then(|room| room.users.get_mut(user_id))
            .ok_or_else(|| Error::UserNotInRoom {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
            })?;
        if user.data == data {
            return Ok(());
        }
        user.data = data;
        let room = shard.rooms.get_mut(room_id).expect("looked up above");
        self.changed(room, &mut shard.pending, now);
        Ok(())
    }

    /// Removes a user and all their sessions from a room.
    pub fn remove_room_user(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        let limits = &self.shared.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        let now = self.shared.clock.now();
        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        let Some(room) = shard.rooms.get_mut(room_id) else {
            return Ok(());
        };
        let Some((user_key, user)) = room.users.remove_entry(user_id) else {
            return Ok(());
        };
        room.order.remove(&user.rank);
        if user.sessions > 0 {
            room.online -= 1;
            let ended: Vec<Id> = room
                .sessions
                .iter()
                .filter(|(_, s)| s.user == user_key)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ended {
                room.sessions.remove(&id);
                self.shared.session_index(&id).remove(&id);
                self.shared.live_sessions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.shared
            .unlist_user(&user_key, &room.id, user.sessions, true);
        self.changed(room, &mut shard.pending, now);
        self.drop_if_unused(shard, room_id);
        Ok(())
    }

    /// Removes a room with all its users and sessions. Its watchers stay
    /// subscribed and see it empty.
    pub fn remove_room(&self, room_id: &str) -> Result<(), Error> {
        self.shared.limits.check_id("room_id", room_id)?;
        let now = self.shared.clock.now();
        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        let Some(room) = shard.rooms.get_mut(room_id) else {
            return Ok(());
        };
        if room.users.is_empty() {
            return Ok(());
        }
        for id in room.sessions.keys() {
            self.shared.session_index(id).remove(id);
        }
        self.shared
            .live_sessions
            .fetch_sub(room.sessions.len(), Ordering::Relaxed);
        for (user_id, user) in &room.users {
            self.shared
                .unlist_user(user_id, &room.id, user.sessions, true);
        }
        room.sessions = HashMap::new();
        room.users = HashMap::new();
        room.order.clear();
        room.online = 0;
        self.changed(room, &mut shard.pending, now);
        self.drop_if_unused(shard, room_id);
        Ok(())
    }

    /// The room's listing now: the first `limit` users (0 = default, capped);
    /// only online users when `online_only`.
    pub fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Snapshot, Error> {
        self.shared.limits.check_id("room_id", room_id)?;
        let limit = self.shared.limits.list_limit(limit);
        let now = self.shared.clock.now();
        let guard = self.shared.room_shard(room_id);
        Ok(match guard.rooms.get(room_id) {
            Some(room) => room.snapshot(limit, online_only),
            None => Snapshot {
                room_id: Id::from(room_id),
                users: Vec::new(),
                online_count: 0,
                total_count: 0,
                version: version_floor(now),
                memo: Default::default(),
            },
        })
    }

    /// The rooms where the user is listed: online rooms first (by room id),
    /// then offline ones, most recently left first.
    pub fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Vec<RoomPresence>, Error> {
        self.shared.limits.check_id("user_id", user_id)?;
        let limit = self.shared.limits.list_limit(limit);
        let room_ids: Vec<Id> = match self.shared.user_index(user_id).get(user_id) {
            Some(entry) => entry.rooms.iter().cloned().collect(),
            None => return Ok(Vec::new()),
        };
        let mut rooms: Vec<RoomPresence> = room_ids
            .into_iter()
            .filter_map(|room_id| {
                let guard = self.shared.room_shard(&room_id);
                let user = guard.rooms.get(&room_id)?.users.get(user_id)?;
                Some(RoomPresence {
                    last_disconnected: user.last_disconnected(),
                    room_id,
                })
            })
            .filter(|r| !online_only || r.last_disconnected.is_none())
            .collect();
        rooms.sort_by(|a, b| match (a.last_disconnected, b.last_disconnected) {
            (None, None) => a.room_id.cmp(&b.room_id),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.room_id.cmp(&b.room_id)),
        });
        rooms.truncate(limit);
        Ok(rooms)
    }

    /// Subscribes to a room's snapshots: the current one first, then the
    /// latest after each change. Works on an empty room, which then exists
    /// (empty) while watched.
    pub fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        self.shared.limits.check_id("room_id", room_id)?;
        let now = self.shared.clock.now();
        let cap = self.shared.limits.max_list_limit as usize;
        let mut guard = self.shared.room_shard(room_id);
        let room = self.room_entry(&mut guard.rooms, room_id, now)?;
        if room.publisher.is_none() {
            let first = Arc::new(room.snapshot(cap, false));
            Counters::bump(&self.shared.counters.snapshots_built);
            room.publisher = Some(Publisher {
                tx: watch::Sender::new(first),
                watchers: 0,
                last_publish: 0,
                pending: false,
            });
        }
        let publisher = room.publisher.as_mut().expect("set above");
        publisher.watchers += 1;
        let rx = publisher.tx.subscribe();
        self.shared.live_watchers.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            stream: WatchStream::new(rx),
            _guard: WatchGuard {
                shared: self.shared.clone(),
                room_id: room.id.clone(),
            },
        })
    }

    /// Ends sessions past their deadline (at most `SWEEP_BUDGET` per call),
    /// forgets offline users past retention and publishes coalesced
    /// snapshots that are due. Returns when the next of these falls due, if
    /// anything is queued (now, when the budget ran out).
    pub fn sweep(&self) -> Option<Millis> {
        let now = self.shared.clock.now();
        let retention = self.shared.limits.retention.as_millis() as Millis;
        let cap = self.shared.limits.max_list_limit as usize;
        // A room's sessions are expired in batches at most one coalescing
        // window apart: its watchers see one change per window anyway, and
        // a big room whose sessions lapse one by one is not rescanned for
        // each of them.
        let batch = self.shared.limits.snapshot_interval.as_millis() as Millis;
        let mut next: Option<Millis> = None;
        let mut budget = SWEEP_BUDGET;
        for shard in self.shared.rooms.iter() {
            let mut guard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut *guard;
            let mut touched: Vec<Id> = Vec::new();
            while let Some(Reverse((at, _))) = shard.deadlines.peek() {
                if *at > now {
                    break;
                }
                if budget == 0 {
                    next = Some(now);
                    break;
                }
                let Reverse((at, room_id)) = shard.deadlines.pop().expect("peeked");
                let Some(room) = shard.rooms.get_mut(&room_id) else {
                    continue;
                };
                if room.queued != Some(at) {
                    continue; // superseded by an earlier entry of this room
                }
                // Scan the room: end what is due (within the budget), and
                // queue the room again at its earliest remaining deadline,
                // but no sooner than one coalescing window from now.
                let mut expired = Vec::new();
                let mut earliest: Option<Millis> = None;
                let mut more = false;
                for (id, session) in &room.sessions {
                    if session.deadline > now {
                        earliest =
                            Some(earliest.map_or(session.deadline, |e| e.min(session.deadline)));
                    } else if expired.len() < budget {
                        expired.push(id.clone());
                    } else {
                        more = true;
                    }
                }
                budget -= expired.len();
                let mut went_offline = false;
                for id in &expired {
                    Counters::bump(&self.shared.counters.sessions_expired);
                    went_offline |= self.end_session(room, &mut shard.purges, id, now);
                }
                room.queued = if more {
                    Some(now)
                } else {
                    earliest.map(|at| at.max(now.saturating_add(batch)))
                };
                if let Some(at) = room.queued {
                    shard.deadlines.push(Reverse((at, room_id.clone())));
                }
                if went_offline {
                    touched.push(room_id);
                }
            }
            while let Some(Reverse(due)) = shard.purges.peek() {
                if due.at > now {
                    break;
                }
                let Reverse(due) = shard.purges.pop().expect("peeked");
                let Some(room) = shard.rooms.get_mut(&due.room) else {
                    continue;
                };
                let stale = room.users.get(&due.key).is_none_or(|u| {
                    u.last_disconnected()
                        .is_none_or(|since| since.saturating_add(retention) != due.at)
                });
                if stale {
                    continue;
                }
                let user = room.users.remove(&due.key).expect("checked above");
                Counters::bump(&self.shared.counters.users_purged);
                room.order.remove(&user.rank);
                self.shared.unlist_user(&due.key, &room.id, 0, true);
                touched.push(due.room);
            }
            touched.dedup();
            for room_id in touched {
                if let Some(room) = shard.rooms.get_mut(&room_id) {
                    self.changed(room, &mut shard.pending, now);
                }
                self.drop_if_unused(shard, &room_id);
            }
            // Coalesced snapshots whose window has ended.
            let mut i = 0;
            while i < shard.pending.len() {
                let (due_at, _) = shard.pending[i];
                if due_at > now {
                    next = earliest(next, due_at);
                    i += 1;
                    continue;
                }
                let (_, room_id) = shard.pending.swap_remove(i);
                if let Some(publisher) = shard
                    .rooms
                    .get_mut(&room_id)
                    .and_then(|room| room.publish(now, cap, &self.shared.counters))
                {
                    publisher.pending = false;
                }
            }
            if let Some(Reverse((at, _))) = shard.deadlines.peek() {
                next = earliest(next, *at);
            }
            if let Some(Reverse(due)) = shard.purges.peek() {
                next = earliest(next, due.at);
            }
        }
        next
    }

    /// Runs [`Memory::sweep`] whenever something falls due, until `cancel`.
    /// This is the one task that expires sessions: there is no timer per
    /// session.
    pub async fn run_sweeper(self, cancel: CancellationToken) {
        loop {
            let next = self.sweep();
            let now = self.shared.clock.now();
            if next.is_some_and(|at| at <= now) {
                // Over budget: let other tasks run, then carry on.
                tokio::task::yield_now().await;
                if cancel.is_cancelled() {
                    return;
                }
                continue;
            }
            let wake = next.map_or(now + MAX_SWEEP_SLEEP, |at| at.min(now + MAX_SWEEP_SLEEP));
            self.shared.next_wake.store(wake, Ordering::SeqCst);
            let sleep = Duration::from_millis(wake.saturating_sub(now));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.shared.sweeper.notified() => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Counts of live things.
    pub fn stats(&self) -> Stats {
        Stats {
            sessions: self.shared.live_sessions.load(Ordering::Relaxed),
            watchers: self.shared.live_watchers.load(Ordering::Relaxed),
            rooms: self.shared.live_rooms.load(Ordering::Relaxed),
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
    pub fn counts(&self) -> Counts {
        self.shared.counters.read()
    }

    /// Records a change to the room's listing: a new version, and a snapshot
    /// for its watchers now or at the end of the coalescing window.
    fn changed(&self, room: &mut Room, pending: &mut Vec<(Millis, Id)>, now: Millis) {
        room.version = (room.version + 1).max(version_floor(now));
        let window = self.shared.limits.snapshot_interval.as_millis() as Millis;
        let Some(publisher) = room.publisher.as_mut() else {
            return;
        };
        if publisher.pending {
            Counters::bump(&self.shared.counters.snapshots_coalesced);
            return;
        }
        let due = publisher.last_publish.saturating_add(window);
        if now >= due {
            room.publish(
                now,
                self.shared.limits.max_list_limit as usize,
                &self.shared.counters,
            );
        } else {
            publisher.pending = true;
            pending.push((due, room.id.clone()));
            self.shared.wake_sweeper_by(due);
        }
    }

    /// Forgets a room that has neither users nor watchers.
    fn drop_if_unused(&self, shard: &mut Shard, room_id: &str) {
        if let Some(room) = shard.rooms.get(room_id) {
            if room.users.is_empty() && room.publisher.is_none() {
                shard.rooms.remove(room_id);
                self.shared.live_rooms.fetch_sub(1, Ordering::Relaxed);
            }
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

fn earliest(a: Option<Millis>, b: Millis) -> Option<Millis> {
    Some(a.map_or(b, |a| a.min(b)))
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

    /// Updates a user's index entry: `sessions` of theirs ended, and when
    /// `leave_room`, they are no longer listed in `room_id`.
    fn unlist_user(&self, user_id: &str, room_id: &str, sessions: u32, leave_room: bool) {
        let mut index = self.user_index(user_id);
        if let Some(entry) = index.get_mut(user_id) {
            entry.sessions = entry.sessions.saturating_sub(sessions);
            if leave_room {
                entry.rooms.remove(room_id);
            }
            if entry.rooms.is_empty() {
                index.remove(user_id);
            }
        }
    }

    /// Makes sure the sweeper wakes by `at`.
    fn wake_sweeper_by(&self, at: Millis) {
        if at < self.next_wake.load(Ordering::SeqCst) {
            self.next_wake.store(at, Ordering::SeqCst);
            self.sweeper.notify_one();
        }
    }
}

impl Room {
    fn new(id: Id, now: Millis) -> Self {
        Self {
            id,
            users: HashMap::new(),
            order: BTreeMap::new(),
            sessions: HashMap::new(),
            queued: None,
            online: 0,
            next_seq: 0,
            version: version_floor(now),
            publisher: None,
        }
    }

    /// The listing's first `limit` users (online ones only if asked).
    fn snapshot(&self, limit: usize, online_only: bool) -> Snapshot {
        let users = self
            .order
            .iter()
            .take_while(|(rank, _)| !online_only || rank.is_online())
            .take(limit)
            .map(|(_, user_id)| {
                let user = &self.users[user_id];
                UserPresence {
                    user_id: user_id.clone(),
                    last_disconnected: user.last_disconnected(),
                    data: user.data.clone(),
                }
            })
            .collect();
        Snapshot {
            room_id: self.id.clone(),
            users,
            online_count: self.online,
            total_count: self.users.len() as u32,
            version: self.version,
            memo: Default::default(),
        }
    }

    /// Sends a fresh snapshot (of at most `cap` users) to the watchers
    /// unless it would look the same as the last one. Returns the publisher,
    /// if the room has watchers.
    fn publish(&mut self, now: Millis, cap: usize, counters: &Counters) -> Option<&mut Publisher> {
        self.publisher.as_ref()?;
        let fresh = self.snapshot(cap, false);
        Counters::bump(&counters.snapshots_built);
        let publisher = self.publisher.as_mut()?;
        publisher.last_publish = now;
        let same = fresh.same_view(&publisher.tx.borrow(), usize::MAX);
        if !same {
            publisher.tx.send_replace(Arc::new(fresh));
        }
        Some(publisher)
    }
}

/// A subscription to a room's snapshots: a stream of `Arc<Snapshot>`, the
/// current one first, then the latest after each change (a slow reader skips
/// stale ones). Dropping it unsubscribes.
pub struct Subscription {
    stream: WatchStream<Arc<Snapshot>>,
    _guard: WatchGuard,
}

impl Stream for Subscription {
    type Item = Arc<Snapshot>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.stream).poll_next(cx);
        if let Poll::Ready(Some(_)) = next {
            Counters::bump(&self._guard.shared.counters.snapshots_delivered);
        }
        next
    }
}

/// Unregisters a watcher on drop, and forgets its room when it was the last
/// watcher of a room without users.
struct WatchGuard {
    shared: Arc<Shared>,
    room_id: Id,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.live_watchers.fetch_sub(1, Ordering::Relaxed);
        let mut guard = self.shared.room_shard(&self.room_id);
        let Some(room) = guard.rooms.get_mut(&self.room_id) else {
            return;
        };
        if let Some(publisher) = room.publisher.as_mut() {
            publisher.watchers -= 1;
            if publisher.watchers == 0 {
                room.publisher = None;
            }
        }
        if room.users.is_empty() && room.publisher.is_none() {
            guard.rooms.remove(&self.room_id);
            self.shared.live_rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
