//! Load shapes: a closed loop (N calls in flight, the next sent when one
//! returns) and a fixed offered rate (calls sent on a schedule whatever the
//! replies do, latency measured from the scheduled time, so a stall is not
//! hidden). Both stop at a count and at a time limit, whichever comes first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::Samples;

/// One call: its index in the phase → its outcome.
pub type Call = Arc<
    dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> + Send + Sync,
>;

/// What a phase did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub latency: Samples,
    /// Fixed-rate only: calls not sent because too many were in flight.
    pub dropped: u64,
    /// (send instant, latency) of each call, when asked for.
    pub timeline: Vec<(Instant, Duration)>,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.extend(other.latency);
        self.dropped += other.dropped;
        self.timeline.extend(other.timeline);
    }
}

/// `concurrency` workers call `call(i)` for i in 0..max_ops until `max_time`.
pub async fn closed_loop(
    call: Call,
    concurrency: usize,
    max_ops: u64,
    max_time: Duration,
    keep_timeline: bool,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = start + max_time;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (call, next) = (call.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Outcome {
                latency: Samples::with_capacity(1024),
                ..Outcome::default()
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_ops || Instant::now() >= stop {
                    break;
                }
                let t = Instant::now();
                let result = call(i).await;
                let d = t.elapsed();
                match result {
                    Ok(()) => {
                        out.ok += 1;
                        out.latency.record(d);
                        if keep_timeline {
                            out.timeline.push((t, d));
                        }
                    }
                    Err(status) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(status.to_string());
                        }
                    }
                }
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for w in workers {
        if let Ok(out) = w.await {
            total.merge(out);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Calls `call(i)` at `rate` per second for `duration`, at most
/// `max_in_flight` outstanding (beyond: counted as dropped).
pub async fn fixed_rate(call: Call, rate: f64, duration: Duration, max_in_flight: u64) -> Outcome {
    let total_ops = (rate * duration.as_secs_f64()).round() as u64;
    let in_flight = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let start = Instant::now();
    let mut dropped = 0;
    for i in 0..total_ops {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            dropped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (call, tx, in_flight) = (call.clone(), tx.clone(), in_flight.clone());
        tokio::spawn(async move {
            let result = call(i).await;
            // Latency from the scheduled send time, not the actual one.
            let _ = tx.send(result.map(|()| at.elapsed()).map_err(|s| s.to_string()));
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(tx);
    let mut out = Outcome {
        latency: Samples::with_capacity(total_ops as usize),
        dropped,
        ..Outcome::default()
    };
    let drain = async {
        while let Some(r) = rx.recv().await {
            match r {
                Ok(d) => {
                    out.ok += 1;
                    out.latency.record(d);
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
    out.elapsed = start.elapsed();
    out
}
