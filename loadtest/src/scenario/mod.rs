//! The scenarios. Each one runs every target in turn on the same loader
//! threads and returns one `Outcome` per target, so that ratios compare
//! runs taken minutes apart on the same machine, not figures from elsewhere.

pub mod bulk;
pub mod chaos;
pub mod churn;
pub mod fan_out;
pub mod flight;
pub mod grpc;
pub mod idle;
pub mod latency;
pub mod revoke;
pub mod tls;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fastwebsockets::Role;
use hdrhistogram::Histogram;
use sluice::wire::frame::Opcode;
use tokio::runtime::Runtime;

use crate::counters::Counting;
use crate::report::{histogram, Outcome};
use crate::sink::{Event, Sink};
use crate::targets::{Proc, Route, SinkParts, Target};
use crate::wire::{stamped, Source};

/// Where the loader's own threads run.
#[derive(Clone, Debug)]
pub struct Layout {
    /// CPU of the sinks (the runtime on the main thread) and, by default, of the sources.
    pub load_cpu: Option<usize>,
    /// CPU the proxy under test is pinned to; the direct path's source goes
    /// there in the timed scenarios, so that its two ends sit on different
    /// cores as the proxied paths' do.
    pub proxy_cpu: Option<usize>,
    /// Explicit CPU for every source (on hosts with cores to spare, so
    /// that source and sink do not share one).
    pub source_cpu: Option<usize>,
}

impl Layout {
    pub fn source_cpu(&self, target: Target, timed: bool) -> Option<usize> {
        if self.source_cpu.is_some() {
            self.source_cpu
        } else if timed && target == Target::Direct {
            self.proxy_cpu.or(self.load_cpu)
        } else {
            self.load_cpu
        }
    }
}

/// A target ready to be driven, with the process to account CPU to.
pub struct Driven<'a> {
    pub route: Route<'a>,
    pub proc: Option<Proc>,
}

pub struct Ctx<'a> {
    pub rt: &'a Runtime,
    pub layout: Layout,
    pub epoch: Instant,
    pub targets: Vec<Driven<'a>>,
}

pub fn pin_current(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
}

/// Asks the kernel for exact sleeps on this thread. Linux lets a sleep end
/// up to the thread's timer slack late (50 µs by default), which would add
/// up to 50 µs to every latency sample of an open-loop sender.
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (the slack in ns)
    // and touches only the calling thread's timer settings; no pointer is
    // passed and the unused arguments are zero as prctl(2) requires.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    debug_assert_eq!(rc, 0, "PR_SET_TIMERSLACK is available since Linux 2.6.28");
}

/// An open-loop schedule: frame k is due `k × period` after a start 20 ms
/// from now, whatever happened to the frames before it.
pub struct Schedule {
    start: Instant,
    period: Duration,
    epoch: Instant,
}

impl Schedule {
    pub fn new(period: Duration, epoch: Instant) -> Schedule {
        Schedule {
            start: Instant::now() + Duration::from_millis(20),
            period,
            epoch,
        }
    }

    /// Sleeps until frame `k` is due; returns its due time in ns since the
    /// run's epoch (what the frame carries, so latency counts from it).
    pub fn wait(&self, k: u64) -> u64 {
        let due = self.start + self.period * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        (due - self.epoch).as_nanos() as u64
    }
}

/// Sends `total` stamped frames on a fixed schedule, frame k due at
/// `start + k × period`, round-robin over `sources` (each source gets one
/// frame in `sources.len()`) or, with `broadcast`, every frame to all of
/// them. Runs on its own pinned thread; hands the sources back at the end
/// so that they stay open until the sinks are done.
pub fn paced(
    mut sources: Vec<Source>,
    total: u64,
    period: Duration,
    size: usize,
    broadcast: bool,
    epoch: Instant,
    cpu: Option<usize>,
) -> std::thread::JoinHandle<(Vec<Source>, Vec<String>)> {
    std::thread::spawn(move || {
        pin_current(cpu);
        precise_timers();
        let mut errors = vec![];
        let schedule = Schedule::new(period, epoch);
        let enc = sources[0].enc;
        let n = sources.len();
        for k in 0..total {
            let sched = schedule.wait(k);
            let frame = enc.frame(Opcode::Binary, &stamped(size, sched, k));
            let to: Vec<usize> = if broadcast {
                (0..n).collect()
            } else {
                vec![k as usize % n]
            };
            for i in to {
                if let Err(e) = std::io::Write::write_all(&mut sources[i].stream, &frame) {
                    if errors.len() < 5 {
                        errors.push(format!("source {i}: {e}"));
                    }
                }
            }
        }
        for s in &mut sources {
            s.end();
        }
        (sources, errors)
    })
}

