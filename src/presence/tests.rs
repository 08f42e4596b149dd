//! Engine tests on a manual clock: no network, no sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio_stream::StreamExt;

use super::*;

const T0: Millis = 1_800_000_000_000;
const SEC: Duration = Duration::from_secs(1);

fn engine() -> (Memory, ManualClock) {
    engine_with(Limits::default())
}

fn engine_with(limits: Limits) -> (Memory, ManualClock) {
    let clock = ManualClock::new(T0);
    (Memory::new(limits, Arc::new(clock.clone())), clock)
}

/// `(user, online)` pairs of the room's listing, in order.
fn listing(m: &Memory, room: &str) -> Vec<(String, bool)> {
    m.list_room(room, false, 1000)
        .unwrap()
        .users
        .iter()
        .map(|u| (u.user_id.to_string(), u.online()))
        .collect()
}

fn users(pairs: &[(&str, bool)]) -> Vec<(String, bool)> {
    pairs.iter().map(|(u, o)| (u.to_string(), *o)).collect()
}

/// The next snapshot a subscription holds, if one is ready now.
async fn ready(sub: &mut Subscription) -> Option<Arc<Snapshot>> {
    tokio::time::timeout(Duration::from_millis(20), sub.next())
        .await
        .ok()
        .flatten()
}

#[test]
fn two_tabs_one_closed_is_still_online() {
    let (m, clock) = engine();
    m.heartbeat("r", "alice", "tab1", SEC).unwrap();
    m.heartbeat("r", "alice", "tab2", SEC).unwrap();
    m.disconnect("r", "alice", "tab1");
    assert_eq!(listing(&m, "r"), users(&[("alice", true)]));
    clock.advance(700);
    m.disconnect("r", "alice", "tab2");
    let snap = m.list_room("r", false, 0).unwrap();
    assert_eq!(snap.users[0].last_disconnected, Some(T0 + 700));
    assert_eq!((snap.online_count, snap.total_count), (0, 1));
    assert_eq!(m.stats().sessions, 0);
}

#[test]
fn ordering_online_by_arrival_then_offline_most_recent_first() {
    let (m, clock) = engine();
    for (i, u) in ["a", "b", "c", "d"].iter().enumerate() {
        m.heartbeat("r", u, &format!("s{i}"), SEC).unwrap();
        clock.advance(10);
    }
    m.disconnect("r", "b", "s1");
    clock.advance(10);
    m.disconnect("r", "c", "s2");
    assert_eq!(
        listing(&m, "r"),
        users(&[("a", true), ("d", true), ("c", false), ("b", false)])
    );
    // b comes back: it goes to the end of the online users.
    m.heartbeat("r", "b", "s1b", SEC).unwrap();
    assert_eq!(
        listing(&m, "r"),
        users(&[("a", true), ("d", true), ("b", true), ("c", false)])
    );
    // A heartbeat of a live session does not move anyone.
    m.heartbeat("r", "a", "s0", SEC).unwrap();
    assert_eq!(listing(&m, "r")[0], ("a".to_string(), true));
    // online_only and limit.
    let snap = m.list_room("r", true, 2).unwrap();
    assert_eq!(snap.users.len(), 2);
    assert_eq!((snap.online_count, snap.total_count), (3, 4));
    assert_eq!(m.list_room("r", true, 0).unwrap().users.len(), 3);
}

#[test]
fn expiry_happens_exactly_at_two_and_a_half_intervals() {
    let (m, clock) = engine();
    m.heartbeat("r", "u", "s", Duration::from_secs(4)).unwrap();
    clock.advance(9_999);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("u", true)]));
    clock.advance(1);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("u", false)]));
    let snap = m.list_room("r", false, 0).unwrap();
    assert_eq!(snap.users[0].last_disconnected, Some(T0 + 10_000));
}

