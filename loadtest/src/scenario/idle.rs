//! `idle`: many authenticated sessions held open doing nothing; reports
//! the proxy's memory per held session, then proves every session still
//! works (a question answered on each) so that "held" is not "dead".

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sluice::auth::token::Mode;
use sluice::wire::frame::Opcode;

use super::Ctx;
use crate::report::Outcome;
use crate::wire::{Conn, Encoding, Source};

pub struct Params {
    pub sessions: usize,
    pub hold: Duration,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    ctx.targets
        .iter()
        .enumerate()
        .map(|(t, d)| {
            let mut o = Outcome::new(d.route.target.name());
            let r = &d.route;
            let _edge = match d.route.edge_online() {
                Ok(c) => c,
                Err(e) => {
                    o.error(format!("{e:#}"));
                    return o;
                }
            };
            // Fail now, not after thousands of stalled handshakes, when the
            // sessions cannot all be held: through a proxy each takes two
            // descriptors here (the client and the origin's end).
            let per_session = if r.target.is_gateway() { 1 } else { 2 };
            let need = (p.sessions + 100) as u64 * per_session + 256;
            let limit = rlimit::Resource::NOFILE
                .get()
                .map_or(1024, |(soft, _)| soft);
            if need > limit {
                o.error(format!(
                    "{} sessions need about {need} open files in the loader; its limit is \
                     {limit} (raise `ulimit -n`, or run as root so the loader raises it)",
                    p.sessions
                ));
                return o;
            }
            // Warm the allocator and the proxy's tables before the baseline.
            let warm: Vec<_> = (0..100)
                .filter_map(|n| open(ctx, t, r, 900_000 + n).ok())
                .collect();
            drop(warm);
            std::thread::sleep(Duration::from_millis(300));
            let before = d.proc.map(|pr| pr.rss_kib());
            let mut held = Vec::with_capacity(p.sessions);
            for n in 0..p.sessions {
                match open(ctx, t, r, n) {
                    Ok(h) => held.push(h),
                    Err(e) => o.error(format!("session {n}: {e:#}")),
                }
            }
            std::thread::sleep(p.hold);
            if let (Some(b), Some(pr)) = (before, d.proc) {
                let after = pr.rss_kib();
                o.kib_per_session = Some(after.saturating_sub(b) as f64 / held.len().max(1) as f64);
                o.proxy_peak_rss_kib = Some(pr.peak_rss_kib());
                o.note = Some(format!(
                    "RSS {b} -> {after} KiB with {} sessions held",
                    held.len()
                ));
            }
            for (n, h) in held.iter_mut().enumerate() {
                match h.check() {
                    Ok(()) => o.messages += 1,
                    Err(e) => o.error(format!("session {n} after the hold: {e:#}")),
                }
            }
            o
        })
        .collect()
}

/// A held session: the client side, and on the direct/proxied paths the
/// origin's side too (to prove the connection still carries data).
struct Held {
    client: Conn,
    origin: Option<Source>,
}

impl Held {
    fn check(&mut self) -> Result<()> {
        match &mut self.origin {
            None => {
                self.client
                    .send_json(Encoding::Masked, &json!({"action": "list"}))?;
                let v = self.client.next_json(Duration::from_secs(10))?;
                if v["type"] == "error" {
                    bail!("error answer: {v}");
                }
            }
            Some(src) => {
                src.send(Opcode::Text, b"{\"type\":\"still-there\"}")?;
                self.client.next_json(Duration::from_secs(10))?;
            }
        }
        Ok(())
    }
}

fn open(_ctx: &Ctx, t: usize, r: &crate::targets::Route, n: usize) -> Result<Held> {
    if r.target.is_gateway() {
        let sid = format!("lt-idle-{t}-{n}-{}", std::process::id());
        Ok(Held {
            client: r.browser(&sid, Mode::Query)?,
            origin: None,
        })
    } else {
        let (src, (stream, pending)) =
            r.open_stream(300_000 + t * 1_000_000 + n).context("open")?;
        Ok(Held {
            client: Conn::from_client_parts(stream, pending),
            origin: Some(src),
        })
    }
}
