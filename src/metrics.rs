//! Prometheus metrics, served as text on `GET /metrics` by the admin
//! listener (`--metrics-listen`).
//!
//! One [`Metrics`] per server, no process-wide registry: several servers in
//! one process (the tests) each count on their own. Metrics come from three
//! places, all read or updated without locks on the request path:
//! - per-call counters and latency histograms, updated by the
//!   [`telemetry`](crate::telemetry) layer around every call;
//! - the engine's gauges and counters ([`Memory::stats`],
//!   [`Memory::counts`]), read at scrape time;
//! - process CPU, memory and file descriptors from `/proc/self`, read at
//!   scrape time (Linux; absent elsewhere).
//!
//! Names (all prefixed `presenced_` except the standard `process_*`):
//! `rpc_started_total`, `rpc_handled_total`, `rpc_duration_seconds`,
//! `requests_rejected_total`, `store_errors_total`, `sessions`,
//! `online_users`, `rooms`, `watch_streams`, `sessions_created_total`,
//! `sessions_ended_total`, `users_purged_total`, `snapshots_built_total`,
//! `snapshots_delivered_total`, `snapshots_coalesced_total`,
//! `persist_writes_total`, `persist_last_success_timestamp_seconds`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::presence::persist::Persister;
use crate::presence::Memory;

/// Labels of a call: `service`, `method`.
pub type CallLabels = [(&'static str, &'static str); 2];
/// Labels of a finished call: `service`, `method`, `code`.
pub type HandledLabels = [(&'static str, &'static str); 3];
/// Labels of a rejection: `reason`.
pub type ReasonLabels = [(&'static str, &'static str); 1];

/// Content type of the text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A server's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Updated by the telemetry layer.
    pub rpc: RpcMetrics,
}

/// Per-call metrics, updated by the telemetry layer.
#[derive(Clone)]
pub struct RpcMetrics {
    /// Calls started, by service and method.
    pub started: Family<CallLabels, Counter>,
    /// Calls finished, by service, method and gRPC code.
    pub handled: Family<HandledLabels, Counter>,
    /// Call durations (for WatchRoom: the stream's life), by service and
    /// method.
    pub duration: Family<CallLabels, Histogram>,
    /// Calls refused for a client-side reason (the gRPC code, snake case).
    pub rejected: Family<ReasonLabels, Counter>,
    /// Calls that failed on the server's side (INTERNAL, UNKNOWN, DATA_LOSS,
    /// or UNAVAILABLE while not shutting down): the store failing.
    pub store_errors: Counter,
}

impl Metrics {
    /// Metrics of `store` (and of `persister`, when state is persisted).
    pub fn new(store: Memory, persister: Option<Persister>) -> Self {
        let mut registry = Registry::default();
        let rpc = RpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            duration: Family::new_with_constructor(|| {
                // 100 µs … ~105 s: unary calls sit low, watch streams high.
                Histogram::new(exponential_buckets(0.0001, 4.0, 11))
            }),
            rejected: Family::default(),
            store_errors: Counter::default(),
        };
        let presenced = registry.sub_registry_with_prefix("presenced");
        presenced.register(
            "rpc_started",
            "gRPC calls (and beacon requests) started",
            rpc.started.clone(),
        );
        presenced.register(
            "rpc_handled",
            "gRPC calls (and beacon requests) finished, by status code",
            rpc.handled.clone(),
        );
        presenced.register_with_unit(
            "rpc_duration",
            "Time from request to the end of the response (a watch stream's whole life)",
            Unit::Seconds,
            rpc.duration.clone(),
        );
        presenced.register(
            "requests_rejected",
            "Calls refused for a client-side reason (invalid argument, bad token, limit, shutting down...)",
            rpc.rejected.clone(),
        );
        presenced.register(
            "store_errors",
            "Calls that failed on the server's side (store failing or unreachable)",
            rpc.store_errors.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { store, persister }));
        #[cfg(target_os = "linux")]
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry: Arc::new(registry),
            rpc,
        }
    }

    /// The text exposition of every metric now.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads the engine's gauges and counters at scrape time.
struct EngineCollector {
    store: Memory,
    persister: Option<Persister>,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let stats = self.store.stats();
        let counts = self.store.counts();
        gauge(
            &mut enc,
            "presenced_sessions",
            "Live sessions",
            stats.sessions as i64,
        )?;
        gauge(
            &mut enc,
            "presenced_online_users",
            "Online users, counted once per room they are online in",
            self.store.online_users() as i64,
        )?;
        gauge(
            &mut enc,
            "presenced_rooms",
            "Rooms held (with users or watchers)",
            stats.rooms as i64,
        )?;
        gauge(
            &mut enc,
            "presenced_watch_streams",
            "Open WatchRoom streams",
            stats.watchers as i64,
        )?;
        counter(
            &mut enc,
            "presenced_sessions_created",
            "Sessions created by a heartbeat or restored at start",
            counts.sessions_created,
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "presenced_sessions_ended",
                "Sessions ended, by reason (disconnect: Disconnect or beacon; expired: deadline passed)",
                None,
                c.metric_type(),
            )?;
            for (reason, value) in [
                ("disconnect", counts.sessions_disconnected),
                ("expired", counts.sessions_expired),
            ] {
                ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            &mut enc,
            "presenced_users_purged",
            "Offline users forgotten at the end of their retention",
            counts.users_purged,
        )?;
        counter(
            &mut enc,
            "presenced_snapshots_built",
            "Room snapshots built for watchers (one per change or coalescing window, shared by all watchers)",
            counts.snapshots_built,
        )?;
        counter(
            &mut enc,
            "presenced_snapshots_delivered",
            "Snapshots handed to watch streams (one per watcher per snapshot it received)",
            counts.snapshots_delivered,
        )?;
        counter(
            &mut enc,
            "presenced_snapshots_coalesced",
            "Changes folded into an already pending snapshot (no snapshot of their own)",
            counts.snapshots_coalesced,
        )?;
        if let Some(persister) = &self.persister {
            let p = persister.counts();
            let c = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "presenced_persist_writes",
                "State file writes to --data-dir, by result",
                None,
                c.metric_type(),
            )?;
            for (result, value) in [("ok", p.writes), ("error", p.failures)] {
                ConstCounter::new(value).encode(family.encode_family(&[("result", result)])?)?;
            }
            let g = ConstGauge::new(p.last_success as f64 / 1000.0);
            g.encode(enc.encode_descriptor(
                "presenced_persist_last_success_timestamp_seconds",
                "When the state last written successfully was taken (unix seconds; 0: never)",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Process CPU, memory, threads and file descriptors, from `/proc/self`,
/// with the standard `process_*` names.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct ProcessCollector;

#[cfg(target_os = "linux")]
impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // Linux reports times in USER_HZ, which is 100 on every supported
        // architecture (as prometheus/procfs assumes too).
        const TICKS_PER_SECOND: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised command name, which may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let c = ConstCounter::new((utime + stime) / TICKS_PER_SECOND);
            c.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            let value: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
            Some(value * 1024.0)
        };
        for (key, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            ),
            (
                "VmSize:",
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
            ),
        ] {
            if let Some(bytes) = kib(key) {
                let g = ConstGauge::new(bytes);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        if let Some(threads) = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            gauge(&mut enc, "process_threads", "Number of OS threads", threads)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as i64,
            )?;
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
            })
        {
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max,
            )?;
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            let g = ConstGauge::new(boot + start / TICKS_PER_SECOND);
            g.encode(enc.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
