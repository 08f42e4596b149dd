//! Watch latency across instances: two presenced, A and B, on one Redis;
//! W watchers of a room on B; isolated joins and leaves through A; time
//! from the change's reply until the last watcher on B has it. Baseline:
//! the same on one memory-store presenced (changes and watchers on the
//! same server), in the same run.

use serde_json::json;

use crate::ctx::{fmt_count, Ctx};
use crate::redis_server::RedisServer;
use crate::report::Report;
use crate::scenarios::fanout::watch_room;
use crate::stats::round2;

struct Sizes {
    watchers: usize,
    steps: usize,
}

const QUICK: Sizes = Sizes {
    watchers: 100,
    steps: 10,
};

const FULL: Sizes = Sizes {
    watchers: 1_000,
    steps: 100,
};

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    ctx.needs_own_servers("redis-watch")?;
    let s = ctx.sizes(&QUICK, &FULL);
    let w = s.watchers;
    let mut rep = Report::default();
    let label = fmt_count(w as u64);

    let mut base = {
        let t = ctx.own_presenced("redis-watch-memory", &[]).await?;
        watch_room(ctx, &t, &t, &[], w, s.steps, "redis-watch-mem", 1).await?
    };
    base.row.scenario = "redis-watch";
    base.row.case =
        format!("WatchRoom, memory store, {label} watchers (change and watch on one server)");

    let redis = RedisServer::start(ctx, "watch").await?;
    let store = ["--store".to_string(), redis.url()];
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let a = ctx.own_presenced("redis-watch-a", &store).await?;
    let b = ctx.own_presenced("redis-watch-b", &store).await?;
    let mut res = watch_room(ctx, &b, &a, &[redis.pid], w, s.steps, "redis-watch", 2).await?;
    res.row.scenario = "redis-watch";
    res.row.case =
        format!("WatchRoom across instances via Redis, {label} watchers (change on A, watch on B)");
    res.row.baseline = Some((base.row.case.clone(), base.row.cpu_us_per_op));
    let base_lat = base.row.latency.unwrap_or_default();
    res.row.extra["baseline_latency"] = base_lat.json();
    res.row.extra["chart_label"] =
        json!(format!("across instances via Redis, {label} (vs memory)"));
    let steps = res.row.extra["steps"].as_u64().unwrap_or(0).max(1) as f64;
    let per_change = |i: usize| {
        res.spent
            .get(i)
            .copied()
            .flatten()
            .map(|sp| round2(sp.cpu_ns as f64 / steps / 1000.0))
    };
    res.row.extra["cpu_us_per_change"] = json!({
        "b_watchers_instance": per_change(0),
        "a_changes_instance": per_change(1),
        "redis": per_change(2),
    });
    rep.sane(&base.row, None);
    rep.sane(&res.row, None);
    rep.check(
        "redis-watch: every watcher got every change (memory and Redis)",
        base.ok && res.ok,
    );
    base.tracker.check_streams(&mut rep, "redis-watch (memory)");
    res.tracker.check_streams(&mut rep, "redis-watch (Redis)");
    let lat = res.row.latency.unwrap_or_default();
    let (p99, base_p99) = (lat.p99_us, base_lat.p99_us);
    rep.goal(
        &format!("Redis: watch latency across instances, {label} watchers"),
        "p99 within 5 ms of the memory store's",
        format!(
            "p99 {:.2} ms, p50 {:.2} ms (memory store: p99 {:.2} ms, p50 {:.2} ms)",
            p99.unwrap_or(f64::NAN) / 1000.0,
            lat.p50_us.unwrap_or(f64::NAN) / 1000.0,
            base_p99.unwrap_or(f64::NAN) / 1000.0,
            base_lat.p50_us.unwrap_or(f64::NAN) / 1000.0
        ),
        p99.zip(base_p99).map(|(p, b)| p - b <= 5000.0),
    );
    rep.rows.push(base.row);
    rep.rows.push(res.row);
    Ok(rep)
}
