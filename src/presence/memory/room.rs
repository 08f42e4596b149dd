//! What the in-memory store holds: shards of rooms, each room's users,
//! sessions and listing order, and the two indexes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use crate::presence::clock::Millis;
use crate::presence::listing::Rank;
use crate::presence::model::{Id, Snapshot, UserData, UserPresence};

use super::version_floor;

/// Every live session id (see `Shared::session_rooms`).
pub(super) type SessionIndex = HashSet<Id>;
/// User id → where the user is listed (see `Shared::user_rooms`).
pub(super) type UserIndex = HashMap<Id, UserRooms>;

/// One user's entry in the user index.
#[derive(Default)]
pub(super) struct UserRooms {
    /// Rooms where the user is listed.
    pub rooms: RoomSet,
    /// The user's live sessions across those rooms.
    pub sessions: u32,
}

/// The rooms where one user is listed. Nearly always one room, so one is
/// held inline (no allocation, 24 bytes); a set only for several.
#[derive(Default)]
pub(super) enum RoomSet {
    #[default]
    Empty,
    One(Id),
    // Boxed on purpose: keeps the enum at 24 bytes instead of 48 for the
    // common case of one room.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<Id>>),
}

impl RoomSet {
    pub fn insert(&mut self, room_id: Id) {
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

    pub fn remove(&mut self, room_id: &str) {
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

    pub fn len(&self) -> usize {
        match self {
            RoomSet::Empty => 0,
            RoomSet::One(_) => 1,
            RoomSet::Many(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, RoomSet::Empty)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Id> {
        let (one, many) = match self {
            RoomSet::Empty => (None, None),
            RoomSet::One(one) => (Some(one), None),
            RoomSet::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// One shard of rooms with the queues the sweeper works through.
#[derive(Default)]
pub(super) struct Shard {
    pub rooms: HashMap<Id, Room>,
    /// One entry per room with live sessions, at the time its sessions are
    /// next looked at (see [`Room::queued`]); stale entries are skipped.
    pub deadlines: BinaryHeap<Reverse<(Millis, Id)>>,
    /// At most one entry per offline user (see [`User::purge_queued`]), no
    /// later than the end of their retention.
    pub purges: BinaryHeap<Reverse<Due>>,
}

/// A purge heap entry: user `key` of `room` is looked at again at `at`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Due {
    pub at: Millis,
    pub room: Id,
    pub key: Id,
}

pub(super) struct Room {
    pub id: Id,
    pub users: HashMap<Id, User>,
    /// The listing order; see [`Rank`].
    pub order: BTreeMap<Rank, Id>,
    pub sessions: HashMap<Id, Session>,
    /// When the sweeper next scans this room's sessions for expired ones:
    /// the time of its live entry in the shard's deadline heap, never later
    /// than its sessions' earliest deadline. `None` without sessions.
    pub queued: Option<Millis>,
    pub online: u32,
    /// Source of rank sequence numbers: grows by one per use.
    pub next_seq: u64,
    pub version: u64,
}

pub(super) struct User {
    pub rank: Rank,
    pub sessions: u32,
    /// An entry of this user is in the shard's purge heap.
    pub purge_queued: bool,
    pub data: Option<UserData>,
}

impl User {
    pub fn last_disconnected(&self) -> Option<Millis> {
        self.rank.offline_since()
    }
}

pub(super) struct Session {
    pub user: Id,
    pub deadline: Millis,
    /// Lifetime given by the last heartbeat (2.5 × its interval), in ms,
    /// saturated at ~49 days; kept so a restart can grant one interval of
    /// grace.
    pub ttl: u32,
    /// This life of the session (see [`crate::presence::Lease`]).
    pub incarnation: u64,
}

impl Room {
    pub fn new(id: Id, now: Millis) -> Self {
        Self {
            id,
            users: HashMap::new(),
            order: BTreeMap::new(),
            sessions: HashMap::new(),
            queued: None,
            online: 0,
            next_seq: 0,
            version: version_floor(now),
        }
    }

    /// The next sequence number.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The listing's first `limit` users (online ones only if asked).
    pub fn snapshot(&self, limit: usize, online_only: bool) -> Snapshot {
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

    /// True when `user_id` is the online user who came online last.
    pub fn is_last_online(&self, user_id: &str) -> bool {
        let last = self
            .order
            .iter()
            .take_while(|(rank, _)| rank.is_online())
            .last();
        last.is_some_and(|(_, id)| &**id == user_id)
    }

    /// Moves `user_id` to `rank` in the listing.
    pub fn rerank(&mut self, user_id: &Id, rank: Rank) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        self.order.remove(&user.rank);
        user.rank = rank;
        self.order.insert(rank, user_id.clone());
    }
}
