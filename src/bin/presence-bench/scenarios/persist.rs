//! Persist stall: heartbeat latency at a fixed rate (from the scheduled
//! send time, so a stall shows in full) on a memory store holding N
//! sessions while it writes its state to `--data-dir` every second,
//! against the same server without `--data-dir`, in the same run. The
//! longest stall is the slowest heartbeat.

use std::time::Duration;

use serde_json::json;

use crate::ctx::{fmt_count, presence_clients, Ctx, Population};
use crate::phase::measured_rate;
use crate::report::{Report, Row};
use crate::server::{connect_many, free_addr, metric, scrape};

struct Sizes {
    sessions: u64,
    rooms: u64,
    rate: f64,
    duration: Duration,
}

const QUICK: Sizes = Sizes {
    sessions: 10_000,
    rooms: 1_000,
    rate: 1_000.0,
    duration: Duration::from_secs(2),
};

const FULL: Sizes = Sizes {
    sessions: 1_000_000,
    rooms: 100_000,
    rate: 5_000.0,
    duration: Duration::from_secs(10),
};

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    ctx.needs_own_servers("persist")?;
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    let dir = ctx.scratch("persist");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let label = fmt_count(s.sessions);
    let pop = Population::new(ctx, "persist", 14, s.rooms, 600);
    let mut rows: Vec<Row> = Vec::new();
    let mut writes = 0.0;
    for persisting in [false, true] {
        let metrics = free_addr().map_err(|e| e.to_string())?;
        let m = metrics.to_string();
        let d = dir.to_string_lossy().to_string();
        let mut flags = vec!["--metrics-listen", &m];
        if persisting {
            flags.extend(["--data-dir", &d, "--persist-interval", "1s"]);
        }
        let name = if persisting {
            "persist"
        } else {
            "persist-none"
        };
        let t = ctx.own_presenced(name, &flags).await?;
        let clients = presence_clients(&connect_many(t.addr, 4).await?);
        let made = pop.create(&clients, 0, s.sessions).await;
        rep.check(
            format!(
                "persist: {} sessions created ({name}, {} errors)",
                s.sessions, made.errors
            ),
            made.errors == 0,
        );
        let writes_of =
            |text: &str| metric(text, "presenced_persist_writes_total", &["result=\"ok\""]);
        let before = writes_of(&scrape(metrics).await?);
        let call = pop.heartbeat_call(&clients, 0, s.sessions, true);
        let case = if persisting {
            format!(
                "Heartbeat at {:.0}/s, {label} sessions, state written every 1 s",
                s.rate
            )
        } else {
            format!(
                "Heartbeat at {:.0}/s, {label} sessions, no --data-dir",
                s.rate
            )
        };
        let (mut row, out) = measured_rate(&t, "persist", case, call, s.rate, s.duration).await;
        let after = writes_of(&scrape(metrics).await?);
        if persisting {
            writes = after - before;
            let size = std::fs::metadata(dir.join("presence-state.json")).map_or(0, |m| m.len());
            row.extra["state_writes"] = json!(writes);
            row.extra["state_file_mib"] = json!(crate::stats::round2(crate::stats::mib(size)));
        }
        row.extra["max_latency_us"] = json!(row.latency.and_then(|l| l.max_us));
        row.extra["note"] =
            json!("latency from the scheduled send time; server CPU includes the state writes");
        rep.sane(&row, Some(&out));
        rows.push(row);
        // The state written at shutdown takes a while at 1 M sessions.
        drop(t);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let [base, mut with] = <[Row; 2]>::try_from(rows).map_err(|_| "persist: two rows")?;
    with.baseline = Some((base.case.clone(), base.cpu_us_per_op));
    with.extra["chart_label"] = json!(format!("Heartbeat, {label}, state written each 1 s"));
    rep.check(
        format!("persist: the state was written during the phase ({writes} writes)"),
        writes >= 1.0,
    );
    let (l, b) = (
        with.latency.unwrap_or_default(),
        base.latency.unwrap_or_default(),
    );
    let ms = |v: Option<f64>| v.unwrap_or(f64::NAN) / 1000.0;
    rep.goal(
        &format!("persist stall at {label} sessions"),
        "report the longest stall (no target)",
        format!(
            "longest {:.1} ms, p99 {:.2} ms, p99.9 {:.2} ms with {writes} state writes in {:.0} s (without --data-dir: longest {:.1} ms, p99 {:.2} ms)",
            ms(l.max_us),
            ms(l.p99_us),
            ms(l.p999_us),
            s.duration.as_secs_f64(),
            ms(b.max_us),
            ms(b.p99_us)
        ),
        None,
    );
    rep.rows.push(base);
    rep.rows.push(with);
    Ok(rep)
}
