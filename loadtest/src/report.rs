//! Results: a human table, one JSON document, an HDR percentile
//! distribution file per target and an SVG plot of the latency percentiles.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::counters::{self, Kernel};

/// A figure with `p` decimals, or `-` where there is none.
fn f(v: Option<f64>, p: usize) -> String {
    v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into())
}

/// Latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// One target's figures in one scenario.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Outcome {
    pub target: String,
    /// Payload throughput (median over runs where there are several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<f64>,
    /// Each run's throughput, for the spread.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs_mb_per_s: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_direct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    pub messages: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
    /// CPU seconds the proxy (gateway, nginx, haproxy) spent in the measured phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_peak_rss_kib: Option<u64>,
    /// CPU seconds of the loader itself (sources, sinks, origin) in the
    /// measured phase, and that phase's wall time: with the proxy's CPU,
    /// they say which side was the bottleneck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// Proxy memory per held connection (idle scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kib_per_session: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Totals over every measured phase, for the cost table.
    pub cost: Cost,
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

/// What carrying the traffic cost each side, summed over the measured
/// phases: CPU, system calls and context switches, against the payload
/// delivered. Per-MB and per-frame figures compare proxies doing the same
/// work; the loader's own figures show what a proxy's output pattern
/// makes its peers pay.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Cost {
    pub payload_bytes: u64,
    pub proxy_cpu_s: f64,
    pub loader_cpu_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_syscalls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_context_switches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_syscalls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_context_switches: Option<u64>,
}

impl Cost {
    pub fn add_proxy(&mut self, k: Option<Kernel>) {
        Self::add(
            &mut self.proxy_syscalls,
            &mut self.proxy_context_switches,
            k,
        );
    }

    pub fn add_loader(&mut self, k: Option<Kernel>) {
        Self::add(
            &mut self.loader_syscalls,
            &mut self.loader_context_switches,
            k,
        );
    }

    fn add(sys: &mut Option<u64>, cs: &mut Option<u64>, k: Option<Kernel>) {
        if let Some(k) = k {
            *sys = Some(sys.unwrap_or(0) + k.syscalls);
            *cs = Some(cs.unwrap_or(0) + k.context_switches);
        }
    }

    fn per_mb(&self, v: Option<u64>) -> Option<f64> {
        let mb = self.payload_bytes as f64 / 1e6;
        v.filter(|_| mb > 0.0).map(|v| v as f64 / mb)
    }
}

