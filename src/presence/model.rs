//! The engine's own vocabulary: what goes in (limits), what comes out
//! (snapshots, room listings) and what can go wrong.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::clock::Millis;

/// Per-user data in a room: a small JSON object (typing indicator, cursor
/// colour, status). Shared, never copied, between the room and its snapshots.
pub type UserData = Arc<serde_json::Map<String, serde_json::Value>>;

/// A room, user or session id as the engine holds it: immutable, shared by
/// reference count, and one pointer wide (the length lives in the heap
/// block), where `Arc<str>` is two. The engine keeps several references to
/// every id (map keys, indexes, the deadline heap), so this is worth about
/// 80 bytes per session. Derefs to `str`; hashes and compares as `str`.
pub type Id = arcstr::ArcStr;

/// Default bound on room, user and session id length, in bytes.
pub const DEFAULT_MAX_ID_BYTES: usize = 256;
/// Default bound on one user's data in a room, in bytes of compact JSON.
pub const DEFAULT_MAX_DATA_BYTES: usize = 4096;
/// Default shortest accepted heartbeat interval.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default longest accepted heartbeat interval.
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(600);
/// Default number of entries in a listing when the caller asks for 0.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Default cap on the number of entries in one listing.
pub const DEFAULT_MAX_LIST_LIMIT: u32 = 1000;
/// Default time an offline user stays listed.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default minimum time between two snapshots of one room (burst coalescing).
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(50);
/// Default bound on live sessions of one user in one room.
pub const DEFAULT_MAX_SESSIONS_PER_USER_ROOM: usize = 64;

/// Default bound on live sessions of one user across rooms.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 256;
/// Default bound on rooms one user is listed in.
pub const DEFAULT_MAX_ROOMS_PER_USER: usize = 256;
/// Default bound on live sessions in all.
pub const DEFAULT_MAX_SESSIONS: usize = 5_000_000;
/// Default bound on rooms in all.
pub const DEFAULT_MAX_ROOMS: usize = 1_000_000;

/// How a room's coalescing window is chosen (see [`Hub`](super::Hub)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coalescing {
    /// Twice the estimated CPU of the room's fan-out, at most the snapshot
    /// interval: small rooms publish at once.
    #[default]
    Adaptive,
    /// Always the snapshot interval, whatever the room's size.
    Fixed,
}

/// Bounds on input and behaviour knobs of the engine. Every field is
/// configurable; the defaults are the `DEFAULT_*` constants.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest accepted room, user or session id, in bytes.
    pub max_id_bytes: usize,
    /// Largest accepted per-user data, in bytes of compact JSON.
    pub max_data_bytes: usize,
    /// Shortest accepted heartbeat interval.
    pub min_interval: Duration,
    /// Longest accepted heartbeat interval.
    pub max_interval: Duration,
    /// Entries in a listing when the caller asks for 0.
    pub default_list_limit: u32,
    /// Cap on entries in one listing; larger requests are clamped.
    pub max_list_limit: u32,
    /// How long an offline user stays listed.
    pub retention: Duration,
    /// The longest coalescing window of a room: at most one snapshot per
    /// window is published, changes within it are folded into one at its
    /// end. A room's own window follows the cost of its fan-out and is
    /// usually shorter (see [`Hub`](super::Hub)); this bounds it. Also the
    /// batching of a room's expiries.
    pub snapshot_interval: Duration,
    /// How a room's window is chosen: by the cost of its fan-out (up to
    /// `snapshot_interval`), or always `snapshot_interval`.
    pub coalescing: Coalescing,
    /// Live sessions one user may hold in one room.
    pub max_sessions_per_user_room: usize,
    /// Live sessions one user may hold across rooms.
    pub max_sessions_per_user: usize,
    /// Rooms one user may be listed in.
    pub max_rooms_per_user: usize,
    /// Live sessions in all.
    pub max_sessions: usize,
    /// Rooms in all (with users or watchers).
    pub max_rooms: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_id_bytes: DEFAULT_MAX_ID_BYTES,
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            min_interval: DEFAULT_MIN_INTERVAL,
            max_interval: DEFAULT_MAX_INTERVAL,
            default_list_limit: DEFAULT_LIST_LIMIT,
            max_list_limit: DEFAULT_MAX_LIST_LIMIT,
            retention: DEFAULT_RETENTION,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            coalescing: Coalescing::Adaptive,
            max_sessions_per_user_room: DEFAULT_MAX_SESSIONS_PER_USER_ROOM,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            max_rooms_per_user: DEFAULT_MAX_ROOMS_PER_USER,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_rooms: DEFAULT_MAX_ROOMS,
        }
    }
}

/// One user as listed in a room.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPresence {
    /// The user's id.
    pub user_id: Id,
    /// When the user's last session ended; `None` while online.
    pub last_disconnected: Option<Millis>,
    /// The user's data in this room.
    pub data: Option<UserData>,
}

