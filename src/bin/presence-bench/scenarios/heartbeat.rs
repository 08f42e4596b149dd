//! Heartbeats of live sessions against Health/Check on the same server, at
//! a small and at a large number of live sessions, closed loop and at a
//! fixed rate.

use std::time::Duration;

use serde_json::json;

use crate::ctx::{fmt_count, health_call, presence_clients, Ctx, Population};
use crate::phase::{measured_closed, measured_rate, Closed};
use crate::report::Report;
use crate::server::connect_many;

struct Sizes {
    /// Live sessions of the first and the second measurement.
    small: u64,
    large: u64,
    /// Bounds of each closed-loop phase.
    max_ops: u64,
    max_time: Duration,
    /// The fixed-rate phase.
    rate: f64,
    rate_time: Duration,
}

const QUICK: Sizes = Sizes {
    small: 1_000,
    large: 10_000,
    max_ops: 20_000,
    max_time: Duration::from_secs(2),
    rate: 1_000.0,
    rate_time: Duration::from_secs(1),
};

const FULL: Sizes = Sizes {
    small: 10_000,
    large: 1_000_000,
    max_ops: 300_000,
    max_time: Duration::from_secs(8),
    rate: 5_000.0,
    rate_time: Duration::from_secs(4),
};

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    let t = ctx.presenced("heartbeat", &[]).await?;
    let closed = Closed {
        concurrency: 32,
        max_ops: s.max_ops,
        max_time: s.max_time,
    };
    let channels = connect_many(t.addr, 4).await?;
    let clients = presence_clients(&channels);
    let pop = Population::new(ctx, "hb", 1, s.small / 10, 600);
    let created = pop.create(&clients, 0, s.small).await;
    rep.check(
        format!(
            "heartbeat: {} sessions created ({} errors)",
            s.small, created.errors
        ),
        created.errors == 0,
    );
    let health = health_call(&channels, "");

    let mut ratios = Vec::new();
    for n in [s.small, s.large] {
        let label = fmt_count(n);
        if n == s.large {
            let more = pop.create(&clients, s.small, s.large).await;
            rep.check(
                format!("heartbeat: grown to {n} sessions ({} errors)", more.errors),
                more.errors == 0,
            );
            rep.notes.push(format!(
                "heartbeat: created {} sessions at {:.0}/s",
                s.large - s.small,
                more.throughput()
            ));
        }
        // Health, heartbeat, health: the baseline is the mean of the two
        // health runs around the heartbeat run (drift on a shared machine).
        let (mut h1, o1) = measured_closed(
            &t,
            "heartbeat",
            format!("Health/Check, {label} sessions live"),
            health.clone(),
            closed,
        )
        .await;
        let hb = pop.heartbeat_call(&clients, 0, n, true);
        let (mut row, o) = measured_closed(
            &t,
            "heartbeat",
            format!("Heartbeat, {label} sessions live"),
            hb,
            closed,
        )
        .await;
        let (h2, o2) = measured_closed(
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
        if n == s.small {
            let (mut hr, ho) = measured_rate(
                &t,
                "heartbeat",
                format!("Health/Check at {:.0}/s", s.rate),
                health.clone(),
                s.rate,
                s.rate_time,
            )
            .await;
            let hb = pop.heartbeat_call(&clients, 0, n, true);
            let (mut r, o) = measured_rate(
                &t,
                "heartbeat",
                format!("Heartbeat at {:.0}/s, {label} sessions", s.rate),
                hb,
                s.rate,
                s.rate_time,
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
