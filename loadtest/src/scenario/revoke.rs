//! `revoke`: a revocation storm. Many live sessions are opened, then each
//! is revoked through Redis on a fixed schedule; latency is from a
//! revocation's scheduled publish time to its session's 4410 close frame
//! arriving at the browser. Only the gateway has revocation, so this
//! scenario drives gateway targets only.
//!
//! The time is split where the loader can see it, so that the loader is
//! never what is measured: `publish-lag` (schedule → the PUBLISH leaves
//! the loader), `redis-floor` (schedule → a plain subscriber in the loader
//! has the message: what any proxy would start from) and `gateway-share`
//! (that subscriber's receipt → the 4410 at the browser, per revocation).

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use sluice::auth::token::Mode;

use super::{pin_current, sinks, Ctx, Driven, Meter};
use crate::report::Outcome;
use crate::sink::{Event, Sink};
use crate::wire::Encoding;
use sluice::wire::frame::Opcode;
use sluice_protocol::browser::BrowserAction;
use sluice_protocol::connector::Reply;

pub struct Params {
    pub sessions: usize,
    /// Revocations per second.
    pub rate: u64,
    pub redis_url: String,
    pub channel: String,
    /// Frames per second of the live feed the sessions watch (0: idle).
    pub feed_rate: u64,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (t, d) in ctx
        .targets
        .iter()
        .filter(|d| d.route.target.is_gateway())
        .enumerate()
    {
        match storm(ctx, d, t, p) {
            Ok(rows) => out.extend(rows),
            Err(e) => {
                let mut o = Outcome::new(d.route.target.name());
                o.error(format!("{e:#}"));
                out.push(o);
            }
        }
    }
    out
}

/// One storm on one gateway: the gateway's row, then the loader's split.
fn storm(ctx: &Ctx, d: &Driven, t: usize, p: &Params) -> anyhow::Result<Vec<Outcome>> {
    let (sinks, sids, feed) = open_sessions(ctx, d, t, p)?;
    let period = Duration::from_nanos(1_000_000_000 / p.rate.max(1));
    let cpu = ctx.layout.load_cpu;
    // Both loader threads are connected before the schedule is set: a
    // schedule fixed before the publisher's connection (and the meter's
    // counters) made the first hundred revocations late by the loader's
    // own setup, ~130 ms, which was the p99 reported as the gateway's.
    let floor = Floor::spawn(&p.redis_url, &p.channel, &sids, ctx.epoch, cpu)?;
    let publisher = Publisher::spawn(&p.redis_url, &p.channel, sids, period, ctx.epoch, cpu)?;
    let mut o = Outcome::new(d.route.target.name());
    let admin = d.route.gw.admin_addr;
    let histogram_before = admin.and_then(shard_histogram);
    let meter = Meter::start(d.proc);
    let start = Instant::now() + Duration::from_millis(50);
    let sched: Vec<u64> = (0..p.sessions)
        .map(|k| (start + period * k as u32 - ctx.epoch).as_nanos() as u64)
        .collect();
    publisher.go(start);
    let deadline = start + period * p.sessions as u32 + Duration::from_secs(10);
    let closed = ctx.rt.block_on(wait_for_4410(sinks, deadline, ctx.epoch));
    meter.stop(&mut o);
    if let Some(feed) = feed {
        feed.stop();
    }
    let sent = publisher.join()?;
    let floor = floor.join(deadline)?;
    let since = |from: &[u64], to: &[Result<u64, String>]| -> Vec<Result<u64, String>> {
        from.iter()
            .zip(to)
            .map(|(f, r)| r.clone().map(|at| at.saturating_sub(*f).max(1)))
            .collect()
    };
    let floor_at: Vec<Result<u64, String>> = floor
        .iter()
        .map(|r| r.ok_or_else(|| "the floor subscriber never got it".to_owned()))
        .collect();
    super::fold(since(&sched, &closed), &mut o);
    o.note = Some(format!(
        "{} live sessions revoked at {}/s; latency = scheduled publish -> 4410 at the browser",
        p.sessions, p.rate
    ));
    let mut lag = Outcome::new("publish-lag");
    super::fold(
        since(&sched, &sent.into_iter().map(Ok).collect::<Vec<_>>()),
        &mut lag,
    );
    let mut redis = Outcome::new("redis-floor");
    super::fold(since(&sched, &floor_at), &mut redis);
    let mut share = Outcome::new("gateway-share");
    let shares: Vec<Result<u64, String>> = floor
        .iter()
        .zip(&closed)
        .map(|(f, c)| match (f, c) {
            (Some(f), Ok(at)) => Ok(at.saturating_sub(*f).max(1)),
            (None, _) => Err("the floor subscriber never got it".to_owned()),
            (_, Err(e)) => Err(e.clone()),
        })
        .collect();
    super::fold(shares, &mut share);
    let histogram_after = admin.and_then(shard_histogram);
    if let Some(line) = shard_share(histogram_before, histogram_after) {
        println!("{line}");
        o.note = Some(format!("{}; {line}", o.note.take().unwrap_or_default()));
    }
    share.note = Some(
        "per revocation: a plain Redis subscriber in the loader has it -> 4410 at the browser"
            .into(),
    );
    Ok(vec![o, lag, redis, share])
}

