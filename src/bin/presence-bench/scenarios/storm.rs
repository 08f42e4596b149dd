//! N users join one room within a second while M watch it: time until
//! every watcher shows all of them, snapshots and bytes per watcher, and
//! server CPU per join; with adaptive coalescing windows against the fixed
//! window (`--coalescing fixed`) in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use presenced::presence::{Coalescing, Hub, Limits};
use serde_json::json;

use crate::ctx::{fmt_count, interval, presence_clients, Ctx, Population};
use crate::load::{self, Call};
use crate::phase::Meter;
use crate::report::{Report, Row};
use crate::scenarios::fanout::LIMIT;
use crate::server::connect_many;
use crate::stats::{mib, round2};
use crate::watch::{open_streams, spawn_room_reader, RoomWatch, Tracker};

struct Sizes {
    users: u64,
    watchers: usize,
}

const QUICK: Sizes = Sizes {
    users: 1_000,
    watchers: 100,
};

const FULL: Sizes = Sizes {
    users: 10_000,
    watchers: 1_000,
};

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    let fixed = storm(ctx, &mut rep, s, Coalescing::Fixed).await?;
    let mut adaptive = storm(ctx, &mut rep, s, Coalescing::Adaptive).await?;
    adaptive.row.baseline = Some((fixed.row.case.clone(), fixed.row.cpu_us_per_op));
    adaptive.row.extra["chart_label"] = json!("storm, per join: adaptive vs fixed window");
    let a = &adaptive;
    rep.goal(
        "storm convergence",
        "every watcher within 1 s of the last join",
        format!(
            "{:.0} ms ({}/{} converged; fixed window: {:.0} ms)",
            a.conv_ms, a.converged, s.watchers, fixed.conv_ms
        ),
        Some(a.converged == s.watchers as u32 && a.conv_ms <= 1000.0),
    );
    rep.goal(
        "storm coalescing",
        "bounded snapshots per watcher, not one per join",
        format!(
            "max {}, mean {:.1} snapshots for {} joins; {:.1} KiB per watcher (fixed window: max {}, {:.1} KiB)",
            a.max_snaps,
            a.mean_snaps,
            s.users,
            a.bytes_per_watcher / 1024.0,
            fixed.max_snaps,
            fixed.bytes_per_watcher / 1024.0
        ),
        Some(a.max_snaps <= a.bound),
    );
    let ratio = a.row.ratio();
    rep.goal(
        "storm CPU per join, adaptive windows",
        "≤ 1.1 × the fixed window's",
        format!(
            "{:.2}× ({:.1} vs {:.1} µs per join)",
            ratio.unwrap_or(f64::NAN),
            a.row.cpu_us_per_op.unwrap_or(f64::NAN),
            fixed.row.cpu_us_per_op.unwrap_or(f64::NAN)
        ),
        ratio.map(|r| r <= 1.1),
    );
    rep.rows.push(fixed.row);
    rep.rows.push(adaptive.row);
    Ok(rep)
}

/// One storm's figures.
struct Storm {
    row: Row,
    conv_ms: f64,
    converged: u32,
    mean_snaps: f64,
    max_snaps: u64,
    bytes_per_watcher: f64,
    /// The most snapshots per watcher the windows allow.
    bound: u64,
}

/// Snapshots a watcher may get over `span`: one per window at most, the
/// shortest window of this room (the server's own rule) applying, plus the
/// two at the ends.
fn coalescing_bound(
    ctx: &Ctx,
    mode: Coalescing,
    watchers: usize,
    users: u64,
    span: Duration,
) -> u64 {
    let hub = Hub::new(
        &Limits {
            snapshot_interval: ctx.snapshot_interval,
            coalescing: mode,
            ..Limits::default()
        },
        Arc::default(),
    );
    let shortest_ms = hub.window_for(watchers as u32, 0);
    if shortest_ms == 0 {
        return users + 2;
    }
    (span.as_secs_f64() * 1000.0 / shortest_ms as f64).ceil() as u64 + 2
}

