//! Export and import of the in-memory state, for [`persist`](super::persist).
//!
//! A child of `memory` so it can read the store's private structures; the
//! file format and the file handling live in `persist`.

use std::cmp::Reverse;
use std::sync::Arc;

use super::persist::{Restored, RoomState, SessionState, State, UserState};
use super::room::{Due, Room, Session, User};
use super::{ttl_ms, Memory, Reservation};
use crate::presence::clock::Millis;
use crate::presence::counters::ActivityCounters;
use crate::presence::listing::Rank;
use crate::presence::model::Id;

/// Users and sessions copied per lock hold of a room shard, at most (a
/// bigger room is copied whole). Bounds how long a heartbeat to the same
/// shard can wait for an export: about a millisecond.
const EXPORT_CHUNK: usize = 2048;

impl Memory {
    /// A copy of every room with users: listing order, offline times, data,
    /// sessions with their deadlines, lifetimes and incarnations, and the
    /// room's version. Each room is consistent in itself; a shard is locked
    /// for at most [`EXPORT_CHUNK`] entries (or one room) at a time, so a
    /// state write never stalls requests for long.
    pub fn export(&self) -> State {
        let now = self.shared.clock.now();
        let mut rooms = Vec::new();
        for shard in self.shared.rooms.iter() {
            let ids: Vec<Id> = {
                let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                shard.rooms.keys().cloned().collect()
            };
            let mut ids = ids.iter().peekable();
            while ids.peek().is_some() {
                let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                let mut copied = 0;
                while copied < EXPORT_CHUNK {
                    let Some(id) = ids.next() else { break };
                    let Some(room) = shard.rooms.get(id).filter(|r| !r.users.is_empty()) else {
                        continue;
                    };
                    copied += room.users.len() + room.sessions.len();
                    rooms.push(room_state(room));
                }
            }
        }
        let mut state = State::new(now, rooms);
        // Taken last: above every incarnation in the rooms copied.
        state.next_incarnation = self
            .shared
            .next_incarnation
            .load(std::sync::atomic::Ordering::Relaxed);
        state
    }

