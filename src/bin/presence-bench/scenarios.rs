//! The scenarios. Each starts its own server(s) (unless the bench targets a
//! running one), builds its state, then measures phases; every phase is
//! bounded in count and in time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use prost::Message;
use serde_json::json;
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

use crate::load::{self, Call, Outcome};
use crate::server::{connect_many, Pinning, Target};
use crate::stats::{mib, round2, Latency, Samples, Spent};

/// Shared settings of a run.
pub struct Ctx {
    pub pin: Pinning,
    pub presenced: PathBuf,
    pub out_dir: PathBuf,
    pub quick: bool,
    /// A running server to target instead of starting one (and its pid).
    pub existing: Option<(SocketAddr, Option<u32>)>,
    pub tck: u64,
    pub run: Uuid,
    pub watchers_per_conn: usize,
    /// `--snapshot-interval` given to presenced (coalescing window).
    pub snapshot_interval: Duration,
    /// Fan-out sizes to measure.
    pub fanout_sizes: Vec<usize>,
}

/// One measured line of a scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub case: String,
    pub ops: u64,
    pub throughput: Option<f64>,
    pub latency: Option<Latency>,
    pub cpu_us_per_op: Option<f64>,
    pub rss_mib: Option<f64>,
    /// The same-run baseline's CPU per op, and our ratio to it.
    pub baseline: Option<(String, Option<f64>)>,
    pub extra: serde_json::Value,
}

impl Row {
    fn new(scenario: &'static str, case: impl Into<String>) -> Row {
        Row {
            scenario,
            case: case.into(),
            ops: 0,
            throughput: None,
            latency: None,
            cpu_us_per_op: None,
            rss_mib: None,
            baseline: None,
            extra: json!({}),
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        let (_, base) = self.baseline.as_ref()?;
        Some(self.cpu_us_per_op? / (*base)?)
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "scenario": self.scenario,
            "case": self.case,
            "ops": self.ops,
            "throughput_per_s": self.throughput.map(round2),
            "latency": self.latency.map(|l| l.json()),
            "server_cpu_us_per_op": self.cpu_us_per_op.map(round2),
            "server_rss_mib": self.rss_mib.map(round2),
            "baseline": self.baseline.as_ref().map(|(name, cpu)| json!({
                "case": name, "server_cpu_us_per_op": cpu.map(round2),
            })),
            "cpu_ratio_to_baseline": self.ratio().map(|r| (r * 1000.0).round() / 1000.0),
            "extra": self.extra,
        })
    }
}

/// A performance target of the issue and whether this run met it.
#[derive(Debug, Clone)]
pub struct Goal {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `None` when it could not be measured in this run.
    pub met: Option<bool>,
}

/// What a scenario reports.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    /// Sanity checks (the smoke run fails on any false one).
    pub checks: Vec<(String, bool)>,
    pub notes: Vec<String>,
}

impl Report {
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }

    fn goal(&mut self, name: &str, target: &str, measured: String, met: Option<bool>) {
        self.goals.push(Goal {
            name: name.into(),
            target: target.into(),
            measured,
            met,
        });
    }

    /// Checks a row's numbers are plausible: work done, no errors, finite
    /// latencies, CPU per op between 10 ns and 100 ms.
    fn sane(&mut self, row: &Row, outcome: Option<&Outcome>) {
        let name = format!("{}: {}", row.scenario, row.case);
        if let Some(o) = outcome {
            self.check(
                format!(
                    "{name}: calls succeed ({} errors{})",
                    o.errors,
                    o.first_error
                        .as_deref()
                        .map(|e| format!(", first: {e}"))
                        .unwrap_or_default()
                ),
                o.errors == 0 && o.ok > 0,
            );
        }
        if let Some(l) = row.latency {
            let ok = l.samples > 0
                && l.p50_us.is_some_and(|v| v.is_finite() && v >= 0.0)
                && l.p99_us >= l.p50_us;
            self.check(
                format!("{name}: latency percentiles are ordered and finite"),
                ok,
            );
        }
        if let Some(cpu) = row.cpu_us_per_op {
            self.check(
                format!("{name}: server CPU per op {cpu:.2} µs is plausible"),
                cpu.is_finite() && cpu > 0.01 && cpu < 100_000.0,
            );
        }
    }
}

impl Ctx {
    async fn presenced(&self, name: &str, extra: &[&str]) -> Result<Target, String> {
        if let Some((addr, pid)) = self.existing {
            return Target::existing(addr, pid).await;
        }
        let mut flags: Vec<String> = vec![
            "--snapshot-interval".into(),
            humantime::format_duration(self.snapshot_interval).to_string(),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        let log = self.out_dir.join(format!("presenced-{name}.log"));
        Target::start_presenced(&self.presenced, &self.pin, &flags, &log).await
    }

    fn room(&self, scope: &str, i: u64) -> String {
        format!("bench-{}-{scope}-r{i}", &self.run.simple().to_string()[..8])
    }

    /// A stable uuid for session `i` of `scope` in this run.
    fn session(&self, scope: u64, i: u64) -> String {
        let (hi, _) = self.run.as_u64_pair();
        Uuid::from_u64_pair(hi ^ scope.rotate_left(32), i).to_string()
    }

    fn spent(&self, t: &Target, before: Option<crate::stats::Usage>) -> Option<Spent> {
        Spent::between(before, t.usage(), self.tck)
    }
}

/// This process's CPU time so far, in nanoseconds: how busy the load core
/// was tells whether a phase was bound by the load generator.
fn load_cpu_ns() -> Option<u64> {
    crate::stats::Usage::read(std::process::id()).map(|u| u.cpu_ns)
}

fn busy_pct(before: Option<u64>, elapsed: Duration) -> Option<f64> {
    let spent = load_cpu_ns()?.saturating_sub(before?);
    Some(round2(
        spent as f64 / elapsed.as_nanos().max(1) as f64 * 100.0,
    ))
}

fn interval(secs: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs as i64,
        nanos: 0,
    })
}

fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A population of sessions: session `j` is user `u{j}` in room `j % rooms`.
#[derive(Clone)]
struct Population {
    scope: &'static str,
    scope_id: u64,
    rooms: u64,
    room_prefix: String,
    session_hi: u64,
    interval_s: u64,
}

