//! WatchRoom semantics against a real server.

mod common;

use presenced::presence::Store as _;
use std::time::Duration;

use common::*;
use presenced::grpc::pb;
use tonic::Streaming;

type Watch = Streaming<pb::WatchRoomResponse>;

async fn watch(client: &mut Client, room_token: &str, limit: u32) -> Watch {
    client
        .watch_room(pb::WatchRoomRequest {
            room_token: room_token.into(),
            limit,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next snapshot, within `within`.
async fn next(stream: &mut Watch, within: Duration) -> pb::RoomSnapshot {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("a snapshot in time")
        .unwrap()
        .unwrap()
        .snapshot
        .unwrap()
}

/// Asserts no snapshot arrives for `quiet`.
async fn silent(stream: &mut Watch, quiet: Duration) {
    if let Ok(msg) = tokio::time::timeout(quiet, stream.message()).await {
        panic!("unexpected message: {msg:?}");
    }
}

const SOON: Duration = Duration::from_secs(2);

async fn current_snapshot_then_one_per_change_never_on_heartbeat() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let alice = join(&mut client, "r", "alice", "a1").await;
    let mut stream = watch(&mut client, &alice.room_token, 0).await;

    let first = next(&mut stream, SOON).await;
    assert_eq!(users(&first), pairs(&[("alice", true)]));

    // Plain heartbeats: nothing.
    join(&mut client, "r", "alice", "a1").await;
    silent(&mut stream, Duration::from_millis(300)).await;

    // A second tab of a user already online: nothing visible changes.
    join(&mut client, "r", "alice", "a2").await;
    silent(&mut stream, Duration::from_millis(300)).await;

    // Join.
    let bob = join(&mut client, "r", "bob", "b1").await;
    let joined = next(&mut stream, SOON).await;
    assert_eq!(users(&joined), pairs(&[("alice", true), ("bob", true)]));
    assert!(joined.version > first.version);

    // Data change.
    let data = prost_types::Struct {
        fields: [(
            "status".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("away".into())),
            },
        )]
        .into(),
    };
    client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r".into(),
            user_id: "bob".into(),
            data: Some(data.clone()),
        })
        .await
        .unwrap();
    let changed = next(&mut stream, SOON).await;
    assert_eq!(changed.users[1].data.as_ref(), Some(&data));
    assert!(changed.version > joined.version);
    // The same data again changes nothing.
    client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r".into(),
            user_id: "bob".into(),
            data: Some(data),
        })
        .await
        .unwrap();
    silent(&mut stream, Duration::from_millis(300)).await;

    // Leave.
    client
        .disconnect(pb::DisconnectRequest {
            session_token: bob.session_token,
        })
        .await
        .unwrap();
    let left = next(&mut stream, SOON).await;
    assert_eq!(users(&left), pairs(&[("alice", true), ("bob", false)]));
    assert!(left.version > changed.version);

    // Removal.
    client
        .remove_room_user(pb::RemoveRoomUserRequest {
            room_id: "r".into(),
            user_id: "bob".into(),
        })
        .await
        .unwrap();
    let removed = next(&mut stream, SOON).await;
    assert_eq!(users(&removed), pairs(&[("alice", true)]));
    assert!(removed.version > left.version);
    client
        .remove_room(pb::RemoveRoomRequest {
            room_id: "r".into(),
        })
        .await
        .unwrap();
    let empty = next(&mut stream, SOON).await;
    assert_eq!(empty.total_count, 0);
    assert!(empty.version > removed.version);
}

async fn a_watch_on_an_empty_room_sees_later_joins() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = join(&mut client, "lobby", "first", "f").await;
    client
        .remove_room(pb::RemoveRoomRequest {
            room_id: "lobby".into(),
        })
        .await
        .unwrap();
    let mut stream = watch(&mut client, &first.room_token, 0).await;
    let empty = next(&mut stream, SOON).await;
    assert_eq!((empty.room_id.as_str(), empty.total_count), ("lobby", 0));
    join(&mut client, "lobby", "late", "l").await;
    let joined = next(&mut stream, SOON).await;
    assert_eq!(users(&joined), pairs(&[("late", true)]));
}

async fn limit_truncates_but_counts_cover_everyone() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut token = String::new();
    for i in 0..30 {
        token = join(&mut client, "big", &format!("u{i:02}"), &format!("s{i}"))
            .await
            .room_token;
    }
    let mut stream = watch(&mut client, &token, 5).await;
    let snap = next(&mut stream, SOON).await;
    assert_eq!(snap.users.len(), 5);
    assert_eq!(snap.users[0].user_id, "u00");
    assert_eq!((snap.online_count, snap.total_count), (30, 30));
}