#[test]
fn heartbeats_push_the_deadline_and_shorter_intervals_take_effect() {
    let (m, clock) = engine();
    m.heartbeat("r", "u", "s", Duration::from_secs(10)).unwrap();
    clock.advance(20_000);
    m.heartbeat("r", "u", "s", SEC).unwrap(); // deadline now T0 + 22.5 s
    clock.advance(2_499);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("u", true)]));
    clock.advance(1);
    assert_eq!(m.sweep(), Some(T0 + 25_000), "the stale 25 s entry is next");
    assert_eq!(listing(&m, "r"), users(&[("u", false)]));
}

#[test]
fn sweep_reports_the_next_deadline() {
    let (m, clock) = engine();
    assert_eq!(m.sweep(), None);
    m.heartbeat("r", "u", "s", SEC).unwrap();
    assert_eq!(m.sweep(), Some(T0 + 2_500));
    clock.advance(1_000);
    m.heartbeat("r", "u", "s", SEC).unwrap();
    clock.advance(1_500);
    // The queued entry is stale: it is re-queued at the new deadline.
    assert_eq!(m.sweep(), Some(T0 + 3_500));
}

#[test]
fn a_rooms_sessions_expire_in_batches_one_window_apart() {
    // Default coalescing window: 50 ms.
    let (m, clock) = engine();
    m.heartbeat("r", "a", "sa", SEC).unwrap(); // due at T0 + 2500
    clock.advance(20);
    m.heartbeat("r", "b", "sb", SEC).unwrap(); // due at T0 + 2520
    m.heartbeat("q", "c", "sc", SEC).unwrap(); // another room, also T0 + 2520
    clock.advance(2_480);
    // "a" ends; the room is looked at again one window later, not at 2520.
    assert_eq!(m.sweep(), Some(T0 + 2_520));
    assert_eq!(listing(&m, "r"), users(&[("b", true), ("a", false)]));
    clock.advance(20);
    assert_eq!(m.sweep(), Some(T0 + 2_550));
    assert_eq!(
        listing(&m, "q"),
        users(&[("c", false)]),
        "its own room's timing"
    );
    assert_eq!(listing(&m, "r"), users(&[("b", true), ("a", false)]));
    clock.advance(30);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("b", false), ("a", false)]));
    assert_eq!(m.stats().sessions, 0);
}

#[test]
fn without_a_window_sessions_expire_at_their_deadline() {
    let (m, clock) = engine_with(Limits {
        snapshot_interval: Duration::ZERO,
        ..Limits::default()
    });
    m.heartbeat("r", "a", "sa", SEC).unwrap();
    clock.advance(1);
    m.heartbeat("r", "b", "sb", SEC).unwrap();
    clock.advance(2_499);
    assert_eq!(m.sweep(), Some(T0 + 2_501));
    clock.advance(1);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("b", false), ("a", false)]));
    assert_eq!(m.stats().sessions, 0);
}

#[test]
fn offline_users_are_kept_for_the_retention_then_forgotten() {
    let (m, clock) = engine_with(Limits {
        retention: Duration::from_secs(60),
        ..Limits::default()
    });
    m.heartbeat("r", "u", "s", SEC).unwrap();
    m.disconnect("r", "u", "s");
    clock.advance(59_999);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("u", false)]));
    assert_eq!(m.list_user("u", false, 0).unwrap().len(), 1);
    clock.advance(1);
    m.sweep();
    assert!(listing(&m, "r").is_empty());
    assert!(m.list_user("u", false, 0).unwrap().is_empty());
    assert_eq!(m.stats().rooms, 0, "an empty unwatched room is forgotten");
}

#[test]
fn rejoining_cancels_the_purge() {
    let (m, clock) = engine_with(Limits {
        retention: Duration::from_secs(60),
        ..Limits::default()
    });
    m.heartbeat("r", "u", "s", SEC).unwrap();
    m.disconnect("r", "u", "s");
    clock.advance(30_000);
    m.heartbeat("r", "u", "s2", Duration::from_secs(600))
        .unwrap();
    clock.advance(40_000);
    m.sweep();
    assert_eq!(listing(&m, "r"), users(&[("u", true)]));
}

