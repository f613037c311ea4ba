//! `revoke`: a revocation storm. Many live sessions are opened, then each
//! is revoked through Redis on a fixed schedule; latency is from a
//! revocation's scheduled publish time to its session's 4410 close frame
//! arriving at the browser. Only the gateway has revocation, so this
//! scenario drives gateway targets only.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice::auth::token::Mode;

use super::{sinks, Ctx, Meter};
use crate::report::Outcome;
use crate::sink::Event;

pub struct Params {
    pub sessions: usize,
    /// Revocations per second.
    pub rate: u64,
    pub redis_url: String,
    pub channel: String,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    ctx.targets
        .iter()
        .filter(|d| d.route.target.is_gateway())
        .enumerate()
        .map(|(t, d)| {
            let mut o = Outcome::new(d.route.target.name());
            let client = match redis::Client::open(p.redis_url.as_str()) {
                Ok(c) => c,
                Err(e) => {
                    o.error(format!("redis url: {e}"));
                    return o;
                }
            };
            let mut parts = vec![];
            let mut sids = vec![];
            for n in 0..p.sessions {
                let sid = format!("lt-rev-{t}-{n}-{}", std::process::id());
                match d.route.browser(&sid, Mode::Query) {
                    Ok(c) => {
                        parts.push(c.into_parts());
                        sids.push(sid);
                    }
                    Err(e) => {
                        o.error(format!("session {n}: {e:#}"));
                        return o;
                    }
                }
            }
            let sinks = match sinks(ctx.rt, parts) {
                Ok(s) => s,
                Err(e) => {
                    o.error(e);
                    return o;
                }
            };
            let period = Duration::from_nanos(1_000_000_000 / p.rate.max(1));
            let start = Instant::now() + Duration::from_millis(50);
            let epoch = ctx.epoch;
            let meter = Meter::start(d.proc);
            let (channel, exp) = (p.channel.clone(), sluice::auth::token::now_s() + 3600);
            let publisher = std::thread::spawn(move || -> anyhow::Result<()> {
                super::precise_timers();
                let mut con = client.get_connection()?;
                for (k, sid) in sids.iter().enumerate() {
                    let due = start + period * k as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(json!({"sid": sid, "exp": exp}).to_string())
                        .query(&mut con)?;
                }
                Ok(())
            });
            let deadline = tokio::time::Instant::now() + period * p.sessions as u32 + Duration::from_secs(10);
            let results: Vec<Result<u64, String>> = ctx.rt.block_on(async {
                let tasks: Vec<_> = sinks
                    .into_iter()
                    .enumerate()
                    .map(|(k, mut s)| {
                        let sched = (start + period * k as u32 - epoch).as_nanos() as u64;
                        tokio::spawn(async move {
                            loop {
                                match tokio::time::timeout_at(deadline, s.next()).await {
                                    Err(_) => return Err("no close before the deadline".to_string()),
                                    Ok(Err(e)) => return Err(e.to_string()),
                                    Ok(Ok(Event::Closed { code: Some(4410), .. })) => {
                                        let now = epoch.elapsed().as_nanos() as u64;
                                        return Ok(now.saturating_sub(sched).max(1));
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
            });
            if let Err(e) = publisher.join().expect("publisher thread") {
                o.error(format!("publishing: {e:#}"));
            }
            super::fold(results, &mut o);
            meter.stop(&mut o);
            o.note = Some(format!(
                "{} live sessions revoked at {}/s; latency = scheduled publish -> 4410 at the browser",
                p.sessions, p.rate
            ));
            o
        })
        .collect()
}
