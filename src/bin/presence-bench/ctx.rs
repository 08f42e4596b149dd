//! What every scenario shares: the run's settings and how to start its
//! servers ([`Ctx`]), quick or full sizes, names of rooms and sessions, a
//! population of sessions to create and heartbeat ([`Population`]) and the
//! clients to call with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

use crate::load::{self, Call, Outcome};
use crate::server::{Pinning, Target};

/// Settings of a run, shared by its scenarios.
pub struct Ctx {
    pub pin: Pinning,
    pub presenced: PathBuf,
    /// The `redis-server` binary the Redis scenarios start.
    pub redis_server: PathBuf,
    pub out_dir: PathBuf,
    pub quick: bool,
    /// A running server to target instead of starting one (and its pid).
    pub existing: Option<(SocketAddr, Option<u32>)>,
    pub run: Uuid,
    pub watchers_per_conn: usize,
    /// `--snapshot-interval` given to presenced (the longest coalescing
    /// window).
    pub snapshot_interval: Duration,
    /// Fan-out sizes to measure.
    pub fanout_sizes: Vec<usize>,
}

impl Ctx {
    /// The quick (smoke run) or the full sizes of a scenario: each declares
    /// both as constants of its own `Sizes` struct.
    pub fn sizes<'a, T>(&self, quick: &'a T, full: &'a T) -> &'a T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A presenced for scenario part `name` with `extra` flags (the one
    /// given with `--target`, if any).
    pub async fn presenced(&self, name: &str, extra: &[&str]) -> Result<Target, String> {
        if let Some((addr, pid)) = self.existing {
            return Target::existing(addr, pid).await;
        }
        self.own_presenced(name, extra).await
    }

    /// A presenced this run starts, whatever `--target` says: for the
    /// scenarios that need their own flags or several instances.
    pub async fn own_presenced(&self, name: &str, extra: &[&str]) -> Result<Target, String> {
        let mut flags: Vec<String> = vec![
            "--snapshot-interval".into(),
            humantime::format_duration(self.snapshot_interval).to_string(),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        let log = self.out_dir.join(format!("presenced-{name}.log"));
        Target::start_presenced(&self.presenced, &self.pin, &flags, &log).await
    }

    /// Fails when the run targets a server of someone else's: scenarios
    /// that start servers with their own flags cannot use it.
    pub fn needs_own_servers(&self, scenario: &str) -> Result<(), String> {
        match self.existing {
            Some(_) => Err(format!(
                "{scenario}: starts its own servers (with their own flags); not with --target"
            )),
            None => Ok(()),
        }
    }

    /// A room id of this run.
    pub fn room(&self, scope: &str, i: u64) -> String {
        format!("bench-{}-{scope}-r{i}", &self.run.simple().to_string()[..8])
    }

    /// A stable uuid for session `i` of `scope` in this run.
    pub fn session(&self, scope: u64, i: u64) -> String {
        let (hi, _) = self.run.as_u64_pair();
        Uuid::from_u64_pair(hi ^ scope.rotate_left(32), i).to_string()
    }

    /// A scratch directory of this run (removed by the caller).
    pub fn scratch(&self, name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "presence-bench-{}-{name}",
            &self.run.simple().to_string()[..8]
        ))
    }
}

/// A heartbeat interval of `secs` seconds.
pub fn interval(secs: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs as i64,
        nanos: 0,
    })
}

/// A heartbeat interval of `ns` nanoseconds.
pub fn interval_ns(ns: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    })
}

/// A population of sessions: session `j` is user `<scope>-u<j>` in room
/// `j % rooms`, with a uuid session id.
#[derive(Clone)]
pub struct Population {
    scope: &'static str,
    rooms: u64,
    room_prefix: String,
    session_hi: u64,
    interval_s: u64,
}

impl Population {
    pub fn new(ctx: &Ctx, scope: &'static str, scope_id: u64, rooms: u64, interval_s: u64) -> Self {
        let (hi, _) = ctx.run.as_u64_pair();
        let room0 = ctx.room(scope, 0);
        Population {
            scope,
            rooms,
            room_prefix: room0[..room0.len() - 1].to_string(),
            session_hi: hi ^ scope_id.rotate_left(32),
            interval_s,
        }
    }

    pub fn request(&self, j: u64) -> pb::HeartbeatRequest {
        pb::HeartbeatRequest {
            room_id: self.room(j % self.rooms),
            user_id: self.user(j),
            session_id: Uuid::from_u64_pair(self.session_hi, j).to_string(),
            interval: interval(self.interval_s),
        }
    }

    pub fn room(&self, r: u64) -> String {
        format!("{}{r}", self.room_prefix)
    }

    pub fn user(&self, j: u64) -> String {
        format!("{}-u{j}", self.scope)
    }

    /// Heartbeats of sessions `offset + mix(i) % n` (`mix` spreads them so
    /// consecutive calls hit unrelated shards and cache lines), round robin
    /// over `clients`.
    pub fn heartbeat_call(
        &self,
        clients: &[PresenceServiceClient<Channel>],
        offset: u64,
        n: u64,
        spread: bool,
    ) -> Call {
        let clients: Arc<Vec<_>> = Arc::new(clients.to_vec());
        let pop = self.clone();
        Arc::new(move |i| {
            let j = offset
                + if spread {
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n
                } else {
                    i % n
                };
            let mut client = clients[(i as usize) % clients.len()].clone();
            let req = pop.request(j);
            Box::pin(async move { client.heartbeat(req).await.map(|_| ()) })
        })
    }

    /// Creates sessions `from..to` as fast as the load core allows.
    pub async fn create(
        &self,
        clients: &[PresenceServiceClient<Channel>],
        from: u64,
        to: u64,
    ) -> Outcome {
        let call = self.heartbeat_call(clients, from, to - from, false);
        load::closed_loop(call, 256, to - from, Duration::from_secs(600), false).await
    }
}

/// A presence client per channel.
pub fn presence_clients(channels: &[Channel]) -> Vec<PresenceServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| PresenceServiceClient::new(c.clone()).max_decoding_message_size(64 << 20))
        .collect()
}

/// `Health/Check` of `service`, round robin over `channels`.
pub fn health_call(channels: &[Channel], service: &str) -> Call {
    let clients: Arc<Vec<HealthClient<Channel>>> = Arc::new(
        channels
            .iter()
            .map(|c| HealthClient::new(c.clone()))
            .collect(),
    );
    let service = service.to_string();
    Arc::new(move |i| {
        let mut client = clients[(i as usize) % clients.len()].clone();
        let req = HealthCheckRequest {
            service: service.clone(),
        };
        Box::pin(async move { client.check(req).await.map(|_| ()) })
    })
}

/// `1000` as "1 k", `1000000` as "1 M".
pub fn fmt_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{} k", n / 1000)
    } else {
        n.to_string()
    }
}

/// A small deterministic generator (splitmix64) for randomised schedules:
/// the same run id gives the same schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_nanos().max(1) as u64;
        lo + Duration::from_nanos(self.next_u64() % span)
    }
}
