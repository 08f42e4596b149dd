//! Mass expiry with three instances: N sessions spread over rooms, all due
//! at one instant, three presenced sweeping one Redis: time from that
//! deadline until every room shows 0 online (one watcher per room, spread
//! over the instances), and whether the instances' counts of the sessions
//! they expired add up to exactly N (each ends once).
//!
//! The sessions are first created (interval 600 s) at whatever rate Redis
//! allows, round robin over the instances; that rate sets how far out the
//! shared deadline is put, and a second heartbeat of each live session
//! asks for the interval that puts its deadline there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use serde_json::json;

use crate::ctx::{fmt_count, interval_ns, presence_clients, Ctx, Population};
use crate::load::{self, Call};
use crate::phase::Meter;
use crate::redis_server::{calls_between, RedisServer};
use crate::report::{Report, Row};
use crate::scenarios::expiry::{interval_for, offline_watch};
use crate::server::{connect_many, free_addr, metric, scrape};
use crate::stats::round2;
use crate::watch::{open_streams, spawn_room_reader, Tracker};

/// `sessions` is a multiple of `rooms`: every room holds as many.
struct Sizes {
    sessions: u64,
    rooms: u64,
}

const QUICK: Sizes = Sizes {
    sessions: 2_000,
    rooms: 20,
};

const FULL: Sizes = Sizes {
    sessions: 100_000,
    rooms: 1_000,
};

