//! `presenced` as a real process (the built binary), for tests that need
//! several instances, signals or a crash.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// One running `presenced`.
pub struct Instance {
    pub port: u16,
    pub admin: u16,
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Instance {
    /// Starts `presenced` with `args` (and its own ports), and waits until
    /// its health check says SERVING.
    pub async fn start(args: &[&str]) -> Self {
        let (port, admin) = (super::free_port(), super::free_port());
        let log = std::env::temp_dir().join(format!("presenced-{}-{port}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{admin}")])
            .args(["--log-format", "json", "--shutdown-grace", "2s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut instance = Self {
            port,
            admin,
            child: Some(child),
            log,
        };
        if let Err(why) = instance.serving(Duration::from_secs(15)).await {
            panic!("presenced on {port}: {why}\n{}", instance.logs());
        }
        instance
    }

    /// Waits for a SERVING health check, or says why not.
    pub async fn serving(&mut self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                return Err(format!("exited with {status}"));
            }
            if self.health().await == Some(1) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("no SERVING health check within {within:?}"))
    }

    /// The status of the overall health check (1 SERVING, 2 NOT_SERVING),
    /// if it answers.
    pub async fn health(&self) -> Option<i32> {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .ok()?;
        let check = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(check.into_inner().status)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client on a new connection.
    pub async fn client(&self) -> PresenceServiceClient<Channel> {
        PresenceServiceClient::connect(self.url()).await.unwrap()
    }

    /// `GET /metrics` of the admin listener, as `name{labels} → value`.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let body = http_get(self.admin, "/metrics").await.1;
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// `GET path` of the admin listener: (status code, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Kills the process at once (SIGKILL): no shutdown, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// What it logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw).await;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}
