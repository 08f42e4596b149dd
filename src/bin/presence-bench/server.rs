//! The processes under test: `presenced` started as a child (or one already
//! running), and the baseline server (`grpc.health.v1` alone on the same
//! tonic stack) that this binary runs as a child of itself. Both are pinned
//! to one core when `taskset` and a second core exist; the load runs on the
//! other.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::stats::Usage;

/// Where server and load run.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// `taskset -c <core>` prefix for servers, when pinning works.
    pub server_core: Option<usize>,
    /// What the report says about it.
    pub note: String,
}

impl Pinning {
    /// Pins this process (all its threads, present and future) to the last
    /// core and reserves core 0 for the servers, if `taskset` exists and the
    /// machine has two cores or more.
    pub fn setup(enabled: bool) -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !enabled {
            return Pinning {
                server_core: None,
                note: "pinning disabled (--no-pin)".into(),
            };
        }
        if cores < 2 {
            return Pinning {
                server_core: None,
                note: format!("not pinned: {cores} core available"),
            };
        }
        let load = cores - 1;
        let ok = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &load.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Pinning {
                server_core: None,
                note: "not pinned: `taskset` (util-linux) is missing or failed".into(),
            };
        }
        Pinning {
            server_core: Some(0),
            note: format!("server on core 0, load on core {load} (taskset); {cores} cores"),
        }
    }

    /// A command running `program` on the server core.
    pub fn command(&self, program: &Path) -> Command {
        match self.server_core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// A loopback address free a moment ago, on a port below Linux's
/// ephemeral range (32768 and up), so that none of the bench's own
/// outgoing connections is given it before the server binds it. A race
/// with another process is still possible but harmless: the start then
/// fails loudly.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    for i in 0..1000u64 {
        let port = 20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A server process the bench measures.
pub struct Target {
    pub addr: SocketAddr,
    /// Its pid, when its `/proc` accounting is readable.
    pub pid: Option<u32>,
    child: Option<Child>,
    /// The baseline server's control pipe: each line flips its status.
    control: Option<ChildStdin>,
}

impl Target {
    /// Starts `presenced` on a free loopback port with `extra` flags and
    /// waits until its health check answers SERVING.
    pub async fn start_presenced(
        bin: &Path,
        pin: &Pinning,
        extra: &[String],
        log: &Path,
    ) -> Result<Target, String> {
        if !bin.exists() {
            return Err(format!(
                "{} not found: build it with `cargo build --release --bin presenced` or pass --presenced",
                bin.display()
            ));
        }
        let addr = free_addr().map_err(|e| e.to_string())?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = pin
            .command(bin)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let target = Target {
            addr,
            pid: Some(child.id()),
            child: Some(child),
            control: None,
        };
        target.wait_ready("").await?;
        Ok(target)
    }

    /// Starts the baseline health server (this binary, `health-server`).
    pub async fn start_baseline(pin: &Pinning, log: &Path) -> Result<Target, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let addr = free_addr().map_err(|e| e.to_string())?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = pin
            .command(&me)
            .arg("health-server")
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting the baseline server: {e}"))?;
        let control = child.stdin.take();
        let target = Target {
            addr,
            pid: Some(child.id()),
            child: Some(child),
            control,
        };
        target.wait_ready(crate::baseline::SERVICE).await?;
        Ok(target)
    }

    /// A server someone else runs; `pid` enables CPU and RSS figures.
    pub async fn existing(addr: SocketAddr, pid: Option<u32>) -> Result<Target, String> {
        let target = Target {
            addr,
            pid,
            child: None,
            control: None,
        };
        target.wait_ready("").await?;
        Ok(target)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.pid.and_then(Usage::read)
    }

    /// Flips the baseline server's health status (one broadcast).
    pub fn flip(&mut self) -> Result<(), String> {
        let control = self.control.as_mut().ok_or("not a baseline server")?;
        control
            .write_all(b"flip\n")
            .and_then(|()| control.flush())
            .map_err(|e| format!("baseline control pipe: {e}"))
    }

    async fn wait_ready(&self, service: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.check(service).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "server on {} not ready after 20 s: {last}",
            self.addr
        ))
    }

    async fn check(&self, service: &str) -> Result<(), String> {
        let channel = connect(self.addr).await.map_err(|e| e.to_string())?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|e| e.to_string())?;
        if reply.get_ref().status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err("not SERVING yet".into())
        }
    }

    /// Stops the child (SIGTERM, then SIGKILL after 5 s). A server we did
    /// not start is left alone.
    pub fn stop(&mut self) {
        self.control = None;
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

/// Stops a child of ours by its pid: SIGTERM, then SIGKILL after 5 s.
pub fn stop_child(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The text of presenced's `GET /metrics` on its admin address.
pub async fn scrape(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |e: std::io::Error| format!("metrics on {addr}: {e}");
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("metrics on {addr}: connect timed out"))?
        .map_err(fail)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .map_err(fail)?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| format!("metrics on {addr}: read timed out"))?
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("metrics on {addr}: not an HTTP response"))?;
    // HTTP/1.0: the body is not chunked, it ends with the connection.
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "metrics on {addr}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

/// The sum of the samples of metric `name` (exactly, with any labels)
/// whose labels contain every one of `labels` (`key="value"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|want| labelset.split(',').any(|l| l == *want))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/2 connection (a tonic `Channel` is exactly one).
pub async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// `n` connections to `addr`.
pub async fn connect_many(addr: SocketAddr, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?,
        );
    }
    Ok(out)
}

/// The default `presenced` binary: next to this one (both are built into
/// the same `target/<profile>/`), else `target/release/presenced`.
pub fn default_presenced() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("presenced");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("target/release/presenced")
}
