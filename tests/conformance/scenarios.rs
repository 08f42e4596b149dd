//! Named conformance cases, each a function generic over the harness.
//! `for_each!` turns every one into a test of the harness it is given.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use presenced::presence::{Error, Limits, ManualClock, Millis, Snapshot, Store, Subscription};
use tokio_stream::StreamExt;

use super::Harness;

const T0: Millis = 1_800_000_000_000;
const SEC: Duration = Duration::from_secs(1);

/// `(user, online)` pairs of the room's listing, in order.
async fn listing<S: Store>(s: &S, room: &str) -> Vec<(String, bool)> {
    s.list_room(room, false, 1000)
        .await
        .unwrap()
        .users
        .iter()
        .map(|u| (u.user_id.to_string(), u.online()))
        .collect()
}

fn users(pairs: &[(&str, bool)]) -> Vec<(String, bool)> {
    pairs.iter().map(|(u, o)| (u.to_string(), *o)).collect()
}

/// The latest snapshot a subscription holds now, if it got a new one.
fn latest(sub: &mut Subscription) -> Option<Arc<Snapshot>> {
    let mut last = None;
    while let Some(next) = sub.next().now_or_never() {
        last = Some(next.expect("open").expect("no store error"));
    }
    last
}

async fn open<H: Harness>(h: &H, limits: Limits) -> (H::S, ManualClock) {
    let clock = ManualClock::new(T0);
    (h.open(limits, &clock).await, clock)
}

async fn sweep_at<H: Harness>(h: &H, s: &H::S) {
    h.sweep(s).await;
    h.settle(s).await;
}

pub async fn two_tabs_one_closed_is_still_online_and_changes_nothing<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    s.heartbeat("r", "alice", "tab1", SEC).await.unwrap();
    s.heartbeat("r", "alice", "tab2", SEC).await.unwrap();
    let before = s.list_room("r", false, 0).await.unwrap();
    let built = s.activity().snapshots_built;
    let mut watch = s.watch("r").await.unwrap();
    latest(&mut watch).unwrap();
    s.disconnect("r", "alice", "tab1", None).await.unwrap();
    h.settle(&s).await;
    let after = s.list_room("r", false, 0).await.unwrap();
    assert_eq!(after.version, before.version, "nothing visible changed");
    assert!(latest(&mut watch).is_none(), "and nothing was published");
    assert_eq!(
        s.activity().snapshots_built,
        built + 1,
        "only the watch's first"
    );
    assert_eq!(listing(&s, "r").await, users(&[("alice", true)]));
    clock.advance(700);
    s.disconnect("r", "alice", "tab2", None).await.unwrap();
    h.settle(&s).await;
    let snap = s.list_room("r", false, 0).await.unwrap();
    assert_eq!(snap.users[0].last_disconnected, Some(T0 + 700));
    assert_eq!((snap.online_count, snap.total_count), (0, 1));
    assert!(snap.version > before.version);
    assert_eq!(latest(&mut watch).unwrap().online_count, 0);
    assert_eq!(h.counts(&s).await.0, 0);
}

pub async fn online_by_arrival_then_offline_most_recent_first<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    for (i, u) in ["a", "b", "c", "d"].iter().enumerate() {
        s.heartbeat("r", u, &format!("s{i}"), SEC).await.unwrap();
        clock.advance(10);
    }
    s.disconnect("r", "b", "s1", None).await.unwrap();
    clock.advance(10);
    s.disconnect("r", "c", "s2", None).await.unwrap();
    assert_eq!(
        listing(&s, "r").await,
        users(&[("a", true), ("d", true), ("c", false), ("b", false)])
    );
    // b comes back: it goes to the end of the online users.
    s.heartbeat("r", "b", "s1b", SEC).await.unwrap();
    assert_eq!(
        listing(&s, "r").await,
        users(&[("a", true), ("d", true), ("b", true), ("c", false)])
    );
    // A heartbeat of a live session moves nobody.
    s.heartbeat("r", "a", "s0", SEC).await.unwrap();
    assert_eq!(listing(&s, "r").await[0], ("a".to_string(), true));
    let snap = s.list_room("r", true, 2).await.unwrap();
    assert_eq!(snap.users.len(), 2);
    assert_eq!((snap.online_count, snap.total_count), (3, 4));
    assert_eq!(s.list_room("r", true, 0).await.unwrap().users.len(), 3);
    // Two users leaving in the same millisecond keep their arrival order.
    s.remove_room("r").await.unwrap();
    for u in ["x", "y", "z"] {
        s.heartbeat("r", u, &format!("t{u}"), SEC).await.unwrap();
    }
    clock.advance(2_500);
    sweep_at(h, &s).await;
    assert_eq!(
        listing(&s, "r").await,
        users(&[("x", false), ("y", false), ("z", false)])
    );
}

