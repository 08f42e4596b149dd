//! Logs: JSON lines with `--log-format json`, one line per call (method,
//! peer, status code, duration) at `presenced::rpc=debug`, and never a
//! token or JWT, even at `trace`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{exited, free_port, heartbeat};

fn beat(session: &str) -> pb::HeartbeatRequest {
    heartbeat("room", "user", session, 10)
}

#[tokio::test]
async fn json_logs_have_one_line_per_call_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..400 {
        if let Ok(c) = PresenceServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut client = client.expect("presenced starts");

    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2VjcmV0LXNpZ25hdHVyZQ";
    let mut request = tonic::Request::new(beat("s1"));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    let one = client.heartbeat(request).await.unwrap().into_inner();
    let two = client.heartbeat(beat("s2")).await.unwrap().into_inner();
    client
        .list(pb::ListRequest {
            room_token: one.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap();
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: one.room_token.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    client
        .disconnect(pb::DisconnectRequest {
            session_token: one.session_token.clone(),
        })
        .await
        .unwrap();
    // A forged token is refused, and not echoed into the logs either.
    let forged = format!("{}x", two.session_token);
    client
        .disconnect(pb::DisconnectRequest {
            session_token: forged.clone(),
        })
        .await
        .unwrap_err();
    // The beacon, over HTTP/1.1.
    let mut beacon = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = &two.session_token;
    beacon
        .write_all(
            format!(
                "POST /v1/disconnect HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    beacon.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    drop(watch);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(exited(&mut child).await.success());

    let logs = std::fs::read_to_string(&log).unwrap();
    for secret in [
        one.room_token.as_str(),
        one.session_token.as_str(),
        two.session_token.as_str(),
        forged.as_str(),
        jwt,
    ] {
        // Any long piece of a secret would do; tokens are long random text.
        let piece = &secret[secret.len().saturating_sub(24)..];
        assert!(!logs.contains(piece), "a secret ({piece}) is in the logs");
    }
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let calls: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "presenced::rpc" && l["fields"]["message"] == "call finished")
        .collect();
    let find = |method: &str, code: &str| {
        calls
            .iter()
            .find(|l| l["fields"]["method"] == method && l["fields"]["code"] == code)
            .unwrap_or_else(|| panic!("no {method} {code} line in {calls:#?}"))
    };
    let heartbeat = find("Heartbeat", "OK");
    assert_eq!(
        heartbeat["fields"]["service"],
        "presence.v1.PresenceService"
    );
    assert!(heartbeat["fields"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let took = heartbeat["fields"]["duration_ms"].as_f64().unwrap();
    assert!(took > 0.0 && took < 10_000.0, "{took} ms");
    find("Disconnect", "UNAUTHENTICATED");
    find("WatchRoom", "CANCELLED");
    find("/v1/disconnect", "OK");
    assert_eq!(
        calls
            .iter()
            .filter(|l| l["fields"]["method"] == "Heartbeat")
            .count(),
        2,
        "one line per call"
    );
}

/// A client of the child on `port` once its health check says SERVING, or
/// why not (it exited, or did not answer within 10 s).
async fn serving(
    child: &mut std::process::Child,
    port: u16,
) -> Result<PresenceServiceClient<tonic::transport::Channel>, String> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("exited with {status}"));
        }
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            let check = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if check.is_ok_and(|r| r.into_inner().status == 1) {
                return Ok(PresenceServiceClient::new(channel));
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err("no SERVING health check within 10 s".into())
}

#[tokio::test]
async fn jwts_and_service_secrets_never_reach_the_logs() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use sha2::Digest;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let service_secret = "svc_logs_test_secret_value_0123456789";
    let hex: String = sha2::Sha256::digest(service_secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let spawn = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            .args([
                "--jwt-hs256-secret-file",
                &format!("{FIX}/jwt-hs256.secret"),
            ])
            .args([
                "--jwt-issuer",
                "https://idp.example",
                "--jwt-audience",
                "presence",
            ])
            .args(["--service-key", &format!("backend={hex}")])
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap()
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // No second chance: a child that dies at start-up is a failure, shown
    // with its log. (An earlier version started it again once, after an
    // unexplained start-up death seen twice in CI; if it comes back, this
    // fails and the log says why.)
    let port = free_port();
    let mut child = spawn(port);
    let mut client = match serving(&mut child, port).await {
        Ok(client) => client,
        Err(why) => {
            let _ = child.kill();
            panic!("presenced did not start: {why}\n{}", read_log());
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "user", "iss": "https://idp.example",
        "aud": "presence", "exp": now + 600, "iat": now});
    let secret = std::fs::read(format!("{FIX}/jwt-hs256.secret")).unwrap();
    let jwt = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let bad_jwt = format!("{}AAAA", &jwt[..jwt.len() - 4]);
    let authed = |bearer: &str, session: &str| {
        let mut request = tonic::Request::new(beat(session));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        request
    };
    if let Err(e) = client.heartbeat(authed(&jwt, "s1")).await {
        panic!("{e:?}\nchild: {:?}\nlog:\n{}", child.try_wait(), read_log());
    }
    client.heartbeat(authed(&bad_jwt, "s2")).await.unwrap_err();
    client
        .heartbeat(authed(service_secret, "s3"))
        .await
        .unwrap();
    client
        .heartbeat(authed("svc_wrong_secret_value_9876543210", "s4"))
        .await
        .unwrap_err();
    drop(client);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(exited(&mut child).await.success());

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("authentication is on"), "the run had auth on");
    for secret in [
        jwt.as_str(),
        bad_jwt.as_str(),
        service_secret,
        "svc_wrong_secret_value_9876543210",
    ] {
        let piece = &secret[secret.len().saturating_sub(20)..];
        assert!(!logs.contains(piece), "a secret ({piece}) is in the logs");
    }
    // The JWT's signed claims part is not logged either.
    let claims_part = jwt.split('.').nth(1).unwrap();
    assert!(!logs.contains(&claims_part[..20]));
}
