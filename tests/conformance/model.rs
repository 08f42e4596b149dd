//! A plain model of the presence semantics (`docs/semantics.md`), and the
//! property test that drives a store and the model with the same random
//! operations and compares everything the API shows after each one:
//! listings (order, online, last seen, data, counts), online-only and
//! limited listings, a user's rooms, versions (growing exactly when the
//! listing changes), watch streams (no stale or identical snapshots, ending
//! at the listing), live counts, errors (validation, conflicts, limits)
//! and restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use presenced::presence::{
    Clock, Error, Limits, ManualClock, Millis, Snapshot, Store, Subscription,
};
use proptest::prelude::*;
use tokio_stream::StreamExt;

use super::Harness;

pub const ROOMS: u8 = 3;
pub const USERS: u8 = 4;
pub const SESSIONS: u8 = 6;
const RETENTION_MS: Millis = 9_000;

/// The limits the property test runs under: small, so every one trips.
pub fn limits() -> Limits {
    Limits {
        max_id_bytes: 8,
        max_data_bytes: 24,
        retention: Duration::from_millis(RETENTION_MS),
        // No coalescing window: the model expires sessions exactly at their
        // deadline, and publishes every change.
        snapshot_interval: Duration::ZERO,
        max_sessions_per_user_room: 2,
        max_sessions_per_user: 3,
        max_rooms_per_user: 2,
        max_sessions: 7,
        max_rooms: 2,
        ..Limits::default()
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Heartbeat {
        room: u8,
        user: u8,
        session: u8,
        secs: u8,
    },
    /// A heartbeat the store must refuse (bad id or interval).
    Invalid {
        kind: u8,
    },
    Disconnect {
        room: u8,
        user: u8,
        session: u8,
        stale: bool,
    },
    Advance {
        ms: u16,
    },
    /// Time passes but nothing is swept: deadlines pass unseen.
    AdvanceUnswept {
        ms: u16,
    },
    Update {
        room: u8,
        user: u8,
        data: u8,
    },
    RemoveUser {
        room: u8,
        user: u8,
    },
    RemoveRoom {
        room: u8,
    },
    Restart,
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..ROOMS, 0..USERS, 0..SESSIONS, 1..3u8).prop_map(|(room, user, session, secs)| Op::Heartbeat { room, user, session, secs }),
        1 => (0..5u8).prop_map(|kind| Op::Invalid { kind }),
        2 => (0..ROOMS, 0..USERS, 0..SESSIONS, any::<bool>()).prop_map(|(room, user, session, stale)| Op::Disconnect { room, user, session, stale }),
        3 => (0..4000u16).prop_map(|ms| Op::Advance { ms }),
        1 => (0..4000u16).prop_map(|ms| Op::AdvanceUnswept { ms }),
        2 => (0..ROOMS, 0..USERS, 0..4u8).prop_map(|(room, user, data)| Op::Update { room, user, data }),
        1 => (0..ROOMS, 0..USERS).prop_map(|(room, user)| Op::RemoveUser { room, user }),
        1 => (0..ROOMS).prop_map(|room| Op::RemoveRoom { room }),
        1 => Just(Op::Restart),
    ]
}

fn room_id(r: u8) -> String {
    format!("r{r}")
}
fn user_id(u: u8) -> String {
    format!("u{u}")
}
fn session_id(s: u8) -> String {
    format!("s{s}")
}

/// The data of `Update { data }`: 0 clears, 3 is over the size limit.
fn data(n: u8) -> serde_json::Map<String, serde_json::Value> {
    let value = match n {
        0 => serde_json::json!({}),
        1 => serde_json::json!({"typing": true}),
        2 => serde_json::json!({"colour": "#f80"}),
        _ => serde_json::json!({"text": "far too long for the limit"}),
    };
    value.as_object().unwrap().clone()
}

/// What a request got wrong, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(&'static str),
    Conflict(&'static str),
    NotFound,
    Limit(&'static str),
}

fn refusal(err: &Error) -> Refusal {
    match err {
        Error::InvalidArgument { field, .. } => Refusal::Invalid(field),
        Error::SessionConflict { other, .. } => Refusal::Conflict(other),
        Error::UserNotInRoom { .. } => Refusal::NotFound,
        Error::LimitReached { what, .. } => Refusal::Limit(what),
        other => panic!("the store failed: {other}"),
    }
}

#[derive(Debug, Clone)]
struct MSession {
    deadline: Millis,
    ttl: Millis,
    /// The model's count of this session id's lives (to test stale tokens).
    life: u64,
}

#[derive(Debug, Default)]
struct MUser {
    sessions: BTreeMap<u8, MSession>,
    seq: u64,
    since: Millis,
    data: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Default)]
