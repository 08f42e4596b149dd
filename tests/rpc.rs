//! Every unary RPC against a real server over a real socket.

mod common;

use common::*;
use presenced::grpc::pb;
use tonic::Code;

async fn heartbeat_list_disconnect_round_trip() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let alice1 = join(&mut client, "chat:1", "alice", "a-tab1").await;
    let _alice2 = join(&mut client, "chat:1", "alice", "a-tab2").await;
    let bob = join(&mut client, "chat:1", "bob", "b-tab1").await;
    assert_eq!(alice1.room_token, bob.room_token, "one room, one token");
    assert_ne!(alice1.session_token, bob.session_token);

    let list = |limit| pb::ListRequest {
        room_token: bob.room_token.clone(),
        limit,
    };
    let snap = client
        .list(list(0))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.room_id, "chat:1");
    assert_eq!(users(&snap), pairs(&[("alice", true), ("bob", true)]));
    assert_eq!((snap.online_count, snap.total_count), (2, 2));

    // Two tabs, one closed: still online.
    client
        .disconnect(pb::DisconnectRequest {
            session_token: alice1.session_token.clone(),
        })
        .await
        .unwrap();
    let snap = client
        .list(list(0))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("alice", true), ("bob", true)]));

    // Bob leaves: listed offline with last_disconnected, after the online.
    client
        .disconnect(pb::DisconnectRequest {
            session_token: bob.session_token.clone(),
        })
        .await
        .unwrap();
    let snap = client
        .list(list(1))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("alice", true)]), "limit 1");
    assert_eq!((snap.online_count, snap.total_count), (1, 2));
    let snap = client
        .list(list(0))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("alice", true), ("bob", false)]));
    assert!(snap.users[0].last_disconnected.is_none());
    let seen = snap.users[1].last_disconnected.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - seen.seconds).abs() <= 5, "last_disconnected is now");

    // Disconnect is idempotent.
    client
        .disconnect(pb::DisconnectRequest {
            session_token: bob.session_token,
        })
        .await
        .unwrap();
}

