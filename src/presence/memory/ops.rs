//! The in-memory store's operations: what each RPC does to a room.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::presence::clock::Millis;
use crate::presence::counters::ActivityCounters;
use crate::presence::hub::{Change, Subscription};
use crate::presence::listing::{user_rooms_order, Rank};
use crate::presence::model::{Error, Id, Lease, RoomPresence, Snapshot};

use super::room::{Due, Room, Session, Shard, User};
use super::{ttl_ms, version_floor, Memory, Reservation};

impl Memory {
    /// Creates the session or pushes its deadline to now + 2.5 × interval.
    pub fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<Lease, Error> {
        let ttl = self
            .shared
            .limits
            .check_heartbeat(room_id, user_id, session_id, interval)?;
        let now = self.shared.clock.now();
        let deadline = now + ttl;

        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        let (mut went_offline, mut was_last_online) = (false, false);
        if let Some(room) = shard.rooms.get_mut(room_id) {
            if let Some(session) = room.sessions.get_mut(session_id) {
                if &*session.user != user_id {
                    return Err(Error::SessionConflict {
                        session_id: session_id.to_owned(),
                        other: "user",
                    });
                }
                if session.deadline > now {
                    // Fast path: a live session of this room.
                    session.deadline = deadline;
                    session.ttl = ttl_ms(ttl);
                    let incarnation = session.incarnation;
                    // Only a shrunk interval can bring the room's scan forward.
                    self.queue_room(room, &mut shard.deadlines, deadline);
                    return Ok(Lease {
                        incarnation,
                        deadline,
                    });
                }
                // Past its deadline, not swept yet: it is over, as if the
                // sweeper had just been here; this heartbeat starts anew.
                ActivityCounters::bump(&self.shared.counters.sessions_expired);
                was_last_online = room.is_last_online(user_id);
                went_offline = self.end_session(room, &mut shard.purges, session_id, now);
            }
        }
        let added = self.add_session(shard, room_id, user_id, session_id, deadline, now);
        let came_online = added.as_ref().is_ok_and(|(_, online)| *online);
        // Back online at once: visible only if it moved the user (to the
        // end of the online users).
        let visible = went_offline != came_online || (went_offline && !was_last_online);
        if visible {
            if let Some(room) = shard.rooms.get_mut(room_id) {
                self.changed(room, now);
            }
        }
        added.map(|(lease, _)| lease)
    }

    /// The slow path of `heartbeat`: a session this room does not have yet.
    /// Returns its lease and whether its user came online.
    fn add_session(
        &self,
        shard: &mut Shard,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        deadline: Millis,
        now: Millis,
    ) -> Result<(Lease, bool), Error> {
        let limits = &self.shared.limits;
        let mut index = self.shared.session_index(session_id);
        if index.contains(session_id) {
            return Err(Error::SessionConflict {
                session_id: session_id.to_owned(),
                other: "room",
            });
        }
        // Every bound is checked before anything changes, in the order all
        // stores use: the user's sessions in the room, the user's sessions
        // and rooms, then sessions and rooms in all.
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
        let session_slot =
            Reservation::take(&self.shared.live_sessions, limits.max_sessions, "sessions")?;
        let room = self.room_entry(&mut shard.rooms, room_id, now)?;
        session_slot.keep();
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
        let sessions = room.users.get_mut(&user_key).map(|user| {
            user.sessions += 1;
            user.sessions
        });
        let came_online = match sessions {
            Some(n) => {
                if n == 1 {
                    let seq = room.take_seq();
                    room.rerank(&user_key, Rank::online(seq));
                }
                n == 1
            }
            None => {
                let rank = Rank::online(room.take_seq());
                let user = User {
                    rank,
                    sessions: 1,
                    purge_queued: false,
                    data: None,
                };
                room.users.insert(user_key.clone(), user);
                room.order.insert(rank, user_key.clone());
                true
            }
        };
        if came_online {
            room.online += 1;
        }
        let incarnation = self.shared.incarnation();
        room.sessions.insert(
            session_key,
            Session {
                user: user_key,
                deadline,
                ttl: ttl_ms(deadline - now),
                incarnation,
            },
        );
        ActivityCounters::bump(&self.shared.counters.sessions_created);
        self.queue_room(room, &mut shard.deadlines, deadline);
        Ok((
            Lease {
                incarnation,
                deadline,
            },
            came_online,
        ))
    }

