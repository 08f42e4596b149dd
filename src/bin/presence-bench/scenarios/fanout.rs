//! W watchers of one room; isolated joins and leaves, each more than a
//! coalescing window after the previous one reached every watcher; time
//! from the heartbeat's (or disconnect's) reply to the last watcher's
//! receipt, and server CPU per delivered snapshot; against tonic's own
//! Health/Watch fan-out to the same W streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use serde_json::json;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::ctx::{fmt_count, presence_clients, Ctx};
use crate::report::{Report, Row};
use crate::server::{connect_many, Target};
use crate::stats::{mib, Spent};
use crate::watch::{
    expect_quiet, open_streams, run_isolated, spawn_counting_reader, spawn_room_reader, Churn,
    Isolated, RoomWatch, Tracker,
};

/// Changes measured at `w` watchers.
fn steps(ctx: &Ctx, w: usize) -> usize {
    if ctx.quick {
        return 10;
    }
    match w {
        0..=100 => 200,
        101..=1000 => 100,
        1001..=10_000 => 30,
        _ => 10,
    }
}

/// The listing limit a watcher gets when it asks for 0.
pub const LIMIT: usize = presenced::presence::DEFAULT_LIST_LIMIT as usize;

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let mut rep = Report::default();
    for &w in &ctx.fanout_sizes.clone() {
        let steps = steps(ctx, w);
        let base = baseline(ctx, w, steps).await?;
        let t = ctx.presenced(&format!("fanout-{w}"), &[]).await?;
        let mut res = watch_room(ctx, &t, &t, &[], w, steps, "fanout", w as u64).await?;
        res.row.baseline = Some((base.row.case.clone(), base.row.cpu_us_per_op));
        let base_lat = base.row.latency;
        res.row.extra["baseline_latency"] = json!(base_lat.map(|l| l.json()));
        rep.sane(&base.row, None);
        rep.sane(&res.row, None);
        rep.check(
            format!("fanout {w}: every watcher got every change"),
            res.ok && base.ok,
        );
        res.tracker.check_streams(&mut rep, &format!("fanout {w}"));
        let latency = res.row.latency.unwrap_or_default();
        let cpu = res.row.cpu_us_per_op;
        let ratio = res.row.ratio();
        if w == 1000 || w == 10_000 {
            let limit_ms = if w == 1000 { 5.0 } else { 50.0 };
            rep.goal(
                &format!("fan-out latency, {} watchers", fmt_count(w as u64)),
                &format!("p99 ≤ {limit_ms} ms"),
                format!(
                    "p99 {:.2} ms, p50 {:.2} ms (Health/Watch p99 {:.2} ms)",
                    latency.p99_us.unwrap_or(f64::NAN) / 1000.0,
                    latency.p50_us.unwrap_or(f64::NAN) / 1000.0,
                    base_lat.and_then(|l| l.p99_us).unwrap_or(f64::NAN) / 1000.0
                ),
                latency.p99_us.map(|p| p / 1000.0 <= limit_ms),
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
        rep.rows.push(base.row);
        rep.rows.push(res.row);
    }
    Ok(rep)
}

/// A fan-out phase's row, and whether every step reached every watcher.
pub struct Fanout {
    pub row: Row,
    pub ok: bool,
    pub tracker: Arc<Tracker>,
    /// What each measured process spent (the watchers' server first).
    pub spent: Vec<Option<Spent>>,
}

/// The gap after a change reached every watcher: more than a window, so
/// the next change is published at once.
pub fn gap(ctx: &Ctx) -> Duration {
    ctx.snapshot_interval + Duration::from_millis(20)
}

/// The row of a fan-out phase: deliveries, latency, CPU per delivery, RSS
/// per idle stream (`rss_opened` before and after the streams opened).
fn row(
    ctx: &Ctx,
    case: String,
    w: usize,
    mut res: Isolated,
    rss: (Option<u64>, Option<u64>),
) -> Row {
    let spent = res.measured.first();
    let deliveries = (res.latency.len() * w) as u64;
    let mut row = Row::new("fanout", case);
    row.ops = deliveries;
    row.throughput = Some(deliveries as f64 / res.measured.elapsed.as_secs_f64());
    row.latency = Some(res.latency.summary());
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(deliveries));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    let per_stream = match rss {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / w as f64),
        _ => None,
    };
    row.extra = json!({
        "watchers": w, "steps": res.latency.len(), "connections": w.div_ceil(ctx.watchers_per_conn),
        "latency_is": "from the trigger's acknowledgement to the last watcher's receipt",
        "rss_per_stream_bytes": per_stream.map(|b| b.round()),
        "load_core_busy_pct": res.measured.load_busy_pct,
        "server": spent.map(|s| s.json()),
    });
    row
}