impl Population {
    fn new(ctx: &Ctx, scope: &'static str, scope_id: u64, rooms: u64, interval_s: u64) -> Self {
        let (hi, _) = ctx.run.as_u64_pair();
        let room0 = ctx.room(scope, 0);
        Population {
            scope,
            scope_id,
            rooms,
            room_prefix: room0[..room0.len() - 1].to_string(),
            session_hi: hi ^ scope_id.rotate_left(32),
            interval_s,
        }
    }

    fn request(&self, j: u64) -> pb::HeartbeatRequest {
        pb::HeartbeatRequest {
            room_id: format!("{}{}", self.room_prefix, j % self.rooms),
            user_id: format!("{}-u{j}", self.scope),
            session_id: Uuid::from_u64_pair(self.session_hi, j).to_string(),
            interval: interval(self.interval_s),
        }
    }

    fn room(&self, r: u64) -> String {
        format!("{}{r}", self.room_prefix)
    }

    /// Heartbeats of sessions `offset + mix(i) % n` (`mix` spreads them so
    /// consecutive calls hit unrelated shards and cache lines).
    fn heartbeat_call(
        &self,
        clients: &[PresenceServiceClient<Channel>],
        offset: u64,
        n: u64,
        spread: bool,
    ) -> Call {
        let clients: Arc<Vec<_>> = Arc::new(clients.to_vec());
        let pop = self.clone();
        let _ = pop.scope_id;
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
    async fn create(
        &self,
        clients: &[PresenceServiceClient<Channel>],
        from: u64,
        to: u64,
    ) -> Outcome {
        let call = self.heartbeat_call(clients, from, to - from, false);
        load::closed_loop(call, 256, to - from, Duration::from_secs(600), false).await
    }
}

fn presence_clients(channels: &[Channel]) -> Vec<PresenceServiceClient<Channel>> {
    channels
        .iter()
        .map(|c| PresenceServiceClient::new(c.clone()).max_decoding_message_size(64 << 20))
        .collect()
}

fn health_call(channels: &[Channel], service: &str) -> Call {
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

/// The shape of a closed-loop phase: calls in flight, and its bounds.
#[derive(Debug, Clone, Copy)]
struct Closed {
    concurrency: usize,
    max_ops: u64,
    max_time: Duration,
}

/// Runs a closed-loop phase and measures the server around it.
async fn measured_closed(
    ctx: &Ctx,
    t: &Target,
    scenario: &'static str,
    case: String,
    call: Call,
    bounds: Closed,
) -> (Row, Outcome) {
    let Closed {
        concurrency,
        max_ops,
        max_time,
    } = bounds;
    let before = t.usage();
    let load_before = load_cpu_ns();
    let mut out = load::closed_loop(call, concurrency, max_ops, max_time, false).await;
    let spent = ctx.spent(t, before);
    let load_busy = busy_pct(load_before, out.elapsed);
    let mut row = Row::new(scenario, case);
    row.ops = out.ok;
    row.throughput = Some(out.throughput());
    row.latency = Some(out.latency.summary());
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(out.ok));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    row.extra = json!({ "mode": "closed loop", "concurrency": concurrency, "load_core_busy_pct": load_busy, "server": spent.map(|s| s.json()) });
    (row, out)
}

async fn measured_rate(
    ctx: &Ctx,
    t: &Target,
    scenario: &'static str,
    case: String,
    call: Call,
    rate: f64,
    duration: Duration,
) -> (Row, Outcome) {
    let before = t.usage();
    let load_before = load_cpu_ns();
    let mut out = load::fixed_rate(call, rate, duration, 4096).await;
    let spent = ctx.spent(t, before);
    let load_busy = busy_pct(load_before, out.elapsed);
    let mut row = Row::new(scenario, case);
    row.ops = out.ok;
    row.throughput = Some(out.throughput());
    row.latency = Some(out.latency.summary());
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(out.ok));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    row.extra = json!({ "mode": "fixed rate", "offered_per_s": rate, "dropped": out.dropped, "load_core_busy_pct": load_busy, "server": spent.map(|s| s.json()) });
    (row, out)
}

fn fmt_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{} k", n / 1000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------- heartbeat

