//! Coalescing windows: a room whose listing changes every 30–40 ms
//! (randomised), W watchers; time from each change's reply until the last
//! watcher has it, with adaptive windows (the default) and with the fixed
//! window (`--coalescing fixed`) in the same run. Between two changes a
//! plain heartbeat of a live session, which no watcher may see.
//!
//! The room has ten users online; a change is new data of one of them (a
//! typing indicator with a counter, as a cursor or typing update would
//! be), so the listing keeps its size over the run and the figures show
//! the window, not a growing snapshot. The fan-out scenario measures joins
//! and leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use prost_types::value::Kind;
use serde_json::json;
use tonic::transport::Channel;

use crate::ctx::{fmt_count, interval, presence_clients, Ctx, Rng};
use crate::phase::Meter;
use crate::report::{Report, Row};
use crate::server::connect_many;
use crate::stats::{mib, round2, Samples};
use crate::watch::{
    expect_quiet, open_streams, spawn_room_reader, Progress, RoomWatch, Tracker, Verify,
};

struct Sizes {
    watchers: &'static [usize],
    changes: usize,
}

const QUICK: Sizes = Sizes {
    watchers: &[100, 1000],
    changes: 20,
};

const FULL: Sizes = Sizes {
    watchers: &[100, 1000],
    changes: 300,
};

/// Time between two changes: uniform in this range.
const EVERY: (Duration, Duration) = (Duration::from_millis(30), Duration::from_millis(40));

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    ctx.needs_own_servers("coalescing")?;
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    for (i, &w) in s.watchers.iter().enumerate() {
        let fixed = case(ctx, &mut rep, w, s.changes, "fixed", 2 * i as u64).await?;
        let mut adaptive = case(ctx, &mut rep, w, s.changes, "adaptive", 2 * i as u64 + 1).await?;
        adaptive.baseline = Some((fixed.case.clone(), fixed.cpu_us_per_op));
        adaptive.extra["baseline_latency"] = json!(fixed.latency.map(|l| l.json()));
        adaptive.extra["chart"] = json!("latency");
        adaptive.extra["chart_label"] = json!(format!(
            "changes every 30–40 ms, {} watchers (vs fixed)",
            fmt_count(w as u64)
        ));
        let (a, f) = (
            adaptive.latency.unwrap_or_default(),
            fixed.latency.unwrap_or_default(),
        );
        let limit_ms = if w <= 100 { 2.0 } else { 10.0 };
        let ms = |v: Option<f64>| v.unwrap_or(f64::NAN) / 1000.0;
        rep.goal(
            &format!("coalescing latency, {} watchers", fmt_count(w as u64)),
            &format!("p50 ≤ {limit_ms} ms to the last watcher, a change every 30–40 ms"),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms (fixed {} window: p50 {:.2} ms, p99 {:.2} ms); CPU per change {:.2}× the fixed window's",
                ms(a.p50_us),
                ms(a.p99_us),
                humantime::format_duration(ctx.snapshot_interval),
                ms(f.p50_us),
                ms(f.p99_us),
                adaptive.ratio().unwrap_or(f64::NAN)
            ),
            a.p50_us.map(|p| p / 1000.0 <= limit_ms),
        );
        rep.rows.push(fixed);
        rep.rows.push(adaptive);
    }
    Ok(rep)
}

/// One room of `w` watchers and `changes` changes on a fresh presenced
/// with `--coalescing mode`.
async fn case(
    ctx: &Ctx,
    rep: &mut Report,
    w: usize,
    changes: usize,
    mode: &str,
    scope: u64,
) -> Result<Row, String> {
    let name = format!("coalescing {w} ({mode})");
    let t = ctx
        .own_presenced(&format!("coalescing-{w}-{mode}"), &["--coalescing", mode])
        .await?;
    let channels = connect_many(t.addr, w.div_ceil(ctx.watchers_per_conn)).await?;
    let clients = presence_clients(&channels);
    let driver = presence_clients(&connect_many(t.addr, 1).await?).remove(0);
    let churn = Typing::new(ctx, driver, ctx.room("coalescing", scope), 1000 + scope).await?;
    let tracker = Tracker::new(w, changes);
    let per = ctx.watchers_per_conn;
    let open = |i: usize| {
        let mut c = clients[i / per].clone();
        let room_token = churn.room_token.clone();
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
        progress: Typing::progress(),
        verify: Some(Typing::expected(changes)),
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

    // The same schedule for both modes at one size.
    let mut rng = Rng::new(ctx.run.as_u64_pair().1 ^ w as u64);
    let mut acked = Vec::with_capacity(changes);
    let meter = Meter::of(&t);
    let messages_before = tracker.messages();
    let mut at = Instant::now();
    for k in 0..changes {
        tokio::time::sleep_until(at.into()).await;
        acked.push(tracker.ns_of(churn.change(k).await.map_err(|e| format!("{name}: {e}"))?));
        let gap = rng.between(EVERY.0, EVERY.1);
        // Half way to the next change, a heartbeat that changes nothing.
        tokio::time::sleep_until((at + gap / 2).into()).await;
        churn.plain_heartbeat().await?;
        at += gap;
    }
    let converged = tracker
        .wait_step(changes - 1, Duration::from_secs(10))
        .await;
    let m = meter.stop();
    let deliveries = tracker.messages() - messages_before;
    expect_quiet(
        &tracker,
        ctx.snapshot_interval + Duration::from_millis(20),
        || churn.plain_heartbeat(),
    )
    .await?;
    let mut latency = Samples::with_capacity(changes);
    let mut complete = 0;
    for (k, ack) in acked.iter().enumerate() {
        if tracker.count(k) as usize == w {
            complete += 1;
            latency.record(Duration::from_nanos(
                tracker.last_ns(k).saturating_sub(*ack),
            ));
        }
    }
    rep.check(
        format!("{name}: every watcher got every change ({complete} of {changes})"),
        converged && complete == changes,
    );
    tracker.check_streams(rep, &name);
    let spent = m.first();
    let mut row = Row::new(
        "coalescing",
        format!(
            "WatchRoom, {} watchers, a change every 30–40 ms, {mode} window",
            fmt_count(w as u64)
        ),
    );
    row.ops = changes as u64;
    row.throughput = Some(changes as f64 / m.elapsed.as_secs_f64());
    row.latency = Some(latency.summary());
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(changes as u64));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    row.extra = json!({
        "coalescing": mode,
        "change_is": "new data of one of 10 online users (UpdateRoomUser)",
        "watchers": w,
        "changes": changes,
        "snapshots_delivered": deliveries,
        "snapshots_per_watcher_per_change": round2(deliveries as f64 / (w * changes) as f64),
        "cpu_us_per_delivery": spent.and_then(|s| s.per_op_us(deliveries)).map(round2),
        "cpu_is": "server CPU per change, its deliveries and one plain heartbeat included",
        "latency_is": "from the change's reply to the last watcher's receipt",
        "load_core_busy_pct": m.load_busy_pct,
        "server": spent.map(|s| s.json()),
    });
    rep.sane(&row, None);
    Ok(row)
}

