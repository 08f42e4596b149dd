//! What a scenario reports (rows, targets, sanity checks) and the run's
//! outputs: JSON (everything), Markdown (the tables of BENCHMARKS.md) and an
//! SVG chart, all made from the same rows.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::load::Outcome;
use crate::stats::{round2, Latency};

/// One measured line of a scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub case: String,
    pub ops: u64,
    pub throughput: Option<f64>,
    pub latency: Option<Latency>,
    pub cpu_us_per_op: Option<f64>,
    pub rss_mib: Option<f64>,
    /// The same-run baseline's CPU per op, and our ratio to it.
    pub baseline: Option<(String, Option<f64>)>,
    pub extra: Value,
}

impl Row {
    pub fn new(scenario: &'static str, case: impl Into<String>) -> Row {
        Row {
            scenario,
            case: case.into(),
            ops: 0,
            throughput: None,
            latency: None,
            cpu_us_per_op: None,
            rss_mib: None,
            baseline: None,
            extra: json!({}),
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        let (_, base) = self.baseline.as_ref()?;
        Some(self.cpu_us_per_op? / (*base)?)
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "case": self.case,
            "ops": self.ops,
            "throughput_per_s": self.throughput.map(round2),
            "latency": self.latency.map(|l| l.json()),
            "server_cpu_us_per_op": self.cpu_us_per_op.map(round2),
            "server_rss_mib": self.rss_mib.map(round2),
            "baseline": self.baseline.as_ref().map(|(name, cpu)| json!({
                "case": name, "server_cpu_us_per_op": cpu.map(round2),
            })),
            "cpu_ratio_to_baseline": self.ratio().map(|r| (r * 1000.0).round() / 1000.0),
            "extra": self.extra,
        })
    }
}

/// A performance target of an issue and whether this run met it.
#[derive(Debug, Clone)]
pub struct Goal {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `None` when it could not be measured in this run.
    pub met: Option<bool>,
}

/// What a scenario reports.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    /// Sanity checks (the smoke run fails on any false one).
    pub checks: Vec<(String, bool)>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }

    pub fn goal(&mut self, name: &str, target: &str, measured: String, met: Option<bool>) {
        self.goals.push(Goal {
            name: name.into(),
            target: target.into(),
            measured,
            met,
        });
    }

    /// Checks a row's numbers are plausible: work done, no errors, finite
    /// latencies, CPU per op between 10 ns and 100 ms.
    pub fn sane(&mut self, row: &Row, outcome: Option<&Outcome>) {
        let name = format!("{}: {}", row.scenario, row.case);
        if let Some(o) = outcome {
            self.check(
                format!(
                    "{name}: calls succeed ({} errors{})",
                    o.errors,
                    o.first_error
                        .as_deref()
                        .map(|e| format!(", first: {e}"))
                        .unwrap_or_default()
                ),
                o.errors == 0 && o.ok > 0,
            );
        }
        if let Some(l) = row.latency {
            let ok = l.samples > 0
                && l.p50_us.is_some_and(|v| v.is_finite() && v >= 0.0)
                && l.p99_us >= l.p50_us;
            self.check(
                format!("{name}: latency percentiles are ordered and finite"),
                ok,
            );
        }
        if let Some(cpu) = row.cpu_us_per_op {
            self.check(
                format!("{name}: server CPU per op {cpu:.2} µs is plausible"),
                cpu.is_finite() && cpu > 0.01 && cpu < 100_000.0,
            );
        }
    }
}

/// Everything one run measured.
pub struct Run {
    pub machine: Value,
    pub command: String,
    pub pinning: String,
    pub scenarios: Vec<(String, Result<Report, String>)>,
}