pub async fn sessions_expire_at_two_and_a_half_intervals<H: Harness>(h: &H) {
    let (s, clock) = open(
        h,
        Limits {
            snapshot_interval: Duration::ZERO,
            ..Limits::default()
        },
    )
    .await;
    let lease = s
        .heartbeat("r", "u", "s", Duration::from_secs(4))
        .await
        .unwrap();
    assert_eq!(lease.deadline, T0 + 10_000);
    clock.advance(9_999);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await, users(&[("u", true)]));
    clock.advance(1);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await, users(&[("u", false)]));
    let snap = s.list_room("r", false, 0).await.unwrap();
    assert_eq!(snap.users[0].last_disconnected, Some(T0 + 10_000));
    assert_eq!(s.activity().sessions_expired, 1);
    // A shorter interval takes effect at once.
    s.heartbeat("r", "v", "t", Duration::from_secs(10))
        .await
        .unwrap();
    clock.advance(1_000);
    s.heartbeat("r", "v", "t", SEC).await.unwrap();
    clock.advance(2_499);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await[0], ("v".into(), true));
    clock.advance(1);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await[0], ("v".into(), false));
}

pub async fn a_heartbeat_after_the_deadline_starts_a_new_session<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    let first = s.heartbeat("r", "u", "s", SEC).await.unwrap();
    s.heartbeat("r", "w", "w1", Duration::from_secs(60))
        .await
        .unwrap();
    clock.advance(3_000); // past the 2.5 s deadline; nothing swept
    let second = s.heartbeat("r", "u", "s", SEC).await.unwrap();
    assert_ne!(second.incarnation, first.incarnation, "a new life");
    assert_eq!(s.activity().sessions_expired, 1, "the old one expired");
    // The user came back: last of the online users.
    assert_eq!(listing(&s, "r").await, users(&[("w", true), ("u", true)]));
    // A token of the old life cannot end the new one; one of the new can.
    s.disconnect("r", "u", "s", Some(first.incarnation))
        .await
        .unwrap();
    assert_eq!(h.counts(&s).await.0, 2);
    s.disconnect("r", "u", "s", Some(second.incarnation))
        .await
        .unwrap();
    assert_eq!(h.counts(&s).await.0, 1);
    // A live session keeps its incarnation across heartbeats.
    let a = s.heartbeat("r", "w", "w1", SEC).await.unwrap();
    let b = s.heartbeat("r", "w", "w1", SEC).await.unwrap();
    assert_eq!(a.incarnation, b.incarnation);
}

pub async fn offline_users_are_kept_for_the_retention_then_forgotten<H: Harness>(h: &H) {
    let (s, clock) = open(
        h,
        Limits {
            retention: Duration::from_secs(60),
            ..Limits::default()
        },
    )
    .await;
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    s.disconnect("r", "u", "s", None).await.unwrap();
    clock.advance(59_999);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await, users(&[("u", false)]));
    assert_eq!(s.list_user("u", false, 0).await.unwrap().len(), 1);
    clock.advance(1);
    sweep_at(h, &s).await;
    assert!(listing(&s, "r").await.is_empty());
    assert!(s.list_user("u", false, 0).await.unwrap().is_empty());
    assert_eq!(h.counts(&s).await.1, 0, "an empty room is forgotten");
    assert_eq!(s.activity().users_purged, 1);
}

