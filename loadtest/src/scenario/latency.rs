//! `latency` (one stream of small frames at a fixed rate) and `fan-in`
//! (many such streams at once): open-loop senders, latency from each
//! frame's scheduled send time.

use std::time::Duration;

use super::{open_streams, timed, Ctx, Timed};
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
            let (sources, parts) = match open_streams(&d.route, p.streams, 10_000 + i * 100_000) {
                Ok(x) => x,
                Err(e) => {
                    o.error(format!("{e:#}"));
                    return o;
                }
            };
            let per_stream = p.rate * p.duration.as_secs().max(1);
            let t = Timed {
                total: per_stream * p.streams as u64,
                period: Duration::from_nanos(1_000_000_000 / (p.rate * p.streams as u64)),
                size: p.size,
                broadcast: false,
                expect_each: per_stream,
                duration: p.duration,
            };
            timed(ctx, d, sources, parts, &t, &mut o);
            o
        })
        .collect()
}