async fn list_user_update_list_room_remove() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    join(&mut client, "r1", "u", "s1").await;
    let r2 = join(&mut client, "r2", "u", "s2").await;
    join(&mut client, "r2", "v", "s3").await;
    client
        .disconnect(pb::DisconnectRequest {
            session_token: r2.session_token,
        })
        .await
        .unwrap();

    let rooms = client
        .list_user(pb::ListUserRequest {
            user_id: "u".into(),
            online_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let rooms: Vec<_> = rooms
        .iter()
        .map(|r| (r.room_id.as_str(), r.online))
        .collect();
    assert_eq!(rooms, [("r1", true), ("r2", false)]);
    let online = client
        .list_user(pb::ListUserRequest {
            user_id: "u".into(),
            online_only: true,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(online.len(), 1);

    // Per-user data shows in listings.
    let data: prost_types::Struct = prost_types::Struct {
        fields: [(
            "typing".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::BoolValue(true)),
            },
        )]
        .into(),
    };
    client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r2".into(),
            user_id: "v".into(),
            data: Some(data.clone()),
        })
        .await
        .unwrap();
    let err = client
        .update_room_user(pb::UpdateRoomUserRequest {
            room_id: "r2".into(),
            user_id: "nobody".into(),
            data: Some(data.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let snap = client
        .list_room(pb::ListRoomRequest {
            room_id: "r2".into(),
            online_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("v", true), ("u", false)]));
    assert_eq!(snap.users[0].data.as_ref(), Some(&data));
    let snap = client
        .list_room(pb::ListRoomRequest {
            room_id: "r2".into(),
            online_only: true,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("v", true)]));
    assert_eq!(snap.total_count, 2);

    client
        .remove_room_user(pb::RemoveRoomUserRequest {
            room_id: "r2".into(),
            user_id: "u".into(),
        })
        .await
        .unwrap();
    let rooms = client
        .list_user(pb::ListUserRequest {
            user_id: "u".into(),
            online_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(rooms.len(), 1);

    client
        .remove_room(pb::RemoveRoomRequest {
            room_id: "r1".into(),
        })
        .await
        .unwrap();
    let snap = client
        .list_room(pb::ListRoomRequest {
            room_id: "r1".into(),
            online_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.total_count, 0);
    // The session of the removed room is gone: its id is free again.
    join(&mut client, "r3", "u", "s1").await;
    assert_eq!(server.sessions().await, 2);
}

async fn session_reuse_is_a_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    join(&mut client, "r1", "u", "s").await;
    let err = client
        .heartbeat(heartbeat("r2", "u", "s", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("another room"), "{}", err.message());
    let err = client
        .heartbeat(heartbeat("r1", "v", "s", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("another user"), "{}", err.message());
}

async fn tokens_are_refused_when_forged_truncated_or_of_the_wrong_kind() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;

    let list = |token: &str| pb::ListRequest {
        room_token: token.to_owned(),
        limit: 0,
    };
    // A session token is not a room token, and the reverse.
    let err = client.list(list(&tokens.session_token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("expected a room token"),
        "{}",
        err.message()
    );
    let err = client
        .disconnect(pb::DisconnectRequest {
            session_token: tokens.room_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Truncated or garbage: malformed or not ours, never an empty room.
    let truncated = &tokens.room_token[..tokens.room_token.len() - 2];
    for bad in ["", "garbage", truncated, &"A".repeat(5000)] {
        let err = client.list(list(bad)).await.unwrap_err();
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::Unauthenticated),
            "{bad:?}: {err:?}"
        );
        assert!(err.message().starts_with("room_token"), "{}", err.message());
    }

    // A token signed with another key (another deployment) is refused.
    let other = TestServer::with(|c| {
        c.tokens.keys = vec!["the key of another deployment, 32+ bytes".into()]
    })
    .await;
    let mut other_client = other.client().await;
    let foreign = join(&mut other_client, "r", "u", "s2").await;
    let err = client.list(list(&foreign.room_token)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .watch_room(pb::WatchRoomRequest {
            room_token: foreign.room_token,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

async fn a_shared_token_key_makes_tokens_valid_everywhere_and_after_restart() {
    const KEY: &str = "an example key of at least thirty-two bytes";
    let a = TestServer::with(|c| c.tokens.keys = vec![KEY.into()]).await;
    let mut client_a = a.client().await;
    let tokens = join(&mut client_a, "room", "u", "s").await;
    a.stop().await.unwrap();

    let b = TestServer::with(|c| c.tokens.keys = vec![KEY.into()]).await;
    let mut client_b = b.client().await;
    let snap = client_b
        .list(pb::ListRequest {
            room_token: tokens.room_token,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.room_id, "room");
    client_b
        .disconnect(pb::DisconnectRequest {
            session_token: tokens.session_token,
        })
        .await
        .unwrap();
}

async fn listings_have_a_default_size_and_a_cap() {
    let server = TestServer::with(|c| {
        c.presence.default_list_limit = 3;
        c.presence.max_list_limit = 5;
    })
    .await;
    let mut client = server.client().await;
    let mut token = String::new();
    for i in 0..8 {
        token = join(&mut client, "big", &format!("u{i}"), &format!("s{i}"))
            .await
            .room_token;
    }
    for (asked, listed) in [(0, 3), (2, 2), (100, 5)] {
        let snap = client
            .list(pb::ListRequest {
                room_token: token.clone(),
                limit: asked,
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(snap.users.len(), listed, "asked for {asked}");
        assert_eq!(
            (snap.online_count, snap.total_count),
            (8, 8),
            "counts cover everyone"
        );
        let by_id = client
            .list_room(pb::ListRoomRequest {
                room_id: "big".into(),
                online_only: true,
                limit: asked,
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(by_id.users.len(), listed, "ListRoom, asked for {asked}");
    }
    for i in 0..7 {
        join(&mut client, &format!("room-{i}"), "many", &format!("m{i}")).await;
    }
    let rooms = |limit| pb::ListUserRequest {
        user_id: "many".into(),
        online_only: false,
        limit,
    };
    assert_eq!(
        client
            .list_user(rooms(0))
            .await
            .unwrap()
            .into_inner()
            .rooms
            .len(),
        3
    );
    assert_eq!(
        client
            .list_user(rooms(50))
            .await
            .unwrap()
            .into_inner()
            .rooms
            .len(),
        5
    );
}

every_store!(
    listings_have_a_default_size_and_a_cap,
    heartbeat_list_disconnect_round_trip,
    list_user_update_list_room_remove,
    session_reuse_is_a_failed_precondition,
    tokens_are_refused_when_forged_truncated_or_of_the_wrong_kind,
    a_shared_token_key_makes_tokens_valid_everywhere_and_after_restart,
);
