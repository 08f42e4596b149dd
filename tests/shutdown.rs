//! Graceful shutdown: health turns NOT_SERVING, watch streams end with
//! UNAVAILABLE, and the process exits within its grace period.

mod common;

use presenced::presence::Store as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use presenced::grpc::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn thousands_of_streams_end_with_unavailable_and_the_server_stops_in_time() {
    let server = TestServer::start().await; // grace 3 s
    let mut health = HealthClient::new(server.channel().await);
    let mut health_watch = health
        .watch(HealthCheckRequest {
            service: "presence.v1.PresenceService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health_watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    let mut streams = Vec::new();
    for conn in 0..3 {
        let mut client = server.client().await;
        for _ in 0..700 {
            let mut stream = client
                .watch_room(pb::WatchRoomRequest {
                    room_token: tokens.room_token.clone(),
                    limit: 0,
                })
                .await
                .unwrap_or_else(|e| panic!("connection {conn}: {e}"))
                .into_inner();
            stream.message().await.unwrap().unwrap();
            streams.push(stream);
        }
    }
    assert_eq!(server.store.stats().watchers, 2100);

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    let status = tokio::time::timeout(Duration::from_secs(2), health_watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status.status(), ServingStatus::NotServing);
    drop(health_watch);

    for mut stream in streams {
        let err = tokio::time::timeout(Duration::from_secs(3), stream.message())
            .await
            .expect("the stream ends")
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}, the grace period is 3 s",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let mut client = None;
        for _ in 0..200 {
            if let Ok(c) =
                presenced::grpc::pb::presence_service_client::PresenceServiceClient::connect(
                    url.clone(),
                )
                .await
            {
                client = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut client = client.expect("the binary starts");
        let tokens = join(&mut client, "r", "u", "s").await;
        let mut stream = client
            .watch_room(pb::WatchRoomRequest {
                room_token: tokens.room_token,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();

        let started = Instant::now();
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let err = stream.message().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "SIG{signal}");
        drop(client);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "SIG{signal}: {status}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(12),
                "SIG{signal}: still running"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[test]
fn the_binary_refuses_a_public_address_without_auth() {
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--allow-unauthenticated-public"),
        "{stderr}"
    );
}

#[tokio::test]
async fn connections_that_do_not_finish_are_closed_when_the_grace_ends() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::with(|c| c.connections.shutdown_grace = Duration::from_secs(1)).await;
    // An HTTP/1.1 request that never finishes its headers, and a watch
    // stream nobody reads: shutdown cannot wait for them forever.
    let mut stuck = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stuck
        .write_all(b"POST /v1/disconnect HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    let _unread = client
        .watch_room(pb::WatchRoomRequest {
            room_token: tokens.room_token,
            limit: 0,
        })
        .await
        .unwrap();
    let started = Instant::now();
    server.stop().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "and no longer: {took:?}");
}

every_store!(thousands_of_streams_end_with_unavailable_and_the_server_stops_in_time,);
