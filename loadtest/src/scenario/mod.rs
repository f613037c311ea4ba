//! The scenarios. Each one runs every target in turn on the same loader
//! threads and returns one `Outcome` per target, so that ratios compare
//! runs taken minutes apart on the same machine, not figures from elsewhere.

pub mod abuse;
pub mod bulk;
pub mod chaos;
pub mod churn;
pub mod crypto_floor;
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
/// so that they stay open until the sinks are done, and for the next
/// slice of an interleaved run ([`Streams::close`] ends them).
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
/// each one's latency from its scheduled send time. Hands the sink back
/// open, for the next slice.
pub async fn record(
    mut sink: Sink,
    expect: u64,
    epoch: Instant,
    deadline: tokio::time::Instant,
) -> (Sink, Seen) {
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
    (sink, seen)
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

/// Runs one timed measurement on streams opened for it, then ends them.
pub fn timed(
    ctx: &Ctx,
    d: &Driven,
    sources: Vec<Source>,
    parts: Vec<SinkParts>,
    t: &Timed,
    o: &mut Outcome,
) {
    match Streams::new(ctx.rt, sources, parts) {
        Ok(mut s) => {
            s.run(ctx, d, t, o);
            s.close(ctx.rt);
        }
        Err(e) => o.error(e),
    }
}

/// One target's open streams: its sources (written by the pacing thread)
/// and its sinks (read on the runtime). They stay open across the slices
/// of an interleaved run, as a real client's sessions would.
pub struct Streams {
    sources: Vec<Source>,
    sinks: Vec<Sink>,
}

impl Streams {
    pub fn new(rt: &Runtime, sources: Vec<Source>, parts: Vec<SinkParts>) -> Result<Streams> {
        Ok(Streams {
            sources,
            sinks: sinks(rt, parts)?,
        })
    }

    /// Runs one timed phase: the sources paced on their own thread, the
    /// sinks recording on the runtime, the proxy's and loader's CPU
    /// metered; all of it added to `o`. False when a stream failed: the
    /// outcome says why, and the caller runs no further phase on them.
    pub fn run(&mut self, ctx: &Ctx, d: &Driven, t: &Timed, o: &mut Outcome) -> bool {
        let errors_before = o.errors;
        let meter = Meter::start(d.proc);
        let cpu = ctx.layout.source_cpu(d.route.target, true);
        let sender = paced(
            std::mem::take(&mut self.sources),
            t.total,
            t.period,
            t.size,
            t.broadcast,
            ctx.epoch,
            cpu,
        );
        let before = o.messages;
        let sinks = std::mem::take(&mut self.sinks);
        self.sinks = collect(ctx.rt, sinks, t.expect_each, ctx.epoch, t.duration, o);
        o.cost.payload_bytes += (o.messages - before) * t.size as u64;
        let (sources, errors) = sender.join().expect("sender thread");
        self.sources = sources;
        for e in errors {
            o.error(e);
        }
        meter.stop(o);
        o.errors == errors_before
    }

    /// Ends every stream: each source's closing message, each sink's close.
    pub fn close(mut self, rt: &Runtime) {
        for s in &mut self.sources {
            s.end();
        }
        rt.block_on(async {
            for s in &mut self.sinks {
                s.close().await;
            }
        });
    }
}

/// Runs the timed phase of every target, `per_stream` frames on each of
/// `streams` streams, shaped by `shape(frames per stream)`.
///
/// With one slice, each target in turn: open, measure, close. With more,
/// every target's streams are opened first and each target's frames are
/// sent in `slices` phases, round-robin over the targets (forwards, then
/// backwards, so that no target always follows the same one): on a host
/// whose speed drifts by more than the differences measured (a shared VM),
/// every target then sees the same minutes of it, and their ratios compare
/// proxies rather than moments. Each target's CPU, latency histogram and
/// peak memory are the sums, merge and maximum of its slices.
pub fn timed_runs(
    ctx: &Ctx,
    streams: usize,
    per_stream: u64,
    slices: usize,
    shape: impl Fn(u64) -> Timed,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = ctx
        .targets
        .iter()
        .map(|d| Outcome::new(d.route.target.name()))
        .collect();
    let open = |i: usize, o: &mut Outcome| -> Option<Streams> {
        let opened = open_streams(&ctx.targets[i].route, streams, 10_000 + i * 100_000)
            .and_then(|(sources, parts)| Streams::new(ctx.rt, sources, parts));
        match opened {
            Ok(s) => Some(s),
            Err(e) => {
                o.error(format!("{e:#}"));
                None
            }
        }
    };
    if slices <= 1 {
        for (i, o) in outcomes.iter_mut().enumerate() {
            if let Some(mut s) = open(i, o) {
                s.run(ctx, &ctx.targets[i], &shape(per_stream), o);
                s.close(ctx.rt);
            }
        }
        return outcomes;
    }
    let mut open: Vec<Option<Streams>> = outcomes
        .iter_mut()
        .enumerate()
        .map(|(i, o)| open(i, o))
        .collect();
    for j in 0..slices as u64 {
        let slices = slices as u64;
        // The slices' frames add up to `per_stream` exactly.
        let frames = per_stream * (j + 1) / slices - per_stream * j / slices;
        let t = shape(frames);
        let order: Vec<usize> = if j % 2 == 0 {
            (0..open.len()).collect()
        } else {
            (0..open.len()).rev().collect()
        };
        for i in order {
            let Some(s) = open[i].as_mut() else { continue };
            if !s.run(ctx, &ctx.targets[i], &t, &mut outcomes[i]) {
                if let Some(s) = open[i].take() {
                    s.close(ctx.rt);
                }
            }
        }
    }
    for s in open.into_iter().flatten() {
        s.close(ctx.rt);
    }
    outcomes
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

/// Runs a timed phase's sinks until each saw `expect_each` frames and folds
/// their results into `out` (merged with earlier phases' latencies); hands
/// the sinks back.
pub fn collect(
    rt: &Runtime,
    sinks: Vec<Sink>,
    expect_each: u64,
    epoch: Instant,
    run_for: Duration,
    out: &mut Outcome,
) -> Vec<Sink> {
    let deadline = tokio::time::Instant::now() + run_for + Duration::from_secs(10);
    let done: Vec<Result<(Sink, Seen), String>> = rt.block_on(async {
        let tasks: Vec<_> = sinks
            .into_iter()
            .map(|s| tokio::spawn(record(s, expect_each, epoch, deadline)))
            .collect();
        let mut all = vec![];
        for t in tasks {
            all.push(t.await.map_err(|e| format!("sink task failed: {e}")));
        }
        all
    });
    let mut h = out.hist.take().unwrap_or_else(histogram);
    let mut kept = Vec::with_capacity(done.len());
    for d in done {
        match d {
            Ok((sink, s)) => {
                let _ = h.add(&s.hist);
                out.messages += s.messages;
                if let Some(e) = s.error {
                    out.error(e);
                }
                kept.push(sink);
            }
            Err(e) => out.error(e),
        }
    }
    out.latency = Some(crate::report::Latency::of(&h));
    out.hist = Some(h);
    kept
}

/// An HTTP/2 channel to one of the gateway's gRPC fronts (or a server
/// beside it), with receive windows as large as gRPC's own clients grow
/// theirs to (BDP probing) on a fast link: h2's 64 KiB default would
/// measure the window, not the server. `what` names it in errors.
pub async fn h2_channel(
    at: std::net::SocketAddr,
    stream_window: u32,
    what: &str,
) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{at}"))?
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(16 << 20)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {what}"))
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
