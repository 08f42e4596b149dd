//! Heartbeats of live sessions through a Redis-backed presenced, against
//! the same through the memory store and against a no-op `EVALSHA` (a
//! script `return 1` with one key) that the bench itself sends to the same
//! Redis at the same concurrency: presenced CPU, redis-server CPU and round
//! trips to Redis per heartbeat, and throughput.
//!
//! The Redis-backed instance sweeps every room group four times a second
//! even when idle; that background is measured on its own first and taken
//! off redis-server's CPU in every phase (the raw figures are reported
//! too).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::ctx::{fmt_count, presence_clients, Ctx, Population};
use crate::load::{self, Call, Outcome};
use crate::phase::{Measured, Meter};
use crate::redis_server::{calls_between, RedisServer};
use crate::report::{Report, Row};
use crate::server::{connect_many, free_addr, metric, scrape, Target};
use crate::stats::{mib, round2};

struct Sizes {
    sessions: u64,
    max_ops: u64,
    max_time: Duration,
    /// How long the idle background is measured.
    idle: Duration,
}

const QUICK: Sizes = Sizes {
    sessions: 1_000,
    max_ops: 5_000,
    max_time: Duration::from_secs(2),
    idle: Duration::from_secs(1),
};

const FULL: Sizes = Sizes {
    sessions: 10_000,
    max_ops: 200_000,
    max_time: Duration::from_secs(8),
    idle: Duration::from_secs(3),
};