async fn streams_unregister_when_the_client_goes_away() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = watch(&mut client, &tokens.room_token, 0).await;
        next(&mut stream, SOON).await;
        streams.push(stream);
    }
    assert_eq!(server.store.stats().watchers, 50);
    streams.truncate(10);
    assert_eventually!(
        server.store.stats().watchers == 10,
        SOON,
        "dropped streams stay registered: {:?}",
        server.store.stats()
    );
    // A whole connection going away releases its streams too.
    drop(streams);
    drop(client);
    assert_eventually!(
        server.store.stats().watchers == 0,
        SOON,
        "streams of a closed connection stay registered: {:?}",
        server.store.stats()
    );
}

async fn a_watcher_that_does_not_read_delays_no_one_and_gets_the_latest() {
    let server =
        TestServer::with(|c| c.presence.snapshot_interval = Duration::from_millis(1).into()).await;
    let mut setup = server.client().await;
    let tokens = join(&mut setup, "busy", "u0", "s0").await;

    // The slow watcher has its own connection and never reads while the
    // room churns with snapshots far larger than the HTTP/2 windows.
    let mut slow_client = server.client().await;
    let mut slow = watch(&mut slow_client, &tokens.room_token, 1000).await;
    let mut fast_client = server.client().await;
    let mut fast = watch(&mut fast_client, &tokens.room_token, 1000).await;
    next(&mut fast, SOON).await;

    let big = prost_types::Struct {
        fields: [(
            "blob".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(3000))),
            },
        )]
        .into(),
    };
    let mut writer = server.client().await;
    for i in 1..300 {
        join(&mut writer, "busy", &format!("u{i}"), &format!("s{i}")).await;
        writer
            .update_room_user(pb::UpdateRoomUserRequest {
                room_id: "busy".into(),
                user_id: format!("u{i}"),
                data: Some(big.clone()),
            })
            .await
            .unwrap();
        if i % 50 == 0 {
            // The fast watcher keeps up while the slow one is stuck.
            let mut snap = next(&mut fast, SOON).await;
            while snap.total_count < i {
                snap = next(&mut fast, SOON).await;
            }
        }
    }
    // The slow reader now catches up: it skips to the latest state quickly,
    // receiving far fewer snapshots than there were changes.
    let mut received = 0;
    loop {
        let snap = next(&mut slow, SOON).await;
        received += 1;
        if snap.total_count == 300 && snap.users.iter().filter(|u| u.data.is_some()).count() == 299
        {
            break;
        }
    }
    assert!(
        received < 100,
        "slow watcher got {received} snapshots for ~600 changes"
    );
}

async fn a_burst_of_joins_is_coalesced() {
    let server = TestServer::start().await; // 50 ms window
    let mut client = server.client().await;
    let tokens = join(&mut client, "storm", "u0", "s0").await;
    let mut stream = watch(&mut client, &tokens.room_token, 0).await;
    next(&mut stream, SOON).await;
    let mut joins = Vec::new();
    for i in 1..500 {
        let mut c = client.clone();
        joins.push(tokio::spawn(async move {
            join(&mut c, "storm", &format!("u{i}"), &format!("s{i}")).await;
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let mut snapshots = 0;
    let mut last_version = 0;
    loop {
        let snap = next(&mut stream, SOON).await;
        snapshots += 1;
        assert!(snap.version > last_version);
        last_version = snap.version;
        if snap.total_count == 500 {
            break;
        }
    }
    assert!(snapshots < 100, "{snapshots} snapshots for 499 joins");
}

async fn versions_grow_across_a_restart() {
    const KEY: &str = "an example key of at least thirty-two bytes";
    let a = TestServer::with(|c| c.tokens.keys = vec![KEY.into()]).await;
    let mut client = a.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    for i in 0..20 {
        join(&mut client, "r", &format!("v{i}"), &format!("t{i}")).await;
    }
    let mut stream = watch(&mut client, &tokens.room_token, 0).await;
    let before = next(&mut stream, SOON).await.version;
    drop(stream);
    a.stop().await.unwrap();

    let b = TestServer::with(|c| c.tokens.keys = vec![KEY.into()]).await;
    let mut client = b.client().await;
    let mut stream = watch(&mut client, &tokens.room_token, 0).await;
    // The memory store (no --data-dir) starts empty, the Redis store from
    // the same state: either way, no version goes back, and the next
    // change is above both.
    let after = next(&mut stream, SOON).await.version;
    assert!(after >= before, "{after} < {before}");
    join(&mut client, "r", "w", "w1").await;
    let changed = next(&mut stream, SOON).await.version;
    assert!(changed > after, "{changed} <= {after}");
}

every_store!(
    current_snapshot_then_one_per_change_never_on_heartbeat,
    a_watch_on_an_empty_room_sees_later_joins,
    limit_truncates_but_counts_cover_everyone,
    streams_unregister_when_the_client_goes_away,
    a_watcher_that_does_not_read_delays_no_one_and_gets_the_latest,
    a_burst_of_joins_is_coalesced,
    versions_grow_across_a_restart,
);