const INSTANCES: usize = 3;

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    ctx.needs_own_servers("redis-expiry")?;
    let s = ctx.sizes(&QUICK, &FULL);
    let (n, rooms) = (s.sessions, s.rooms);
    let per_room = n / rooms;
    debug_assert_eq!(n % rooms, 0, "every room holds as many sessions");
    let mut rep = Report::default();
    let redis = RedisServer::start(ctx, "expiry").await?;
    let mut instances = Vec::new();
    let mut metrics = Vec::new();
    for i in 0..INSTANCES {
        let m = free_addr().map_err(|e| e.to_string())?;
        let url = redis.url();
        let flags = ["--store", &url, "--metrics-listen", &m.to_string()];
        instances.push(
            ctx.own_presenced(&format!("redis-expiry-{i}"), &flags)
                .await?,
        );
        metrics.push(m);
    }
    // Two connections per instance, round robin: call i goes to instance
    // i % 3.
    let mut clients = Vec::new();
    for _ in 0..2 {
        for t in &instances {
            clients.extend(presence_clients(&connect_many(t.addr, 1).await?));
        }
    }
    let tracker = Tracker::new(rooms as usize, 1);
    let now = {
        let tracker = tracker.clone();
        move || tracker.ns_of(Instant::now())
    };
    let pop = Population::new(ctx, "rexp", 13, rooms, 600);
    let tokens: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; rooms as usize]));
    let (tk, pop2, clients2) = (tokens.clone(), pop.clone(), clients.clone());
    let create: Call = Arc::new(move |i| {
        let tk = tk.clone();
        let req = pop2.request(i);
        let mut c = clients2[i as usize % clients2.len()].clone();
        Box::pin(async move {
            let reply = c.heartbeat(req).await?.into_inner();
            let r = (i % rooms) as usize;
            let mut tk = tk.lock().unwrap_or_else(|e| e.into_inner());
            if tk[r].is_none() {
                tk[r] = Some(reply.room_token);
            }
            Ok(())
        })
    });
    let made = load::closed_loop(create, 256, n, Duration::from_secs(600), false).await;
    rep.check(
        format!(
            "redis-expiry: {n} sessions created over {INSTANCES} instances ({} errors)",
            made.errors
        ),
        made.errors == 0 && made.ok == n,
    );
    // Watchers: room r on instance r % 3, one connection each.
    let mut wclients = Vec::new();
    for t in &instances {
        wclients.extend(presence_clients(&connect_many(t.addr, 1).await?));
    }
    let tokens: Vec<String> = tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|t| t.clone().unwrap_or_default())
        .collect();
    let open = |r: usize| {
        let mut c = wclients[r % wclients.len()].clone();
        let room_token = tokens[r].clone();
        async move {
            c.watch_room(pb::WatchRoomRequest {
                room_token,
                limit: 1,
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let spec = offline_watch(per_room as u32);
    open_streams(
        &tracker,
        rooms as usize,
        open,
        Arc::new(move |s, t| spawn_room_reader(s, t, spec.clone())),
    )
    .await
    .map_err(|e| format!("redis-expiry: {e}"))?;

    // The shared deadline: far enough out for a second heartbeat of every
    // session at the creation rate (a live heartbeat is cheaper), and at
    // least the 2.5 s of the 1 s minimum interval.
    let rate = made.throughput().max(100.0);
    let lead = Duration::from_secs_f64(n as f64 / rate * 1.5 + 3.0);
    let due = now() + lead.as_nanos() as u64;
    let first_a = Arc::new(AtomicU64::new(u64::MAX));
    let last_a = Arc::new(AtomicU64::new(0));
    let (fs, ls, pop2, clients2, now2) = (
        first_a.clone(),
        last_a.clone(),
        pop.clone(),
        clients.clone(),
        now.clone(),
    );
    let renew: Call = Arc::new(move |i| {
        let (fs, ls) = (fs.clone(), ls.clone());
        let mut req = pop2.request(i);
        let mut c = clients2[i as usize % clients2.len()].clone();
        let at = now2();
        Box::pin(async move {
            let interval = interval_for(due, at);
            req.interval = interval_ns(interval);
            let deadline = at + interval * 5 / 2;
            fs.fetch_min(deadline, Ordering::AcqRel);
            ls.fetch_max(deadline, Ordering::AcqRel);
            c.heartbeat(req).await.map(|_| ())
        })
    });
    let renewed = load::closed_loop(renew, 256, n, lead, false).await;
    let (first_deadline, last_deadline) = (
        first_a.load(Ordering::Acquire),
        last_a.load(Ordering::Acquire),
    );
    rep.check(
        format!(
            "redis-expiry: every session given the shared deadline before it ({} of {n}, {} errors)",
            renewed.ok, renewed.errors
        ),
        renewed.ok == n && renewed.errors == 0 && now() < first_deadline,
    );
    rep.notes.push(format!(
        "redis-expiry: {n} sessions created at {rate:.0}/s; deadline {:.1} s after the second heartbeats began, which took {:.1} s",
        lead.as_secs_f64(),
        renewed.elapsed.as_secs_f64()
    ));
    let pids: Vec<Option<u32>> = instances.iter().map(|t| t.pid).chain([redis.pid]).collect();
    let usec_before = redis.command_usec().await?;
    let meter = Meter::start(&pids);
    // Until every room shows 0 online and the instances' counts of the
    // sessions they expired add up (each counts a session when the room
    // script that ended it replies), bounded.
    let give_up = Instant::now()
        + Duration::from_nanos(last_deadline.saturating_sub(now()))
        + Duration::from_secs(60);
    let (mut half, mut most, mut counted) = (None, None, None);
    let mut expired = vec![0u64; INSTANCES];
    // Scrapes that found an instance's store down (a call past
    // --store-timeout turns it NOT_SERVING).
    let mut down = vec![0u32; INSTANCES];
    let mut scraped = Instant::now() - Duration::from_secs(1);
    loop {
        let (c, t) = (u64::from(tracker.count(0)), now());
        if half.is_none() && c * 2 >= rooms {
            half = Some(t);
        }
        if most.is_none() && c * 10 >= rooms * 9 {
            most = Some(t);
        }
        if scraped.elapsed() >= Duration::from_millis(250) && t >= first_deadline {
            scraped = Instant::now();
            for (i, addr) in metrics.iter().enumerate() {
                let text = scrape(*addr).await?;
                expired[i] = metric(
                    &text,
                    "presenced_sessions_ended_total",
                    &["reason=\"expired\""],
                ) as u64;
                if metric(&text, "presenced_store_up", &[]) < 1.0 {
                    down[i] += 1;
                }
            }
            if counted.is_none() && expired.iter().sum::<u64>() >= n {
                counted = Some(now());
            }
        }
        if (c == rooms && counted.is_some()) || Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_offline = tracker.last_ns(0);
    let m = meter.stop();
    let usec = calls_between(&usec_before, &redis.command_usec().await?);
    let script_s = *usec.get("evalsha").unwrap_or(&0) as f64 / 1e6;
    let after_ms = |t: Option<u64>| t.map(|t| round2((t as f64 - last_deadline as f64) / 1e6));
    let expired_sum: u64 = expired.iter().sum();
    let offline = tracker.count(0);
    let lateness_ms = (all_offline as f64 - last_deadline as f64) / 1e6;
    let spread_ms = (last_deadline - first_deadline) as f64 / 1e6;
    let cpu_per_session = |range: std::ops::Range<usize>| {
        let ns: u64 = m.spent[range].iter().flatten().map(|s| s.cpu_ns).sum();
        round2(ns as f64 / n as f64 / 1000.0)
    };
    let mut row = Row::new(
        "redis-expiry",
        format!(
            "{} sessions in {} rooms due at once, {INSTANCES} instances sweep one Redis",
            fmt_count(n),
            fmt_count(rooms)
        ),
    );
    row.ops = n;
    row.extra = json!({
        "all_offline_after_last_deadline_ms": round2(lateness_ms),
        "deadline_spread_ms": round2(spread_ms),
        "rooms_offline": offline, "rooms": rooms,
        "half_the_rooms_offline_after_ms": after_ms(half),
        "nine_tenths_offline_after_ms": after_ms(most),
        "all_sessions_ended_after_ms": after_ms(counted),
        "ended_is": "the instances' sessions_ended_total{reason=\"expired\"} adding up to every session: each counts a session when the room script that ended it replies (its claim, user index and totals are released after the sweep pass)",
        "redis_script_seconds": round2(script_s),
        "redis_script_note": "time Redis spent executing scripts (INFO commandstats, evalsha usec) from the deadline until all rooms were offline and every session counted, or the bound",
        "scrapes_with_store_down": down,
        "expired_by_instance": expired,
        "expired_sum": expired_sum,
        "presenced_cpu_us_per_expired_session": cpu_per_session(0..INSTANCES),
        "redis_cpu_us_per_expired_session": cpu_per_session(INSTANCES..INSTANCES + 1),
        "lateness_note": "upper bound: deadlines are taken from send times; sweeps run every 250 ms on each instance",
    });
    rep.check(
        "redis-expiry: every room went offline",
        offline == rooms as u32,
    );
    rep.check(
        format!(
            "redis-expiry: every instance kept its store up (scrapes that found it down: {down:?})"
        ),
        down.iter().all(|d| *d == 0),
    );
    rep.check(
        format!(
            "redis-expiry: the instances' expired counts {expired:?} add up to {n} ({expired_sum})"
        ),
        expired_sum == n,
    );
    tracker.check_streams(&mut rep, "redis-expiry");
    rep.goal(
        "Redis: mass expiry, three instances",
        "every room 0 online within 2 s of the deadline",
        format!(
            "{lateness_ms:.0} ms after the last deadline ({} of {rooms} rooms; half of them by {:.0} ms, 90 % by {:.0} ms, polled; deadlines spread over {spread_ms:.0} ms); expired {} = {expired_sum} of {n}, all counted {}; Redis ran scripts for {script_s:.1} s meanwhile",
            offline,
            after_ms(half).unwrap_or(f64::NAN),
            after_ms(most).unwrap_or(f64::NAN),
            expired.iter().map(u64::to_string).collect::<Vec<_>>().join(" + "),
            after_ms(counted).map_or("not within 60 s".to_string(), |t| format!("{t:.0} ms after the deadline"))
        ),
        Some(offline == rooms as u32 && lateness_ms <= 2000.0),
    );
    rep.rows.push(row);
    Ok(rep)
}