/// Calls in flight, as in the heartbeat scenario.
const CONCURRENCY: usize = 32;

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    ctx.needs_own_servers("redis-heartbeat")?;
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    let label = fmt_count(s.sessions);
    let pop = Population::new(ctx, "rhb", 11, s.sessions / 10, 600);

    // The memory store, measured before and after the Redis phases (their
    // mean is the baseline: the machine drifts).
    let mem = ctx.own_presenced("redis-heartbeat-memory", &[]).await?;
    let mem_clients = presence_clients(&connect_many(mem.addr, 4).await?);
    let made = pop.create(&mem_clients, 0, s.sessions).await;
    rep.check("redis-heartbeat: memory sessions created", made.errors == 0);
    let mem_phase = || async {
        let call = pop.heartbeat_call(&mem_clients, 0, s.sessions, true);
        let meter = Meter::of(&mem);
        let out = load::closed_loop(call, CONCURRENCY, s.max_ops, s.max_time, false).await;
        (out, meter.stop())
    };

    // Redis, and a presenced on it.
    let redis = RedisServer::start(ctx, "heartbeat").await?;
    let metrics_addr = free_addr().map_err(|e| e.to_string())?;
    let x = ctx
        .own_presenced(
            "redis-heartbeat",
            &[
                "--store",
                &redis.url(),
                "--metrics-listen",
                &metrics_addr.to_string(),
            ],
        )
        .await?;
    let clients = presence_clients(&connect_many(x.addr, 4).await?);
    let made = pop.create(&clients, 0, s.sessions).await;
    rep.check(
        format!(
            "redis-heartbeat: {} sessions created via Redis ({} errors)",
            s.sessions, made.errors
        ),
        made.errors == 0,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The idle background: presenced's sweeps, on both processes.
    let idle = Meter::start(&[x.pid, redis.pid]);
    tokio::time::sleep(s.idle).await;
    let idle = idle.stop();
    let idle_ns_per_s =
        |i: usize| idle.spent[i].map_or(0.0, |sp| sp.cpu_ns as f64 / idle.elapsed.as_secs_f64());
    let (x_idle, r_idle) = (idle_ns_per_s(0), idle_ns_per_s(1));

    let mem1 = mem_phase().await;
    let mut noop = Vec::new();
    noop.push(noop_phase(&redis, &x, s, &pop, None).await?);
    let hb = {
        let calls_before = redis.command_calls().await?;
        let metrics_before = scrape(metrics_addr).await?;
        let call = pop.heartbeat_call(&clients, 0, s.sessions, true);
        let meter = Meter::start(&[x.pid, redis.pid]);
        let out = load::closed_loop(call, CONCURRENCY, s.max_ops, s.max_time, false).await;
        let m = meter.stop();
        let calls = calls_between(&calls_before, &redis.command_calls().await?);
        let metrics_after = scrape(metrics_addr).await?;
        (out, m, calls, metrics_before, metrics_after)
    };
    noop.push(noop_phase(&redis, &x, s, &pop, None).await?);
    let (hb_out, hb_m, calls, mb, ma) = hb;
    // Redis's cost per call depends on how many arrive together: the
    // no-op again, at the rate the heartbeats reached (for context).
    let paced = noop_phase(&redis, &x, s, &pop, Some(hb_out.throughput())).await?;
    let mem2 = mem_phase().await;
    let (mut mem_row, mem_out) = {
        let (mut a, ma) = mem1;
        let (b, mb) = mem2;
        let each = [round2(a.throughput()), round2(b.throughput())];
        let cpu: u64 = [&ma, &mb]
            .iter()
            .filter_map(|m| m.first())
            .map(|s| s.cpu_ns)
            .sum();
        let elapsed = a.elapsed + b.elapsed;
        a.ok += b.ok;
        a.errors += b.errors;
        a.latency.extend(b.latency);
        a.elapsed = elapsed;
        let mut row = Row::new(
            "redis-heartbeat",
            format!(
                "Heartbeat, memory store, {label} sessions live (two runs around the Redis runs)"
            ),
        );
        row.ops = a.ok;
        row.throughput = Some(a.throughput());
        row.latency = Some(a.latency.summary());
        row.cpu_us_per_op = (a.ok > 0).then(|| cpu as f64 / a.ok as f64 / 1000.0);
        row.rss_mib = mb.first().map(|s| mib(s.rss_after));
        row.extra = json!({
            "concurrency": CONCURRENCY,
            "throughput_per_s_each_run": each,
            "load_core_busy_pct": mb.load_busy_pct,
        });
        (row, a)
    };
    rep.sane(&mem_row, Some(&mem_out));

    // redis-server CPU per call, net of the idle background.
    let net = |m: &Measured, i: usize, ops: u64| -> (Option<f64>, Option<f64>) {
        let Some(sp) = m.spent[i] else {
            return (None, None);
        };
        let raw = sp.cpu_ns as f64;
        let bg = if i == 0 { x_idle } else { r_idle } * m.elapsed.as_secs_f64();
        let per = |ns: f64| (ops > 0).then(|| ns / ops as f64 / 1000.0);
        (per(raw), per((raw - bg).max(0.0)))
    };
    let hb_ops = hb_out.ok;
    let (x_raw, _) = net(&hb_m, 0, hb_ops);
    let (r_raw, r_net) = net(&hb_m, 1, hb_ops);
    let mut noop_raw = Vec::new();
    let mut noop_net = Vec::new();
    let mut noop_rows = Vec::new();
    for (i, (out, m)) in noop.into_iter().enumerate() {
        let (raw, n) = net(&m, 1, out.ok);
        noop_raw.push((raw, out.ok));
        noop_net.push((n, out.ok));
        let mut row = Row::new(
            "redis-heartbeat",
            format!(
                "No-op EVALSHA (return 1, one key), {CONCURRENCY} in flight{}",
                if i == 0 { "" } else { " (again)" }
            ),
        );
        row.ops = out.ok;
        row.throughput = Some(out.throughput());
        row.latency = Some(out.latency.clone().summary());
        row.cpu_us_per_op = n;
        row.extra = json!({
            "cpu_is": "redis-server CPU per call, net of presenced's idle sweeps",
            "redis_cpu_us_per_call_raw": raw.map(round2),
            "load_core_busy_pct": m.load_busy_pct,
        });
        rep.sane(&row, Some(&out));
        noop_rows.push(row);
    }
    let mean = |v: &[(Option<f64>, u64)]| {
        let (sum, n) = v
            .iter()
            .filter_map(|(c, ops)| c.map(|c| (c * *ops as f64, *ops)))
            .fold((0.0, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
        (n > 0).then(|| sum / n as f64)
    };
    let (noop_net_mean, noop_raw_mean) = (mean(&noop_net), mean(&noop_raw));
    let (paced_raw, paced_net) = net(&paced.1, 1, paced.0.ok);
    {
        let (out, m) = &paced;
        let mut row = Row::new(
            "redis-heartbeat",
            format!(
                "No-op EVALSHA at the heartbeats' rate ({:.0}/s)",
                hb_out.throughput()
            ),
        );
        row.ops = out.ok;
        row.throughput = Some(out.throughput());
        row.latency = Some(out.latency.clone().summary());
        row.cpu_us_per_op = paced_net;
        row.extra = json!({
            "cpu_is": "redis-server CPU per call, net of presenced's idle sweeps",
            "redis_cpu_us_per_call_raw": paced_raw.map(round2),
            "note": "latency from the scheduled send time",
            "load_core_busy_pct": m.load_busy_pct,
        });
        rep.sane(&row, Some(out));
        noop_rows.push(row);
    }

    // Round trips per heartbeat: presenced's own count of its calls to
    // Redis, by operation, and Redis's count of commands.
    let per_hb = |n: f64| {
        if hb_ops > 0 {
            n / hb_ops as f64
        } else {
            f64::NAN
        }
    };
    let store_calls = |text: &str, op: &str| {
        metric(
            text,
            "presenced_store_call_duration_seconds_count",
            &[&format!("op=\"{op}\"")],
        )
    };
    let all_ops = [
        "heartbeat",
        "create",
        "claim",
        "user_index",
        "totals",
        "disconnect",
        "update",
        "remove",
        "read",
        "sweep",
    ];
    let by_op: HashMap<&str, f64> = all_ops
        .iter()
        .map(|op| (*op, store_calls(&ma, op) - store_calls(&mb, op)))
        .collect();
    let non_sweep: f64 = by_op
        .iter()
        .filter(|(op, _)| **op != "sweep")
        .map(|(_, n)| n)
        .sum();
    let evalsha = *calls.get("evalsha").unwrap_or(&0) as f64;
    let sweep_cmds =
        (*calls.get("zrangebyscore").unwrap_or(&0) + *calls.get("hmget").unwrap_or(&0)) as f64;
    let in_scripts: u64 = calls
        .iter()
        .filter(|(c, _)| {
            !matches!(
                c.as_str(),
                "evalsha" | "zrangebyscore" | "hmget" | "ping" | "client|setinfo" | "hello"
            )
        })
        .map(|(_, n)| n)
        .sum();
    let mut calls_sorted: Vec<(String, u64)> = calls.into_iter().collect();
    calls_sorted.sort();

    let mut row = Row::new(
        "redis-heartbeat",
        format!("Heartbeat via Redis, {label} sessions live"),
    );
    row.ops = hb_ops;
    row.throughput = Some(hb_out.throughput());
    row.latency = Some(hb_out.latency.clone().summary());
    row.cpu_us_per_op = x_raw;
    row.rss_mib = hb_m.spent[0].map(|s| mib(s.rss_after));
    row.baseline = Some((mem_row.case.clone(), mem_row.cpu_us_per_op));
    row.extra = json!({
        "cpu_is": "presenced CPU per heartbeat (baseline: the memory store's)",
        "redis_cpu_us_per_heartbeat": r_net.map(round2),
        "redis_cpu_us_per_heartbeat_raw": r_raw.map(round2),
        "idle_background_cpu_ms_per_s": {"presenced": round2(x_idle / 1e6), "redis": round2(r_idle / 1e6)},
        "store_calls_per_heartbeat": round2(per_hb(non_sweep)),
        "store_calls_by_op": by_op.iter().filter(|(_, n)| **n > 0.0).map(|(op, n)| (op.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "evalsha_per_heartbeat": round2(per_hb(evalsha)),
        "redis_commands_in_scripts_per_heartbeat": round2(per_hb(in_scripts as f64)),
        "sweep_commands_meanwhile": sweep_cmds,
        "commandstats": calls_sorted.iter().map(|(c, n)| (c.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "load_core_busy_pct": hb_m.load_busy_pct,
        "chart_label": "Heartbeat via Redis (vs memory store)",
    });
    rep.sane(&row, Some(&hb_out));
    let mut redis_row = Row::new(
        "redis-heartbeat",
        format!("redis-server CPU per live heartbeat vs no-op EVALSHA, {label} sessions"),
    );
    redis_row.ops = hb_ops;
    redis_row.cpu_us_per_op = r_net;
    redis_row.baseline = Some((noop_rows[0].case.clone(), noop_net_mean));
    redis_row.extra = json!({
        "cpu_is": "redis-server CPU per call, net of presenced's idle sweeps; baseline: the mean of the two no-op runs around the heartbeat run",
        "raw_us": r_raw.map(round2), "baseline_raw_us": noop_raw_mean.map(round2),
        "chart_label": "redis-server per heartbeat (vs no-op EVALSHA)",
    });
    rep.check(
        format!(
            "redis-heartbeat: one heartbeat script call per heartbeat ({:.3})",
            per_hb(by_op["heartbeat"])
        ),
        (per_hb(by_op["heartbeat"]) - 1.0).abs() < 0.01,
    );
    let ratio = redis_row.ratio();
    rep.goal(
        "Redis: redis-server CPU per live heartbeat",
        "≤ 2 × a no-op EVALSHA's",
        format!(
            "{:.2}× ({:.2} vs {:.2} µs, net of the idle sweeps' {:.1} ms/s; raw {:.2} vs {:.2} µs; the no-op at the heartbeats' rate: {:.2} µs); {:.2} round trips and {:.1} commands in scripts per heartbeat",
            ratio.unwrap_or(f64::NAN),
            r_net.unwrap_or(f64::NAN),
            noop_net_mean.unwrap_or(f64::NAN),
            r_idle / 1e6,
            r_raw.unwrap_or(f64::NAN),
            noop_raw_mean.unwrap_or(f64::NAN),
            paced_net.unwrap_or(f64::NAN),
            per_hb(non_sweep),
            per_hb(in_scripts as f64),
        ),
        ratio.map(|r| r <= 2.0),
    );
    let share = hb_out.throughput() / mem_out.throughput();
    rep.goal(
        "Redis: one instance's heartbeat throughput",
        "≥ 50 % of the memory store's",
        format!(
            "{:.0} % ({:.0}/s vs {:.0}/s, {CONCURRENCY} in flight; presenced CPU {:.1} vs {:.1} µs per heartbeat)",
            share * 100.0,
            hb_out.throughput(),
            mem_out.throughput(),
            x_raw.unwrap_or(f64::NAN),
            mem_row.cpu_us_per_op.unwrap_or(f64::NAN)
        ),
        Some(share >= 0.5),
    );
    mem_row.extra["note"] = json!("baseline of the presenced CPU and throughput via Redis");
    rep.rows.push(mem_row);
    rep.rows.push(row);
    rep.rows.extend(noop_rows);
    rep.rows.push(redis_row);
    drop(x);
    Ok(rep)
}

/// The no-op script, called by the bench on one multiplexed connection
/// (as presenced calls Redis), measuring presenced (idle) and Redis:
/// closed loop, or at `rate` per second (32 in flight at most).
async fn noop_phase(
    redis: &RedisServer,
    x: &Target,
    s: &Sizes,
    pop: &Population,
    rate: Option<f64>,
) -> Result<(Outcome, Measured), String> {
    let mut conn = redis.conn().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    // A key of the shape and length of a room's.
    let key = Arc::new(format!("{{presence:r17}}:h:{}", pop.room(0)));
    let sha = Arc::new(sha);
    let call: Call = Arc::new(move |_| {
        let (mut conn, sha, key) = (conn.clone(), sha.clone(), key.clone());
        Box::pin(async move {
            redis::cmd("EVALSHA")
                .arg(&*sha)
                .arg(1)
                .arg(&*key)
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| tonic::Status::internal(e.to_string()))
        })
    });
    let meter = Meter::start(&[x.pid, redis.pid]);
    let out = match rate {
        None => load::closed_loop(call, CONCURRENCY, s.max_ops * 4, s.max_time, false).await,
        Some(rate) => {
            let duration = s
                .max_time
                .min(Duration::from_secs_f64(s.max_ops as f64 / rate.max(1.0)));
            load::fixed_rate(call, rate, duration, CONCURRENCY as u64).await
        }
    };
    Ok((out, meter.stop()))
}