/// A room of [`Typing::USERS`] users online, one of whom (the typist)
/// gets new data (`{"n": k + 1}`) at change k.
struct Typing {
    room: String,
    room_token: String,
    driver: PresenceServiceClient<Channel>,
    base: pb::HeartbeatRequest,
}

impl Typing {
    const USERS: usize = 10;
    const TYPIST: &'static str = "typist";

    /// The users in the order they come online: the base user, the typist,
    /// then the others.
    fn users() -> Vec<String> {
        let mut users = vec!["base".to_string(), Self::TYPIST.to_string()];
        users.extend((2..Self::USERS).map(|i| format!("user-{i}")));
        users
    }

    async fn new(
        ctx: &Ctx,
        mut driver: PresenceServiceClient<Channel>,
        room: String,
        scope: u64,
    ) -> Result<Typing, String> {
        let mut requests = Vec::new();
        for (i, user) in Self::users().into_iter().enumerate() {
            requests.push(pb::HeartbeatRequest {
                room_id: room.clone(),
                user_id: user,
                session_id: ctx.session(scope, i as u64),
                interval: interval(600),
            });
        }
        let mut room_token = String::new();
        for req in &requests {
            room_token = driver
                .heartbeat(req.clone())
                .await
                .map_err(|e| format!("coalescing: join: {e}"))?
                .into_inner()
                .room_token;
        }
        Ok(Typing {
            room,
            room_token,
            driver,
            base: requests.swap_remove(0),
        })
    }

    /// Change `k`; returns when its reply arrived.
    async fn change(&self, k: usize) -> Result<Instant, String> {
        let data = prost_types::Struct {
            fields: [(
                "n".to_string(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue((k + 1) as f64)),
                },
            )]
            .into(),
        };
        self.driver
            .clone()
            .update_room_user(pb::UpdateRoomUserRequest {
                room_id: self.room.clone(),
                user_id: Self::TYPIST.into(),
                data: Some(data),
            })
            .await
            .map_err(|e| format!("UpdateRoomUser: {e}"))?;
        Ok(Instant::now())
    }

    /// A heartbeat of the base user's live session.
    async fn plain_heartbeat(&self) -> Result<(), String> {
        self.driver
            .clone()
            .heartbeat(self.base.clone())
            .await
            .map(|_| ())
            .map_err(|e| format!("plain heartbeat: {e}"))
    }

    /// The typist's counter: the changes a snapshot shows.
    fn counter(s: &pb::RoomSnapshot) -> usize {
        s.users
            .iter()
            .find(|u| u.user_id == Self::TYPIST)
            .and_then(|u| u.data.as_ref()?.fields.get("n")?.kind.clone())
            .map_or(0, |k| match k {
                Kind::NumberValue(n) => n as usize,
                _ => 0,
            })
    }

    fn progress() -> Progress {
        Arc::new(Self::counter)
    }

    /// Every user online in arrival order, the typist's counter at
    /// `changes`.
    fn expected(changes: usize) -> Verify {
        let want = Self::users();
        Arc::new(move |s: &pb::RoomSnapshot| {
            let got: Vec<&str> = s.users.iter().map(|u| u.user_id.as_str()).collect();
            let all = Self::USERS as u32;
            if s.online_count != all || s.total_count != all || !s.users.iter().all(|u| u.online) {
                return Err(format!(
                    "{} online of {} (expected {all} of {all})",
                    s.online_count, s.total_count
                ));
            }
            if got != want {
                return Err(format!("listing {got:?} (expected {want:?})"));
            }
            match Self::counter(s) {
                n if n == changes => Ok(()),
                n => Err(format!("the typist's counter is {n}, not {changes}")),
            }
        })
    }
}
