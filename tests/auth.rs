//! Who may do what, against a real server: end-user JWTs, service keys,
//! capability tokens with rotation and expiry.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use presenced::grpc::pb;
use presenced::Config;
use serde_json::json;
use tonic::{Code, Request};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ISS: &str = "https://idp.example";
const AUD: &str = "presence";
/// The service key secret and its SHA-256.
const SERVICE_SECRET: &str = "svc_test_secret_for_the_backend";

fn fixture(name: &str) -> String {
    format!("{FIX}/{name}")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn service_key_spec() -> presenced::auth::ServiceKey {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(SERVICE_SECRET)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("backend={hex}").parse().unwrap()
}

/// A server with every JWT key type and one service key.
fn secured(c: &mut Config) {
    c.auth.jwt.hs256_secret_file = Some(fixture("jwt-hs256.secret"));
    c.auth.jwt.public_key_files = vec![
        format!("rsa-1={}", fixture("jwt-rsa.pub")),
        format!("ec-1={}", fixture("jwt-ec.pub")),
        format!("ed-1={}", fixture("jwt-ed.pub")),
    ];
    c.auth.jwt.issuer = ISS.into();
    c.auth.jwt.audience = AUD.into();
    c.auth.jwt.leeway = Duration::from_secs(5);
    c.auth.service_keys = vec![service_key_spec()];
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 600, "iat": now()})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("jwt-rsa.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("jwt-ec.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("jwt-ed.key")).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(&read("jwt-hs256.secret")),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, claims, &key).unwrap()
}

fn authed<T>(message: T, bearer: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    req
}

async fn heartbeat_as(
    client: &mut Client,
    bearer: &str,
    user: &str,
) -> Result<pb::HeartbeatResponse, tonic::Status> {
    client
        .heartbeat(authed(
            heartbeat(
                "room",
                user,
                &format!("{user}-{}", uuid::Uuid::new_v4()),
                10,
            ),
            bearer,
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn valid_jwts_of_every_algorithm_are_accepted() {
    let server = TestServer::with(secured).await;
    let mut client = server.client().await;
    for (alg, kid) in [
        (Algorithm::RS256, Some("rsa-1")),
        (Algorithm::ES256, Some("ec-1")),
        (Algorithm::EdDSA, Some("ed-1")),
        (Algorithm::HS256, None),
        (Algorithm::RS256, None), // no kid: every key of the algorithm is tried
    ] {
        let jwt = sign(alg, kid, &claims("alice"));
        heartbeat_as(&mut client, &jwt, "alice")
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
    }
}

#[tokio::test]
async fn every_jwt_defect_is_refused() {
    let server = TestServer::with(|c| {
        secured(c);
        c.auth.jwt.hs256_secret_file = None; // RSA-only for the confusion case
    })
    .await;
    let mut client = server.client().await;
    let base = claims("alice");
    let with = |patch: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let valid = sign(Algorithm::RS256, Some("rsa-1"), &base);
    let mut tampered: Vec<&str> = valid.split('.').collect();
    let evil_payload = URL_SAFE_NO_PAD.encode(with(json!({"sub": "mallory"})).to_string());
    tampered[1] = &evil_payload;
    let tampered = tampered.join(".");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(base.to_string())
    );
    let confusion = {
        // HS256 "signed" with the RSA public key as the shared secret.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        encode(
            &header,
            &base,
            &EncodingKey::from_secret(&read("jwt-rsa.pub")),
        )
        .unwrap()
    };
    let unknown_kid = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-unknown".into());
        let key = EncodingKey::from_rsa_pem(&read("jwt-rsa2.key")).unwrap();
        encode(&header, &base, &key).unwrap()
    };
    let cases = [
        (
            "expired",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with(json!({"exp": now() - 60})),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with(json!({"nbf": now() + 600})),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with(json!({"iss": "https://evil.example"})),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with(json!({"aud": "other"})),
            ),
        ),
        (
            "no audience",
            sign(Algorithm::RS256, Some("rsa-1"), &{
                let mut c = base.clone();
                c.as_object_mut().unwrap().remove("aud");
                c
            }),
        ),
        ("unknown kid", unknown_kid),
        ("alg none", alg_none),
        ("HS256 with the RSA public key", confusion),
        ("tampered payload", tampered),
        ("garbage", "a.b.c".into()),
        (
            "no user claim",
            sign(Algorithm::RS256, Some("rsa-1"), &{
                let mut c = base.clone();
                c.as_object_mut().unwrap().remove("sub");
                c
            }),
        ),
    ];
    for (defect, jwt) in cases {
        let err = heartbeat_as(&mut client, &jwt, "alice").await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{defect}: {err:?}");
    }
    // Within the leeway, an expired token still passes; the valid one does.
    let recent = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &with(json!({"exp": now() - 2})),
    );
    heartbeat_as(&mut client, &recent, "alice").await.unwrap();
    heartbeat_as(&mut client, &valid, "alice").await.unwrap();
}

