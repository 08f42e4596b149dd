//! Load phases measured on the servers: what each server process spent
//! (CPU, RSS) while the phase ran, how busy the load core was, and the
//! closed-loop and fixed-rate phases as report rows.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::load::{self, Call, Outcome};
use crate::report::Row;
use crate::server::Target;
use crate::stats::{mib, round2, Spent, Usage};

/// Measures processes from `start` to `stop`.
pub struct Meter {
    pids: Vec<Option<u32>>,
    before: Vec<Option<Usage>>,
    load_before: Option<u64>,
    started: Instant,
}

/// What a [`Meter`] measured.
pub struct Measured {
    /// Per process, in the order given to [`Meter::start`].
    pub spent: Vec<Option<Spent>>,
    /// How busy the load generator's core was, percent.
    pub load_busy_pct: Option<f64>,
    pub elapsed: Duration,
}

impl Meter {
    pub fn start(pids: &[Option<u32>]) -> Meter {
        Meter {
            pids: pids.to_vec(),
            before: pids.iter().map(|p| p.and_then(Usage::read)).collect(),
            load_before: load_cpu_ns(),
            started: Instant::now(),
        }
    }

    /// A meter of one server.
    pub fn of(t: &Target) -> Meter {
        Meter::start(&[t.pid])
    }

    pub fn stop(self) -> Measured {
        let elapsed = self.started.elapsed();
        let spent = self
            .pids
            .iter()
            .zip(self.before)
            .map(|(pid, before)| Spent::between(before, pid.and_then(Usage::read)))
            .collect();
        Measured {
            spent,
            load_busy_pct: busy_pct(self.load_before, elapsed),
            elapsed,
        }
    }
}

impl Measured {
    /// The first process's figures.
    pub fn first(&self) -> Option<Spent> {
        self.spent.first().copied().flatten()
    }
}

/// This process's CPU time so far, in nanoseconds: how busy the load core
/// was tells whether a phase was bound by the load generator.
fn load_cpu_ns() -> Option<u64> {
    Usage::read(std::process::id()).map(|u| u.cpu_ns)
}

fn busy_pct(before: Option<u64>, elapsed: Duration) -> Option<f64> {
    let spent = load_cpu_ns()?.saturating_sub(before?);
    Some(round2(
        spent as f64 / elapsed.as_nanos().max(1) as f64 * 100.0,
    ))
}

/// The shape of a closed-loop phase: calls in flight, and its bounds.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    pub concurrency: usize,
    pub max_ops: u64,
    pub max_time: Duration,
}

/// A row from a phase's outcome and what the server spent meanwhile.
fn row(scenario: &'static str, case: String, out: &mut Outcome, m: &Measured) -> Row {
    let spent = m.first();
    let mut row = Row::new(scenario, case);
    row.ops = out.ok;
    row.throughput = Some(out.throughput());
    row.latency = Some(out.latency.summary());
    row.cpu_us_per_op = spent.and_then(|s| s.per_op_us(out.ok));
    row.rss_mib = spent.map(|s| mib(s.rss_after));
    row
}

/// Runs a closed-loop phase and measures `t` around it.
pub async fn measured_closed(
    t: &Target,
    scenario: &'static str,
    case: String,
    call: Call,
    bounds: Closed,
) -> (Row, Outcome) {
    let meter = Meter::of(t);
    let mut out = load::closed_loop(
        call,
        bounds.concurrency,
        bounds.max_ops,
        bounds.max_time,
        false,
    )
    .await;
    let m = meter.stop();
    let mut row = row(scenario, case, &mut out, &m);
    row.extra = json!({ "mode": "closed loop", "concurrency": bounds.concurrency, "load_core_busy_pct": m.load_busy_pct, "server": m.first().map(|s| s.json()) });
    (row, out)
}

/// Runs a fixed-rate phase (latency from the scheduled send time) and
/// measures `t` around it.
pub async fn measured_rate(
    t: &Target,
    scenario: &'static str,
    case: String,
    call: Call,
    rate: f64,
    duration: Duration,
) -> (Row, Outcome) {
    let meter = Meter::of(t);
    let mut out = load::fixed_rate(call, rate, duration, 4096).await;
    let m = meter.stop();
    let mut row = row(scenario, case, &mut out, &m);
    row.extra = json!({ "mode": "fixed rate", "offered_per_s": rate, "dropped": out.dropped, "load_core_busy_pct": m.load_busy_pct, "server": m.first().map(|s| s.json()) });
    (row, out)
}
