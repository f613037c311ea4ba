//! `churn`: sessions opened and closed at a fixed rate. Each session
//! connects, authenticates, asks one question and leaves; its latency is
//! from its scheduled start to the answer (so a slow accept queue shows).

use std::time::Duration;

use anyhow::{bail, Result};
use sluice::auth::token::Mode;

use super::Ctx;
use crate::report::Outcome;
use crate::sink::{self, Event};
use crate::targets::Route;

pub struct Params {
    pub rate: u64,
    pub duration: Duration,
}

pub fn run(ctx: &Ctx, p: &Params) -> Vec<Outcome> {
    ctx.targets
        .iter()
        .enumerate()
        .map(|(t, d)| {
            let mut o = Outcome::new(d.route.target.name());
            // `list` needs the edge online: one registered worker, held for the run.
            let _edge = match d.route.edge_online() {
                Ok(c) => c,
                Err(e) => {
                    o.error(format!("{e:#}"));
                    return o;
                }
            };
            let meter = super::Meter::start(d.proc);
            let total = p.rate * p.duration.as_secs().max(1);
            let period = Duration::from_nanos(1_000_000_000 / p.rate);
            let epoch = ctx.epoch;
            let results = ctx.rt.block_on(async {
                let start = tokio::time::Instant::now() + Duration::from_millis(20);
                let mut tasks = Vec::with_capacity(total as usize);
                for k in 0..total {
                    let due = start + period * k as u32;
                    tokio::time::sleep_until(due).await;
                    let sched = epoch.elapsed().as_nanos() as u64
                        - (tokio::time::Instant::now() - due).as_nanos() as u64;
                    let route = &d.route;
                    let (addr, path, headers) = session_request(route, t, k);
                    tasks.push(tokio::spawn(async move {
                        let r =
                            tokio::time::timeout(Duration::from_secs(10), one(addr, path, headers))
                                .await;
                        let done = epoch.elapsed().as_nanos() as u64;
                        match r {
                            Ok(Ok(())) => Ok(done.saturating_sub(sched).max(1)),
                            Ok(Err(e)) => Err(format!("{e:#}")),
                            Err(_) => Err("no answer within 10 s".to_string()),
                        }
                    }));
                }
                let mut all = vec![];
                for t in tasks {
                    all.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
                }
                all
            });
            super::fold(results, &mut o);
            meter.stop(&mut o);
            o.note = Some(format!(
                "{} sessions opened and closed at {}/s",
                total, p.rate
            ));
            o
        })
        .collect()
}

type Request = (std::net::SocketAddr, String, Vec<(&'static str, String)>);

fn session_request(r: &Route, t: usize, k: u64) -> Request {
    if r.target.is_gateway() {
        let sid = format!("lt-churn-{t}-{k}-{}", std::process::id());
        let tok = r.token(&sid, Mode::Query);
        (
            r.addr,
            format!("/stream/{sid}"),
            vec![("Authorization", format!("Bearer {tok}"))],
        )
    } else {
        (r.addr, format!("/greet/{t}-{k}"), vec![])
    }
}

/// One session: open, ask (`list` on the gateway; the origin greets by
/// itself), read the answer, close.
async fn one(
    addr: std::net::SocketAddr,
    path: String,
    headers: Vec<(&'static str, String)>,
) -> Result<()> {
    let mut s = sink::connect(addr, &path, &headers).await?;
    if path.starts_with("/stream/") {
        s.send_text(r#"{"action":"list"}"#).await?;
    }
    loop {
        match s.next().await? {
            Event::Text(t) if t.contains("\"error\"") => bail!("error answer: {t}"),
            Event::Text(_) => break,
            Event::Closed { code, reason } => bail!("closed {code:?} {reason}"),
            Event::Binary { .. } => {}
        }
    }
    s.close().await;
    Ok(())
}