/// Health/Watch fan-out of `w` streams on the baseline server.
async fn baseline(ctx: &Ctx, w: usize, steps: usize) -> Result<Fanout, String> {
    let mut base =
        Target::start_baseline(&ctx.pin, &ctx.out_dir.join("baseline-health.log")).await?;
    let channels = connect_many(base.addr, w.div_ceil(ctx.watchers_per_conn)).await?;
    let clients: Vec<HealthClient<_>> = channels
        .iter()
        .map(|c| HealthClient::new(c.clone()))
        .collect();
    let per = ctx.watchers_per_conn;
    let tracker = Tracker::new(w, steps);
    let rss_before = base.usage().map(|u| u.rss);
    let open = |i: usize| {
        let mut c = clients[i / per].clone();
        async move {
            c.watch(HealthCheckRequest {
                service: crate::baseline::SERVICE.into(),
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    open_streams(&tracker, w, open, Arc::new(spawn_counting_reader))
        .await
        .map_err(|e| format!("Health/Watch fan-out: {e}"))?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = base.usage().map(|u| u.rss);
    let pid = base.pid;
    let trigger = |_k: usize| {
        let r = base.flip();
        let at = Instant::now();
        async move { r.map(|()| at) }
    };
    let res = run_isolated(&tracker, &[pid], gap(ctx), trigger).await?;
    let (ok, spent) = (res.ok, res.measured.spent.clone());
    let case = format!("Health/Watch fan-out, {} streams", fmt_count(w as u64));
    let row = row(ctx, case, w, res, (rss_before, rss_idle));
    drop(channels);
    base.stop();
    Ok(Fanout {
        row,
        ok,
        tracker,
        spent,
    })
}

/// WatchRoom fan-out: `w` watchers on `watch`, changes through `drive`
/// (the same server, or another instance on the same store), measuring
/// both and the processes `also`. `scope` keeps rooms and sessions of
/// different uses apart.
#[allow(clippy::too_many_arguments)]
pub async fn watch_room(
    ctx: &Ctx,
    watch: &Target,
    drive: &Target,
    also: &[Option<u32>],
    w: usize,
    steps: usize,
    name: &str,
    scope: u64,
) -> Result<Fanout, String> {
    let channels = connect_many(watch.addr, w.div_ceil(ctx.watchers_per_conn)).await?;
    let clients = presence_clients(&channels);
    let driver_ch = connect_many(drive.addr, 1).await?;
    let driver = presence_clients(&driver_ch).remove(0);
    let churn = Churn::new(ctx, driver, ctx.room(name, scope), scope, steps).await?;
    let tracker = Tracker::new(w, steps);
    let per = ctx.watchers_per_conn;
    let rss_before = watch.usage().map(|u| u.rss);
    let room_token = churn.room_token.clone();
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
    let spec = RoomWatch {
        progress: Churn::progress(),
        verify: Some(Churn::expected(steps, LIMIT)),
    };
    open_streams(
        &tracker,
        w,
        open,
        Arc::new(move |s, t| spawn_room_reader(s, t, spec.clone())),
    )
    .await
    .map_err(|e| format!("{name}: {e}"))?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = watch.usage().map(|u| u.rss);
    let mut pids = vec![watch.pid];
    if drive.pid != watch.pid {
        pids.push(drive.pid);
    }
    pids.extend_from_slice(also);
    let churn = &churn;
    let res = run_isolated(&tracker, &pids, gap(ctx), |k| async move {
        churn.change(k).await.map_err(|e| format!("{name}: {e}"))
    })
    .await?;
    // After the measurement: a heartbeat that changes nothing must reach
    // no watcher.
    expect_quiet(&tracker, gap(ctx), || churn.plain_heartbeat()).await?;
    let (ok, spent) = (res.ok, res.measured.spent.clone());
    let case = format!("WatchRoom fan-out, {} watchers", fmt_count(w as u64));
    let row = row(ctx, case, w, res, (rss_before, rss_idle));
    Ok(Fanout {
        row,
        ok,
        tracker,
        spent,
    })
}