#[tokio::test]
async fn users_act_only_as_themselves_and_services_do_the_rest() {
    let server = TestServer::with(secured).await;
    let mut client = server.client().await;
    let alice = sign(Algorithm::ES256, Some("ec-1"), &claims("alice"));

    // No credential, or a bad one.
    let err = client
        .heartbeat(heartbeat("room", "alice", "s", 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = heartbeat_as(&mut client, "not-a-key", "alice")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Acting as someone else.
    let err = heartbeat_as(&mut client, &alice, "bob").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("may not act as user \"bob\""),
        "{}",
        err.message()
    );
    let tokens = heartbeat_as(&mut client, &alice, "alice").await.unwrap();
    let data = prost_types::Struct::default();
    let err = client
        .update_room_user(authed(
            pb::UpdateRoomUserRequest {
                room_id: "room".into(),
                user_id: "bob".into(),
                data: Some(data.clone()),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    client
        .update_room_user(authed(
            pb::UpdateRoomUserRequest {
                room_id: "room".into(),
                user_id: "alice".into(),
                data: Some(data),
            },
            &alice,
        ))
        .await
        .unwrap();
    let list_user = |user: &str| pb::ListUserRequest {
        user_id: user.into(),
        online_only: false,
        limit: 0,
    };
    client
        .list_user(authed(list_user("alice"), &alice))
        .await
        .unwrap();
    let err = client
        .list_user(authed(list_user("bob"), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Trusted RPCs: users may not, services may.
    let list_room = pb::ListRoomRequest {
        room_id: "room".into(),
        online_only: false,
        limit: 0,
    };
    let err = client
        .list_room(authed(list_room.clone(), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let remove = pb::RemoveRoomUserRequest {
        room_id: "room".into(),
        user_id: "alice".into(),
    };
    let err = client
        .remove_room_user(authed(remove.clone(), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .remove_room(authed(
            pb::RemoveRoomRequest {
                room_id: "room".into(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let snap = client
        .list_room(authed(list_room, SERVICE_SECRET))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(users(&snap), pairs(&[("alice", true)]));
    heartbeat_as(&mut client, SERVICE_SECRET, "bob")
        .await
        .unwrap();
    client
        .list_user(authed(list_user("bob"), SERVICE_SECRET))
        .await
        .unwrap();
    client
        .remove_room_user(authed(remove, SERVICE_SECRET))
        .await
        .unwrap();

    // Capability tokens need no credential.
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
    assert_eq!(users(&snap), pairs(&[("bob", true)]));
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: tokens.room_token,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    client
        .disconnect(pb::DisconnectRequest {
            session_token: tokens.session_token,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn jwks_documents_from_a_file_and_a_url_refreshed_on_unknown_kid() {
    let jwk = |key: &str, alg, kid: &str| {
        let pem = read(key);
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let dir = tempdir();
    let jwks_file = format!("{dir}/jwks.json");
    let set = jsonwebtoken::jwk::JwkSet {
        keys: vec![jwk("jwt-ec.key", Algorithm::ES256, "file-ec")],
    };
    std::fs::write(&jwks_file, serde_json::to_vec(&set).unwrap()).unwrap();

    // A JWKS endpoint on loopback that starts with one key.
    let doc = Arc::new(Mutex::new(jsonwebtoken::jwk::JwkSet {
        keys: vec![jwk("jwt-rsa.key", Algorithm::RS256, "url-1")],
    }));
    let served = doc.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = served.lock().unwrap().clone();
            async move { axum::Json(doc) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::with(|c| {
        c.auth.jwt.jwks_file = Some(jwks_file.clone());
        c.auth.jwt.jwks_url = Some(url.clone());
        c.auth.jwt.issuer = ISS.into();
        c.auth.jwt.audience = AUD.into();
    })
    .await;
    let mut client = server.client().await;
    let from_file = sign(Algorithm::ES256, Some("file-ec"), &claims("a"));
    heartbeat_as(&mut client, &from_file, "a").await.unwrap();
    let from_url = sign(Algorithm::RS256, Some("url-1"), &claims("b"));
    heartbeat_as(&mut client, &from_url, "b").await.unwrap();

    // The IdP rotates to a new key: the first token naming it triggers a fetch.
    doc.lock()
        .unwrap()
        .keys
        .push(jwk("jwt-rsa2.key", Algorithm::RS256, "url-2"));
    let rotated = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("url-2".into());
        encode(
            &header,
            &claims("c"),
            &EncodingKey::from_rsa_pem(&read("jwt-rsa2.key")).unwrap(),
        )
        .unwrap()
    };
    heartbeat_as(&mut client, &rotated, "c").await.unwrap();
}

fn tempdir() -> String {
    let dir = std::env::temp_dir().join(format!("presenced-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_string_lossy().into_owned()
}

#[tokio::test]
async fn rotated_token_keys_keep_old_tokens_valid_until_removed() {
    const OLD: &str = "the old token key, at least thirty-two bytes";
    const NEW: &str = "the new token key, at least thirty-two bytes";
    let before = TestServer::with(|c| c.tokens.keys = vec![OLD.into()]).await;
    let mut client = before.client().await;
    let old_tokens = join(&mut client, "r", "u", "s").await;
    before.stop().await.unwrap();

    let list = |token: &str| pb::ListRequest {
        room_token: token.into(),
        limit: 0,
    };
    let rotating = TestServer::with(|c| c.tokens.keys = vec![NEW.into(), OLD.into()]).await;
    let mut client = rotating.client().await;
    client.list(list(&old_tokens.room_token)).await.unwrap();
    let new_tokens = join(&mut client, "r", "u", "s").await;
    assert_ne!(
        new_tokens.room_token, old_tokens.room_token,
        "signed with the new key"
    );
    rotating.stop().await.unwrap();

    let after = TestServer::with(|c| c.tokens.keys = vec![NEW.into()]).await;
    let mut client = after.client().await;
    client.list(list(&new_tokens.room_token)).await.unwrap();
    let err = client.list(list(&old_tokens.room_token)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .disconnect(pb::DisconnectRequest {
            session_token: old_tokens.session_token,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn room_tokens_expire_and_heartbeats_hand_out_fresh_ones() {
    let server = TestServer::with(|c| c.tokens.room_ttl = Duration::from_secs(2)).await;
    let mut client = server.client().await;
    let issued = tokio::time::Instant::now();
    let first = join(&mut client, "r", "u", "s").await;
    let list = |token: &str| pb::ListRequest {
        room_token: token.into(),
        limit: 0,
    };
    // Valid for at least half its TTL (1 s)…
    tokio::time::sleep_until(issued + Duration::from_millis(900)).await;
    client.list(list(&first.room_token)).await.unwrap();
    // …and expired after the TTL.
    tokio::time::sleep_until(issued + Duration::from_millis(2100)).await;
    let err = client.list(list(&first.room_token)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    let fresh = join(&mut client, "r", "u", "s").await;
    client.list(list(&fresh.room_token)).await.unwrap();
}

#[tokio::test]
async fn a_user_over_the_rate_is_refused_and_others_are_not_slowed() {
    let server = TestServer::with(|c| {
        secured(c);
        c.limits.callers.rate_per_user = 3;
    })
    .await;
    let mut client = server.client().await;
    let alice = sign(Algorithm::RS256, Some("rsa-1"), &claims("alice"));
    let bob = sign(Algorithm::RS256, Some("rsa-1"), &claims("bob"));
    let mut refused = None;
    for i in 0..30 {
        if let Err(e) = heartbeat_as(&mut client, &alice, "alice").await {
            refused = Some((i, e));
            break;
        }
    }
    let (i, err) = refused.expect("alice trips her rate limit");
    // The burst (6) passes; the next is refused (7 if a token refilled).
    assert!(
        (6..=7).contains(&i),
        "tripped after {i} calls; the burst is 6"
    );
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err
        .message()
        .contains("requests per second per user limit reached: at most 3"));
    // Bob, on the same connection, is served at once.
    heartbeat_as(&mut client, &bob, "bob").await.unwrap();
    // Services are not bound by the per-user rate.
    for _ in 0..20 {
        heartbeat_as(&mut client, SERVICE_SECRET, "carol")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn services_over_their_rate_are_refused_and_other_services_are_not() {
    use sha2::Digest;
    let other_secret = "svc_test_secret_for_the_other_one";
    let hex: String = sha2::Sha256::digest(other_secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let server = TestServer::with(|c| {
        secured(c);
        c.auth
            .service_keys
            .push(format!("other={hex}").parse().unwrap());
        c.limits.callers.rate_per_service = 2;
    })
    .await;
    let mut client = server.client().await;
    let list_as = |secret: &str| authed(list_room("r"), secret);
    let mut refused = None;
    for i in 0..20 {
        if let Err(e) = client.list_room(list_as(SERVICE_SECRET)).await {
            refused = Some((i, e));
            break;
        }
    }
    let (i, err) = refused.expect("the backend trips its rate");
    // The burst (4) passes; the next is refused (5 if a token refilled).
    assert!(
        (4..=5).contains(&i),
        "tripped after {i} calls; the burst is 4"
    );
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("requests per second per service limit reached: at most 2"),
        "{}",
        err.message()
    );
    // The other service, on the same connection and address, is served.
    client.list_room(list_as(other_secret)).await.unwrap();
}

#[tokio::test]
async fn authenticated_watchers_are_counted_per_user_not_per_address() {
    let server = TestServer::with(|c| {
        secured(c);
        c.limits.callers.watches_per_principal = 2;
    })
    .await;
    let mut client = server.client().await;
    let alice = sign(Algorithm::RS256, Some("rsa-1"), &claims("alice"));
    let bob = sign(Algorithm::RS256, Some("rsa-1"), &claims("bob"));
    let token = heartbeat_as(&mut client, &alice, "alice")
        .await
        .unwrap()
        .room_token;
    let watch_as = |bearer: &str| {
        authed(
            pb::WatchRoomRequest {
                room_token: token.clone(),
                limit: 0,
            },
            bearer,
        )
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            client
                .watch_room(watch_as(&alice))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let err = client.watch_room(watch_as(&alice)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Bob, from the same address, has his own two.
    for _ in 0..2 {
        open.push(
            client
                .watch_room(watch_as(&bob))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    // Without a credential the address is the caller: a separate count.
    let anonymous = client
        .watch_room(pb::WatchRoomRequest {
            room_token: token.clone(),
            limit: 0,
        })
        .await;
    assert!(anonymous.is_ok());
}

fn list_room(room: &str) -> pb::ListRoomRequest {
    pb::ListRoomRequest {
        room_id: room.into(),
        online_only: false,
        limit: 0,
    }
}