/// Heartbeats of live sessions against Health/Check on the same server, at
/// 10 k and at 1 M live sessions, closed loop and at a fixed rate.
pub async fn heartbeat(ctx: &Ctx) -> Result<Report, String> {
    let mut rep = Report::default();
    let t = ctx.presenced("heartbeat", &[]).await?;
    let (small, large) = if ctx.quick {
        (1_000, 20_000)
    } else {
        (10_000, 1_000_000)
    };
    let (max_ops, max_time) = if ctx.quick {
        (20_000, Duration::from_secs(2))
    } else {
        (300_000, Duration::from_secs(8))
    };
    let (rate, rate_time) = if ctx.quick {
        (1_000.0, Duration::from_secs(1))
    } else {
        (5_000.0, Duration::from_secs(4))
    };
    let closed = Closed {
        concurrency: 32,
        max_ops,
        max_time,
    };
    let channels = connect_many(t.addr, 4).await?;
    let clients = presence_clients(&channels);
    let pop = Population::new(ctx, "hb", 1, small / 10, 600);
    let created = pop.create(&clients, 0, small).await;
    rep.check(
        format!(
            "heartbeat: {small} sessions created ({} errors)",
            created.errors
        ),
        created.errors == 0,
    );
    let health = health_call(&channels, "");

    let mut ratios = Vec::new();
    for (n, label) in [(small, fmt_count(small)), (large, fmt_count(large))] {
        if n == large {
            let more = pop.create(&clients, small, large).await;
            rep.check(
                format!("heartbeat: grown to {n} sessions ({} errors)", more.errors),
                more.errors == 0,
            );
            rep.notes.push(format!(
                "heartbeat: created {} sessions at {:.0}/s",
                large - small,
                more.throughput()
            ));
        }
        // Health, heartbeat, health: the baseline is the mean of the two
        // health runs around the heartbeat run (drift on a shared machine).
        let (mut h1, o1) = measured_closed(
            ctx,
            &t,
            "heartbeat",
            format!("Health/Check, {label} sessions live"),
            health.clone(),
            closed,
        )
        .await;
        let hb = pop.heartbeat_call(&clients, 0, n, true);
        let (mut row, o) = measured_closed(
            ctx,
            &t,
            "heartbeat",
            format!("Heartbeat, {label} sessions live"),
            hb,
            closed,
        )
        .await;
        let (h2, o2) = measured_closed(
            ctx,
            &t,
            "heartbeat",
            "Health/Check (again)".into(),
            health.clone(),
            closed,
        )
        .await;
        let base = match (h1.cpu_us_per_op, h2.cpu_us_per_op) {
            (Some(a), Some(b)) => {
                Some((a * h1.ops as f64 + b * h2.ops as f64) / (h1.ops + h2.ops) as f64)
            }
            (a, b) => a.or(b),
        };
        h1.cpu_us_per_op = base;
        h1.ops += h2.ops;
        h1.case =
            format!("Health/Check, {label} sessions live (two runs around the heartbeat run)");
        row.baseline = Some((h1.case.clone(), base));
        rep.sane(&h1, Some(&o1));
        rep.sane(&h2, Some(&o2));
        rep.sane(&row, Some(&o));
        if let Some(r) = row.ratio() {
            ratios.push((
                label.clone(),
                r,
                row.cpu_us_per_op.unwrap_or_default(),
                base.unwrap_or_default(),
            ));
        }
        rep.rows.push(h1);
        rep.rows.push(row);
        if n == small {
            let (mut hr, ho) = measured_rate(
                ctx,
                &t,
                "heartbeat",
                format!("Health/Check at {rate:.0}/s"),
                health.clone(),
                rate,
                rate_time,
            )
            .await;
            let hb = pop.heartbeat_call(&clients, 0, n, true);
            let (mut r, o) = measured_rate(
                ctx,
                &t,
                "heartbeat",
                format!("Heartbeat at {rate:.0}/s, {label} sessions"),
                hb,
                rate,
                rate_time,
            )
            .await;
            r.baseline = Some((hr.case.clone(), hr.cpu_us_per_op));
            rep.sane(&hr, Some(&ho));
            rep.sane(&r, Some(&o));
            hr.extra["note"] = json!("latency from the scheduled send time");
            rep.rows.push(hr);
            rep.rows.push(r);
        }
    }
    let worst = ratios.iter().map(|r| r.1).fold(f64::NAN, f64::max);
    rep.goal(
        "heartbeat CPU",
        "≤ 1.2 × Health/Check server CPU",
        ratios
            .iter()
            .map(|(l, r, c, b)| format!("{r:.2}× at {l} ({c:.1} vs {b:.1} µs)"))
            .collect::<Vec<_>>()
            .join("; "),
        (!worst.is_nan()).then_some(worst <= 1.2),
    );
    if ratios.len() == 2 {
        // The heartbeat's own growth: its ratio to the same-run Health/Check
        // at each size, compared. The raw µs are shown too, but on a shared
        // machine they drift between phases minutes apart, baseline included.
        let growth = ratios[1].1 / ratios[0].1;
        let raw = ratios[1].2 / ratios[0].2;
        let base = ratios[1].3 / ratios[0].3;
        rep.goal(
            "heartbeat cost vs live sessions",
            "does not grow with sessions",
            format!(
                "{growth:.2}× from {} to {} sessions, relative to Health/Check (raw {raw:.2}×; Health/Check itself {base:.2}×)",
                ratios[0].0, ratios[1].0
            ),
            Some(growth <= 1.25),
        );
        rep.check(
            "heartbeat: ratios are plausible (0.2..20)",
            ratios.iter().all(|r| r.1 > 0.2 && r.1 < 20.0),
        );
    }
    Ok(rep)
}

// ---------------------------------------------------------------- fan-out

/// When each watcher received each step's message.
struct Arrivals {
    watchers: u32,
    counts: Vec<AtomicU32>,
    last_ns: Vec<AtomicU64>,
    ready: AtomicU32,
    notify: Notify,
    failed: AtomicBool,
}

impl Arrivals {
    fn new(watchers: usize, steps: usize) -> Arc<Self> {
        Arc::new(Arrivals {
            watchers: watchers as u32,
            counts: (0..steps).map(|_| AtomicU32::new(0)).collect(),
            last_ns: (0..steps).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicU32::new(0),
            notify: Notify::new(),
            failed: AtomicBool::new(false),
        })
    }

    /// The `k`-th message of a watcher (0 = its initial one).
    fn arrived(&self, k: usize, at_ns: u64) {
        if k == 0 {
            if self.ready.fetch_add(1, Ordering::AcqRel) + 1 == self.watchers {
                self.notify.notify_one();
            }
            return;
        }
        let step = k - 1;
        if step >= self.counts.len() {
            return;
        }
        self.last_ns[step].fetch_max(at_ns, Ordering::AcqRel);
        if self.counts[step].fetch_add(1, Ordering::AcqRel) + 1 == self.watchers {
            self.notify.notify_one();
        }
    }

    async fn wait(&self, done: impl Fn() -> bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if done() {
                return true;
            }
            if self.failed.load(Ordering::Relaxed) {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done();
            }
        }
    }

    async fn wait_ready(&self, within: Duration) -> bool {
        self.wait(
            || self.ready.load(Ordering::Acquire) >= self.watchers,
            within,
        )
        .await
    }

    async fn wait_step(&self, step: usize, within: Duration) -> bool {
        self.wait(
            || self.counts[step].load(Ordering::Acquire) >= self.watchers,
            within,
        )
        .await
    }
}

/// Reads a stream to its end, reporting each message's arrival.
fn spawn_reader<M: Send + 'static>(
    mut stream: tonic::Streaming<M>,
    arrivals: Arc<Arrivals>,
    epoch: Instant,
) {
    tokio::spawn(async move {
        let mut k = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => {
                    arrivals.arrived(k, since(epoch));
                    k += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    arrivals.failed.store(true, Ordering::Relaxed);
                    arrivals.notify.notify_one();
                    break;
                }
            }
        }
    });
}

struct FanoutResult {
    row: Row,
    p99_us: Option<f64>,
    ok: bool,
}

