//! Prometheus metrics, served as text on `GET /metrics` by the admin
//! listener (`--metrics-listen`).
//!
//! One [`Metrics`] per server, no process-wide registry: several servers in
//! one process (the tests) each count on their own. Metrics come from three
//! places, all read or updated without locks on the request path:
//! - per-call counters and latency histograms, updated by the
//!   [`telemetry`](crate::telemetry) layer around every call;
//! - the store's gauges and counters ([`Store::stats`], [`Store::counts`],
//!   its health), read at scrape time;
//! - process CPU, memory and file descriptors from `/proc/self` (the
//!   `procfs` crate), read at scrape time (Linux; absent elsewhere).
//!
//! Names (all prefixed `presenced_` except the standard `process_*`):
//! `build_info`, `rpc_started_total`, `rpc_handled_total`,
//! `rpc_duration_seconds`, `requests_rejected_total`, `store_errors_total`,
//! `store_up`, `sessions`, `online_users`, `rooms`, `watched_rooms`,
//! `watch_streams`,
//! `sessions_created_total`, `sessions_ended_total`, `users_purged_total`,
//! `snapshots_built_total`, `snapshots_delivered_total`,
//! `snapshots_coalesced_total`, `sweeps_total`, `store_resyncs_total`,
//! `store_resynced_rooms_total`, `store_notifier_reconnects_total`,
//! `store_call_duration_seconds` (Redis), `persist_writes_total`,
//! `persist_last_success_timestamp_seconds` (`--data-dir`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::presence::{AnyStore, Health, Store};

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
    /// Metrics of a server over `store`.
    pub fn new(store: AnyStore) -> Self {
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
        registry.register_collector(Box::new(EngineCollector { store }));
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

/// Reads the store's gauges and counters at scrape time.
struct EngineCollector {
    store: AnyStore,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

/// A histogram read from elsewhere: sum, count, (upper bound, calls in the
/// bucket).
struct ConstHistogram(f64, u64, Vec<(f64, u64)>);

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.0, self.1, &self.2, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
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
        let counts = self.store.activity();
        {
            let g = ConstGauge::new(1i64);
            let mut family = enc.encode_descriptor(
                "presenced_build_info",
                "The running build: version and git revision (always 1)",
                None,
                g.metric_type(),
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("PRESENCED_GIT_REVISION")),
            ];
            g.encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut enc,
            "presenced_store_up",
            "1 while the store answers (always for the embedded store), 0 while it is unreachable",
            i64::from(self.store.health() == Health::Serving),
        )?;
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
            "Rooms with users, in all (with Redis: as of this instance's last sweep)",
            stats.rooms as i64,
        )?;
        gauge(
            &mut enc,
            "presenced_watched_rooms",
            "Rooms watched by this instance's watch streams",
            stats.watched_rooms as i64,
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
                "Sessions ended by this instance, by reason (disconnect: Disconnect or beacon; expired: deadline passed; removed: RemoveRoomUser or RemoveRoom)",
                None,
                c.metric_type(),
            )?;
            for (reason, value) in [
                ("disconnect", counts.sessions_disconnected),
                ("expired", counts.sessions_expired),
                ("removed", counts.sessions_removed),
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
        counter(
            &mut enc,
            "presenced_sweeps",
            "Sweeps run by this instance (expiry, retention purges, deferred publishes)",
            counts.sweeps,
        )?;
        counter(
            &mut enc,
            "presenced_store_resyncs",
            "Watched rooms whose version was checked against the shared store",
            counts.resyncs,
        )?;
        counter(
            &mut enc,
            "presenced_store_resynced_rooms",
            "Watched rooms a resync found stale and refreshed (lost notifications)",
            counts.resynced_rooms,
        )?;
        counter(
            &mut enc,
            "presenced_store_notifier_reconnects",
            "Times the shared store's notification connection was re-established",
            counts.notifier_reconnects,
        )?;
        if let Some(redis) = self.store.redis() {
            let mut family = enc.encode_descriptor(
                "presenced_store_call_duration",
                "Calls to Redis, by operation (scripts, reads, second steps, sweeps)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for op in redis.latencies() {
                ConstHistogram(op.sum, op.count, op.buckets)
                    .encode(family.encode_family(&[("op", op.op)])?)?;
            }
        }
        if let Some(p) = self.store.memory().and_then(|m| m.persist_writes()) {
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
                "When the state last written successfully was taken (unix seconds; written at every start)",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Process CPU, memory, threads and file descriptors, from `/proc/self`
/// through `procfs`, with the standard `process_*` names.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct ProcessCollector;

#[cfg(target_os = "linux")]
impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = me.stat() {
            let c = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            c.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
            let page = procfs::page_size();
            for (name, help, bytes) in [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    stat.rss * page,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    stat.vsize,
                ),
            ] {
                let g = ConstGauge::new(bytes as f64);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
            gauge(
                &mut enc,
                "process_threads",
                "Number of OS threads",
                stat.num_threads,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let g = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                g.encode(enc.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    None,
                    g.metric_type(),
                )?)?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                fds as i64,
            )?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                gauge(
                    &mut enc,
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    max as i64,
                )?;
            }
        }
        Ok(())
    }
}
