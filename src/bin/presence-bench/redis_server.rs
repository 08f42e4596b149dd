//! A `redis-server` of the bench's own for the Redis scenarios: started on
//! a free loopback port with nothing persisted (`--save "" --appendonly
//! no`), pinned to the server core with the presenced children, stopped
//! by its pid when dropped (also when the run is interrupted); and what the
//! scenarios read from it (`INFO`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::ctx::Ctx;
use crate::server::{free_addr, stop_child};

/// A redis-server child.
pub struct RedisServer {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    dir: PathBuf,
    client: redis::Client,
}

impl RedisServer {
    /// Starts one for scenario part `name` and waits until it answers.
    pub async fn start(ctx: &Ctx, name: &str) -> Result<RedisServer, String> {
        let bin = &ctx.redis_server;
        let addr = free_addr().map_err(|e| e.to_string())?;
        let dir = ctx.scratch(&format!("redis-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = ctx.out_dir.join(format!("redis-{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = ctx
            .pin
            .command(bin)
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (Debian: apt-get install redis-server, or pass --redis-server)",
                    bin.display()
                )
            })?;
        let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
        let server = RedisServer {
            addr,
            pid: Some(child.id()),
            child: Some(child),
            dir,
            client,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match server.ping().await {
                Ok(()) => return Ok(server),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("redis-server on {addr} not ready after 20 s: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn ping(&self) -> Result<(), String> {
        let mut c = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `--store` for presenced.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A new multiplexed connection.
    pub async fn conn(&self) -> Result<MultiplexedConnection, String> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("redis {}: {e}", self.addr))
    }

    /// `INFO <section>` as a map of its `key:value` lines.
    pub async fn info(&self, section: &str) -> Result<HashMap<String, String>, String> {
        let mut c = self.conn().await?;
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut c)
            .await
            .map_err(|e| format!("INFO {section}: {e}"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// `used_memory` of `INFO memory`, bytes.
    pub async fn used_memory(&self) -> Result<u64, String> {
        self.info("memory")
            .await?
            .get("used_memory")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "INFO memory: no used_memory".to_string())
    }

    /// Calls per command so far (`INFO commandstats`), commands called
    /// from scripts included.
    pub async fn command_calls(&self) -> Result<HashMap<String, u64>, String> {
        self.command_stat("calls").await
    }

    /// Microseconds Redis spent executing each command so far (a script's
    /// time includes the commands it called).
    pub async fn command_usec(&self) -> Result<HashMap<String, u64>, String> {
        self.command_stat("usec").await
    }

    async fn command_stat(&self, field: &str) -> Result<HashMap<String, u64>, String> {
        let prefix = format!("{field}=");
        Ok(self
            .info("commandstats")
            .await?
            .into_iter()
            .filter_map(|(k, v)| {
                let cmd = k.strip_prefix("cmdstat_")?.to_string();
                let n = v
                    .split(',')
                    .find_map(|f| f.strip_prefix(prefix.as_str()))?
                    .parse()
                    .ok()?;
                Some((cmd, n))
            })
            .collect())
    }
}

/// Calls per command between two [`RedisServer::command_calls`], without
/// `INFO` itself.
pub fn calls_between(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .filter(|(cmd, _)| cmd.as_str() != "info")
        .map(|(cmd, n)| {
            (
                cmd.clone(),
                n.saturating_sub(*before.get(cmd).unwrap_or(&0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
