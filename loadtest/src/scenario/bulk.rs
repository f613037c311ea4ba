//! `bulk`: one stream of large frames as fast as the path carries them.

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sluice::wire::frame::Opcode;

use super::{pin_current, sinks, Ctx, Driven};
use crate::report::Outcome;
use crate::sink::Event;

/// How long the sink may see nothing before the path counts as stalled:
/// a path that stops forwarding fails the round with a message instead of
/// hanging the loader. Far above any pause a working proxy makes.
const STALL: Duration = Duration::from_secs(10);

pub struct Params {
    pub frames: u64,
    pub size: usize,
    pub runs: usize,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = ctx
        .targets
        .iter()
        .map(|d| Outcome::new(d.route.target.name()))
        .collect();
    // Interleaved rounds: drift on a shared machine hits every target alike.
    for round in 0..p.runs {
        for (i, d) in ctx.targets.iter().enumerate() {
            let meter = super::Meter::start(d.proc);
            match once(ctx, d, p, round) {
                Ok(mb) => {
                    out[i].runs_mb_per_s.push(mb);
                    out[i].cost.payload_bytes += p.frames * p.size as u64;
                }
                Err(e) => out[i].error(format!("round {round}: {e:#}")),
            }
            meter.stop(&mut out[i]);
        }
    }
    let gib = (p.frames as f64 * p.size as f64) / (1u64 << 30) as f64;
    for o in out.iter_mut() {
        o.mb_per_s = median(&o.runs_mb_per_s);
        o.messages = p.frames * o.runs_mb_per_s.len() as u64;
        // Per-run averages (setup included: it is small next to a GiB).
        let runs = p.runs.max(1) as f64;
        for v in [&mut o.proxy_cpu_s, &mut o.loader_cpu_s, &mut o.wall_s] {
            *v = v.map(|x| x / runs);
        }
        if let Some(c) = o.proxy_cpu_s {
            o.note = Some(format!("{:.2} proxy CPU-s per GiB", c / gib));
        }
    }
    out
}

fn once(ctx: &Ctx, d: &Driven, p: &Params, round: usize) -> Result<f64> {
    let (mut src, parts) = d.route.open_stream(round)?;
    let frame = src.enc.frame(Opcode::Binary, &vec![0xab; p.size]);
    let mut sink = sinks(ctx.rt, vec![parts])?.pop().expect("one sink");
    let cpu = ctx.layout.source_cpu(d.route.target, false);
    let n = p.frames;
    // Shut down on a stall, so a writer blocked on a path that stopped
    // reading ends too.
    let stop = src.stream.try_clone()?;
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<_> {
        pin_current(cpu);
        for _ in 0..n {
            src.stream.write_all(&frame)?;
        }
        src.end();
        Ok(src)
    });
    let got = ctx.rt.block_on(async {
        let (mut frames, mut bytes) = (0u64, 0u64);
        while frames < n {
            let Ok(event) = tokio::time::timeout(STALL, sink.next()).await else {
                bail!(
                    "stalled: no frame for {} s after {frames} of {n} frames",
                    STALL.as_secs()
                )
            };
            match event? {
                Event::Binary { len, .. } => {
                    frames += 1;
                    bytes += len as u64;
                }
                Event::Closed { code, reason } => {
                    bail!("closed {code:?} {reason} after {frames} frames")
                }
                Event::Text(_) => {}
            }
        }
        sink.close().await;
        Ok(bytes)
    });
    let secs = t0.elapsed().as_secs_f64();
    if got.is_err() {
        let _ = stop.shutdown(Shutdown::Both);
    }
    let written = writer.join().expect("writer thread");
    let bytes = got?;
    drop(written?);
    if bytes != n * p.size as u64 {
        bail!("received {bytes} payload bytes, sent {}", n * p.size as u64);
    }
    Ok(bytes as f64 / secs / 1e6)
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[s.len() / 2])
}