#[test]
fn session_ids_cannot_move_to_another_room_or_user() {
    let (m, _) = engine();
    m.heartbeat("r1", "u", "s", SEC).unwrap();
    assert!(matches!(
        m.heartbeat("r2", "u", "s", SEC),
        Err(Error::SessionConflict { other: "room", .. })
    ));
    assert!(matches!(
        m.heartbeat("r1", "v", "s", SEC),
        Err(Error::SessionConflict { other: "user", .. })
    ));
    // Once ended, the id is free again.
    m.disconnect("r1", "u", "s");
    m.heartbeat("r2", "u", "s", SEC).unwrap();
    // Disconnect with the wrong user is a no-op, not an error.
    m.disconnect("r2", "v", "s");
    assert_eq!(listing(&m, "r2"), users(&[("u", true)]));
}

#[test]
fn input_is_bounded() {
    let (m, _) = engine_with(Limits {
        max_id_bytes: 8,
        max_data_bytes: 20,
        max_sessions_per_user_room: 2,
        ..Limits::default()
    });
    let err = m.heartbeat("", "u", "s", SEC).unwrap_err();
    assert_eq!(err.to_string(), "room_id must not be empty");
    let err = m.heartbeat("r", "123456789", "s", SEC).unwrap_err();
    assert_eq!(
        err.to_string(),
        "user_id is 9 bytes long, the limit is 8 bytes"
    );
    let err = m
        .heartbeat("r", "u", "s", Duration::from_millis(999))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "interval is 999ms, it must be from 1s to 10m"
    );
    assert!(m
        .heartbeat("r", "u", "s", Duration::from_secs(601))
        .is_err());
    m.heartbeat("r", "u", "s1", SEC).unwrap();
    m.heartbeat("r", "u", "s2", SEC).unwrap();
    assert!(matches!(
        m.heartbeat("r", "u", "s3", SEC),
        Err(Error::LimitReached { limit: 2, .. })
    ));
    let big = serde_json::json!({"text": "x".repeat(20)});
    let err = m
        .update_room_user("r", "u", big.as_object().unwrap().clone())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "data is 31 bytes as JSON, the limit is 20 bytes"
    );
    // Nothing was lost along the way.
    assert_eq!(m.stats().sessions, 2);
}

#[test]
fn data_is_listed_and_cleared_and_needs_a_listed_user() {
    let (m, _) = engine();
    let data = serde_json::json!({"typing": true});
    assert!(matches!(
        m.update_room_user("r", "u", data.as_object().unwrap().clone()),
        Err(Error::UserNotInRoom { .. })
    ));
    m.heartbeat("r", "u", "s", SEC).unwrap();
    m.update_room_user("r", "u", data.as_object().unwrap().clone())
        .unwrap();
    let snap = m.list_room("r", false, 0).unwrap();
    assert_eq!(snap.users[0].data.as_deref(), data.as_object());
    m.update_room_user("r", "u", serde_json::Map::new())
        .unwrap();
    assert_eq!(m.list_room("r", false, 0).unwrap().users[0].data, None);
}

#[test]
fn remove_room_user_and_remove_room() {
    let (m, _) = engine();
    m.heartbeat("r", "a", "a1", SEC).unwrap();
    m.heartbeat("r", "a", "a2", SEC).unwrap();
    m.heartbeat("r", "b", "b1", SEC).unwrap();
    m.heartbeat("q", "a", "a3", SEC).unwrap();
    m.remove_room_user("r", "a").unwrap();
    assert_eq!(listing(&m, "r"), users(&[("b", true)]));
    assert_eq!(m.stats().sessions, 2);
    // The removed sessions' ids are free, and the user's other room is intact.
    m.heartbeat("q", "a", "a1", SEC).unwrap();
    assert_eq!(m.list_user("a", false, 0).unwrap().len(), 1);
    m.remove_room("r").unwrap();
    assert!(listing(&m, "r").is_empty());
    assert!(m.list_user("b", false, 0).unwrap().is_empty());
    assert_eq!(m.stats().sessions, 2);
    // Both are idempotent.
    m.remove_room("r").unwrap();
    m.remove_room_user("r", "zed").unwrap();
}