/// Opens `w` streams with `open(i)` (on connection i / per_conn), waits for
/// their first message, then runs `steps` isolated changes with
/// `trigger(k)`, which returns the instant the change was acknowledged.
#[allow(clippy::too_many_arguments)]
async fn fanout_run<M, Open, OpenFut, Trig, TrigFut>(
    ctx: &Ctx,
    usage: &dyn Fn() -> Option<crate::stats::Usage>,
    case: String,
    w: usize,
    steps: usize,
    open: Open,
    mut trigger: Trig,
    epoch: Instant,
) -> Result<FanoutResult, String>
where
    M: Send + 'static,
    Open: Fn(usize) -> OpenFut,
    OpenFut:
        std::future::Future<Output = Result<tonic::Streaming<M>, tonic::Status>> + Send + 'static,
    Trig: FnMut(usize) -> TrigFut,
    TrigFut: std::future::Future<Output = Result<u64, String>>,
{
    let arrivals = Arrivals::new(w, steps);
    let rss_before_streams = usage().map(|u| u.rss);
    let opens = Arc::new(tokio::sync::Semaphore::new(512));
    for i in 0..w {
        let fut = open(i);
        let arrivals = arrivals.clone();
        let permit = opens.clone().acquire_owned().await.expect("never closed");
        tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            match r {
                Ok(stream) => spawn_reader(stream, arrivals, epoch),
                Err(_) => {
                    arrivals.failed.store(true, Ordering::Relaxed);
                    arrivals.notify.notify_one();
                }
            }
        });
    }
    if !arrivals.wait_ready(Duration::from_secs(120)).await {
        return Err(format!(
            "{case}: only {} of {w} streams opened",
            arrivals.ready.load(Ordering::Relaxed)
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = usage();
    let gap = ctx.snapshot_interval + Duration::from_millis(20);
    let mut lat = Samples::with_capacity(steps);
    let mut ok = true;
    let before = usage();
    let load_before = load_cpu_ns();
    let start = Instant::now();
    for k in 0..steps {
        let t0 = trigger(k).await?;
        let within = Duration::from_secs(10) + Duration::from_micros(w as u64 * 100);
        if !arrivals.wait_step(k, within).await {
            ok = false;
            break;
        }
        let last = arrivals.last_ns[k].load(Ordering::Acquire);
        lat.record(Duration::from_nanos(last.saturating_sub(t0)));
        tokio::time::sleep(gap).await;
    }
    let elapsed = start.elapsed();
    let spent = Spent::between(before, usage(), ctx.tck);
    let load_busy = busy_pct(load_before, elapsed);
    let deliveries = (lat.len() * w) as u64;
    let mut row = Row::new("fanout", case);
    row.ops = deliveries;
    row.throughput = Some(deliveries as f64 / elapsed.as_secs_f64());
    let latency = lat.summary();
    row.latency = Some(latency);
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(deliveries));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    let per_stream = match (rss_before_streams, idle.map(|u| u.rss)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / w as f64),
        _ => None,
    };
    row.extra = json!({
        "watchers": w, "steps": lat.len(), "connections": w.div_ceil(ctx.watchers_per_conn),
        "latency_is": "from the trigger's acknowledgement to the last watcher's receipt",
        "rss_per_stream_bytes": per_stream.map(|b| b.round()),
        "load_core_busy_pct": load_busy,
        "server": spent.map(|s| s.json()),
    });
    Ok(FanoutResult {
        row,
        p99_us: latency.p99_us,
        ok,
    })
}