    /// Loads a state written by [`Memory::export`], normally into an empty
    /// store at start. Rooms already present are left as they are.
    ///
    /// Every restored session lives at least one more heartbeat interval
    /// (its lifetime / 2.5) from now: a session whose deadline passed while
    /// the service was down gets that much grace to heartbeat again instead
    /// of everyone leaving at once. A user listed online whose sessions are
    /// all gone is offline since the state was written. Versions continue
    /// from the saved ones (and never fall below the wall-clock floor).
    pub fn import(&self, state: State) -> Restored {
        let now = self.shared.clock.now();
        let limits = &self.shared.limits;
        let retention = limits.retention.as_millis() as Millis;
        let mut restored = Restored {
            written_at: state.written_at,
            ..Restored::default()
        };
        self.shared
            .next_incarnation
            .fetch_max(state.next_incarnation, std::sync::atomic::Ordering::Relaxed);
        for saved in state.rooms {
            let mut guard = self.shared.room_shard(&saved.id);
            let shard = &mut *guard;
            if shard.rooms.contains_key(saved.id.as_str()) || saved.users.is_empty() {
                continue;
            }
            // The limits in force now apply to what was saved under others.
            let Ok(room_slot) =
                Reservation::take(&self.shared.live_rooms, limits.max_rooms, "rooms")
            else {
                restored.rooms_dropped += 1;
                restored.sessions_dropped += saved.sessions.len();
                continue;
            };
            room_slot.keep();
            let id: Id = Id::from(saved.id);
            let mut room = Room::new(id.clone(), now);
            room.version = room.version.max(saved.version);
            // Incarnations continue above every saved one.
            let top = saved
                .sessions
                .iter()
                .map(|s| s.incarnation)
                .max()
                .unwrap_or(0);
            room.next_seq = room.next_seq.max(top + 1);

            for user in saved.users {
                if room.users.contains_key(user.id.as_str()) {
                    continue;
                }
                let since = user.last_disconnected.unwrap_or(state.written_at);
                let rank = Rank::offline(since, room.take_seq());
                room.users.insert(
                    Id::from(user.id),
                    User {
                        rank,
                        sessions: 0,
                        purge_queued: false,
                        data: user.data.filter(|d| !d.is_empty()).map(Arc::new),
                    },
                );
            }

            for session in saved.sessions {
                let Some(user_key) = room
                    .users
                    .get_key_value(session.user.as_str())
                    .map(|(key, _)| key.clone())
                else {
                    continue;
                };
                let over_user_room = room
                    .users
                    .get(&user_key)
                    .is_some_and(|u| u.sessions as usize >= limits.max_sessions_per_user_room);
                if over_user_room {
                    restored.sessions_dropped += 1;
                    continue;
                }
                let Ok(session_slot) =
                    Reservation::take(&self.shared.live_sessions, limits.max_sessions, "sessions")
                else {
                    restored.sessions_dropped += 1;
                    continue;
                };
                let session_key: Id = Id::from(session.id);
                {
                    // Lock order: room shard (held), then index shard.
                    let mut index = self.shared.session_index(&session_key);
                    if !index.insert(session_key.clone()) {
                        continue;
                    }
                }
                session_slot.keep();
                let ttl = session.ttl.max(1);
                let deadline = session.deadline.max(now.saturating_add(ttl * 2 / 5));
                let incarnation = if session.incarnation == 0 {
                    self.shared.incarnation()
                } else {
                    session.incarnation
                };
                room.sessions.insert(
                    session_key.clone(),
                    Session {
                        user: user_key.clone(),
                        deadline,
                        ttl: ttl_ms(ttl),
                        incarnation,
                    },
                );
                self.queue_room(&mut room, &mut shard.deadlines, deadline);
                if let Some(user) = room.users.get_mut(&user_key) {
                    user.sessions += 1;
                }
                ActivityCounters::bump(&self.shared.counters.sessions_created);
                restored.sessions += 1;
            }

            let Room {
                users,
                order,
                online,
                ..
            } = &mut room;
            for (user_id, user) in users.iter_mut() {
                let since = user
                    .rank
                    .offline_since()
                    .expect("every user starts offline above");
                if user.sessions > 0 {
                    user.rank = Rank::online(user.rank.seq());
                    *online += 1;
                } else {
                    user.purge_queued = true;
                    shard.purges.push(Reverse(Due {
                        at: since.saturating_add(retention),
                        room: id.clone(),
                        key: user_id.clone(),
                    }));
                    self.shared.wake_sweeper_by(since.saturating_add(retention));
                }
                order.insert(user.rank, user_id.clone());
                let mut index = self.shared.user_index(user_id);
                let entry = index.entry(user_id.clone()).or_default();
                entry.rooms.insert(id.clone());
                entry.sessions += user.sessions;
            }
            restored.rooms += 1;
            restored.users += room.users.len();
            shard.rooms.insert(id, room);
        }
        restored
    }
}

/// The saved form of one room.
fn room_state(room: &Room) -> RoomState {
    let users = room
        .order
        .values()
        .map(|user_id| {
            let user = &room.users[user_id];
            UserState {
                id: user_id.to_string(),
                last_disconnected: user.last_disconnected(),
                data: user.data.as_deref().cloned(),
            }
        })
        .collect();
    let sessions = room
        .sessions
        .iter()
        .map(|(id, session)| SessionState {
            id: id.to_string(),
            user: session.user.to_string(),
            deadline: session.deadline,
            ttl: session.ttl.into(),
            incarnation: session.incarnation,
        })
        .collect();
    RoomState {
        id: room.id.to_string(),
        version: room.version,
        users,
        sessions,
    }
}