#[test]
fn list_user_online_rooms_first_then_most_recently_left() {
    let (m, clock) = engine();
    for room in ["r1", "r2", "r3", "r4"] {
        m.heartbeat(room, "u", &format!("{room}-s"), SEC).unwrap();
    }
    m.disconnect("r1", "u", "r1-s");
    clock.advance(5);
    m.disconnect("r3", "u", "r3-s");
    let rooms: Vec<_> = m
        .list_user("u", false, 0)
        .unwrap()
        .into_iter()
        .map(|r| (r.room_id.to_string(), r.last_disconnected.is_none()))
        .collect();
    let expect = [("r2", true), ("r4", true), ("r3", false), ("r1", false)];
    assert_eq!(rooms, expect.map(|(r, o)| (r.to_string(), o)).to_vec());
    assert_eq!(m.list_user("u", true, 0).unwrap().len(), 2);
    assert_eq!(m.list_user("u", false, 1).unwrap().len(), 1);
}

#[tokio::test]
async fn watchers_get_the_current_snapshot_then_changes_but_not_heartbeats() {
    let (m, clock) = engine();
    let mut sub = m.watch("r").unwrap();
    let first = ready(&mut sub).await.expect("current snapshot at once");
    assert_eq!(first.total_count, 0);
    m.heartbeat("r", "u", "s", SEC).unwrap();
    let joined = ready(&mut sub).await.expect("join published");
    assert!(joined.version > first.version);
    assert_eq!(joined.online_count, 1);
    clock.advance(1_000);
    m.heartbeat("r", "u", "s", SEC).unwrap();
    m.sweep();
    assert!(
        ready(&mut sub).await.is_none(),
        "a plain heartbeat is silent"
    );
    m.disconnect("r", "u", "s");
    m.sweep();
    let left = ready(&mut sub).await.expect("leave published");
    assert_eq!(left.online_count, 0);
    assert!(left.version > joined.version);
    assert_eq!(m.stats().watchers, 1);
    drop(sub);
    assert_eq!(m.stats().watchers, 0);
}

#[tokio::test]
async fn bursts_are_coalesced_into_one_snapshot_per_window() {
    let (m, clock) = engine();
    let mut sub = m.watch("r").unwrap();
    ready(&mut sub).await.unwrap();
    m.heartbeat("r", "u0", "s0", SEC).unwrap(); // published at once
    assert_eq!(ready(&mut sub).await.unwrap().total_count, 1);
    for i in 1..1000 {
        m.heartbeat("r", &format!("u{i}"), &format!("s{i}"), SEC)
            .unwrap();
    }
    assert!(ready(&mut sub).await.is_none(), "held for the window");
    clock.advance(49);
    m.sweep();
    assert!(ready(&mut sub).await.is_none());
    clock.advance(1);
    m.sweep();
    let all = ready(&mut sub)
        .await
        .expect("one snapshot at the window's end");
    assert_eq!(all.total_count, 1000);
    assert_eq!(all.users.len(), 1000);
    assert!(ready(&mut sub).await.is_none());
}

#[tokio::test]
async fn a_slow_watcher_gets_only_the_latest() {
    let (m, clock) = engine();
    let mut sub = m.watch("r").unwrap();
    for i in 0..20 {
        m.heartbeat("r", &format!("u{i}"), &format!("s{i}"), SEC)
            .unwrap();
        clock.advance(100);
        m.sweep();
    }
    // It never read: what it gets now is the latest state, once.
    let latest = ready(&mut sub).await.unwrap();
    assert_eq!(latest.total_count, 20);
    assert!(ready(&mut sub).await.is_none());
}