/// The storm's sessions, each watching the live feed when there is one.
fn open_sessions(
    ctx: &Ctx,
    d: &Driven,
    t: usize,
    p: &Params,
) -> anyhow::Result<(Vec<Sink>, Vec<String>, Option<Feed>)> {
    let mut feed = None;
    let mut conn = (p.feed_rate > 0)
        .then(|| d.route.connector(true, &["feed"]))
        .transpose()?;
    let mut parts = vec![];
    let mut sids = vec![];
    for n in 0..p.sessions {
        let sid = format!("lt-rev-{t}-{n}-{}", std::process::id());
        let mut c = d
            .route
            .browser(&sid, Mode::Query)
            .with_context(|| format!("session {n}"))?;
        if p.feed_rate > 0 {
            let subscribe = BrowserAction::Subscribe {
                dataset: "feed".into(),
            };
            c.send_json(Encoding::Masked, &subscribe)?;
            if let Some((mut worker, enc)) = conn.take() {
                let rid = worker.wait_do_get(Duration::from_secs(10))?;
                worker.send_json(enc, &Reply::stream_start(&rid, ""))?;
                feed = Some(Feed::start(worker, enc, p.feed_rate, ctx.layout.load_cpu));
            }
            c.wait_stream_start(Duration::from_secs(10))
                .with_context(|| format!("session {n} subscribing"))?;
        }
        parts.push(c.into_parts());
        sids.push(sid);
    }
    Ok((sinks(ctx.rt, parts)?, sids, feed))
}

/// The connector's live feed: 1 KiB frames at a fixed rate until stopped.
struct Feed {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<()>,
}

impl Feed {
    fn start(worker: crate::wire::Conn, enc: Encoding, rate: u64, cpu: Option<usize>) -> Feed {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            pin_current(cpu);
            let (mut s, _) = worker.into_parts();
            let frame = enc.frame(Opcode::Binary, &[0x5a; 1024]);
            let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(&frame).is_err() {
                    return;
                }
                std::thread::sleep(period);
            }
        });
        Feed { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Each session's 4410, in ns since `epoch`; any other ending is an error.
async fn wait_for_4410(
    sinks: Vec<Sink>,
    deadline: Instant,
    epoch: Instant,
) -> Vec<Result<u64, String>> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let tasks: Vec<_> = sinks
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout_at(deadline, s.next()).await {
                        Err(_) => return Err("no close before the deadline".to_string()),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Ok(Ok(Event::Closed {
                            code: Some(4410), ..
                        })) => {
                            let at = epoch.elapsed().as_nanos() as u64;
                            return nothing_after_the_close(&mut s).await.map(|()| at);
                        }
                        Ok(Ok(Event::Closed { code, reason })) => {
                            return Err(format!("closed {code:?} {reason}, not 4410"))
                        }
                        Ok(Ok(_)) => {}
                    }
                }
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    all
}

/// A revoked session reads nothing after its 4410: the connection ends.
async fn nothing_after_the_close(s: &mut Sink) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_millis(200), s.next()).await {
        Ok(Ok(Event::Binary { .. } | Event::Text(_))) => {
            Err("a frame arrived after the 4410".to_string())
        }
        _ => Ok(()),
    }
}

/// The loader's publisher: one revocation per period from the instant it
/// is given, on the loader's CPU, pipelined; reports when each PUBLISH
/// left.
struct Publisher {
    start: mpsc::Sender<Instant>,
    thread: JoinHandle<anyhow::Result<Vec<u64>>>,
}

