//! Bad input gets a precise status and breaks nothing else.

mod common;

use presenced::presence::Store as _;
use std::time::Duration;

use common::*;
use presenced::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

async fn expect_invalid(client: &mut Client, req: pb::HeartbeatRequest, needle: &str) {
    let err = client.heartbeat(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(needle),
        "{:?} lacks {needle:?}",
        err.message()
    );
}

async fn ids_intervals_and_data_are_bounded_with_clear_messages() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // A room that must come through all of this untouched.
    let bystander = join(&mut client, "calm", "carol", "c1").await;
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: bystander.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    expect_invalid(
        &mut client,
        heartbeat("", "u", "s", 5),
        "room_id must not be empty",
    )
    .await;
    expect_invalid(
        &mut client,
        heartbeat("r", "", "s", 5),
        "user_id must not be empty",
    )
    .await;
    expect_invalid(
        &mut client,
        heartbeat("r", "u", "", 5),
        "session_id must not be empty",
    )
    .await;
    let long = "x".repeat(257);
    expect_invalid(
        &mut client,
        heartbeat(&long, "u", "s", 5),
        "room_id is 257 bytes long, the limit is 256 bytes",
    )
    .await;
    expect_invalid(
        &mut client,
        heartbeat("r", &long, "s", 5),
        "user_id is 257 bytes",
    )
    .await;
    expect_invalid(
        &mut client,
        heartbeat("r", "u", &long, 5),
        "session_id is 257 bytes",
    )
    .await;
    expect_invalid(&mut client, heartbeat("r", "u", "s", 0), "from 1s to 10m").await;
    expect_invalid(&mut client, heartbeat("r", "u", "s", 601), "from 1s to 10m").await;
    expect_invalid(
        &mut client,
        heartbeat("r", "u", "s", -5),
        "interval must be a non-negative",
    )
    .await;
    let mut missing = heartbeat("r", "u", "s", 5);
    missing.interval = None;
    expect_invalid(&mut client, missing, "interval is required").await;

    join(&mut client, "r", "u", "s").await;
    let big = prost_types::Struct {
        fields: [(
            "text".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(5000))),
            },
        )]
        .into(),
    };
    let err = client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r".into(),
            user_id: "u".into(),
            data: Some(big),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("the limit is 4096 bytes"),
        "{}",
        err.message()
    );

    // A request over the message size limit is refused at the transport.
    let err = client
        .heartbeat(heartbeat(&"y".repeat(100_000), "u", "s", 5))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_ne!(err.code(), Code::Unknown, "{err:?}");

    // Watches and lists with bad tokens.
    let err = client
        .watch_room(pb::WatchRoomRequest {
            room_token: "!!".into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The bystander room kept its user and its watcher.
    let snap = client
        .list(pb::ListRequest {
            room_token: bystander.room_token,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("carol", true)]));
    join(&mut client, "calm", "dave", "d1").await;
    let update = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.snapshot.unwrap().total_count, 2);
}

#[tokio::test]
async fn garbage_bytes_on_the_port_do_not_take_the_server_down() {
    let server = TestServer::start().await;
    let inputs: [&[u8]; 4] = [
        b"\x00\x01\x02\x03garbage\xff\xfe",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /presence.v1.PresenceService/Heartbeat HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: 10\r\n\r\n\x00\xff\xff\xff\xff12345",
    ];
    for input in inputs {
        let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        sock.write_all(input).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
    }
    let mut client = server.client().await;
    join(&mut client, "r", "u", "s").await;
    assert_eq!(server.store.stats().sessions, 1);
}

#[tokio::test]
async fn a_public_address_without_auth_is_refused_unless_asked_for() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = presenced::serve(
        listener,
        presenced::Config::defaults(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("--allow-unauthenticated-public"),
        "{err}"
    );
}

every_store!(ids_intervals_and_data_are_bounded_with_clear_messages,);