#[tokio::test]
async fn remove_room_empties_the_watched_room() {
    let (m, _) = engine();
    m.heartbeat("r", "u", "s", SEC).unwrap();
    let mut sub = m.watch("r").unwrap();
    assert_eq!(ready(&mut sub).await.unwrap().total_count, 1);
    m.remove_room("r").unwrap();
    let empty = ready(&mut sub).await.unwrap();
    assert_eq!(empty.total_count, 0);
    // Watching keeps the empty room; the last watcher leaving forgets it.
    assert_eq!(m.stats().rooms, 1);
    drop(sub);
    assert_eq!(m.stats().rooms, 0);
}

#[test]
fn versions_grow_across_restarts_and_clock_steps_back() {
    let (m, clock) = engine();
    m.heartbeat("r", "u", "s", SEC).unwrap();
    let v1 = m.list_room("r", false, 0).unwrap().version;
    clock.set(T0 - 60_000); // the wall clock steps back a minute
    m.disconnect("r", "u", "s");
    let v2 = m.list_room("r", false, 0).unwrap().version;
    assert!(v2 > v1);
    // A new process (same wall clock) starts above what the old one issued,
    // as long as the old one made fewer than 1000 changes per millisecond.
    let restarted = Memory::new(Limits::default(), Arc::new(ManualClock::new(T0 + 1)));
    restarted.heartbeat("r", "u", "s", SEC).unwrap();
    assert!(restarted.list_room("r", false, 0).unwrap().version > v2);
    assert!(restarted.list_room("empty", false, 0).unwrap().version > v2);
}

// ---- Property test: the engine against a plain model ----

#[derive(Debug, Clone)]
enum Op {
    Heartbeat {
        room: u8,
        user: u8,
        session: u8,
        secs: u8,
    },
    Disconnect {
        room: u8,
        user: u8,
        session: u8,
    },
    Advance {
        ms: u16,
    },
    RemoveUser {
        room: u8,
        user: u8,
    },
    RemoveRoom {
        room: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 0..4u8, 0..6u8, 1..3u8).prop_map(|(room, user, session, secs)| Op::Heartbeat { room, user, session, secs }),
        2 => (0..3u8, 0..4u8, 0..6u8).prop_map(|(room, user, session)| Op::Disconnect { room, user, session }),
        3 => (0..4000u16).prop_map(|ms| Op::Advance { ms }),
        1 => (0..3u8, 0..4u8).prop_map(|(room, user)| Op::RemoveUser { room, user }),
        1 => (0..3u8).prop_map(|room| Op::RemoveRoom { room }),
    ]
}

#[derive(Default, Debug)]
struct ModelUser {
    /// session → deadline
    sessions: BTreeMap<u8, Millis>,
    seq: u64,
    since: Millis,
}

#[derive(Default, Debug)]
struct ModelRoom {
    users: BTreeMap<u8, ModelUser>,
    next_seq: u64,
}

#[derive(Default)]
struct Model {
    rooms: BTreeMap<u8, ModelRoom>,
    /// session → (room, user), for live sessions.
    owners: HashMap<u8, (u8, u8)>,
}

const RETENTION_MS: Millis = 9_000;

impl Model {
    fn heartbeat(&mut self, now: Millis, room: u8, user: u8, session: u8, secs: u8) -> bool {
        if let Some(&(r, u)) = self.owners.get(&session) {
            if (r, u) != (room, user) {
                return false;
            }
        }
        let deadline = now + u64::from(secs) * 2_500;
        let r = self.rooms.entry(room).or_default();
        let seq = r.next_seq;
        let u = r.users.entry(user).or_insert_with(|| ModelUser {
            seq,
            ..ModelUser::default()
        });
        if u.sessions.is_empty() {
            u.seq = seq;
            r.next_seq += 1;
        }
        u.sessions.insert(session, deadline);
        self.owners.insert(session, (room, user));
        true
    }

