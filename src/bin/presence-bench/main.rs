//! presence-bench: measures presenced against baselines taken in the same
//! run, and writes JSON, Markdown and an SVG chart.
//!
//! It starts `presenced` itself (a fresh one per scenario, so scenarios do
//! not disturb each other) on a free loopback port, or targets a running
//! one (`--target`). Servers run on core 0 and the load on the last core
//! when `taskset` and two cores exist. Server CPU time comes from the
//! server's own accounting in `/proc/<pid>` (utime + stime, and per-thread
//! schedstat for nanosecond resolution), RSS from `/proc/<pid>/status`.
//!
//! Modules: `scenarios` (one file per scenario), `ctx` (what they share:
//! settings, sizes, sessions, clients), `watch` (watch streams: when each
//! watcher had each change, and the checks every decoded message passes),
//! `phase` (measured load phases), `load` (closed loop and fixed rate),
//! `server` (child processes, pinning, metrics), `redis_server` (the Redis
//! scenarios' `redis-server`), `baseline` (the Health/Watch fan-out server,
//! run as `health-server`), `stats` (percentiles, `/proc` through
//! `procfs`), `report` (rows, targets, checks; JSON, Markdown, SVG).
//!
//! `presence-bench --quick --check` is the smoke run: small sizes, and a
//! non-zero exit when a number is not sane (not when it is slow).

mod baseline;
mod ctx;
mod load;
mod phase;
mod redis_server;
mod report;
mod scenarios;
mod server;
mod stats;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use crate::report::Report;

/// Benchmarks presenced against same-run baselines (grpc.health.v1 on the
/// same stack) and reports throughput, latency, server CPU per operation and
/// server RSS.
#[derive(Debug, Parser)]
#[command(name = "presence-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,

    /// Small sizes (the smoke run): every scenario in about four minutes
    /// of a debug build on 2 cores.
    #[arg(long)]
    quick: bool,

    /// Exit non-zero when a sanity check fails (work done, no errors,
    /// plausible numbers). Targets missed never fail the run.
    #[arg(long)]
    check: bool,

    /// The presenced binary to start.
    #[arg(long, default_value_os_t = server::default_presenced())]
    presenced: PathBuf,

    /// The redis-server binary the Redis scenarios start (Debian:
    /// `apt-get install redis-server`).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,

    /// Target a running presenced at this address instead of starting one
    /// (scenarios then share its state; CPU and RSS need --pid).
    #[arg(long)]
    target: Option<SocketAddr>,

    /// The pid of the --target server, for CPU and RSS figures.
    #[arg(long, requires = "target")]
    pid: Option<u32>,

    /// Directory for bench.json, bench.md, bench.svg and server logs.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,

    /// Do not pin server and load to separate cores.
    #[arg(long)]
    no_pin: bool,

    /// Watch streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    watchers_per_conn: usize,

    /// Fan-out sizes (watchers of one room), comma-separated.
    #[arg(long, value_delimiter = ',')]
    fanout_sizes: Option<Vec<usize>>,

    /// presenced's --snapshot-interval (coalescing window); fan-out changes
    /// are spaced by more than this so each one is published at once.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (internal) The Health/Watch baseline server; each stdin line flips
    /// its status. Started by the bench itself.
    #[command(hide = true)]
    HealthServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Heartbeat,
    Fanout,
    Coalescing,
    Storm,
    Expiry,
    Memory,
    Persist,
    RedisHeartbeat,
    RedisWatch,
    RedisMemory,
    RedisExpiry,
}