struct MRoom {
    users: BTreeMap<u8, MUser>,
    next_seq: u64,
}

/// One row of a listing: user, online, last seen, data.
type Row = (
    String,
    bool,
    Option<Millis>,
    Option<serde_json::Map<String, serde_json::Value>>,
);

#[derive(Default)]
pub struct Model {
    rooms: BTreeMap<u8, MRoom>,
    /// Live (not yet ended) session → (room, user).
    owners: HashMap<u8, (u8, u8)>,
    /// Lives started per session id.
    lives: HashMap<u8, u64>,
}

impl Model {
    fn live_sessions(&self) -> usize {
        self.owners.len()
    }

    fn user_sessions(&self, user: u8) -> usize {
        self.owners.values().filter(|(_, u)| *u == user).count()
    }

    fn user_rooms(&self, user: u8) -> usize {
        self.rooms
            .values()
            .filter(|r| r.users.contains_key(&user))
            .count()
    }

    /// Ends a session; true when its user went offline.
    fn end(&mut self, now: Millis, session: u8) -> bool {
        let Some((room, user)) = self.owners.remove(&session) else {
            return false;
        };
        let u = self
            .rooms
            .get_mut(&room)
            .unwrap()
            .users
            .get_mut(&user)
            .unwrap();
        u.sessions.remove(&session);
        if u.sessions.is_empty() {
            u.since = now;
            true
        } else {
            false
        }
    }

    /// A heartbeat at `now`: the session's life on success.
    fn heartbeat(
        &mut self,
        now: Millis,
        room: u8,
        user: u8,
        session: u8,
        secs: u8,
    ) -> Result<u64, Refusal> {
        let ttl = u64::from(secs) * 2_500;
        if let Some(&(r, u)) = self.owners.get(&session) {
            if r != room {
                return Err(Refusal::Conflict("room"));
            }
            if u != user {
                return Err(Refusal::Conflict("user"));
            }
            let s = self
                .rooms
                .get_mut(&r)
                .unwrap()
                .users
                .get_mut(&u)
                .unwrap()
                .sessions
                .get_mut(&session)
                .unwrap();
            if s.deadline > now {
                s.deadline = now + ttl;
                s.ttl = ttl;
                return Ok(s.life);
            }
            // Expired, not swept yet: it is over; this heartbeat starts anew.
            self.end(now, session);
        }
        let l = limits();
        let listed = self
            .rooms
            .get(&room)
            .is_some_and(|r| r.users.contains_key(&user));
        let in_room = self
            .rooms
            .get(&room)
            .and_then(|r| r.users.get(&user))
            .map_or(0, |u| u.sessions.len());
        if in_room >= l.max_sessions_per_user_room {
            return Err(Refusal::Limit("sessions per user in a room"));
        }
        if self.user_sessions(user) >= l.max_sessions_per_user {
            return Err(Refusal::Limit("sessions per user"));
        }
        if !listed && self.user_rooms(user) >= l.max_rooms_per_user {
            return Err(Refusal::Limit("rooms per user"));
        }
        if self.live_sessions() >= l.max_sessions {
            return Err(Refusal::Limit("sessions"));
        }
        if !self.rooms.contains_key(&room) && self.rooms.len() >= l.max_rooms {
            return Err(Refusal::Limit("rooms"));
        }
        let life = self.lives.entry(session).or_default();
        *life += 1;
        let life = *life;
        let r = self.rooms.entry(room).or_default();
        let seq = r.next_seq;
        let u = r.users.entry(user).or_default();
        if u.sessions.is_empty() {
            u.seq = seq;
            r.next_seq += 1;
        }
        u.sessions.insert(
            session,
            MSession {
                deadline: now + ttl,
                ttl,
                life,
            },
        );
        self.owners.insert(session, (room, user));
        Ok(life)
    }