/// CPU and wall time of one measured phase, for the proxy and the loader.
pub struct Meter {
    proc: Option<Proc>,
    proxy: f64,
    loader: f64,
    t0: Instant,
    proxy_kernel: Option<Counting>,
    loader_kernel: Option<Counting>,
}

impl Meter {
    pub fn start(proc: Option<Proc>) -> Meter {
        if let Some(p) = proc {
            // The target's own peak, not the process's since it started.
            if !p.reset_peak_rss() {
                warn_peak_not_reset();
            }
        }
        Meter {
            proc,
            proxy: proc.map(|p| p.cpu_secs()).unwrap_or(0.0),
            loader: Proc(std::process::id()).cpu_secs(),
            proxy_kernel: proc.and_then(|p| Counting::start(p.0)),
            loader_kernel: Counting::start(std::process::id()),
            t0: Instant::now(),
        }
    }

    /// Adds this phase's figures to `o` (several phases accumulate).
    pub fn stop(self, o: &mut Outcome) {
        let add = |v: &mut Option<f64>, x: f64| *v = Some(v.unwrap_or(0.0) + x);
        let wall = self.t0.elapsed().as_secs_f64();
        add(&mut o.wall_s, wall);
        let loader = Proc(std::process::id()).cpu_secs() - self.loader;
        add(&mut o.loader_cpu_s, loader);
        o.cost.loader_cpu_s += loader;
        o.cost
            .add_loader(self.loader_kernel.and_then(Counting::stop));
        if let Some(p) = self.proc {
            let proxy = p.cpu_secs() - self.proxy;
            add(&mut o.proxy_cpu_s, proxy);
            o.cost.proxy_cpu_s += proxy;
            o.cost.add_proxy(self.proxy_kernel.and_then(Counting::stop));
            let peak = p.peak_rss_kib().max(o.proxy_peak_rss_kib.unwrap_or(0));
            o.proxy_peak_rss_kib = Some(peak);
        }
    }
}

/// Says once per run that peaks are since the proxy started.
fn warn_peak_not_reset() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "  peak RSS is since the proxy started: /proc/PID/clear_refs refused the reset, \
             so a gateway's later targets include its earlier targets' peaks"
        );
    });
}

/// What one sink saw of a timed stream.
pub struct Seen {
    pub hist: Histogram<u64>,
    pub messages: u64,
    pub error: Option<String>,
}

/// Reads until `expect` stamped frames arrived (or `deadline`), recording
/// each one's latency from its scheduled send time.
pub async fn record(
    mut sink: Sink,
    expect: u64,
    epoch: Instant,
    deadline: tokio::time::Instant,
) -> Seen {
    let mut seen = Seen {
        hist: histogram(),
        messages: 0,
        error: None,
    };
    while seen.messages < expect {
        match tokio::time::timeout_at(deadline, sink.next()).await {
            Err(_) => {
                seen.error = Some(format!(
                    "received {} of {expect} frames before the deadline",
                    seen.messages
                ));
                break;
            }
            Ok(Err(e)) => {
                seen.error = Some(format!("after {} frames: {e}", seen.messages));
                break;
            }
            Ok(Ok(Event::Binary {
                stamp: Some((sched, _)),
                ..
            })) => {
                let now = epoch.elapsed().as_nanos() as u64;
                let _ = seen.hist.record(now.saturating_sub(sched).max(1));
                seen.messages += 1;
            }
            Ok(Ok(Event::Binary { stamp: None, .. })) => {}
            Ok(Ok(Event::Text(t))) => {
                if t.contains("\"error\"") {
                    seen.error = Some(format!("error message: {t}"));
                    break;
                }
            }
            Ok(Ok(Event::Closed { code, reason })) => {
                seen.error = Some(format!(
                    "closed {code:?} {reason} after {} frames",
                    seen.messages
                ));
                break;
            }
        }
    }
    sink.close().await;
    seen
}

