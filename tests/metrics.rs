//! `/metrics` on the admin listener: after a scripted workload, the
//! counters and gauges moved as they should.

mod common;

use presenced::presence::Store as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use presenced::presence::AnyStore;
use presenced::{App, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Served {
    addr: SocketAddr,
    admin: SocketAddr,
    store: AnyStore,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), presenced::server::Error>>,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Served {
    let mut config = Config::defaults();
    config.connections.shutdown_grace = Duration::from_secs(2);
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let app = App::new(config).await.unwrap().with_admin_listener(admin);
    let store = app.store().clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.serve(listener, stop.clone().cancelled_owned()));
    Served {
        addr,
        admin: admin_addr,
        store,
        stop,
        task,
    }
}

/// `GET path` over HTTP/1.1: (status line, content-type, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (
        head.lines().next().unwrap().to_owned(),
        content_type,
        body.to_owned(),
    )
}

/// Samples of a text exposition: `name{labels}` → value.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, content_type, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    assert!(body.trim_end().ends_with("# EOF"), "a complete exposition");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn get(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        panic!(
            "{key} missing; have {:#?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

const SVC: &str = "service=\"presence.v1.PresenceService\"";

fn rpc(name: &str, method: &str, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("presenced_{name}{{{SVC},method=\"{method}\",code=\"{code}\"}}"),
        None => format!("presenced_{name}{{{SVC},method=\"{method}\"}}"),
    }
}

