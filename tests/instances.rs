//! Several presenced processes sharing one Redis behave as one service:
//! calls go to any instance, watchers anywhere see changes made anywhere,
//! an instance can die, Redis can go away and come back, and pub/sub can
//! lose messages, with nobody's presence lost or stuck.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::instance::Instance;
use common::redis::{prefix, shared_cluster, shared_redis, RedisServer};
use common::*;
use presenced::grpc::pb;
use tonic::Code;

const KEY: &str = "the token key of the instances test (32+ bytes)";
/// Long enough for a change to reach any watcher on a busy test machine.
const SOON: Duration = Duration::from_secs(5);

/// Three instances on `url` under one new key prefix.
async fn three(url: &str, extra: &[&str]) -> Vec<Instance> {
    three_under(url, &prefix(), extra).await
}

/// Three instances on `url` under `prefix`.
async fn three_under(url: &str, prefix: &str, extra: &[&str]) -> Vec<Instance> {
    let mut args = vec![
        "--store",
        url,
        "--store-key-prefix",
        prefix,
        "--token-key",
        KEY,
        // Three servers, a Cluster and hundreds of calls share two cores
        // with the other tests: a slow call is not an outage here (the
        // outage tests set their own, short, timeout).
        "--store-timeout",
        "5s",
    ];
    args.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(Instance::start(&args).await);
    }
    out
}

type Watch = tonic::Streaming<pb::WatchRoomResponse>;

