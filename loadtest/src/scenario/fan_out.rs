//! `fan-out`: one live feed delivered to many viewers. Through the gateway
//! the connector sends each frame once and the gateway copies it to every
//! subscribed viewer; on the direct and proxied paths the origin itself
//! writes each frame to every viewer's connection.

use sluice_protocol::browser::BrowserAction;
use sluice_protocol::connector::Reply;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice::auth::token::Mode;
use sluice::wire::frame::Opcode;

use super::{open_streams, timed, Ctx, Driven, Timed};
use crate::report::Outcome;
use crate::targets::SinkParts;
use crate::wire::{Encoding, Source};

pub struct Params {
    pub viewers: usize,
    pub size: usize,
    pub rate: u64,
    pub duration: Duration,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    ctx.targets
        .iter()
        .map(|d| {
            let mut o = Outcome::new(d.route.target.name());
            let (sources, parts) = match open(d, p) {
                Ok(x) => x,
                Err(e) => {
                    o.error(format!("{e:#}"));
                    return o;
                }
            };
            let total = p.rate * p.duration.as_secs().max(1);
            let t = Timed {
                total,
                period: Duration::from_nanos(1_000_000_000 / p.rate),
                size: p.size,
                broadcast: true,
                expect_each: total,
                duration: p.duration,
            };
            timed(ctx, d, sources, parts, &t, &mut o);
            o
        })
        .collect()
}

fn open(d: &Driven, p: &Params) -> Result<(Vec<Source>, Vec<SinkParts>)> {
    let r = &d.route;
    if !r.target.is_gateway() {
        return open_streams(r, p.viewers, 200_000);
    }
    let fast = r.target != crate::targets::Target::GatewayQuery;
    let (mut feed, enc) = r.connector(fast, &["feed"])?;
    let mut parts = vec![];
    let mut rid = None;
    for n in 0..p.viewers {
        let mut v = r
            .browser(&format!("lt-view-{n}-{}", std::process::id()), Mode::Query)
            .with_context(|| format!("viewer {n}"))?;
        let subscribe = BrowserAction::Subscribe {
            dataset: "feed".into(),
        };
        v.send_json(Encoding::Masked, &subscribe)?;
        if rid.is_none() {
            let id = feed.wait_do_get(Duration::from_secs(10))?;
            feed.send_json(enc, &Reply::stream_start(&id, ""))?;
            // The first binary message is the schema late joiners are sent;
            // 8 bytes, so the sinks do not take it for a stamped frame.
            std::io::Write::write_all(&mut feed.stream, &enc.frame(Opcode::Binary, b"schema!!"))?;
            rid = Some(id);
        }
        v.wait_stream_start(Duration::from_secs(10))
            .with_context(|| format!("viewer {n} subscribing"))?;
        parts.push(v.into_parts());
    }
    let rid = rid.unwrap_or_default();
    let end = crate::wire::stream_end(enc, &rid);
    Ok((
        vec![Source {
            stream: feed.into_parts().0,
            enc,
            finish: Some(end),
        }],
        parts,
    ))
}