pub async fn coming_back_and_flapping_keeps_one_purge_at_the_latest_retention<H: Harness>(h: &H) {
    let (s, clock) = open(
        h,
        Limits {
            retention: Duration::from_secs(60),
            ..Limits::default()
        },
    )
    .await;
    // Flap: on and off a hundred times, a second apart.
    for i in 0..100 {
        s.heartbeat("r", "u", &format!("s{i}"), SEC).await.unwrap();
        s.disconnect("r", "u", &format!("s{i}"), None)
            .await
            .unwrap();
        clock.advance(1_000);
        sweep_at(h, &s).await;
    }
    // Left last at T0 + 99 s: listed until T0 + 159 s.
    clock.set(T0 + 158_999);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await, users(&[("u", false)]));
    clock.advance(1);
    sweep_at(h, &s).await;
    assert!(listing(&s, "r").await.is_empty());
    assert_eq!(s.activity().users_purged, 1);
    // Coming back cancels the purge.
    s.heartbeat("r", "v", "v1", SEC).await.unwrap();
    s.disconnect("r", "v", "v1", None).await.unwrap();
    clock.advance(30_000);
    s.heartbeat("r", "v", "v2", Duration::from_secs(600))
        .await
        .unwrap();
    clock.advance(40_000);
    sweep_at(h, &s).await;
    assert_eq!(listing(&s, "r").await, users(&[("v", true)]));
}

pub async fn session_ids_cannot_move_to_another_room_or_user<H: Harness>(h: &H) {
    let (s, _) = open(h, Limits::default()).await;
    s.heartbeat("r1", "u", "s", SEC).await.unwrap();
    assert!(matches!(
        s.heartbeat("r2", "u", "s", SEC).await,
        Err(Error::SessionConflict { other: "room", .. })
    ));
    assert!(matches!(
        s.heartbeat("r1", "v", "s", SEC).await,
        Err(Error::SessionConflict { other: "user", .. })
    ));
    assert!(matches!(
        s.heartbeat("r2", "v", "s", SEC).await,
        Err(Error::SessionConflict { other: "room", .. })
    ));
    // Once ended, the id is free again.
    s.disconnect("r1", "u", "s", None).await.unwrap();
    s.heartbeat("r2", "u", "s", SEC).await.unwrap();
    // Disconnect with the wrong user is a no-op, not an error.
    s.disconnect("r2", "v", "s", None).await.unwrap();
    assert_eq!(listing(&s, "r2").await, users(&[("u", true)]));
}

pub async fn input_is_bounded_and_a_refusal_changes_nothing<H: Harness>(h: &H) {
    let (s, _) = open(
        h,
        Limits {
            max_id_bytes: 8,
            max_data_bytes: 20,
            max_sessions_per_user_room: 2,
            ..Limits::default()
        },
    )
    .await;
    let err = s.heartbeat("", "u", "s", SEC).await.unwrap_err();
    assert_eq!(err.to_string(), "room_id must not be empty");
    let err = s.heartbeat("r", "123456789", "s", SEC).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "user_id is 9 bytes long, the limit is 8 bytes"
    );
    let err = s.heartbeat("r", "u", "s\0", SEC).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "session_id must not contain control characters (U+0000 at byte 1)"
    );
    let err = s
        .heartbeat("r", "u", "s", Duration::from_millis(999))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "interval is 999ms, it must be from 1s to 10m"
    );
    s.heartbeat("r", "u", "s1", SEC).await.unwrap();
    s.heartbeat("r", "u", "s2", SEC).await.unwrap();
    assert!(matches!(
        s.heartbeat("r", "u", "s3", SEC).await,
        Err(Error::LimitReached { limit: 2, .. })
    ));
    let big = serde_json::json!({"text": "x".repeat(20)});
    let err = s
        .update_room_user("r", "u", big.as_object().unwrap().clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "data is 31 bytes as JSON, the limit is 20 bytes"
    );
    assert_eq!(h.counts(&s).await.0, 2, "nothing was lost along the way");
    assert_eq!(listing(&s, "r").await, users(&[("u", true)]));
}