    /// Makes sure the sweeper scans `room` by `at` (a session deadline).
    pub(super) fn queue_room(
        &self,
        room: &mut Room,
        deadlines: &mut std::collections::BinaryHeap<Reverse<(Millis, Id)>>,
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
            Reservation::take(
                &self.shared.live_rooms,
                self.shared.limits.max_rooms,
                "rooms",
            )?
            .keep();
            let id: Id = Id::from(room_id);
            let mut room = Room::new(id.clone(), now);
            // Above what the room's watchers were last sent, if it existed
            // before: versions only grow on their streams.
            if let Some(seen) = self.shared.hub.version(room_id) {
                room.version = room.version.max(seen);
            }
            rooms.insert(id, room);
        }
        Ok(rooms.get_mut(room_id).expect("present"))
    }

    /// Ends a session at once. Unknown sessions, a session id now owned by
    /// another user, or another incarnation of it are left alone: disconnect
    /// is idempotent.
    pub fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: Option<u64>,
    ) -> Result<(), Error> {
        let limits = &self.shared.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        limits.check_id("session_id", session_id)?;
        let now = self.shared.clock.now();
        let mut guard = self.shared.room_shard(room_id);
        let shard = &mut *guard;
        let Some(room) = shard.rooms.get_mut(room_id) else {
            return Ok(());
        };
        match room.sessions.get(session_id) {
            Some(session)
                if &*session.user == user_id
                    && incarnation.is_none_or(|i| i == session.incarnation) => {}
            _ => return Ok(()),
        }
        ActivityCounters::bump(&self.shared.counters.sessions_disconnected);
        // Closing one of a user's two tabs changes nothing visible.
        if self.end_session(room, &mut shard.purges, session_id, now) {
            self.changed(room, now);
        }
        Ok(())
    }

    /// Removes a session from its room; turns its user offline if it was
    /// their last one. Returns true then: the caller publishes the change.
    pub(super) fn end_session(
        &self,
        room: &mut Room,
        purges: &mut std::collections::BinaryHeap<Reverse<Due>>,
        session_id: &str,
        now: Millis,
    ) -> bool {
        let Some((session_key, session)) = room.sessions.remove_entry(session_id) else {
            return false;
        };
        self.shared.live_sessions.fetch_sub(1, Ordering::Relaxed);
        self.shared.session_index(&session_key).remove(&session_key);
        self.unlist_user(&session.user, &room.id, 1, false);
        let Some(user) = room.users.get_mut(&session.user) else {
            return false;
        };
        user.sessions -= 1;
        if user.sessions > 0 {
            return false;
        }
        let rank = Rank::offline(now, user.rank.seq());
        let queue_purge = !user.purge_queued;
        user.purge_queued = true;
        room.rerank(&session.user, rank);
        room.online -= 1;
        if queue_purge {
            let retention = self.shared.limits.retention.as_millis() as Millis;
            purges.push(Reverse(Due {
                at: now.saturating_add(retention),
                room: room.id.clone(),
                key: session.user,
            }));
        }
        true
    }

    /// Updates a user's index entry: `sessions` of theirs ended, and when
    /// `leave_room`, they are no longer listed in `room_id`.
    pub(super) fn unlist_user(
        &self,
        user_id: &str,
        room_id: &str,
        sessions: u32,
        leave_room: bool,
    ) {
        let mut index = self.shared.user_index(user_id);
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
        self.changed(room, now);
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
                ActivityCounters::bump(&self.shared.counters.sessions_removed);
            }
        }
        self.unlist_user(&user_key, &room.id, user.sessions, true);
        self.changed(room, now);
        self.shared.drop_if_empty(shard, room_id);
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
            ActivityCounters::bump(&self.shared.counters.sessions_removed);
        }
        self.shared
            .live_sessions
            .fetch_sub(room.sessions.len(), Ordering::Relaxed);
        for (user_id, user) in &room.users {
            self.unlist_user(user_id, &room.id, user.sessions, true);
        }
        room.sessions = HashMap::new();
        room.users = HashMap::new();
        room.order.clear();
        room.online = 0;
        self.changed(room, now);
        self.shared.drop_if_empty(shard, room_id);
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
            None => self.empty_room(room_id, now),
        })
    }

    /// The rooms where the user is listed, in [`user_rooms_order`].
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
        rooms.sort_by(user_rooms_order);
        rooms.truncate(limit);
        Ok(rooms)
    }

    /// Subscribes to a room's snapshots: the current one first, then the
    /// latest after each change. Works on a room nobody is in.
    pub fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        self.shared.limits.check_id("room_id", room_id)?;
        let now = self.shared.clock.now();
        let cap = self.shared.limits.max_list_limit as usize;
        // The room's lock is held while subscribing: no change can slip in
        // between the first snapshot and the subscription.
        let guard = self.shared.room_shard(room_id);
        // (`current` runs only for a room not watched yet, under the hub's
        // lock: nothing in it may call the hub.)
        self.shared
            .hub
            .subscribe(room_id, || match guard.rooms.get(room_id) {
                Some(room) => room.snapshot(cap, false),
                None => Snapshot::empty(Id::from(room_id), version_floor(now)),
            })
    }

    /// The listing of a room nobody is in: its version is what its watchers
    /// here were sent last, or the wall-clock floor.
    fn empty_room(&self, room_id: &str, now: Millis) -> Snapshot {
        let seen = self.shared.hub.version(room_id).unwrap_or(0);
        Snapshot::empty(Id::from(room_id), version_floor(now).max(seen))
    }

    /// Records a change to the room's listing: a new version, and a snapshot
    /// for its watchers now or at the end of its coalescing window.
    pub(super) fn changed(&self, room: &mut Room, now: Millis) {
        room.version = (room.version + 1).max(version_floor(now));
        if self.shared.hub.changed(&room.id, now) == Change::Publish {
            let cap = self.shared.limits.max_list_limit as usize;
            self.shared.hub.publish(room.snapshot(cap, false));
        }
    }
}
