//! The browser paths with raw HTTP: grpc-web over HTTP/1.1 and HTTP/2, CORS
//! preflight, and the `POST /v1/disconnect` beacon route.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use presenced::grpc::pb;
use prost::Message;
use tokio::net::TcpStream;

/// Sends one request over a fresh HTTP/1.1 connection.
async fn http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    collect(sender.send_request(req).await.unwrap()).await
}

/// Sends one request over a fresh HTTP/2 (prior knowledge) connection.
async fn http2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    collect(sender.send_request(req).await.unwrap()).await
}

async fn collect(resp: Response<hyper::body::Incoming>) -> Response<Bytes> {
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// A grpc-web request body: one uncompressed data frame.
fn grpc_web_frame(message: &impl Message) -> Bytes {
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.into()
}

/// Splits a grpc-web response body into its message and its trailers.
fn grpc_web_parse<M: Message + Default>(mut body: &[u8]) -> (Option<M>, String) {
    let mut message = None;
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let frame = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers.push_str(std::str::from_utf8(frame).unwrap());
        } else {
            message = Some(M::decode(frame).unwrap());
        }
        body = &body[5 + len..];
    }
    (message, trailers)
}

fn grpc_web_request(path: &str, message: &impl Message) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", "http://app.example")
        .body(Full::new(grpc_web_frame(message)))
        .unwrap()
}

async fn grpc_web_over_http1_and_http2() {
    let server = TestServer::start().await;
    for (i, proto) in ["http1", "http2"].into_iter().enumerate() {
        let req = grpc_web_request(
            "/presence.v1.PresenceService/Heartbeat",
            &heartbeat("web", "alice", &format!("tab{i}"), 5),
        );
        let resp = match proto {
            "http1" => http1(server.addr, req).await,
            _ => http2(server.addr, req).await,
        };
        assert_eq!(resp.status(), 200, "{proto}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web"));
        // CORS on the actual response: the origin and the exposed status.
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        let exposed = resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"));
        let (reply, trailers) = grpc_web_parse::<pb::HeartbeatResponse>(resp.body());
        assert!(trailers.contains("grpc-status:0"), "{proto}: {trailers:?}");
        let reply = reply.expect("a HeartbeatResponse");

        let list = grpc_web_request(
            "/presence.v1.PresenceService/List",
            &pb::ListRequest {
                room_token: reply.room_token,
                limit: 0,
            },
        );
        let resp = match proto {
            "http1" => http1(server.addr, list).await,
            _ => http2(server.addr, list).await,
        };
        let (list, _) = grpc_web_parse::<pb::ListResponse>(resp.body());
        let snap = list.unwrap().snapshot.unwrap();
        assert_eq!(users(&snap), pairs(&[("alice", true)]));
    }
}

async fn grpc_web_errors_carry_status_in_trailers() {
    let server = TestServer::start().await;
    let req = grpc_web_request(
        "/presence.v1.PresenceService/List",
        &pb::ListRequest {
            room_token: "forged".into(),
            limit: 0,
        },
    );
    let resp = http1(server.addr, req).await;
    // Trailers-only responses put grpc-status in the headers.
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| grpc_web_parse::<pb::ListResponse>(resp.body()).1);
    assert_eq!(status, "3", "INVALID_ARGUMENT");
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let server = TestServer::start().await;
    let req = Request::options("/presence.v1.PresenceService/Heartbeat")
        .header("host", "localhost")
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent,authorization",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = http1(server.addr, req).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for header in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "authorization",
    ] {
        assert!(allowed.contains(header), "{header} not in {allowed}");
    }
    assert!(h.contains_key("access-control-max-age"));
}

#[tokio::test]
async fn cors_origins_can_be_restricted() {
    let server = TestServer::with(|c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let preflight = |origin: &str| {
        Request::options("/presence.v1.PresenceService/List")
            .header("host", "localhost")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let ok = http1(server.addr, preflight("https://app.example")).await;
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = http1(server.addr, preflight("https://evil.example")).await;
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    // Real responses too: a grpc-web call and the beacon, from each origin.
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let mut call = grpc_web_request(
            "/presence.v1.PresenceService/List",
            &pb::ListRequest {
                room_token: tokens.room_token.clone(),
                limit: 0,
            },
        );
        call.headers_mut().insert("origin", origin.parse().unwrap());
        let resp = http1(server.addr, call).await;
        assert_eq!(resp.status(), 200);
        let acao = resp.headers().get("access-control-allow-origin");
        assert_eq!(
            acao.map(|v| v.to_str().unwrap()),
            allowed.then_some(origin),
            "grpc-web from {origin}"
        );
        let mut beacon = beacon("not-a-token");
        beacon
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let resp = http1(server.addr, beacon).await;
        assert_eq!(resp.status(), 400);
        let acao = resp.headers().get("access-control-allow-origin");
        assert_eq!(
            acao.map(|v| v.to_str().unwrap()),
            allowed.then_some(origin),
            "beacon from {origin}"
        );
    }
}

fn beacon(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/v1/disconnect")
        .header("host", "localhost")
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "http://app.example")
        .body(Full::new(body.into()))
        .unwrap()
}

async fn the_beacon_route_ends_a_session() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let tokens = join(&mut client, "r", "u", "s").await;
    assert_eq!(server.sessions().await, 1);

    let resp = http1(server.addr, beacon(tokens.session_token.clone())).await;
    assert_eq!(resp.status(), 204, "{:?}", resp.body());
    let snap = client
        .list(pb::ListRequest {
            room_token: tokens.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("u", false)]));
    // Again: idempotent. Over HTTP/2 too.
    assert_eq!(
        http2(server.addr, beacon(tokens.session_token.clone()))
            .await
            .status(),
        204
    );

    // Not a session token: 400 with the reason.
    let resp = http1(server.addr, beacon(tokens.room_token)).await;
    assert_eq!(resp.status(), 400);
    assert!(std::str::from_utf8(resp.body())
        .unwrap()
        .contains("expected a session token"));
    let resp = http1(server.addr, beacon("garbage")).await;
    assert_eq!(resp.status(), 400);
    // Over 4 KiB: 413.
    let resp = http1(server.addr, beacon("A".repeat(4097))).await;
    assert_eq!(resp.status(), 413);
}

every_store!(
    grpc_web_over_http1_and_http2,
    grpc_web_errors_carry_status_in_trailers,
    the_beacon_route_ends_a_session,
);