/// The shape of a timed run.
pub struct Timed {
    /// Frames the sender writes (each to every source with `broadcast`).
    pub total: u64,
    pub period: Duration,
    pub size: usize,
    pub broadcast: bool,
    /// Stamped frames each sink must see.
    pub expect_each: u64,
    pub duration: Duration,
}

/// Runs one timed measurement: the sources paced on their own thread, the
/// sinks recording on the runtime, the proxy's and loader's CPU metered.
pub fn timed(
    ctx: &Ctx,
    d: &Driven,
    sources: Vec<Source>,
    parts: Vec<SinkParts>,
    t: &Timed,
    o: &mut Outcome,
) {
    let sinks = match sinks(ctx.rt, parts) {
        Ok(s) => s,
        Err(e) => return o.error(e),
    };
    let meter = Meter::start(d.proc);
    let cpu = ctx.layout.source_cpu(d.route.target, true);
    let sender = paced(
        sources,
        t.total,
        t.period,
        t.size,
        t.broadcast,
        ctx.epoch,
        cpu,
    );
    let before = o.messages;
    collect(ctx.rt, sinks, t.expect_each, ctx.epoch, t.duration, o);
    o.cost.payload_bytes += (o.messages - before) * t.size as u64;
    let (sources, errors) = sender.join().expect("sender thread");
    drop(sources);
    for e in errors {
        o.error(e);
    }
    meter.stop(o);
}

/// Opens `n` streams on a route, numbered from `first`.
pub fn open_streams(
    route: &Route,
    n: usize,
    first: usize,
) -> Result<(Vec<Source>, Vec<SinkParts>)> {
    let mut sources = Vec::with_capacity(n);
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let (s, k) = route
            .open_stream(first + i)
            .with_context(|| format!("opening stream {i}"))?;
        sources.push(s);
        parts.push(k);
    }
    Ok((sources, parts))
}

/// Folds per-session latencies (ns) or errors into an outcome.
pub fn fold(results: Vec<Result<u64, String>>, o: &mut Outcome) {
    let mut h = histogram();
    for r in results {
        match r {
            Ok(ns) => {
                let _ = h.record(ns);
                o.messages += 1;
            }
            Err(e) => o.error(e),
        }
    }
    o.latency = Some(crate::report::Latency::of(&h));
    o.hist = Some(h);
}

/// Moves setup sockets into the runtime as sinks.
pub fn sinks(rt: &Runtime, parts: Vec<(TcpStream, Vec<u8>)>) -> Result<Vec<Sink>> {
    let _g = rt.enter();
    parts
        .into_iter()
        .map(|(s, p)| Sink::new(s, p, Role::Client))
        .collect()
}

/// Runs a timed scenario's sinks to completion and folds their results.
pub fn collect(
    rt: &Runtime,
    sinks: Vec<Sink>,
    expect_each: u64,
    epoch: Instant,
    run_for: Duration,
    out: &mut Outcome,
) {
    let deadline = tokio::time::Instant::now() + run_for + Duration::from_secs(10);
    let seen: Vec<Seen> = rt.block_on(async {
        let tasks: Vec<_> = sinks
            .into_iter()
            .map(|s| tokio::spawn(record(s, expect_each, epoch, deadline)))
            .collect();
        let mut all = vec![];
        for t in tasks {
            if let Ok(s) = t.await {
                all.push(s);
            }
        }
        all
    });
    let mut h = histogram();
    for s in seen {
        let _ = h.add(&s.hist);
        out.messages += s.messages;
        if let Some(e) = s.error {
            out.error(e);
        }
    }
    out.latency = Some(crate::report::Latency::of(&h));
    out.hist = Some(h);
}

#[cfg(test)]
mod tests {
    #[test]
    fn precise_timers_sets_one_nanosecond_slack() {
        std::thread::spawn(|| {
            super::precise_timers();
            // SAFETY: PR_GET_TIMERSLACK takes no pointer; it returns the
            // calling thread's slack in ns as the result.
            let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
            assert_eq!(slack, 1);
        })
        .join()
        .unwrap();
    }
}