impl Publisher {
    fn spawn(
        url: &str,
        channel: &str,
        sids: Vec<String>,
        period: Duration,
        epoch: Instant,
        cpu: Option<usize>,
    ) -> anyhow::Result<Publisher> {
        let mut con = redis::Client::open(url)?
            .get_connection()
            .context("publisher: connecting to Redis")?;
        let (tx, rx) = mpsc::channel::<Instant>();
        let channel = channel.to_owned();
        let exp = sluice::auth::token::now_s() + 3600;
        let thread = std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            pin_current(cpu);
            super::precise_timers();
            let start = rx.recv()?;
            let mut sent = Vec::with_capacity(sids.len());
            for (k, sid) in sids.iter().enumerate() {
                let due = start + period * k as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                sent.push(epoch.elapsed().as_nanos() as u64);
                // Sent without waiting for Redis's answer: a publisher that
                // waits a round trip per revocation falls behind its own
                // schedule whenever Redis is descheduled for a moment.
                let publish = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(json!({"sid": sid, "exp": exp}).to_string())
                    .get_packed_command();
                con.send_packed_command(&publish)?;
            }
            // Each answer (a few bytes, waiting in the socket) is checked.
            for _ in 0..sent.len() {
                let _: i64 = redis::from_redis_value(con.recv_response()?)?;
            }
            Ok(sent)
        });
        Ok(Publisher { start: tx, thread })
    }

    fn go(&self, start: Instant) {
        let _ = self.start.send(start);
    }

    fn join(self) -> anyhow::Result<Vec<u64>> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("publisher thread panicked"))?
    }
}

/// A plain Redis subscriber on the revocation channel, in the loader:
/// when each revocation could first be acted on by anyone.
struct Floor {
    thread: JoinHandle<Vec<Option<u64>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Floor {
    fn spawn(
        url: &str,
        channel: &str,
        sids: &[String],
        epoch: Instant,
        cpu: Option<usize>,
    ) -> anyhow::Result<Floor> {
        let mut con = redis::Client::open(url)?
            .get_connection()
            .context("floor subscriber: connecting to Redis")?;
        let index: HashMap<String, usize> = sids
            .iter()
            .enumerate()
            .map(|(k, s)| (s.clone(), k))
            .collect();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (channel, stop) = (channel.to_owned(), done.clone());
        let thread = std::thread::spawn(move || {
            pin_current(cpu);
            let mut got = vec![None; index.len()];
            let mut ps = con.as_pubsub();
            let subscribed = ps
                .subscribe(&channel)
                .and_then(|()| ps.set_read_timeout(Some(Duration::from_millis(100))));
            let _ = ready_tx.send(subscribed.map_err(Into::into));
            let mut left = index.len();
            while left > 0 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(msg) = ps.get_message() else { continue };
                let at = epoch.elapsed().as_nanos() as u64;
                let payload: String = msg.get_payload().unwrap_or_default();
                let sid = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v["sid"].as_str().map(str::to_owned));
                if let Some(&k) = sid.as_ref().and_then(|s| index.get(s)) {
                    if got[k].is_none() {
                        got[k] = Some(at);
                        left -= 1;
                    }
                }
            }
            got
        });
        ready_rx.recv().context("floor subscriber thread")??;
        Ok(Floor { thread, done })
    }

    /// What it received; it stops waiting at `deadline`.
    fn join(self, deadline: Instant) -> anyhow::Result<Vec<Option<u64>>> {
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("floor subscriber panicked"))
    }
}

/// The gateway's own histogram of the time its shard took to act on each
/// revocation (`sluice_revocation_seconds` on its admin `/metrics`):
/// cumulative counts per bound, in order.
fn shard_histogram(admin: std::net::SocketAddr) -> Option<Vec<(String, u64)>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let buckets: Vec<(String, u64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("sluice_revocation_seconds_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter_map(|(le, n)| Some((le.to_owned(), n.trim().parse().ok()?)))
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// What the storm added to the gateway's histogram (a gateway that has
/// just started also counts the stored revocations it resynchronised), as
/// one line.
fn shard_share(
    before: Option<Vec<(String, u64)>>,
    after: Option<Vec<(String, u64)>>,
) -> Option<String> {
    let (before, after) = (before?, after?);
    let buckets: Vec<String> = after
        .iter()
        .zip(&before)
        .map(|((le, n), (_, was))| format!("≤{le} s: {}", n.saturating_sub(*was)))
        .collect();
    Some(format!(
        "the shard's own share (gateway has it → 4410 queued), cumulative: {}",
        buckets.join(", ")
    ))
}
