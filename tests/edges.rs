//! What a broken or hostile client gets, over real sockets: a message that
//! does not decode, a reset stream, a message or headers over the limit,
//! data in the store that cannot be read. Each gets the right status and
//! metric, and the connection and every other call go on.

mod common;

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use common::*;
use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Bytes as they are, for messages no real client would send.
#[derive(Debug, Default, Clone)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_call(channel: &Channel, path: &'static str, message: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(message),
        http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A `Struct` nested `depth` levels deep.
fn nested(depth: usize) -> prost_types::Struct {
    let mut s = prost_types::Struct::default();
    for _ in 0..depth {
        let mut outer = prost_types::Struct::default();
        outer.fields.insert(
            "a".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(s)),
            },
        );
        s = outer;
    }
    s
}

const HEARTBEAT: &str = "/presence.v1.PresenceService/Heartbeat";

fn rpc_metric(name: &str, method: &str, code: &str) -> String {
    format!(
        "presenced_{name}{{service=\"presence.v1.PresenceService\",method=\"{method}\",code=\"{code}\"}}"
    )
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_the_callers_error() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let err = raw_call(
        &channel,
        HEARTBEAT,
        Bytes::from_static(b"\xff\xff\xff\x0fnot protobuf"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("the message does not decode"),
        "{}",
        err.message()
    );
    // A data object nested past the decoder's recursion limit: ~1 KB.
    let deep = pb::UpdateRoomUserRequest {
        room_id: "r".into(),
        user_id: "u".into(),
        data: Some(nested(40)),
    }
    .encode_to_vec();
    assert!(deep.len() < 2000, "{} bytes", deep.len());
    let err = raw_call(
        &channel,
        "/presence.v1.PresenceService/UpdateRoomUser",
        deep.into(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Counted as refused, not as a server failure (which would also log a
    // warning).
    assert_eq!(server.metric("presenced_store_errors_total"), 0.0);
    assert_eq!(
        server.metric("presenced_requests_rejected_total{reason=\"invalid_argument\"}"),
        2.0
    );
    assert_eq!(
        server.metric(&rpc_metric("rpc_handled_total", "Heartbeat", "INTERNAL")),
        0.0
    );
    // The connection and its other calls are fine.
    let mut client = PresenceServiceClient::new(channel);
    join(&mut client, "r", "u", "s").await;
}

#[tokio::test]
async fn a_client_that_resets_its_streams_is_cancelled_and_the_connection_lives_on() {
    use h2::Reason;
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = || {
        http::Request::post(format!("{}{HEARTBEAT}", server.url()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let resets = [Reason::CANCEL, Reason::NO_ERROR, Reason::INTERNAL_ERROR];
    for round in 0..10 {
        for reason in resets {
            let (response, mut send) = client.send_request(request(), false).unwrap();
            // A message header promising 60 bytes, then the reset.
            send.send_data(Bytes::from_static(&[0, 0, 0, 0, 60, 10]), false)
                .unwrap();
            if round % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            send.send_reset(reason);
            drop(response);
            client = client.ready().await.unwrap();
        }
    }
    // A whole call on the same connection still works.
    let message = heartbeat("r", "u", "s", 10).encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let (response, mut send) = client.send_request(request(), false).unwrap();
    send.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");

    let started = server.metric(
        "presenced_rpc_started_total{service=\"presence.v1.PresenceService\",method=\"Heartbeat\"}",
    );

    assert_eventually!(
        server.metric(&rpc_metric("rpc_handled_total", "Heartbeat", "CANCELLED")) + 1.0 == started,
        Duration::from_secs(3),
        "every reset call that reached the server is CANCELLED ({started} started)"
    );
    assert!(started >= 2.0, "the resets reached the server: {started}");
    for code in ["INTERNAL", "UNKNOWN"] {
        assert_eq!(
            server.metric(&rpc_metric("rpc_handled_total", "Heartbeat", code)),
            0.0,
            "{code}"
        );
    }
    assert_eq!(server.metric("presenced_store_errors_total"), 0.0);
}

#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted_by_the_transport() {
    let server = TestServer::start().await; // --max-request-bytes 65536
    let mut client = server.client().await;
    let big = heartbeat(&"r".repeat(70_000), "u", "s", 10);
    let err = client.heartbeat(big.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("65536"), "{}", err.message());
    assert_eq!(
        server.metric("presenced_requests_rejected_total{reason=\"resource_exhausted\"}"),
        1.0
    );
    join(&mut client, "r", "u", "s").await;
    // The same request under a larger limit reaches the engine, whose own
    // bound on ids refuses it: it was the transport's limit above.
    let roomy = TestServer::with(|c| c.limits.max_request_bytes = 128 * 1024).await;
    let err = roomy.client().await.heartbeat(big).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("room_id is 70000 bytes long"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn headers_up_to_the_limit_pass_and_bigger_ones_fail_alone() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let with_header = |bytes: usize| {
        let mut request = tonic::Request::new(heartbeat("r", "u", "s", 10));
        let value = format!("Bearer {}", "x".repeat(bytes));
        request
            .metadata_mut()
            .insert("x-big", value.parse().unwrap());
        request
    };
    // 20 KiB of headers: under the 32 KiB limit.
    client.heartbeat(with_header(20 * 1024)).await.unwrap();
    // 40 KiB: this call is refused (HTTP 431)…
    let err = client.heartbeat(with_header(40 * 1024)).await.unwrap_err();
    assert!(err.message().contains("431"), "{err:?}");
    // …and the connection and its other calls go on.
    client
        .heartbeat(heartbeat("r", "u", "s", 10))
        .await
        .unwrap();
    assert_eq!(
        presenced::server::MAX_HEADER_LIST_BYTES,
        32 * 1024,
        "the limit the README states"
    );
}

#[tokio::test]
async fn replies_on_an_idle_http2_connection_are_not_held_back() {
    // coalesce.rs holds a flush over to the connection task's next poll. A
    // reply on an otherwise idle connection must still leave at once: held
    // back, it would wait for something else to wake the connection (the
    // next keepalive ping, 30 s away).
    let server = TestServer::start().await;
    let mut client = server.client().await;
    join(&mut client, "r", "u", "s").await;
    let mut slowest = Duration::ZERO;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), join(&mut client, "r", "u", "s"))
            .await
            .expect("a reply within 2 s");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a reply took {slowest:?}"
    );
}

#[tokio::test]
async fn unreadable_data_in_redis_is_an_error_for_that_room_only() {
    let _redis = redis::shared_redis();
    with_store(StoreKind::Redis, async {
        let server = TestServer::start().await;
        let mut client = server.client().await;
        let bad = join(&mut client, "bad-room", "u", "s").await;
        let good = join(&mut client, "good-room", "v", "t").await;
        // Someone wrote over the room's hash with a string.
        let prefix = server.store.redis().unwrap().key_prefix().to_owned();
        let keys = redis::shared_redis().cli(&[
            "--scan",
            "--pattern",
            &format!("{{{prefix}:*}}:h:bad-room"),
        ]);
        let key = keys.trim();
        assert!(!key.is_empty(), "the room's hash exists");
        redis::shared_redis().cli(&["DEL", key]);
        redis::shared_redis().cli(&["SET", key, "not a hash"]);

        let err = client
            .list(pb::ListRequest {
                room_token: bad.room_token.clone(),
                limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        assert!(
            err.message().contains("bad-room") && !err.message().contains("WRONGTYPE"),
            "{}",
            err.message()
        );
        // The beacon says it is the server's failure: 5xx, not 400.
        let (status, _) = beacon(server.addr, &bad.session_token).await;
        assert_eq!(status, 500);
        // Every other room goes on.
        let listed = client
            .list(pb::ListRequest {
                room_token: good.room_token,
                limit: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            users(&listed.into_inner().snapshot.unwrap()),
            pairs(&[("v", true)])
        );
        join(&mut client, "third-room", "w", "x").await;
    })
    .await;
}

/// `POST /v1/disconnect` with `token`: (HTTP status, body).
async fn beacon(addr: std::net::SocketAddr, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/disconnect HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{token}",
        token.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, answer)
}