/// W watchers of one room; isolated joins and leaves; time from the
/// heartbeat's (or disconnect's) reply to the last watcher's receipt, and
/// CPU per delivery; against Health/Watch fan-out at the same W.
pub async fn fanout(ctx: &Ctx) -> Result<Report, String> {
    let mut rep = Report::default();
    let sizes = ctx.fanout_sizes.clone();
    for &w in &sizes {
        let steps = if ctx.quick {
            10
        } else {
            match w {
                0..=100 => 200,
                101..=1000 => 100,
                1001..=10_000 => 30,
                _ => 10,
            }
        };
        let conns = w.div_ceil(ctx.watchers_per_conn);
        let epoch = Instant::now();

        // Baseline: tonic-health Watch on the same stack.
        let mut base =
            Target::start_baseline(&ctx.pin, &ctx.out_dir.join("baseline-health.log")).await?;
        let channels = connect_many(base.addr, conns).await?;
        let hclients: Vec<HealthClient<Channel>> = channels
            .iter()
            .map(|c| HealthClient::new(c.clone()))
            .collect();
        let per = ctx.watchers_per_conn;
        let base_case = format!("Health/Watch fan-out, {} streams", fmt_count(w as u64));
        let base_res = {
            let open = |i: usize| {
                let mut c = hclients[i / per].clone();
                async move {
                    c.watch(HealthCheckRequest {
                        service: crate::baseline::SERVICE.into(),
                    })
                    .await
                    .map(|r| r.into_inner())
                }
            };
            // The trigger borrows `base` mutably (its control pipe), so the
            // usage is read through the pid.
            let pid = base.pid;
            let usage = move || pid.and_then(crate::stats::Usage::read);
            let trigger = |_k: usize| {
                let r = base.flip();
                let at = since(epoch);
                async move { r.map(|()| at) }
            };
            fanout_run(
                ctx,
                &usage,
                base_case.clone(),
                w,
                steps,
                open,
                trigger,
                epoch,
            )
            .await?
        };
        drop(channels);
        base.stop();

        // presenced.
        let t = ctx.presenced(&format!("fanout-{w}"), &[]).await?;
        let channels = connect_many(t.addr, conns).await?;
        let clients = presence_clients(&channels);
        let driver_ch = connect_many(t.addr, 1).await?;
        let mut driver = presence_clients(&driver_ch).remove(0);
        let room = ctx.room("fanout", w as u64);
        let base_user = driver
            .heartbeat(pb::HeartbeatRequest {
                room_id: room.clone(),
                user_id: "base".into(),
                session_id: ctx.session(100, w as u64),
                interval: interval(600),
            })
            .await
            .map_err(|e| format!("fanout: heartbeat: {e}"))?
            .into_inner();
        let room_token = base_user.room_token.clone();
        let open = |i: usize| {
            let mut c = clients[i / per].clone();
            let room_token = room_token.clone();
            async move {
                c.watch_room(pb::WatchRoomRequest {
                    room_token,
                    limit: 0,
                })
                .await
                .map(|r| r.into_inner())
            }
        };
        let session_tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let trigger = |k: usize| {
            let mut driver = driver.clone();
            let room = room.clone();
            let tokens = session_tokens.clone();
            let session_id = ctx.session(200 + w as u64, k as u64 / 2);
            async move {
                if k.is_multiple_of(2) {
                    let reply = driver
                        .heartbeat(pb::HeartbeatRequest {
                            room_id: room,
                            user_id: format!("joiner-{}", k / 2),
                            session_id,
                            interval: interval(600),
                        })
                        .await
                        .map_err(|e| format!("fanout: join: {e}"))?;
                    let at = since(epoch);
                    tokens
                        .lock()
                        .unwrap()
                        .push(reply.into_inner().session_token);
                    Ok(at)
                } else {
                    let token = tokens.lock().unwrap().pop().unwrap_or_default();
                    driver
                        .disconnect(pb::DisconnectRequest {
                            session_token: token,
                        })
                        .await
                        .map_err(|e| format!("fanout: leave: {e}"))?;
                    Ok(since(epoch))
                }
            }
        };
        let case = format!("WatchRoom fan-out, {} watchers", fmt_count(w as u64));
        let usage = || t.usage();
        let mut res = fanout_run(ctx, &usage, case, w, steps, open, trigger, epoch).await?;
        res.row.baseline = Some((base_case, base_res.row.cpu_us_per_op));
        let base_lat = base_res.row.latency;
        res.row.extra["baseline_latency"] = json!(base_lat.map(|l| l.json()));
        rep.sane(&base_res.row, None);
        rep.sane(&res.row, None);
        rep.check(
            format!("fanout {w}: every watcher got every change"),
            res.ok && base_res.ok,
        );
        let p99 = res.p99_us;
        let cpu = res.row.cpu_us_per_op;
        let ratio = res.row.ratio();
        if w == 1000 || w == 10_000 {
            let limit_ms = if w == 1000 { 5.0 } else { 50.0 };
            rep.goal(
                &format!("fan-out latency, {} watchers", fmt_count(w as u64)),
                &format!("p99 ≤ {limit_ms} ms"),
                format!(
                    "p99 {:.2} ms, p50 {:.2} ms (Health/Watch p99 {:.2} ms)",
                    p99.unwrap_or(f64::NAN) / 1000.0,
                    res.row.latency.and_then(|l| l.p50_us).unwrap_or(f64::NAN) / 1000.0,
                    base_lat.and_then(|l| l.p99_us).unwrap_or(f64::NAN) / 1000.0
                ),
                p99.map(|p| p / 1000.0 <= limit_ms),
            );
        }
        if w >= 1000 {
            rep.goal(
                &format!(
                    "CPU per delivered snapshot, {} watchers",
                    fmt_count(w as u64)
                ),
                "≤ 2 µs",
                format!(
                    "{:.2} µs ({:.2}× Health/Watch)",
                    cpu.unwrap_or(f64::NAN),
                    ratio.unwrap_or(f64::NAN)
                ),
                cpu.map(|c| c <= 2.0),
            );
        }
        rep.rows.push(base_res.row);
        rep.rows.push(res.row);
        drop(channels);
        drop(driver_ch);
    }
    Ok(rep)
}

// ---------------------------------------------------------------- storm

