//! Sessions end 2.5 × interval after their last heartbeat: not earlier, and
//! at most a second later.

mod common;

use std::time::{Duration, Instant};

use common::*;
use presenced::grpc::pb;

async fn a_silent_session_goes_offline_between_2_5_and_3_5_intervals() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let watcher = join(&mut client, "r", "watcher", "w").await; // 10 s interval
    let mut stream = client
        .watch_room(pb::WatchRoomRequest {
            room_token: watcher.room_token,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();

    // Taken before the call: the server's deadline counts from when it
    // handled the heartbeat, which a loaded client may learn much later.
    let last_heartbeat = Instant::now();
    client
        .heartbeat(heartbeat("r", "brief", "b", 1))
        .await
        .unwrap();
    // Keep the heartbeat of a user with two sessions going: only one ends.
    client
        .heartbeat(heartbeat("r", "two-tabs", "t1", 1))
        .await
        .unwrap();
    client
        .heartbeat(heartbeat("r", "two-tabs", "t2", 5))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the expiry is published")
            .unwrap()
            .unwrap();
        let snap = msg.snapshot.unwrap();
        let brief = snap.users.iter().find(|u| u.user_id == "brief");
        if brief.is_some_and(|u| !u.online) {
            let elapsed = last_heartbeat.elapsed();
            assert!(elapsed >= Duration::from_millis(2500), "early: {elapsed:?}");
            assert!(elapsed <= Duration::from_millis(3500), "late: {elapsed:?}");
            let two_tabs = snap.users.iter().find(|u| u.user_id == "two-tabs").unwrap();
            assert!(two_tabs.online, "one tab of two expired: still online");
            break;
        }
    }
}

async fn offline_users_are_forgotten_after_the_retention() {
    let server = TestServer::with(|c| c.presence.retention = Duration::from_secs(1).into()).await;
    let mut client = server.client().await;
    let gone = join(&mut client, "r", "gone", "g1").await;
    join(&mut client, "r", "stays", "s1").await;
    client
        .disconnect(pb::DisconnectRequest {
            session_token: gone.session_token,
        })
        .await
        .unwrap();
    let list = || pb::ListRoomRequest {
        room_id: "r".into(),
        online_only: false,
        limit: 0,
    };
    let listed = client
        .list_room(list())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&listed), pairs(&[("stays", true), ("gone", false)]));
    // Listed offline for the retention, then forgotten (by the sweeper,
    // within its pace), everywhere it was listed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listed = client
        .list_room(list())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(listed.total_count, 2, "still within the retention");
    assert_eventually!(
        client
            .list_room(list())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
            .total_count
            == 1,
        Duration::from_secs(3),
        "the offline user is forgotten after 1 s"
    );
    let rooms = client
        .list_user(pb::ListUserRequest {
            user_id: "gone".into(),
            online_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert!(rooms.is_empty(), "{rooms:?}");
}

/// Many sessions of one room lapsing together (a client fleet losing its
/// network) end in one go: more than one expiry call can end with Redis,
/// and the counts behind the global limits come back to zero.
async fn a_crowd_that_lapses_at_once_goes_offline_at_once() {
    const CROWD: usize = 400;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let watcher = join(&mut client, "crowd", "watcher", "w").await; // 10 s interval
    let mut stream = client
        .watch_room(pb::WatchRoomRequest {
            room_token: watcher.room_token,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let joins = (0..CROWD).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .heartbeat(heartbeat("crowd", &format!("u{i}"), &format!("s{i}"), 1))
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(joins).await;
    let last_heartbeat = Instant::now();
    assert_eq!(server.totals().await, (CROWD + 1, 1));
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(8), stream.message())
            .await
            .expect("the expiry is published")
            .unwrap()
            .unwrap();
        let snap = msg.snapshot.unwrap();
        if snap.online_count == 1 {
            let elapsed = last_heartbeat.elapsed();
            assert!(elapsed <= Duration::from_millis(4000), "late: {elapsed:?}");
            assert_eq!(snap.total_count as usize, CROWD + 1, "all listed offline");
            break;
        }
    }
    assert_eventually!(
        server.totals().await == (1, 1),
        Duration::from_secs(3),
        "the counts behind --max-sessions and --max-rooms follow the expiry"
    );
}

every_store!(
    a_crowd_that_lapses_at_once_goes_offline_at_once,
    offline_users_are_forgotten_after_the_retention,
    a_silent_session_goes_offline_between_2_5_and_3_5_intervals,
);