    /// Ends `session` of (room, user) if its life is `life` (any if None).
    fn disconnect(&mut self, now: Millis, room: u8, user: u8, session: u8, life: Option<u64>) {
        if self.owners.get(&session) != Some(&(room, user)) {
            return;
        }
        let current = self.rooms[&room].users[&user].sessions[&session].life;
        if life.is_some_and(|l| l != current) {
            return;
        }
        self.end(now, session);
    }

    fn sweep(&mut self, now: Millis) {
        let expired: Vec<u8> = self
            .rooms
            .values()
            .flat_map(|r| r.users.values())
            .flat_map(|u| u.sessions.iter())
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for s in expired {
            self.end(now, s);
        }
        for room in self.rooms.values_mut() {
            room.users
                .retain(|_, u| !u.sessions.is_empty() || u.since + RETENTION_MS > now);
        }
        self.rooms.retain(|_, r| !r.users.is_empty());
    }

    fn update(&mut self, room: u8, user: u8, n: u8) -> Result<(), Refusal> {
        let d = data(n);
        if serde_json::to_vec(&d).unwrap().len() > limits().max_data_bytes {
            return Err(Refusal::Invalid("data"));
        }
        let u = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.users.get_mut(&user))
            .ok_or(Refusal::NotFound)?;
        u.data = (!d.is_empty()).then_some(d);
        Ok(())
    }

    fn remove_user(&mut self, room: u8, user: u8) {
        if let Some(r) = self.rooms.get_mut(&room) {
            if let Some(u) = r.users.remove(&user) {
                for s in u.sessions.keys() {
                    self.owners.remove(s);
                }
            }
            if r.users.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    fn remove_room(&mut self, room: u8) {
        if let Some(r) = self.rooms.remove(&room) {
            for s in r.users.values().flat_map(|u| u.sessions.keys()) {
                self.owners.remove(s);
            }
        }
    }

    /// A restart: with `grace`, every session lives at least one more
    /// interval (its lifetime / 2.5) from now.
    fn restart(&mut self, now: Millis, grace: bool) {
        if !grace {
            return;
        }
        for s in self
            .rooms
            .values_mut()
            .flat_map(|r| r.users.values_mut())
            .flat_map(|u| u.sessions.values_mut())
        {
            s.deadline = s.deadline.max(now + s.ttl * 2 / 5);
        }
    }

    fn listing(&self, room: u8) -> Vec<Row> {
        let Some(r) = self.rooms.get(&room) else {
            return Vec::new();
        };
        let mut online: Vec<_> = r
            .users
            .iter()
            .filter(|(_, u)| !u.sessions.is_empty())
            .collect();
        online.sort_by_key(|(_, u)| u.seq);
        let mut offline: Vec<_> = r
            .users
            .iter()
            .filter(|(_, u)| u.sessions.is_empty())
            .collect();
        offline.sort_by_key(|(_, u)| (std::cmp::Reverse(u.since), u.seq));
        online
            .into_iter()
            .map(|(id, u)| (user_id(*id), true, None, u.data.clone()))
            .chain(
                offline
                    .into_iter()
                    .map(|(id, u)| (user_id(*id), false, Some(u.since), u.data.clone())),
            )
            .collect()
    }

    /// A user's rooms: (room, last seen), online first by id, then most
    /// recently left.
    fn user_listing(&self, user: u8) -> Vec<(String, Option<Millis>)> {
        let mut rooms: Vec<(String, Option<Millis>)> = self
            .rooms
            .iter()
            .filter_map(|(id, r)| {
                let u = r.users.get(&user)?;
                Some((room_id(*id), (u.sessions.is_empty()).then_some(u.since)))
            })
            .collect();
        rooms.sort_by(|a, b| match (a.1, b.1) {
            (None, None) => a.0.cmp(&b.0),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.0.cmp(&b.0)),
        });
        rooms
    }
}

fn rows(snapshot: &Snapshot) -> Vec<Row> {
    snapshot
        .users
        .iter()
        .map(|u| {
            (
                u.user_id.to_string(),
                u.online(),
                u.last_disconnected,
                u.data.as_deref().cloned(),
            )
        })
        .collect()
}

/// What a watcher of one room has seen.
struct Watcher {
    sub: Subscription,
    last: Option<Arc<Snapshot>>,
}