impl UserPresence {
    /// True while at least one of the user's sessions in the room is alive.
    pub fn online(&self) -> bool {
        self.last_disconnected.is_none()
    }
}

/// A room's listing at one version: online users first in the order they
/// came online, then offline users, most recently disconnected first.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The room's id.
    pub room_id: Id,
    /// The first users of the listing (at most the engine's listing cap).
    pub users: Vec<UserPresence>,
    /// All online users of the room, listed or not.
    pub online_count: u32,
    /// All users of the room, online and offline, listed or not.
    pub total_count: u32,
    /// Grows with every change to the listing, across restarts.
    pub version: u64,
    /// The edge's encodings of this snapshot, made once and shared by every
    /// watcher it reaches. The engine never reads it.
    pub memo: Memo,
}

/// What an edge derives from a snapshot (its wire encoding, per view), kept
/// with the snapshot so that N watchers of a room cost one encoding per
/// change, not N. Opaque to the engine: values are `Any`. A clone of a
/// snapshot starts with an empty memo, and memos never affect equality.
#[derive(Default)]
pub struct Memo(Mutex<Vec<(u64, Arc<dyn Any + Send + Sync>)>>);

/// Most views remembered per snapshot; more are computed each time.
const MEMO_ENTRIES: usize = 8;

impl Memo {
    /// The value remembered under `key`, or `make()` (remembered when there
    /// is room). `make` runs under the memo's lock, so concurrent callers
    /// wait for one computation instead of repeating it.
    pub fn get_or_insert_with<T>(&self, key: u64, make: impl FnOnce() -> T) -> T
    where
        T: Any + Clone + Send + Sync,
    {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = entries
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.downcast_ref::<T>())
        {
            return value.clone();
        }
        let value = make();
        if entries.len() < MEMO_ENTRIES {
            entries.push((key, Arc::new(value.clone())));
        }
        value
    }
}

impl Clone for Memo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

impl Snapshot {
    /// The listing of a room nobody is in.
    pub fn empty(room_id: Id, version: u64) -> Self {
        Self {
            room_id,
            users: Vec::new(),
            online_count: 0,
            total_count: 0,
            version,
            memo: Memo::default(),
        }
    }

    /// The first `limit` users.
    pub fn users(&self, limit: usize) -> &[UserPresence] {
        &self.users[..self.users.len().min(limit)]
    }

    /// True when the first `limit` users and the counts are the same in both
    /// (the version aside): a watcher showing `limit` users would see no
    /// difference.
    pub fn same_view(&self, other: &Snapshot, limit: usize) -> bool {
        self.online_count == other.online_count
            && self.total_count == other.total_count
            && self.room_id == other.room_id
            && self.users(limit) == other.users(limit)
    }
}

/// What a heartbeat established: the session's incarnation and when it
/// ends without another heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Tells this life of the session apart from earlier and later ones with
    /// the same id: a session token names it, so a token kept from an ended
    /// session cannot end a newer one that reuses the id. Unique per room and
    /// growing, across restarts too (seeded from the clock like versions).
    pub incarnation: u64,
    /// The session's deadline (the store's clock, unix ms).
    pub deadline: Millis,
}

/// One room of a user, as listed by `list_user`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPresence {
    /// The room's id.
    pub room_id: Id,
    /// When the user's last session in the room ended; `None` while online.
    pub last_disconnected: Option<Millis>,
}

/// What a caller can get wrong, or what can stop the engine from serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument is malformed or out of bounds.
    #[error("{field} {reason}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it, including the limit that applied.
        reason: String,
    },
    /// The session id is already in use with another room or user.
    #[error("session id {session_id:?} is already in use with another {other}")]
    SessionConflict {
        /// The reused session id.
        session_id: String,
        /// "room" or "user".
        other: &'static str,
    },
    /// The (room, user) pair is not listed.
    #[error("user {user_id:?} is not listed in room {room_id:?}")]
    UserNotInRoom {
        /// The room's id.
        room_id: String,
        /// The user's id.
        user_id: String,
    },
    /// A configured bound on stored state was reached.
    #[error("{what} limit reached: at most {limit}")]
    LimitReached {
        /// Which bound.
        what: &'static str,
        /// Its configured value.
        limit: usize,
    },
    /// The engine is shutting down.
    #[error("the presence service is shutting down")]
    ShuttingDown,
    /// The shared store cannot be reached, or did not answer in time.
    #[error("the presence store {store} is unavailable: {reason}")]
    Unavailable {
        /// Which store (its address, without credentials).
        store: String,
        /// What failed.
        reason: String,
    },
    /// The store holds data this version cannot read (a key of the wrong
    /// type, a corrupt value): an error for that room, never a panic.
    #[error("the presence store holds unreadable data for room {room_id:?}: {detail}")]
    Corrupt {
        /// The room whose data is unreadable.
        room_id: String,
        /// What was wrong with it.
        detail: String,
    },
}

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