async fn watch(client: &mut Client, token: &str) -> Watch {
    client
        .watch_room(pb::WatchRoomRequest {
            room_token: token.into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next snapshot within `within`.
async fn next(stream: &mut Watch, within: Duration) -> pb::RoomSnapshot {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("a snapshot in time")
        .unwrap()
        .unwrap()
        .snapshot
        .unwrap()
}

/// Reads snapshots until one satisfies `done`, within `within`.
async fn until(
    stream: &mut Watch,
    within: Duration,
    done: impl Fn(&pb::RoomSnapshot) -> bool,
) -> pb::RoomSnapshot {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let snap = next(stream, left).await;
        if done(&snap) {
            return snap;
        }
    }
}

/// Nothing arrives within `within`.
async fn quiet(stream: &mut Watch, within: Duration) {
    if let Ok(got) = tokio::time::timeout(within, stream.message()).await {
        panic!("expected no snapshot, got {got:?}");
    }
}

async fn calls_go_to_any_instance_and_watchers_anywhere_see_them(url: String) {
    let nodes = three(&url, &[]).await;
    let (mut a, mut b, mut c) = (
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    );
    let alice = join(&mut a, "doc", "alice", "alice-tab-1").await;
    // List and WatchRoom through B, with A's room token.
    let listed = b
        .list(pb::ListRequest {
            room_token: alice.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&listed), pairs(&[("alice", true)]));
    let mut on_b = watch(&mut b, &alice.room_token).await;
    let mut on_c = watch(&mut c, &alice.room_token).await;
    let first = next(&mut on_b, SOON).await;
    assert_eq!(users(&first), pairs(&[("alice", true)]));
    next(&mut on_c, SOON).await;

    // Bob's two tabs on two instances count once.
    let bob1 = join(&mut a, "doc", "bob", "bob-tab-1").await;
    let seen = next(&mut on_b, SOON).await;
    assert_eq!(users(&seen), pairs(&[("alice", true), ("bob", true)]));
    assert!(seen.version > first.version);
    assert_eq!(next(&mut on_c, SOON).await.version, seen.version);
    let bob2 = join(&mut c, "doc", "bob", "bob-tab-2").await;
    quiet(&mut on_b, Duration::from_millis(300)).await;
    // Closing one of them (through C) changes nothing visible.
    c.disconnect(pb::DisconnectRequest {
        session_token: bob1.session_token,
    })
    .await
    .unwrap();
    quiet(&mut on_b, Duration::from_millis(300)).await;
    quiet(&mut on_c, Duration::from_millis(50)).await;
    // The other through A's beacon: bob goes offline everywhere.
    beacon(&nodes[0], &bob2.session_token).await;
    let left = next(&mut on_b, SOON).await;
    assert_eq!(users(&left), pairs(&[("alice", true), ("bob", false)]));
    assert!(left.version > seen.version);
    assert_eq!(users(&next(&mut on_c, SOON).await), users(&left));
    // A plain heartbeat anywhere is silent everywhere.
    join(&mut b, "doc", "alice", "alice-tab-1").await;
    quiet(&mut on_b, Duration::from_millis(300)).await;
    quiet(&mut on_c, Duration::from_millis(50)).await;
    // ListUser on any instance.
    let rooms = c
        .list_user(pb::ListUserRequest {
            user_id: "bob".into(),
            online_only: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(rooms.len(), 1);
    assert!(!rooms[0].online);
    // What each instance did with Redis shows in its metrics.
    let m = nodes[0].metrics().await;
    assert_eq!(m["presenced_store_up"], 1.0);
    let heartbeats = m["presenced_store_call_duration_seconds_count{op=\"heartbeat\"}"];
    assert!(
        heartbeats >= 2.0,
        "alice and bob joined through A: {heartbeats}"
    );
    assert_eq!(
        m["presenced_store_call_duration_seconds_bucket{le=\"+Inf\",op=\"heartbeat\"}"],
        heartbeats
    );
    assert!(m["presenced_sweeps_total"] >= 1.0);
}

async fn beacon(node: &Instance, token: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .unwrap();
    let request = format!(
        "POST /v1/disconnect HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{token}",
        token.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
}

async fn an_instance_killed_loses_no_presence(url: String) {
    let mut nodes = three(&url, &[]).await;
    let mut a = nodes[0].client().await;
    let mut on_b = {
        let tokens = join(&mut a, "room", "u0", "s0").await;
        watch(&mut nodes[1].client().await, &tokens.room_token).await
    };
    let mut on_c = watch(
        &mut nodes[2].client().await,
        &join(&mut a, "room", "u1", "s1").await.room_token,
    )
    .await;
    until(&mut on_b, SOON, |s| s.online_count == 2).await;
    until(&mut on_c, SOON, |s| s.online_count == 2).await;

    nodes[0].kill9();
    // A's clients carry on through B: the same sessions, the same tokens.
    let mut b = nodes[1].client().await;
    let again = join(&mut b, "room", "u0", "s0").await;
    join(&mut b, "room", "u1", "s1").await;
    join(&mut b, "room", "u2", "s2").await;
    let after = until(&mut on_b, SOON, |s| s.online_count == 3).await;
    assert_eq!(after.total_count, 3, "nobody was lost with A");
    until(&mut on_c, SOON, |s| s.online_count == 3).await;
    // A's session tokens still end sessions, through C.
    nodes[2]
        .client()
        .await
        .disconnect(pb::DisconnectRequest {
            session_token: again.session_token,
        })
        .await
        .unwrap();
    let left = until(&mut on_c, SOON, |s| s.online_count == 2).await;
    assert_eq!(left.users.last().unwrap().user_id, "u0");
}

/// What the Redis nodes under `prefix` hold outside the rooms: session
/// claims, sessions counted in user indexes, and sessions counted in the
/// totals behind `--max-sessions`.
fn held_outside_rooms(redis: &[&RedisServer], prefix: &str) -> (usize, u64, u64) {
    let (mut claims, mut indexed, mut totals) = (0, 0, 0);
    for node in redis {
        let scan = |pattern: &str| {
            let out = node.cli(&["--scan", "--pattern", pattern]);
            out.lines().map(str::to_owned).collect::<Vec<_>>()
        };
        for key in scan(&format!("{{{prefix}:i*}}:s")) {
            claims += node.cli(&["HLEN", &key]).trim().parse::<usize>().unwrap();
        }
        for key in scan(&format!("{{{prefix}:i*}}:u")) {
            // user, then its records 'room US sessions US touched' by RS.
            let out = node.cli(&["HGETALL", &key]);
            for entry in out.lines().skip(1).step_by(2) {
                for record in entry.split('\u{1e}') {
                    let n = record.split('\u{1f}').nth(1).unwrap();
                    indexed += n.parse::<u64>().unwrap();
                }
            }
        }
        for key in scan(&format!("{{{prefix}:t}}")) {
            totals += node
                .cli(&["HGET", &key, "s"])
                .trim()
                .parse::<u64>()
                .unwrap();
        }
    }
    (claims, indexed, totals)
}

async fn each_expiring_session_ends_exactly_once(url: String, redis: &[&RedisServer]) {
    const N: usize = 60;
    let prefix = prefix();
    let max = N.to_string();
    let flags = ["--snapshot-interval", "20ms", "--max-sessions", &max];
    let nodes = three_under(&url, &prefix, &flags).await;
    let mut a = nodes[0].client().await;
    let mut token = String::new();
    let join = |i: usize, round: &str| pb::HeartbeatRequest {
        interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..heartbeat(
            &format!("room-{}", i % 6),
            &format!("u{i}"),
            &format!("s{i}{round}"),
            0,
        )
    };
    for i in 0..N {
        let hb = a.heartbeat(join(i, "")).await.unwrap().into_inner();
        if i % 6 == 0 {
            token = hb.room_token;
        }
    }
    assert_eq!(
        held_outside_rooms(redis, &prefix),
        (N, N as u64, N as u64),
        "each session claimed and counted once"
    );
    // A watcher of room-0 on every instance sees each of its users leave
    // once.
    let mut streams = Vec::new();
    for node in &nodes {
        let mut s = watch(&mut node.client().await, &token).await;
        assert_eq!(next(&mut s, SOON).await.online_count, 10);
        streams.push(s);
    }
    for s in &mut streams {
        let mut online_seen = Vec::new();
        loop {
            let snap = next(s, Duration::from_secs(6)).await;
            online_seen.push(snap.online_count);
            if snap.online_count == 0 {
                break;
            }
        }
        assert!(
            online_seen.windows(2).all(|w| w[1] < w[0]),
            "online only falls: {online_seen:?}"
        );
        quiet(s, Duration::from_millis(300)).await;
    }
    let expired = |m: HashMap<String, f64>| {
        m.get("presenced_sessions_ended_total{reason=\"expired\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let mut total = 0.0;
    for node in &nodes {
        total += expired(node.metrics().await);
    }
    assert_eq!(
        total as usize, N,
        "every session ended once, by one instance"
    );
    // Their second steps ran too: claims given up, indexes and totals
    // uncounted (the totals never heal, so a leak there is for good).
    let deadline = tokio::time::Instant::now() + SOON;
    let mut held = held_outside_rooms(redis, &prefix);
    while held != (0, 0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        held = held_outside_rooms(redis, &prefix);
    }
    assert_eq!(held, (0, 0, 0), "claims, index counts, totals left behind");
    // So the limit in all has room for as many again.
    for i in 0..N {
        a.heartbeat(join(i, "-again")).await.unwrap();
    }
}

async fn watchers_converge_after_their_subscriptions_are_killed(redis: &RedisServer) {
    let prefix = prefix();
    let url = redis.url();
    let args = [
        "--store",
        &url,
        "--store-key-prefix",
        &prefix,
        "--token-key",
        KEY,
        "--store-resync-interval",
        "1s",
        "--store-timeout",
        "5s",
    ];
    let a = Instance::start(&args).await;
    let b = Instance::start(&args).await;
    let mut ca = a.client().await;
    let tokens = join(&mut ca, "room", "first", "f1").await;
    let mut on_b = watch(&mut b.client().await, &tokens.room_token).await;
    next(&mut on_b, SOON).await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "killed {killed}"
    );
    // Changes made while the subscriptions are gone are not lost for long.
    for i in 0..5 {
        join(&mut ca, "room", &format!("u{i}"), &format!("s{i}")).await;
    }
    // The documented bound: one resync interval, a window, a round trip.
    let converged = until(&mut on_b, Duration::from_millis(2500), |s| {
        s.online_count == 6
    })
    .await;
    assert_eq!(converged.total_count, 6);
    let m = b.metrics().await;
    assert!(
        m["presenced_store_notifier_reconnects_total"] >= 1.0,
        "{m:?}"
    );
    // And notifications flow again.
    join(&mut ca, "room", "late", "l1").await;
    until(&mut on_b, SOON, |s| s.online_count == 7).await;
}

async fn redis_going_away_and_coming_back(keep_data: bool) {
    let mut redis = RedisServer::start();
    let prefix = prefix();
    let url = redis.url();
    let args = [
        "--store",
        &url,
        "--store-key-prefix",
        &prefix,
        "--token-key",
        KEY,
        "--store-timeout",
        "500ms",
    ];
    let a = Instance::start(&args).await;
    let b = Instance::start(&args).await;
    let mut ca = a.client().await;
    let tokens = join(&mut ca, "room", "alice", "a1").await;
    join(&mut ca, "room", "bob", "b1").await;
    let mut on_b = watch(&mut b.client().await, &tokens.room_token).await;
    let before = until(&mut on_b, SOON, |s| s.online_count == 2).await;

    redis.stop(keep_data);
    // Calls fail fast with UNAVAILABLE naming the store; health follows.
    let started = std::time::Instant::now();
    let err = ca
        .heartbeat(heartbeat("room", "carol", "c1", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&url), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eventually!(
        a.health().await == Some(2),
        Duration::from_secs(5),
        "NOT_SERVING while Redis is down"
    );
    let (status, body) = a.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(a.metrics().await["presenced_store_up"] == 0.0);

    redis.run();
    assert_eventually!(
        a.health().await == Some(1),
        Duration::from_secs(10),
        "SERVING again, no restart"
    );
    assert_eventually!(
        b.health().await == Some(1),
        Duration::from_secs(10),
        "B too"
    );
    assert_eq!(a.admin_get("/readyz").await.0, 200);
    if keep_data {
        // Nothing acknowledged before was lost.
        let listed = ca
            .list(pb::ListRequest {
                room_token: tokens.room_token.clone(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(users(&listed), users(&before));
    } else {
        // The room is gone with the data: the watcher (its stream still
        // open) sees it, at a higher version; heartbeats bring presence back.
        let empty = until(&mut on_b, Duration::from_secs(6), |s| s.total_count == 0).await;
        assert!(empty.version > before.version);
    }
    join(&mut ca, "room", "alice", "a1").await;
    join(&mut ca, "room", "carol", "c1").await;
    let back = until(&mut on_b, Duration::from_secs(6), |s| {
        s.users.iter().any(|u| u.user_id == "carol" && u.online)
    })
    .await;
    assert!(back.version > before.version, "versions still grow");
}

async fn a_flood_of_joins_over_three_instances_is_coalesced(url: String) {
    let nodes = three(&url, &[]).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
    }
    let tokens = join(&mut clients[0], "flood", "seed", "seed").await;
    // 400 watchers on B over 4 connections.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut client = nodes[1].client().await;
        for _ in 0..100 {
            streams.push(watch(&mut client, &tokens.room_token).await);
        }
    }
    for s in &mut streams {
        next(s, SOON).await;
    }
    let built_before = nodes[1].metrics().await["presenced_snapshots_built_total"];
    let started = std::time::Instant::now();
    let joins = (0..600).map(|i| {
        let mut client = clients[i % 3].clone();
        async move { join(&mut client, "flood", &format!("u{i}"), &format!("s{i}")).await }
    });
    futures_util::future::join_all(joins).await;
    let elapsed = started.elapsed();
    let mut counts = Vec::new();
    for s in &mut streams {
        let mut n = 0;
        loop {
            n += 1;
            if next(s, Duration::from_secs(15)).await.total_count == 601 {
                break;
            }
        }
        counts.push(n);
    }
    let built = nodes[1].metrics().await["presenced_snapshots_built_total"] - built_before;
    // 400 watchers of a growing room: a window of 6 ms and more (up to the
    // 50 ms cap), so at most one build per 6 ms of joins, and the same for
    // each watcher, however many changes came in.
    let bound = (elapsed.as_millis() as f64 / 6.0).ceil() + 3.0;
    assert!(
        built <= bound,
        "{built} snapshots built for 600 joins in {elapsed:?} (bound {bound})"
    );
    let most = *counts.iter().max().unwrap() as f64;
    assert!(
        most <= bound,
        "a watcher got {most} snapshots (bound {bound})"
    );
}

#[tokio::test]
async fn standalone_calls_go_to_any_instance() {
    calls_go_to_any_instance_and_watchers_anywhere_see_them(shared_redis().url()).await;
}

#[tokio::test]
async fn cluster_calls_go_to_any_instance() {
    calls_go_to_any_instance_and_watchers_anywhere_see_them(shared_cluster().url()).await;
}

#[tokio::test]
async fn standalone_an_instance_killed_loses_no_presence() {
    an_instance_killed_loses_no_presence(shared_redis().url()).await;
}

#[tokio::test]
async fn cluster_an_instance_killed_loses_no_presence() {
    an_instance_killed_loses_no_presence(shared_cluster().url()).await;
}

#[tokio::test]
async fn standalone_each_expiring_session_ends_exactly_once() {
    each_expiring_session_ends_exactly_once(shared_redis().url(), &[shared_redis()]).await;
}

#[tokio::test]
async fn cluster_each_expiring_session_ends_exactly_once() {
    let cluster = shared_cluster();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    each_expiring_session_ends_exactly_once(cluster.url(), &nodes).await;
}

#[tokio::test]
async fn killed_pubsub_connections_converge_within_the_bound() {
    watchers_converge_after_their_subscriptions_are_killed(shared_redis()).await;
}

#[tokio::test]
async fn redis_stopped_and_started_with_its_data() {
    redis_going_away_and_coming_back(true).await;
}

#[tokio::test]
async fn redis_stopped_and_started_without_its_data() {
    redis_going_away_and_coming_back(false).await;
}

#[tokio::test]
async fn standalone_a_flood_of_joins_is_coalesced() {
    a_flood_of_joins_over_three_instances_is_coalesced(shared_redis().url()).await;
}

#[tokio::test]
async fn cluster_a_flood_of_joins_is_coalesced() {
    a_flood_of_joins_over_three_instances_is_coalesced(shared_cluster().url()).await;
}