impl Watcher {
    /// Reads what is ready; checks each snapshot is newer than the last and
    /// looks different from it.
    fn drain(&mut self, room: u8) -> Result<(), TestCaseError> {
        while let Some(next) = self.sub.next().now_or_never() {
            let snap = next.expect("the stream goes on").expect("no store error");
            if let Some(last) = &self.last {
                prop_assert!(
                    snap.version > last.version,
                    "r{}: version {} after {}",
                    room,
                    snap.version,
                    last.version
                );
                prop_assert!(
                    !snap.same_view(last, usize::MAX),
                    "r{}: two identical snapshots in a row",
                    room
                );
            }
            self.last = Some(snap);
        }
        Ok(())
    }
}

/// (room, session, life) → the store's incarnation: unique per room and
/// session id.
type Incarnations = HashMap<(u8, u8, u64), u64>;

/// One property-test case: the same operations on a fresh store and the
/// model, everything compared after each.
pub async fn run_case<H: Harness>(h: &H, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(1_800_000_000_000);
    let mut store = h.open(limits(), &clock).await;
    let mut model = Model::default();
    let mut incarnations: Incarnations = HashMap::new();
    let mut watchers = open_watchers(&store).await;
    let mut versions: HashMap<u8, (Vec<Row>, u64)> = HashMap::new();
    for op in ops {
        let now = clock.now();
        match op {
            Op::Heartbeat {
                room,
                user,
                session,
                secs,
            } => {
                let got = store
                    .heartbeat(
                        &room_id(room),
                        &user_id(user),
                        &session_id(session),
                        Duration::from_secs(secs.into()),
                    )
                    .await;
                let want = model.heartbeat(now, room, user, session, secs);
                match (&got, &want) {
                    (Ok(lease), Ok(life)) => {
                        prop_assert_eq!(lease.deadline, now + u64::from(secs) * 2_500);
                        let known = *incarnations
                            .entry((room, session, *life))
                            .or_insert(lease.incarnation);
                        prop_assert_eq!(known, lease.incarnation, "one incarnation per life");
                        let other_lives = incarnations
                            .iter()
                            .filter(|((r, s, l), i)| {
                                (*r, *s) == (room, session) && l != life && **i == lease.incarnation
                            })
                            .count();
                        prop_assert_eq!(other_lives, 0, "a new life gets a new incarnation");
                    }
                    (Err(e), Err(r)) => prop_assert_eq!(&refusal(e), r),
                    _ => prop_assert!(
                        false,
                        "heartbeat r{} u{} s{}: store {:?}, model {:?}",
                        room,
                        user,
                        session,
                        got,
                        want
                    ),
                }
            }
            Op::Invalid { kind } => {
                let (r, u, s, i, field) = match kind {
                    0 => ("", "u0", "s0", 1, "room_id"),
                    1 => ("r0", "u\0", "s0", 1, "user_id"),
                    2 => ("r0", "u0", "s-too-long", 1, "session_id"),
                    3 => ("r0", "u0", "s\n", 1, "session_id"),
                    _ => ("r0", "u0", "s0", 0, "interval"),
                };
                let err = store
                    .heartbeat(r, u, s, Duration::from_secs(i))
                    .await
                    .unwrap_err();
                prop_assert_eq!(refusal(&err), Refusal::Invalid(field));
            }
            Op::Disconnect {
                room,
                user,
                session,
                stale,
            } => {
                let life = model.lives.get(&session).copied().unwrap_or(0);
                let life = if stale { life.saturating_sub(1) } else { life };
                let incarnation = incarnations.get(&(room, session, life)).copied();
                if stale && incarnation.is_none() {
                    continue;
                }
                store
                    .disconnect(
                        &room_id(room),
                        &user_id(user),
                        &session_id(session),
                        incarnation,
                    )
                    .await
                    .unwrap();
                model.disconnect(now, room, user, session, incarnation.map(|_| life));
            }
            Op::Advance { ms } => {
                clock.advance(ms.into());
                h.sweep(&store).await;
                model.sweep(clock.now());
            }
            Op::AdvanceUnswept { ms } => clock.advance(ms.into()),
            Op::Update {
                room,
                user,
                data: n,
            } => {
                let got = store
                    .update_room_user(&room_id(room), &user_id(user), data(n))
                    .await;
                let want = model.update(room, user, n);
                prop_assert_eq!(got.map_err(|e| refusal(&e)), want);
            }
            Op::RemoveUser { room, user } => {
                store
                    .remove_room_user(&room_id(room), &user_id(user))
                    .await
                    .unwrap();
                model.remove_user(room, user);
            }
            Op::RemoveRoom { room } => {
                store.remove_room(&room_id(room)).await.unwrap();
                model.remove_room(room);
            }
            Op::Restart => {
                drop(watchers);
                store = h.restart(store, limits(), &clock).await;
                model.restart(clock.now(), H::RESTART_GRACE);
                watchers = open_watchers(&store).await;
                // Versions only grow across a restart (they may jump).
                for (room, (rows, version)) in versions.drain() {
                    if rows.is_empty() {
                        continue;
                    }
                    let now = store.list_room(&room_id(room), false, 1000).await.unwrap();
                    prop_assert!(
                        now.version >= version,
                        "r{}: version went back at the restart",
                        room
                    );
                }
            }
        }
        h.settle(&store).await;
        check(h, &store, &model, &mut watchers, &mut versions).await?;
    }
    Ok(())
}