/// N users join one room within a second while M watch it.
pub async fn storm(ctx: &Ctx) -> Result<Report, String> {
    let mut rep = Report::default();
    let (users, watchers) = if ctx.quick {
        (1_000u64, 100usize)
    } else {
        (10_000, 1_000)
    };
    let t = ctx.presenced("storm", &[]).await?;
    let epoch = Instant::now();
    let wchan = connect_many(t.addr, watchers.div_ceil(ctx.watchers_per_conn)).await?;
    let wclients = presence_clients(&wchan);
    let jchan = connect_many(t.addr, 4).await?;
    let jclients = presence_clients(&jchan);
    let pop = Population::new(ctx, "storm", 3, 1, 600);
    // A room token without joining: any heartbeat in another room of the
    // run gives one for that room only, so ask for this room's with a
    // watcher-only user that leaves at once.
    let mut c = jclients[0].clone();
    let probe = c
        .heartbeat(pb::HeartbeatRequest {
            room_id: pop.room(0),
            user_id: "probe".into(),
            session_id: ctx.session(300, 0),
            interval: interval(600),
        })
        .await
        .map_err(|e| format!("storm: {e}"))?
        .into_inner();
    c.remove_room_user(pb::RemoveRoomUserRequest {
        room_id: pop.room(0),
        user_id: "probe".into(),
    })
    .await
    .map_err(|e| format!("storm: {e}"))?;
    struct Seen {
        snapshots: AtomicU64,
        bytes: AtomicU64,
        max_snapshots: AtomicU64,
        converged: AtomicU32,
        last_converged_ns: AtomicU64,
        ready: AtomicU32,
        notify: Notify,
    }
    let seen = Arc::new(Seen {
        snapshots: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        max_snapshots: AtomicU64::new(0),
        converged: AtomicU32::new(0),
        last_converged_ns: AtomicU64::new(0),
        ready: AtomicU32::new(0),
        notify: Notify::new(),
    });
    for i in 0..watchers {
        let mut c = wclients[i / ctx.watchers_per_conn].clone();
        let token = probe.room_token.clone();
        let seen = seen.clone();
        let target = users as u32;
        tokio::spawn(async move {
            let Ok(resp) = c
                .watch_room(pb::WatchRoomRequest {
                    room_token: token,
                    limit: 0,
                })
                .await
            else {
                return;
            };
            let mut stream = resp.into_inner();
            let mut first = true;
            let mut n = 0u64;
            while let Ok(Some(msg)) = stream.message().await {
                if first {
                    first = false;
                    seen.ready.fetch_add(1, Ordering::AcqRel);
                    seen.notify.notify_one();
                    continue;
                }
                n += 1;
                seen.snapshots.fetch_add(1, Ordering::Relaxed);
                seen.bytes
                    .fetch_add(msg.encoded_len() as u64 + 5, Ordering::Relaxed);
                if msg
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| s.online_count >= target)
                {
                    seen.max_snapshots.fetch_max(n, Ordering::Relaxed);
                    seen.last_converged_ns
                        .fetch_max(since(epoch), Ordering::AcqRel);
                    seen.converged.fetch_add(1, Ordering::AcqRel);
                    seen.notify.notify_one();
                    break;
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.ready.load(Ordering::Acquire) < watchers as u32 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), seen.notify.notified()).await;
    }
    rep.check(
        "storm: every watcher opened",
        seen.ready.load(Ordering::Acquire) == watchers as u32,
    );
    let last_reply = Arc::new(AtomicU64::new(0));
    let hb = pop.heartbeat_call(&jclients, 0, users, false);
    let lr = last_reply.clone();
    let call: Call = Arc::new(move |i| {
        let f = hb(i);
        let lr = lr.clone();
        Box::pin(async move {
            f.await?;
            lr.fetch_max(since(epoch), Ordering::AcqRel);
            Ok(())
        })
    });
    let before = t.usage();
    // Every join is sent (in flight is bounded by the count itself): the
    // watchers wait for all of them.
    let joins = load::fixed_rate(call, users as f64, Duration::from_secs(1), u64::MAX).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.converged.load(Ordering::Acquire) < watchers as u32 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), seen.notify.notified()).await;
    }
    let spent = ctx.spent(&t, before);
    let converged = seen.converged.load(Ordering::Acquire);
    // Negative when the last snapshot beat the last join's reply to the
    // client (the load core reads them in whatever order they arrive).
    let conv_ms = (seen.last_converged_ns.load(Ordering::Acquire) as f64
        - last_reply.load(Ordering::Acquire) as f64)
        / 1e6;
    let snaps = seen.snapshots.load(Ordering::Relaxed);
    let mean_snaps = snaps as f64 / watchers as f64;
    let max_snaps = seen.max_snapshots.load(Ordering::Relaxed);
    let bytes_per_watcher = seen.bytes.load(Ordering::Relaxed) as f64 / watchers as f64;
    let mut row = Row::new(
        "storm",
        format!(
            "{} joins in 1 s, {} watchers",
            fmt_count(users),
            fmt_count(watchers as u64)
        ),
    );
    row.ops = joins.ok;
    row.throughput = Some(joins.throughput());
    row.latency = Some(joins.latency.clone().summary());
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(joins.ok));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    row.extra = json!({
        "joins_elapsed_s": round2(joins.elapsed.as_secs_f64()),
        "converged_watchers": converged,
        "convergence_after_last_join_ms": round2(conv_ms),
        "snapshots_per_watcher_mean": round2(mean_snaps),
        "snapshots_per_watcher_max": max_snaps,
        "bytes_per_watcher": bytes_per_watcher.round(),
        "cpu_note": "server CPU per join, snapshot deliveries included",
        "server": spent.map(|s| s.json()),
    });
    rep.sane(&row, Some(&joins));
    rep.check(
        "storm: every watcher saw every join",
        converged == watchers as u32,
    );
    let window_s = joins.elapsed.as_secs_f64() + conv_ms / 1000.0;
    let bound = (window_s / ctx.snapshot_interval.as_secs_f64()).ceil() as u64 + 2;
    rep.check(
        format!("storm: snapshots per watcher ≤ {bound} (coalesced)"),
        max_snaps <= bound,
    );
    rep.goal(
        "storm convergence",
        "every watcher within 1 s of the last join",
        format!("{conv_ms:.0} ms ({converged}/{watchers} converged)"),
        Some(converged == watchers as u32 && conv_ms <= 1000.0),
    );
    rep.goal(
        "storm coalescing",
        "bounded snapshots per watcher, not one per join",
        format!("max {max_snaps}, mean {mean_snaps:.1} snapshots for {users} joins; {:.1} KiB per watcher", bytes_per_watcher / 1024.0),
        Some(max_snaps <= bound),
    );
    rep.rows.push(row);
    Ok(rep)
}

// ---------------------------------------------------------------- expiry