async fn storm(ctx: &Ctx, rep: &mut Report, s: &Sizes, mode: Coalescing) -> Result<Storm, String> {
    let (users, watchers) = (s.users, s.watchers);
    let mode_name = match mode {
        Coalescing::Fixed => "fixed",
        Coalescing::Adaptive => "adaptive",
    };
    let t = ctx
        .presenced(&format!("storm-{mode_name}"), &["--coalescing", mode_name])
        .await?;
    let wchan = connect_many(t.addr, watchers.div_ceil(ctx.watchers_per_conn)).await?;
    let wclients = presence_clients(&wchan);
    let jchan = connect_many(t.addr, 4).await?;
    let jclients = presence_clients(&jchan);
    let scope_id = if mode == Coalescing::Fixed { 3 } else { 4 };
    let pop = Population::new(
        ctx,
        if scope_id == 3 { "storm" } else { "storm-a" },
        scope_id,
        1,
        600,
    );
    // A room token without joining: a probe user joins and is removed at
    // once.
    let mut c = jclients[0].clone();
    let probe = c
        .heartbeat(pb::HeartbeatRequest {
            room_id: pop.room(0),
            user_id: "probe".into(),
            session_id: ctx.session(300 + scope_id, 0),
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
    // One step: showing every user online.
    let tracker = Tracker::new(watchers, 1);
    let want = users as u32;
    let listed = (users as usize).min(LIMIT);
    let spec = RoomWatch {
        progress: Arc::new(move |s: &pb::RoomSnapshot| usize::from(s.online_count >= want)),
        verify: Some(Arc::new(move |s: &pb::RoomSnapshot| {
            let distinct: std::collections::HashSet<&str> =
                s.users.iter().map(|u| u.user_id.as_str()).collect();
            if s.online_count == want
                && s.total_count == want
                && s.users.len() == listed
                && distinct.len() == listed
                && s.users
                    .iter()
                    .all(|u| u.online && u.user_id.starts_with("storm"))
            {
                Ok(())
            } else {
                Err(format!(
                    "{} online of {}, {} listed ({} distinct); expected {want} of {want}, {listed} listed, all online",
                    s.online_count,
                    s.total_count,
                    s.users.len(),
                    distinct.len()
                ))
            }
        })),
    };
    let per = ctx.watchers_per_conn;
    let open = |i: usize| {
        let mut c = wclients[i / per].clone();
        let room_token = probe.room_token.clone();
        async move {
            c.watch_room(pb::WatchRoomRequest {
                room_token,
                limit: 0,
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let opened = open_streams(
        &tracker,
        watchers,
        open,
        Arc::new(move |s, t| spawn_room_reader(s, t, spec.clone())),
    )
    .await;
    rep.check(
        format!("storm ({mode_name}): every watcher opened"),
        opened.is_ok(),
    );
    let last_reply = Arc::new(AtomicU64::new(0));
    let hb = pop.heartbeat_call(&jclients, 0, users, false);
    let (lr, tr) = (last_reply.clone(), tracker.clone());
    let call: Call = Arc::new(move |i| {
        let f = hb(i);
        let (lr, tr) = (lr.clone(), tr.clone());
        Box::pin(async move {
            f.await?;
            lr.fetch_max(tr.ns_of(Instant::now()), Ordering::AcqRel);
            Ok(())
        })
    });
    let meter = Meter::of(&t);
    // Every join is sent (in flight is bounded by the count itself): the
    // watchers wait for all of them.
    let joins = load::fixed_rate(call, users as f64, Duration::from_secs(1), u64::MAX).await;
    tracker.wait_step(0, Duration::from_secs(30)).await;
    let spent = meter.stop().first();
    let (converged, mean_snaps, bytes_per_watcher, max_snaps) = tracker.to_last();
    // Negative when the last snapshot beat the last join's reply to the
    // client (the load core reads them in whatever order they arrive).
    let conv_ms = (tracker.last_ns(0) as f64 - last_reply.load(Ordering::Acquire) as f64) / 1e6;
    let window = match mode {
        Coalescing::Fixed => format!(
            "fixed {} window",
            humantime::format_duration(ctx.snapshot_interval)
        ),
        Coalescing::Adaptive => "adaptive window".to_string(),
    };
    let mut row = Row::new(
        "storm",
        format!(
            "{} joins in 1 s, {} watchers, {window}",
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
        "coalescing": mode_name,
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
        format!("storm ({mode_name}): every watcher saw every join"),
        converged == watchers as u32,
    );
    let span = joins.elapsed + Duration::from_secs_f64(conv_ms.max(0.0) / 1000.0);
    let bound = coalescing_bound(ctx, mode, watchers, users, span);
    rep.check(
        format!("storm ({mode_name}): snapshots per watcher ≤ {bound} (coalesced)"),
        max_snaps <= bound,
    );
    tracker.check_streams(rep, &format!("storm ({mode_name})"));
    Ok(Storm {
        row,
        conv_ms,
        converged,
        mean_snaps,
        max_snaps,
        bytes_per_watcher,
        bound,
    })
}
