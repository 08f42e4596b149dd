//! Connection hygiene: dead HTTP/2 peers are detected by keepalive pings and
//! their watch streams released; connections are closed at their maximum
//! age while a reconnecting watcher misses nothing; slow HTTP/1.1 headers
//! are cut off; the per-connection stream limit holds.

mod common;

use presenced::presence::Store as _;
use std::time::{Duration, Instant};

use common::*;
use presenced::grpc::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// HPACK "literal header field without indexing, new name" (no Huffman).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0);
        out.push(name.len() as u8);
        out.extend(name.as_bytes());
        out.push(value.len() as u8);
        out.extend(value.as_bytes());
    }
    out
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_loses_its_watch_streams() {
    let server = TestServer::with(|c| {
        c.connections.keepalive_interval = Duration::from_millis(500);
        c.connections.keepalive_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;

    // A hand-made HTTP/2 client: preface, SETTINGS, one WatchRoom call, and
    // then silence: it never reads, so it never acknowledges a ping.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/presence.v1.PresenceService/WatchRoom"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    bytes.extend(frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
    let request = pb::WatchRoomRequest {
        room_token: tokens.room_token.clone(),
        limit: 0,
    }
    .encode_to_vec();
    let mut message = vec![0];
    message.extend((request.len() as u32).to_be_bytes());
    message.extend(request);
    bytes.extend(frame(0x0, 0x1, 1, &message)); // DATA, END_STREAM
    silent.write_all(&bytes).await.unwrap();

    assert_eventually!(
        server.store.stats().watchers == 1,
        Duration::from_secs(3),
        "the silent client's watch stream is open"
    );
    let open = Instant::now();
    // A well-behaved client on its own connection answers pings and stays.
    let mut healthy = server
        .client()
        .await
        .watch_room(pb::WatchRoomRequest {
            room_token: tokens.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    healthy.message().await.unwrap().unwrap();
    assert_eq!(server.store.stats().watchers, 2);

    // Interval + timeout = 1 s (+ scheduling slack).
    assert_eventually!(
        server.store.stats().watchers == 1,
        Duration::from_millis(2500),
        "the silent client's stream is still held"
    );
    assert!(
        open.elapsed() >= Duration::from_millis(500),
        "released too early"
    );
    // The healthy watcher still works well after several ping rounds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    join(&mut client, "r", "v", "sv").await;
    let snapshot = healthy.message().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(users(&snapshot), pairs(&[("u", true), ("v", true)]));
    assert_eq!(server.store.stats().watchers, 1);
    drop(silent);
}

async fn connections_close_at_max_age_and_a_reconnecting_watcher_sees_no_gap() {
    let server = TestServer::with(|c| {
        c.connections.max_connection_age = Some(Duration::from_millis(600));
        c.connections.max_connection_age_grace = Duration::from_millis(200);
        c.presence.snapshot_interval = (Duration::from_millis(10)).into();
    })
    .await;
    let mut writer = server.client().await;
    let tokens = join(&mut writer, "r", "u0", "s0").await;

    // The watcher resubscribes whenever its stream ends, as clients do.
    let channel = server.channel().await;
    let room_token = tokens.room_token.clone();
    let watcher = tokio::spawn(async move {
        let mut client = pb::presence_service_client::PresenceServiceClient::new(channel);
        let mut seen: Vec<pb::RoomSnapshot> = Vec::new();
        let mut streams = 0;
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            let call = client
                .watch_room(pb::WatchRoomRequest {
                    room_token: room_token.clone(),
                    limit: 0,
                })
                .await;
            let Ok(response) = call else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            streams += 1;
            let mut stream = response.into_inner();
            loop {
                match tokio::time::timeout_at(deadline.into(), stream.message()).await {
                    Ok(Ok(Some(message))) => seen.push(message.snapshot.unwrap()),
                    Ok(_) => break, // ended (the connection was closed): resubscribe
                    Err(_) => return (streams, seen),
                }
            }
        }
        (streams, seen)
    });

    // Users keep joining throughout, across several connection lifetimes
    // (the writer reconnects too).
    let mut joined = 1;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3000) {
        let user = format!("u{joined}");
        if writer
            .heartbeat(heartbeat("r", &user, &format!("s{joined}"), 10))
            .await
            .is_ok()
        {
            joined += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (streams, seen) = watcher.await.unwrap();
    assert!(
        streams >= 3,
        "the connection was closed at its age only {streams} times"
    );
    // Versions never go back (a new stream's first snapshot may repeat the
    // last one seen, version and all), and nobody ever disappears from the
    // listing: each snapshot holds every user of the one before.
    for pair in seen.windows(2) {
        let (v0, v1) = (pair[0].version, pair[1].version);
        assert!(
            v1 > v0 || (v1 == v0 && pair[1] == pair[0]),
            "{v0} then {v1}"
        );
        let before: Vec<_> = users(&pair[0]);
        let after: Vec<_> = users(&pair[1]);
        assert!(after.starts_with(&before), "{before:?} then {after:?}");
    }
    let last = seen.last().unwrap();
    assert_eq!(
        last.online_count as usize, joined,
        "the last snapshot has everyone"
    );
}

#[tokio::test]
async fn slow_http1_headers_are_cut_off() {
    let server = TestServer::start().await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v1/disconnect HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Let the server start reading the head, then jump past the timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::pause();
    tokio::time::advance(presenced::config::HTTP1_HEADER_READ_TIMEOUT + Duration::from_secs(1))
        .await;
    tokio::time::resume();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the connection with unfinished headers is closed");
    // Closed, possibly after a 408 answer.
    if let Ok(n) = read {
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test]
async fn the_stream_limit_per_connection_holds() {
    let server = TestServer::with(|c| c.connections.max_streams_per_connection = 2).await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    let room_token = tokens.room_token;
    let request = move || pb::WatchRoomRequest {
        room_token: room_token.clone(),
        limit: 0,
    };
    let mut first = client.watch_room(request()).await.unwrap().into_inner();
    let mut second = client.watch_room(request()).await.unwrap().into_inner();
    first.message().await.unwrap().unwrap();
    second.message().await.unwrap().unwrap();
    assert_eq!(server.store.stats().watchers, 2);
    // A third stream on the same connection waits for a free slot.
    let mut third_client = client.clone();
    let third = tokio::spawn(async move {
        let mut stream = third_client
            .watch_room(request())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third concurrent stream was opened");
    assert_eq!(server.store.stats().watchers, 2);
    drop(first);
    tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("the third stream opens once a slot is free")
        .unwrap();
}

every_store!(connections_close_at_max_age_and_a_reconnecting_watcher_sees_no_gap,);
