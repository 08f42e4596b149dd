//! TLS and mTLS with the Rust client, and certificate reload without restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    format!("{FIX}/{name}")
}

fn tls_server(c: &mut presenced::Config) {
    c.tls.cert = Some(fixture("server.pem"));
    c.tls.key = Some(fixture("server.key"));
}

async fn tls_client(
    server: &TestServer,
    identity: bool,
) -> Result<Client, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(fixture("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(fixture("client.pem")).unwrap(),
            std::fs::read(fixture("client.key")).unwrap(),
        ));
    }
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(PresenceServiceClient::new(channel))
}

fn list_room() -> pb::ListRoomRequest {
    pb::ListRoomRequest {
        room_id: "r".into(),
        online_only: false,
        limit: 0,
    }
}

#[tokio::test]
async fn tls_serves_grpc_and_refuses_plaintext() {
    let server = TestServer::with(tls_server).await;
    let mut client = tls_client(&server, false).await.unwrap();
    let tokens = join(&mut client, "r", "u", "s").await;
    let mut watch = client
        .watch_room(pb::WatchRoomRequest {
            room_token: tokens.room_token,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    // Plaintext HTTP/2 gets a TLS alert (or a closed connection), never an
    // HTTP/2 SETTINGS frame.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut first))
        .await
        .expect("the server answers or closes at once");
    match read {
        Ok(0) | Err(_) => {}
        Ok(_) => assert_eq!(first[0], 0x15, "a TLS alert record, not HTTP/2"),
    }
}

#[tokio::test]
async fn a_verified_client_certificate_makes_a_service() {
    let server = TestServer::with(|c| {
        tls_server(c);
        c.tls.client_ca = Some(fixture("ca.pem"));
    })
    .await;
    let mut service = tls_client(&server, true).await.unwrap();
    join(&mut service, "r", "anyone", "s").await;
    service.list_room(list_room()).await.unwrap();

    // Without a certificate (optional mode) the caller is anonymous: it
    // must present a credential.
    let mut anonymous = tls_client(&server, false).await.unwrap();
    let err = anonymous.list_room(list_room()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn required_client_certificates_refuse_clients_without_one() {
    let server = TestServer::with(|c| {
        tls_server(c);
        c.tls.client_ca = Some(fixture("ca.pem"));
        c.tls.client_auth_required = true;
    })
    .await;
    let mut service = tls_client(&server, true).await.unwrap();
    service.list_room(list_room()).await.unwrap();
    // Refused in the handshake: TLS 1.3 clients learn it at their first
    // read, so either the connect or the first call fails, for that reason.
    let refusal = match tls_client(&server, false).await {
        Err(err) => format!("{err:?}"),
        Ok(mut anonymous) => {
            // (tonic reports a transport error at the first call as UNKNOWN)
            let err = anonymous.list_room(list_room()).await.unwrap_err();
            format!("{err:?}")
        }
    };
    assert!(refusal.contains("CertificateRequired"), "{refusal}");
}

#[tokio::test]
async fn slow_handshakes_past_the_bound_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::with(|c| {
        tls_server(c);
        c.tls.max_handshakes = 3;
    })
    .await;
    // Three connections that never send a ClientHello hold every slot.
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next one is closed at once, not left waiting.
    let mut extra = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once the slow ones give up, clients are served again.
    drop(slow);
    assert_eventually!(
        match tls_client(&server, false).await {
            Ok(mut client) => client.list_room(list_room()).await.is_ok(),
            Err(_) => false,
        },
        Duration::from_secs(5),
        "served once the slots are free"
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_keeps_the_old_pair() {
    let dir = std::env::temp_dir().join(format!("presenced-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(fixture("server.pem"), &cert).unwrap();
    std::fs::copy(fixture("server.key"), &key).unwrap();
    let server = TestServer::with(|c| {
        c.tls.cert = Some(cert.to_string_lossy().into());
        c.tls.key = Some(key.to_string_lossy().into());
        c.tls.reload_interval = Duration::from_millis(50);
    })
    .await;
    let first = CertificateDer::from_pem_file(fixture("server.pem")).unwrap();
    // A new certificate with the old key: not a pair.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::copy(fixture("server2.pem"), dir.join("cert.new")).unwrap();
    std::fs::rename(dir.join("cert.new"), &cert).unwrap();
    // Several reload checks later, the old pair is still what is served.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_cert(server.addr).await, first);
    let mut client = tls_client(&server, false).await.unwrap();
    join(&mut client, "r", "u", "s").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The leaf certificate a fresh TLS connection is served.
async fn served_cert(addr: std::net::SocketAddr) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let dir = std::env::temp_dir().join(format!("presenced-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::copy(fixture("server.pem"), &cert).unwrap();
    std::fs::copy(fixture("server.key"), &key).unwrap();
    let server = TestServer::with(|c| {
        c.tls.cert = Some(cert.to_string_lossy().into());
        c.tls.key = Some(key.to_string_lossy().into());
        c.tls.reload_interval = Duration::from_millis(50);
    })
    .await;
    let first = CertificateDer::from_pem_file(fixture("server.pem")).unwrap();
    let second = CertificateDer::from_pem_file(fixture("server2.pem")).unwrap();
    assert_eq!(served_cert(server.addr).await, first);
    // A client connected before the change keeps working after it.
    let mut client = tls_client(&server, false).await.unwrap();

    // Write the new pair next to the old and rename, as deploy tools do; the
    // mtime must move, so wait a moment on coarse-timestamp filesystems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::copy(fixture("server2.key"), dir.join("key.new")).unwrap();
    std::fs::copy(fixture("server2.pem"), dir.join("cert.new")).unwrap();
    std::fs::rename(dir.join("key.new"), &key).unwrap();
    std::fs::rename(dir.join("cert.new"), &cert).unwrap();
    assert_eventually!(
        served_cert(server.addr).await == second,
        Duration::from_secs(3),
        "the new certificate was not served"
    );
    join(&mut client, "r", "u", "s").await;
    std::fs::remove_dir_all(&dir).unwrap();
}
