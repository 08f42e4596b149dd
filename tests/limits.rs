//! Every abuse limit trips at its configured value with RESOURCE_EXHAUSTED
//! naming the limit, and everyone else keeps being served.

mod common;

use common::*;
use presenced::grpc::pb;
use presenced::presence::Store as _;
use tonic::{Code, Status};

fn exhausted(err: Status, limit_name: &str) {
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(limit_name),
        "{:?} lacks {limit_name:?}",
        err.message()
    );
}

async fn sessions_and_rooms_per_user_and_in_all() {
    let server = TestServer::with(|c| {
        c.limits.max_sessions_per_user = 3;
        c.limits.max_rooms_per_user = 2;
        c.limits.max_sessions = 6;
        c.limits.max_rooms = 3;
        c.tokens.keys = vec![KEY.into()];
    })
    .await;
    let mut client = server.client().await;
    join(&mut client, "r1", "u", "s1").await;
    join(&mut client, "r1", "u", "s2").await;
    join(&mut client, "r2", "u", "s3").await;
    let err = client
        .heartbeat(heartbeat("r2", "u", "s4", 10))
        .await
        .unwrap_err();
    exhausted(err, "sessions per user limit reached: at most 3");
    // Ending a session frees its place.
    server
        .store
        .disconnect("r1", "u", "s2", None)
        .await
        .unwrap();
    let err = client
        .heartbeat(heartbeat("r3", "u", "s4", 10))
        .await
        .unwrap_err();
    exhausted(err, "rooms per user limit reached: at most 2");
    join(&mut client, "r2", "u", "s4").await;
    // The user's existing sessions keep heartbeating.
    join(&mut client, "r1", "u", "s1").await;

    // Other users are not affected by u's limits, only by the totals.
    join(&mut client, "r3", "v", "v1").await;
    let err = client
        .heartbeat(heartbeat("r4", "v", "v2", 10))
        .await
        .unwrap_err();
    exhausted(err, "rooms limit reached: at most 3");
    join(&mut client, "r3", "v", "v2").await;
    join(&mut client, "r3", "w", "w1").await;
    let err = client
        .heartbeat(heartbeat("r3", "x", "x1", 10))
        .await
        .unwrap_err();
    exhausted(err, "sessions limit reached: at most 6");
    assert_eq!(server.sessions().await, 6);

    // Made-up room ids cannot be watched past the bound either: the rooms
    // watched on an instance are bounded by --max-rooms too (a token for
    // one needs the key: mint it as the server would).
    let codec = presenced::token::Signer::new(&[KEY], None);
    let watch = |room: &str| pb::WatchRoomRequest {
        room_token: codec.room_token(room),
        limit: 0,
    };
    let mut open = Vec::new();
    for room in ["r3", "made-up-1", "made-up-2", "r3"] {
        open.push(client.watch_room(watch(room)).await.unwrap().into_inner());
    }
    let err = client.watch_room(watch("made-up-3")).await.unwrap_err();
    exhausted(err, "watched rooms limit reached: at most 3");
    let stats = server.store.stats();
    assert_eq!(
        (server.totals().await.1, stats.watched_rooms, stats.watchers),
        (3, 3, 4)
    );
    drop(open);
    assert_eventually!(
        server.store.stats().watched_rooms == 0,
        std::time::Duration::from_secs(3),
        "closed streams unwatch their rooms"
    );
    assert!(client.watch_room(watch("made-up-3")).await.is_ok());
}

const KEY: &str = "a token key for the limits test, 32+ bytes";

async fn watch_streams_per_connection_and_per_caller() {
    let server = TestServer::with(|c| {
        c.limits.callers.watches_per_connection = 2;
        c.limits.callers.watches_per_principal = 3;
    })
    .await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    let watch = |token: String| pb::WatchRoomRequest {
        room_token: token,
        limit: 0,
    };
    let a = client
        .watch_room(watch(tokens.room_token.clone()))
        .await
        .unwrap();
    let b = client
        .watch_room(watch(tokens.room_token.clone()))
        .await
        .unwrap();
    let err = client
        .watch_room(watch(tokens.room_token.clone()))
        .await
        .unwrap_err();
    exhausted(err, "watch streams per connection limit reached: at most 2");

    // Another connection from the same address: one more, then the
    // per-caller bound (3) applies.
    let mut other = server.client().await;
    let c = other
        .watch_room(watch(tokens.room_token.clone()))
        .await
        .unwrap();
    let err = other
        .watch_room(watch(tokens.room_token.clone()))
        .await
        .unwrap_err();
    exhausted(err, "watch streams per principal limit reached: at most 3");

    // Unary calls are unaffected; a closed stream frees its place.
    join(&mut client, "r", "u2", "s2").await;
    drop(a);
    assert_eventually!(
        other
            .watch_room(watch(tokens.room_token.clone()))
            .await
            .is_ok(),
        std::time::Duration::from_secs(2),
        "the closed stream's place was not freed"
    );
    drop((b, c));
}

#[tokio::test]
async fn request_rates_per_peer() {
    let server = TestServer::with(|c| c.limits.callers.rate_per_peer = 5).await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    let mut refused = None;
    for i in 0..40 {
        if let Err(e) = client
            .list(pb::ListRequest {
                room_token: tokens.room_token.clone(),
                limit: 0,
            })
            .await
        {
            refused = Some((i, e));
            break;
        }
    }
    let (i, err) = refused.expect("the rate limit trips");
    // The burst is 10, and the heartbeat took one of it.
    assert!(
        (9..=10).contains(&i),
        "tripped after {i} calls; the burst is 10"
    );
    exhausted(
        err,
        "requests per second per peer address limit reached: at most 5",
    );
    // The state is intact; after a pause the peer is served again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    client
        .list(pb::ListRequest {
            room_token: tokens.room_token,
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(server.store.stats().sessions, 1);
}

every_store!(
    sessions_and_rooms_per_user_and_in_all,
    watch_streams_per_connection_and_per_caller,
);
