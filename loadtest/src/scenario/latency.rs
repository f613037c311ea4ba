//! `latency` (one stream of small frames at a fixed rate) and `fan-in`
//! (many such streams at once): open-loop senders, latency from each
//! frame's scheduled send time.

use std::time::Duration;

use super::{collect, paced, sinks, Ctx};
use crate::report::Outcome;

pub struct Params {
    /// Concurrent streams (1 for `latency`).
    pub streams: usize,
    pub size: usize,
    /// Frames per second per stream.
    pub rate: u64,
    pub duration: Duration,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    ctx.targets
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut o = Outcome::new(d.route.target.name());
            let mut sources = vec![];
            let mut parts = vec![];
            for n in 0..p.streams {
                match d.route.open_stream(10_000 + i * 100_000 + n) {
                    Ok((s, k)) => {
                        sources.push(s);
                        parts.push(k);
                    }
                    Err(e) => {
                        o.error(format!("opening stream {n}: {e:#}"));
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
            let per_stream = p.rate * p.duration.as_secs().max(1);
            let total = per_stream * p.streams as u64;
            let period = Duration::from_nanos(1_000_000_000 / (p.rate * p.streams as u64));
            let meter = super::Meter::start(d.proc);
            let sender = paced(
                sources,
                total,
                period,
                p.size,
                false,
                ctx.epoch,
                ctx.layout.source_cpu(d.route.target, true),
            );
            collect(ctx.rt, sinks, per_stream, ctx.epoch, p.duration, &mut o);
            let (sources, errors) = sender.join().expect("sender thread");
            drop(sources);
            for e in errors {
                o.error(e);
            }
            meter.stop(&mut o);
            o
        })
        .collect()
}
