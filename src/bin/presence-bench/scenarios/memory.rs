//! RSS per idle session (joining an existing room, one user each: the
//! worst case), per new room with its first session, the total at 1 M
//! sessions in 100 k rooms, and per idle watch stream (many per
//! connection) on a fresh server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::ctx::{fmt_count, presence_clients, Ctx, Population};
use crate::report::{Report, Row};
use crate::server::{connect_many, Target};
use crate::stats::{mib, round2};

struct Sizes {
    sessions: u64,
    rooms: u64,
    /// Idle watch streams, on a fresh server.
    streams: usize,
}

const QUICK: Sizes = Sizes {
    sessions: 20_000,
    rooms: 2_000,
    streams: 1_000,
};

const FULL: Sizes = Sizes {
    sessions: 1_000_000,
    rooms: 100_000,
    streams: 10_000,
};

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

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = ctx.sizes(&QUICK, &FULL);
    let (total, rooms_total, streams) = (s.sessions, s.rooms, s.streams);
    let mut rep = Report::default();
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
