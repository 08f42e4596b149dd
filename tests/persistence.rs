//! Restart without losing presence (`--data-dir`): sessions, offline users,
//! data and versions survive a graceful restart and a `kill -9` (up to the
//! last periodic write); no watcher sees a mass leave; a corrupt state file
//! is set aside.

mod common;

use presenced::presence::Store as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use presenced::presence::persist::STATE_FILE;

const KEY: &str = "persistence-test-key-0123456789abcdef";

fn data(key: &str, value: &str) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            key.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
            },
        )]
        .into(),
    }
}

#[tokio::test]
async fn a_graceful_restart_keeps_sessions_offline_users_data_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let configure = |c: &mut presenced::Config| {
        c.persistence.data_dir = Some(dir.path().to_owned());
        c.tokens.keys = vec![KEY.into()];
    };
    let first = TestServer::with(configure).await;
    let mut client = first.client().await;
    let alice = join(&mut client, "r", "alice", "a1").await;
    let bob = join(&mut client, "r", "bob", "b1").await;
    join(&mut client, "r", "carol", "c1").await;
    client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r".into(),
            user_id: "alice".into(),
            data: Some(data("status", "busy")),
        })
        .await
        .unwrap();
    client
        .disconnect(pb::DisconnectRequest {
            session_token: bob.session_token,
        })
        .await
        .unwrap();
    let before = client
        .list_room(pb::ListRoomRequest {
            room_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(
        users(&before),
        pairs(&[("alice", true), ("carol", true), ("bob", false)])
    );
    first.stop().await.unwrap();
    assert!(dir.path().join(STATE_FILE).exists());

    let second = TestServer::with(configure).await;
    assert_eq!(second.store.stats().sessions, 2);
    let mut client = second.client().await;
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: alice.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let after = watch.message().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(users(&after), users(&before));
    assert_eq!(after.users, before.users, "data and offline times too");
    assert!(after.version >= before.version, "versions only grow");
    // The old session token still ends its (restored) session.
    client
        .disconnect(pb::DisconnectRequest {
            session_token: alice.session_token,
        })
        .await
        .unwrap();
    let changed = watch.message().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(
        users(&changed),
        pairs(&[("carol", true), ("alice", false), ("bob", false)])
    );
    assert!(changed.version > after.version);
    // A restored session id still belongs to its room and user.
    let err = client
        .heartbeat(heartbeat("elsewhere", "carol", "c1", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_data_dir_nothing_is_written() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    join(&mut client, "r", "u", "s").await;
    server.stop().await.unwrap();
    let again = TestServer::start().await;
    assert_eq!(again.store.stats().sessions, 0);
}

fn spawn(port: u16, dir: &Path, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(["--persist-interval", "200ms", "--token-key", KEY])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> Client {
    for _ in 0..400 {
        if let Ok(client) = PresenceServiceClient::connect(format!("http://127.0.0.1:{port}")).await
        {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("presenced did not start on port {port}");
}

/// One-second heartbeats: a session lives 2.5 s without one.
fn beat(user: &str, session: &str) -> pb::HeartbeatRequest {
    heartbeat("r", user, session, 1)
}

#[tokio::test]
async fn kill_9_loses_nothing_before_the_last_write_and_nobody_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(port, dir.path(), Stdio::null());
    let mut client = connect(port).await;
    let tokens = client
        .heartbeat(beat("alice", "a1"))
        .await
        .unwrap()
        .into_inner();
    client.heartbeat(beat("bob", "b1")).await.unwrap();
    let carol = client
        .heartbeat(beat("carol", "c1"))
        .await
        .unwrap()
        .into_inner();
    client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r".into(),
            user_id: "alice".into(),
            data: Some(data("colour", "teal")),
        })
        .await
        .unwrap();
    client
        .disconnect(pb::DisconnectRequest {
            session_token: carol.session_token,
        })
        .await
        .unwrap();
    let before = client
        .list(pb::ListRequest {
            room_token: tokens.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(
        users(&before),
        pairs(&[("alice", true), ("bob", true), ("carol", false)])
    );

    // Alice's and Bob's apps heartbeat (a little more often than their
    // 1 s interval, so the restart's one-interval grace is not a race),
    // whatever happens to the server (same port: the channel reconnects).
    let mut beating = client.clone();
    let heartbeats = tokio::spawn(async move {
        loop {
            let _ = beating.heartbeat(beat("alice", "a1")).await;
            let _ = beating.heartbeat(beat("bob", "b1")).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });

    // Wait for a periodic write that has Carol offline, then kill -9.
    let state = dir.path().join(STATE_FILE);
    assert_eventually!(
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("last_disconnected")),
        Duration::from_secs(5),
        "no periodic write"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Down for longer than a session's lifetime (2.5 s): every deadline
    // passes while nobody can heartbeat.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut child = spawn(port, dir.path(), Stdio::null());
    let mut client = connect(port).await;
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: tokens.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(
        users(&first),
        users(&before),
        "everyone came back as they were"
    );
    assert_eq!(first.users, before.users, "data and offline times too");
    assert!(first.version >= before.version);

    // For the next 3 s (well past the one-interval grace), with the
    // heartbeats back, nobody leaves.
    let until = Instant::now() + Duration::from_secs(3);
    while let Ok(message) = tokio::time::timeout_at(until.into(), watch.message()).await {
        let snapshot = message.unwrap().unwrap().snapshot.unwrap();
        assert_eq!(
            snapshot.online_count, 2,
            "a leave across the restart: {snapshot:?}"
        );
    }
    heartbeats.abort();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_corrupt_state_file_is_set_aside_and_the_service_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(STATE_FILE),
        b"{\"format\":\"presenced-state\",\"vers",
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let mut child = spawn(
        port,
        dir.path(),
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let mut client = connect(port).await;
    join(&mut client, "r", "u", "s").await;
    let set_aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(&format!("{STATE_FILE}.corrupt-")))
        .collect();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    let kept = std::fs::read(dir.path().join(&set_aside[0])).unwrap();
    assert_eq!(
        kept, b"{\"format\":\"presenced-state\",\"vers",
        "kept as it was"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(exited(&mut child).await.success());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("set aside")),
        "{logs}"
    );
    // The graceful stop wrote a fresh, valid state.
    let state = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
    assert!(state.contains("\"format\":\"presenced-state\""));
    assert!(state.contains("\"id\":\"u\""));
}

#[tokio::test]
async fn an_unusable_data_dir_stops_the_start_with_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut config = presenced::Config::defaults();
    config.persistence.data_dir = Some(file.path().join("state"));
    let err = presenced::App::new(config).await.err().expect("refused");
    assert!(err.is_config(), "a configuration error (exit 2): {err}");
    assert!(
        err.to_string()
            .starts_with("invalid configuration: --data-dir "),
        "{err}"
    );
}

#[tokio::test]
async fn restored_offline_users_are_forgotten_at_the_end_of_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let configure = |c: &mut presenced::Config| {
        c.persistence.data_dir = Some(dir.path().to_owned());
        c.tokens.keys = vec![KEY.into()];
        c.presence.retention = (Duration::from_secs(3)).into();
    };
    let first = TestServer::with(configure).await;
    let mut client = first.client().await;
    let left = join(&mut client, "r", "left", "l1").await;
    join(&mut client, "r", "here", "h1").await;
    client
        .disconnect(pb::DisconnectRequest {
            session_token: left.session_token,
        })
        .await
        .unwrap();
    let gone_at = Instant::now() + Duration::from_secs(3);
    drop(client);
    first.stop().await.unwrap();

    let second = TestServer::with(configure).await;
    let mut client = second.client().await;
    let list = || pb::ListRoomRequest {
        room_id: "r".into(),
        online_only: false,
        limit: 0,
    };
    let restored = client
        .list_room(list())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        Instant::now() < gone_at,
        "the restart took too long for this test"
    );
    assert_eq!(users(&restored), pairs(&[("here", true), ("left", false)]));
    // Its retention counts from when it left, before the restart.
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
        Duration::from_secs(5),
        "the restored offline user is forgotten"
    );
    assert!(
        Instant::now() >= gone_at - Duration::from_millis(300),
        "not before its retention ended"
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::with(|c| c.persistence.data_dir = Some(dir.path().to_owned())).await;
    let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("in use by another presenced process"),
        "{stderr}"
    );
    // The first one goes on, and its state file is intact.
    first
        .client()
        .await
        .heartbeat(heartbeat("r", "u", "s", 10))
        .await
        .unwrap();
    first.stop().await.unwrap();
    let state = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
    assert!(state.contains("\"id\":\"u\""));
}