pub async fn limits_hold_exactly_under_concurrency<H: Harness>(h: &H) {
    let (s, _) = open(
        h,
        Limits {
            max_sessions: 25,
            max_rooms: 10,
            max_sessions_per_user: 1000,
            ..Limits::default()
        },
    )
    .await;
    // 100 concurrent joins into 20 rooms: exactly 25 sessions are let in,
    // in at most 10 rooms.
    let joins = (0..100).map(|i| {
        let s = s.clone();
        async move {
            s.heartbeat(
                &format!("r{}", i % 20),
                &format!("u{i}"),
                &format!("s{i}"),
                SEC,
            )
            .await
        }
    });
    let results = futures_util::future::join_all(joins).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(err, Error::LimitReached { .. }), "{err}");
    }
    let (sessions, rooms) = h.counts(&s).await;
    assert_eq!(ok, sessions);
    assert!(ok <= 25, "{ok} sessions for a bound of 25");
    assert!(rooms <= 10, "{rooms} rooms for a bound of 10");
    // The same user, concurrently, at the per-user bound of 3.
    let (s, _) = open(
        h,
        Limits {
            max_sessions_per_user: 3,
            ..Limits::default()
        },
    )
    .await;
    let joins = (0..30).map(|i| {
        let s = s.clone();
        async move {
            s.heartbeat(&format!("q{}", i % 3), "one", &format!("t{i}"), SEC)
                .await
        }
    });
    let ok = futures_util::future::join_all(joins)
        .await
        .iter()
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(ok, 3, "exactly the per-user bound");
}

pub async fn data_is_listed_cleared_and_needs_a_listed_user<H: Harness>(h: &H) {
    let (s, _) = open(h, Limits::default()).await;
    let data = serde_json::json!({"typing": true, "cursor": {"x": 1.5}});
    assert!(matches!(
        s.update_room_user("r", "u", data.as_object().unwrap().clone())
            .await,
        Err(Error::UserNotInRoom { .. })
    ));
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    s.update_room_user("r", "u", data.as_object().unwrap().clone())
        .await
        .unwrap();
    let snap = s.list_room("r", false, 0).await.unwrap();
    assert_eq!(snap.users[0].data.as_deref(), data.as_object());
    // The same data again changes nothing.
    s.update_room_user("r", "u", data.as_object().unwrap().clone())
        .await
        .unwrap();
    assert_eq!(
        s.list_room("r", false, 0).await.unwrap().version,
        snap.version
    );
    s.update_room_user("r", "u", serde_json::Map::new())
        .await
        .unwrap();
    let cleared = s.list_room("r", false, 0).await.unwrap();
    assert_eq!(cleared.users[0].data, None);
    assert!(cleared.version > snap.version);
}

pub async fn remove_room_user_and_remove_room_end_their_sessions<H: Harness>(h: &H) {
    let (s, _) = open(h, Limits::default()).await;
    s.heartbeat("r", "a", "a1", SEC).await.unwrap();
    s.heartbeat("r", "a", "a2", SEC).await.unwrap();
    s.heartbeat("r", "b", "b1", SEC).await.unwrap();
    s.heartbeat("q", "a", "a3", SEC).await.unwrap();
    s.remove_room_user("r", "a").await.unwrap();
    assert_eq!(listing(&s, "r").await, users(&[("b", true)]));
    assert_eq!(h.counts(&s).await.0, 2);
    assert_eq!(s.activity().sessions_removed, 2);
    // The removed sessions' ids are free, and the user's other room is intact.
    s.heartbeat("q", "a", "a1", SEC).await.unwrap();
    assert_eq!(s.list_user("a", false, 0).await.unwrap().len(), 1);
    s.remove_room("r").await.unwrap();
    assert!(listing(&s, "r").await.is_empty());
    assert!(s.list_user("b", false, 0).await.unwrap().is_empty());
    assert_eq!(h.counts(&s).await.0, 2);
    assert_eq!(s.activity().sessions_removed, 3);
    // Both are idempotent.
    s.remove_room("r").await.unwrap();
    s.remove_room_user("r", "zed").await.unwrap();
}

pub async fn a_users_rooms_online_first_then_most_recently_left<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    for room in ["r1", "r2", "r3", "r4"] {
        s.heartbeat(room, "u", &format!("{room}-s"), SEC)
            .await
            .unwrap();
    }
    s.disconnect("r1", "u", "r1-s", None).await.unwrap();
    clock.advance(5);
    s.disconnect("r3", "u", "r3-s", None).await.unwrap();
    let rooms: Vec<_> = s
        .list_user("u", false, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.room_id.to_string(), r.last_disconnected))
        .collect();
    let expect = [
        ("r2", None),
        ("r4", None),
        ("r3", Some(T0 + 5)),
        ("r1", Some(T0)),
    ];
    assert_eq!(rooms, expect.map(|(r, o)| (r.to_string(), o)).to_vec());
    assert_eq!(s.list_user("u", true, 0).await.unwrap().len(), 2);
    assert_eq!(s.list_user("u", false, 1).await.unwrap().len(), 1);
    assert!(s.list_user("nobody", false, 0).await.unwrap().is_empty());
}