/// N sessions reach their deadline together while other sessions keep
/// heartbeating.
pub async fn expiry(ctx: &Ctx) -> Result<Report, String> {
    let mut rep = Report::default();
    let (n, others) = if ctx.quick {
        (5_000u64, 500u64)
    } else {
        (100_000, 10_000)
    };
    let per_room = 1000u64.min(n);
    let rooms = n / per_room;
    let t = ctx.presenced("expiry", &[]).await?;
    let epoch = Instant::now();
    let chans = connect_many(t.addr, 4).await?;
    let clients = presence_clients(&chans);
    let live = Population::new(ctx, "live", 5, (others / 10).max(1), 600);
    let created = live.create(&clients, 0, others).await;
    rep.check("expiry: background sessions created", created.errors == 0);
    // The expiring sessions all get the same deadline: each heartbeat asks
    // for the interval that puts its deadline (now + 2.5 × interval) at
    // `due`, far enough out for the creation to finish first. The deadline
    // of each is estimated from its send time, which is no later than the
    // server's clock when it handled it: estimates are lower bounds, so the
    // lateness measured is an upper bound.
    let budget = if ctx.quick {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(30)
    };
    let due = since(epoch) + budget.as_nanos() as u64;
    let pop = Population::new(ctx, "exp", 6, rooms, 2);
    let first_deadline_a = Arc::new(AtomicU64::new(u64::MAX));
    let last_deadline_a = Arc::new(AtomicU64::new(0));
    let (fs, ls) = (first_deadline_a.clone(), last_deadline_a.clone());
    let tokens: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; rooms as usize]));
    let tk = tokens.clone();
    let pop2 = pop.clone();
    let clients2 = clients.clone();
    let call: Call = Arc::new(move |i| {
        let (fs, ls, tk) = (fs.clone(), ls.clone(), tk.clone());
        let mut req = pop2.request(i);
        let mut c = clients2[i as usize % clients2.len()].clone();
        Box::pin(async move {
            let at = since(epoch);
            // 2.5 × interval = due - at, at least the 1 s minimum interval.
            let interval_ns = (due.saturating_sub(at) * 2 / 5).max(1_000_000_000);
            req.interval = Some(prost_types::Duration {
                seconds: (interval_ns / 1_000_000_000) as i64,
                nanos: (interval_ns % 1_000_000_000) as i32,
            });
            let deadline = at + interval_ns * 5 / 2;
            fs.fetch_min(deadline, Ordering::AcqRel);
            ls.fetch_max(deadline, Ordering::AcqRel);
            let reply = c.heartbeat(req).await?.into_inner();
            let r = (i % rooms) as usize;
            let mut tk = tk.lock().unwrap();
            if tk[r].is_none() {
                tk[r] = Some(reply.room_token);
            }
            Ok(())
        })
    });
    let made = load::closed_loop(call, 256, n, budget, false).await;
    rep.check(
        format!("expiry: {n} sessions created ({} errors)", made.errors),
        made.errors == 0 && made.ok == n,
    );
    rep.notes.push(format!(
        "expiry: {n} sessions created in {:.1} s, all asking for a deadline {:.0} s after the start",
        made.elapsed.as_secs_f64(),
        budget.as_secs_f64()
    ));
    let first_deadline = first_deadline_a.load(Ordering::Acquire);
    let last_deadline = last_deadline_a.load(Ordering::Acquire);
    let spread_ms = (last_deadline - first_deadline) as f64 / 1e6;
    // One watcher per room, on one connection: when does each room show 0?
    let offline_at: Arc<Vec<AtomicU64>> = Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicU32::new(0));
    let wchan = connect_many(t.addr, 1).await?;
    let wclient = presence_clients(&wchan).remove(0);
    let tokens: Vec<String> = tokens
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.clone().unwrap_or_default())
        .collect();
    for (r, token) in tokens.into_iter().enumerate() {
        let mut c = wclient.clone();
        let (offline_at, done) = (offline_at.clone(), done.clone());
        tokio::spawn(async move {
            let Ok(resp) = c
                .watch_room(pb::WatchRoomRequest {
                    room_token: token,
                    limit: 1,
                })
                .await
            else {
                return;
            };
            let mut s = resp.into_inner();
            while let Ok(Some(m)) = s.message().await {
                if m.snapshot.is_some_and(|s| s.online_count == 0) {
                    offline_at[r].store(since(epoch), Ordering::Release);
                    done.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
        });
    }
    // Background heartbeats until every room is offline (bounded).
    let stop_at =
        Duration::from_nanos(last_deadline.saturating_sub(since(epoch))) + Duration::from_secs(5);
    let hb = live.heartbeat_call(&clients, 0, others, true);
    let before = t.usage();
    let bg = tokio::spawn(load::closed_loop(hb, 8, u64::MAX, stop_at, true));
    let deadline = Instant::now() + stop_at + Duration::from_secs(5);
    while done.load(Ordering::Acquire) < rooms as u32 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_offline = offline_at
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .max()
        .unwrap_or(0);
    let spent = ctx.spent(&t, before);
    let bg = bg.await.map_err(|e| e.to_string())?;
    let lateness_ms = all_offline as f64 / 1e6 - last_deadline as f64 / 1e6;
    let offline = done.load(Ordering::Acquire);
    let mut during = Samples::default();
    let mut calm = Samples::default();
    for (sent, d) in &bg.timeline {
        let at = sent.duration_since(epoch).as_nanos() as u64;
        if at >= first_deadline && at <= all_offline.max(last_deadline) {
            during.record(*d);
        } else if at < first_deadline {
            calm.record(*d);
        }
    }
    let during_l = during.summary();
    let calm_l = calm.summary();
    let mut row = Row::new(
        "expiry",
        format!(
            "{} sessions expire, {} others heartbeat",
            fmt_count(n),
            fmt_count(others)
        ),
    );
    row.ops = bg.ok;
    row.throughput = Some(bg.throughput());
    row.latency = Some(during_l);
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    row.extra = json!({
        "deadline_spread_ms": round2(spread_ms),
        "all_offline_after_last_deadline_ms": round2(lateness_ms),
        "rooms_offline": offline, "rooms": rooms,
        "latency_is": "background heartbeats sent between the first deadline and all-offline",
        "background_latency_before_deadlines": calm_l.json(),
        "server": spent.map(|s| s.json()),
        "lateness_note": "upper bound: deadlines are taken from send times, and a room's last snapshot may wait for its 50 ms coalescing window",
    });
    rep.sane(&row, Some(&bg));
    rep.check("expiry: every room went offline", offline == rooms as u32);
    rep.goal(
        "expiry",
        "all offline within 1 s of their deadline",
        format!(
            "{lateness_ms:.0} ms after the last deadline (deadlines spread over {spread_ms:.0} ms); other heartbeats p99 {:.2} ms meanwhile (p99 {:.2} ms before)",
            during_l.p99_us.unwrap_or(f64::NAN) / 1000.0,
            calm_l.p99_us.unwrap_or(f64::NAN) / 1000.0
        ),
        Some(offline == rooms as u32 && lateness_ms <= 1000.0),
    );
    rep.rows.push(row);
    Ok(rep)
}

// ---------------------------------------------------------------- memory

/// RSS per idle session, per idle watch stream (many per connection), and
/// the total at 1 M sessions in 100 k rooms.
/// Opens `n` watch streams over `clients` (`per_conn` each, over `tokens`'
/// rooms), `wave` at a time: each wave waits for its streams' first
/// snapshot. Returns how many got one, and the tasks holding them open.
async fn open_idle_streams(
    clients: &[PresenceServiceClient<Channel>],
    tokens: &[String],
    n: usize,
    per_conn: usize,
    wave: usize,
) -> (usize, Vec<tokio::task::JoinHandle<()>>) {
    let ready = Arc::new(AtomicU32::new(0));
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        let mut c = clients[i / per_conn].clone();
        let token = tokens[i % tokens.len()].clone();
        let got_first = ready.clone();
        held.push(tokio::spawn(async move {
            let request = pb::WatchRoomRequest {
                room_token: token,
                limit: 0,
            };
            let Ok(resp) = c.watch_room(request).await else {
                return;
            };
            let mut s = resp.into_inner();
            if let Ok(Some(_)) = s.message().await {
                got_first.fetch_add(1, Ordering::AcqRel);
            }
            // Hold the stream open, idle, until the scenario ends.
            while let Ok(Some(_)) = s.message().await {}
        }));
        if (i + 1) % wave == 0 || i + 1 == n {
            while (ready.load(Ordering::Acquire) as usize) < i + 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    (ready.load(Ordering::Acquire) as usize, held)
}

pub async fn memory(ctx: &Ctx) -> Result<Report, String> {
    let mut rep = Report::default();
    let (total, rooms_total, streams) = if ctx.quick {
        (50_000u64, 5_000u64, 1_000usize)
    } else {
        (1_000_000, 100_000, 10_000)
    };
    let t = ctx.presenced("memory", &[]).await?;
    if t.pid.is_none() {
        return Err("memory: needs the server's pid (start it here, or pass --pid)".into());
    }
    let chans = connect_many(t.addr, 4).await?;
    let clients = presence_clients(&chans);
    let pop = Population::new(ctx, "mem", 7, rooms_total, 600);
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let rss = |t: &Target| t.usage().map_or(0, |u| u.rss);
    // Sessions 0..rooms create every room with its first session (user);
    // the rest join existing rooms: their RSS growth is the cost of a
    // session (and of its user: one user per session, the worst case).
    let r0 = rss(&t);
    let a = pop.create(&clients, 0, rooms_total).await;
    settle().await;
    let r1 = rss(&t);
    let per_room = r1.saturating_sub(r0) as f64 / rooms_total as f64;
    let b = pop.create(&clients, rooms_total, total).await;
    settle().await;
    let r2 = rss(&t);
    let per_session = r2.saturating_sub(r1) as f64 / (total - rooms_total) as f64;
    rep.check("memory: sessions created", a.errors == 0 && b.errors == 0);

    // Idle watch streams, many per connection, over 100 rooms of 10
    // sessions, on a fresh server: on the one above, the streams would
    // partly reuse heap the sessions' growth freed, and look cheaper than
    // they are. Two batches on fresh connections: first paced (each
    // connection's streams opened ten at a time, as a fleet's clients
    // arrive), then in one burst (all of a connection's streams at once, as
    // after a restart). A burst grows h2's per-connection buffers (slabs
    // that never shrink) to the burst's size: the difference between the
    // two is that, not the streams.
    let ts = ctx.presenced("memory-streams", &[]).await?;
    let conns = streams.div_ceil(ctx.watchers_per_conn);
    let seed = connect_many(ts.addr, 1).await?;
    let mut c = presence_clients(&seed).remove(0);
    let spop = Population::new(ctx, "mem-streams", 8, 100, 600);
    let seeded = spop.create(std::slice::from_ref(&c), 0, 1_000).await;
    rep.check("memory: stream rooms seeded", seeded.errors == 0);
    let mut tokens = Vec::new();
    for r in 0..100u64 {
        let reply = c
            .heartbeat(spop.request(r))
            .await
            .map_err(|e| format!("memory: {e}"))?;
        tokens.push(reply.into_inner().room_token);
    }
    let mut per_stream = [0.0f64; 2];
    let mut held = Vec::new();
    for (k, wave) in [(0, 10), (1, streams)] {
        let wchan = connect_many(ts.addr, conns).await?;
        settle().await;
        let before = rss(&ts);
        let (opened, handles) = open_idle_streams(
            &presence_clients(&wchan),
            &tokens,
            streams,
            ctx.watchers_per_conn,
            wave,
        )
        .await;
        held.extend(handles);
        settle().await;
        per_stream[k] = rss(&ts).saturating_sub(before) as f64 / streams as f64;
        rep.check(
            format!("memory: {opened} of {streams} watch streams opened (batch {k})"),
            opened == streams,
        );
    }
    for h in held {
        h.abort();
    }
    let [per_stream, per_stream_burst] = per_stream;

    let mut row = Row::new(
        "memory",
        format!(
            "{} sessions in {} rooms; {} idle watch streams (fresh server)",
            fmt_count(total),
            fmt_count(rooms_total),
            fmt_count(streams as u64)
        ),
    );
    row.ops = total;
    row.rss_mib = Some(mib(r2));
    row.extra = json!({
        "rss_per_session_bytes": per_session.round(),
        "rss_per_room_with_first_session_bytes": per_room.round(),
        "rss_per_watch_stream_bytes": per_stream.round(),
        "rss_per_watch_stream_burst_bytes": per_stream_burst.round(),
        "rss_at_total_sessions_mib": round2(mib(r2)),
        "streams_per_connection": ctx.watchers_per_conn,
        "session_shape": "one user per session, 10 sessions per room, uuid session ids, ~20-byte user ids, ~30-byte room ids",
    });
    rep.check(
        format!("memory: per-session RSS {per_session:.0} B is plausible"),
        per_session > 20.0 && per_session < 20_000.0,
    );
    rep.check(
        format!("memory: per-stream RSS {per_stream:.0} B / {per_stream_burst:.0} B is plausible"),
        per_stream > 0.0
            && per_stream < 200_000.0
            && per_stream_burst > 0.0
            && per_stream_burst < 200_000.0,
    );
    rep.goal("memory per idle session", "≤ 400 B", format!("{per_session:.0} B per session joining a room, one user each ({per_room:.0} B for a new room with its first session)"), Some(per_session <= 400.0));
    rep.goal(
        "memory per idle watch stream",
        "≤ 4 KiB on a shared connection",
        format!(
            "{per_stream:.0} B ({} per connection, opened ten at a time; {per_stream_burst:.0} B opened all at once)",
            ctx.watchers_per_conn
        ),
        Some(per_stream <= 4096.0),
    );
    if !ctx.quick {
        rep.goal(
            "memory at 1 M sessions",
            "1 M sessions in 100 k rooms < 600 MiB RSS",
            format!("{:.0} MiB", mib(r2)),
            Some(mib(r2) < 600.0),
        );
    }
    rep.rows.push(row);
    Ok(rep)
}