/// Rooms with a watcher: as many as the watched-rooms bound (`max_rooms`)
/// allows.
const WATCHED: u8 = 2;

async fn open_watchers<S: Store>(store: &S) -> Vec<Watcher> {
    let mut watchers = Vec::new();
    for room in 0..WATCHED {
        let sub = store.watch(&room_id(room)).await.unwrap();
        watchers.push(Watcher { sub, last: None });
    }
    watchers
}

async fn check<H: Harness>(
    h: &H,
    store: &H::S,
    model: &Model,
    watchers: &mut [Watcher],
    versions: &mut HashMap<u8, (Vec<Row>, u64)>,
) -> Result<(), TestCaseError> {
    for room in 0..ROOMS {
        let snap = store.list_room(&room_id(room), false, 1000).await.unwrap();
        let want = model.listing(room);
        prop_assert_eq!(
            snap.online_count as usize,
            want.iter().filter(|u| u.1).count(),
            "r{} online",
            room
        );
        prop_assert_eq!(snap.total_count as usize, want.len(), "r{} total", room);
        prop_assert_eq!(rows(&snap), want.clone(), "r{}", room);
        let online = store.list_room(&room_id(room), true, 1).await.unwrap();
        let first_online: Vec<Row> = want.iter().filter(|u| u.1).take(1).cloned().collect();
        prop_assert_eq!(
            rows(&online),
            first_online,
            "r{} online only, limit 1",
            room
        );
        // Versions grow exactly when the listing changes.
        if !want.is_empty() {
            if let Some((before, version)) =
                versions.get(&room).filter(|(rows, _)| !rows.is_empty())
            {
                if *before == want {
                    prop_assert_eq!(
                        snap.version,
                        *version,
                        "r{}: nothing changed, same version",
                        room
                    );
                } else {
                    prop_assert!(
                        snap.version > *version,
                        "r{}: changed, the version grows",
                        room
                    );
                }
            }
        }
        versions.insert(room, (want.clone(), snap.version));
        // The watcher ends where the listing is.
        if let Some(watcher) = watchers.get_mut(room as usize) {
            watcher.drain(room)?;
            let last = watcher.last.as_ref().expect("the current snapshot at once");
            prop_assert_eq!(rows(last), want, "r{}: the watcher is behind", room);
        }
    }
    for user in 0..USERS {
        let got: Vec<(String, Option<Millis>)> = store
            .list_user(&user_id(user), false, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.room_id.to_string(), r.last_disconnected))
            .collect();
        let want = model.user_listing(user);
        prop_assert_eq!(&got, &want, "u{} rooms", user);
        let online = store.list_user(&user_id(user), true, 1).await.unwrap();
        prop_assert_eq!(
            online.len(),
            want.iter().filter(|r| r.1.is_none()).take(1).count(),
            "u{} online rooms, limit 1",
            user
        );
    }
    let (sessions, rooms) = h.counts(store).await;
    prop_assert_eq!(sessions, model.live_sessions(), "live sessions");
    prop_assert_eq!(rooms, model.rooms.len(), "rooms");
    Ok(())
}

/// Property-test cases per store.
pub const CASES: u32 = 200;