fn interval(ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

#[tokio::test]
async fn counters_and_gauges_follow_a_scripted_workload() {
    let server = start(|c| {
        c.presence.min_interval = (Duration::from_millis(100)).into();
        c.presence.snapshot_interval = (Duration::from_secs(1)).into();
    })
    .await;
    let mut client = PresenceServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();

    let before = scrape(server.admin).await;
    assert_eq!(get(&before, "presenced_sessions"), 0.0);
    assert_eq!(get(&before, "presenced_snapshots_built_total"), 0.0);
    assert!(get(&before, "process_resident_memory_bytes") > 1e6);
    assert!(get(&before, "process_open_fds") > 0.0);
    assert!(get(&before, "process_start_time_seconds") > 1.6e9);

    // A watcher, then 2 + 10 users join (the 10 in one burst), one with two
    // sessions; one short-lived session expires; one session disconnects.
    let alice = join(&mut client, "r", "alice", "a1").await;
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: alice.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let bob1 = join(&mut client, "r", "bob", "b1").await;
    join(&mut client, "r", "bob", "b2").await;
    for i in 0..10 {
        join(&mut client, "r", &format!("u{i}"), &format!("s{i}")).await;
    }
    client
        .heartbeat(pb::HeartbeatRequest {
            interval: interval(100),
            ..heartbeat("r", "carol", "c1", 0)
        })
        .await
        .unwrap();
    client
        .disconnect(pb::DisconnectRequest {
            session_token: bob1.session_token,
        })
        .await
        .unwrap();
    // Rejected: an empty room id, and a forged room token.
    let err = client
        .heartbeat(heartbeat("", "x", "y", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .list(pb::ListRequest {
            room_token: "forged".into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eventually!(
        server.store.activity().sessions_expired == 1,
        Duration::from_secs(3),
        "carol's session expires"
    );
    // Let the coalesced snapshot go out, and the watcher read it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let delivered_to_us = {
        let mut n = 1;
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(100), watch.message())
                .await
                .map(|m| m.transpose())
        {
            n += 1;
        }
        n
    };

    let m = scrape(server.admin).await;
    // The process's CPU: some (this test's own work), and no more than two
    // cores' worth of its life.
    let cpu = get(&m, "process_cpu_seconds_total");
    let lived = get(&m, "process_start_time_seconds");
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - lived;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    assert!(
        cpu > 0.0 && cpu <= (wall + 1.0) * cores,
        "cpu {cpu} s in {wall} s"
    );
    // 14 joins (alice, bob×2, u0..u9, carol) + 1 invalid.
    assert_eq!(
        get(&m, &rpc("rpc_handled_total", "Heartbeat", Some("OK"))),
        14.0
    );
    assert_eq!(
        get(
            &m,
            &rpc("rpc_handled_total", "Heartbeat", Some("INVALID_ARGUMENT"))
        ),
        1.0
    );
    assert_eq!(get(&m, &rpc("rpc_started_total", "Heartbeat", None)), 15.0);
    assert_eq!(
        get(&m, &rpc("rpc_duration_seconds_count", "Heartbeat", None)),
        15.0
    );
    assert!(get(&m, &rpc("rpc_duration_seconds_sum", "Heartbeat", None)) > 0.0);
    assert_eq!(
        get(&m, &rpc("rpc_handled_total", "Disconnect", Some("OK"))),
        1.0
    );
    assert_eq!(
        get(
            &m,
            &rpc("rpc_handled_total", "List", Some("INVALID_ARGUMENT"))
        ),
        1.0
    );
    assert_eq!(get(&m, &rpc("rpc_started_total", "WatchRoom", None)), 1.0);
    assert_eq!(
        get(
            &m,
            "presenced_requests_rejected_total{reason=\"invalid_argument\"}"
        ),
        2.0
    );
    assert_eq!(get(&m, "presenced_store_errors_total"), 0.0);

    // alice, bob (b2), u0..u9 are online; carol expired.
    assert_eq!(get(&m, "presenced_sessions"), 12.0);
    assert_eq!(get(&m, "presenced_online_users"), 12.0);
    assert_eq!(get(&m, "presenced_rooms"), 1.0);
    assert_eq!(get(&m, "presenced_watch_streams"), 1.0);
    assert_eq!(get(&m, "presenced_watched_rooms"), 1.0);
    assert_eq!(get(&m, "presenced_sessions_created_total"), 14.0);
    assert_eq!(
        get(&m, "presenced_sessions_ended_total{reason=\"disconnect\"}"),
        1.0
    );
    assert_eq!(
        get(&m, "presenced_sessions_ended_total{reason=\"expired\"}"),
        1.0
    );
    let built = get(&m, "presenced_snapshots_built_total");
    let coalesced = get(&m, "presenced_snapshots_coalesced_total");
    let delivered = get(&m, "presenced_snapshots_delivered_total");
    // One snapshot at the watch, then one per visible change: bob, u0..u9
    // and carol came online, carol expired (13). Bob's second tab and the
    // first one closing changed nothing visible. A room with one watcher
    // has a 0 ms window (its fan-out costs next to nothing), so nothing
    // waits for the 1 s --snapshot-interval and nothing is coalesced.
    assert_eq!(built, 14.0, "built {built}");
    assert_eq!(coalesced, 0.0, "coalesced {coalesced}");
    assert!(
        delivered >= delivered_to_us as f64,
        "delivered {delivered} < {delivered_to_us}"
    );
    assert!(
        delivered <= built,
        "one watcher gets each snapshot at most once"
    );

    // The watcher goes away: the gauge drops and the stream is counted as
    // cancelled by the client.
    drop(watch);
    assert_eventually!(
        server.store.stats().watchers == 0,
        Duration::from_secs(3),
        "the watch stream is released"
    );
    let m = scrape(server.admin).await;
    assert_eq!(get(&m, "presenced_watch_streams"), 0.0);
    assert_eq!(get(&m, "presenced_watched_rooms"), 0.0);
    assert_eventually!(
        scrape(server.admin)
            .await
            .get(&rpc("rpc_handled_total", "WatchRoom", Some("CANCELLED")))
            == Some(&1.0),
        Duration::from_secs(3),
        "the watch stream is counted when it ends"
    );

    // Only /metrics, /healthz and /readyz are served on the admin port.
    let (status, _, _) = http_get(server.admin, "/").await;
    assert!(status.contains("404"), "{status}");

    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn unknown_paths_share_one_series_and_the_beacon_is_counted() {
    let server = start(|_| {}).await;
    // A gRPC call to a method that does not exist.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<pb::ListRoomRequest, pb::ListRoomResponse, _>(
            tonic::Request::new(pb::ListRoomRequest::default()),
            http::uri::PathAndQuery::from_static("/presence.v1.PresenceService/NoSuchMethod"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    // A beacon with a token this server did not sign.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/disconnect HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nforged")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let m = scrape(server.admin).await;
    assert_eq!(
        get(&m, "presenced_rpc_handled_total{service=\"unknown\",method=\"unknown\",code=\"UNIMPLEMENTED\"}"),
        1.0
    );
    assert_eq!(
        get(&m, "presenced_rpc_handled_total{service=\"http\",method=\"/v1/disconnect\",code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "presenced_requests_rejected_total{reason=\"unimplemented\"}"
        ),
        1.0
    );
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_binary_serves_metrics_on_metrics_listen() {
    let free = || std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (addr, admin) = (free(), free());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args([
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            &admin.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..400 {
        if let Ok(c) = PresenceServiceClient::connect(format!("http://{addr}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    join(&mut client.expect("presenced starts"), "r", "u", "s").await;
    let m = scrape(admin).await;
    assert_eq!(get(&m, "presenced_sessions"), 1.0);
    assert_eq!(
        get(&m, &rpc("rpc_handled_total", "Heartbeat", Some("OK"))),
        1.0
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