impl Scenario {
    /// Its name on the command line and in the report.
    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    async fn run(self, ctx: &ctx::Ctx) -> Result<Report, String> {
        use scenarios::*;
        match self {
            Scenario::Heartbeat => heartbeat::run(ctx).await,
            Scenario::Fanout => fanout::run(ctx).await,
            Scenario::Coalescing => coalescing::run(ctx).await,
            Scenario::Storm => storm::run(ctx).await,
            Scenario::Expiry => expiry::run(ctx).await,
            Scenario::Memory => memory::run(ctx).await,
            Scenario::Persist => persist::run(ctx).await,
            Scenario::RedisHeartbeat => redis_heartbeat::run(ctx).await,
            Scenario::RedisWatch => redis_watch::run(ctx).await,
            Scenario::RedisMemory => redis_memory::run(ctx).await,
            Scenario::RedisExpiry => redis_expiry::run(ctx).await,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HealthServer { listen }) = cli.command {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        return match rt.block_on(baseline::run(listen)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("health-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Pin before any thread exists so the runtime's threads inherit it.
    let pin = server::Pinning::setup(!cli.no_pin);
    let rt = if pin.server_core.is_some() {
        // One load core: one thread drives everything, no cross-thread
        // wake-ups in the measurement.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    rt.block_on(run(cli, pin))
}

async fn run(cli: Cli, pin: server::Pinning) -> ExitCode {
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        cli.scenarios.clone()
    };
    if let Err(e) = std::fs::create_dir_all(&cli.out) {
        eprintln!("{}: {e}", cli.out.display());
        return ExitCode::FAILURE;
    }
    let ctx = ctx::Ctx {
        pin: pin.clone(),
        presenced: cli.presenced.clone(),
        redis_server: cli.redis_server.clone(),
        out_dir: cli.out.clone(),
        quick: cli.quick,
        existing: cli.target.map(|a| (a, cli.pid)),
        run: uuid::Uuid::new_v4(),
        watchers_per_conn: cli.watchers_per_conn.max(1),
        snapshot_interval: cli.snapshot_interval,
        fanout_sizes: cli.fanout_sizes.clone().unwrap_or_else(|| {
            if cli.quick {
                vec![100, 1000]
            } else {
                vec![100, 1000, 10_000, 50_000]
            }
        }),
    };
    eprintln!(
        "presence-bench: {}; results in {}",
        pin.note,
        cli.out.display()
    );
    let machine = machine();
    let mut results = Vec::new();
    for s in scenarios {
        let name = s.name();
        eprintln!("== {name}");
        let start = Instant::now();
        let scenario = s.run(&ctx);
        // On SIGINT/SIGTERM the scenario is dropped, which stops its
        // servers, redis-server included (they are children: nothing else
        // would).
        let r = tokio::select! {
            r = scenario => r,
            () = interrupted() => {
                eprintln!("interrupted; servers stopped");
                return ExitCode::FAILURE;
            }
        };
        match &r {
            Ok(rep) => {
                for g in &rep.goals {
                    eprintln!("   {}: {} (target {})", g.name, g.measured, g.target);
                }
            }
            Err(e) => eprintln!("   failed: {e}"),
        }
        eprintln!("   {:.1} s", start.elapsed().as_secs_f64());
        results.push((name, r));
    }
    let run = report::Run {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        pinning: pin.note.clone(),
        scenarios: results,
    };
    let md = run.markdown();
    let json = serde_json::to_string_pretty(&run.json()).expect("JSON values serialize");
    let writes = [
        ("bench.json", json),
        ("bench.md", md.clone()),
        ("bench.svg", run.svg()),
    ];
    for (file, text) in writes {
        if let Err(e) = std::fs::write(cli.out.join(file), text) {
            eprintln!("{file}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("{md}");
    let failed = run.failed_checks();
    for f in &failed {
        eprintln!("FAILED: {f}");
    }
    let errors = run.scenarios.iter().any(|(_, r)| r.is_err());
    if errors || (cli.check && !failed.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// What the report says about the machine.
fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let sh = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "cpu_model": model,
        "cpus": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "memory": format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "commit": sh("git", &["rev-parse", "--short", "HEAD"]),
        "date": sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "clk_tck": stats::clk_tck(),
    })
}