impl Outcome {
    pub fn new(target: &str) -> Outcome {
        Outcome {
            target: target.to_string(),
            ..Default::default()
        }
    }

    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(e.to_string());
        }
    }
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub params: serde_json::Value,
    pub layout: String,
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn fill_ratios(&mut self) {
        let direct = self
            .outcomes
            .iter()
            .find(|o| o.target == "direct")
            .and_then(|o| o.mb_per_s);
        if let Some(d) = direct {
            for o in &mut self.outcomes {
                o.ratio_to_direct = o.mb_per_s.map(|m| m / d);
            }
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n{} — {}", self.scenario, self.params);
        let _ = writeln!(s, "layout: {}", self.layout);
        let _ = writeln!(
            s,
            "{:<15} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
            "target",
            "MB/s",
            "ratio",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "msgs",
            "errors",
            "cpu s",
            "rss KiB"
        );
        let direct_p99 = self
            .outcomes
            .iter()
            .find(|o| o.target == "direct")
            .and_then(|o| o.latency.as_ref())
            .map(|l| l.p99_us);
        for o in &self.outcomes {
            let l = o.latency.as_ref();
            let _ = writeln!(
                s,
                "{:<15} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
                o.target,
                f(o.mb_per_s, 0),
                f(o.ratio_to_direct, 3),
                f(l.map(|l| l.p50_us), 1),
                f(l.map(|l| l.p99_us), 1),
                f(l.map(|l| l.p999_us), 1),
                f(l.map(|l| l.max_us), 0),
                o.messages,
                o.errors,
                f(o.proxy_cpu_s, 2),
                o.proxy_peak_rss_kib
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
        self.cost_table(&mut s);
        for o in &self.outcomes {
            if let (Some(d), Some(l)) = (direct_p99, o.latency.as_ref()) {
                if o.target != "direct" {
                    let _ = writeln!(
                        s,
                        "  {}: p99 added over direct {:+.1} µs",
                        o.target,
                        l.p99_us - d
                    );
                }
            }
            if let (Some(w), Some(l)) = (o.wall_s, o.loader_cpu_s) {
                let proxy = o
                    .proxy_cpu_s
                    .map(|p| format!("proxy {:.0}% of a core, ", p / w * 100.0))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {}: busy during the measured {w:.1} s: {proxy}loader {:.0}% of a core",
                    o.target,
                    l / w * 100.0
                );
            }
            if let Some(k) = o.kib_per_session {
                let _ = writeln!(s, "  {}: {k:.2} KiB per held session", o.target);
            }
            if let Some(n) = &o.note {
                let _ = writeln!(s, "  {}: {n}", o.target);
            }
            for e in &o.error_samples {
                let _ = writeln!(s, "  {} error: {e}", o.target);
            }
        }
        s
    }

    /// Where each target's cycles and wake-ups went: CPU per GiB and per
    /// 1,000 frames, system calls and context switches per MB, for the
    /// proxy and for the loader that fed and drained it.
    fn cost_table(&self, s: &mut String) {
        if self.outcomes.iter().all(|o| o.cost.payload_bytes == 0) {
            return;
        }
        let _ = writeln!(
            s,
            "{:<15} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>10}",
            "cost",
            "cpu-s/GiB",
            "cpu-ms/kfr",
            "sys/MB",
            "cs/MB",
            "load s/GiB",
            "load sys/MB",
            "load cs/MB"
        );
        for o in &self.outcomes {
            let c = &o.cost;
            let gib = c.payload_bytes as f64 / (1u64 << 30) as f64;
            let per_gib = |cpu: f64| (gib > 0.0).then(|| cpu / gib);
            let proxy = o.proxy_cpu_s.map(|_| c.proxy_cpu_s);
            let _ = writeln!(
                s,
                "{:<15} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>10}",
                o.target,
                f(proxy.and_then(per_gib), 2),
                f(
                    proxy
                        .filter(|_| o.messages > 0)
                        .map(|cpu| cpu * 1e6 / o.messages as f64),
                    2
                ),
                f(c.per_mb(c.proxy_syscalls), 1),
                f(c.per_mb(c.proxy_context_switches), 1),
                f(per_gib(c.loader_cpu_s), 2),
                f(c.per_mb(c.loader_syscalls), 1),
                f(c.per_mb(c.loader_context_switches), 1),
            );
        }
        if let Some(why) = counters::unavailable() {
            let _ = writeln!(s, "  syscalls and context switches not counted: {why}");
        }
    }

    /// Writes `report.json`, `<target>.hgrm` and `latency.svg` under `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut written = vec![];
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        written.push(json.display().to_string());
        let with_hist: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.hist.as_ref().is_some_and(|h| !h.is_empty()))
            .collect();
        for o in &with_hist {
            let p = dir.join(format!("{}.hgrm", o.target));
            std::fs::write(&p, hgrm(o.hist.as_ref().expect("filtered")))?;
            written.push(p.display().to_string());
        }
        if !with_hist.is_empty() {
            let p = dir.join("latency.svg");
            plot(&p, &self.scenario, &with_hist)?;
            written.push(p.display().to_string());
        }
        Ok(written)
    }
}

/// HdrHistogram's percentile distribution text format (values in µs), as
/// read by HdrHistogram's plotter and `hdr-plot`.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            s,
            "{:>12.3} {:>14.12} {:>10} {inv}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration()
        );
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    s
}

/// Latency by percentile, x in "nines" (0 = p0, 1 = p90, 2 = p99, …).
fn plot(path: &Path, title: &str, outcomes: &[&Outcome]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = outcomes
        .iter()
        .map(|o| {
            let h = o.hist.as_ref().expect("has histogram");
            let pts = (0..=400)
                .map(|i| {
                    let nines = i as f64 / 100.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    (nines, h.value_at_quantile(q.min(0.99999)) as f64 / 1000.0)
                })
                .collect();
            (o.target.clone(), pts)
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: latency by percentile"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (1f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(5)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => String::new(),
        })
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