    fn end(&mut self, now: Millis, room: u8, user: u8, session: u8) {
        if self.owners.get(&session) != Some(&(room, user)) {
            return;
        }
        self.owners.remove(&session);
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
        }
    }

    fn sweep(&mut self, now: Millis) {
        let mut expired: Vec<(u8, u8, u8)> = Vec::new();
        for (&r, room) in &self.rooms {
            for (&u, user) in &room.users {
                for (&s, &deadline) in &user.sessions {
                    if deadline <= now {
                        expired.push((r, u, s));
                    }
                }
            }
        }
        for (r, u, s) in expired {
            self.end(now, r, u, s);
        }
        for room in self.rooms.values_mut() {
            room.users
                .retain(|_, u| !u.sessions.is_empty() || u.since + RETENTION_MS > now);
        }
    }

    fn remove_user(&mut self, room: u8, user: u8) {
        if let Some(r) = self.rooms.get_mut(&room) {
            if let Some(u) = r.users.remove(&user) {
                for s in u.sessions.keys() {
                    self.owners.remove(s);
                }
            }
        }
    }

    fn remove_room(&mut self, room: u8) {
        if let Some(r) = self.rooms.remove(&room) {
            for u in r.users.values() {
                for s in u.sessions.keys() {
                    self.owners.remove(s);
                }
            }
            // Sequence numbers carry on in the engine's room if it is kept,
            // but an unwatched emptied room is dropped: start over.
        }
    }

    fn listing(&self, room: u8) -> Vec<(String, bool, Option<Millis>)> {
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
            .map(|(id, _)| (format!("u{id}"), true, None))
            .chain(
                offline
                    .into_iter()
                    .map(|(id, u)| (format!("u{id}"), false, Some(u.since))),
            )
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn engine_matches_a_simple_model(ops in prop::collection::vec(op(), 1..80)) {
        // No coalescing window: the model expires sessions exactly at
        // their deadline, the engine then too (see the batching test).
        let (m, clock) = engine_with(Limits {
            retention: Duration::from_millis(RETENTION_MS),
            snapshot_interval: Duration::ZERO,
            ..Limits::default()
        });
        let mut model = Model::default();
        for op in ops {
            let now = clock.now();
            match op {
                Op::Heartbeat { room, user, session, secs } => {
                    let ok = m
                        .heartbeat(&format!("r{room}"), &format!("u{user}"), &format!("s{session}"), Duration::from_secs(secs.into()))
                        .is_ok();
                    prop_assert_eq!(ok, model.heartbeat(now, room, user, session, secs));
                }
                Op::Disconnect { room, user, session } => {
                    m.disconnect(&format!("r{room}"), &format!("u{user}"), &format!("s{session}"));
                    model.end(now, room, user, session);
                }
                Op::Advance { ms } => {
                    clock.advance(ms.into());
                    m.sweep();
                    model.sweep(clock.now());
                }
                Op::RemoveUser { room, user } => {
                    m.remove_room_user(&format!("r{room}"), &format!("u{user}")).unwrap();
                    model.remove_user(room, user);
                }
                Op::RemoveRoom { room } => {
                    m.remove_room(&format!("r{room}")).unwrap();
                    model.remove_room(room);
                }
            }
            for room in 0..3u8 {
                let snap = m.list_room(&format!("r{room}"), false, 1000).unwrap();
                let got: Vec<_> = snap
                    .users
                    .iter()
                    .map(|u| (u.user_id.to_string(), u.online(), u.last_disconnected))
                    .collect();
                let want = model.listing(room);
                prop_assert_eq!(snap.online_count as usize, want.iter().filter(|u| u.1).count());
                prop_assert_eq!(snap.total_count as usize, want.len());
                prop_assert_eq!(got, want, "room r{}", room);
            }
            prop_assert_eq!(m.stats().sessions, model.owners.len());
        }
    }
}