impl Run {
    fn rows(&self) -> impl Iterator<Item = &Row> {
        self.scenarios
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|r| r.rows.iter())
    }

    fn goals(&self) -> impl Iterator<Item = &Goal> {
        self.scenarios
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|r| r.goals.iter())
    }

    pub fn failed_checks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, r) in &self.scenarios {
            match r {
                Ok(r) => out.extend(r.checks.iter().filter(|c| !c.1).map(|c| c.0.clone())),
                Err(e) => out.push(format!("{name}: {e}")),
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let scenarios: Vec<Value> = self
            .scenarios
            .iter()
            .map(|(name, r)| match r {
                Ok(r) => json!({
                    "scenario": name,
                    "rows": r.rows.iter().map(Row::json).collect::<Vec<_>>(),
                    "goals": r.goals.iter().map(|g| json!({
                        "goal": g.name, "target": g.target, "measured": g.measured, "met": g.met,
                    })).collect::<Vec<_>>(),
                    "checks": r.checks.iter().map(|(c, ok)| json!({"check": c, "ok": ok})).collect::<Vec<_>>(),
                    "notes": r.notes,
                }),
                Err(e) => json!({ "scenario": name, "error": e }),
            })
            .collect();
        json!({
            "tool": "presence-bench",
            "command": self.command,
            "machine": self.machine,
            "pinning": self.pinning,
            "scenarios": scenarios,
        })
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "Command: `{}`  ", self.command);
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Machine: {} × {}, {} RAM, Linux {}; {}; load average at start {}  ",
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["memory"].as_str().unwrap_or("?"),
            m["kernel"].as_str().unwrap_or("?"),
            self.pinning,
            m["loadavg"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            md,
            "Commit: {}, run at {}\n",
            m["commit"].as_str().unwrap_or("?"),
            m["date"].as_str().unwrap_or("?")
        );
        let _ = writeln!(md, "### Targets\n");
        let _ = writeln!(md, "| target | goal | measured | met |");
        let _ = writeln!(md, "|---|---|---|---|");
        for g in self.goals() {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                g.name, g.target, g.measured, met
            );
        }
        for (name, r) in &self.scenarios {
            let _ = writeln!(md, "\n### {name}\n");
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let _ = writeln!(md, "Failed: {e}");
                    continue;
                }
            };
            let _ = writeln!(md, "| case | ops | ops/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/op | baseline µs/op | ratio | RSS MiB |");
            let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            for row in &r.rows {
                let l = row.latency.unwrap_or_default();
                let base = row.baseline.as_ref().and_then(|b| b.1);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.case,
                    row.ops,
                    num(row.throughput, 0),
                    num(l.p50_us, 1),
                    num(l.p99_us, 1),
                    num(l.p999_us, 1),
                    num(row.cpu_us_per_op, 2),
                    num(base, 2),
                    row.ratio().map_or("".into(), |r| format!("{r:.2}×")),
                    num(row.rss_mib, 1),
                );
            }
            let extras: Vec<String> = r
                .rows
                .iter()
                .filter_map(|row| {
                    let obj = row.extra.as_object()?;
                    let kv: Vec<String> = obj
                        .iter()
                        .filter(|(k, v)| !v.is_object() && !v.is_null() && k.as_str() != "mode")
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect();
                    (!kv.is_empty()).then(|| format!("- {}: {}", row.case, kv.join(", ")))
                })
                .collect();
            if !extras.is_empty() {
                let _ = writeln!(md, "\n{}", extras.join("\n"));
            }
            for n in &r.notes {
                let _ = writeln!(md, "- {n}");
            }
            let bad: Vec<_> = r.checks.iter().filter(|c| !c.1).collect();
            let _ = writeln!(
                md,
                "\nSanity checks: {} passed, {} failed",
                r.checks.len() - bad.len(),
                bad.len()
            );
            for (c, _) in bad {
                let _ = writeln!(md, "- FAILED: {c}");
            }
        }
        md
    }

    /// Two panels: CPU per operation against the same-run baseline (each
    /// row with a baseline: heartbeat vs Health/Check, delivery vs
    /// Health/Watch, join vs the fixed window, Redis vs memory or a no-op
    /// script), and latency to the last watcher (each row with a
    /// `baseline_latency`: fan-out, coalescing, across instances). A row's
    /// `chart_label` names its bars; `"chart": "latency"` keeps it out of
    /// the CPU panel.
    pub fn svg(&self) -> String {
        let label = |r: &Row| {
            r.extra["chart_label"]
                .as_str()
                .map_or_else(|| short(&r.case), str::to_string)
        };
        let cpu: Vec<(String, f64, f64)> = self
            .rows()
            .filter(|r| r.extra["chart"].as_str() != Some("latency"))
            .filter_map(|r| {
                let base = r.baseline.as_ref()?.1?;
                Some((label(r), r.cpu_us_per_op?, base))
            })
            .collect();
        let fan: Vec<(String, f64, f64, f64)> = self
            .rows()
            .filter_map(|r| {
                let l = r.latency?;
                let base = r.extra["baseline_latency"]["p99_us"].as_f64()?;
                Some((
                    label(r),
                    l.p50_us? / 1000.0,
                    l.p99_us? / 1000.0,
                    base / 1000.0,
                ))
            })
            .collect();
        let width = 900.0;
        let bar_h = 14.0;
        let label_w = 330.0;
        let plot_w = width - label_w - 90.0;
        let mut y = 40.0;
        let mut body = String::new();
        let _ = writeln!(
            body,
            r#"<text x="10" y="24" class="h">Server CPU per operation, µs (presenced vs same-run baseline)</text>"#
        );
        let max_cpu = cpu.iter().map(|c| c.1.max(c.2)).fold(1e-9, f64::max);
        for (label, ours, base) in &cpu {
            let _ = writeln!(
                body,
                r#"<text x="{:.0}" y="{:.0}" class="l" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + bar_h + 2.0,
                esc(label)
            );
            for (i, (v, class, what)) in [(ours, "a", "presenced"), (base, "b", "baseline")]
                .iter()
                .enumerate()
            {
                let yy = y + i as f64 * bar_h;
                let w = (**v / max_cpu * plot_w).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<rect x="{label_w:.0}" y="{yy:.0}" width="{w:.1}" height="{:.0}" class="{class}"><title>{what}: {v:.2} µs</title></rect>"#,
                    bar_h - 2.0
                );
                let _ = writeln!(
                    body,
                    r#"<text x="{:.1}" y="{:.0}" class="v">{v:.2}</text>"#,
                    label_w + w + 4.0,
                    yy + bar_h - 3.0
                );
            }
            y += 2.0 * bar_h + 8.0;
        }
        y += 30.0;
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.0}" class="h">Latency: ms from a change's reply to the last watcher's receipt</text>"#,
            y - 10.0
        );
        let max_ms = fan.iter().map(|f| f.2.max(f.3)).fold(1e-9, f64::max);
        for (label, p50, p99, base) in &fan {
            let _ = writeln!(
                body,
                r#"<text x="{:.0}" y="{:.0}" class="l" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + bar_h + 8.0,
                esc(label)
            );
            for (i, (v, class, what)) in [
                (p50, "a2", "p50"),
                (p99, "a", "p99"),
                (base, "b", "baseline p99"),
            ]
            .iter()
            .enumerate()
            {
                let yy = y + i as f64 * bar_h;
                let w = (**v / max_ms * plot_w).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<rect x="{label_w:.0}" y="{yy:.0}" width="{w:.1}" height="{:.0}" class="{class}"><title>{what}: {v:.2} ms</title></rect>"#,
                    bar_h - 2.0
                );
                let _ = writeln!(
                    body,
                    r#"<text x="{:.1}" y="{:.0}" class="v">{what} {v:.2}</text>"#,
                    label_w + w + 4.0,
                    yy + bar_h - 3.0
                );
            }
            y += 3.0 * bar_h + 8.0;
        }
        let legend_y = y + 10.0;
        let _ = writeln!(
            body,
            r#"<rect x="10" y="{legend_y:.0}" width="12" height="12" class="a"/><text x="26" y="{:.0}" class="l">presenced</text><rect x="110" y="{legend_y:.0}" width="12" height="12" class="b"/><text x="126" y="{:.0}" class="l">same-run baseline: Health/Check or Watch on the same stack; the fixed window; the memory store; a no-op script</text>"#,
            legend_y + 10.0,
            legend_y + 10.0
        );
        let height = legend_y + 30.0;
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">
<style>.h{{font-size:15px;font-weight:bold}}.l{{font-size:12px}}.v{{font-size:11px;fill:#333}}.a{{fill:#2b6cb0}}.a2{{fill:#90cdf4}}.b{{fill:#a0a0a0}}</style>
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"##
        )
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.digits$}"))
}

fn short(case: &str) -> String {
    case.split(" (").next().unwrap_or(case).to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
