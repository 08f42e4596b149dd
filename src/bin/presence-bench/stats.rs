//! Latency samples and the server's own resource accounting.

use std::time::Duration;

/// Latency samples of one phase, in nanoseconds. Phases are bounded in count,
/// so every sample is kept and percentiles are exact.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ns: Vec::with_capacity(n),
            sorted: false,
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.ns.push(d.as_nanos().min(u64::MAX as u128) as u64);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.ns.extend(other.ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// The `q` quantile (0..=1) in microseconds; `None` without samples.
    pub fn quantile_us(&mut self, q: f64) -> Option<f64> {
        if self.ns.is_empty() {
            return None;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        Some(self.ns[rank - 1] as f64 / 1000.0)
    }

    /// p50, p99, p99.9 in microseconds.
    pub fn summary(&mut self) -> Latency {
        Latency {
            p50_us: self.quantile_us(0.50),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.quantile_us(1.0),
            samples: self.len(),
        }
    }
}

/// Latency percentiles of a phase, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub samples: usize,
}

impl Latency {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": self.p50_us.map(round2),
            "p99_us": self.p99_us.map(round2),
            "p999_us": self.p999_us.map(round2),
            "max_us": self.max_us.map(round2),
            "samples": self.samples,
        })
    }
}

/// A process's resource use at one instant, read from `/proc` through the
/// `procfs` crate (the server's own metrics read `/proc/self` the same way).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime from `/proc/<pid>/stat`, in clock ticks (all threads,
    /// dead ones included).
    pub cpu_ticks: u64,
    /// Sum over live threads of `/proc/<pid>/task/*/schedstat` run time, in
    /// nanoseconds: the same accounting at nanosecond resolution.
    pub cpu_ns: u64,
    /// VmRSS from `/proc/<pid>/status`, in bytes.
    pub rss: u64,
}

/// Clock ticks per second, the unit of utime and stime (100 on Linux
/// nearly always).
pub fn clk_tck() -> u64 {
    procfs::ticks_per_second()
}

impl Usage {
    /// Reads `pid`'s accounting; `None` if the process is gone or `/proc`
    /// is not there.
    pub fn read(pid: u32) -> Option<Usage> {
        let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
        let stat = process.stat().ok()?;
        let rss_kib = process.status().ok()?.vmrss?;
        // A thread that exits between the listing and its read is skipped
        // (its time stays in utime + stime; see `Spent::between`).
        let cpu_ns = process.tasks().map_or(0, |tasks| {
            tasks
                .flatten()
                .filter_map(|task| task.schedstat().ok())
                .map(|s| s.sum_exec_runtime)
                .sum()
        });
        Some(Usage {
            cpu_ticks: stat.utime + stat.stime,
            cpu_ns,
            rss: rss_kib * 1024,
        })
    }
}

/// Server resource use over one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    /// CPU time in nanoseconds: the schedstat sum when it is consistent with
    /// the tick count, else ticks (coarser, 10 ms each).
    pub cpu_ns: u64,
    /// CPU ticks as `/proc/<pid>/stat` counts them, for cross-checking.
    pub cpu_ticks: u64,
    /// RSS at the start and at the end of the phase, bytes.
    pub rss_before: u64,
    pub rss_after: u64,
}

impl Spent {
    pub fn between(before: Option<Usage>, after: Option<Usage>) -> Option<Spent> {
        let (b, a) = (before?, after?);
        let tck = clk_tck();
        let ticks = a.cpu_ticks.saturating_sub(b.cpu_ticks);
        let tick_ns = ticks * 1_000_000_000 / tck.max(1);
        let sched_ns = a.cpu_ns.saturating_sub(b.cpu_ns);
        // schedstat misses threads that exited during the phase; trust it
        // unless it disagrees with the coarse count by more than 2 ticks.
        let slack = 2 * 1_000_000_000 / tck.max(1);
        let cpu_ns = if sched_ns + slack >= tick_ns {
            sched_ns
        } else {
            tick_ns
        };
        Some(Spent {
            cpu_ns,
            cpu_ticks: ticks,
            rss_before: b.rss,
            rss_after: a.rss,
        })
    }

    /// Server CPU per operation in microseconds.
    pub fn per_op_us(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.cpu_ns as f64 / ops as f64 / 1000.0)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu_ms": round2(self.cpu_ns as f64 / 1e6),
            "cpu_ticks": self.cpu_ticks,
            "rss_before_mib": round2(mib(self.rss_before)),
            "rss_after_mib": round2(mib(self.rss_after)),
        })
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_exact_ranks() {
        let mut s = Samples::default();
        for us in 1..=1000u64 {
            s.record(Duration::from_micros(us));
        }
        assert_eq!(s.quantile_us(0.5), Some(500.0));
        assert_eq!(s.quantile_us(0.99), Some(990.0));
        assert_eq!(s.quantile_us(0.999), Some(999.0));
        assert_eq!(s.quantile_us(1.0), Some(1000.0));
        assert_eq!(Samples::default().quantile_us(0.5), None);
    }

    #[test]
    fn reads_its_own_accounting() {
        let u = Usage::read(std::process::id()).expect("/proc is mounted");
        assert!(u.rss > 0);
    }
}
