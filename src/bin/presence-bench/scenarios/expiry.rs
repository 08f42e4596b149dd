//! N sessions reach their deadline together while other sessions keep
//! heartbeating: time from the deadline until every room shows 0 online,
//! and the others' heartbeat latency meanwhile against before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use serde_json::json;

use crate::ctx::{fmt_count, interval_ns, presence_clients, Ctx, Population};
use crate::load::{self, Call};
use crate::phase::Meter;
use crate::report::{Report, Row};
use crate::server::connect_many;
use crate::stats::{mib, round2, Samples};
use crate::watch::{open_streams, spawn_room_reader, RoomWatch, Tracker};

struct Sizes {
    /// Sessions that expire together, 1 000 per room.
    expiring: u64,
    /// Sessions that keep heartbeating meanwhile.
    others: u64,
    /// Time given to create the expiring sessions: their deadline is this
    /// long after the start.
    budget: Duration,
}

const QUICK: Sizes = Sizes {
    expiring: 5_000,
    others: 500,
    budget: Duration::from_secs(6),
};

const FULL: Sizes = Sizes {
    expiring: 100_000,
    others: 10_000,
    budget: Duration::from_secs(30),
};

/// The heartbeat interval that puts a deadline (now + 2.5 × interval) at
/// `due`, from `now` (ns), at least the 1 s minimum interval.
pub fn interval_for(due: u64, now: u64) -> u64 {
    (due.saturating_sub(now) * 2 / 5).max(1_000_000_000)
}

/// A room watcher's view of expiry: done when the room shows 0 online, and
/// then it must still list its `per_room` users, offline.
pub fn offline_watch(per_room: u32) -> RoomWatch {
    RoomWatch {
        progress: Arc::new(|s: &pb::RoomSnapshot| usize::from(s.online_count == 0)),
        verify: Some(Arc::new(move |s: &pb::RoomSnapshot| {
            if s.total_count == per_room && s.users.iter().all(|u| !u.online) {
                Ok(())
            } else {
                Err(format!(
                    "{} listed, {} online (expected {per_room}, all offline)",
                    s.total_count, s.online_count
                ))
            }
        })),
    }
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    let (n, others) = (s.expiring, s.others);
    let per_room = 1000u64.min(n);
    let rooms = n / per_room;
    let t = ctx.presenced("expiry", &[]).await?;
    let tracker = Tracker::new(rooms as usize, 1);
    let now = {
        let tracker = tracker.clone();
        move || tracker.ns_of(Instant::now())
    };
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
    let due = now() + s.budget.as_nanos() as u64;
    let pop = Population::new(ctx, "exp", 6, rooms, 2);
    let first_deadline_a = Arc::new(AtomicU64::new(u64::MAX));
    let last_deadline_a = Arc::new(AtomicU64::new(0));
    let (fs, ls) = (first_deadline_a.clone(), last_deadline_a.clone());
    let tokens: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; rooms as usize]));
    let tk = tokens.clone();
    let (pop2, clients2, now2) = (pop.clone(), clients.clone(), now.clone());
    let call: Call = Arc::new(move |i| {
        let (fs, ls, tk) = (fs.clone(), ls.clone(), tk.clone());
        let mut req = pop2.request(i);
        let mut c = clients2[i as usize % clients2.len()].clone();
        let at = now2();
        Box::pin(async move {
            let interval = interval_for(due, at);
            req.interval = interval_ns(interval);
            let deadline = at + interval * 5 / 2;
            fs.fetch_min(deadline, Ordering::AcqRel);
            ls.fetch_max(deadline, Ordering::AcqRel);
            let reply = c.heartbeat(req).await?.into_inner();
            let r = (i % rooms) as usize;
            let mut tk = tk.lock().unwrap_or_else(|e| e.into_inner());
            if tk[r].is_none() {
                tk[r] = Some(reply.room_token);
            }
            Ok(())
        })
    });
    let made = load::closed_loop(call, 256, n, s.budget, false).await;
    rep.check(
        format!("expiry: {n} sessions created ({} errors)", made.errors),
        made.errors == 0 && made.ok == n,
    );
    rep.notes.push(format!(
        "expiry: {n} sessions created in {:.1} s, all asking for a deadline {:.0} s after the start",
        made.elapsed.as_secs_f64(),
        s.budget.as_secs_f64()
    ));
    let first_deadline = first_deadline_a.load(Ordering::Acquire);
    let last_deadline = last_deadline_a.load(Ordering::Acquire);
    let spread_ms = (last_deadline - first_deadline) as f64 / 1e6;
    // One watcher per room, on one connection: when does each room show 0?
    let wchan = connect_many(t.addr, 1).await?;
    let wclient = presence_clients(&wchan).remove(0);
    let tokens: Vec<String> = tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|t| t.clone().unwrap_or_default())
        .collect();
    let open = |r: usize| {
        let mut c = wclient.clone();
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
    .map_err(|e| format!("expiry: {e}"))?;
    // Background heartbeats until every room is offline (bounded).
    let stop_at =
        Duration::from_nanos(last_deadline.saturating_sub(now())) + Duration::from_secs(5);
    let hb = live.heartbeat_call(&clients, 0, others, true);
    let meter = Meter::of(&t);
    let bg = tokio::spawn(load::closed_loop(hb, 8, u64::MAX, stop_at, true));
    tracker.wait_step(0, stop_at + Duration::from_secs(5)).await;
    let all_offline = tracker.last_ns(0);
    let spent = meter.stop().first();
    let bg = bg.await.map_err(|e| e.to_string())?;
    let lateness_ms = all_offline as f64 / 1e6 - last_deadline as f64 / 1e6;
    let offline = tracker.count(0);
    let mut during = Samples::default();
    let mut calm = Samples::default();
    for (sent, d) in &bg.timeline {
        let at = tracker.ns_of(*sent);
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
        "lateness_note": "upper bound: deadlines are taken from send times, and a room's last snapshot may wait for its coalescing window",
    });
    rep.sane(&row, Some(&bg));
    rep.check("expiry: every room went offline", offline == rooms as u32);
    tracker.check_streams(&mut rep, "expiry");
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