pub async fn watchers_get_the_current_snapshot_then_changes_but_not_heartbeats<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    let mut sub = s.watch("r").await.unwrap();
    let first = latest(&mut sub).expect("the current snapshot at once");
    assert_eq!(first.total_count, 0);
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    h.settle(&s).await;
    let joined = latest(&mut sub).expect("join published");
    assert!(joined.version > first.version);
    assert_eq!(joined.online_count, 1);
    clock.advance(1_000);
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    sweep_at(h, &s).await;
    assert!(latest(&mut sub).is_none(), "a plain heartbeat is silent");
    s.disconnect("r", "u", "s", None).await.unwrap();
    sweep_at(h, &s).await;
    let left = latest(&mut sub).expect("leave published");
    assert_eq!(left.online_count, 0);
    assert!(left.version > joined.version);
    assert_eq!(s.stats().watchers, 1);
    drop(sub);
    assert_eq!(s.stats().watchers, 0);
}

pub async fn a_big_rooms_burst_is_coalesced_into_one_snapshot_per_window<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await; // 50 ms cap
                                                       // 1000 watchers: a 16 ms window while the room is small.
    let mut subs = Vec::new();
    for _ in 0..1000 {
        subs.push(s.watch("r").await.unwrap());
    }
    latest(&mut subs[0]).unwrap();
    s.heartbeat("r", "u0", "s0", SEC).await.unwrap(); // published at once
    h.settle(&s).await;
    assert_eq!(latest(&mut subs[0]).unwrap().total_count, 1);
    let built = s.activity().snapshots_built;
    for i in 1..200 {
        s.heartbeat("r", &format!("u{i}"), &format!("s{i}"), SEC)
            .await
            .unwrap();
    }
    h.settle(&s).await;
    assert!(latest(&mut subs[0]).is_none(), "held for the window");
    clock.advance(15);
    sweep_at(h, &s).await;
    assert!(latest(&mut subs[0]).is_none());
    clock.advance(1);
    sweep_at(h, &s).await;
    let all = latest(&mut subs[0]).expect("one snapshot at the window's end");
    assert_eq!(all.total_count, 200);
    assert_eq!(
        s.activity().snapshots_built,
        built + 1,
        "built once for 1000 watchers"
    );
    assert!(latest(&mut subs[999]).is_some_and(|last| last.total_count == 200));
}

pub async fn a_small_room_publishes_every_change_at_once<H: Harness>(h: &H) {
    let (s, _) = open(h, Limits::default()).await;
    let mut sub = s.watch("r").await.unwrap();
    latest(&mut sub).unwrap();
    for i in 0..5 {
        s.heartbeat("r", &format!("u{i}"), &format!("s{i}"), SEC)
            .await
            .unwrap();
        h.settle(&s).await;
        // No clock movement: a one-watcher room has no window to wait for.
        assert_eq!(latest(&mut sub).unwrap().total_count, i + 1);
    }
}

pub async fn a_slow_watcher_gets_only_the_latest<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    let mut sub = s.watch("r").await.unwrap();
    for i in 0..20 {
        s.heartbeat("r", &format!("u{i}"), &format!("s{i}"), SEC)
            .await
            .unwrap();
        clock.advance(100);
        sweep_at(h, &s).await;
    }
    // It never read: what it gets now is the latest state, once.
    let latest_snapshot = sub.next().await.unwrap().unwrap();
    assert_eq!(latest_snapshot.total_count, 20);
    assert!(latest(&mut sub).is_none());
}

