//! `latency` (one stream of small frames at a fixed rate) and `fan-in`
//! (many such streams at once): open-loop senders, latency from each
//! frame's scheduled send time.

use std::time::Duration;

use super::{timed_runs, Ctx, Timed};
use crate::report::Outcome;

pub struct Params {
    /// Concurrent streams (1 for `latency`).
    pub streams: usize,
    pub size: usize,
    /// Frames per second per stream.
    pub rate: u64,
    pub duration: Duration,
    /// Phases each target's duration is cut into, the targets taking turns
    /// (1: each target once, in order).
    pub slices: usize,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    let per_stream = p.rate * p.duration.as_secs().max(1);
    let period = Duration::from_nanos(1_000_000_000 / (p.rate * p.streams as u64));
    timed_runs(ctx, p.streams, per_stream, p.slices, |frames| Timed {
        total: frames * p.streams as u64,
        period,
        size: p.size,
        broadcast: false,
        expect_each: frames,
        duration: Duration::from_nanos(frames * 1_000_000_000 / p.rate),
    })
}