pub async fn remove_room_empties_the_watched_room<H: Harness>(h: &H) {
    let (s, _) = open(h, Limits::default()).await;
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    let mut sub = s.watch("r").await.unwrap();
    let full = latest(&mut sub).unwrap();
    assert_eq!(full.total_count, 1);
    s.remove_room("r").await.unwrap();
    h.settle(&s).await;
    let empty = latest(&mut sub).unwrap();
    assert_eq!(empty.total_count, 0);
    assert!(empty.version > full.version);
    assert_eq!((h.counts(&s).await.1, s.stats().watched_rooms), (0, 1));
    // The room comes back in the same millisecond: its version goes on.
    s.heartbeat("r", "u", "s2", SEC).await.unwrap();
    h.settle(&s).await;
    let back = latest(&mut sub).expect("published");
    assert!(back.version > empty.version);
    assert_eq!(back.total_count, 1);
    drop(sub);
    assert_eq!(s.stats().watched_rooms, 0);
}

pub async fn versions_grow_across_restarts_and_clock_steps_back<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    for i in 0..50 {
        s.update_room_user(
            "r",
            "u",
            serde_json::json!({ "n": i }).as_object().unwrap().clone(),
        )
        .await
        .unwrap();
    }
    let v1 = s.list_room("r", false, 0).await.unwrap().version;
    clock.set(T0 - 60_000); // the wall clock steps back a minute
    s.disconnect("r", "u", "s", None).await.unwrap();
    let v2 = s.list_room("r", false, 0).await.unwrap().version;
    assert!(v2 > v1);
    // A restart, with the clock still behind: the saved versions go on.
    let s = h.restart(s, Limits::default(), &clock).await;
    let v3 = s.list_room("r", false, 0).await.unwrap().version;
    assert!(v3 >= v2, "{v3} < {v2}");
    s.heartbeat("r", "u", "s", SEC).await.unwrap();
    assert!(s.list_room("r", false, 0).await.unwrap().version > v3);
}

pub async fn a_restart_keeps_presence<H: Harness>(h: &H) {
    let (s, clock) = open(h, Limits::default()).await;
    let ten = Duration::from_secs(10);
    let alice = s.heartbeat("r", "alice", "a1", ten).await.unwrap();
    s.heartbeat("r", "bob", "b1", ten).await.unwrap();
    clock.advance(1000);
    s.disconnect("r", "bob", "b1", None).await.unwrap();
    let mut data = serde_json::Map::new();
    data.insert("typing".into(), true.into());
    s.update_room_user("r", "alice", data.clone())
        .await
        .unwrap();
    let before = s.list_room("r", false, 0).await.unwrap();
    let s = h.restart(s, Limits::default(), &clock).await;
    let after = s.list_room("r", false, 0).await.unwrap();
    assert_eq!(after.users, before.users);
    assert_eq!(h.counts(&s).await.0, 1);
    // The session goes on, with its incarnation.
    let again = s.heartbeat("r", "alice", "a1", ten).await.unwrap();
    assert_eq!(again.incarnation, alice.incarnation);
    assert!(s.heartbeat("other", "alice", "a1", ten).await.is_err());
}

/// Every scenario above as a `#[tokio::test]` of `$harness`.
macro_rules! for_each {
    ($harness:expr) => {
        $crate::scenarios::for_each!(@each $harness;
            two_tabs_one_closed_is_still_online_and_changes_nothing,
            online_by_arrival_then_offline_most_recent_first,
            sessions_expire_at_two_and_a_half_intervals,
            a_heartbeat_after_the_deadline_starts_a_new_session,
            offline_users_are_kept_for_the_retention_then_forgotten,
            coming_back_and_flapping_keeps_one_purge_at_the_latest_retention,
            session_ids_cannot_move_to_another_room_or_user,
            input_is_bounded_and_a_refusal_changes_nothing,
            limits_hold_exactly_under_concurrency,
            data_is_listed_cleared_and_needs_a_listed_user,
            remove_room_user_and_remove_room_end_their_sessions,
            a_users_rooms_online_first_then_most_recently_left,
            watchers_get_the_current_snapshot_then_changes_but_not_heartbeats,
            a_big_rooms_burst_is_coalesced_into_one_snapshot_per_window,
            a_small_room_publishes_every_change_at_once,
            a_slow_watcher_gets_only_the_latest,
            remove_room_empties_the_watched_room,
            versions_grow_across_restarts_and_clock_steps_back,
            a_restart_keeps_presence,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::scenarios::$name(&$harness).await;
            }
        )*
    };
}
pub(crate) use for_each;
